"""Several control-plane replicas on one PostgreSQL database (issue 19): one truth.

Replicas are ``ControlPlaneServer`` instances in this process on loopback, each with its own
connection pool and its own LISTEN connection; agents here are the scriptable :class:`RawAgent`
(the real agent behind a load balancer is in ``test_replicas_agents.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import websockets

from choreo_cp.hub import SWEEP_INTERVAL
from choreo_cp.server import ControlPlaneServer
from choreo_cp.store import Store
from choreo_wire import protocol as p
from tests.controlplane.conftest import make_server
from tests.controlplane.helpers import (
    ADMIN_TOKEN,
    ENV_SPEC,
    RawAgent,
    app_spec,
    eventually,
    put_app,
    put_env,
    register,
)

pytestmark = pytest.mark.timeout(120)


@contextlib.asynccontextmanager
async def replicas(db: str, n: int) -> AsyncIterator[list[ControlPlaneServer]]:
    servers = [make_server(db) for _ in range(n)]  # type: ignore[arg-type]
    async with contextlib.AsyncExitStack() as stack:
        for srv in servers:
            await srv.start()
            stack.push_async_callback(srv.stop)
        for srv in servers:
            assert srv.cluster is not None
            await eventually(lambda s=srv: s.cluster.up, what="cluster link up")  # type: ignore[union-attr]
        yield servers


@contextlib.asynccontextmanager
async def rest(server: ControlPlaneServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
    ) as client:
        yield client


async def view(http: httpx.AsyncClient, dp: str) -> dict[str, Any]:
    r = await http.get(f"/api/v1/dataplanes/{dp}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Timed:
    """Receives an agent's frames in the background, each with its arrival time."""

    def __init__(self, agent: RawAgent) -> None:
        self.agent = agent
        self.frames: asyncio.Queue[tuple[float, p.Frame]] = asyncio.Queue(maxsize=10_000)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            frame = await self.agent.recv(timeout=60)
            self.frames.put_nowait((time.perf_counter(), frame))

    async def next(self, timeout: float = 5.0) -> tuple[float, p.Frame]:
        return await asyncio.wait_for(self.frames.get(), timeout)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task


def ready(key: str, image: str = "ghcr.io/acme/shop:1.0") -> p.StatusBatch:
    status = {"phase": "Ready", "image": image}
    return p.StatusBatch(items=[p.StatusItem(key=key, status=status, observed_at="2026-01-01T00:00:00Z")])


async def push_latencies(http: httpx.AsyncClient, dp: str, timed: Timed, count: int) -> list[float]:
    """Seconds from each PUT's 202 (the commit) to its frame at the agent; a frame that came before
    the 202 counts as 0 (the commit precedes both)."""
    out = []
    for i in range(count):
        r = await http.put(f"/api/v1/dataplanes/{dp}/environments/dev/apps/lat{i}", json={"spec": app_spec()})
        assert r.status_code == 202, r.text
        acked = time.perf_counter()
        arrived, frame = await timed.next()
        assert isinstance(frame.body, p.DesiredPut) and frame.body.revision == r.json()["revision"], frame
        out.append(max(0.0, arrived - acked))
    return out


