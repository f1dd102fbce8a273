"""The operator's work queue under any interleaving of adds, workers, timers and failures.

A model of the queue's promises runs beside :class:`WorkQueue` on an event loop whose clock only
moves when the machine says so (timers fire exactly when the model expects them to). Checked after
every step: a key is never handed to two workers at once; a key added while it is processed comes
back once the worker is done; nothing added is lost or handed out twice for one add; urgent keys are
served before ordinary ones; the queue holds each key at most once; retry delays stay within their
cap; and a queue with nothing due hands out nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from choreo_dp.operator.workqueue import WorkQueue

T = TypeVar("T")
KEYS = ("a", "b", "c", "d")
BASE_DELAY = 0.25
MAX_DELAY = 2.0


class ManualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose ``time()`` is set by the test: timers fire when the test advances it."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def time(self) -> float:
        return self.now


class WorkQueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = ManualClockLoop()
        self.q: WorkQueue[str] = WorkQueue("property", base_delay=BASE_DELAY, max_delay=MAX_DELAY)
        self.queued: dict[str, bool] = {}  # key -> urgent
        self.processing: set[str] = set()
        self.dirty: dict[str, bool] = {}  # added while processing -> urgent
        self.timers: dict[str, float] = {}  # key -> when
        self.failures: dict[str, int] = {}
        self.shut = False

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def settle(self) -> None:
        """Let due timers and woken tasks run (nothing here waits on real time)."""

        async def spin() -> None:
            for _ in range(5):
                await asyncio.sleep(0)

        self.run(spin())

    # --- the model --------------------------------------------------------------------------------

    def model_add(self, key: str, urgent: bool) -> None:
        if self.shut:
            return
        if key in self.processing:
            self.dirty[key] = self.dirty.get(key, False) or urgent
        else:
            self.queued[key] = self.queued.get(key, False) or urgent

    # --- rules ------------------------------------------------------------------------------------

    @rule(key=st.sampled_from(KEYS), urgent=st.booleans())
    def add(self, key: str, urgent: bool) -> None:
        self.q.add(key, urgent=urgent)
        self.model_add(key, urgent)

    @precondition(lambda self: self.queued)
    @rule()
    def worker_gets(self) -> None:
        task = self.loop.create_task(self.q.get())
        self.settle()
        if not task.done():
            task.cancel()
            raise AssertionError(f"nothing handed out though {sorted(self.queued)} were added")
        key = task.result()
        assert key in self.queued, f"{key} handed out without a pending add"
        assert key not in self.processing, f"{key} handed to a second worker"
        if any(self.queued.values()):
            assert self.queued[key], f"ordinary {key} served before an urgent key"
        del self.queued[key]
        self.processing.add(key)

    @precondition(lambda self: not self.queued)
    @rule()
    def idle_worker_gets_nothing(self) -> None:
        task = self.loop.create_task(self.q.get())
        self.settle()
        assert not task.done(), f"{task.result()} handed out with nothing queued"
        task.cancel()
        self.settle()

    @precondition(lambda self: self.processing)
    @rule(data=st.data())
    def worker_done(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.processing)), label="done")
        self.q.done(key)
        self.processing.discard(key)
        if key in self.dirty:
            self.model_add(key, self.dirty.pop(key))

    def model_timer(self, key: str, delay: float) -> None:
        if self.shut:
            return
        when = self.loop.now + delay
        if key not in self.timers or when < self.timers[key]:
            self.timers[key] = when

    @rule(key=st.sampled_from(KEYS), delay=st.sampled_from([0.0, 0.25, 0.5, 1.0, 3.0]))
    def add_after(self, key: str, delay: float) -> None:
        async def call() -> None:
            self.q.add_after(key, delay)

        self.run(call())
        if delay <= 0:
            self.model_add(key, False)
        else:
            self.model_timer(key, delay)

    @rule(key=st.sampled_from(KEYS), retry_after=st.none() | st.sampled_from([0.5, 1.5, 100.0]))
    def failed(self, key: str, retry_after: float | None) -> None:
        async def call() -> float:
            return self.q.add_rate_limited(key, retry_after)

        delay = self.run(call())
        failures = self.failures.get(key, 0)
        self.failures[key] = failures + 1
        ceiling = min(MAX_DELAY, BASE_DELAY * 2**failures)
        assert ceiling / 2 <= delay <= MAX_DELAY, "retry delay outside its bounds"
        if retry_after is None:
            assert delay <= ceiling
        else:
            assert delay >= min(retry_after, MAX_DELAY), "Retry-After not honoured"
        self.model_timer(key, delay)

    @rule(key=st.sampled_from(KEYS))
    def succeeded(self, key: str) -> None:
        self.q.forget(key)
        self.failures.pop(key, None)

    @rule(key=st.sampled_from(KEYS))
    def object_gone(self, key: str) -> None:
        self.q.discard(key)
        self.failures.pop(key, None)
        self.timers.pop(key, None)

    @rule(dt=st.sampled_from([0.25, 0.5, 1.0, 4.0]))
    def time_passes(self, dt: float) -> None:
        self.loop.now += dt
        self.settle()
        for key, when in sorted(self.timers.items(), key=lambda kv: kv[1]):
            if when <= self.loop.now:
                del self.timers[key]
                self.model_add(key, False)

    @precondition(lambda self: not self.shut)
    @rule()
    def shut_down(self) -> None:
        self.q.shut_down()
        self.shut = True
        self.timers.clear()
        self.dirty.clear()  # done() re-adds nothing once shut down

    # --- invariants ---------------------------------------------------------------------------------

    @invariant()
    def holds_each_key_at_most_once(self) -> None:
        assert len(self.q) == len(self.queued) <= len(KEYS)

    @invariant()
    def counts_failures_per_key(self) -> None:
        for key in KEYS:
            assert self.q.failures(key) == self.failures.get(key, 0)

    def teardown(self) -> None:
        """Nothing is lost: once every worker is done and every timer due, draining the queue hands
        out exactly the keys still owed, each once."""
        try:
            for key in sorted(self.processing):
                self.worker_done_key(key)
            self.loop.now += 1000
            self.settle()
            for key in list(self.timers):
                self.model_add(key, False)
            self.timers.clear()
            drained = []
            while self.queued:
                self.worker_gets()
                drained.append(next(iter(self.processing)))
                self.worker_done_key(drained[-1])
            assert len(drained) == len(set(drained))
            self.idle_worker_gets_nothing()
        finally:
            self.q.shut_down()
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
            self.settle()
            self.loop.close()

    def worker_done_key(self, key: str) -> None:
        self.q.done(key)
        self.processing.discard(key)
        if key in self.dirty:
            self.model_add(key, self.dirty.pop(key))


WorkQueueMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
test_workqueue = WorkQueueMachine.TestCase


async def test_a_key_added_again_waits_behind_keys_queued_before_it() -> None:
    """FIFO within a lane: once ``a`` was promoted and served, an ordinary re-add of ``a`` goes to
    the back of the line; the stale lane entry its promotion left behind must not let it jump
    ahead of ``b``."""
    q: WorkQueue[str] = WorkQueue("fifo")
    q.add("a")
    q.add("b")
    q.add("a", urgent=True)
    assert await q.get() == "a"
    q.done("a")
    q.add("a")
    assert await q.get() == "b"
