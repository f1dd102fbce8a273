"""The history of every accepted app spec: revision, time, author, and the image that ran it.

A row is written in the transaction that accepts the spec (``Revisions._put_sync``), so a spec the
data plane may receive is never missing from the history. The history is its own table, not a view
of the revision log, because the log is compacted for the tunnel's sake while a rollback may want a
spec from long ago; it is bounded instead per app (the newest ``history_limit`` rows). Deleting an
app keeps its history: pushing an old spec again is how an accidental deletion is undone.

``ran_image`` is filled by triggers on the status table (schema migration 4) when the data plane
reports the app Ready at that revision with a digest; the store never trusts it for more than the
digest (see :func:`choreo_cp.promotion.pinned_image`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from choreo_cp.store.core import StoreCore
from choreo_cp.store.records import now_rfc3339

DEFAULT_HISTORY_LIMIT = 50
HISTORY_LIST_MAX = 1000

Cause = Literal["apply", "rollback", "promotion"]


@dataclass(frozen=True)
class HistoryNote:
    """Who accepted a spec and why; the store adds revision, time and spec."""

    author: str | None = None
    cause: Cause = "apply"
    rollback_of: int | None = None


@dataclass(frozen=True)
class HistoryEntry:
    key: str
    revision: int
    environment: str
    name: str
    spec: dict[str, Any]
    spec_hash: str
    at: str
    author: str | None
    cause: str
    rollback_of: int | None
    ran_image: str | None
    ran_at: str | None


def _row(row: Any) -> HistoryEntry:
    return HistoryEntry(
        key=row["key"],
        revision=row["revision"],
        environment=row["environment"],
        name=row["name"],
        spec=json.loads(row["spec"]),
        spec_hash=row["spec_hash"],
        at=row["at"],
        author=row["author"],
        cause=row["cause"],
        rollback_of=row["rollback_of"],
        ran_image=row["ran_image"],
        ran_at=row["ran_at"],
    )


def record_history(
    conn: Any,
    *,
    dp: str,
    key: str,
    revision: int,
    environment: str,
    name: str,
    spec_text: str,
    spec_hash: str,
    note: HistoryNote,
    limit: int,
) -> None:
    """Append one accepted spec and prune the app's history to its newest ``limit`` rows.

    Runs inside the caller's write transaction (the one that accepts the spec).
    """
    conn.execute(
        "INSERT INTO history (dataplane, key, revision, environment, name, spec, spec_hash, at, author,"
        " cause, rollback_of) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            dp,
            key,
            revision,
            environment,
            name,
            spec_text,
            spec_hash,
            now_rfc3339(),
            note.author,
            note.cause,
            note.rollback_of,
        ),
    )
    # Pruned in steps of 1/8 of the bound, as the revision log is compacted: pruning one row with
    # every put cost a quarter of the store's put rate (measured, 2,000 puts of 10 apps). Readers
    # see only the newest ``limit`` (``_visible``), so the slack is never shown.
    limit = max(1, limit)
    slack = max(1, limit // 8)
    if _nth_newest(conn, dp, key, limit + slack) is None:
        return
    floor = _nth_newest(conn, dp, key, limit)
    if floor is not None:
        conn.execute("DELETE FROM history WHERE dataplane=? AND key=? AND revision<?", (dp, key, floor))


def _nth_newest(conn: Any, dp: str, key: str, n: int) -> int | None:
    row = conn.execute(
        "SELECT revision FROM history WHERE dataplane=? AND key=? ORDER BY revision DESC LIMIT 1 OFFSET ?",
        (dp, key, n - 1),
    ).fetchone()
    return None if row is None else int(row[0])


def history_rows(conn: Any, dp: str, key: str, limit: int, kept: int) -> list[HistoryEntry]:
    """An app's history, newest first, at most ``limit`` of the ``kept`` newest (plain SQL of a
    connection: any engine of the store runs it)."""
    limit = max(1, min(limit, kept, HISTORY_LIST_MAX))
    rows = conn.execute(
        "SELECT * FROM history WHERE dataplane=? AND key=? ORDER BY revision DESC LIMIT ?", (dp, key, limit)
    ).fetchall()
    return [_row(r) for r in rows]


def history_row(conn: Any, dp: str, key: str, revision: int, kept: int) -> HistoryEntry | None:
    """One revision of an app's history, if it is among the ``kept`` newest."""
    floor = _nth_newest(conn, dp, key, max(1, kept))
    if floor is not None and revision < floor:
        return None  # pruned, or about to be: past the bound either way
    row = conn.execute(
        "SELECT * FROM history WHERE dataplane=? AND key=? AND revision=?", (dp, key, revision)
    ).fetchone()
    return None if row is None else _row(row)


class History(StoreCore):
    """The history part of the store (read side; rows are written with each accepted app spec)."""

    history_limit = DEFAULT_HISTORY_LIMIT

    async def list_history(self, dp: str, key: str, limit: int = HISTORY_LIST_MAX) -> list[HistoryEntry]:
        """Newest first."""
        return await self._call(lambda: history_rows(self._db, dp, key, limit, self.history_limit))

    async def get_history(self, dp: str, key: str, revision: int) -> HistoryEntry | None:
        return await self._call(lambda: history_row(self._db, dp, key, revision, self.history_limit))
