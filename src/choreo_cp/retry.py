"""The control plane's retry policy for its own database: retry what a later attempt can cure.

The backoff and the retry loop are the pair both ends share (:mod:`choreo_wire.retry`); what the
control plane can wait out is SQLite's ``OperationalError`` ("database is locked", disk I/O), which a
REST request answers with 503 and a tunnel session retries. Everything else is raised at once.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from choreo_wire import retry as _retry
from choreo_wire.retry import Backoff

__all__ = ["STORE_BACKOFF", "STORE_RETRY_AFTER_SECONDS", "Backoff", "is_store_unavailable", "retrying"]

T = TypeVar("T")

log = logging.getLogger(__name__)

# What REST clients are told to wait (Retry-After) when the store is unavailable.
STORE_RETRY_AFTER_SECONDS = 2


STORE_BACKOFF = Backoff(base=0.05, cap=2.0)


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
    raised); failures ``retry_on`` refuses are raised at once. The shared loop, with the store's
    defaults."""
    return await _retry.retrying(
        fn,
        retry_on=retry_on,
        backoff=backoff,
        deadline=deadline,
        sleep=sleep,
        clock=clock,
        what=what,
        logger=logger,
    )
