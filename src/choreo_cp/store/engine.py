"""The store's backend interface: where SQL runs, in which transactions, in which dialect.

The store's parts (tokens, revisions, reports, audit) are written once, as plain functions of a
connection that take ``?`` parameters; an :class:`Engine` runs them. Two engines implement it:
:class:`~choreo_cp.store.sqlite_engine.SqliteEngine` (the embedded default, one connection on one
thread) and :class:`~choreo_cp.store.postgres_engine.PostgresEngine` (psycopg 3 with a connection
pool). Both run writes as *groups*: one transaction for many callers' writes, each write in its own
savepoint so a refused write (unknown dataplane, missing environment) costs nobody else theirs, and
the transaction commits once for all of them (the group commit of :mod:`.groupcommit`).

A backend failure a later attempt may cure (locked file, lost connection, pool exhausted, deadlock)
is raised as :class:`StoreUnavailable`, a ``sqlite3.OperationalError``: the REST API answers it with
503 and the tunnel retries it whatever the engine, without knowing which one runs.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Conn(Protocol):
    """What the store's SQL functions see: ``execute`` with ``?`` parameters, DB-API cursors back,
    rows readable by column name and by position."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Any: ...


@dataclass(frozen=True)
class Dialect:
    name: str
    # appended to the read of the dataplane row that starts every desired-state write: on PostgreSQL
    # it serializes the writers of one dataplane across connections and replicas (SQLite's write
    # transaction already holds the whole database)
    lock_row: str


SQLITE = Dialect("sqlite", "")
POSTGRES = Dialect("postgresql", " FOR UPDATE")


class StoreUnavailable(sqlite3.OperationalError):
    """The backend cannot serve now (connection lost, pool exhausted, deadlock, locked file)."""


# One write's outcome in a group: (True, its result) or (False, the exception it raised).
Outcome = tuple[bool, Any]


class Engine(Protocol):
    """A backend of the store (see the module docstring)."""

    dialect: Dialect
    # where the data lives, for messages (a path, or a URL without its password)
    location: str
    # the most writes one group (one transaction) takes
    max_group: int

    async def open(self) -> str:
        """Connect and migrate; returns the store id (random, minted with the database)."""
        ...

    async def close(self) -> None: ...

    def current(self) -> Conn:
        """The connection of the call running on this thread (reads written against ``_db``)."""
        ...

    async def read(self, fn: Callable[[Conn], T]) -> T:
        """Run ``fn`` against one consistent snapshot of the database."""
        ...

    async def write_group(self, fns: Sequence[Callable[[Conn], Any]]) -> list[Outcome]:
        """Run every ``fn`` in one transaction, each in its own savepoint, and commit once.

        A write that raises is rolled back to its savepoint and its exception is its outcome; the
        others still commit. Any failure of the transaction itself (the commit, a lost connection)
        raises, and then nothing of the group was committed.
        """
        ...


def engine_for(
    db: str,
    *,
    synchronous: str = "FULL",
    busy_timeout: float = 5.0,
    trace: Callable[[str], None] | None = None,
    pool_size: int = 8,
) -> Engine:
    """``postgresql://...`` (or ``postgres://``) selects PostgreSQL, anything else is a SQLite path."""
    if db.startswith(("postgresql://", "postgres://")):
        from choreo_cp.store.postgres_engine import PostgresEngine

        return PostgresEngine(db, pool_size=pool_size, trace=trace)
    from choreo_cp.store.sqlite_engine import SqliteEngine

    return SqliteEngine(db, synchronous=synchronous, busy_timeout=busy_timeout, trace=trace)
