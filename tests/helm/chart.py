"""Rendering the chart with the real helm binary, and the value scenarios the tests share."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "choreo-dp"
RELEASE = "choreo-dp"
NAMESPACE = "choreo-system"
FULLNAME = "choreo-dp"  # the release name contains the chart name, so it is used as is
MONITORING_API = "monitoring.coreos.com/v1"
# What helm's capabilities hold for a cluster serving ValidatingAdmissionPolicy (Kubernetes >= 1.30).
ADMISSION_POLICY_API = "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy"

Manifest = dict[str, Any]


def helm_binary() -> str:
    """The real helm: on PATH (``make test`` puts .venv/bin there) or in the repository's .venv."""
    found = shutil.which("helm")
    if found:
        return found
    local = REPO / ".venv" / "bin" / "helm"
    if local.exists():
        return str(local)
    pytest.fail("helm not found on PATH or in .venv/bin: run `make tools` (tools/install_helm.py)")


@dataclass(frozen=True)
class HelmResult:
    returncode: int
    stdout: str
    stderr: str


def run_helm(*args: str, values: dict[str, Any] | None = None, timeout: float = 60.0) -> HelmResult:
    cmd = [helm_binary(), *args]
    with tempfile.TemporaryDirectory() as tmp:
        if values is not None:
            path = Path(tmp) / "values.yaml"
            path.write_text(yaml.safe_dump(values))
            cmd += ["-f", str(path)]
        env = {**os.environ, "HELM_CACHE_HOME": tmp, "HELM_CONFIG_HOME": tmp, "HELM_DATA_HOME": tmp}
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    return HelmResult(proc.returncode, proc.stdout, proc.stderr)


def template_result(values: dict[str, Any], api_versions: tuple[str, ...] = ()) -> HelmResult:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for api in api_versions:
        args += ["--api-versions", api]
    return run_helm(*args, values=values)


