"""deploy/controlplane: the manifests for running the control plane with several replicas.

Offline: every document validates strictly (kubernetes-validate's schemas, the versions the chart is
checked against), the container's arguments are accepted by the real ``control-plane serve`` parser
with ``--db`` coming from the Secret's environment variable, and the pieces fit together (selectors,
probe port and path, mounted files the flags name, the PodDisruptionBudget). Online: a server-side
dry run on the emulated and the real API server, and kubectl's kustomize renders the kustomization."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from choreo_dp.cli.main import build_parser
from tests.fixtures.kube import KubeTarget, kubectl_runner
from tests.helm.test_validate import KUBE_VERSIONS, errors_for

Kubectl = Callable[..., subprocess.CompletedProcess[str]]

DIR = Path(__file__).resolve().parents[2] / "deploy" / "controlplane"


def docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DIR / "controlplane.yaml").read_text()) if d]


def by_kind(kind: str) -> dict[str, Any]:
    (found,) = [d for d in docs() if d["kind"] == kind]
    return found


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_manifests_validate_strictly(version: str) -> None:
    failures = [f"{d['kind']}/{d['metadata']['name']}: {e}" for d in docs() for e in errors_for(d, version)]
    assert not failures, "\n".join(failures)
    assert {d["kind"] for d in docs()} == {"Deployment", "Service", "PodDisruptionBudget"}


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((DIR / "kustomization.yaml").read_text())
    manifests = sorted(p.name for p in DIR.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == manifests


def test_the_container_arguments_are_what_serve_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    dep = by_kind("Deployment")
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    # --db comes from the Secret, through the flag's environment variable
    assert env["CHOREO_DP_DB"]["valueFrom"]["secretKeyRef"] == {"name": "choreo-cp-db", "key": "url"}
    monkeypatch.setenv("CHOREO_DP_DB", "postgresql://choreo@db.internal:5432/choreo")
    args = build_parser().parse_args(container["args"])
    assert args.cp_verb == "serve"
    assert args.db == "postgresql://choreo@db.internal:5432/choreo"
    assert args.listen == "0.0.0.0:8443" and args.tls_cert and args.tls_key  # TLS: not loopback
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    tls_dir, admin_dir = mounts["tls"], mounts["admin"]
    assert args.tls_cert == f"{tls_dir}/tls.crt" and args.tls_key == f"{tls_dir}/tls.key"
    assert args.admin_token_file == f"{admin_dir}/token"
    assert volumes["tls"]["secret"]["secretName"] == "choreo-cp-tls"
    assert volumes["admin"]["secret"]["secretName"] == "choreo-cp-admin"


def test_replicas_probes_service_and_budget_fit_together() -> None:
    dep, svc, pdb = by_kind("Deployment"), by_kind("Service"), by_kind("PodDisruptionBudget")
    assert dep["spec"]["replicas"] >= 2
    labels = dep["spec"]["template"]["metadata"]["labels"]
    for selector in (
        dep["spec"]["selector"]["matchLabels"],
        svc["spec"]["selector"],
        pdb["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= labels.items(), selector
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    (port,) = container["ports"]
    assert port["containerPort"] == 8443
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert (get["path"], get["port"], get["scheme"]) == ("/healthz", port["name"], "HTTPS")
    assert [p["targetPort"] for p in svc["spec"]["ports"]] == [port["name"]]
    assert pdb["spec"]["maxUnavailable"] == 1
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_kustomize_renders_them_into_the_namespace(tmp_path: Path) -> None:
    run = kubectl_runner(Path("/nonexistent"), tmp_path / "cache")  # kustomize needs no cluster
    rendered = [d for d in yaml.safe_load_all(run("kustomize", str(DIR)).stdout) if d]
    assert sorted(d["kind"] for d in rendered) == sorted(d["kind"] for d in docs())
    assert {d["metadata"]["namespace"] for d in rendered} == {"choreo-cp"}


def test_the_apiserver_accepts_them(kube_target: KubeTarget, kubectl: Kubectl) -> None:
    """Server-side dry run (admission, defaults, the server's own validation) on both API servers."""
    namespace = "choreo-cp-deploy-test"
    kubectl("create", "namespace", namespace)
    try:
        out = kubectl(
            "apply", "--dry-run=server", "-n", namespace, "-f", str(DIR / "controlplane.yaml"), "-o", "json"
        ).stdout
        accepted = json.loads(out)
        items = accepted["items"] if accepted.get("kind") == "List" else [accepted]
        assert sorted(i["kind"] for i in items) == ["Deployment", "PodDisruptionBudget", "Service"]
        dep = next(i for i in items if i["kind"] == "Deployment")
        assert dep["metadata"]["namespace"] == namespace and dep["spec"]["replicas"] == 3
        # a dry run stores nothing
        listed = kubectl(
            "get", "deployments,services,poddisruptionbudgets", "-n", namespace, "-o", "name"
        ).stdout
        assert listed.strip() == "", listed
    finally:
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)
