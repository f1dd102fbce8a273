"""Say what a reconcile changed: one info line (and the same fields in JSON logs), nothing for a no-op.

A child counts as created when the cache did not show it before the apply, as updated when it was
shown out of sync or its desired manifest changed; a forced re-apply of a child already in sync
(the periodic resync) changed nothing and is not reported.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from choreo_dp.operator.keys import ChildKey, ObjKey
from choreo_dp.operator.reconcile import ReconcileContext


def _name(key: ChildKey) -> str:
    return f"{key.kind}/{key.name}"


@dataclass(frozen=True)
class Before:
    """What the owner's children looked like before the reconcile wrote anything."""

    in_sync: Mapping[ChildKey, bool]
    desired: Mapping[ChildKey, str | None]

    @classmethod
    def of(cls, ctx: ReconcileContext, owner: ObjKey) -> Before:
        children = ctx.cache.children(owner)
        return cls(
            {k: t.in_sync for k, t in children.items()},
            {k: ctx.record.desired.get(k) for k in children},
        )


@dataclass
class Changes:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    def note_applied(self, ctx: ReconcileContext, before: Before, applied: Collection[ChildKey]) -> None:
        for key in sorted(applied):
            if key not in before.in_sync:
                self.created.append(_name(key))
            elif not before.in_sync[key] or before.desired.get(key) != ctx.record.desired.get(key):
                self.updated.append(_name(key))

    def note_deleted(self, deleted: Collection[ChildKey]) -> None:
        self.deleted.extend(_name(k) for k in sorted(deleted))

    def __bool__(self) -> bool:
        return bool(self.created or self.updated or self.deleted)


def report(
    logger: logging.Logger,
    kind: str,
    key: ObjKey,
    changes: Changes,
    phase_before: str | None,
    phase_after: str | None,
    reason: str | None = None,
) -> None:
    """Log one line when the reconcile of ``kind`` ``key`` changed children or the phase."""
    phase_moved = phase_before != phase_after
    if not changes and not phase_moved:
        return
    obj = "/".join(key)
    parts = []
    for verb, names in (
        ("created", changes.created),
        ("updated", changes.updated),
        ("deleted", changes.deleted),
    ):
        if names:
            parts.append(f"{verb} {', '.join(names)}")
    if phase_moved:
        because = f" ({reason})" if reason else ""
        parts.append(f"phase {phase_before or '-'} -> {phase_after or '-'}{because}")
    logger.info(
        "%s %s: %s",
        kind,
        obj,
        "; ".join(parts),
        extra={
            "object_kind": kind,
            "object": obj,
            "children_created": ",".join(changes.created),
            "children_updated": ",".join(changes.updated),
            "children_deleted": ",".join(changes.deleted),
            "phase_before": phase_before,
            "phase": phase_after,
            "reason": reason,
        },
    )
