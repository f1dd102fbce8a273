"""The rendered chart is accepted by an API server: ``kubectl apply`` against the emulated API.

Each test gets a fresh emulator (``kube_emulator_thread``) so the chart's cluster-scoped objects
(CRDs, ClusterRoles) never meet other tests' objects. kubernetes-validate (test_validate.py) does
the strict schema check of the built-in kinds; here the API server stores what we send, serves the
CRDs we installed, and enforces their schemas on custom resources.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helm.chart import CHART, NAMESPACE, REPO, SCENARIOS, Manifest, render, run_helm

try:
    from tests.fixtures.kube import kubectl_runner
except ImportError:  # pragma: no cover - only before the emulator (issue 3) lands
    pytest.skip(
        "the emulated API fixtures (tests/fixtures/kube.py, issue 3) are absent", allow_module_level=True
    )

Kubectl = Callable[..., subprocess.CompletedProcess[str]]
NAMESPACE_DOC: Manifest = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}


@pytest.fixture
def emulator(request: pytest.FixtureRequest) -> Any:
    try:
        return request.getfixturevalue("kube_emulator_thread")
    except pytest.FixtureLookupError:  # pragma: no cover
        pytest.skip("the kube_emulator_thread fixture (tests/fixtures/kube.py, issue 3) is absent")


@pytest.fixture
def kubectl(emulator: Any, tmp_path: Path) -> Kubectl:
    return kubectl_runner(Path(emulator.server.kubeconfig_path), tmp_path / "kubectl-cache")


def write_manifests(path: Path, docs: list[Manifest]) -> Path:
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def contained(sent: Any, live: Any, where: str = "") -> list[str]:
    """Differences where the live object lacks or changed what we sent (server defaults may add)."""
    if isinstance(sent, dict):
        if not isinstance(live, dict):
            return [f"{where}: {live!r} is not an object"]
        out: list[str] = []
        for key, value in sent.items():
            if key not in live:
                out.append(f"{where}.{key}: missing")
            else:
                out += contained(value, live[key], f"{where}.{key}")
        return out
    if isinstance(sent, list):
        if not isinstance(live, list) or len(live) != len(sent):
            return [f"{where}: {live!r} != {sent!r}"]
        return [
            d
            for i, (s, v) in enumerate(zip(sent, live, strict=True))
            for d in contained(s, v, f"{where}[{i}]")
        ]
    return [] if sent == live else [f"{where}: {live!r} != {sent!r}"]


def wait_established(kubectl: Kubectl, names: list[str], deadline_s: float = 20.0) -> None:
    deadline = time.monotonic() + deadline_s
    while True:
        items = json.loads(kubectl("get", "crd", *names, "-o", "json").stdout)["items"]
        established = {
            i["metadata"]["name"]
            for i in items
            for c in i.get("status", {}).get("conditions", [])
            if c["type"] == "Established" and c["status"] == "True"
        }
        if established == set(names):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"CRDs not Established within {deadline_s}s: {set(names) - established}")
        time.sleep(0.1)


@pytest.mark.parametrize("scenario", ["defaults", "everything"])
def test_rendered_chart_applies_and_is_stored(scenario: str, kubectl: Kubectl, tmp_path: Path) -> None:
    # The emulator does not serve monitoring.coreos.com: render as for a cluster without it.
    docs = render(SCENARIOS[scenario].values)
    manifests = write_manifests(tmp_path / "chart.yaml", [NAMESPACE_DOC, *docs])

    applied = kubectl("apply", "-f", str(manifests))
    for doc in docs:
        assert f"/{doc['metadata']['name']} created" in applied.stdout, (doc["kind"], applied.stdout)

    live = json.loads(kubectl("get", "-f", str(manifests), "-o", "json").stdout)["items"]
    by_key = {(i["kind"], i["metadata"]["name"]): i for i in live}
    problems: list[str] = []
    for doc in docs:
        key = (doc["kind"], doc["metadata"]["name"])
        if key not in by_key:
            problems.append(f"{key}: not stored")
            continue
        problems += [f"{key}{d}" for d in contained(doc, by_key[key])]
    assert not problems, "\n".join(problems)

    # Applying again (an upgrade with unchanged values) is accepted.
    kubectl("apply", "-f", str(manifests))


def test_installed_crds_serve_and_enforce_the_choreo_kinds(kubectl: Kubectl, tmp_path: Path) -> None:
    docs = render(SCENARIOS["defaults"].values)
    kubectl("apply", "-f", str(write_manifests(tmp_path / "chart.yaml", [NAMESPACE_DOC, *docs])))
    crds = sorted(d["metadata"]["name"] for d in docs if d["kind"] == "CustomResourceDefinition")
    wait_established(kubectl, crds)

    # The commands NOTES.txt points users at work once the chart is in.
    dataplanes = kubectl("get", "dataplane")
    assert "No resources found" in dataplanes.stdout + dataplanes.stderr
    env_ns: Manifest = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "choreo-demo"}}
    examples = write_manifests(tmp_path / "ns.yaml", [env_ns])
    kubectl("apply", "-f", str(examples))
    kubectl("apply", "-f", str(REPO / "examples" / "environment-demo.yaml"))
    kubectl("apply", "-f", str(REPO / "examples" / "rest-api.yaml"))
    listing = kubectl("get", "choreoapps", "-A").stdout
    assert "orders-api" in listing
    assert "demo" in kubectl("get", "environments").stdout

    # The CRD schema shipped by the chart is enforced: an invalid Environment is refused.
    bad: Manifest = {
        "apiVersion": "choreo.dev/v1alpha1",
        "kind": "Environment",
        "metadata": {"name": "bad"},
        "spec": {"deletionPolicy": "Sometimes"},
    }
    refused = kubectl("apply", "-f", str(write_manifests(tmp_path / "bad.yaml", [bad])), check=False)
    assert refused.returncode != 0
    assert "deletionPolicy" in refused.stderr


def test_install_prints_notes_against_the_cluster(emulator: Any) -> None:
    """`helm install --dry-run=client` needs an API server; the NOTES tell how to check the install."""
    result = run_helm(
        "install",
        "choreo-dp",
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--dry-run=client",
        "--kubeconfig",
        str(emulator.server.kubeconfig_path),
        values=SCENARIOS["defaults"].values,
    )
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "kubectl get dataplane" in notes
    assert "kubectl get choreoapps -A" in notes
    assert "wss://cp.example.com:8443" in notes
