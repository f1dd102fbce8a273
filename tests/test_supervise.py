"""A supervised loop that fails is logged, restarted with backoff and shown on /healthz; cancelling stops it."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from choreo_dp.kube.backoff import Backoff
from choreo_dp.observability.health import Liveness, make_app
from choreo_dp.observability.supervise import supervise


class CeilingBackoff(Backoff):
    """Deterministic: always the ceiling, so the growth is visible."""

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        return self.ceiling(attempt)


async def test_a_failing_loop_is_restarted_with_backoff_and_healthz_reflects_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    agent = Liveness("agent", max_silence=60)
    probe = agent.child("status-watch")
    runs = 0
    healthy_again = asyncio.Event()
    release = asyncio.Event()
    slept: list[float] = []
    seen_during_backoff: list[tuple[int, str]] = []

    async def loop() -> None:
        nonlocal runs
        runs += 1
        if runs <= 3:
            raise RuntimeError(f"watch line too long #{runs}")
        healthy_again.set()
        await release.wait()  # then it runs "forever"

    async with TestClient(TestServer(make_app([agent], CollectorRegistry()))) as client:

        async def sleep(delay: float) -> None:
            slept.append(delay)
            resp = await client.get("/healthz")
            seen_during_backoff.append((resp.status, await resp.text()))

        caplog.set_level(logging.ERROR, logger="choreo_dp.observability.supervise")
        task = asyncio.create_task(
            supervise(
                "status-watch",
                loop,
                liveness=probe,
                backoff=CeilingBackoff(base=0.5, cap=2.0),
                sleep=sleep,
                recover_after=0.05,
            )
        )
        await asyncio.wait_for(healthy_again.wait(), 5)
        assert slept == [0.5, 1.0, 2.0]  # grows, capped
        for status, text in seen_during_backoff:
            assert status == 500 and "agent/status-watch" in text and "watch line too long" in text
        # the traceback is logged for each failure
        failures = [r for r in caplog.records if "status-watch failed" in r.getMessage()]
        assert len(failures) == 3 and all(r.exc_info for r in failures)
        # the restarted loop stays up: healthy again once it has run recover_after seconds
        while (await client.get("/healthz")).status != 200:
            assert not task.done()
            await asyncio.sleep(0.01)
        assert probe.failure is None and runs == 4

        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_loop_that_returns_is_restarted_too() -> None:
    probe = Liveness("loop", max_silence=None)
    runs = 0
    slept: list[float] = []

    async def loop() -> None:
        nonlocal runs
        runs += 1

    async def sleep(delay: float) -> None:
        slept.append(delay)
        if len(slept) == 3:
            raise asyncio.CancelledError  # stop the test here

    with pytest.raises(asyncio.CancelledError):
        await supervise("loop", loop, liveness=probe, sleep=sleep, backoff=CeilingBackoff(base=1, cap=4))
    assert runs == 3 and slept == [1, 2, 4]
    assert probe.failure is not None and "ended" in probe.failure


async def test_cancelling_the_supervisor_stops_the_loop_cleanly() -> None:
    probe = Liveness("loop", max_silence=None)
    started, cleaned = asyncio.Event(), asyncio.Event()

    async def loop() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.set()

    task = asyncio.create_task(supervise("loop", loop, liveness=probe, recover_after=0.01))
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned.is_set()  # the loop's own cleanup ran before the supervisor returned
    assert probe.failure is None  # stopping is not a failure


def test_liveness_failure_until_next_beat_and_children() -> None:
    parent = Liveness("agent", max_silence=60)
    child = parent.child("watch")
    assert parent.healthy and parent.problems() == []
    child.fail("boom")
    assert not parent.healthy and parent.problems() == ["agent/watch: boom"]
    child.beat()
    assert parent.healthy
    parent.child("idle", max_silence=None)  # an idle watch is not expected to beat
    stale = parent.child("busy", max_silence=0.0)
    while stale.silence <= 0.0:
        pass
    assert not parent.healthy
    assert [line.split(":")[0] for line in parent.problems()] == ["agent/busy"]
