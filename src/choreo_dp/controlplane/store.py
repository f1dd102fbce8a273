"""The control plane's SQLite store: desired objects, revision log, status records, token hashes.

Every call runs on one dedicated worker thread that owns the only connection, so SQLite access is
serialized without locks and the event loop never blocks on disk. Desired-state changes are committed
(WAL, ``synchronous=FULL``) before the call returns, and callers only notify tunnel sessions after
that, so nothing is ever sent that a crash could take back. High-rate, loss-tolerant writes
(heartbeats, applied revisions, status reports) are coalesced in memory and flushed in one
transaction by :meth:`Store.flush`, which the server calls periodically and before reads.

Per dataplane the store keeps an ``epoch`` (random, minted when the dataplane is first registered, so
a lost or replaced database yields a new one) and a strictly increasing ``revision`` bumped by every
change. The revision log holds one row per change (puts and deletion tombstones) and is compacted to
the newest ``log_limit`` rows; ``horizon`` is the newest revision no longer covered by the log, so
an agent at revision ``r`` can be streamed incrementally iff ``horizon <= r <= revision`` in the
same epoch.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from choreo_dp.tunnel import protocol

T = TypeVar("T")

KIND_ENVIRONMENT: Literal["Environment"] = "Environment"
KIND_APP: Literal["ChoreoApp"] = "ChoreoApp"
Kind = Literal["Environment", "ChoreoApp"]
Op = Literal["put", "delete"]

DEFAULT_LOG_LIMIT = 10_000
TOKEN_PREFIX = "cpdp_"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS dataplanes (
    id TEXT PRIMARY KEY,
    epoch TEXT NOT NULL,
    revision INTEGER NOT NULL DEFAULT 0,
    horizon INTEGER NOT NULL DEFAULT 0,
    token_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    token_rotated_at TEXT,
    applied_revision INTEGER,
    applied_epoch TEXT,
    last_heartbeat TEXT,
    last_connected TEXT,
    last_disconnected TEXT,
    agent TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS objects (
    dataplane TEXT NOT NULL,
    key TEXT NOT NULL,
    kind TEXT NOT NULL,
    environment TEXT NOT NULL,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    spec_hash TEXT NOT NULL,
    revision INTEGER NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (dataplane, key)
);
CREATE INDEX IF NOT EXISTS objects_env ON objects (dataplane, environment, kind);
CREATE TABLE IF NOT EXISTS log (
    dataplane TEXT NOT NULL,
    revision INTEGER NOT NULL,
    key TEXT NOT NULL,
    op TEXT NOT NULL,
    kind TEXT NOT NULL,
    environment TEXT NOT NULL,
    name TEXT NOT NULL,
    spec_hash TEXT,
    PRIMARY KEY (dataplane, revision)
);
CREATE INDEX IF NOT EXISTS log_key ON log (dataplane, key, revision);
CREATE TABLE IF NOT EXISTS status (
    dataplane TEXT NOT NULL,
    key TEXT NOT NULL,
    status TEXT NOT NULL,
    reported_at TEXT NOT NULL,
    PRIMARY KEY (dataplane, key)
);
CREATE TABLE IF NOT EXISTS nacks (
    dataplane TEXT NOT NULL,
    key TEXT NOT NULL,
    revision INTEGER NOT NULL,
    code TEXT NOT NULL,
    message TEXT NOT NULL,
    retryable INTEGER NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (dataplane, key)
);
"""


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def default_spec_hash(spec: dict[str, Any]) -> str:
    """The tunnel protocol's spec hash: both ends must compute it identically."""
    return protocol.spec_hash(spec)


def object_key(kind: str, environment: str, name: str) -> str:
    """Inventory key of a desired object: ``Environment/<env>`` or ``ChoreoApp/<env>/<app>``."""
    if kind == KIND_ENVIRONMENT:
        return protocol.environment_key(name)
    return protocol.app_key(environment, name)


