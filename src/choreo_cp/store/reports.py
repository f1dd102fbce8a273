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
from choreo_cp.store.engine import POSTGRES, Conn
from choreo_cp.store.records import (
    DesiredState,
    Kind,
    Nack,
    ObjectReport,
    StatusRecord,
    canonical_json,
    inventory_json,
    not_registered,
    now_rfc3339,
    row_object,
)
from choreo_cp.store.sessions import drop_fenced


def _row_nack(row: Any) -> Nack:
    return Nack(row["key"], row["revision"], row["code"], row["message"], bool(row["retryable"]), row["at"])


class Reports(StoreCore):
    """The report part of the store."""

    def queue_status(
        self,
        dp: str,
        key: str,
        status: dict[str, Any],
        *,
        missing: bool = False,
        observed_at: str | None = None,
    ) -> None:
        """Remember the newest status of an object; flushed with the next :meth:`flush`.

        ``missing``: the data plane reports the object absent from its cluster; ``observed_at``: when
        the agent observed it (the report says so; otherwise only the arrival time is known).
        """
        text = canonical_json(status)
        pending = self._pending
        pending.unqueue_status(dp, key)
        pending.status[(dp, key)] = (text, now_rfc3339(), missing, observed_at)
        pending.status_bytes[dp] = pending.status_bytes.get(dp, 0) + len(text)

    def queue_inventory(self, dp: str, count: int, digest: str, revision: int, at: str | None = None) -> None:
        """Remember the agent's newest inventory summary (written with the next :meth:`flush`)."""
        self._pending.inventory[dp] = inventory_json(count, digest, revision, at or now_rfc3339())

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
            inventory = batch.inventory

            fences = dict(self.fences)

            def tx(conn: Conn) -> int:
                # several replicas: nothing from a session another replica has replaced since
                drop_fenced(conn, fences, batch, share_lock=self.dialect is POSTGRES)
                known = {r[0] for r in conn.execute("SELECT id FROM dataplanes").fetchall()}
                n = 0
                for (dp, key), (text, at, missing, observed) in sorted(status.items()):
                    if dp not in known:
                        continue
                    # Only objects that are still desired keep a status (a late report must not
                    # resurrect the record of a deleted app).
                    n += conn.execute(
                        "INSERT INTO status(dataplane, key, status, reported_at, missing, observed_at)"
                        " SELECT ?, ?, ?, ?, ?, ?"
                        " WHERE EXISTS (SELECT 1 FROM objects WHERE dataplane=? AND key=?)"
                        " ON CONFLICT(dataplane, key) DO UPDATE SET status=excluded.status,"
                        " reported_at=excluded.reported_at, missing=excluded.missing,"
                        " observed_at=excluded.observed_at",
                        (dp, key, text, at, int(missing), observed, dp, key),
                    ).rowcount
                for dp, (rev, epoch) in sorted(applied.items()):
                    n += conn.execute(
                        "UPDATE dataplanes SET applied_revision=?, applied_epoch=? WHERE id=?",
                        (rev, epoch, dp),
                    ).rowcount
                for dp, at in sorted(beats.items()):
                    n += conn.execute("UPDATE dataplanes SET last_heartbeat=? WHERE id=?", (at, dp)).rowcount
                for dp, info in sorted(agent.items()):
                    row = conn.execute("SELECT agent FROM dataplanes WHERE id=?", (dp,)).fetchone()
                    if row is None:
                        continue
                    merged = json.loads(row[0] or "{}")
                    merged.update(info)
                    conn.execute("UPDATE dataplanes SET agent=? WHERE id=?", (canonical_json(merged), dp))
                    n += 1
                for dp, text in sorted(inventory.items()):
                    n += conn.execute("UPDATE dataplanes SET inventory=? WHERE id=?", (text, dp)).rowcount
                return n

            try:
                return await self._txn(tx)
            except sqlite3.OperationalError:
                # Deferred, not lost: the next flush writes them (newer reports win).
                self._pending.merge_older(batch)
                raise

    def _pending_record(self, dp: str, key: str) -> StatusRecord | None:
        pending = self._pending.status.get((dp, key))
        if pending is None:
            return None
        text, at, missing, observed = pending
        return StatusRecord(key, json.loads(text), at, missing, observed)

    async def get_status(self, dp: str, key: str) -> StatusRecord | None:
        pending = self._pending_record(dp, key)
        if pending is not None:
            return pending
        row = await self._call(
            lambda: self._db.execute(
                "SELECT key, status, reported_at, missing, observed_at FROM status WHERE dataplane=? AND key=?",
                (dp, key),
            ).fetchone()
        )
        if row is None:
            return None
        return StatusRecord(
            row["key"],
            json.loads(row["status"]),
            row["reported_at"],
            bool(row["missing"]),
            row["observed_at"],
        )

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
            " s.missing AS s_missing, s.observed_at AS s_observed_at,"
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
                status = StatusRecord(
                    obj.key,
                    json.loads(r["s_status"]),
                    r["s_reported_at"],
                    bool(r["s_missing"]),
                    r["s_observed_at"],
                )
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

        def tx(c: Conn) -> bool:
            return bool(
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

    # -- what the data plane has, and resyncs the control plane asks for --------------------------
    async def desired_state(self, dp: str) -> DesiredState:
        """Epoch, revision, key -> hash and the keys refused for good at their current spec, read
        together (one call on the store thread is atomic)."""

        def read() -> DesiredState:
            head = self._db.execute("SELECT epoch, revision FROM dataplanes WHERE id=?", (dp,)).fetchone()
            if head is None:
                raise not_registered(dp)
            rows = self._db.execute("SELECT key, spec_hash FROM objects WHERE dataplane=?", (dp,)).fetchall()
            # A non-retryable nack of the current spec (a newer spec deletes the nack at put time).
            refused = self._db.execute(
                "SELECT n.key, n.code FROM nacks n JOIN objects o ON o.dataplane = n.dataplane AND o.key = n.key"
                " WHERE n.dataplane=? AND n.retryable=0 AND n.revision >= o.revision",
                (dp,),
            ).fetchall()
            return DesiredState(
                head["epoch"],
                int(head["revision"]),
                {r[0]: r[1] for r in rows},
                {r[0]: r[1] for r in refused},
            )

        return await self._call(read)

    async def head(self, dp: str) -> tuple[str, int]:
        """(epoch, revision) of a dataplane: one primary-key read."""
        row = await self._call(
            lambda: self._db.execute("SELECT epoch, revision FROM dataplanes WHERE id=?", (dp,)).fetchone()
        )
        if row is None:
            raise not_registered(dp)
        return str(row[0]), int(row[1])

    async def request_resync(self, dp: str, reason: str) -> int:
        """Persist that the next session of ``dp`` must resync; returns how many requests in a row
        (reset by :meth:`anti_entropy_settled`) this makes."""

        def tx(c: Conn) -> int:
            row = c.execute(
                "UPDATE dataplanes SET resync_required=?, resync_requests=resync_requests+1,"
                " resync_requested_at=? WHERE id=? RETURNING resync_requests",
                (reason[:256], now_rfc3339(), dp),
            ).fetchone()
            if row is None:
                raise not_registered(dp)
            return int(row[0])

        return await self._txn(tx)

    async def resync_done(self, dp: str) -> None:
        """The required resync ran (the backoff state stays until a summary matches)."""
        await self._txn(lambda c: c.execute("UPDATE dataplanes SET resync_required=NULL WHERE id=?", (dp,)))

    async def anti_entropy_settled(self, dp: str) -> None:
        """The agent's inventory matched the desired state: the next difference starts a new backoff."""
        await self._txn(
            lambda c: c.execute(
                "UPDATE dataplanes SET resync_requests=0, resync_requested_at=NULL WHERE id=?", (dp,)
            )
        )
