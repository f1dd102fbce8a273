"""Database errors (another process holding SQLite's write lock: "database is locked") never kill
the control plane: REST answers 503 with Retry-After, tunnel sessions retry and defer their writes,
the report flush keeps its batch and /healthz says the store is failing until it works again."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from choreo_cp.context import TunnelSettings
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


@contextlib.contextmanager
def write_locked(db: Path) -> Iterator[sqlite3.Connection]:
    """Another process's write transaction: every writer of ``db`` gets SQLITE_BUSY meanwhile (WAL
    readers are not blocked)."""
    # wait for the server's own writer (a flush may be under way), then hold the lock
    conn = sqlite3.connect(db, isolation_level=None, timeout=10)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield conn
        conn.execute("ROLLBACK")
    finally:
        conn.close()


async def test_store_write_fails_while_locked_and_works_after(tmp_path: Path) -> None:
    db = tmp_path / "cp.db"
    async with Store(db, busy_timeout=0.05) as store:
        await store.register_dataplane("dp1")
        await store.put_object("dp1", "Environment", "dev", "dev", ENV_SPEC)
        key = "Environment/dev"
        store.queue_status("dp1", key, {"phase": "Ready", "message": "old"})
        with write_locked(db):
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                await store.put_object("dp1", "Environment", "qa", "qa", ENV_SPEC)
            with pytest.raises(sqlite3.OperationalError):
                await store.flush()
            # reports queued while the write failed: the newer one wins, nothing is lost
            store.queue_status("dp1", key, {"phase": "Ready", "message": "new"})
            store.queue_heartbeat("dp1", "2030-01-01T00:00:00.000000Z")
            assert store.pending == 2
        # the connection is not left inside a transaction: the next writes work
        result = await store.put_object("dp1", "Environment", "qa", "qa", ENV_SPEC)
        assert result.changed and result.revision == 2
        assert await store.flush() == 2
        status = await store.get_status("dp1", key)
        assert status is not None and status.status["message"] == "new"
        record = await store.get_dataplane("dp1")
        assert record is not None and record.last_heartbeat == "2030-01-01T00:00:00.000000Z"


async def test_rest_answers_503_with_retry_after_and_recovers(tmp_path: Path) -> None:
    db = tmp_path / "cp.db"
    server = make_server(db, busy_timeout=0.05)
    await server.start()
    try:
        async with httpx.AsyncClient(
            base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10
        ) as http:
            await register(http)
            await put_env(http, "dp1", "dev")
            with write_locked(db):
                r = await http.put(
                    "/api/v1/dataplanes/dp1/environments/dev/apps/a", json={"spec": app_spec()}
                )
                assert r.status_code == 503, r.text
                assert r.headers["retry-after"] == "2" and "store is unavailable" in r.json()["detail"]
                # reads still work (WAL): the process and its API are alive
                assert (await http.get("/api/v1/dataplanes/dp1/environments/dev")).status_code == 200
            await put_app(http, "dp1", "dev", "a")
            spec = (await http.get("/openapi.json")).json()
            put = spec["paths"]["/api/v1/dataplanes/{dp}/environments/{env}/apps/{app}"]["put"]
            assert "503" in put["responses"]
    finally:
        await server.stop()


@dataclass
class _OneApp:
    server: Any
    http: httpx.AsyncClient
    token: str
    revision: int
    epoch: str

    async def connection_recorded(self) -> bool:
        return (await self.http.get("/api/v1/dataplanes/dp1")).json()["lastConnected"] is not None


@contextlib.asynccontextmanager
async def _one_app(db: Path, settings: TunnelSettings) -> AsyncIterator[_OneApp]:
    """A control plane on ``db`` with dataplane dp1 registered and one app pushed."""
    server = make_server(db, busy_timeout=0.05, tunnel=settings)
    await server.start()
    try:
        async with httpx.AsyncClient(
            base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10
        ) as http:
            token = await register(http)
            await put_env(http, "dp1", "dev")
            revision = await put_app(http, "dp1", "dev", "a")
            snap = await server.store.snapshot("dp1")
            yield _OneApp(server, http, token, revision, snap.epoch)
    finally:
        await server.stop()


async def test_tunnel_session_survives_a_locked_store_and_defers_its_writes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="choreo_cp.retry")
    db = tmp_path / "cp.db"
    settings = TunnelSettings(heartbeat_interval=5.0, status_flush_interval=0.05, store_retry_seconds=10.0)
    async with _one_app(db, settings) as cp:
        http, revision = cp.http, cp.revision
        agent = await RawAgent.connect(cp.server.tunnel_url, cp.token)
        assert (await agent.hello("dp1", epoch=cp.epoch, revision=revision)).mode == "incremental"
        key = "ChoreoApp/dev/a"

        async def app() -> dict[str, object]:
            r = await http.get("/api/v1/dataplanes/dp1/environments/dev/apps/a")
            return r.json()  # type: ignore[no-any-return]

        async def healthz() -> int:
            return (await http.get("/healthz")).status_code

        # The session records its start beside its first frames: a lock taken before that write
        # lands would fail the record instead of the flush this test is about.
        await eventually(cp.connection_recorded, what="the session's start recorded")
        with write_locked(db):
            await agent.send(
                p.StatusBatch(items=[p.StatusItem(key=key, status={"phase": "Ready"}, observed_at="x")])
            )
            await agent.send(p.Applied(revision=revision, epoch=cp.epoch))
            # the flush keeps failing: /healthz says so, the session keeps answering
            await eventually(lambda: _is(healthz, 500), what="healthz failing while the store is locked")
            assert "writing reports failed" in (await http.get("/healthz")).text
            ref = await agent.send(p.Heartbeat(time="now"))
            echo = await agent.recv()
            assert echo.type == "heartbeat" and echo.envelope.corr == ref
            # a nack waits (with backoff) for the store instead of being dropped or ending the session
            await agent.send(p.Nack(revision=revision, key=key, code="image_not_allowed", retryable=False))
            await eventually(
                lambda: any("retrying recording a nack" in r.getMessage() for r in caplog.records),
                what="the nack write retried while the store is locked",
            )
            assert (await app())["lastError"] is None
        await eventually(lambda: _is(healthz, 200), what="healthz ok once the store works")

        async def landed() -> bool:
            view = await app()
            return view["phase"] == "Ready" and view["lastError"] is not None

        await eventually(landed, what="deferred status and nack written")
        assert (await http.get("/api/v1/dataplanes/dp1")).json()["appliedRevision"] == revision
        ref = await agent.send(p.Heartbeat(time="now"))
        assert (await agent.recv()).envelope.corr == ref  # the same session is still alive
        assert cp.server.cp.metrics.store_unavailable.labels("flush")._value.get() >= 1
        await agent.close()


async def test_a_session_starting_while_the_store_is_locked_is_served_at_once(tmp_path: Path) -> None:
    """Recording the connection is informational: it waits for the store beside the session, not
    before it. With a retry deadline of 60 s the agent's first heartbeat is answered while the lock
    is still held, and the record lands once the store works again."""
    db = tmp_path / "cp.db"
    settings = TunnelSettings(heartbeat_interval=5.0, store_retry_seconds=60.0)
    async with _one_app(db, settings) as cp:
        assert not await cp.connection_recorded()
        with write_locked(db):
            agent = await RawAgent.connect(cp.server.tunnel_url, cp.token)
            welcome = await agent.hello("dp1", epoch=cp.epoch, revision=cp.revision)
            assert welcome.mode == "incremental"
            ref = await agent.send(p.Heartbeat(time="now"))
            echo = await agent.recv()  # FRAME_TIMEOUT, far below the 60 s the record may wait
            assert echo.type == "heartbeat" and echo.envelope.corr == ref
            assert not await cp.connection_recorded()  # still waiting for the store
        await eventually(cp.connection_recorded, what="the connection recorded once the store works")
        await agent.close()


async def _is(probe: object, value: int) -> bool:
    return bool(await probe() == value)  # type: ignore[operator]
