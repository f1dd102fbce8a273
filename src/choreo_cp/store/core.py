"""The store's engine, its group-commit writer, and the coalesced reports waiting for a flush."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from choreo_cp.store.engine import Engine, StoreUnavailable, engine_for
from choreo_cp.store.groupcommit import GroupCommit
from choreo_cp.store.records import default_spec_hash

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
    """Lifecycle and plumbing shared by the store's parts (see :class:`choreo_cp.store.Store`).

    ``db`` is a SQLite path or a ``postgresql://`` URL (:func:`~choreo_cp.store.engine.engine_for`).
    Reads run on the engine (``_call``: the function reads ``self._db``, the connection of the call);
    writes go through the group commit (``_txn``: the function gets the connection), and return only
    after their group committed.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        log_limit: int = DEFAULT_LOG_LIMIT,
        spec_hash: Callable[[dict[str, Any]], str] = default_spec_hash,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        trace: Callable[[str], None] | None = None,
        busy_timeout: float = 5.0,
        pool_size: int = 8,
    ) -> None:
        if log_limit < 1:
            raise ValueError("log_limit must be >= 1")
        self.path = str(path)
        self.log_limit = log_limit
        self.spec_hash = spec_hash
        self.engine: Engine = engine_for(
            self.path, synchronous=synchronous, busy_timeout=busy_timeout, trace=trace, pool_size=pool_size
        )
        self.dialect = self.engine.dialect
        self.writer = GroupCommit(self.engine.write_group, max_group=self.engine.max_group)
        self._open = False
        self._pending = PendingReports()
        self._flush_lock = asyncio.Lock()
        self.store_id = ""
        # Called with the dataplane after a committed change of its desired state (the seam for
        # replicas: a notification that the dataplane moved, the data read from the store).
        self.changed_hooks: list[Callable[[str], None]] = []
        # Several replicas (store/sessions.py): the fencing token of this process's newest session
        # per dataplane (its reports are written only while that token is current), and why the
        # database is known lost (set by the replica's listener: calls fail at once, no 10 s wait).
        self.fences: dict[str, int] = {}
        self.unavailable: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    async def _open_engine(self) -> None:
        self.store_id = await self.engine.open()
        self.writer.start()
        self._open = True

    async def close(self) -> None:
        if self._open:
            await self.flush()
            await self.writer.close()
            self._open = False
        await self.engine.close()

    async def flush(self) -> int:
        raise NotImplementedError  # the reports part of the store writes the pending reports

    def _changed(self, dp: str) -> None:
        for hook in self.changed_hooks:
            hook(dp)

    def _check_available(self) -> None:
        if self.unavailable is not None:
            raise StoreUnavailable(self.unavailable)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a read on the engine: one consistent snapshot, ``self._db`` is its connection."""
        self._check_available()
        return await self.engine.read(lambda _conn: fn(*args))

    async def _txn(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn`` (given the connection) in the next group commit; returns after the commit."""
        self._check_available()
        return await self.writer.submit(fn)

    @property
    def _db(self) -> Any:
        # Any, not Conn: parts written before the PostgreSQL engine annotate their connection as
        # sqlite3.Connection; what they use of it (execute, fetchone/fetchall, rowcount, rows by
        # name and position) is what both engines' connections provide.
        return self.engine.current()
