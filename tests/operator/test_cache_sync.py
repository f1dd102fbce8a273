"""Workers reconcile only once the ChoreoApps are listed (controller-runtime's WaitForCacheSync).

kopf holds every regular handler until the indexed ChoreoApps are listed (handlers.py); the
listing feeds the cache through ``on_app_listed``. A reconcile that ran in the middle of the
listing would judge a caller's connection against a half-filled cache and roll its pods without
the target's address."""

from __future__ import annotations

import asyncio
from typing import Any

from choreo_dp.operator.config import OperatorConfig
from choreo_dp.operator.controller import Controller
from choreo_dp.operator.keys import AppKey
from choreo_dp.operator.reconcile import ReconcileContext, Result
from choreo_dp.render import ClusterCapabilities
from tests.operator.fake_kube import FakeKube
from tests.operator.test_connection_predicates import body, changed


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
