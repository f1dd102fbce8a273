"""The data plane's retry policy: which failures of the Kubernetes API a later attempt can cure.

Only those are retried: 429, 5xx, connection errors and timeouts. A 4xx other than 429 (403 RBAC,
404, 409, 422 ...) says the request itself is wrong or forbidden and will be again: retrying it only
hides the failure behind info logs, so it is raised at once. The backoff and the retry loop are the
one pair both ends share (:mod:`choreo_wire.retry`); this module gives them the data plane's
defaults.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp

from choreo_dp.kube.errors import ApiError
from choreo_wire import retry as _retry
from choreo_wire.retry import RETRY_AFTER_CAPS, Backoff

__all__ = ["RETRY_AFTER_CAPS", "Backoff", "is_retryable", "retry_after_of", "retrying"]

T = TypeVar("T")

log = logging.getLogger(__name__)


def is_retryable(exc: BaseException) -> bool:
    """True for failures a later attempt may cure: 429, 5xx, connection errors, timeouts."""
    if isinstance(exc, ApiError):
        return exc.status == 429 or exc.status >= 500
    return isinstance(
        exc,
        aiohttp.ClientConnectionError | aiohttp.ClientPayloadError | ConnectionError | TimeoutError,
    )


def retry_after_of(exc: BaseException) -> float | None:
    return exc.retry_after if isinstance(exc, ApiError) else None


async def retrying(fn: Callable[[], Awaitable[T]], **options: Any) -> T:
    """:func:`choreo_wire.retry.retrying` with the data plane's defaults: retry what
    :func:`is_retryable` accepts, honour the API server's Retry-After, log here."""
    options.setdefault("retry_on", is_retryable)
    options.setdefault("retry_after", retry_after_of)
    options.setdefault("logger", log)
    return await _retry.retrying(fn, **options)
