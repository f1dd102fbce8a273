"""Run a long-running loop under supervision: a failure is logged with its traceback, reported on
``/healthz`` and the loop restarted with backoff; cancellation stops it cleanly.

A bare ``asyncio.create_task(loop())`` dies silently on the first exception it does not catch (a
watch line over aiohttp's limit, a status write during an API outage) while the process, and its
``/healthz``, look fine. Under :func:`supervise` the same failure is a log line with a traceback, a
failed probe until the restarted loop has stayed up for ``recover_after`` seconds, a counter, and
a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import Counter

from choreo_dp.observability.health import Liveness
from choreo_wire.retry import Backoff

log = logging.getLogger(__name__)

RESTARTS = Counter(
    "choreo_loop_restarts_total", "Supervised loops restarted after failing or ending", ["loop"]
)

DEFAULT_BACKOFF = Backoff(base=1.0, cap=60.0)


async def supervise(
    name: str,
    run: Callable[[], Awaitable[None]],
    *,
    liveness: Liveness,
    backoff: Backoff = DEFAULT_BACKOFF,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    recover_after: float = 5.0,
    stable_after: float = 60.0,
    logger: logging.Logger = log,
) -> None:
    """Run ``run()`` forever: restart it whenever it raises or returns; return only when cancelled.

    The probe is failed from a crash until the restarted loop has run ``recover_after`` seconds
    without failing again. The backoff grows with each crash in a row and starts over once a run
    lasted ``stable_after`` seconds.
    """
    loop = asyncio.get_running_loop()
    attempt = 0
    restarts = 0
    while True:
        started = loop.time()
        task: asyncio.Task[None] = asyncio.ensure_future(run())
        try:
            done, _ = await asyncio.wait([task], timeout=recover_after)
            if not done:
                if liveness.failure is not None:
                    logger.info("%s recovered", name)
                liveness.beat()
                await asyncio.wait([task])
            exc = None if task.cancelled() else task.exception()
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if exc is None:
            reason = "cancelled" if task.cancelled() else "ended"
            logger.error("%s %s unexpectedly; restarting", name, reason)
        else:
            reason = f"{type(exc).__name__}: {exc}"[:500]
            logger.error("%s failed; restarting", name, exc_info=exc)
        restarts += 1
        RESTARTS.labels(name).inc()
        if loop.time() - started >= stable_after:
            attempt = 0
        delay = backoff.delay(attempt)
        attempt += 1
        liveness.fail(f"{reason} (restart {restarts} in {delay:.1f}s)")
        await sleep(delay)
