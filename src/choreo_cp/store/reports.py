"""What the data plane reports: statuses, applied revisions, heartbeats, agent facts and refusals.

High-rate, loss-tolerant reports are coalesced in memory (newest value per key) and written in one
transaction by :meth:`Reports.flush`, which the server calls periodically and before reads. Refusals
(nacks) are written at once: they are rare and an operator must see them.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from choreo_cp.store.core import StoreCore
from choreo_cp.store.records import (
    Kind,
    Nack,
    ObjectReport,
    StatusRecord,
    canonical_json,
    now_rfc3339,
    row_object,
)


def _row_nack(row: sqlite3.Row) -> Nack:
    return Nack(row["key"], row["revision"], row["code"], row["message"], bool(row["retryable"]), row["at"])


class Reports(StoreCore):
    """The report part of the store."""

    def queue_status(self, dp: str, key: str, status: dict[str, Any]) -> None:
        """Remember the newest status of an object; flushed with the next :meth:`flush`."""
        text = canonical_json(status)
        pending = self._pending
        pending.unqueue_status(dp, key)
        pending.status[(dp, key)] = (text, now_rfc3339())
        pending.status_bytes[dp] = pending.status_bytes.get(dp, 0) + len(text)

    def pending_status_bytes(self, dp: str) -> int:
        """Characters of status reports of ``dp`` waiting for the next flush (to bound memory)."""
        return self._pending.status_bytes.get(dp, 0)

    def queue_applied(self, dp: str, revision: int, epoch: str) -> None:
        prev = self._pending.applied.get(dp)
        if prev is None or prev[1] != epoch or revision > prev[0]:
            self._pending.applied[dp] = (revision, epoch)

    def queue_heartbeat(self, dp: str, at: str | None = None) -> None:
        self._pending.heartbeat[dp] = at or now_rfc3339()

    def queue_agent_info(self, dp: str, info: dict[str, Any]) -> None:
        """Merge agent-reported facts (orphans, version...) into the dataplane's ``agent`` record."""
        self._pending.agent.setdefault(dp, {}).update(info)

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def flush(self) -> int:
        """Write every coalesced report in one transaction; returns how many rows were written."""
        async with self._flush_lock:
            if not self.pending:
                return 0
            batch = self._pending
            self._pending = type(batch)()
            status, applied, beats, agent = batch.status, batch.applied, batch.heartbeat, batch.agent

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

    def _pending_record(self, dp: str, key: str) -> StatusRecord | None:
        pending = self._pending.status.get((dp, key))
        return None if pending is None else StatusRecord(key, json.loads(pending[0]), pending[1])

    async def get_status(self, dp: str, key: str) -> StatusRecord | None:
        pending = self._pending_record(dp, key)
        if pending is not None:
            return pending
        row = await self._call(
            lambda: self._db.execute(
                "SELECT key, status, reported_at FROM status WHERE dataplane=? AND key=?", (dp, key)
            ).fetchone()
        )
        if row is None:
            return None
        return StatusRecord(row["key"], json.loads(row["status"]), row["reported_at"])

    async def object_reports(
        self,
        dp: str,
        *,
        kind: Kind | None = None,
        environment: str | None = None,
        key: str | None = None,
    ) -> list[ObjectReport]:
        """Desired objects with their status and refusal, in revision order: one query for any number."""
        sql = (
            "SELECT o.*, s.status AS s_status, s.reported_at AS s_reported_at,"
            " n.revision AS n_revision, n.code AS n_code, n.message AS n_message,"
            " n.retryable AS n_retryable, n.at AS n_at"
            " FROM objects o"
            " LEFT JOIN status s ON s.dataplane = o.dataplane AND s.key = o.key"
            " LEFT JOIN nacks n ON n.dataplane = o.dataplane AND n.key = o.key"
            " WHERE o.dataplane=?"
        )
        params: list[Any] = [dp]
        for column, value in (("kind", kind), ("environment", environment), ("key", key)):
            if value is not None:
                sql += f" AND o.{column}=?"
                params.append(value)
        sql += " ORDER BY o.revision"
        rows = await self._call(lambda: self._db.execute(sql, params).fetchall())
        out: list[ObjectReport] = []
        for r in rows:
            obj = row_object(r)
            status = self._pending_record(dp, obj.key)
            if status is None and r["s_status"] is not None:
                status = StatusRecord(obj.key, json.loads(r["s_status"]), r["s_reported_at"])
            nack = None
            if r["n_code"] is not None:
                nack = Nack(
                    obj.key, r["n_revision"], r["n_code"], r["n_message"], bool(r["n_retryable"]), r["n_at"]
                )
            out.append(ObjectReport(obj, status, nack))
        return out

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
        return None if row is None else _row_nack(row)
