"""When a secret that failed is read again: the shared Backoff's schedule, never sooner than 80% of it."""

from __future__ import annotations

import pytest

from choreo_dp.kube.backoff import RETRY_AFTER_CAPS, Backoff
from choreo_dp.secrets.fetcher import FAILURE_BACKOFF, SecretFetcher, failure_delay

BACKOFF = Backoff(base=5.0, cap=300.0)


@pytest.mark.parametrize(
    ("failures", "ceiling"),
    [(1, 5.0), (2, 10.0), (3, 20.0), (7, 300.0), (1000, 300.0)],
)
def test_the_delay_follows_the_backoff_ceiling_with_a_floor(failures: int, ceiling: float) -> None:
    delays = [failure_delay(BACKOFF, failures, 3600.0, None) for _ in range(200)]
    assert all(0.8 * ceiling <= d <= ceiling for d in delays)
    # jittered, so keys that failed together do not come back together
    assert len(set(delays)) > 100


def test_a_failing_secret_is_read_again_no_later_than_its_refresh_interval() -> None:
    assert all(8.0 <= failure_delay(BACKOFF, 10, 10.0, None) <= 10.0 for _ in range(50))


def test_retry_after_is_a_floor_but_a_bounded_one() -> None:
    assert failure_delay(BACKOFF, 1, 3600.0, 120.0) == 120.0
    huge = failure_delay(BACKOFF, 1, 3600.0, 10**6)
    assert huge == BACKOFF.cap * RETRY_AFTER_CAPS


def test_the_fetcher_takes_a_backoff_or_the_old_base_and_cap_pair() -> None:
    assert FAILURE_BACKOFF == BACKOFF
    with pytest.raises(ValueError, match="bad backoff"):
        SecretFetcher(pool=None, failure_backoff=(1.0, 0.5))  # type: ignore[arg-type]
