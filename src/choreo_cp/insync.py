"""Is a data plane in sync, and when to ask it for a resync (anti-entropy, issue 14).

*In sync* means the data plane has what the control plane desires, not only that it acknowledged
the revision: the agent's heartbeats carry an inventory summary (count and
:func:`protocol.inventory_digest` of key -> spec hash, hashed from the specs in its cluster, at its
persisted revision), and the control plane compares that digest with the digest of its own desired
state at the same revision. Keys the agent refused for good (non-retryable nacks) are still desired,
so they keep a data plane out of sync, and the verdict names them.

The desired digest is computed once per revision and cached (one entry per data plane): a heartbeat
at an unchanged revision costs one dictionary lookup and two string comparisons.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

from choreo_cp.store import Dataplane, DesiredState, Store
from choreo_wire import protocol as p

# How many refused keys a verdict names (the rest are counted).
REFUSED_NAMED = 5


@dataclass(frozen=True)
class DesiredDigest:
    """The digest of a data plane's desired state at one revision, with and without refused keys."""

    epoch: str
    revision: int
    count: int
    digest: str
    refused: dict[str, str]
    digest_without_refused: str


def desired_digest(state: DesiredState) -> DesiredDigest:
    digest = p.inventory_digest(state.hashes)
    without = digest
    if state.refused:
        without = p.inventory_digest({k: h for k, h in state.hashes.items() if k not in state.refused})
    return DesiredDigest(state.epoch, state.revision, len(state.hashes), digest, dict(state.refused), without)


class DesiredDigests:
    """The newest desired digest per data plane, computed from the store on first use at a revision.

    Bounded by the number of registered data planes; :meth:`invalidate` after anything that changes
    the refused keys (a nack) or removes the data plane.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._cache: dict[str, DesiredDigest] = {}

    def cached(self, dp: str, epoch: str, revision: int) -> DesiredDigest | None:
        entry = self._cache.get(dp)
        if entry is not None and entry.epoch == epoch and entry.revision == revision:
            return entry
        return None

    async def at(self, dp: str, epoch: str, revision: int) -> DesiredDigest | None:
        """The digest at exactly (epoch, revision), or None when the store has moved past it."""
        found = self.cached(dp, epoch, revision)
        if found is not None:
            return found
        entry = desired_digest(await self._store.desired_state(dp))
        self._cache[dp] = entry
        return entry if (entry.epoch, entry.revision) == (epoch, revision) else None

    def invalidate(self, dp: str) -> None:
        self._cache.pop(dp, None)


@dataclass(frozen=True)
class SyncVerdict:
    in_sync: bool
    reason: str | None
    desired_digest: str | None = None
    refused: tuple[str, ...] = ()


def verdict(dp: Dataplane, desired: DesiredDigest | None) -> SyncVerdict:
    """Why ``dp`` is or is not in sync; ``desired`` is the digest at ``dp.revision`` (or None)."""
    refused = tuple(sorted(desired.refused)) if desired is not None else ()
    digest = desired.digest if desired is not None else None

    def out(reason: str) -> SyncVerdict:
        return SyncVerdict(False, reason, digest, refused)

    if dp.applied_epoch != dp.epoch or dp.applied_revision != dp.revision:
        if dp.applied_epoch is not None and dp.applied_epoch != dp.epoch:
            return out(
                f"the agent acknowledged epoch {dp.applied_epoch}, the desired state is epoch {dp.epoch}"
            )
        return out(f"the agent acknowledged revision {dp.applied_revision or 0} of {dp.revision}")
    inv = dp.inventory
    if inv is None:
        return out("the agent has not reported its inventory yet")
    if inv.revision != dp.revision:
        return out(
            f"the agent's inventory describes revision {inv.revision}, the desired state is {dp.revision}"
        )
    if desired is None:
        return out(f"the desired state moved past revision {dp.revision} meanwhile")
    if refused:
        named = ", ".join(f"{k} ({desired.refused[k]})" for k in refused[:REFUSED_NAMED])
        more = f" and {len(refused) - REFUSED_NAMED} more" if len(refused) > REFUSED_NAMED else ""
        return out(f"{len(refused)} desired object(s) refused by the data plane: {named}{more}")
    if inv.digest != desired.digest:
        pending = " (resync required)" if dp.resync_required else ""
        return out(
            f"the agent's inventory ({inv.count} objects) differs from the desired state "
            f"({desired.count} objects) at revision {dp.revision}{pending}"
        )
    return SyncVerdict(True, None, digest, refused)


Observation = Literal["match", "explained", "pending", "differs"]


class AntiEntropy:
    """One session's judgement of the agent's inventory summaries.

    ``differs`` only when two consecutive summaries, both at the control plane's unchanged current
    revision, differ from the desired digest even with the refused keys left out: a single
    differing summary may be a change the agent is still writing, and refused keys cannot be cured
    by a resync.
    """

    def __init__(self) -> None:
        self._differing_at: int | None = None

    def observe(
        self, summary: p.InventorySummary, cp_revision: int, desired: DesiredDigest | None
    ) -> Observation:
        if desired is None or summary.revision != cp_revision or desired.revision != cp_revision:
            self._differing_at = None
            return "pending"
        if summary.digest == desired.digest:
            self._differing_at = None
            return "match"
        if desired.refused and summary.digest == desired.digest_without_refused:
            self._differing_at = None
            return "explained"
        if self._differing_at == cp_revision:
            return "differs"
        self._differing_at = cp_revision
        return "pending"


def resync_allowed(
    requests: int, requested_at: str | None, now: dt.datetime, *, base: float, cap: float
) -> float:
    """Seconds until another anti-entropy resync may be requested (0: now).

    ``requests`` in a row so far: the first is immediate, then ``base`` doubling up to ``cap``, so a
    difference a resync cannot cure (an agent that keeps reporting another digest) costs one resync
    per ``cap`` at most instead of a reconnect loop.
    """
    if requests <= 0 or requested_at is None:
        return 0.0
    try:
        last = dt.datetime.fromisoformat(requested_at.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    wait = min(cap, base * 2.0 ** min(requests - 1, 32))
    return max(0.0, wait - (now - last).total_seconds())


def age_seconds(stamp: str | None, now: dt.datetime) -> float | None:
    """Seconds since an RFC 3339 timestamp of ours (None when absent or unreadable)."""
    if not stamp:
        return None
    try:
        then = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    if then.tzinfo is None:
        then = then.replace(tzinfo=dt.UTC)
    return max(0.0, (now - then).total_seconds())