async def test_a_change_through_one_replica_reaches_the_agent_on_another(
    postgres_db: Callable[[], str],
) -> None:
    async with replicas(postgres_db(), 2) as (a, b), rest(a) as http_a, rest(b) as http_b:
        token = await register(http_a, "dp1")
        token2 = await register(http_a, "dp2")
        start = await put_env(http_a, "dp1", "dev")
        assert await put_env(http_a, "dp2", "dev") == start
        epoch = (await view(http_a, "dp1"))["epoch"]
        remote = await RawAgent.connect(b.tunnel_url, token)  # on B, pushed through A
        welcome = await remote.hello("dp1", epoch=epoch, revision=start)
        assert welcome.mode == "incremental"
        local = await RawAgent.connect(a.tunnel_url, token2)  # same run's baseline: agent on A
        await local.hello("dp2", epoch=(await view(http_a, "dp2"))["epoch"], revision=start)
        remote_rx, local_rx = Timed(remote), Timed(local)
        try:
            across = await push_latencies(http_a, "dp1", remote_rx, 60)
            same = await push_latencies(http_a, "dp2", local_rx, 60)
        finally:
            await remote_rx.close()
            await local_rx.close()
        figures = {
            "across_p50_ms": 1000 * statistics.median(across),
            "across_p99_ms": 1000 * percentile(across, 0.99),
            "same_p50_ms": 1000 * statistics.median(same),
            "same_p99_ms": 1000 * percentile(same, 0.99),
        }
        print(f"commit-to-frame on loopback (60 pushes each): {figures}")
        # LISTEN/NOTIFY, not the once-a-second sweep, carries it (the sweep alone would average
        # half an interval)
        assert figures["across_p50_ms"] < 1000 * SWEEP_INTERVAL / 5, figures

        # what the agent reports to B is what A's REST API shows
        last = start + 60
        await remote.send(p.Applied(revision=last, epoch=epoch))
        await remote.send(ready("ChoreoApp/dev/lat0"))
        await remote.send(p.Heartbeat(time="now"))

        async def visible_from_a() -> bool:
            v = await view(http_a, "dp1")
            app = (await http_a.get("/api/v1/dataplanes/dp1/environments/dev/apps/lat0")).json()
            return (
                v["appliedRevision"] == last
                and v["connected"]
                and v["session"]["id"] == welcome.session
                and (app.get("status") or {}).get("phase") == "Ready"
            )

        await eventually(visible_from_a, what="B's reports visible from A")
        assert (await view(http_b, "dp1"))["session"]["id"] == welcome.session
        listed = {d["id"]: d for d in (await http_b.get("/api/v1/dataplanes")).json()["items"]}
        assert listed["dp1"]["connected"] and listed["dp1"]["session"]["id"] == welcome.session
        # dp2's session is on A: B shows it connected too
        assert (await view(http_b, "dp2"))["connected"]
        await remote.close()

        async def disconnected_everywhere() -> bool:
            return (
                not (await view(http_a, "dp1"))["connected"] and not (await view(http_b, "dp1"))["connected"]
            )

        await eventually(disconnected_everywhere, what="the end of B's session visible from A")
        await local.close()


async def test_newest_session_wins_across_replicas(postgres_db: Callable[[], str]) -> None:
    async with replicas(postgres_db(), 2) as (a, b), rest(a) as http_a, rest(b) as http_b:
        token = await register(http_a, "dp1")
        start = await put_env(http_a, "dp1", "dev")
        await put_app(http_a, "dp1", "dev", "shop")
        epoch = (await view(http_a, "dp1"))["epoch"]
        old = await RawAgent.connect(a.tunnel_url, token)
        await old.hello("dp1", epoch=epoch, revision=start)
        assert isinstance((await old.recv()).body, p.DesiredPut)
        new = await RawAgent.connect(b.tunnel_url, token)  # same token, another replica
        welcome = await new.hello("dp1", epoch=epoch, revision=start)
        goaway = (await old.recv()).body
        assert isinstance(goaway, p.GoAway) and "newer session" in goaway.reason, goaway
        with pytest.raises(websockets.ConnectionClosed):
            await old.recv()
        assert isinstance((await new.recv()).body, p.DesiredPut)
        await new.send(ready("ChoreoApp/dev/shop", "ghcr.io/acme/shop:new"))

        async def news_status_everywhere() -> bool:
            for http in (http_a, http_b):
                app = (await http.get("/api/v1/dataplanes/dp1/environments/dev/apps/shop")).json()
                v = await view(http, "dp1")
                if (app.get("status") or {}).get("image") != "ghcr.io/acme/shop:new":
                    return False
                if not v["connected"] or v["session"]["id"] != welcome.session:
                    return False
            return True

        await eventually(news_status_everywhere, what="the newer session's status and session on both")
        # the survivor still gets changes, pushed through the replica that replaced the old one
        await put_app(http_a, "dp1", "dev", "b")
        put = (await new.recv()).body
        assert isinstance(put, p.DesiredPut) and put.key == "ChoreoApp/dev/b"
        # rotating the token through A ends the session on B
        await http_a.put("/api/v1/dataplanes/dp1", params={"rotateToken": "true"})
        assert isinstance((await new.recv()).body, p.GoAway)

        async def disconnected() -> bool:
            return not (await view(http_a, "dp1"))["connected"]

        await eventually(disconnected, what="the rotated session gone")


