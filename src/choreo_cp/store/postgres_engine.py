"""The store on PostgreSQL (``--db postgresql://...``): psycopg 3 with a connection pool.

Driver: psycopg 3, not asyncpg, because the store's transaction bodies are plain functions shared
with SQLite (SQLite has no async driver worth the name; its calls run on a thread anyway), and psycopg
offers the same DB-API shape (``execute``, ``fetchone``, ``rowcount``) on a thread, a pool
(``psycopg_pool``), server-side parameter binding and the libpq error classes. The event loop never
blocks: every call runs on a worker thread holding one pooled connection.

Isolation: writes run at READ COMMITTED and every desired-state write starts by locking its
dataplane row (``SELECT ... FOR UPDATE``), so the writers of one dataplane, on any connection of any
replica, run one after another and each sees the revision the previous one committed: revisions are
gap-free and commit in order. A group that deadlocks with another replica's group (they lock rows in
different orders) is rolled back whole and retried. Reads run in one REPEATABLE READ READ ONLY
transaction each, so a read of several tables (a snapshot) sees one moment, as on SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import psycopg
import psycopg.errors
from psycopg.rows import RowMaker
from psycopg_pool import ConnectionPool

from choreo_cp.retry import Backoff
from choreo_cp.store.engine import POSTGRES, Conn, Outcome, StoreUnavailable

T = TypeVar("T")

log = logging.getLogger(__name__)

# A group rolled back by a deadlock or a serialization failure is run again this many times.
GROUP_ATTEMPTS = 5
GROUP_BACKOFF = Backoff(base=0.005, cap=0.2)
# How long a call waits for a free pooled connection before the store reports itself unavailable.
POOL_TIMEOUT = 10.0
# Every wait on the server is bounded: a statement, a row lock, a connection attempt, a dead peer
# (TCP keepalives); each failure is a StoreUnavailable (503, the tunnel's retry), not a hang.
CONNECTION_OPTIONS: dict[str, Any] = {
    "connect_timeout": 10,
    "options": "-c statement_timeout=30000 -c lock_timeout=10000 -c idle_in_transaction_session_timeout=60000",
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


class PgRow(tuple[Any, ...]):
    """A row readable by position and by column name, like ``sqlite3.Row``."""

    _index: dict[str, int]

    def __new__(cls, values: Sequence[Any], index: dict[str, int]) -> PgRow:
        row = super().__new__(cls, values)
        row._index = index
        return row

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._index)


def _row_factory(cursor: psycopg.Cursor[Any]) -> RowMaker[PgRow]:
    index = {c.name: i for i, c in enumerate(cursor.description or ())}
    return lambda values: PgRow(values, index)


_PLACEHOLDER = re.compile(r"\?")


@functools.lru_cache(maxsize=1024)
def _pg_sql(sql: str) -> str:
    """``?`` parameters as psycopg's ``%s`` (a literal ``%`` is doubled first)."""
    return _PLACEHOLDER.sub("%s", sql.replace("%", "%%"))


class PgConn:
    """A pooled connection as the store's SQL functions see it (:class:`~.engine.Conn`)."""

    def __init__(self, conn: psycopg.Connection[Any], trace: Callable[[str], None] | None) -> None:
        self.raw = conn
        self._trace = trace

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Any:
        if self._trace is not None:
            self._trace(sql)
        cur = self.raw.cursor(row_factory=_row_factory)
        if parameters:
            return cur.execute(_pg_sql(sql), list(parameters))
        return cur.execute(sql)


def _unavailable(exc: BaseException) -> bool:
    # OperationalError covers a lost connection, an admin shutdown, the pool timing out, deadlocks
    # and serialization failures (TransactionRollback); InterfaceError a closed connection.
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


