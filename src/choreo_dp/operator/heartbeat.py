"""How old a DataPlane's heartbeat is, and whether its agent must be taken for dead (pure).

The agent renews ``status.lastHeartbeatTime`` while it is connected; a dead agent stops renewing
but cannot write ``connected: false``, so the operator does it once the heartbeat is older than
its bound (``status.heartbeatBoundSeconds``, written by the agent, or the operator's default).

Age is measured the way the node lifecycle controller measures a kubelet's lease: from when this
process first saw the current heartbeat (the watch shows each renewal at once), on the local
monotonic clock. The timestamp's own wall-clock age is trusted only for the first heartbeat a
process sees (at start, so a long-dead agent is not given a fresh bound); a skew between the
agent's clock and the operator's therefore never makes a renewing agent look dead.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from choreo_dp.operator.state import HeartbeatSeen

HEARTBEAT_FIELD = "lastHeartbeatTime"
BOUND_FIELD = "heartbeatBoundSeconds"


def wall_age(stamp: str | None, now_wall: float) -> float:
    """Seconds since an RFC 3339 time (0 when missing, unreadable or in the future)."""
    if not stamp:
        return 0.0
    try:
        then = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0
    return max(0.0, now_wall - then)


def observe(
    previous: HeartbeatSeen | None, status: dict[str, Any], now_mono: float, now_wall: float
) -> HeartbeatSeen:
    """What the watch side records for a DataPlane event: unchanged when the heartbeat is the same."""
    value = status.get(HEARTBEAT_FIELD)
    stamp = value if isinstance(value, str) else None
    if previous is not None and previous.value == stamp:
        return previous
    age = wall_age(stamp, now_wall) if previous is None else 0.0
    return HeartbeatSeen(stamp, now_mono, age)


def bound_of(status: dict[str, Any], default: float) -> float:
    raw = status.get(BOUND_FIELD)
    if isinstance(raw, int | float) and not isinstance(raw, bool) and raw > 0:
        return float(raw)
    return default


@dataclass(frozen=True)
class Verdict:
    """``expired``: take the agent for dead. Otherwise ``remaining`` seconds until it would be."""

    expired: bool
    remaining: float
    bound: float
    last: str
    age: float

    @property
    def message(self) -> str:
        return (
            f"no heartbeat from the agent since {self.last} ({self.age:.0f}s ago; "
            f"the bound is {self.bound:g}s)"
        )


def judge(
    status: dict[str, Any], seen: HeartbeatSeen | None, now_mono: float, now_wall: float, default_bound: float
) -> Verdict | None:
    """None when there is nothing to judge: not connected, or no heartbeat to go by."""
    last = status.get(HEARTBEAT_FIELD)
    if status.get("connected") is not True or not isinstance(last, str) or not last:
        return None
    if seen is not None and seen.value == last:
        age = seen.age_when_seen + (now_mono - seen.seen_at)
    elif seen is None:
        age = wall_age(last, now_wall)
    else:
        age = 0.0  # a renewal newer than the watch has shown yet (a reread after a conflict)
    bound = bound_of(status, default_bound)
    return Verdict(age >= bound, max(0.0, bound - age), bound, last, age)
