"""azure-core's retry policy with bounds that keep the operator responsive.

The SDK defaults (10 retries, exponential backoff up to 120 s, unbounded Retry-After sleeps, 300 s read
timeouts) can park a reconcile for many minutes. Here: few retries, short backoff, and a 429 whose
Retry-After is longer than we are willing to block is not slept on inside the pipeline; it is surfaced
so the caller marks the vault throttled (a :class:`ThrottleGate`) and every other read of that vault
waits for it too, instead of each request discovering the throttle on its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from azure.core.pipeline import PipelineResponse
from azure.core.pipeline.policies import AsyncRetryPolicy


class BoundedRetryPolicy(AsyncRetryPolicy[Any, Any]):
    def __init__(
        self,
        *,
        max_retry_after: float,
        on_throttle: Callable[[float], None],
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._max_retry_after = max_retry_after
        self._on_throttle = on_throttle

    def is_retry(self, settings: dict[str, Any], response: PipelineResponse[Any, Any]) -> bool:
        status = response.http_response.status_code
        if status in (429, 503):
            retry_after = self.get_retry_after(response)
            if retry_after is not None:
                # Tell the gate first: concurrent reads of this vault must hold off as well.
                self._on_throttle(retry_after)
                if retry_after > self._max_retry_after:
                    return False
        return bool(super().is_retry(settings, response))


class ThrottleGate:
    """Per-vault "not before" time learned from Retry-After, shared by every read of that vault."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.not_before = 0.0

    def throttle(self, retry_after: float) -> None:
        self.not_before = max(self.not_before, self._clock() + retry_after)

    def remaining(self) -> float:
        return max(0.0, self.not_before - self._clock())
