"""The store's one connection, on its one thread, and the coalesced reports waiting for a flush."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from choreo_cp.store.records import default_spec_hash
from choreo_cp.store.schema import migrate

T = TypeVar("T")

DEFAULT_LOG_LIMIT = 10_000


@dataclass
class PendingReports:
    """Loss-tolerant writes coalesced in memory: the newest value per key wins until the next flush."""

    # (dataplane, key) -> (status JSON, received at, missing, observed at)
    status: dict[tuple[str, str], tuple[str, str, bool, str | None]] = field(default_factory=dict)
    status_bytes: dict[str, int] = field(default_factory=dict)
    applied: dict[str, tuple[int, str]] = field(default_factory=dict)
    heartbeat: dict[str, str] = field(default_factory=dict)
    agent: dict[str, dict[str, Any]] = field(default_factory=dict)
    inventory: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return (
            len(self.status) + len(self.applied) + len(self.heartbeat) + len(self.agent) + len(self.inventory)
        )

    def merge_older(self, older: PendingReports) -> None:
        """Put back a batch whose write failed, under anything newer queued meanwhile (newest wins)."""
        for key, value in older.status.items():
            if key not in self.status:
                self.status[key] = value
                self.status_bytes[key[0]] = self.status_bytes.get(key[0], 0) + len(value[0])
        for dp, applied in older.applied.items():
            self.applied.setdefault(dp, applied)
        for dp, at in older.heartbeat.items():
            self.heartbeat.setdefault(dp, at)
        for dp, info in older.agent.items():
            self.agent[dp] = {**info, **self.agent.get(dp, {})}
        for dp, text in older.inventory.items():
            self.inventory.setdefault(dp, text)

    def unqueue_status(self, dp: str, key: str) -> None:
        old = self.status.pop((dp, key), None)
        if old is not None:
            self.status_bytes[dp] = self.status_bytes.get(dp, 0) - len(old[0])

    def drop(self, dp: str) -> None:
        self.applied.pop(dp, None)
        self.heartbeat.pop(dp, None)
        self.agent.pop(dp, None)
        self.inventory.pop(dp, None)
        self.status_bytes.pop(dp, None)
        for k in [k for k in self.status if k[0] == dp]:
            del self.status[k]


class StoreCore:
    """Lifecycle and plumbing shared by the store's parts (see :class:`choreo_cp.store.Store`)."""

    def __init__(
        self,
        path: str | Path,
        *,
        log_limit: int = DEFAULT_LOG_LIMIT,
        spec_hash: Callable[[dict[str, Any]], str] = default_spec_hash,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        trace: Callable[[str], None] | None = None,
        busy_timeout: float = 5.0,
    ) -> None:
        if log_limit < 1:
            raise ValueError("log_limit must be >= 1")
        self.path = str(path)
        self.log_limit = log_limit
        self.spec_hash = spec_hash
        self._synchronous = synchronous
        # How long a write waits for another process's lock before SQLite raises "database is
        # locked" (an OperationalError the REST API answers with 503 and the tunnel retries).
        self._busy_timeout_ms = int(busy_timeout * 1000)
        # Called with every SQL statement the connection runs (tests count round trips with it).
        self._trace = trace
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cp-store")
        self._conn: sqlite3.Connection | None = None
        self._pending = PendingReports()
        self._flush_lock = asyncio.Lock()
        self.store_id = ""

    # -- lifecycle ---------------------------------------------------------------------------
    async def close(self) -> None:
        if self._conn is not None:
            await self.flush()
            await self._call(self._close_sync)
        self._executor.shutdown(wait=True)

    async def flush(self) -> int:
        raise NotImplementedError  # the reports part of the store writes the pending reports

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    async def _txn(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one write transaction on the store thread."""
        return await self._call(self._tx, fn)

    def _open_sync(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
            migrate(conn, self.path)
            row = conn.execute("SELECT value FROM meta WHERE key='store_id'").fetchone()
            if row is None:
                self.store_id = secrets.token_hex(8)
                conn.execute("INSERT INTO meta(key, value) VALUES ('store_id', ?)", (self.store_id,))
            else:
                self.store_id = row["value"]
        except BaseException:
            conn.close()
            raise
        if self._trace is not None:
            conn.set_trace_callback(self._trace)
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
            conn.execute("COMMIT")
        except BaseException:
            # A failed COMMIT (SQLITE_BUSY, disk I/O) leaves the transaction open: without the
            # rollback every later BEGIN on this connection would fail too.
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        return result
