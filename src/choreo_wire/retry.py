"""The one backoff policy and retry helper of every retry loop, on both ends of the tunnel.

Exponential backoff with full jitter (AWS's "full jitter": attempt ``n`` waits
``uniform(0, min(cap, base * factor**n))``), so that many clients failing together do not retry
together. What counts as retryable is the caller's business (``retry_on``): the data plane retries
429, 5xx and connection failures of the Kubernetes API (``choreo_dp.kube.backoff``), the control
plane a database a later attempt can reach (``choreo_cp.retry``). Pure: the standard library only,
so every package may import it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)

# Retry-After larger than this many caps is not believed (a hostile or broken server could park us).
RETRY_AFTER_CAPS = 3.0


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: attempt ``n`` waits ``uniform(0, min(cap, base*factor**n))``."""

    base: float = 0.2
    cap: float = 10.0
    factor: float = 2.0

    def __post_init__(self) -> None:
        if self.base <= 0 or self.cap < self.base or self.factor < 1:
            raise ValueError(f"bad backoff: base={self.base} cap={self.cap} factor={self.factor}")

    def ceiling(self, attempt: int) -> float:
        # min() on the exponent first: factor**1000 would overflow a float
        return min(self.cap, self.base * self.factor ** min(attempt, 64))

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based); Retry-After is a floor."""
        delay = random.uniform(0.0, self.ceiling(attempt))
        if retry_after is not None and retry_after > 0:
            delay = max(delay, min(retry_after, self.cap * RETRY_AFTER_CAPS))
        return delay


def _no_retry_after(exc: BaseException) -> float | None:
    return None


async def retrying(
    fn: Callable[[], Awaitable[T]],
    *,
    retry_on: Callable[[BaseException], bool],
    backoff: Backoff = Backoff(),
    retry_after: Callable[[BaseException], float | None] = _no_retry_after,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    attempts: int | None = None,
    deadline: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    on_retry: Callable[[int, BaseException], Awaitable[None]] | None = None,
    what: str = "operation",
    logger: logging.Logger = log,
) -> T:
    """Await ``fn()`` until it succeeds; retry only what ``retry_on`` accepts.

    A failure ``retry_on`` refuses is raised at once (the caller decides how to end: a nack, an
    ended session, an error log). ``attempts`` bounds the number of calls, ``deadline`` the seconds
    spent; past either the last failure is raised. Neither: retry for as long as it takes (the
    caller is cancelled to stop). ``retry_after(exc)`` is the server's own wait, a floor of the
    delay; ``on_retry(attempt, exc)`` runs before each wait.
    """
    if attempts is not None and attempts < 1:
        raise ValueError("attempts must be >= 1")
    end = None if deadline is None else clock() + deadline
    attempt = 0
    while True:
        try:
            return await fn()
        except Exception as exc:
            if not retry_on(exc):
                raise
            attempt += 1
            if attempts is not None and attempt >= attempts:
                raise
            delay = backoff.delay(attempt - 1, retry_after(exc))
            if end is not None:
                remaining = end - clock()
                if remaining <= 0:
                    raise
                delay = min(delay, remaining)
            # the first retries are routine (a 429, a rolling apiserver); a long streak is worth a warning
            level = logging.INFO if attempt < 5 else logging.WARNING
            logger.log(level, "retrying %s in %.2fs (attempt %d): %s", what, delay, attempt, exc)
            if on_retry is not None:
                await on_retry(attempt, exc)
        await sleep(delay)
