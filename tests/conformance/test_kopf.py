"""kopf 1.45 against the API: discovery, list+watch, JSON/merge patches of object and status, finalizers."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf
import pytest
from kubernetes import client

from tests.conformance.helpers import choreo_app, install_crds, unique
from tests.fixtures.kube import KubeTarget
from tests.polling import eventually


def _read(custom: client.CustomObjectsApi, ns: str, name: str) -> dict[str, Any] | None:
    try:
        obj: dict[str, Any] = custom.get_namespaced_custom_object(
            "choreo.dev", "v1alpha1", ns, "choreoapps", name
        )
        return obj
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def test_kopf_round_trip(
    kube_target: KubeTarget, api: client.ApiClient, ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_crds(api)
    monkeypatch.setenv("KUBECONFIG", str(kube_target.kubeconfig))
    custom = client.CustomObjectsApi(api)
    registry = kopf.OperatorRegistry()
    deleted: list[str] = []

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.peering.standalone = True
        settings.posting.level = logging.WARNING
        settings.watching.server_timeout = 30
        settings.networking.request_timeout = 30

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.create("choreo.dev", "v1alpha1", "choreoapps", registry=registry)
    def on_create(spec: Any, patch: kopf.Patch, **_: Any) -> None:
        patch.status["phase"] = "Ready"
        patch.status["image"] = spec["image"]

    @kopf.on.delete("choreo.dev", "v1alpha1", "choreoapps", registry=registry)
    def on_delete(name: str, **_: Any) -> None:
        deleted.append(name)

    name = unique("kopf")

    async def scenario() -> None:
        stop = asyncio.Event()
        operator = asyncio.create_task(
            kopf.operator(registry=registry, namespaces=[ns], standalone=True, stop_flag=stop)
        )
        try:
            await asyncio.to_thread(
                custom.create_namespaced_custom_object,
                "choreo.dev",
                "v1alpha1",
                ns,
                "choreoapps",
                choreo_app(name, ns),
            )

            def operator_alive() -> None:
                if operator.done():
                    operator.result()  # its crash, not a timeout

            async def until(pred: Any, what: str, timeout: float = 30) -> Any:
                return await eventually(
                    lambda: asyncio.to_thread(pred), what, timeout=timeout, interval=0.1, guard=operator_alive
                )

            obj = await until(
                lambda: (
                    (o := _read(custom, ns, name)) and (o.get("status") or {}).get("phase") == "Ready" and o
                ),
                "kopf to patch status",
            )
            assert obj["status"]["image"] == "nginx:1.25"
            assert "kopf.zalando.org/KopfFinalizerMarker" in obj["metadata"].get("finalizers", [])
            await asyncio.to_thread(
                custom.delete_namespaced_custom_object, "choreo.dev", "v1alpha1", ns, "choreoapps", name
            )
            await until(lambda: _read(custom, ns, name) is None, "kopf to release its finalizer")
            assert deleted == [name]
        finally:
            stop.set()
            await asyncio.wait_for(operator, timeout=30)

    asyncio.run(scenario())
