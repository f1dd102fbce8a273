"""Which tunnel session serves which dataplane, and how REST changes reach it.

One active session per dataplane: a newer connection replaces the older one (the older is told to go
away), because the newest connection is the one the agent is actually using after a network blip.
REST handlers call :meth:`Hub.notify` after their change is committed; the session wakes up and
streams whatever the store holds beyond what it already sent, so notifications can be coalesced
and never carry data themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
from typing import Any, Protocol

import psycopg

from choreo_cp.rebalance import fair_share, to_shed
from choreo_cp.retry import Backoff
from choreo_cp.store import Store
from choreo_cp.store.postgres_engine import CONNECTION_OPTIONS
from choreo_cp.store.sessions import CHANGED_CHANNEL, HEADS_SQL, SESSION_CHANNEL
from choreo_dp.observability.health import Liveness

log = logging.getLogger(__name__)

# A replaced agent waits this long before dialing again: if two agents share one token by mistake,
# they alternate every few seconds instead of fighting in a tight loop.
REPLACED_RETRY_AFTER = 5.0


class Session(Protocol):
    @property
    def dataplane(self) -> str: ...

    @property
    def session_id(self) -> str: ...

    @property
    def started_at(self) -> str: ...

    @property
    def remote(self) -> str: ...

    @property
    def fence(self) -> int | None:
        """The session's fencing token in the store (several replicas); None on SQLite."""

    def wake(self) -> None:
        """Something changed in the store for this dataplane."""

    def go_away(self, reason: str, retry_after: float) -> None:
        """Send goaway with ``reason`` and close soon (a newer session took over, token revoked...)."""


