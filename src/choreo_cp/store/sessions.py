"""Tunnel sessions in the store: who serves a dataplane now, fenced by a token (several replicas).

On PostgreSQL any replica may hold a dataplane's session, so "newest session wins" cannot be a
dictionary in one process. Each dataplane has one ``sessions`` row with a monotonic ``token``; a
replica registering a new session bumps it in one transaction and, in the same transaction, sends
``NOTIFY choreo_dp_session, '<dataplane>:<token>'`` (delivered only if it commits). The replica
holding an older token sends its agent ``goaway``. Writes on behalf of a session (reports flushed
for it, its connection times) are conditional on its token still being the current one, so a
session that was replaced, even one whose replica has not heard yet, writes nothing.

Desired-state changes are announced on ``choreo_dp_changed`` with the dataplane id only; every
replica reads the data from the store. On SQLite (one process) none of this runs: the in-memory hub
is the whole truth there, and nothing of it changes.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from choreo_cp.store.core import PendingReports, StoreCore
from choreo_cp.store.engine import POSTGRES, Conn
from choreo_cp.store.records import now_rfc3339

CHANGED_CHANNEL = "choreo_dp_changed"
SESSION_CHANNEL = "choreo_dp_session"
# dataplanes checked per statement by fenced_off (one query per flush, not one per dataplane)
FENCE_CHUNK = 500
# What a replica's sweep reads of its local dataplanes (psycopg parameters: one text array).
HEADS_SQL = (
    "SELECT d.id, d.revision, COALESCE(s.token, 0) FROM dataplanes d"
    " LEFT JOIN sessions s ON s.dataplane = d.id WHERE d.id = ANY(%s)"
)


# A session row with the advertised URL of the replica it names (migration 6).
SESSION_SQL = (
    "SELECT s.dataplane, s.token, s.session_id, s.replica, s.remote, s.started_at, s.ended_at,"
    " r.url AS advertise FROM sessions s LEFT JOIN replicas r ON r.name = s.replica"
)
# Replicas not seen claiming a session for this long, and named by no session, are forgotten.
REPLICA_RETENTION = timedelta(days=7)


@dataclass(frozen=True)
class SessionRecord:
    dataplane: str
    token: int
    session_id: str | None
    replica: str | None
    remote: str | None
    started_at: str | None
    ended_at: str | None
    # where the other replicas reach the one holding the session (its streams are served there)
    advertise: str | None = None

    @property
    def open(self) -> bool:
        return self.session_id is not None and self.ended_at is None


def _record(row: Any) -> SessionRecord:
    return SessionRecord(
        row["dataplane"],
        int(row["token"]),
        row["session_id"],
        row["replica"],
        row["remote"],
        row["started_at"],
        row["ended_at"],
        row["advertise"],
    )


def fenced_off(
    conn: Conn, fences: dict[str, int], dataplanes: Iterable[str], *, share_lock: bool
) -> set[str]:
    """The dataplanes among ``dataplanes`` whose local session (``fences``) is no longer current.

    Run inside the writing transaction; on PostgreSQL the rows are share-locked so a newer
    registration waits for this transaction, and cannot slip in between the check and the write.
    """
    mine = sorted(dp for dp in set(dataplanes) if dp in fences)
    lock = " FOR SHARE" if share_lock else ""
    current: dict[str, int] = {}
    for at in range(0, len(mine), FENCE_CHUNK):
        part = mine[at : at + FENCE_CHUNK]
        marks = ",".join("?" * len(part))
        rows = conn.execute(
            f"SELECT dataplane, token FROM sessions WHERE dataplane IN ({marks}) ORDER BY dataplane{lock}",
            part,
        ).fetchall()
        current.update((str(r[0]), int(r[1])) for r in rows)
    return {dp for dp in mine if current.get(dp) != fences[dp]}


def drop_fenced(conn: Conn, fences: dict[str, int], batch: PendingReports, *, share_lock: bool) -> None:
    """Remove from ``batch`` (before it is written) the reports of sessions no longer current."""
    if not fences:
        return
    queued = {dp for dp, _ in batch.status}
    queued.update(batch.applied, batch.heartbeat, batch.agent, batch.inventory)
    for dp in fenced_off(conn, fences, queued, share_lock=share_lock):
        batch.drop(dp)


# The meta row holding the secret that marks a stream request one replica hands another.
HOP_SECRET_KEY = "replica_hop_secret"


class Sessions(StoreCore):
    """The session-fencing part of the store (used only on PostgreSQL, see the module docstring)."""

    # This replica's internal URL, recorded with every session it claims (set by the server).
    advertise_url: str | None = None

    @property
    def clustered(self) -> bool:
        """Several replicas may share this store (PostgreSQL)."""
        return self.dialect is POSTGRES

    async def claim_session(
        self, dp: str, session_id: str, *, replica: str, remote: str, started_at: str
    ) -> int:
        """Register ``session_id`` as the current session of ``dp``; returns its fencing token."""

        def tx(conn: Conn) -> int:
            row = conn.execute(
                "INSERT INTO sessions(dataplane, token, session_id, replica, remote, started_at, ended_at)"
                " VALUES (?, 1, ?, ?, ?, ?, NULL)"
                " ON CONFLICT(dataplane) DO UPDATE SET token=sessions.token+1,"
                " session_id=excluded.session_id, replica=excluded.replica, remote=excluded.remote,"
                " started_at=excluded.started_at, ended_at=NULL RETURNING token",
                (dp, session_id, replica, remote, started_at),
            ).fetchone()
            token = int(row[0])
            if self.advertise_url:
                # with the claim, so a session row never names a replica nobody can reach by name
                conn.execute(
                    "INSERT INTO replicas(name, url, seen_at) VALUES (?, ?, ?)"
                    " ON CONFLICT(name) DO UPDATE SET url=excluded.url, seen_at=excluded.seen_at",
                    (replica, self.advertise_url, started_at),
                )
            self._announce(conn, dp, token)
            return token

        token = await self._txn(tx)
        self.fences[dp] = token
        return token

    async def fence(self, dp: str) -> int:
        """End whatever session ``dp`` has, wherever it runs (its token was rotated)."""

        def tx(conn: Conn) -> int:
            row = conn.execute(
                "INSERT INTO sessions(dataplane, token) VALUES (?, 1)"
                " ON CONFLICT(dataplane) DO UPDATE SET token=sessions.token+1, session_id=NULL,"
                " ended_at=? RETURNING token",
                (dp, now_rfc3339()),
            ).fetchone()
            token = int(row[0])
            self._announce(conn, dp, token)
            return token

        return await self._txn(tx)

    def _announce(self, conn: Conn, dp: str, token: int) -> None:
        if self.clustered:
            # Inside the transaction: PostgreSQL delivers it on COMMIT, and never if it rolls back.
            conn.execute("SELECT pg_notify(?, ?)", (SESSION_CHANNEL, f"{dp}:{token}"))

    async def mark_session(self, dp: str, token: int, connected: bool) -> bool:
        """Connection time of ``dp`` (and the end of its session row), only while ``token`` is current."""
        column = "last_connected" if connected else "last_disconnected"
        at = now_rfc3339()

        def tx(conn: Conn) -> bool:
            current = not fenced_off(conn, {dp: token}, [dp], share_lock=self.clustered)
            if current:
                conn.execute(f"UPDATE dataplanes SET {column}=? WHERE id=?", (at, dp))
                if not connected:
                    conn.execute(
                        "UPDATE sessions SET ended_at=? WHERE dataplane=? AND token=?", (at, dp, token)
                    )
            return current

        return await self._txn(tx)

    async def session_record(self, dp: str) -> SessionRecord | None:
        row = await self._call(
            lambda: self._db.execute(SESSION_SQL + " WHERE s.dataplane=?", (dp,)).fetchone()
        )
        return None if row is None else _record(row)

    async def session_records(self) -> dict[str, SessionRecord]:
        """Every dataplane's session row (one query, for listings)."""
        rows = await self._call(lambda: self._db.execute(SESSION_SQL).fetchall())
        return {str(r["dataplane"]): _record(r) for r in rows}

    async def hop_secret(self) -> str:
        """The secret every replica of this database shares (created by the first that asks).

        It marks a stream request handed from one replica to the one holding the session; REST
        clients never see it, so only a replica can ask another to skip its audit record.
        """
        candidate = secrets.token_urlsafe(32)

        def tx(conn: Conn) -> str:
            conn.execute(
                "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO NOTHING",
                (HOP_SECRET_KEY, candidate),
            )
            row = conn.execute("SELECT value FROM meta WHERE key=?", (HOP_SECRET_KEY,)).fetchone()
            return str(row[0])

        return await self._txn(tx)

    async def replica_loads(self, replica: str, alive_within: float) -> dict[str, int]:
        """Mark ``replica`` alive now and return the live sessions of every replica seen within
        ``alive_within`` seconds (a replica that died without ending its sessions is not counted:
        its agents are reconnecting elsewhere)."""
        now = datetime.now(UTC)
        seen = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        cutoff = (now - timedelta(seconds=alive_within)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        url = self.advertise_url or ""

        def tx(conn: Conn) -> dict[str, int]:
            conn.execute(
                "INSERT INTO replicas(name, url, seen_at) VALUES (?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET seen_at=excluded.seen_at",
                (replica, url, seen),
            )
            rows = conn.execute(
                "SELECT r.name, COUNT(s.dataplane) FROM replicas r"
                " LEFT JOIN sessions s ON s.replica = r.name AND s.ended_at IS NULL"
                " WHERE r.seen_at >= ? GROUP BY r.name",
                (cutoff,),
            ).fetchall()
            return {str(r[0]): int(r[1]) for r in rows}

        return await self._txn(tx)

    async def forget_replicas(self) -> int:
        """Drop the URLs of replicas long gone (one row per replica process that held a session)."""
        cutoff = (datetime.now(UTC) - REPLICA_RETENTION).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

        def tx(conn: Conn) -> int:
            cur = conn.execute(
                "DELETE FROM replicas WHERE seen_at < ? AND name NOT IN"
                " (SELECT replica FROM sessions WHERE replica IS NOT NULL)",
                (cutoff,),
            )
            return max(0, int(cur.rowcount))

        return await self._txn(tx)
