"""Does a live object still carry what we applied? (A cheap stand-in for a dry-run apply.)

Server-side apply only sets the fields we send; the API server adds defaults and other managers add
their own fields. So "in sync" means: every field of the desired manifest is present in the live
object with the same value. Lists must match element by element (our lists are atomic or keyed in
the order we render them).
"""

from __future__ import annotations

from typing import Any


def contains(live: Any, desired: Any) -> bool:
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return False
        return all(k in live and contains(live[k], v) for k, v in desired.items())
    if isinstance(desired, list):
        if not isinstance(live, list) or len(live) != len(desired):
            return False
        return all(contains(lv, dv) for lv, dv in zip(live, desired, strict=True))
    if isinstance(desired, bool) or isinstance(live, bool):
        return live is desired
    if isinstance(desired, int | float) and isinstance(live, int | float):
        return float(live) == float(desired)
    return bool(live == desired)