def _redacted(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


class PostgresEngine:
    dialect = POSTGRES
    # Every savepoint that wrote is a subtransaction; past 64 in one transaction PostgreSQL's
    # per-backend cache of them overflows and every other session's snapshots get slower.
    max_group = 64

    def __init__(self, url: str, *, pool_size: int = 8, trace: Callable[[str], None] | None = None) -> None:
        self.url = url
        self.location = _redacted(url)
        self._trace = trace
        # One thread per pooled connection: a call holds its connection for its whole run.
        self._executor = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="cp-store-pg")
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            open=False,
            timeout=POOL_TIMEOUT,
            kwargs={"autocommit": True, **CONNECTION_OPTIONS},
            name="choreo-cp-store",
        )
        self._local = threading.local()

    # -- on the worker threads ----------------------------------------------------------------
    def _run(self, body: Callable[[PgConn], T]) -> T:
        try:
            with self._pool.connection() as raw:
                conn = PgConn(raw, self._trace)
                self._local.conn = conn
                try:
                    return body(conn)
                finally:
                    self._local.conn = None
        except BaseException as exc:
            if _unavailable(exc) and not isinstance(exc, StoreUnavailable):
                raise StoreUnavailable(f"PostgreSQL {self.location}: {exc}") from exc
            raise

    def current(self) -> Conn:
        """The connection of the call running on this thread (for reads written against ``_db``)."""
        conn: PgConn | None = getattr(self._local, "conn", None)
        if conn is None:
            raise RuntimeError("no store call is running on this thread")
        return conn

    def _open_sync(self) -> str:
        from choreo_cp.store.schema_postgres import migrate

        self._pool.open(wait=True, timeout=POOL_TIMEOUT)

        def body(conn: PgConn) -> str:
            migrate(conn, self.location)
            conn.execute(
                "INSERT INTO meta(key, value) VALUES ('store_id', md5(random()::text || clock_timestamp()::text))"
                " ON CONFLICT(key) DO NOTHING"
            )
            row = conn.execute("SELECT value FROM meta WHERE key='store_id'").fetchone()
            assert row is not None  # inserted just above unless it was there
            return str(row[0])[:16]

        return self._run(body)

    def _read_sync(self, fn: Callable[[Conn], T]) -> T:
        def body(conn: PgConn) -> T:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                result = fn(conn)
            except BaseException:
                with contextlib.suppress(psycopg.Error):
                    conn.raw.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        return self._run(body)

    def _group_once(self, fns: Sequence[Callable[[Conn], Any]]) -> list[Outcome]:
        def body(conn: PgConn) -> list[Outcome]:
            conn.execute("BEGIN")
            try:
                outcomes: list[Outcome] = []
                if len(fns) == 1:
                    # Alone in its group: the transaction is its savepoint.
                    try:
                        outcomes.append((True, fns[0](conn)))
                    except Exception as exc:
                        if _unavailable(exc):
                            raise
                        conn.raw.execute("ROLLBACK")
                        return [(False, exc)]
                else:
                    for fn in fns:
                        # Savepoints are not released: a round trip each saved, and "ROLLBACK TO"
                        # names the newest one of that name (PostgreSQL keeps older ones stacked).
                        conn.execute("SAVEPOINT w")
                        try:
                            outcomes.append((True, fn(conn)))
                        except Exception as exc:
                            if _unavailable(exc):
                                raise  # the transaction itself is gone: the whole group fails
                            conn.execute("ROLLBACK TO SAVEPOINT w")
                            outcomes.append((False, exc))
                conn.execute("COMMIT")
            except BaseException:
                # a broken connection cannot roll back: the pool discards it on return
                with contextlib.suppress(psycopg.Error):
                    conn.raw.execute("ROLLBACK")
                raise
            return outcomes

        return self._run(body)

    def _group_sync(self, fns: Sequence[Callable[[Conn], Any]]) -> list[Outcome]:
        attempt = 0
        while True:
            try:
                return self._group_once(fns)
            except StoreUnavailable as exc:
                attempt += 1
                if not isinstance(exc.__cause__, psycopg.errors.TransactionRollback):
                    raise
                if attempt >= GROUP_ATTEMPTS:
                    raise
                # Nothing of the group was committed: running it again is safe. A short blocking
                # wait on this worker thread (the event loop is not on it).
                log.info("store group of %d write(s) rolled back (%s); retrying", len(fns), exc)
                time.sleep(GROUP_BACKOFF.delay(attempt - 1))

    # -- the Engine interface -------------------------------------------------------------------
    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self) -> str:
        try:
            return await self._call(self._open_sync)
        except BaseException:
            await self._call(self._pool.close)
            self._executor.shutdown(wait=True)
            raise

    async def close(self) -> None:
        if not self._pool.closed:  # closing twice (a server stopped twice) is a no-op
            await self._call(self._pool.close)
        self._executor.shutdown(wait=True)

    async def read(self, fn: Callable[[Conn], T]) -> T:
        return await self._call(self._read_sync, fn)

    async def write_group(self, fns: Sequence[Callable[[Conn], Any]]) -> list[Outcome]:
        return await self._call(self._group_sync, fns)

    async def notify(self, channel: str, payloads: Sequence[str]) -> None:
        """``NOTIFY channel`` once per payload, in one statement on a pooled (autocommit) connection."""

        def body(conn: PgConn) -> None:
            conn.execute("SELECT pg_notify(?, p) FROM unnest(?::text[]) AS p", (channel, list(payloads)))

        await self._call(self._run, body)
