"""The canary's HTTP check and the clock a rollout reads: what the planner observes beyond the cache.

One GET of the canary Service with a short timeout, its latest answer remembered per app for
half an analysis interval so the many reconciles pod events cause do not each request it again.
The memory is only an observation cache: after a restart the first reconcile asks again, and the
rollout itself stays in ``status.rollout``. Both the GET and the clock can be replaced (tests: no
pod serves HTTP on kwok, and timers are better driven than waited for).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import aiohttp

from choreo_dp.operator.keys import AppKey
from choreo_dp.render.rollout_plan import HttpCheckResult

# Long enough for a loaded pod, short enough that a worker is never held for long by a dead one.
HTTP_TIMEOUT_SECONDS = 2.0
DETAIL_LIMIT = 200

HttpGet = Callable[[str], Awaitable[HttpCheckResult]]
Clock = Callable[[], datetime]


async def aiohttp_get(url: str, timeout: float = HTTP_TIMEOUT_SECONDS) -> HttpCheckResult:
    """GET ``url``; ok when it answers 2xx within ``timeout``. Never raises for the target's faults."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.get(url, allow_redirects=False) as resp,
        ):
            ok = 200 <= resp.status < 300
            return HttpCheckResult(ok, f"GET {url}: {resp.status}")
    except TimeoutError:
        return HttpCheckResult(False, f"GET {url}: no answer within {timeout:g}s")
    except aiohttp.ClientError as exc:
        return HttpCheckResult(False, f"GET {url}: {type(exc).__name__}: {str(exc)[:DETAIL_LIMIT]}")


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Seen:
    revision: str
    at: datetime
    result: HttpCheckResult


@dataclass
class RolloutProbe:
    """The HTTP check (``get``) and clock (``now``) of the rollout step, with the last answers."""

    get: HttpGet = aiohttp_get
    now: Clock = utcnow
    _last: dict[AppKey, _Seen] = field(default_factory=dict)

    async def check(self, key: AppKey, url: str, revision: str, interval: timedelta) -> HttpCheckResult:
        """The canary's latest answer, asked again when older than half of ``interval`` or about
        another revision (a new canary is never judged by its predecessor's answer)."""
        # No lock: the work queue never reconciles one key twice at once.
        seen = self._last.get(key)
        now = self.now()
        if seen is None or seen.revision != revision or now - seen.at >= interval / 2:
            seen = _Seen(revision, now, await self.get(url))
            self._last[key] = seen
        return seen.result

    def forget(self, key: AppKey) -> None:
        """No rollout under way for ``key`` (or it is gone): keep nothing about it."""
        self._last.pop(key, None)
