"""Apply desired children with server-side apply, skip what is already in place, prune the rest."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

from choreo_dp.kube import ApiError
from choreo_dp.kube import resources as R
from choreo_dp.operator.child_errors import ChildWriteError
from choreo_dp.operator.drift import contains
from choreo_dp.operator.keys import ChildKey, ObjKey
from choreo_dp.operator.metrics import APPLIES, PRUNES
from choreo_dp.operator.reconcile import ReconcileContext
from choreo_dp.operator.state import TrackedChild, canonical, controller_owner_uid, sync_basis
from choreo_dp.render.labels import FIELD_MANAGER


async def apply_children(
    ctx: ReconcileContext, owner: ObjKey, manifests: Iterable[dict[str, Any]], *, force: bool = False
) -> dict[ChildKey, dict[str, Any]]:
    """Apply each manifest unless the same manifest was applied and the live object still matches.

    Returns the API's answer for each child actually applied. A refusal raises
    :class:`ChildWriteError` naming the child (the ones before it stay applied and recorded).
    """
    record = ctx.record
    applied: dict[ChildKey, dict[str, Any]] = {}
    keys: set[ChildKey] = set()
    for manifest in manifests:
        key = ChildKey.of(manifest)
        keys.add(key)
        text = canonical(manifest)
        if not force and record.desired.get(key) == text and ctx.cache.in_sync(key, owner):
            continue
        try:
            live = await ctx.kube.apply(manifest, FIELD_MANAGER, force=True)
        except ApiError as exc:
            raise ChildWriteError("apply", key, exc) from exc
        APPLIES.labels(key.kind).inc()
        tracked = TrackedChild(
            controller_owner_uid(live), contains(live, manifest), sync_basis(key.kind, text, live)
        )
        record.applied(owner, key, text, tracked)
        applied[key] = live
    record.want(owner, keys)
    return applied


async def prune_children(
    ctx: ReconcileContext, owner: ObjKey, owner_uid: str, keep: Collection[ChildKey], kinds: Collection[str]
) -> list[ChildKey]:
    """Delete live children of ``owner`` (by label) that it controls (by ownerReference) but no longer wants."""
    pruned = []
    for key, tracked in ctx.cache.children(owner).items():
        if key in keep or key.kind not in kinds or tracked.owner_uid != owner_uid:
            continue
        try:
            await ctx.kube.delete(R.for_kind(key.api_version, key.kind), key.name, key.namespace or None)
        except ApiError as exc:
            raise ChildWriteError("delete", key, exc) from exc
        PRUNES.labels(key.kind).inc()
        ctx.record.pruned(owner, key)
        pruned.append(key)
    return pruned