async def test_reports_of_a_replaced_session_are_never_written(postgres_db: Callable[[], str]) -> None:
    """Replica A's session was replaced on B before A heard of it: what A still holds for it (status,
    applied revision, heartbeat, its disconnect) is dropped, B's is kept."""
    db = postgres_db()
    async with Store(db) as a, Store(db) as b:
        await a.register_dataplane("dp1")
        await a.put_object("dp1", "Environment", "dev", "dev", ENV_SPEC)
        await a.put_object("dp1", "ChoreoApp", "dev", "shop", app_spec())
        old = await a.claim_session("dp1", "s-old", replica="a", remote="r", started_at="t0")
        a.queue_status("dp1", "ChoreoApp/dev/shop", {"phase": "Old"})
        a.queue_applied("dp1", 1, "e")
        a.queue_heartbeat("dp1", at="2000-01-01T00:00:00Z")
        new = await b.claim_session("dp1", "s-new", replica="b", remote="r", started_at="t1")
        assert new > old
        b.queue_status("dp1", "ChoreoApp/dev/shop", {"phase": "New"})
        b.queue_heartbeat("dp1", at="2030-01-01T00:00:00Z")
        await b.flush()
        await a.flush()  # too late: fenced off
        assert not await a.mark_session("dp1", old, connected=False)
        status = await b.get_status("dp1", "ChoreoApp/dev/shop")
        assert status is not None and status.status == {"phase": "New"}
        record = await b.get_dataplane("dp1")
        assert record is not None
        assert record.last_heartbeat == "2030-01-01T00:00:00Z" and record.applied_revision is None
        assert record.last_disconnected is None
        session = await a.session_record("dp1")
        assert session is not None and session.session_id == "s-new" and session.open
        # the current session's own end is recorded
        assert await b.mark_session("dp1", new, connected=False)
        session = await a.session_record("dp1")
        assert session is not None and not session.open


async def test_an_agent_moving_between_replicas_continues_where_it_was(
    postgres_db: Callable[[], str],
) -> None:
    """Epochs, the log and required resyncs are the store's: an agent that moves replica continues
    incrementally from its applied revision; a stale epoch resyncs; a resync anti-entropy required
    on one replica is what the other asks for."""
    async with replicas(postgres_db(), 2) as (a, b), rest(a) as http_a:
        token = await register(http_a, "dp1")
        await put_env(http_a, "dp1", "dev")
        first = await put_app(http_a, "dp1", "dev", "one")
        epoch = (await view(http_a, "dp1"))["epoch"]
        on_a = await RawAgent.connect(a.tunnel_url, token)
        await on_a.hello("dp1", epoch=epoch, revision=first)
        await on_a.close()
        second = await put_app(http_a, "dp1", "dev", "two")  # while it moves
        on_b = await RawAgent.connect(b.tunnel_url, token)
        welcome = await on_b.hello("dp1", epoch=epoch, revision=first)
        assert welcome.mode == "incremental"
        put = (await on_b.recv()).body
        assert isinstance(put, p.DesiredPut) and put.revision == second and put.prev == first
        await on_b.close()
        stale = await RawAgent.connect(b.tunnel_url, token)
        assert (await stale.hello("dp1", epoch="another-epoch", revision=second)).mode == "resync"
        await stale.close()
        await a.store.request_resync("dp1", "inventory differs")
        again = await RawAgent.connect(b.tunnel_url, token)
        assert (await again.hello("dp1", epoch=epoch, revision=second)).mode == "resync"
        await again.close()
