"""Reconcile a DataPlane: mark it not connected once its agent's heartbeat is older than the bound.

Level-based, with no loop of its own: every DataPlane event (each renewal) is a reconcile, which
answers ``requeue_after`` the time left; a reconcile that finds the heartbeat expired writes
``connected: false``, the ``Connected`` condition False (``HeartbeatExpired``) and ``Ready``
Unknown. The agent writes the same status, so the write is a JSON merge patch conditional on the
resourceVersion the decision was made on: a 409 means the agent wrote meanwhile (a renewal,
perhaps), and the object is read again and judged again.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from choreo_dp.api import Condition
from choreo_dp.kube import ApiError
from choreo_dp.kube import resources as R
from choreo_dp.operator.heartbeat import Verdict, judge
from choreo_dp.operator.keys import DataPlaneKey
from choreo_dp.operator.reconcile import DONE, ReconcileContext, Result

log = logging.getLogger("choreo_dp.operator.dataplane")

HEARTBEAT_EXPIRED = "HeartbeatExpired"
# Reads and judgements in a row lost to the agent's own writes before backing off (as an error).
CONFLICT_ATTEMPTS = 3
# Requeue a little after the bound passes, not on it: a renewal landing on the bound is not a death.
SLACK_SECONDS = 0.5


def _put(conditions: list[Any], new: Condition) -> list[Any]:
    """``conditions`` (raw: fields another writer knows and we do not are kept) with ``new`` set."""
    fresh = new.to_k8s()
    out: list[Any] = []
    for c in conditions:
        if isinstance(c, dict) and c.get("type") == new.type:
            if c.get("status") == fresh["status"] and c.get("lastTransitionTime"):
                fresh["lastTransitionTime"] = c["lastTransitionTime"]
            continue
        out.append(c)
    return [*out, fresh]


def expiry_patch(body: dict[str, Any], verdict: Verdict) -> dict[str, Any]:
    meta = body.get("metadata") or {}
    generation = meta.get("generation")
    conditions = list((body.get("status") or {}).get("conditions") or [])
    for type_, status in (("Connected", "False"), ("Ready", "Unknown")):
        conditions = _put(
            conditions,
            Condition(
                type=type_,
                status=status,
                reason=HEARTBEAT_EXPIRED,
                message=verdict.message,
                observed_generation=generation if isinstance(generation, int) else None,
            ),
        )
    return {
        # A precondition: a write of the agent's since our read makes this one a 409.
        "metadata": {"resourceVersion": meta.get("resourceVersion")},
        "status": {"connected": False, "conditions": conditions},
    }


async def reconcile(ctx: ReconcileContext, key: DataPlaneKey) -> Result:
    body = ctx.cache.dataplane(key.name)
    for _ in range(CONFLICT_ATTEMPTS):
        if body is None:
            return DONE
        verdict = judge(
            body.get("status") or {},
            ctx.cache.heartbeat(key.name),
            time.monotonic(),
            time.time(),
            ctx.config.dataplane_heartbeat_bound_seconds,
        )
        if verdict is None:
            return DONE
        if not verdict.expired:
            ctx.recorder.clear(key)
            return Result(requeue_after=verdict.remaining + SLACK_SECONDS)
        try:
            await ctx.kube.patch(
                R.DATAPLANES, key.name, expiry_patch(body, verdict), None, "merge", subresource="status"
            )
        except ApiError as exc:
            if not exc.conflict:
                raise
            body = await ctx.kube.get(R.DATAPLANES, key.name)
            continue
        log.warning(
            "dataplane %s: %s; connected true -> false",
            key.name,
            verdict.message,
            extra={
                "object_kind": "dataplane",
                "object": key.name,
                "reason": HEARTBEAT_EXPIRED,
                "last_heartbeat": verdict.last,
                "heartbeat_bound_seconds": verdict.bound,
            },
        )
        await ctx.recorder.warn(key, body, HEARTBEAT_EXPIRED, verdict.message)
        return DONE
    raise ApiError(
        409, "Conflict", f"dataplane {key.name}: status kept changing under {CONFLICT_ATTEMPTS} reads"
    )
