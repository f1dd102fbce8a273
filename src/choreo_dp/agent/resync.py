"""The agent's resync safety planner: which of its objects a finished resync deletes and which it holds.

Only the agent decides what it deletes, so this lives with the agent and not in the wire module the
control plane shares (:mod:`choreo_wire.protocol` holds what both ends must compute identically).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from choreo_wire import protocol as P

# The fraction of apps one resync may delete before every deletion of that resync is held.
MASS_DELETION_FRACTION = 0.2


@dataclass(frozen=True)
class LocalItem:
    """One object the agent manages: the kind, stamped spec hash, and whether it is held as orphan."""

    kind: P.Kind
    spec_hash: str
    orphaned: bool = False


HoldReason = Literal["epoch_changed", "revision_regressed", "control_plane_empty", "mass_deletion"]


@dataclass(frozen=True)
class ResyncPlan:
    deletes: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    hold_reason: HoldReason | None = None


def plan_resync(
    local: Mapping[str, LocalItem],
    remote_keys: set[str],
    *,
    compared_buckets: Iterable[int] | None,
    buckets: int,
    agent_epoch: str | None,
    agent_revision: int,
    cp_epoch: str,
    cp_revision: int,
    cp_total: int,
    mass_fraction: float = MASS_DELETION_FRACTION,
) -> ResyncPlan:
    """Which of the agent's objects a finished resync deletes and which it holds as orphans.

    Candidates are the agent's non-orphaned objects (in the compared buckets) the control plane no
    longer has. All of them are held when the control plane is in another epoch (its store was lost
    or replaced), is behind the agent (restored from an older backup), or is empty; and when they
    would remove more than ``mass_fraction`` of the agent's apps (or environments). Objects already
    held stay held: only an explicit ``desired.delete`` removes them.
    """
    keep = None if compared_buckets is None else set(compared_buckets)
    candidates = sorted(
        key
        for key, item in local.items()
        if not item.orphaned
        and key not in remote_keys
        and (keep is None or P.bucket_of(key, buckets) in keep)
    )
    if not candidates:
        return ResyncPlan()
    reason: HoldReason | None = None
    if agent_epoch != cp_epoch:
        # a fresh agent (epoch None) holding labelled objects also counts: they predate us.
        reason = "epoch_changed"
    elif cp_revision < agent_revision:
        reason = "revision_regressed"
    elif cp_total == 0:
        reason = "control_plane_empty"
    else:
        for kind in ("ChoreoApp", "Environment"):
            managed = sum(1 for item in local.values() if item.kind == kind and not item.orphaned)
            deleting = sum(1 for key in candidates if local[key].kind == kind)
            if managed and deleting > mass_fraction * managed:
                reason = "mass_deletion"
                break
    if reason is not None:
        return ResyncPlan(orphans=candidates, hold_reason=reason)
    return ResyncPlan(deletes=candidates)
