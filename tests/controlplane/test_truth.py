"""The control plane tells the truth about its data planes (issue 14): in sync means the agent's
inventory digest equals the desired digest, a digest that keeps differing asks for a resync (which
survives a restart and backs off), a missing app is Missing, a silent data plane is not connected,
and pushes its Environment refuses are refused early."""

from __future__ import annotations

import datetime as dt
import json
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from choreo_cp import insync
from choreo_cp.context import TunnelSettings
from choreo_cp.server import ControlPlaneServer
from choreo_wire import protocol as p
from tests.controlplane.conftest import make_server
from tests.controlplane.helpers import (
    ADMIN_TOKEN,
    RawAgent,
    app_spec,
    eventually,
    put_app,
    put_env,
    register,
)


def client(server: ControlPlaneServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10
    )


async def dataplane(http: httpx.AsyncClient) -> dict[str, Any]:
    r = await http.get("/api/v1/dataplanes/dp1")
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def seeded(http: httpx.AsyncClient, apps: int = 3) -> str:
    token = await register(http)
    await put_env(http, "dp1", "dev")
    for i in range(apps):
        await put_app(http, "dp1", "dev", f"a{i}")
    return token


async def incremental_agent(server: ControlPlaneServer, token: str) -> tuple[RawAgent, str, int]:
    """An agent that already has everything (same epoch, newest revision): nothing is streamed."""
    snap = await server.store.snapshot("dp1")
    agent = await RawAgent.connect(server.tunnel_url, token)
    welcome = await agent.hello("dp1", epoch=snap.epoch, revision=snap.revision)
    assert welcome.mode == "incremental"
    await agent.send(p.Applied(revision=snap.revision, epoch=snap.epoch))
    return agent, snap.epoch, snap.revision


async def summary(
    server: ControlPlaneServer, *, drop: str | None = None, revision: int | None = None
) -> p.InventorySummary:
    snap = await server.store.snapshot("dp1")
    items = {k: h for k, h in snap.hashes.items() if k != drop}
    return p.InventorySummary(
        count=len(items),
        digest=p.inventory_digest(items),
        revision=snap.revision if revision is None else revision,
    )


async def beat(agent: RawAgent, inventory: p.InventorySummary) -> list[p.Frame]:
    """Send a heartbeat with a summary; the frames up to its echo (a goaway, if any, comes after)."""
    ref = await agent.send(p.Heartbeat(time="now", inventory=inventory))
    frames = await agent.recv_until("heartbeat")
    assert frames[-1].envelope.corr == ref
    return frames


async def run_resync(agent: RawAgent, items: dict[str, str]) -> list[p.Frame]:
    """Answer snapshot.begin with the agent's whole inventory; the frames up to snapshot.end."""
    begin = (await agent.recv()).body
    assert isinstance(begin, p.SnapshotBegin)
    every = list(range(begin.buckets))
    for frame in p.inventory_frames(every, items):
        await agent.send(frame)
    return await agent.recv_until("snapshot.end")


# -- in sync ---------------------------------------------------------------------------------------
async def test_in_sync_needs_the_inventory_digest_not_only_the_ack(
    server: ControlPlaneServer, http: httpx.AsyncClient
) -> None:
    token = await seeded(http)
    agent, _, revision = await incremental_agent(server, token)
    await eventually(lambda: _field(http, "appliedRevision", revision), what="ack recorded")
    view = await dataplane(http)
    assert view["inSync"] is False and view["syncReason"] == "the agent has not reported its inventory yet"

    # acknowledged, but a hand-deleted app is not in the cluster: the digest says so
    await beat(agent, await summary(server, drop="ChoreoApp/dev/a1"))
    await eventually(lambda: _field(http, "inventory", None, negate=True), what="summary stored")
    view = await dataplane(http)
    assert view["inSync"] is False
    assert view["syncReason"].startswith(
        "the agent's inventory (3 objects) differs from the desired state (4 objects)"
    )
    assert view["inventory"]["revision"] == revision and view["inventory"]["count"] == 3
    assert view["desiredDigest"] == (await summary(server)).digest

    good = await summary(server)
    await beat(agent, good)
    await eventually(lambda: _field(http, "inSync", True), what="in sync once the digest matches")
    view = await dataplane(http)
    assert view["syncReason"] is None and view["inventory"]["digest"] == good.digest
    await agent.close()


