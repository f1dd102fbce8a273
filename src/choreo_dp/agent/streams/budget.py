"""The data plane's log-read budget: one token bucket (bytes/s, with a burst) shared by every log
reader of every stream.

Why at the reader and not at the tunnel: the API server passes every log byte through itself, and
while it serves ~10 MiB/s of ``pods/log`` its writes slow down (issue 16: push-to-applied p99 went to
20-45x its idle value). A reader that waits before taking the next chunk off the connection leaves
the bytes in the kernel's buffers, so TCP backpressure slows the API server's sending too: the
customer's API server is never asked for more than the budget.

A turn reserves :data:`RESERVE` and its read takes at most that much (the reader asks the
connection for chunks of at most the reserve; the rest waits in aiohttp's bounded buffer and then in
the kernel). So the bucket's debt never exceeds one reservation, turns come round at the rate's pace,
and over any window the bytes read are at most ``rate * window + burst`` plus one reservation per
reader in flight. Turns are handed out in arrival order (``asyncio.Lock`` wakes its waiters first
come, first served), so a reader that just read queues behind every other: with reads of equal size
the readers share the rate evenly. (Reads of whatever the connection held, up to half a second of the
rate in one chunk, once left a reader without a turn for seconds.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from choreo_dp.agent.streams.channel import StreamStop

# Default aggregate rate: ~5,000 lines of 200 bytes a second, more than anyone reads, and what the
# API server can serve beside its writes. In issue 16's benchmark (2 shared cores, 10 streams flat
# out) push-to-applied p99 was 1.7-3.0x idle at 2 MiB/s and 1.2-1.8x at 1 MiB/s: the server's CPU
# for the log bytes is what the writes wait behind.
DEFAULT_READ_RATE = 1 << 20
# What a turn reserves before the read, and the most one read takes: small enough that turns come
# round many times a second at the default rate, large enough that a turn is not mostly overhead.
RESERVE = 16 << 10
# The burst never falls below this (one chunk of a busy connection must fit; a ``tail`` of a few
# hundred lines is not slowed).
MIN_BURST = 64 << 10
# A reader waits at most this for its turn; past it the stream ends with ``limit`` (the budget is
# shared by more readers than it can serve).
TURN_WAIT = 60.0


def default_burst(rate: int) -> int:
    """A sixteenth of a second of the rate (64 KiB at the default), not more: whenever the readers
    pause (the control plane's lane is full, a stream starts) the bucket fills up to the burst, and
    then the API server is asked for all of it at once. With half a second (512 KiB) such bursts
    came every second or two, and the pushes beside them were the slowest of issue 16's benchmark:
    push-to-applied p99 ratio 1.45, 1.72, 3.72 (emulated) and 1.80, 2.11 (real) against 0.97, 1.05,
    1.21 and 1.61, 1.83 with 64 KiB, in alternating runs."""
    return max(MIN_BURST, rate // 16)


class TokenBucket:
    """The arithmetic only, on the caller's clock: deterministic to test."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError(f"rate and burst must be > 0, got {rate} and {burst}")
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = float(burst)
        self._last = now

    def _refill(self, now: float) -> None:
        # a clock that steps back (it should not) never adds tokens
        elapsed = max(0.0, now - self._last)
        self._last = max(self._last, now)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)

    def wait_time(self, now: float) -> float:
        """Seconds until the bucket is out of debt (0: a turn may go now)."""
        self._refill(now)
        # less than a byte of debt is rounding, and waiting for it could loop: a float clock that
        # does not move for a wait of 1e-17 s never pays it
        return 0.0 if self.tokens > -1.0 else -self.tokens / self.rate

    def take(self, n: float, now: float) -> None:
        """Count ``n`` bytes (negative: give back an unused reservation); may leave a debt."""
        self._refill(now)
        self.tokens = min(self.burst, self.tokens - n)


class ReadBudget:
    """The shared budget: ``await turn()`` before reading a chunk, ``settle(len(chunk))`` after."""

    def __init__(
        self,
        rate: int = DEFAULT_READ_RATE,
        burst: int | None = None,
        *,
        reserve: int = RESERVE,
        turn_wait: float = TURN_WAIT,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self._clock = clock or (lambda: asyncio.get_running_loop().time())
        self._sleep = sleep or asyncio.sleep
        self.rate = rate
        self.reserve = reserve
        self.turn_wait = turn_wait
        self.bucket: TokenBucket | None = None  # made on first use: the loop's clock needs a loop
        self._burst = burst if burst is not None else default_burst(rate)
        self._turns = asyncio.Lock()
        self.read_bytes = 0
        self.largest_read = 0  # what one read took at most: the slack of the bound above
        self.waited = 0.0

    def _bucket(self) -> TokenBucket:
        if self.bucket is None:
            self.bucket = TokenBucket(self.rate, self._burst, self._clock())
        return self.bucket

    async def turn(self) -> None:
        """Wait (first come, first served; bounded by ``turn_wait``) until the budget allows the next
        read, and reserve for it. Every ``turn`` is followed by one ``settle``."""
        try:
            async with asyncio.timeout(self.turn_wait):
                async with self._turns:
                    bucket = self._bucket()
                    while (delay := bucket.wait_time(self._clock())) > 0:
                        self.waited += delay
                        await self._sleep(delay)
                    bucket.take(self.reserve, self._clock())
        except TimeoutError:
            raise StreamStop(
                "limit",
                f"the data plane's log-read budget ({self.rate} B/s) had no turn for {self.turn_wait:g}s",
            ) from None

    def settle(self, n: int) -> None:
        """The read after a turn returned ``n`` bytes (0 at the end of the log)."""
        self.read_bytes += n
        self.largest_read = max(self.largest_read, n)
        self._bucket().take(n - self.reserve, self._clock())


class Unlimited(ReadBudget):
    """No budget (rate 0 in the configuration): turns never wait; bytes are still counted."""

    def __init__(self) -> None:
        super().__init__(rate=1)

    async def turn(self) -> None:
        return None

    def settle(self, n: int) -> None:
        self.read_bytes += n
        self.largest_read = max(self.largest_read, n)


def read_budget(rate: int) -> ReadBudget:
    """The budget for a configured rate in bytes/s; 0 switches it off."""
    if rate < 0:
        raise ValueError(f"the log-read rate must be >= 0, got {rate}")
    return Unlimited() if rate == 0 else ReadBudget(rate)
