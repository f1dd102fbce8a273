"""A cluster that does not serve gateway.networking.k8s.io: exposure falls back to Ingress.

Both targets lack the Gateway API: the emulator stops serving the group it has built in; the real
form cannot use the session's cluster (the gateway tests install the Gateway API CRDs there, and
a cluster-wide fact cannot be taken back for one test without deleting every other module's
routes), so it starts a real cluster of its own (one kwok node) where they were never installed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from choreo_dp.kube import resources as R
from choreo_sandbox.cluster import RealCluster
from tests.operator.harness import (
    GATEWAY_GROUP,
    Cluster,
    choreoapp,
    emulated_cluster,
    environment,
    eventually,
    real_cluster_at,
    running_operator,
)

# Starting a real control plane takes 15-25 s on an idle machine, more on a busy one.
pytestmark = pytest.mark.timeout(420)

GATEWAYS = {
    "external": {
        "gatewayName": "external",
        "gatewayNamespace": "gw",
        "hostname": "*.apps.example.com",
        "ingressClassName": "nginx-public",
    },
}


@pytest.fixture(params=["emulator", "real"])
async def no_gateway_api(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Cluster]:
    if request.param == "emulator":
        async with emulated_cluster(tmp_path, gateway_api=False) as cluster:
            yield cluster
        return
    async with (
        RealCluster(0, tmp_path / "admin.kubeconfig", nodes=1, gateway_api=False) as real,
        real_cluster_at(real.kubeconfig_path, tmp_path, shared=False, gateway_api=False) as cluster,
    ):
        yield cluster


async def test_public_endpoint_becomes_an_ingress_without_gateway_api(no_gateway_api: Cluster) -> None:
    cluster = no_gateway_api
    kube = cluster.kube
    dev = cluster.env_name("dev")
    ns = f"choreo-{dev}"
    # The operator discovers the capability itself (no gateway_api override).
    assert await kube.served(f"{GATEWAY_GROUP}/v1") is False
    async with running_operator(cluster):
        await kube.apply(environment(dev, gateways=GATEWAYS), "test")
        await eventually(lambda: kube.get(R.NAMESPACES, ns), what=f"namespace {ns}")
        eps = [{"name": "api", "port": 8080, "visibility": "Public", "basePath": "/v1"}]
        await kube.apply(choreoapp("web", dev, endpoints=eps), "test")

        async def ready() -> dict[str, Any] | None:
            app = await kube.get(R.CHOREOAPPS, "web", ns)
            status = (app or {}).get("status") or {}
            return app if status.get("phase") == "Ready" else None

        app = await eventually(ready, timeout=20, what="web Ready")
        assert app["status"]["endpoints"] == [
            {"name": "api", "visibility": "Public", "url": "https://web-api.apps.example.com/v1"}
        ]
        exposed = next(c for c in app["status"]["conditions"] if c["type"] == "Exposed")
        assert exposed["status"] == "True"
        ingress = await kube.get(R.INGRESSES, "web-api", ns)
        assert ingress is not None
        assert ingress["spec"]["ingressClassName"] == "nginx-public"
        rule = ingress["spec"]["rules"][0]
        assert rule["host"] == "web-api.apps.example.com"
        path = rule["http"]["paths"][0]
        assert path["path"] == "/v1"
        assert path["backend"]["service"] == {"name": "web", "port": {"number": 8080}}
        assert ingress["metadata"]["ownerReferences"][0]["uid"] == app["metadata"]["uid"]
