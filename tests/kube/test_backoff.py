"""The one retry policy: what is retried, what is raised at once, how long it waits."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from choreo_dp.kube.backoff import Backoff, is_retryable, retrying
from choreo_dp.kube.errors import ApiError


class Sleeps:
    """An injected sleep: records the delays instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def failing(*errors: BaseException, result: str = "done") -> tuple[list[int], Callable[[], Awaitable[str]]]:
    calls: list[int] = []

    async def fn() -> str:
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return result

    return calls, fn


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (ApiError(429, "TooManyRequests"), True),
        (ApiError(500, "InternalError"), True),
        (ApiError(502, "BadGateway"), True),
        (ApiError(503, "ConnectionError"), True),
        (ApiError(504, "Timeout"), True),
        (aiohttp.ServerDisconnectedError(), True),
        (aiohttp.ClientConnectorError(None, OSError(111, "refused")), True),  # type: ignore[arg-type]
        (ConnectionResetError(), True),
        (TimeoutError(), True),
        (ApiError(400, "BadRequest"), False),
        (ApiError(401, "Unauthorized"), False),
        (ApiError(403, "Forbidden"), False),
        (ApiError(404, "NotFound"), False),
        (ApiError(409, "Conflict"), False),
        (ApiError(410, "Gone"), False),
        (ApiError(422, "Invalid"), False),
        (ValueError("bad"), False),
        (KeyError("x"), False),
    ],
)
async def test_retryable_vs_terminal(error: BaseException, retryable: bool) -> None:
    assert is_retryable(error) is retryable
    sleeps = Sleeps()
    calls, fn = failing(error)
    if retryable:
        assert await retrying(fn, sleep=sleeps) == "done"
        assert len(calls) == 2 and len(sleeps.delays) == 1
    else:
        with pytest.raises(type(error)):
            await retrying(fn, sleep=sleeps)
        assert len(calls) == 1 and sleeps.delays == []  # raised at once, never slept


async def test_attempts_bound_the_calls_and_raise_the_last_failure() -> None:
    sleeps = Sleeps()
    calls, fn = failing(*[ApiError(503, f"try{i}") for i in range(10)])
    with pytest.raises(ApiError, match="try2"):
        await retrying(fn, attempts=3, sleep=sleeps)
    assert len(calls) == 3 and len(sleeps.delays) == 2


async def test_deadline_bounds_the_time_spent() -> None:
    now = [0.0]

    async def sleep(delay: float) -> None:
        now[0] += delay

    calls, fn = failing(*[TimeoutError() for _ in range(1000)])
    with pytest.raises(TimeoutError):
        await retrying(fn, deadline=10.0, clock=lambda: now[0], sleep=sleep, backoff=Backoff(base=1, cap=4))
    assert now[0] <= 10.0 and len(calls) > 3  # never sleeps past the deadline


async def test_retry_after_is_a_bounded_floor_and_on_retry_sees_each_failure() -> None:
    sleeps = Sleeps()
    seen: list[tuple[int, int]] = []

    async def on_retry(attempt: int, exc: BaseException) -> None:
        assert isinstance(exc, ApiError)
        seen.append((attempt, exc.status))

    _, fn = failing(ApiError(429, "slow", retry_after=3.0), ApiError(429, "slow", retry_after=3600))
    backoff = Backoff(base=0.01, cap=1.0)
    assert await retrying(fn, backoff=backoff, sleep=sleeps, on_retry=on_retry) == "done"
    assert sleeps.delays[0] == 3.0  # the server's floor
    assert sleeps.delays[1] == 3.0  # an hour is not believed: at most three caps
    assert seen == [(1, 429), (2, 429)]


async def test_custom_retry_on_widens_what_is_retried() -> None:
    sleeps = Sleeps()
    calls, fn = failing(LookupError("not yet"), LookupError("not yet"))
    result = await retrying(
        fn,
        retry_on=lambda e: isinstance(e, LookupError),
        sleep=sleeps,
    )
    assert result == "done" and len(calls) == 3


def test_full_jitter_within_bounds_and_capped() -> None:
    rng_state = random.getstate()
    random.seed(1234)
    try:
        b = Backoff(base=0.5, cap=8.0)
        for attempt in range(12):
            ceiling = min(8.0, 0.5 * 2**attempt)
            assert b.ceiling(attempt) == ceiling
            samples = [b.delay(attempt) for _ in range(300)]
            assert all(0.0 <= s <= ceiling for s in samples)
            # full jitter: the whole range is used, not only its upper half
            assert min(samples) < ceiling * 0.2 and max(samples) > ceiling * 0.8
        assert b.ceiling(10_000) == 8.0  # no float overflow on long outages
    finally:
        random.setstate(rng_state)


def test_bad_backoff_is_refused() -> None:
    with pytest.raises(ValueError):
        Backoff(base=0)
    with pytest.raises(ValueError):
        Backoff(base=2, cap=1)
