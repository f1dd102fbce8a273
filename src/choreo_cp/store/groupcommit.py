"""Group commit: concurrent writers share one transaction and one commit (one fsync).

A durable commit costs a disk flush (SQLite WAL with ``synchronous=FULL``, PostgreSQL's WAL flush),
and that flush, not the SQL, bounds how many commits per second a store makes. Callers put their
write (a function of a connection) on a bounded queue and wait; one writer task takes everything
queued (up to ``max_group``), runs it as one transaction on the engine (each write in its own
savepoint) and resolves each caller only after the COMMIT returned: a caller is never told "done"
for a write that is not on disk, and when the commit fails every caller of the group gets the error.

No write waits for company: the writer takes whatever is queued when it is free, so a lone write is
committed at once and a burst is committed in as few flushes as the disk's pace allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

from choreo_cp.retry import Backoff
from choreo_cp.store.engine import Conn, Outcome, StoreUnavailable
from choreo_dp.observability.health import Liveness
from choreo_dp.observability.supervise import supervise

T = TypeVar("T")

log = logging.getLogger(__name__)

MAX_GROUP = 256
QUEUE_LIMIT = 4096
# A caller gives up on a full queue after this long (the store is far behind: report unavailable).
ENQUEUE_TIMEOUT = 30.0
# A caller stops waiting for its group after this long (the engines' own timeouts come first:
# SQLite's busy timeout, PostgreSQL's statement and lock timeouts).
COMMIT_TIMEOUT = 120.0
# How long closing the store waits for queued writes to commit.
DRAIN_TIMEOUT = 30.0
# Restarting a writer loop that crashed (a bug: every failure of a group is caught and handed to
# its callers).
RESTART_BACKOFF = Backoff(base=0.05, cap=5.0)

_Pending = tuple[Callable[[Conn], Any], "asyncio.Future[Any]"]


class GroupCommit:
    def __init__(
        self,
        commit: Callable[[Sequence[Callable[[Conn], Any]]], Awaitable[list[Outcome]]],
        *,
        max_group: int = MAX_GROUP,
        queue_limit: int = QUEUE_LIMIT,
        liveness: Liveness | None = None,
    ) -> None:
        self._commit = commit
        self._max_group = max_group
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=queue_limit)
        self.liveness = liveness or Liveness("store-writer", max_silence=None)
        self._task: asyncio.Task[None] | None = None
        # Figures for tests and metrics: groups committed and writes in them.
        self.groups = 0
        self.writes = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(
                supervise(
                    "store group commit writer", self._run, liveness=self.liveness, backoff=RESTART_BACKOFF
                ),
                name="store-group-commit",
            )

    async def submit(self, fn: Callable[[Conn], T]) -> T:
        """Run ``fn`` in the next group; returns its result once the group committed."""
        if self._task is None or self._task.done():
            raise RuntimeError("store is not open")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(self._queue.put((fn, fut)), ENQUEUE_TIMEOUT)
        except TimeoutError:
            raise StoreUnavailable(
                f"the store's write queue stayed full for {ENQUEUE_TIMEOUT:.0f} s"
            ) from None
        # Shielded: a caller that stops waiting does not take the write back (it may commit anyway,
        # as a write to any database may after its client hung up).
        try:
            return cast(T, await asyncio.wait_for(asyncio.shield(fut), COMMIT_TIMEOUT))
        except TimeoutError:
            # Not known to be committed, so not acknowledged: the caller answers 503, not 202.
            raise StoreUnavailable(f"the store did not commit within {COMMIT_TIMEOUT:.0f} s") from None

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_group and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                outcomes = await self._commit([fn for fn, _ in batch])
            except Exception as exc:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
            else:
                self.groups += 1
                self.writes += len(batch)
                for (_, fut), (ok, value) in zip(batch, outcomes, strict=True):
                    if fut.done():
                        continue
                    if ok:
                        fut.set_result(value)
                    else:
                        fut.set_exception(value)
            finally:
                for _ in batch:
                    self._queue.task_done()
            self.liveness.beat()

    async def close(self) -> None:
        """Commit what is queued (bounded wait), then stop the writer."""
        if self._task is None:
            return
        if not self._task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), DRAIN_TIMEOUT)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        # Anything still queued (the drain timed out) is failed, not left hanging.
        while not self._queue.empty():
            _, fut = self._queue.get_nowait()
            if not fut.done():
                fut.set_exception(RuntimeError("store closed before the write was committed"))