async def test_refused_keys_keep_a_dataplane_out_of_sync_and_are_named(
    server: ControlPlaneServer, http: httpx.AsyncClient
) -> None:
    token = await seeded(http)
    agent, _, revision = await incremental_agent(server, token)
    await agent.send(
        p.Nack(revision=revision, key="ChoreoApp/dev/a2", code="image_not_allowed", retryable=False)
    )
    # The agent has everything but the refused app; the difference is explained, so no resync.
    without = await summary(server, drop="ChoreoApp/dev/a2")
    for _ in range(3):
        frames = await beat(agent, without)
        assert not any(isinstance(f.body, p.GoAway) for f in frames)
    await eventually(lambda: _field(http, "inventory", None, negate=True), what="summary stored")
    view = await dataplane(http)
    assert view["inSync"] is False and view["refused"] == ["ChoreoApp/dev/a2"]
    assert (
        view["syncReason"]
        == "1 desired object(s) refused by the data plane: ChoreoApp/dev/a2 (image_not_allowed)"
    )
    assert view["resyncRequired"] is None and view["resyncRequests"] == 0
    # a new spec of the refused app makes the refusal history
    await put_app(http, "dp1", "dev", "a2", app_spec(image="ghcr.io/acme/shop:2"))
    assert (await dataplane(http))["refused"] == []
    await agent.close()


# -- anti-entropy ----------------------------------------------------------------------------------
async def test_a_digest_that_keeps_differing_requires_a_resync_that_survives_a_restart(
    tmp_path: Path,
) -> None:
    db = tmp_path / "cp.db"
    settings = TunnelSettings(heartbeat_interval=5.0, status_flush_interval=0.05, anti_entropy_backoff=60.0)
    server = make_server(db, tunnel=settings)
    await server.start()
    try:
        async with client(server) as http:
            token = await seeded(http)
            agent, epoch, revision = await incremental_agent(server, token)
            differing = await summary(server, drop="ChoreoApp/dev/a0")
            # one differing summary may be a write in flight: no action
            assert not any(isinstance(f.body, p.GoAway) for f in await beat(agent, differing))
            await beat(agent, differing)
            goaway = (await agent.recv()).body
            assert isinstance(goaway, p.GoAway) and goaway.reason == p.GOAWAY_RESYNC
            assert goaway.retry_after == settings.resync_retry_after
            view = await dataplane(http)
            assert view["resyncRequired"].startswith("inventory digest") and view["resyncRequests"] == 1
            await agent.close()
    finally:
        await server.stop()

    # the requirement is in the store: a restarted control plane answers the next hello with a resync
    server = make_server(db, tunnel=settings)
    await server.start()
    try:
        async with client(server) as http:
            agent = await RawAgent.connect(server.tunnel_url, token)
            welcome = await agent.hello("dp1", epoch=epoch, revision=revision)
            assert welcome.mode == "resync"
            snap = await server.store.snapshot("dp1")
            have = {k: h for k, h in snap.hashes.items() if k != "ChoreoApp/dev/a0"}
            frames = await run_resync(agent, have)
            puts = [f.body.key for f in frames if isinstance(f.body, p.DesiredPut)]
            assert puts == ["ChoreoApp/dev/a0"]  # only the difference travels
            await eventually(lambda: _field(http, "resyncRequired", None), what="required resync cleared")
            # the agent put it back: its summary matches, which also resets the backoff
            await beat(agent, await summary(server))
            await eventually(lambda: _field(http, "resyncRequests", 0), what="backoff reset")
            assert (await dataplane(http))["inSync"] is True
            await agent.close()
    finally:
        await server.stop()


async def test_anti_entropy_backs_off_while_the_difference_persists(tmp_path: Path) -> None:
    settings = TunnelSettings(heartbeat_interval=5.0, status_flush_interval=0.05, anti_entropy_backoff=60.0)
    server = make_server(tmp_path / "cp.db", tunnel=settings)
    await server.start()
    try:
        async with client(server) as http:
            token = await seeded(http)
            agent, epoch, revision = await incremental_agent(server, token)
            differing = await summary(server, drop="ChoreoApp/dev/a0")
            await beat(agent, differing)
            await beat(agent, differing)
            assert isinstance((await agent.recv()).body, p.GoAway)
            await agent.close()
            # the agent resyncs but its cluster still lacks the app (say a webhook keeps deleting it)
            agent = await RawAgent.connect(server.tunnel_url, token)
            assert (await agent.hello("dp1", epoch=epoch, revision=revision)).mode == "resync"
            await run_resync(agent, {k: h for k, h in (await server.store.snapshot("dp1")).hashes.items()})
            await eventually(lambda: _field(http, "resyncRequired", None), what="required resync cleared")
            for _ in range(4):
                frames = await beat(agent, differing)
                assert not any(isinstance(f.body, p.GoAway) for f in frames), (
                    "resync requested within the backoff"
                )
            view = await dataplane(http)
            assert view["resyncRequests"] == 1 and view["inSync"] is False
            deferred = server.cp.metrics.anti_entropy.labels("resync_deferred")._value.get()
            assert deferred >= 3
            await agent.close()
    finally:
        await server.stop()


