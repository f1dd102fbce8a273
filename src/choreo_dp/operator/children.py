"""Apply desired children with server-side apply, skip what is already in place, prune the rest."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING, Any

from choreo_dp.kube import resources as R
from choreo_dp.operator.drift import contains
from choreo_dp.operator.keys import ChildKey, ObjKey
from choreo_dp.operator.metrics import APPLIES, PRUNES
from choreo_dp.operator.state import TrackedChild, canonical, controller_owner_uid, sync_basis
from choreo_dp.render.labels import FIELD_MANAGER

if TYPE_CHECKING:
    from choreo_dp.operator.controller import Controller


async def apply_children(
    ctl: Controller, owner: ObjKey, manifests: Iterable[dict[str, Any]], *, force: bool = False
) -> dict[ChildKey, dict[str, Any]]:
    """Apply each manifest unless the same manifest was applied and the live object still matches.

    Returns the API's answer for each child actually applied.
    """
    state = ctl.state
    applied: dict[ChildKey, dict[str, Any]] = {}
    keys: set[ChildKey] = set()
    for manifest in manifests:
        key = ChildKey.of(manifest)
        keys.add(key)
        text = canonical(manifest)
        if not force and state.desired.get(key) == text and state.in_sync(key, owner):
            continue
        live = await ctl.kube.apply(manifest, FIELD_MANAGER, force=True)
        APPLIES.labels(key.kind).inc()
        state.desired[key] = text
        state.live[owner][key] = TrackedChild(
            controller_owner_uid(live), contains(live, manifest), sync_basis(key.kind, text, live)
        )
        applied[key] = live
    for stale in state.desired_by_owner.get(owner, set()) - keys:
        state.desired.pop(stale, None)
    state.desired_by_owner[owner] = keys
    return applied


async def prune_children(
    ctl: Controller, owner: ObjKey, owner_uid: str, keep: Collection[ChildKey], kinds: Collection[str]
) -> list[ChildKey]:
    """Delete live children of ``owner`` (by label) that it controls (by ownerReference) but no longer wants."""
    pruned = []
    for key, tracked in list(ctl.state.live.get(owner, {}).items()):
        if key in keep or key.kind not in kinds or tracked.owner_uid != owner_uid:
            continue
        await ctl.kube.delete(R.for_kind(key.api_version, key.kind), key.name, key.namespace or None)
        PRUNES.labels(key.kind).inc()
        ctl.state.live[owner].pop(key, None)
        pruned.append(key)
    return pruned
