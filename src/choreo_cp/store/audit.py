"""The audit trail: who asked the control plane for what (logs, events, live state) and what came of it.

Append-only (a trigger refuses updates) and bounded: every append prunes rows older than
``audit_max_age`` seconds and all but the newest ``audit_max_rows``, in the same transaction, so
the table never grows past its bound however long the control plane runs. A record describes a
request (parameters, byte count, end code), never the content that was streamed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from choreo_cp.store.core import StoreCore
from choreo_cp.store.engine import Conn
from choreo_cp.store.records import now_rfc3339

AUDIT_MAX_ROWS = 100_000
AUDIT_MAX_AGE_SECONDS = 90 * 24 * 3600.0
AUDIT_LIST_MAX = 1000


@dataclass(frozen=True)
class AuditRecord:
    who: str
    client: str
    dataplane: str
    app: str
    kind: str
    params: dict[str, Any]
    status: int
    code: str
    bytes: int
    duration_seconds: float
    at: str = field(default_factory=now_rfc3339)
    id: int = 0

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at,
            "who": self.who,
            "client": self.client,
            "dataplane": self.dataplane,
            "app": self.app,
            "kind": self.kind,
            "params": self.params,
            "status": self.status,
            "code": self.code,
            "bytes": self.bytes,
            "durationSeconds": self.duration_seconds,
        }


def _row(row: Any) -> AuditRecord:
    return AuditRecord(
        id=row["id"],
        at=row["at"],
        who=row["who"],
        client=row["client"],
        dataplane=row["dataplane"],
        app=row["app"],
        kind=row["kind"],
        params=json.loads(row["params"]),
        status=row["status"],
        code=row["code"],
        bytes=row["bytes"],
        duration_seconds=row["duration"],
    )


class Audit(StoreCore):
    """The audit part of the store."""

    audit_max_rows = AUDIT_MAX_ROWS
    audit_max_age = AUDIT_MAX_AGE_SECONDS

    async def append_audit(self, record: AuditRecord) -> int:
        """Append one record and prune past the bounds; returns how many rows the pruning removed."""
        cutoff = (datetime.now(UTC) - timedelta(seconds=self.audit_max_age)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        keep = max(1, self.audit_max_rows)

        def tx(conn: Conn) -> int:
            row = conn.execute(
                "INSERT INTO audit (at, who, client, dataplane, app, kind, params, status, code, bytes, duration)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (
                    record.at,
                    record.who,
                    record.client,
                    record.dataplane,
                    record.app,
                    record.kind,
                    json.dumps(record.params, sort_keys=True, separators=(",", ":")),
                    record.status,
                    record.code,
                    record.bytes,
                    record.duration_seconds,
                ),
            ).fetchone()
            newest = int(row[0])
            pruned = conn.execute("DELETE FROM audit WHERE id <= ?", (newest - keep,)).rowcount
            pruned += conn.execute("DELETE FROM audit WHERE at < ?", (cutoff,)).rowcount
            return int(pruned)

        return await self._txn(tx)

    async def list_audit(self, dataplane: str | None = None, limit: int = 100) -> list[AuditRecord]:
        """Newest first."""
        limit = max(1, min(limit, AUDIT_LIST_MAX))

        def read() -> list[AuditRecord]:
            if dataplane is None:
                rows = self._db.execute("SELECT * FROM audit ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
            else:
                rows = self._db.execute(
                    "SELECT * FROM audit WHERE dataplane=? ORDER BY id DESC LIMIT ?", (dataplane, limit)
                ).fetchall()
            return [_row(r) for r in rows]

        return await self._call(read)