# -- what the app view says ------------------------------------------------------------------------
async def test_missing_app_is_missing_not_its_last_ready(
    server: ControlPlaneServer, http: httpx.AsyncClient
) -> None:
    token = await seeded(http, apps=1)
    agent, _, _ = await incremental_agent(server, token)
    key = "ChoreoApp/dev/a0"
    app_revision = (await http.get("/api/v1/dataplanes/dp1/environments/dev/apps/a0")).json()["revision"]
    ready = {
        "phase": "Ready",
        "revision": app_revision,
        "message": "2/2 ready",
        "conditions": [{"type": "Ready", "status": "True", "reason": "Available"}],
    }
    await agent.send(
        p.StatusBatch(items=[p.StatusItem(key=key, status=ready, observed_at="2030-01-02T03:04:05Z")])
    )

    async def app() -> dict[str, Any]:
        return (await http.get("/api/v1/dataplanes/dp1/environments/dev/apps/a0")).json()  # type: ignore[no-any-return]

    await eventually(lambda: _has(app, "phase", "Ready"), what="Ready reported")
    view = await app()
    assert (view["reason"], view["message"], view["missing"]) == ("Available", "2/2 ready", False)
    assert view["observedAt"] == "2030-01-02T03:04:05.000000Z"
    assert (view["observedRevision"], view["stale"]) == (app_revision, False)

    await agent.send(
        p.StatusBatch(
            items=[p.StatusItem(key=key, status={}, observed_at="2030-01-02T03:05:00Z", missing=True)]
        )
    )
    await eventually(lambda: _has(app, "phase", "Missing"), what="Missing reported")
    view = await app()
    assert (
        view["missing"] is True
        and view["stale"] is True
        and view["observedAt"] == "2030-01-02T03:05:00.000000Z"
    )
    # a listing says the same (one query for all apps)
    [listed] = (await http.get("/api/v1/dataplanes/dp1/environments/dev/apps")).json()["items"]
    assert listed["phase"] == "Missing"

    # a status describing an older revision is stale
    await put_app(http, "dp1", "dev", "a0", app_spec(image="ghcr.io/acme/shop:2"))
    await agent.send(
        p.StatusBatch(items=[p.StatusItem(key=key, status=ready, observed_at="2030-01-02T03:06:00Z")])
    )
    await eventually(lambda: _has(app, "phase", "Ready"), what="Ready again")
    view = await app()
    assert (
        view["observedRevision"] == app_revision and view["revision"] > app_revision and view["stale"] is True
    )
    await agent.close()


async def test_a_dataplane_without_heartbeats_is_not_connected_though_its_socket_is_open(
    tmp_path: Path,
) -> None:
    # The session stays open (the agent keeps sending frames) but sends no heartbeat: after the
    # dead-link bound the view says not connected.
    # a bound of 3 s: long enough that a loaded machine still sees the fresh session as connected
    settings = TunnelSettings(heartbeat_interval=5.0, idle_timeout=3.0, status_flush_interval=0.05)
    server = make_server(tmp_path / "cp.db", tunnel=settings)
    await server.start()
    try:
        async with client(server) as http:
            token = await seeded(http, apps=1)
            agent, _, _ = await incremental_agent(server, token)
            view = await dataplane(http)
            assert view["connected"] is True, json.dumps(view)

            async def silent_but_open() -> bool:
                await agent.send(p.Orphans(count=0))  # proof the socket is alive, not a heartbeat
                v = await dataplane(http)
                return v["session"] is not None and v["connected"] is False

            await eventually(
                silent_but_open, what="not connected past the dead-link bound", timeout=10.0, interval=0.2
            )
            assert (await dataplane(http))["lastHeartbeatAgeSeconds"] > 3.0
            await beat(agent, await summary(server))
            await eventually(
                lambda: _field(http, "connected", True), what="connected again after a heartbeat"
            )
            await agent.close()
    finally:
        await server.stop()


# -- helpers ---------------------------------------------------------------------------------------
async def _field(http: httpx.AsyncClient, name: str, value: object, *, negate: bool = False) -> bool:
    got = (await dataplane(http))[name]
    return (got != value) if negate else (got == value)


async def _has(fetch: Any, name: str, value: object) -> bool:
    return bool((await fetch())[name] == value)


def test_anti_entropy_backoff_doubles_to_its_cap() -> None:
    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    at = (now - dt.timedelta(seconds=30)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    allowed = partial(insync.resync_allowed, now=now, base=60.0, cap=600.0)
    assert allowed(0, None) == 0.0  # the first request is immediate
    assert allowed(1, at) == pytest.approx(30.0)  # 60 s after the first, 30 s of it passed
    assert allowed(2, at) == pytest.approx(90.0)  # 120 s after the second
    assert allowed(5, at) == pytest.approx(570.0)  # 960 capped to 600
    assert allowed(40, at) == pytest.approx(570.0)
    assert allowed(1, "not a time") == 0.0
