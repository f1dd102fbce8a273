"""A cluster that does not serve gateway.networking.k8s.io: exposure falls back to Ingress."""

from __future__ import annotations

from typing import Any

import pytest

from choreo_dp.kube import resources as R
from choreo_dp.sandbox.apiserver import ApiServer
from tests.operator.harness import (
    choreoapp,
    cluster_on,
    environment,
    eventually,
    running_operator,
    stop_serving_group,
)

pytestmark = pytest.mark.emulator_only

GATEWAYS = {
    "external": {
        "gatewayName": "external",
        "gatewayNamespace": "gw",
        "hostname": "*.apps.example.com",
        "ingressClassName": "nginx-public",
    },
}


async def test_public_endpoint_becomes_an_ingress_without_gateway_api(kube_emulator: ApiServer) -> None:
    stop_serving_group(kube_emulator, "gateway.networking.k8s.io")
    assert kube_emulator.kubeconfig_path is not None
    async with cluster_on(kube_emulator, kube_emulator.kubeconfig_path) as cluster:
        kube = cluster.kube
        # The operator discovers the capability itself (no gateway_api override).
        assert await kube.served("gateway.networking.k8s.io/v1") is False
        async with running_operator(cluster):
            await kube.apply(environment("dev", gateways=GATEWAYS), "test")
            await eventually(lambda: kube.get(R.NAMESPACES, "choreo-dev"), what="namespace choreo-dev")
            eps = [{"name": "api", "port": 8080, "visibility": "Public", "basePath": "/v1"}]
            await kube.apply(choreoapp("web", "dev", endpoints=eps), "test")

            async def ready() -> dict[str, Any] | None:
                app = await kube.get(R.CHOREOAPPS, "web", "choreo-dev")
                status = (app or {}).get("status") or {}
                return app if status.get("phase") == "Ready" else None

            app = await eventually(ready, timeout=20, what="web Ready")
            assert app["status"]["endpoints"] == [
                {"name": "api", "visibility": "Public", "url": "https://web-api.apps.example.com/v1"}
            ]
            exposed = next(c for c in app["status"]["conditions"] if c["type"] == "Exposed")
            assert exposed["status"] == "True"
            ingress = await kube.get(R.INGRESSES, "web-api", "choreo-dev")
            assert ingress is not None
            assert ingress["spec"]["ingressClassName"] == "nginx-public"
            rule = ingress["spec"]["rules"][0]
            assert rule["host"] == "web-api.apps.example.com"
            path = rule["http"]["paths"][0]
            assert path["path"] == "/v1"
            assert path["backend"]["service"] == {"name": "web", "port": {"number": 8080}}
            assert ingress["metadata"]["ownerReferences"][0]["uid"] == app["metadata"]["uid"]
