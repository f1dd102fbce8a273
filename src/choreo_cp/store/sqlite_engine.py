"""The store on SQLite (the default, ``--db PATH``): one connection on one worker thread.

Every call runs on that thread, so SQLite access is serialized without locks and the event loop
never blocks on disk. WAL with ``synchronous=FULL``: a group is on disk when its COMMIT returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from choreo_cp.store.engine import SQLITE, Conn, Outcome
from choreo_cp.store.schema import migrate

T = TypeVar("T")


class SqliteEngine:
    dialect = SQLITE
    max_group = 256

    def __init__(
        self,
        path: str,
        *,
        synchronous: str = "FULL",
        busy_timeout: float = 5.0,
        trace: Callable[[str], None] | None = None,
    ) -> None:
        self.path = path
        self.location = path
        self._synchronous = "NORMAL" if synchronous == "NORMAL" else "FULL"
        # How long a write waits for another process's lock before SQLite raises "database is
        # locked" (an OperationalError the REST API answers with 503 and the tunnel retries).
        self._busy_timeout_ms = int(busy_timeout * 1000)
        self._trace = trace
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cp-store")
        self._conn: sqlite3.Connection | None = None

    def current(self) -> Conn:
        if self._conn is None:
            raise RuntimeError("store is not open")
        return self._conn

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _open_sync(self) -> str:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
            migrate(conn, self.path)
            conn.execute(
                "INSERT INTO meta(key, value) VALUES ('store_id', ?) ON CONFLICT(key) DO NOTHING",
                (secrets.token_hex(8),),
            )
            store_id = str(conn.execute("SELECT value FROM meta WHERE key='store_id'").fetchone()[0])
        except BaseException:
            conn.close()
            raise
        if self._trace is not None:
            conn.set_trace_callback(self._trace)
        self._conn = conn
        return store_id

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _group_sync(self, fns: Sequence[Callable[[Conn], Any]]) -> list[Outcome]:
        conn = self._conn
        if conn is None:
            raise RuntimeError("store is not open")
        conn.execute("BEGIN IMMEDIATE")
        try:
            outcomes: list[Outcome] = []
            if len(fns) == 1:
                # Alone in its group: the transaction is its savepoint.
                outcomes.append((True, fns[0](conn)))
            else:
                for fn in fns:
                    conn.execute("SAVEPOINT w")
                    try:
                        outcomes.append((True, fn(conn)))
                    except sqlite3.OperationalError:
                        raise  # locked, disk I/O: the whole group fails
                    except Exception as exc:
                        conn.execute("ROLLBACK TO SAVEPOINT w")
                        outcomes.append((False, exc))
                    conn.execute("RELEASE SAVEPOINT w")
            conn.execute("COMMIT")
        except BaseException as exc:
            # A failed COMMIT (SQLITE_BUSY, disk I/O) leaves the transaction open: without the
            # rollback every later BEGIN on this connection would fail too.
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            if len(fns) == 1 and isinstance(exc, Exception) and not isinstance(exc, sqlite3.OperationalError):
                return [(False, exc)]  # a refused single write: nothing else was in its transaction
            raise
        return outcomes

    async def open(self) -> str:
        try:
            return await self._call(self._open_sync)
        except BaseException:
            # A refused database (newer schema, unreadable file) leaves no worker thread behind.
            self._executor.shutdown(wait=True)
            raise

    async def close(self) -> None:
        if self._conn is not None:  # closing twice (a server stopped twice) is a no-op
            await self._call(self._close_sync)
        self._executor.shutdown(wait=True)

    async def read(self, fn: Callable[[Conn], T]) -> T:
        conn = self.current()
        return await self._call(fn, conn)

    async def write_group(self, fns: Sequence[Callable[[Conn], Any]]) -> list[Outcome]:
        return await self._call(self._group_sync, fns)
