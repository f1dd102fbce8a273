"""The one polling helper of the test suite: wait until a probe returns something truthy.

``await eventually(probe, ...)`` in async tests (the probe may be sync or async) and
``eventually_blocking(probe, ...)`` in sync ones share one deadline rule and one failure message:
the probe always runs once more after the deadline has passed (a slow machine that overslept the
last interval does not fail a condition that holds), and a timeout names what was awaited and the
probe's last value, so a failing run says how far it got. ``guard`` runs before every probe and
raises to stop waiting as soon as waiting is pointless (a background task died, a request was
refused).

Areas that need other defaults bind them with :func:`functools.partial` instead of writing their
own loop.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0
DEFAULT_INTERVAL = 0.05


class PollTimeout(AssertionError):
    """The probe stayed falsy until the deadline (an AssertionError: pytest shows it as a failure)."""


class _Deadline:
    def __init__(self, timeout: float, interval: float, what: str, probe: object) -> None:
        if timeout < 0 or interval <= 0:
            raise ValueError(f"timeout must be >= 0 and interval > 0, got {timeout} and {interval}")
        self.timeout = timeout
        self.interval = interval
        self.what = what or repr(probe)
        self.end = time.monotonic() + timeout

    def pause(self, last: object) -> float:
        """Seconds to sleep before the next probe; raises PollTimeout once the deadline has passed."""
        left = self.end - time.monotonic()
        if left <= 0:
            raise PollTimeout(
                f"timed out after {self.timeout}s waiting for {self.what}; last value: {last!r}"
            )
        # the final probe runs at the deadline, not up to one interval after it
        return min(self.interval, left)


@overload
async def eventually(
    probe: Callable[[], Awaitable[T | None]],
    what: str = "",
    *,
    timeout: float = ...,
    interval: float = ...,
    guard: Callable[[], Any] | None = ...,
) -> T: ...


@overload
async def eventually(
    probe: Callable[[], T | None],
    what: str = "",
    *,
    timeout: float = ...,
    interval: float = ...,
    guard: Callable[[], Any] | None = ...,
) -> T: ...


async def eventually(
    probe: Callable[[], Any],
    what: str = "",
    *,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = DEFAULT_INTERVAL,
    guard: Callable[[], Any] | None = None,
) -> Any:
    """Poll ``probe`` (sync or async) until it returns something truthy and return that value."""
    deadline = _Deadline(timeout, interval, what, probe)
    while True:
        if guard is not None:
            guard()
        last = probe()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(deadline.pause(last))


def eventually_blocking(
    probe: Callable[[], T | None],
    what: str = "",
    *,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = DEFAULT_INTERVAL,
    guard: Callable[[], Any] | None = None,
) -> T:
    """:func:`eventually` for sync tests (blocks the thread between probes; never use it on a loop)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError("eventually_blocking() would block the running event loop: await eventually()")
    deadline = _Deadline(timeout, interval, what, probe)
    while True:
        if guard is not None:
            guard()
        last = probe()
        if last:
            return last
        time.sleep(deadline.pause(last))
