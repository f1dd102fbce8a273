"""Event filters, named like controller-runtime's ``pkg/predicate``: which watch events are worth a reconcile.

Each predicate is a pure function of what the cache held before the event and what the event
brings; the controller's watch handlers enqueue a key only when one says so. Filtering is an
optimisation, never a source of truth: the periodic resync reconciles everything regardless.
"""

from __future__ import annotations

from typing import Any

from choreo_dp.operator.state import TrackedChild, canonical
from choreo_dp.operator.summaries import DeploymentSummary, PodSummary


def trigger_fingerprint(body: dict[str, Any]) -> tuple[Any, ...]:
    """What makes a custom resource worth reconciling: not our own status writes."""
    meta = body.get("metadata") or {}
    return (
        meta.get("uid"),
        meta.get("generation"),
        canonical(meta.get("annotations") or {}),
        canonical(meta.get("labels") or {}),
        meta.get("deletionTimestamp"),
        tuple(meta.get("finalizers") or ()),
    )


def generation_or_metadata_changed(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """controller-runtime's GenerationChanged, AnnotationChanged and LabelChanged predicates in one,
    plus deletion and finalizers: true unless only the status (or nothing) changed.

    A status-only event is our own status write coming back (or a kubectl edit of the status,
    which the resync repairs); reconciling on it would loop."""
    return old is None or trigger_fingerprint(old) != trigger_fingerprint(new)


def deployment_status_changed(
    old: DeploymentSummary | None, new: DeploymentSummary | None, tracked: TrackedChild | None
) -> bool:
    """A Deployment event is worth a reconcile of its app when it moved a fact the app's status
    reads (``new`` None: the Deployment is gone), or the Deployment is not (or no longer) in sync
    with what we applied (a repair).

    Its status changes with every replica that comes and goes: during a rollout most events move
    nothing the app's status shows, and those are dropped."""
    return old != new or tracked is None or not tracked.in_sync


def pod_changed(old: PodSummary | None, new: PodSummary | None) -> bool:
    """A pod event is worth a reconcile of its app when it moved what the app's status reads of it."""
    return old != new


def child_needs_repair(tracked: TrackedChild | None) -> bool:
    """Any other child: reconcile its owner when it is gone, or edited, or not (or no longer) desired."""
    return tracked is None or not tracked.in_sync


def connection_target_fingerprint(body: dict[str, Any] | None) -> tuple[Any, ...] | None:
    """What a caller reads of an app it connects to: whether it is there (and not being deleted),
    its environment and project, and its endpoints."""
    if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
        return None
    spec = body.get("spec") or {}
    return (
        spec.get("environment"),
        spec.get("project"),
        canonical({"endpoints": spec.get("endpoints") or []}),
    )


def connection_target_changed(old: dict[str, Any] | None, new: dict[str, Any] | None) -> bool:
    """An app event is worth a reconcile of the apps that connect to it (``None``: absent or gone)
    when it moved what they resolve against; its image, replicas or status do not."""
    return connection_target_fingerprint(old) != connection_target_fingerprint(new)
