"""The control plane's SQLite store: desired objects, revision log, status records, token hashes.

Every call runs on one dedicated worker thread that owns the only connection, so SQLite access is
serialized without locks and the event loop never blocks on disk. Desired-state changes are committed
(WAL, ``synchronous=FULL``) before the call returns, and callers only notify tunnel sessions after
that, so nothing is ever sent that a crash could take back. The parts live in their own modules:
``schema`` (tables, schema version, migrations applied at open), ``tokens`` (dataplanes and their
tokens), ``revisions`` (desired objects and the revision log), ``reports`` (statuses, acks,
heartbeats and refusals from the data plane), ``audit`` (who asked for logs, events, live state); :class:`Store` puts them together.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

from choreo_cp.store.audit import Audit, AuditRecord
from choreo_cp.store.core import DEFAULT_LOG_LIMIT
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
    "Snapshot",
    "StatusRecord",
    "Store",
    "StoreError",
    "WriteResult",
    "canonical_json",
    "default_spec_hash",
    "hash_token",
    "new_epoch",
    "new_token",
    "now_rfc3339",
    "object_key",
]


class Store(Dataplanes, Revisions, Reports, Audit):
    """Async facade over one SQLite connection living on one worker thread."""

    async def open(self) -> Self:
        try:
            await self._call(self._open_sync)
        except BaseException:
            # A refused database (newer schema, unreadable file) leaves no worker thread behind.
            self._executor.shutdown(wait=True)
            raise
        return self

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
