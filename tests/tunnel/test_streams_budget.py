"""The data plane's log-read budget (issue 16), on a clock the test drives: the bucket's arithmetic,
turns first come first served, the bounded wait, and the switch-off. The rate held by real streams
is measured in test_streams.py."""

from __future__ import annotations

import asyncio

import pytest

from choreo_dp.agent.streams.budget import (
    DEFAULT_READ_RATE,
    MIN_BURST,
    ReadBudget,
    TokenBucket,
    Unlimited,
    default_burst,
    read_budget,
)
from choreo_dp.agent.streams.channel import StreamStop

pytestmark = pytest.mark.timeout(10)


class Clock:
    """Time moves only when a waiter sleeps; the sleeps are recorded."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)  # let the other readers queue up, as a real wait would


def test_bucket_starts_full_refills_at_the_rate_and_never_above_the_burst() -> None:
    b = TokenBucket(rate=1000, burst=500, now=0.0)
    assert b.wait_time(0.0) == 0.0
    b.take(500, 0.0)
    assert b.tokens == 0 and b.wait_time(0.0) == 0.0
    b.take(300, 0.0)  # a read larger than what was left: a debt, paid by time
    assert b.wait_time(0.0) == pytest.approx(0.3)
    assert b.wait_time(0.1) == pytest.approx(0.2)
    assert b.wait_time(0.3) == pytest.approx(0.0, abs=1e-9)
    assert b.wait_time(60.0) == 0.0 and b.tokens == 500, "a quiet hour buys no more than the burst"
    b.take(-10_000, 60.0)  # a reservation given back cannot overfill either
    assert b.tokens == 500


def test_bucket_ignores_a_clock_that_steps_back_and_refuses_a_zero_rate() -> None:
    b = TokenBucket(rate=100, burst=100, now=10.0)
    b.take(200, 10.0)
    assert b.wait_time(5.0) == pytest.approx(1.0)
    assert b.wait_time(10.5) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=100, now=0.0)


def test_default_burst_is_a_sixteenth_of_a_second_but_at_least_one_busy_chunk() -> None:
    assert default_burst(16 << 20) == 1 << 20
    assert default_burst(DEFAULT_READ_RATE) == MIN_BURST == 64 << 10
    assert default_burst(1000) == MIN_BURST


async def test_bytes_read_over_time_never_exceed_rate_times_time_plus_burst() -> None:
    clock = Clock()
    rate, burst, chunk = 10_000, 4_000, 1_500
    budget = ReadBudget(rate, burst, reserve=1_000, clock=clock, sleep=clock.sleep)
    start = clock.now
    for _ in range(200):
        await budget.turn()
        budget.settle(chunk)
        elapsed = clock.now - start
        # before its read the bucket was out of debt: at most one chunk beyond rate * t + burst
        assert budget.read_bytes <= rate * elapsed + burst + chunk + 1  # +1: float rounding
    elapsed = clock.now - start
    assert budget.read_bytes == 200 * chunk
    # and not slower than the rate either (waits are exactly the debt)
    assert budget.read_bytes >= rate * elapsed
    assert elapsed == pytest.approx((200 * chunk - burst) / rate, rel=0.02)


async def test_turns_are_first_come_first_served_so_no_reader_starves() -> None:
    clock = Clock()
    budget = ReadBudget(1000, 1000, reserve=100, clock=clock, sleep=clock.sleep)
    order: list[str] = []
    # "greedy" reads 10x more per chunk than the others; it still gets one turn in its place
    sizes = {"greedy": 1000, "a": 100, "b": 100}

    async def reader(name: str) -> None:
        for _ in range(6):
            await budget.turn()
            order.append(name)
            budget.settle(sizes[name])
            await asyncio.sleep(0)  # the read's own await: the others queue meanwhile

    await asyncio.gather(*(reader(n) for n in sizes))
    assert sorted(order) == sorted(n for n in sizes for _ in range(6))
    # every window of three consecutive turns after the first round holds each reader once
    rounds = [order[i : i + 3] for i in range(0, len(order), 3)]
    assert all(sorted(r) == sorted(sizes) for r in rounds), order


async def test_a_turn_is_bounded_and_ends_the_stream_with_limit() -> None:
    budget = ReadBudget(1000, 1000, reserve=0, turn_wait=0.05)
    await budget.turn()
    budget.settle(100_000)  # a debt of ~99 s
    with pytest.raises(StreamStop) as stop:
        await budget.turn()
    assert stop.value.code == "limit" and "log-read budget" in stop.value.message


async def test_a_cancelled_waiter_leaves_the_queue_to_the_next() -> None:
    budget = ReadBudget(1000, 1000, reserve=0)
    await budget.turn()
    budget.settle(1_300)  # 0.3 s of debt
    first = asyncio.create_task(budget.turn())
    second = asyncio.create_task(budget.turn())
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.wait_for(second, 2.0)
    assert first.cancelled()


async def test_rate_zero_switches_the_budget_off_but_still_counts() -> None:
    budget = read_budget(0)
    assert isinstance(budget, Unlimited)
    for _ in range(1000):
        await asyncio.wait_for(budget.turn(), 0.1)
        budget.settle(1 << 20)
    assert budget.read_bytes == 1000 << 20 and budget.waited == 0
    with pytest.raises(ValueError):
        read_budget(-1)
    assert read_budget(123).rate == 123
