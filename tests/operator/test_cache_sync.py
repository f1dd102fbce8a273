"""Workers reconcile only once the ChoreoApps are listed (controller-runtime's WaitForCacheSync).

kopf holds every regular handler until the indexed ChoreoApps are listed (handlers.py); the
listing feeds the cache through ``on_app_listed``. A reconcile that ran in the middle of the
listing would judge a caller's connection against a half-filled cache and roll its pods without
the target's address."""

from __future__ import annotations

import asyncio
from typing import Any

from choreo_dp.kube.config import ConnectionConfig
from choreo_dp.operator.config import OperatorConfig
from choreo_dp.operator.controller import Controller
from choreo_dp.operator.handlers import build_registry
from choreo_dp.operator.keys import AppKey
from choreo_dp.operator.reconcile import ReconcileContext, Result
from choreo_dp.render import ClusterCapabilities
from choreo_dp.render.labels import APP_LABEL
from tests.operator.fake_kube import FakeKube
from tests.operator.test_connection_predicates import body, changed
from tests.operator.test_predicates import _deployment


def _app(name: str, **spec: Any) -> dict[str, Any]:
    out = changed("metadata.name", name, body(**spec))
    return out


async def _settle() -> None:
    # Enough turns of the loop for a waiting worker to take a queued key and reconcile it.
    for _ in range(20):
        await asyncio.sleep(0)


class Seen(list[tuple[AppKey, set[str]]]):
    """Reconciles in order, each with the app names the cache held then."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Condition()

    async def at_least(self, n: int) -> None:
        async with asyncio.timeout(5), self.changed:
            await self.changed.wait_for(lambda: len(self) >= n)


async def _controller(timeout: float = 30.0) -> tuple[Controller, Seen]:
    ctl = Controller(
        FakeKube(),
        OperatorConfig(secrets_factory=None, workers=2, cache_sync_timeout=timeout),
        ClusterCapabilities(gateway_api=False),
        None,
    )
    seen = Seen()

    async def reconcile(ctx: ReconcileContext, key: AppKey) -> Result:
        async with seen.changed:
            seen.append((key, {k.name for k in ctl.cache.apps}))
            seen.changed.notify_all()
        return Result()

    ctl.register(AppKey, reconcile)
    await ctl.start()
    return ctl, seen


async def test_no_reconcile_before_the_listing_is_complete() -> None:
    ctl, seen = await _controller()
    try:
        caller = _app("web", connections=[{"name": "orders", "app": "orders", "endpoint": "http"}])
        ctl.on_app_listed(caller)
        await _settle()
        assert seen == [], "a worker reconciled while the listing was still going on"
        ctl.on_app_listed(_app("orders"))
        await _settle()
        assert seen == []
        # The first regular event: kopf has finished every indexed listing.
        ctl.on_app_event(None, caller)
        await seen.at_least(2)
        assert {key.name for key, _ in seen} == {"web", "orders"}
        assert all(names == {"web", "orders"} for _, names in seen), seen
    finally:
        await ctl.stop()


async def test_the_environment_is_known_before_its_apps_are_reconciled() -> None:
    ctl, seen = await _controller()
    try:
        ctl.on_app_listed(_app("orders"))
        await _settle()
        ctl.on_env_listed({"metadata": {"name": "dev", "generation": 1}, "spec": {}})
        await _settle()
        assert seen == []
        assert "dev" in ctl.cache.envs
        ctl.on_app_event(None, _app("orders"))
        await seen.at_least(1)
    finally:
        await ctl.stop()


async def test_any_kind_of_event_ends_the_wait() -> None:
    ctl, seen = await _controller()
    try:
        ctl.on_app_listed(_app("orders"))
        await _settle()
        assert seen == []
        ctl.on_dataplane_event(None, {"metadata": {"name": "dp"}, "spec": {}})
        await seen.at_least(1)
    finally:
        await ctl.stop()


async def test_listings_after_the_sync_leave_the_cache_to_events() -> None:
    ctl, _ = await _controller()
    try:
        ctl.on_app_event("ADDED", _app("orders"))
        newer = changed("spec.image", "r/x:2", _app("orders"))
        ctl.on_app_listed(newer)  # kopf indexes every later event too; the event handler owns it
        assert ctl.cache.apps[AppKey("choreo-dev", "orders")]["spec"]["image"] == "r/x:1"
    finally:
        await ctl.stop()


async def test_workers_do_not_hang_without_any_event() -> None:
    ctl, seen = await _controller(timeout=0.2)
    try:
        ctl.on_app_listed(_app("orders"))
        await seen.at_least(1)
        assert ctl.cache_synced.is_set()
    finally:
        await ctl.stop()


def _pod(app: str, image_id: str) -> dict[str, Any]:
    return {
        "metadata": {"name": f"{app}-1", "namespace": "choreo-dev", "labels": {APP_LABEL: app}},
        "spec": {"containers": [{"name": "app", "image": "r/x:1"}]},
        "status": {"containerStatuses": [{"name": "app", "ready": True, "imageID": image_id}]},
    }


async def test_the_workload_and_its_pods_are_known_before_an_app_is_reconciled() -> None:
    """After a restart a Deployment known without its pods read as running its tag, not the digest
    its pods report: a status write, and its undoing once the pods arrived."""
    ctl, seen = await _controller()
    key = AppKey("choreo-dev", "orders")
    try:
        ctl.on_app_listed(_app("orders"))
        deployment = _deployment(1, 1, 1)
        deployment["metadata"].update(name="orders", namespace="choreo-dev")
        deployment["metadata"]["labels"][APP_LABEL] = "orders"
        deployment["metadata"]["ownerReferences"][0]["uid"] = ctl.cache.apps[key]["metadata"].get("uid", "a1")
        ctl.on_child_listed(deployment)
        ctl.on_pod_listed(_pod("orders", "sha256:" + "a" * 64))
        await _settle()
        assert seen == [], "a listed Deployment or pod ended the wait"
        assert key in ctl.cache.deployments
        assert [p.image_id for p in ctl.cache.pods[key].values()] == ["sha256:" + "a" * 64]
        ctl.on_app_event(None, _app("orders"))
        await seen.at_least(1)
        # once synced, a listing no longer writes the cache: the event handlers own it
        ctl.on_pod_listed(_pod("orders", "sha256:" + "b" * 64))
        assert [p.image_id for p in ctl.cache.pods[key].values()] == ["sha256:" + "a" * 64]
    finally:
        await ctl.stop()


def test_kopf_lists_the_status_inputs_before_any_handler_runs() -> None:
    """kopf holds its event handlers until every indexed kind is listed: ChoreoApps, Environments,
    and what an app's status is computed from."""
    ctl = Controller(
        FakeKube(), OperatorConfig(secrets_factory=None), ClusterCapabilities(gateway_api=False), None
    )
    registry = build_registry(ctl, ConnectionConfig(server="https://127.0.0.1:1"))
    indexed = {s.any_name for s in registry._indexing.get_all_selectors()}
    assert {"choreoapps", "environments", "deployments", "cronjobs", "pods"} <= indexed, indexed