class Hub:
    def __init__(self) -> None:
        # names this process in the store's sessions table (several replicas)
        self.replica = ""
        self._sessions: dict[str, Session] = {}
        self._empty = asyncio.Event()
        self._empty.set()

    def attach(self, session: Session) -> Session | None:
        """Make ``session`` the active one for its dataplane; returns (and retires) the previous one."""
        previous = self._sessions.get(session.dataplane)
        self._sessions[session.dataplane] = session
        self._empty.clear()
        if previous is not None and previous is not session:
            log.info(
                "dataplane %s: session %s replaces %s",
                session.dataplane,
                session.session_id,
                previous.session_id,
            )
            previous.go_away("replaced by a newer session of this dataplane", REPLACED_RETRY_AFTER)
            return previous
        return None

    def detach(self, session: Session) -> bool:
        """Forget ``session`` if it is still the active one; False when a newer one already took over."""
        if self._sessions.get(session.dataplane) is session:
            del self._sessions[session.dataplane]
            if not self._sessions:
                self._empty.set()
            return True
        return False

    def get(self, dataplane: str) -> Session | None:
        return self._sessions.get(dataplane)

    def notify(self, dataplane: str) -> None:
        session = self._sessions.get(dataplane)
        if session is not None:
            session.wake()

    def fenced(self, dataplane: str, token: int) -> None:
        """Another session of ``dataplane`` holds ``token`` now (on any replica): an older local one goes."""
        session = self._sessions.get(dataplane)
        if session is not None and session.fence is not None and session.fence < token:
            log.info(
                "dataplane %s: session %s (token %d) replaced by token %d on another replica",
                dataplane,
                session.session_id,
                session.fence,
                token,
            )
            session.go_away("replaced by a newer session of this dataplane", REPLACED_RETRY_AFTER)

    async def wait_empty(self, timeout: float) -> bool:
        """Wait (bounded) until no session is attached; True if that happened."""
        try:
            await asyncio.wait_for(self._empty.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def __len__(self) -> int:
        return len(self._sessions)

    def sessions(self) -> list[Session]:
        return list(self._sessions.values())


# -- several replicas (PostgreSQL) --------------------------------------------------------------
# The sweep: every SWEEP_INTERVAL the listener reads the revision and session token of every local
# dataplane on its own connection. It bounds what a lost notification can cost (a replica that died
# between its commit and its NOTIFY, notifications sent while we were reconnecting) to one
# interval, and it is the probe that finds a database we can no longer reach.
SWEEP_INTERVAL = 1.0
PROBE_TIMEOUT = 3.0
CONNECT_TIMEOUT = 5.0
RECONNECT_BACKOFF = Backoff(base=0.1, cap=5.0)
# The store's bounds on every wait, without its statement options (LISTEN holds no statement).
LISTEN_OPTIONS = {k: v for k, v in CONNECTION_OPTIONS.items() if k != "options"}
# Agents of a replica that lost its database come back at once, through the load balancer, to
# another replica (this one refuses them with 503 until its database is back).
LOST_DATABASE_RETRY_AFTER = 1.0
LOST_DATABASE_REASON = "control plane lost its database"
# An agent sent away to rebalance reconnects after this (plus its own jitter).
REBALANCE_RETRY_AFTER = 1.0


class ClusterLink:
    """This replica's link to the others through PostgreSQL (LISTEN/NOTIFY, see store/sessions.py).

    Two loops, both supervised by the server: :meth:`run_listener` (a dedicated connection that
    LISTENs on both channels, wakes or fences local sessions, sweeps, and notices a lost database)
    and :meth:`run_notifier` (announces committed changes; :meth:`changed` is the store's hook).
    """

    def __init__(self, hub: Hub, store: Store, url: str, probe: Liveness) -> None:
        self.hub = hub
        self.store = store
        self.url = url
        self.probe = probe
        self.up = False
        self._dirty: set[str] = set()
        self._dirty_event = asyncio.Event()
        self._revisions: dict[str, int] = {}

    # -- announcing --------------------------------------------------------------------------
    def changed(self, dataplane: str) -> None:
        """Store hook, after a committed change of ``dataplane`` (bounded: one entry per dataplane)."""
        self._dirty.add(dataplane)
        self._dirty_event.set()

    async def run_notifier(self) -> None:
        notify = getattr(self.store.engine, "notify", None)
        assert notify is not None, "the cluster link needs the PostgreSQL engine"
        while True:
            await self._dirty_event.wait()
            self._dirty_event.clear()
            batch, self._dirty = sorted(self._dirty), set()
            try:
                await asyncio.wait_for(notify(CHANGED_CHANNEL, batch), PROBE_TIMEOUT)
            except (sqlite3.OperationalError, TimeoutError) as exc:
                # Committed but not announced: the other replicas' sweeps find it within a second.
                log.warning("announcing changes of %d dataplane(s) failed: %s", len(batch), exc)

    # -- listening ---------------------------------------------------------------------------
    async def run_listener(self) -> None:
        attempt = 0
        while True:
            try:
                await self._listen()
            except (psycopg.Error, OSError, TimeoutError) as exc:
                reason = f"{exc.__class__.__name__}: {exc}".strip()[:200]
                if self.up:
                    # One dropped connection (a server restart, a failover, a terminated backend)
                    # is not yet a lost database: reconnect at once, and only a failed reconnect
                    # makes this replica refuse writes and send its agents away.
                    log.warning("cluster link dropped (%s); reconnecting", reason)
                    self.up = False
                    attempt = 0
                    continue
                self._lost(reason)
            await asyncio.sleep(RECONNECT_BACKOFF.delay(attempt))
            attempt += 1

    async def _listen(self) -> None:
        conn = await asyncio.wait_for(
            psycopg.AsyncConnection.connect(self.url, autocommit=True, **LISTEN_OPTIONS), CONNECT_TIMEOUT
        )
        try:
            for channel in (CHANGED_CHANNEL, SESSION_CHANNEL):
                await asyncio.wait_for(conn.execute(f"LISTEN {channel}"), PROBE_TIMEOUT)
            await asyncio.wait_for(self._sweep(conn), PROBE_TIMEOUT)
            self._found()
            while True:
                async for note in conn.notifies(timeout=SWEEP_INTERVAL):
                    self._deliver(note.channel, note.payload)
                await asyncio.wait_for(self._sweep(conn), PROBE_TIMEOUT)
                self.probe.beat()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), PROBE_TIMEOUT)

    def _deliver(self, channel: str, payload: str) -> None:
        if channel == CHANGED_CHANNEL:
            self.hub.notify(payload)
        elif channel == SESSION_CHANNEL:
            dataplane, _, token = payload.rpartition(":")
            with contextlib.suppress(ValueError):
                self.hub.fenced(dataplane, int(token))

    async def _sweep(self, conn: psycopg.AsyncConnection[Any]) -> None:
        local = {s.dataplane: s for s in self.hub.sessions()}
        if not local:
            await conn.execute("SELECT 1")
            self._revisions.clear()
            return
        cur = await conn.execute(HEADS_SQL, (sorted(local),))
        heads = {str(r[0]): (int(r[1]), int(r[2])) for r in await cur.fetchall()}
        for dataplane, session in local.items():
            revision, token = heads.get(dataplane, (-1, 0))
            self.hub.fenced(dataplane, token)
            if self._revisions.get(dataplane) != revision:
                session.wake()  # the session reads what the store has beyond what it sent
        self._revisions = {dp: rev for dp, (rev, _) in heads.items()}

    # -- rebalancing -------------------------------------------------------------------------
    async def run_balancer(self, interval: float) -> None:
        """Every ``interval`` (jittered, so replicas do not act in step), send away the agents this
        replica holds beyond its share (:mod:`choreo_cp.rebalance`); they reconnect through the load
        balancer. A replica seen by no round for three intervals no longer counts."""
        while True:
            await asyncio.sleep(interval * random.uniform(0.8, 1.2))
            if not self.up:
                continue  # without the database it is sending its agents away already
            try:
                loads = await asyncio.wait_for(
                    self.store.replica_loads(self.hub.replica, alive_within=3 * interval), PROBE_TIMEOUT
                )
            except (sqlite3.OperationalError, TimeoutError) as exc:
                # a round skipped, not a failed replica: the listener judges the database
                log.warning("rebalancing skipped this round: %s", exc)
                continue
            local = self.hub.sessions()
            loads[self.hub.replica] = len(local)
            count = to_shed(len(local), loads)
            if not count:
                continue
            fair = fair_share(loads)
            log.info(
                "rebalancing: this replica holds %d of %d agents on %d replicas (share %d); moving %d",
                len(local), sum(loads.values()), len(loads), fair, count,
            )  # fmt: skip
            # the newest first: they have the least to lose (and the oldest stay put across rounds)
            for session in sorted(local, key=lambda s: s.started_at, reverse=True)[:count]:
                session.go_away(f"rebalancing: {len(local)} agents here, share {fair}", REBALANCE_RETRY_AFTER)

    def _found(self) -> None:
        self.up = True
        if self.store.unavailable is not None:
            log.info("cluster link re-established: accepting writes and agents again")
        self.store.unavailable = None
        self.probe.beat()
        # Notifications sent while we were not listening are lost: every local session may be stale.
        for session in self.hub.sessions():
            session.wake()

    def _lost(self, reason: str) -> None:
        message = f"PostgreSQL unreachable from this replica ({reason})"
        self.probe.fail(message)
        if self.store.unavailable is None:
            log.error("cluster link lost: %s; refusing writes and sending agents away", reason)
        self.store.unavailable = message
        # Agents must move to a replica that still has the database.
        for session in self.hub.sessions():
            session.go_away(LOST_DATABASE_REASON, LOST_DATABASE_RETRY_AFTER)
