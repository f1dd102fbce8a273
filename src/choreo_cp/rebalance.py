"""How many agents a replica sends away so that the replicas hold about as many each.

A rolling restart leaves the agents where they fled: the replica restarted last holds none, the
others all of them, and nothing moves them back (a tunnel is long-lived; the load balancer only
chooses at connect time). So each replica compares, every interval, the sessions it holds with its
fair share of all the sessions of the live replicas (``store/sessions.py``), and a replica above it
sends a few of its agents ``goaway``; they reconnect through the load balancer, whose least-connections
choice (HAProxy ``balance leastconn``, the deploy manifests' recommendation) takes them to the emptiest
replica. Each round moves at most a quarter of the replica's agents, so a fleet moves in steps, never
all at once, and a difference of a tenth of the fair share (at least one) is left alone: a fleet that
is balanced stays where it is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

# Of its own agents, at most this fraction leaves a replica in one round.
MAX_SHED_FRACTION = 0.25
# A replica this much above its fair share (relative; at least one agent) is left alone.
TOLERANCE = 0.1


def fair_share(loads: Mapping[str, int]) -> int:
    """Sessions per live replica when spread evenly (rounded up)."""
    return math.ceil(sum(loads.values()) / len(loads)) if loads else 0


def to_shed(mine: int, loads: Mapping[str, int]) -> int:
    """How many of its ``mine`` sessions a replica sends away, given every live replica's sessions
    (``loads``, including its own)."""
    if mine <= 0 or len(loads) < 2:
        return 0
    fair = fair_share(loads)
    excess = mine - fair
    if excess <= max(1, math.floor(fair * TOLERANCE)):
        return 0
    return min(excess, max(1, math.ceil(mine * MAX_SHED_FRACTION)))