@functools.cache
def _render_cached(values_json: str, api_versions: tuple[str, ...]) -> tuple[Manifest, ...]:
    result = template_result(json.loads(values_json), api_versions)
    if result.returncode != 0:
        raise AssertionError(f"helm template failed:\n{result.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def render(values: dict[str, Any], api_versions: tuple[str, ...] = ()) -> list[Manifest]:
    """Rendered manifests (cached per values; callers get copies they may mutate)."""
    docs = _render_cached(json.dumps(values, sort_keys=True), tuple(sorted(api_versions)))
    return json.loads(json.dumps(docs))  # type: ignore[no-any-return]


def find(docs: list[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[Manifest], kind: str, name: str) -> Manifest:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def deployment(docs: list[Manifest], component: str) -> Manifest:
    return one(docs, "Deployment", f"{FULLNAME}-{component}")


def container(dep: Manifest) -> Manifest:
    containers = dep["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]  # type: ignore[no-any-return]


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(base))
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out  # type: ignore[no-any-return]


CP_URL = "wss://cp.example.com:8443"
DP_ID = "prod-eu"
TEST_CA = "-----BEGIN CERTIFICATE-----\nMIIBtest\n-----END CERTIFICATE-----\n"

# What a customer must set: the control plane, the data plane id, and where the token is.
REQUIRED: dict[str, Any] = {
    "controlPlane": {"url": CP_URL},
    "dataPlane": {"id": DP_ID, "token": {"existingSecret": "dp-token", "existingSecretKey": "tok"}},
}


@dataclass(frozen=True)
class Scenario:
    name: str
    values: dict[str, Any]
    api_versions: tuple[str, ...] = field(default=())

    def render(self, extra_api_versions: tuple[str, ...] = ()) -> list[Manifest]:
        return render(self.values, self.api_versions + extra_api_versions)


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario("defaults", REQUIRED, (ADMISSION_POLICY_API,)),
        Scenario(
            "token-created",
            merge(REQUIRED, {"dataPlane": {"token": {"existingSecret": "", "value": "s3cr3t-token"}}}),
        ),
        Scenario(
            "mtls",
            merge(
                REQUIRED,
                {"controlPlane": {"caBundle": TEST_CA, "clientCertificate": {"secretName": "dp-client-tls"}}},
            ),
        ),
        Scenario(
            "ca-configmap",
            merge(
                REQUIRED, {"controlPlane": {"caBundleConfigMap": {"name": "corp-ca", "key": "bundle.pem"}}}
            ),
        ),
        Scenario(
            "proxy",
            merge(
                REQUIRED,
                {"proxy": {"httpsProxy": "http://proxy.corp:3128", "noProxy": "10.0.0.0/8,.corp"}},
            ),
        ),
        Scenario(
            "workload-identity",
            merge(
                REQUIRED,
                {
                    "azureWorkloadIdentity": {
                        "enabled": True,
                        "clientId": "11111111-2222-3333-4444-555555555555",
                        "tenantId": "66666666-7777-8888-9999-000000000000",
                    },
                    "keyVault": {"url": "https://kv-prod.vault.azure.net/", "refreshInterval": "30m"},
                },
            ),
        ),
        Scenario(
            "servicemonitor-with-api",
            merge(
                REQUIRED, {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}}
            ),
            (MONITORING_API,),
        ),
        Scenario(
            "servicemonitor-without-api",
            merge(REQUIRED, {"metrics": {"serviceMonitor": {"enabled": True}}}),
        ),
        Scenario(
            "networkpolicy",
            merge(
                REQUIRED,
                {
                    "networkPolicy": {
                        "enabled": True,
                        "apiServer": {"cidrs": ["10.0.0.1/32"]},
                        "controlPlane": {"cidrs": ["203.0.113.0/24"]},
                        "metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}],
                    }
                },
            ),
        ),
        Scenario(
            "everything",
            merge(
                REQUIRED,
                {
                    "image": {"digest": "sha256:" + "a" * 64, "pullPolicy": "Always"},
                    "imagePullSecrets": [{"name": "corp-registry"}],
                    "registryPullSecret": {"create": True, "dockerConfigJson": '{"auths":{}}'},
                    "logging": {"format": "text", "level": "DEBUG"},
                    "operator": {
                        "metricsPort": 19090,
                        "podDisruptionBudget": {"enabled": True},
                        "nodeSelector": {"kubernetes.io/os": "linux"},
                        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "platform"}],
                        "extraEnv": [{"name": "EXTRA", "value": "1"}],
                    },
                    "agent": {
                        "healthPort": 18082,
                        "podDisruptionBudget": {"enabled": True, "maxUnavailable": 0},
                    },
                    "controlPlane": {"url": "wss://cp.example.com", "caBundle": TEST_CA},
                    "proxy": {"httpsProxy": "http://proxy.corp:3128", "httpProxy": "http://proxy.corp:3128"},
                    "networkPolicy": {
                        "enabled": True,
                        "apiServer": {"cidrs": ["10.0.0.1/32"], "ports": [443]},
                        "controlPlane": {"cidrs": ["198.51.100.7/32"]},
                        "extraEgress": [
                            {"to": [{"ipBlock": {"cidr": "192.0.2.0/24"}}], "ports": [{"port": 443}]}
                        ],
                    },
                    "metrics": {"serviceMonitor": {"enabled": True, "scrapeTimeout": "10s"}},
                    "priorityClassName": "system-cluster-critical",
                    "commonLabels": {"team": "platform"},
                },
            ),
            (MONITORING_API, ADMISSION_POLICY_API),
        ),
        Scenario("crds-not-kept", merge(REQUIRED, {"crds": {"keep": False}})),
        Scenario("observability-off", merge(REQUIRED, {"observability": {"enabled": False}})),
        Scenario("no-crds", merge(REQUIRED, {"crds": {"install": False}})),
    ]
}
