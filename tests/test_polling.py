"""The one polling helper: returns the probe's truthy value, fails with the last one."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator

import pytest

from tests.polling import PollTimeout, eventually, eventually_blocking


async def test_returns_the_first_truthy_value_of_sync_and_async_probes() -> None:
    counter = itertools.count()
    assert await eventually(lambda: next(counter) >= 3 and "ready", interval=0.001) == "ready"

    async def probe() -> list[int]:
        await asyncio.sleep(0)
        return [1] if next(counter) >= 6 else []

    assert await eventually(probe, interval=0.001) == [1]


async def test_fails_with_what_it_waited_for_and_the_last_value() -> None:
    values: Iterator[object] = iter([0, None, []])
    with pytest.raises(PollTimeout, match=r"waiting for the app; last value: \[\]") as caught:
        await eventually(lambda: next(values, []), "the app", timeout=0.05, interval=0.01)
    assert isinstance(caught.value, AssertionError)


async def test_probes_once_more_at_the_deadline() -> None:
    calls = []

    def probe() -> bool:
        calls.append(1)
        return len(calls) == 2  # true only on the probe after the first (long) interval

    assert await eventually(probe, timeout=0.01, interval=10.0) is True


async def test_guard_stops_the_wait_early() -> None:
    def guard() -> None:
        raise RuntimeError("the operator died")

    with pytest.raises(RuntimeError, match="operator died"):
        await eventually(lambda: False, timeout=60, guard=guard)


def test_blocking_variant() -> None:
    counter = itertools.count()
    assert eventually_blocking(lambda: next(counter) == 2, interval=0.001) is True
    with pytest.raises(PollTimeout, match="last value: 0"):
        eventually_blocking(lambda: 0, "zero", timeout=0.02, interval=0.005)


async def test_blocking_variant_refuses_to_block_a_running_loop() -> None:
    with pytest.raises(RuntimeError, match="await eventually"):
        eventually_blocking(lambda: True)
