"""Desired objects as the REST API shows and writes them (shared by the environment, app and
promotion routes)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from choreo_cp import insync, reports
from choreo_cp.api.deps import known_dataplane
from choreo_cp.api.http import body_error
from choreo_cp.context import ControlPlane
from choreo_cp.store import (
    KIND_APP,
    KIND_ENVIRONMENT,
    Dataplane,
    Kind,
    ObjectReport,
    StatusRecord,
    StoreError,
    WriteResult,
    object_key,
)
from choreo_cp.store.history import HistoryNote
from choreo_cp.tunnel import FRAME_MARGIN_BYTES, MAX_OBJECT_FRAME_BYTES, put_frame_bytes
from choreo_dp.api.images import image_refusal
from choreo_wire.protocol import MAX_FRAME_BYTES


async def sync_verdict(cp: ControlPlane, dp: Dataplane) -> insync.SyncVerdict:
    """In sync = acknowledged the newest revision *and* the agent's inventory digest equals the
    desired digest at it (the digest is read from the store only once per revision)."""
    desired = None
    inv = dp.inventory
    if inv is not None and inv.revision == dp.revision:
        desired = await cp.digests.at(dp.id, dp.epoch, dp.revision)
    return insync.verdict(dp, desired)


async def dataplane_view(cp: ControlPlane, dp: Dataplane) -> dict[str, Any]:
    session = cp.hub.get(dp.id)
    sync = await sync_verdict(cp, dp)
    now = dt.datetime.now(dt.UTC)
    age = insync.age_seconds(dp.last_heartbeat, now)
    # A socket can outlive its agent (a kill -9 behind a NAT that never sends a RST): past the
    # dead-link bound without a heartbeat the data plane is not connected, whatever the socket says.
    # A session just opened counts from its start until its first heartbeat is recorded.
    since_connect = insync.age_seconds(dp.last_connected, now)
    fresh = [a for a in (age, since_connect if session is not None else None) if a is not None]
    alive = bool(fresh) and min(fresh) <= cp.tunnel.dead_link_after
    inv = dp.inventory
    agent = dict(dp.agent)
    orphans = agent.pop("orphans", None)
    orphaned = agent.pop("orphanedKeys", None) or []
    if not isinstance(orphans, int) or not 0 <= orphans <= reports.MAX_INVENTORY_ITEMS:
        orphans = None  # a record from before reports were validated
    reason = agent.get("orphanReason")
    agent = {"orphanReason": reason} if isinstance(reason, str) and len(reason) <= 64 else {}
    return {
        "id": dp.id,
        "epoch": dp.epoch,
        "revision": dp.revision,
        "log_horizon": dp.horizon,
        "created_at": dp.created_at,
        "connected": session is not None and alive,
        "session": None
        if session is None
        else {"id": session.session_id, "since": session.started_at, "remote": session.remote},
        "last_heartbeat": dp.last_heartbeat,
        "last_connected": dp.last_connected,
        "last_disconnected": dp.last_disconnected,
        "applied_revision": dp.applied_revision,
        "applied_epoch": dp.applied_epoch,
        "last_heartbeat_age_seconds": None if age is None else round(age, 3),
        "in_sync": sync.in_sync,
        "sync_reason": sync.reason,
        "desired_digest": sync.desired_digest,
        "refused": list(sync.refused),
        "inventory": None
        if inv is None
        else {"count": inv.count, "digest": inv.digest, "revision": inv.revision, "reported_at": inv.at},
        "resync_required": dp.resync_required,
        "resync_requests": dp.resync_requests,
        "resync_requested_at": dp.resync_requested_at,
        "orphans": orphans,
        "orphaned_keys": [str(k)[:200] for k in orphaned[:100]] if isinstance(orphaned, list) else [],
        "objects": dp.objects,
        "agent": agent,
    }


def accepted(dp: str, kind: str, env: str, name: str, result: WriteResult) -> dict[str, Any]:
    return {
        "dataplane": dp,
        "kind": kind,
        "environment": env,
        "name": name,
        "revision": result.revision,
        "object_revision": result.object_revision,
        "spec_hash": result.spec_hash,
        "changed": result.changed,
        "removed": result.removed,
    }


MISSING_PHASE = "Missing"


def _ready_reason(status: dict[str, Any]) -> str | None:
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Ready":
            reason = condition.get("reason")
            return reason if isinstance(reason, str) else None
    return None


def observed(obj_revision: int, record: StatusRecord | None, status: dict[str, Any] | None) -> dict[str, Any]:
    """What the data plane last said it has: phase (``Missing`` when it reported the object absent,
    never its last Ready), reason, message, when it was observed, the revision the status describes
    (``status.revision``, stamped by the agent) and whether that is the desired one."""
    if record is not None and record.missing:
        return {
            "phase": MISSING_PHASE,
            "reason": MISSING_PHASE,
            "message": "the data plane reports the object missing from its cluster (deleted by another "
            "writer); its agent puts it back",
            "missing": True,
            "observed_at": record.observed_at or record.reported_at,
            "observed_revision": None,
            "stale": True,
        }
    if record is None or status is None:
        return {
            "phase": None,
            "reason": None,
            "message": None,
            "missing": False,
            "observed_at": None,
            "observed_revision": None,
            "stale": None,
        }
    revision = status.get("revision")
    return {
        "phase": status.get("phase"),
        "reason": _ready_reason(status),
        "message": status.get("message"),
        "missing": False,
        "observed_at": record.observed_at or record.reported_at,
        "observed_revision": revision,
        "stale": revision != obj_revision,
    }


def object_view(dp: Dataplane, report: ObjectReport) -> dict[str, Any]:
    obj, record, nack = report.object, report.status, report.nack
    status = None if record is None else reports.stored_status(obj.key, record.status)
    applied = (
        dp.applied_epoch == dp.epoch
        and dp.applied_revision is not None
        and dp.applied_revision >= obj.revision
    )
    return {
        "dataplane": dp.id,
        "kind": obj.kind,
        "environment": obj.environment,
        "name": obj.name,
        "spec": obj.spec,
        "spec_hash": obj.spec_hash,
        "revision": obj.revision,
        "updated_at": obj.updated_at,
        "applied": applied and (nack is None or nack.revision < obj.revision),
        "status": status,
        "status_reported_at": None if status is None or record is None else record.reported_at,
        **observed(obj.revision, record, status),
        "last_error": None
        if nack is None
        else {
            "revision": nack.revision,
            "code": nack.code,
            "message": nack.message,
            "retryable": nack.retryable,
            "at": nack.at,
        },
    }


async def put_object(
    cp: ControlPlane,
    dp: str,
    kind: Kind,
    env: str,
    name: str,
    spec: dict[str, Any],
    note: HistoryNote | None = None,
) -> dict[str, Any]:
    size = put_frame_bytes(kind, env, name, spec, cp.store.spec_hash(spec))
    if size > MAX_OBJECT_FRAME_BYTES:
        raise body_error(
            ("body", "spec"),
            f"the {kind} would travel to the data plane in a tunnel frame of {size} bytes; "
            f"the limit is {MAX_OBJECT_FRAME_BYTES} bytes (the tunnel's {MAX_FRAME_BYTES}-byte "
            f"frames less {FRAME_MARGIN_BYTES} bytes for the envelope): make the spec smaller",
            size,
        )

    def allowed_by(env_spec: dict[str, Any] | None) -> None:
        if env_spec is None:
            # 422, not 404: the request names a rule it breaks (an app lives in a defined Environment)
            raise body_error(
                ("body", "spec", "environment"),
                f"Environment {env!r} is not defined on dataplane {dp!r}: push the Environment before its apps",
                env,
            )
        image = spec.get("image")
        prefixes = (env_spec.get("registry") or {}).get("allowedPrefixes") or []
        refusal = image_refusal(image, prefixes) if isinstance(image, str) else "the app has no image"
        if refusal is not None:
            raise body_error(("body", "spec", "image"), f"{refusal} (Environment {env!r})", image)

    result = await cp.store.put_object(
        dp, kind, env, name, spec, check_environment=allowed_by if kind == KIND_APP else None, note=note
    )
    if result.changed:
        cp.metrics.changes.labels(kind, "put").inc()
        cp.hub.notify(dp)
    return accepted(dp, kind, env, name, result)


async def delete_object(cp: ControlPlane, dp: str, kind: Kind, env: str, name: str) -> dict[str, Any]:
    result = await cp.store.delete_object(dp, kind, env, name)
    cp.metrics.changes.labels(kind, "delete").inc(len(result.removed))
    cp.hub.notify(dp)
    return accepted(dp, kind, env, name, result)


async def get_object(cp: ControlPlane, dp: str, kind: Kind, env: str, name: str) -> dict[str, Any]:
    record = await known_dataplane(cp, dp)
    found = await cp.store.object_reports(dp, key=object_key(kind, env, name))
    if not found:
        what = "environment" if kind == KIND_ENVIRONMENT else f"app {name!r} in environment"
        raise StoreError("not_found", f"{what} {env!r} is not defined on dataplane {dp!r}")
    return object_view(record, found[0])


async def list_objects(cp: ControlPlane, dp: str, kind: Kind, env: str | None = None) -> dict[str, Any]:
    """Every object of a kind with its status and refusal: one query however many there are."""
    record = await known_dataplane(cp, dp)
    found = await cp.store.object_reports(dp, kind=kind, environment=env)
    return {"items": [object_view(record, r) for r in found]}