def hash_token(token: str) -> str:
    """Tokens are 256-bit random strings, so a plain sha256 (no salt, no stretching) is sufficient."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_epoch() -> str:
    return secrets.token_hex(8)


@dataclass(frozen=True)
class Dataplane:
    id: str
    epoch: str
    revision: int
    horizon: int
    created_at: str
    token_rotated_at: str | None
    applied_revision: int | None
    applied_epoch: str | None
    last_heartbeat: str | None
    last_connected: str | None
    last_disconnected: str | None
    agent: dict[str, Any]
    objects: int = 0


@dataclass(frozen=True)
class DesiredObject:
    key: str
    kind: str
    environment: str
    name: str
    spec: dict[str, Any]
    spec_hash: str
    revision: int
    updated_at: str


@dataclass(frozen=True)
class Change:
    """One entry of the revision log, resolved against the current objects."""

    revision: int
    op: Op
    key: str
    kind: str
    environment: str
    name: str
    spec: dict[str, Any] | None
    spec_hash: str | None


@dataclass(frozen=True)
class StatusRecord:
    key: str
    status: dict[str, Any]
    reported_at: str


@dataclass(frozen=True)
class Nack:
    key: str
    revision: int
    code: str
    message: str
    retryable: bool
    at: str


@dataclass(frozen=True)
class WriteResult:
    """Outcome of a desired-state change: the dataplane revision after it and whether anything changed."""

    revision: int
    changed: bool
    object_revision: int | None = None
    spec_hash: str | None = None
    removed: list[str] = field(default_factory=list)


class LogGap(Exception):
    """The revision log no longer covers the changes after the requested revision (compacted)."""

    def __init__(self, since: int, horizon: int) -> None:
        super().__init__(f"log starts after revision {horizon}; cannot replay from {since}")
        self.since = since
        self.horizon = horizon


@dataclass(frozen=True)
class Snapshot:
    """The desired state of one dataplane at one revision: key -> spec hash."""

    epoch: str
    revision: int
    hashes: dict[str, str]


class StoreError(Exception):
    """A request the store refuses (unknown dataplane, missing parent...); the API maps it to 4xx."""

    def __init__(self, code: Literal["not_found", "conflict"], message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _row_dataplane(row: sqlite3.Row, objects: int = 0) -> Dataplane:
    return Dataplane(
        id=row["id"],
        epoch=row["epoch"],
        revision=row["revision"],
        horizon=row["horizon"],
        created_at=row["created_at"],
        token_rotated_at=row["token_rotated_at"],
        applied_revision=row["applied_revision"],
        applied_epoch=row["applied_epoch"],
        last_heartbeat=row["last_heartbeat"],
        last_connected=row["last_connected"],
        last_disconnected=row["last_disconnected"],
        agent=json.loads(row["agent"] or "{}"),
        objects=objects,
    )


def _row_object(row: sqlite3.Row) -> DesiredObject:
    return DesiredObject(
        key=row["key"],
        kind=row["kind"],
        environment=row["environment"],
        name=row["name"],
        spec=json.loads(row["spec"]),
        spec_hash=row["spec_hash"],
        revision=row["revision"],
        updated_at=row["updated_at"],
    )


class Store:
    """Async facade over one SQLite connection living on one worker thread."""

    def __init__(
        self,
        path: str | Path,
        *,
        log_limit: int = DEFAULT_LOG_LIMIT,
        spec_hash: Callable[[dict[str, Any]], str] = default_spec_hash,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
    ) -> None:
        if log_limit < 1:
            raise ValueError("log_limit must be >= 1")
        self.path = str(path)
        self.log_limit = log_limit
        self.spec_hash = spec_hash
        self._synchronous = synchronous
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cp-store")
        self._conn: sqlite3.Connection | None = None
        self._thread: threading.Thread | None = None
        # Coalesced, loss-tolerant writes: the newest value per key wins until the next flush.
        self._pending_status: dict[tuple[str, str], tuple[str, str]] = {}
        self._pending_status_bytes: dict[str, int] = {}
        self._pending_applied: dict[str, tuple[int, str]] = {}
        self._pending_heartbeat: dict[str, str] = {}
        self._pending_agent: dict[str, dict[str, Any]] = {}
        self._flush_lock = asyncio.Lock()
        self.store_id = ""

    # -- lifecycle ---------------------------------------------------------------------------
    async def open(self) -> Store:
        await self._call(self._open_sync)
        return self

    async def close(self) -> None:
        if self._conn is not None:
            await self.flush()
            await self._call(self._close_sync)
        self._executor.shutdown(wait=True)

    async def __aenter__(self) -> Store:
        return await self.open()

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    async def _txn(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one write transaction on the store thread."""
        return await self._call(self._tx, fn)

    def _open_sync(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.executescript(SCHEMA)
        row = conn.execute("SELECT value FROM meta WHERE key='store_id'").fetchone()
        if row is None:
            self.store_id = secrets.token_hex(8)
            conn.execute("INSERT INTO meta(key, value) VALUES ('store_id', ?)", (self.store_id,))
        else:
            self.store_id = row["value"]
        self._conn = conn

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("store is not open")
        return self._conn

    def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._db
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    # -- dataplanes and tokens ---------------------------------------------------------------
    async def register_dataplane(
        self, dp: str, *, rotate_token: bool = False
    ) -> tuple[Dataplane, str | None, bool]:
        """Create a dataplane (new epoch, new token) or return the existing one.

        Returns (dataplane, token or None, created). The raw token is only returned when it was
        minted by this call; only its hash is stored.
        """
        return await self._call(self._register_sync, dp, rotate_token)

    def _register_sync(self, dp: str, rotate: bool) -> tuple[Dataplane, str | None, bool]:
        def tx(conn: sqlite3.Connection) -> tuple[Dataplane, str | None, bool]:
            row = conn.execute("SELECT * FROM dataplanes WHERE id=?", (dp,)).fetchone()
            token: str | None = None
            created = row is None
            if created:
                token = new_token()
                conn.execute(
                    "INSERT INTO dataplanes(id, epoch, token_hash, created_at) VALUES (?, ?, ?, ?)",
                    (dp, new_epoch(), hash_token(token), now_rfc3339()),
                )
            elif rotate:
                token = new_token()
                conn.execute(
                    "UPDATE dataplanes SET token_hash=?, token_rotated_at=? WHERE id=?",
                    (hash_token(token), now_rfc3339(), dp),
                )
            return self._get_dataplane_sync(conn, dp), token, created

        return self._tx(tx)

    async def get_dataplane(self, dp: str) -> Dataplane | None:
        await self.flush()
        return await self._call(lambda: self._get_dataplane_or_none(self._db, dp))

    def _get_dataplane_or_none(self, conn: sqlite3.Connection, dp: str) -> Dataplane | None:
        row = conn.execute("SELECT * FROM dataplanes WHERE id=?", (dp,)).fetchone()
        if row is None:
            return None
        count = conn.execute("SELECT COUNT(*) FROM objects WHERE dataplane=?", (dp,)).fetchone()[0]
        return _row_dataplane(row, count)

    def _get_dataplane_sync(self, conn: sqlite3.Connection, dp: str) -> Dataplane:
        found = self._get_dataplane_or_none(conn, dp)
        if found is None:
            raise StoreError("not_found", f"dataplane {dp!r} is not registered")
        return found

    async def list_dataplanes(self) -> list[Dataplane]:
        await self.flush()

        def read() -> list[Dataplane]:
            counts = dict(
                self._db.execute("SELECT dataplane, COUNT(*) FROM objects GROUP BY dataplane").fetchall()
            )
            rows = self._db.execute("SELECT * FROM dataplanes ORDER BY id").fetchall()
            return [_row_dataplane(r, counts.get(r["id"], 0)) for r in rows]

        return await self._call(read)

    async def authenticate_dataplane(self, token: str) -> str | None:
        """The dataplane id the token belongs to, or None."""
        digest = hash_token(token)
        row = await self._call(
            lambda: self._db.execute("SELECT id FROM dataplanes WHERE token_hash=?", (digest,)).fetchone()
        )
        return None if row is None else str(row["id"])

    async def delete_dataplane(self, dp: str) -> bool:
        def tx(conn: sqlite3.Connection) -> bool:
            gone = conn.execute("DELETE FROM dataplanes WHERE id=?", (dp,)).rowcount > 0
            for table in ("objects", "log", "status", "nacks"):
                conn.execute(f"DELETE FROM {table} WHERE dataplane=?", (dp,))
            return gone

        self._drop_pending(dp)
        return await self._txn(tx)

    def _drop_pending(self, dp: str) -> None:
        self._pending_applied.pop(dp, None)
        self._pending_heartbeat.pop(dp, None)
        self._pending_agent.pop(dp, None)
        self._pending_status_bytes.pop(dp, None)
        for k in [k for k in self._pending_status if k[0] == dp]:
            del self._pending_status[k]

    # -- desired objects ---------------------------------------------------------------------
    async def put_object(
        self,
        dp: str,
        kind: Kind,
        environment: str,
        name: str,
        spec: dict[str, Any],
        *,
        check_environment: Callable[[dict[str, Any]], None] | None = None,
    ) -> WriteResult:
        """Store a desired object; a spec identical to the stored one is not a change (no new revision).

        ``check_environment`` (apps only) is called with the environment's spec inside the write
        transaction, so a rule of the environment (its registry allowlist) is judged against the
        environment as it is when the app is committed; whatever it raises aborts the write.
        """
        digest = self.spec_hash(spec)
        text = canonical_json(spec)
        return await self._call(
            self._tx,
            lambda c: self._put_sync(c, dp, kind, environment, name, text, digest, check_environment),
        )

    def _bump(self, conn: sqlite3.Connection, dp: str) -> int:
        row = conn.execute(
            "UPDATE dataplanes SET revision = revision + 1 WHERE id=? RETURNING revision", (dp,)
        ).fetchone()
        if row is None:
            raise StoreError("not_found", f"dataplane {dp!r} is not registered")
        return int(row[0])

    def _log(
        self,
        conn: sqlite3.Connection,
        dp: str,
        rev: int,
        op: Op,
        key: str,
        kind: str,
        env: str,
        name: str,
        digest: str | None,
    ) -> None:
        conn.execute(
            "INSERT INTO log(dataplane, revision, key, op, kind, environment, name, spec_hash)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (dp, rev, key, op, kind, env, name, digest),
        )

    def _current_revision(self, conn: sqlite3.Connection, dp: str) -> int:
        row = conn.execute("SELECT revision FROM dataplanes WHERE id=?", (dp,)).fetchone()
        if row is None:
            raise StoreError("not_found", f"dataplane {dp!r} is not registered")
        return int(row[0])

    def _put_sync(
        self,
        conn: sqlite3.Connection,
        dp: str,
        kind: Kind,
        env: str,
        name: str,
        text: str,
        digest: str,
        check_environment: Callable[[dict[str, Any]], None] | None = None,
    ) -> WriteResult:
        current = self._current_revision(conn, dp)
        key = object_key(kind, env, name)
        if kind == KIND_APP:
            parent = conn.execute(
                "SELECT spec FROM objects WHERE dataplane=? AND key=?",
                (dp, object_key(KIND_ENVIRONMENT, env, env)),
            ).fetchone()
            if parent is None:
                raise StoreError("not_found", f"environment {env!r} is not defined on dataplane {dp!r}")
            if check_environment is not None:
                check_environment(json.loads(parent["spec"]))
        row = conn.execute(
            "SELECT spec_hash, revision FROM objects WHERE dataplane=? AND key=?", (dp, key)
        ).fetchone()
        if row is not None and row["spec_hash"] == digest:
            return WriteResult(current, False, row["revision"], digest)
        rev = self._bump(conn, dp)
        conn.execute(
            "INSERT INTO objects(dataplane, key, kind, environment, name, spec, spec_hash, revision, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(dataplane, key) DO UPDATE SET spec=excluded.spec, spec_hash=excluded.spec_hash,"
            " revision=excluded.revision, updated_at=excluded.updated_at",
            (dp, key, kind, env, name, text, digest, rev, now_rfc3339()),
        )
        self._log(conn, dp, rev, "put", key, kind, env, name, digest)
        # A new spec makes any refusal of the old one history.
        conn.execute("DELETE FROM nacks WHERE dataplane=? AND key=?", (dp, key))
        self._compact(conn, dp, rev)
        return WriteResult(rev, True, rev, digest)

    async def delete_object(self, dp: str, kind: Kind, environment: str, name: str) -> WriteResult:
        """Delete a desired object (an Environment takes its apps with it, each its own revision)."""
        result = await self._txn(lambda c: self._delete_sync(c, dp, kind, environment, name))
        for key in result.removed:
            self._unqueue_status(dp, key)
        return result

    def _delete_sync(self, conn: sqlite3.Connection, dp: str, kind: Kind, env: str, name: str) -> WriteResult:
        self._current_revision(conn, dp)
        key = object_key(kind, env, name)
        if conn.execute("SELECT 1 FROM objects WHERE dataplane=? AND key=?", (dp, key)).fetchone() is None:
            what = "environment" if kind == KIND_ENVIRONMENT else "app"
            where = f" in environment {env!r}" if kind == KIND_APP else ""
            raise StoreError("not_found", f"{what} {name!r}{where} is not defined on dataplane {dp!r}")
        victims: list[tuple[str, str, str, str]] = []
        if kind == KIND_ENVIRONMENT:
            # Apps first, so a replaying agent never sees an app outlive its environment.
            for r in conn.execute(
                "SELECT key, kind, environment, name FROM objects WHERE dataplane=? AND kind=? AND environment=?"
                " ORDER BY name",
                (dp, KIND_APP, env),
            ).fetchall():
                victims.append((r["key"], r["kind"], r["environment"], r["name"]))
        victims.append((key, kind, env, name))
        rev = 0
        for vkey, vkind, venv, vname in victims:
            rev = self._bump(conn, dp)
            conn.execute("DELETE FROM objects WHERE dataplane=? AND key=?", (dp, vkey))
            conn.execute("DELETE FROM status WHERE dataplane=? AND key=?", (dp, vkey))
            conn.execute("DELETE FROM nacks WHERE dataplane=? AND key=?", (dp, vkey))
            self._log(conn, dp, rev, "delete", vkey, vkind, venv, vname, None)
        self._compact(conn, dp, rev)
        return WriteResult(rev, True, None, None, [v[0] for v in victims])

    def _compact(self, conn: sqlite3.Connection, dp: str, rev: int) -> None:
        """Keep the newest ``log_limit`` entries; compacting in steps of 1/8 keeps deletes rare."""
        row = conn.execute("SELECT horizon FROM dataplanes WHERE id=?", (dp,)).fetchone()
        horizon = int(row[0])
        slack = max(1, self.log_limit // 8)
        if rev - horizon <= self.log_limit + slack:
            return
        new_horizon = rev - self.log_limit
        conn.execute("DELETE FROM log WHERE dataplane=? AND revision<=?", (dp, new_horizon))
        conn.execute("UPDATE dataplanes SET horizon=? WHERE id=?", (new_horizon, dp))

    async def get_object(self, dp: str, kind: Kind, environment: str, name: str) -> DesiredObject | None:
        key = object_key(kind, environment, name)

        def read() -> DesiredObject | None:
            row = self._db.execute("SELECT * FROM objects WHERE dataplane=? AND key=?", (dp, key)).fetchone()
            return None if row is None else _row_object(row)

        return await self._call(read)

    async def list_objects(
        self, dp: str, *, kind: Kind | None = None, environment: str | None = None
    ) -> list[DesiredObject]:
        sql = "SELECT * FROM objects WHERE dataplane=?"
        params: list[Any] = [dp]
        if kind is not None:
            sql += " AND kind=?"
            params.append(kind)
        if environment is not None:
            sql += " AND environment=?"
            params.append(environment)
        sql += " ORDER BY revision"
        rows = await self._call(lambda: self._db.execute(sql, params).fetchall())
        return [_row_object(r) for r in rows]

    async def get_objects(self, dp: str, keys: Iterable[str]) -> list[DesiredObject]:
        """The current objects for the given keys (missing keys are skipped), in revision order."""
        wanted = list(keys)

        def read() -> list[DesiredObject]:
            out: list[DesiredObject] = []
            for i in range(0, len(wanted), 500):
                chunk = wanted[i : i + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT * FROM objects WHERE dataplane=? AND key IN ({marks})", [dp, *chunk]
                ).fetchall()
                out.extend(_row_object(r) for r in rows)
            out.sort(key=lambda o: o.revision)
            return out

        return await self._call(read)

    async def inventory(self, dp: str) -> dict[str, tuple[str, int]]:
        """key -> (spec hash, revision) of every desired object of a dataplane."""
        rows = await self._call(
            lambda: self._db.execute(
                "SELECT key, spec_hash, revision FROM objects WHERE dataplane=?", (dp,)
            ).fetchall()
        )
        return {r["key"]: (r["spec_hash"], r["revision"]) for r in rows}

    async def changes_since(self, dp: str, since: int, limit: int = 500) -> list[Change]:
        """The newest change of each key changed after ``since``, in revision order, at most ``limit``.

        Superseded entries are skipped (a put followed by another put or a delete travels once). The
        caller must check ``since >= horizon`` first; below the horizon the log is incomplete.
        """

        def read() -> list[Change]:
            head = self._db.execute("SELECT horizon FROM dataplanes WHERE id=?", (dp,)).fetchone()
            if head is None:
                raise StoreError("not_found", f"dataplane {dp!r} is not registered")
            if since < int(head[0]):
                raise LogGap(since, int(head[0]))
            rows = self._db.execute(
                "SELECT l.revision, l.op, l.key, l.kind, l.environment, l.name, o.spec, o.spec_hash"
                " FROM log l LEFT JOIN objects o ON o.dataplane = l.dataplane AND o.key = l.key"
                " WHERE l.dataplane=? AND l.revision>?"
                " AND NOT EXISTS (SELECT 1 FROM log n WHERE n.dataplane=l.dataplane AND n.key=l.key"
                "                 AND n.revision>l.revision)"
                " ORDER BY l.revision LIMIT ?",
                (dp, since, limit),
            ).fetchall()
            out: list[Change] = []
            for r in rows:
                put = r["op"] == "put"
                out.append(
                    Change(
                        revision=r["revision"],
                        op="put" if put else "delete",
                        key=r["key"],
                        kind=r["kind"],
                        environment=r["environment"],
                        name=r["name"],
                        spec=json.loads(r["spec"]) if put and r["spec"] is not None else None,
                        spec_hash=r["spec_hash"] if put else None,
                    )
                )
            return out

        return await self._call(read)

    async def snapshot(self, dp: str) -> Snapshot:
        """Epoch, revision and key -> hash, read together (one call on the store thread is atomic)."""

        def read() -> Snapshot:
            head = self._db.execute("SELECT epoch, revision FROM dataplanes WHERE id=?", (dp,)).fetchone()
            if head is None:
                raise StoreError("not_found", f"dataplane {dp!r} is not registered")
            rows = self._db.execute("SELECT key, spec_hash FROM objects WHERE dataplane=?", (dp,)).fetchall()
            return Snapshot(head["epoch"], int(head["revision"]), {r[0]: r[1] for r in rows})

        return await self._call(read)

    # -- reports from the data plane ---------------------------------------------------------
    def queue_status(self, dp: str, key: str, status: dict[str, Any]) -> None:
        """Remember the newest status of an object; flushed with the next :meth:`flush`."""
        text = canonical_json(status)
        self._unqueue_status(dp, key)
        self._pending_status[(dp, key)] = (text, now_rfc3339())
        self._pending_status_bytes[dp] = self._pending_status_bytes.get(dp, 0) + len(text)

    def _unqueue_status(self, dp: str, key: str) -> None:
        old = self._pending_status.pop((dp, key), None)
        if old is not None:
            self._pending_status_bytes[dp] = self._pending_status_bytes.get(dp, 0) - len(old[0])

    def pending_status_bytes(self, dp: str) -> int:
        """Characters of status reports of ``dp`` waiting for the next flush (to bound memory)."""
        return self._pending_status_bytes.get(dp, 0)

    def queue_applied(self, dp: str, revision: int, epoch: str) -> None:
        prev = self._pending_applied.get(dp)
        if prev is None or prev[1] != epoch or revision > prev[0]:
            self._pending_applied[dp] = (revision, epoch)

    def queue_heartbeat(self, dp: str, at: str | None = None) -> None:
        self._pending_heartbeat[dp] = at or now_rfc3339()

    def queue_agent_info(self, dp: str, info: dict[str, Any]) -> None:
        """Merge agent-reported facts (orphans, version...) into the dataplane's ``agent`` record."""
        self._pending_agent.setdefault(dp, {}).update(info)

    @property
    def pending(self) -> int:
        return (
            len(self._pending_status)
            + len(self._pending_applied)
            + len(self._pending_heartbeat)
            + len(self._pending_agent)
        )

    async def flush(self) -> int:
        """Write every coalesced report in one transaction; returns how many rows were written."""
        async with self._flush_lock:
            if not self.pending:
                return 0
            status, self._pending_status = self._pending_status, {}
            self._pending_status_bytes = {}
            applied, self._pending_applied = self._pending_applied, {}
            beats, self._pending_heartbeat = self._pending_heartbeat, {}
            agent, self._pending_agent = self._pending_agent, {}

            def tx(conn: sqlite3.Connection) -> int:
                known = {r[0] for r in conn.execute("SELECT id FROM dataplanes").fetchall()}
                n = 0
                for (dp, key), (text, at) in status.items():
                    if dp not in known:
                        continue
                    # Only objects that are still desired keep a status (a late report must not
                    # resurrect the record of a deleted app).
                    n += conn.execute(
                        "INSERT INTO status(dataplane, key, status, reported_at)"
                        " SELECT ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM objects WHERE dataplane=? AND key=?)"
                        " ON CONFLICT(dataplane, key) DO UPDATE SET status=excluded.status,"
                        " reported_at=excluded.reported_at",
                        (dp, key, text, at, dp, key),
                    ).rowcount
                for dp, (rev, epoch) in applied.items():
                    n += conn.execute(
                        "UPDATE dataplanes SET applied_revision=?, applied_epoch=? WHERE id=?",
                        (rev, epoch, dp),
                    ).rowcount
                for dp, at in beats.items():
                    n += conn.execute("UPDATE dataplanes SET last_heartbeat=? WHERE id=?", (at, dp)).rowcount
                for dp, info in agent.items():
                    row = conn.execute("SELECT agent FROM dataplanes WHERE id=?", (dp,)).fetchone()
                    if row is None:
                        continue
                    merged = json.loads(row[0] or "{}")
                    merged.update(info)
                    conn.execute("UPDATE dataplanes SET agent=? WHERE id=?", (canonical_json(merged), dp))
                    n += 1
                return n

            return await self._txn(tx)

    async def mark_connection(self, dp: str, connected: bool) -> None:
        column = "last_connected" if connected else "last_disconnected"
        await self._txn(
            lambda c: c.execute(f"UPDATE dataplanes SET {column}=? WHERE id=?", (now_rfc3339(), dp)),
        )

    async def get_status(self, dp: str, key: str) -> StatusRecord | None:
        pending = self._pending_status.get((dp, key))
        if pending is not None:
            return StatusRecord(key, json.loads(pending[0]), pending[1])
        row = await self._call(
            lambda: self._db.execute(
                "SELECT key, status, reported_at FROM status WHERE dataplane=? AND key=?", (dp, key)
            ).fetchone()
        )
        if row is None:
            return None
        return StatusRecord(row["key"], json.loads(row["status"]), row["reported_at"])

    async def record_nack(
        self, dp: str, key: str, revision: int, code: str, message: str, retryable: bool
    ) -> bool:
        """Remember the agent's refusal of an object; False (nothing stored) when the object is not
        desired on that data plane: an agent cannot make us keep rows for keys of its choosing."""

        def tx(c: sqlite3.Connection) -> bool:
            return (
                c.execute(
                    "INSERT INTO nacks(dataplane, key, revision, code, message, retryable, at)"
                    " SELECT ?, ?, ?, ?, ?, ?, ? WHERE EXISTS"
                    " (SELECT 1 FROM objects WHERE dataplane=? AND key=?)"
                    " ON CONFLICT(dataplane, key) DO UPDATE SET"
                    " revision=excluded.revision, code=excluded.code, message=excluded.message,"
                    " retryable=excluded.retryable, at=excluded.at",
                    (dp, key, revision, code, message[:4096], int(retryable), now_rfc3339(), dp, key),
                ).rowcount
                > 0
            )

        return await self._txn(tx)

    async def get_nack(self, dp: str, key: str) -> Nack | None:
        row = await self._call(
            lambda: self._db.execute("SELECT * FROM nacks WHERE dataplane=? AND key=?", (dp, key)).fetchone()
        )
        if row is None:
            return None
        return Nack(
            row["key"], row["revision"], row["code"], row["message"], bool(row["retryable"]), row["at"]
        )
