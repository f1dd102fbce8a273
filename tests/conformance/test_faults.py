"""Fault injection: 429 with Retry-After, 500, 409 and stalls, seen by real clients.

On the emulator the API server injects them itself; on the real kube-apiserver a ``FaultProxy``
in front of it does, with the same rules.  Either way the clients here are built from
``kube_target.fault_kubeconfig``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from tests.conformance.helpers import api_client, raw, unique
from tests.fixtures.kube import KubeTarget, kubectl_runner


@pytest.fixture(scope="module")
def api(kube_target: KubeTarget) -> Iterator[client.ApiClient]:
    """Overrides the conformance ``api`` (and so ``core`` and ``ns``): the faultable endpoint."""
    c = api_client(kube_target.fault_kubeconfig)
    yield c
    c.close()


def _status_body(body: object, code: int, reason: str, message: str = "injected fault") -> None:
    assert isinstance(body, dict)
    assert body["kind"] == "Status" and body["apiVersion"] == "v1" and body["status"] == "Failure"
    assert body["code"] == code and body["reason"] == reason and body["message"] == message


def test_429_with_retry_after_then_recovers(
    kube_target: KubeTarget, api: client.ApiClient, core: client.CoreV1Api, ns: str
) -> None:
    core.create_namespaced_config_map(ns, {"metadata": {"name": "f429"}})
    fault = kube_target.add_fault(
        verb="patch", resource="configmaps", status=429, count=2, retry_after=1, namespace=ns
    )
    for _ in range(2):
        status, body, headers = raw(
            api,
            "PATCH",
            f"/api/v1/namespaces/{ns}/configmaps/f429",
            body={"data": {"a": "1"}},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert status == 429 and body["reason"] == "TooManyRequests"
        assert headers.get("Retry-After") == "1"
        _status_body(body, 429, "TooManyRequests")
        assert body["details"] == {"retryAfterSeconds": 1}
    assert fault.hits == 2
    assert core.patch_namespaced_config_map("f429", ns, {"data": {"a": "1"}}).data == {"a": "1"}


@pytest.mark.parametrize(
    ("code", "reason"), [(500, "InternalError"), (409, "Conflict"), (503, "ServiceUnavailable")]
)
def test_error_codes(
    kube_target: KubeTarget, core: client.CoreV1Api, ns: str, code: int, reason: str
) -> None:
    name = unique("ferr")
    kube_target.add_fault(verb="create", resource="secrets", status=code, count=1, namespace=ns)
    with pytest.raises(client.ApiException) as exc:
        core.create_namespaced_secret(ns, {"metadata": {"name": name}})
    assert exc.value.status == code
    _status_body(json.loads(exc.value.body), code, reason)
    assert core.create_namespaced_secret(ns, {"metadata": {"name": name}}).metadata.name == name


def test_stall(kube_target: KubeTarget, core: client.CoreV1Api, ns: str) -> None:
    core.create_namespaced_config_map(ns, {"metadata": {"name": "slow"}})
    kube_target.add_fault(verb="get", resource="configmaps", stall=0.5, count=1, name="slow")
    t0 = time.monotonic()
    assert core.read_namespaced_config_map("slow", ns).metadata.name == "slow"
    assert time.monotonic() - t0 >= 0.5


def test_kubectl_honours_retry_after_and_reports_the_status(
    kube_target: KubeTarget, core: client.CoreV1Api, ns: str, tmp_path: Path
) -> None:
    """client-go (kubectl) waits out a 429's Retry-After and retries; a 500 is shown as a Status."""
    kubectl = kubectl_runner(kube_target.fault_kubeconfig, tmp_path / "kubectl-cache")
    core.create_namespaced_config_map(ns, {"metadata": {"name": "kc"}})
    # Every verb and resource: discovery (/api, /apis) is not a resource request and never matches.
    throttled = kube_target.add_fault(status=429, retry_after=1, count=2, namespace=ns, name="kc")
    t0 = time.monotonic()
    out = kubectl("get", "configmap", "kc", "-n", ns, "-o", "jsonpath={.metadata.name}")
    assert out.stdout == "kc"
    assert throttled.hits == 2 and time.monotonic() - t0 >= 2.0
    failed = kube_target.add_fault(verb="get", resource="configmaps", status=500, count=1, name="kc")
    out = kubectl("get", "configmap", "kc", "-n", ns, check=False)
    assert out.returncode == 1 and failed.hits == 1
    assert "Error from server (InternalError): injected fault" in out.stderr
