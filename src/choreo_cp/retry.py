"""The control plane's backoff for its own database: retry what a later attempt can cure.

The control plane may not import the data plane's Kubernetes client (import-linter), where the
shared ``Backoff``/``retrying`` live, and that policy is about HTTP statuses anyway; this is the same
shape (exponential backoff with full jitter, bounded by attempts or a deadline) for the one failure
the control plane can wait out: SQLite's ``OperationalError`` ("database is locked", disk I/O), which
a REST request answers with 503 and a tunnel session retries. Everything else is raised at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)

# What REST clients are told to wait (Retry-After) when the store is unavailable.
STORE_RETRY_AFTER_SECONDS = 2


@dataclass(frozen=True)
class Backoff:
    """Attempt ``n`` (0-based) waits ``uniform(0, min(cap, base * factor**n))``."""

    base: float = 0.05
    cap: float = 2.0
    factor: float = 2.0

    def __post_init__(self) -> None:
        if self.base <= 0 or self.cap < self.base or self.factor < 1:
            raise ValueError(f"bad backoff: base={self.base} cap={self.cap} factor={self.factor}")

    def ceiling(self, attempt: int) -> float:
        return min(self.cap, self.base * self.factor ** min(attempt, 64))

    def delay(self, attempt: int) -> float:
        return random.uniform(0.0, self.ceiling(attempt))


STORE_BACKOFF = Backoff()


def is_store_unavailable(exc: BaseException) -> bool:
    """A database failure a later attempt may cure (locked, busy, disk I/O), not a bug of ours."""
    return isinstance(exc, sqlite3.OperationalError)


async def retrying(
    fn: Callable[[], Awaitable[T]],
    *,
    what: str,
    deadline: float,
    backoff: Backoff = STORE_BACKOFF,
    retry_on: Callable[[BaseException], bool] = is_store_unavailable,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
    logger: logging.Logger = log,
) -> T:
    """Await ``fn()`` until it succeeds or ``deadline`` seconds have passed (then the last failure is
    raised); failures ``retry_on`` refuses are raised at once."""
    end = clock() + deadline
    attempt = 0
    while True:
        try:
            return await fn()
        except Exception as exc:
            if not retry_on(exc):
                raise
            remaining = end - clock()
            if remaining <= 0:
                raise
            delay = min(backoff.delay(attempt), remaining)
            attempt += 1
            level = logging.INFO if attempt < 5 else logging.WARNING
            logger.log(level, "retrying %s in %.2fs (attempt %d): %s", what, delay, attempt, exc)
        await sleep(delay)
