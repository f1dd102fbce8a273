"""Fault injection (emulator only): 429 with Retry-After, 500, 409 and stalls, seen by real clients."""

from __future__ import annotations

import time

import pytest
from kubernetes import client

from tests.conformance.helpers import raw, unique
from tests.fixtures.kube import KubeTarget

pytestmark = pytest.mark.emulator_only


def test_429_with_retry_after_then_recovers(
    kube_target: KubeTarget, api: client.ApiClient, core: client.CoreV1Api, ns: str
) -> None:
    srv = kube_target.server
    assert srv is not None
    core.create_namespaced_config_map(ns, {"metadata": {"name": "f429"}})
    kube_target.run(
        lambda: srv.faults.add(
            verb="patch", resource="configmaps", status=429, count=2, retry_after=1, namespace=ns
        )
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
    assert core.patch_namespaced_config_map("f429", ns, {"data": {"a": "1"}}).data == {"a": "1"}


@pytest.mark.parametrize("code", [500, 409])
def test_error_codes(kube_target: KubeTarget, core: client.CoreV1Api, ns: str, code: int) -> None:
    srv = kube_target.server
    assert srv is not None
    name = unique("ferr")
    kube_target.run(
        lambda: srv.faults.add(verb="create", resource="secrets", status=code, count=1, namespace=ns)
    )
    with pytest.raises(client.ApiException) as exc:
        core.create_namespaced_secret(ns, {"metadata": {"name": name}})
    assert exc.value.status == code
    assert core.create_namespaced_secret(ns, {"metadata": {"name": name}}).metadata.name == name


def test_stall(kube_target: KubeTarget, core: client.CoreV1Api, ns: str) -> None:
    srv = kube_target.server
    assert srv is not None
    core.create_namespaced_config_map(ns, {"metadata": {"name": "slow"}})
    kube_target.run(
        lambda: srv.faults.add(verb="get", resource="configmaps", stall=0.5, count=1, name="slow")
    )
    t0 = time.monotonic()
    assert core.read_namespaced_config_map("slow", ns).metadata.name == "slow"
    assert time.monotonic() - t0 >= 0.5
