"""Exponential backoff with full jitter, shared by every retry loop."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    base: float = 0.2
    cap: float = 10.0
    factor: float = 2.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based); Retry-After is a floor."""
        ceiling = min(self.cap, self.base * (self.factor**attempt))
        delay = random.uniform(ceiling / 2, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.cap * 3))
        return delay
