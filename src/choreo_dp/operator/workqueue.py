"""A deduplicating, rate-limited work queue in the manner of client-go's workqueue.

- A key is queued at most once; re-adding a queued key is a no-op (events coalesce).
- A key being processed is never handed to a second worker; re-adds while processing mark it
  dirty and it is queued again when the worker calls :meth:`done`.
- Failures are retried per key with exponential backoff and full jitter (or the server's
  Retry-After), capped, and reset on success.
- Two lanes: ``add(key, urgent=True)`` (a workload's status moved: cheap, user-visible work) is
  served before ordinary adds, so during a cold start of many apps an app whose pods came up
  turns Ready right away instead of behind every app created after it. An urgent add of a key
  already waiting in the ordinary lane promotes it.

Its size is bounded by the number of distinct keys, i.e. by the objects in the cluster; the
delayed set is bounded the same way (one pending timer per key).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

from choreo_dp.operator.metrics import WORKQUEUE_ADDS, WORKQUEUE_DEPTH, WORKQUEUE_LATENCY, WORKQUEUE_RETRIES

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    def __init__(self, name: str, base_delay: float = 0.25, max_delay: float = 60.0) -> None:
        self.name = name
        self.base_delay = base_delay
        self.max_delay = max_delay
        # One token per lane entry; lanes may hold a stale entry of a promoted key (skipped).
        self._tokens: asyncio.Queue[None] = asyncio.Queue()
        # Lane entries carry the id of the enqueue they belong to: a promoted key leaves a stale
        # entry in the normal lane, and a later re-add must not inherit that entry's old position.
        self._urgent: deque[tuple[K, int]] = deque()
        self._normal: deque[tuple[K, int]] = deque()
        self._entry: dict[K, int] = {}  # key -> id of its live lane entry
        self._next_entry = 0
        self._queued: dict[K, float] = {}  # key -> monotonic time of enqueue
        self._in_urgent: set[K] = set()
        self._processing: set[K] = set()
        self._dirty: dict[K, bool] = {}  # key -> urgent
        self._failures: dict[K, int] = {}
        self._timers: dict[K, asyncio.TimerHandle] = {}
        self._shut_down = False

    def __len__(self) -> int:
        return len(self._queued)

    @property
    def in_flight(self) -> int:
        """Keys handed to a worker and not yet done."""
        return len(self._processing)

    def add(self, key: K, urgent: bool = False) -> None:
        if self._shut_down:
            return
        if key in self._processing:
            self._dirty[key] = self._dirty.get(key, False) or urgent
            return
        if key in self._queued:
            if urgent and key not in self._in_urgent:
                self._push(key, urgent=True)
            return
        self._queued[key] = time.monotonic()
        self._push(key, urgent)
        WORKQUEUE_ADDS.labels(self.name).inc()
        WORKQUEUE_DEPTH.labels(self.name).set(len(self._queued))

    def _push(self, key: K, urgent: bool) -> None:
        self._next_entry += 1
        self._entry[key] = self._next_entry
        if urgent:
            self._urgent.append((key, self._next_entry))
            self._in_urgent.add(key)
        else:
            self._normal.append((key, self._next_entry))
        self._tokens.put_nowait(None)

    def add_after(self, key: K, delay: float) -> None:
        """Queue ``key`` after ``delay`` seconds; an earlier pending timer for it wins."""
        if delay <= 0:
            self.add(key)
            return
        loop = asyncio.get_running_loop()
        existing = self._timers.get(key)
        when = loop.time() + delay
        if existing is not None and existing.when() <= when:
            return
        if existing is not None:
            existing.cancel()
        self._timers[key] = loop.call_at(when, self._fire, key)

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def add_rate_limited(self, key: K, retry_after: float | None = None) -> float:
        """Requeue a failed key with backoff; returns the chosen delay."""
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        ceiling = min(self.max_delay, self.base_delay * (2**failures))
        # Full jitter spreads retries of many keys that failed together (e.g. a 500 burst).
        delay = random.uniform(ceiling / 2, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_delay))
        WORKQUEUE_RETRIES.labels(self.name).inc()
        self.add_after(key, delay)
        return delay

    def forget(self, key: K) -> None:
        self._failures.pop(key, None)

    def failures(self, key: K) -> int:
        return self._failures.get(key, 0)

    async def get(self) -> K:
        while True:
            await self._tokens.get()
            key, entry = self._urgent.popleft() if self._urgent else self._normal.popleft()
            if self._entry.get(key) != entry:
                continue  # stale: the key was promoted or already served since this entry
            del self._entry[key]
            self._in_urgent.discard(key)
            queued_at = self._queued.pop(key, None)
            if queued_at is None:
                continue
            WORKQUEUE_DEPTH.labels(self.name).set(len(self._queued))
            WORKQUEUE_LATENCY.labels(self.name).observe(time.monotonic() - queued_at)
            self._processing.add(key)
            return key

    def done(self, key: K) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self.add(key, urgent=self._dirty.pop(key))

    def discard(self, key: K) -> None:
        """Forget everything about a key whose object is gone."""
        self._failures.pop(key, None)
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def shut_down(self) -> None:
        self._shut_down = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
