"""The control plane's store: desired objects, revision log, status records, token hashes.

One store, two engines (``engine``): SQLite (the default, a path: one connection on one worker
thread) and PostgreSQL (a ``postgresql://`` URL: a connection pool, any number of replicas). Writes
go through one group-commit writer (``groupcommit``): concurrent writes share a transaction and one
commit, and each call returns only after that commit, so nothing is ever acknowledged or sent to a
tunnel session that a crash could take back. The parts live in their own modules:
``schema`` (tables, schema version, migrations applied at open; ``schema_postgres`` the same
migrations in PostgreSQL's dialect), ``tokens`` (dataplanes and their
tokens), ``revisions`` (desired objects and the revision log), ``reports`` (statuses, acks,
heartbeats and refusals from the data plane), ``audit`` (who asked for logs, events, live state); :class:`Store` puts them together.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

from choreo_cp.store.audit import Audit, AuditRecord
from choreo_cp.store.core import DEFAULT_LOG_LIMIT
from choreo_cp.store.engine import StoreUnavailable
from choreo_cp.store.records import (
    KIND_APP,
    KIND_ENVIRONMENT,
    Change,
    Dataplane,
    DesiredObject,
    DesiredState,
    InventoryReport,
    Kind,
    LogGap,
    Nack,
    ObjectReport,
    Op,
    Snapshot,
    StatusRecord,
    StoreError,
    WriteResult,
    canonical_json,
    default_spec_hash,
    now_rfc3339,
    object_key,
)
from choreo_cp.store.reports import Reports
from choreo_cp.store.revisions import Revisions
from choreo_cp.store.schema import LATEST as SCHEMA_VERSION
from choreo_cp.store.schema import SchemaTooNew
from choreo_cp.store.sessions import SessionRecord, Sessions
from choreo_cp.store.tokens import TOKEN_PREFIX, Dataplanes, hash_token, new_epoch, new_token

__all__ = [
    "DEFAULT_LOG_LIMIT",
    "KIND_APP",
    "KIND_ENVIRONMENT",
    "SCHEMA_VERSION",
    "TOKEN_PREFIX",
    "AuditRecord",
    "Change",
    "Dataplane",
    "DesiredObject",
    "DesiredState",
    "InventoryReport",
    "Kind",
    "LogGap",
    "Nack",
    "ObjectReport",
    "Op",
    "SchemaTooNew",
    "SessionRecord",
    "Snapshot",
    "StatusRecord",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "WriteResult",
    "canonical_json",
    "default_spec_hash",
    "hash_token",
    "new_epoch",
    "new_token",
    "now_rfc3339",
    "object_key",
]


class Store(Dataplanes, Revisions, Reports, Audit, Sessions):
    """The control plane's store, on SQLite (a path) or PostgreSQL (a ``postgresql://`` URL)."""

    async def open(self) -> Self:
        await self._open_engine()
        return self

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
