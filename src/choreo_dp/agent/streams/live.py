"""``live`` streams: the app's children and pods as they are now, like ``kubectl get all -l
choreo.dev/app=X`` with the essentials of ``describe``; one stream.data, then done.

One object per child or pod: ``{kind, name, ready, restarts, age, status, reason, node}``;
``ready`` is ``"ready/wanted"`` where that means something (pods, Deployments, Jobs), else null.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from choreo_dp.agent.streams.manager import StreamContext
from choreo_dp.agent.streams.pods import age_seconds, app_children, app_pods

# ReplicaSets are the Deployment's business; listing each would be noise.
HIDDEN_KINDS = frozenset({"ReplicaSet"})


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return None


def pod_row(pod: dict[str, Any]) -> dict[str, Any]:
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    ready = sum(1 for c in statuses if c.get("ready"))
    reason = None
    for c in [*(status.get("initContainerStatuses") or []), *statuses]:
        state = c.get("state") or {}
        waiting, terminated = state.get("waiting"), state.get("terminated")
        if waiting and waiting.get("reason"):
            reason = waiting["reason"]
            break
        if terminated and terminated.get("reason") and terminated.get("reason") != "Completed":
            reason = terminated["reason"]
            break
    phase = status.get("phase") or "Unknown"
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        phase = "Terminating"
    return {
        "ready": f"{ready}/{len(spec.get('containers') or [])}",
        "restarts": sum(int(c.get("restartCount") or 0) for c in statuses),
        "status": reason if reason in ("CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull") else phase,
        "reason": reason or status.get("reason"),
        "node": spec.get("nodeName"),
    }


def child_row(obj: dict[str, Any]) -> dict[str, Any]:
    kind = obj.get("kind")
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    row: dict[str, Any] = {"ready": None, "restarts": None, "status": None, "reason": None, "node": None}
    if kind == "Deployment":
        row["ready"] = f"{status.get('readyReplicas') or 0}/{spec.get('replicas', 1)}"
        failing = next(
            (
                c
                for c in (status.get("conditions") or [])
                if c.get("status") != "True" or c.get("type") == "ReplicaFailure"
            ),
            None,
        )
        available = _condition(obj, "Available")
        row["status"] = "Available" if available and available.get("status") == "True" else "Progressing"
        if failing is not None:
            row["reason"] = failing.get("reason")
    elif kind == "Job":
        row["ready"] = f"{status.get('succeeded') or 0}/{spec.get('completions', 1)}"
        if _condition(obj, "Complete") and (_condition(obj, "Complete") or {}).get("status") == "True":
            row["status"] = "Complete"
        elif (failed := _condition(obj, "Failed")) and failed.get("status") == "True":
            row["status"], row["reason"] = "Failed", failed.get("reason")
        else:
            row["status"] = "Running" if status.get("active") else "Pending"
    elif kind == "CronJob":
        row["status"] = (
            "Suspended" if spec.get("suspend") else ("Active" if status.get("active") else "Scheduled")
        )
        row["reason"] = status.get("lastScheduleTime") and f"last scheduled {status['lastScheduleTime']}"
    elif kind == "HorizontalPodAutoscaler":
        row["ready"] = f"{status.get('currentReplicas') or 0}/{status.get('desiredReplicas') or 0}"
        active = _condition(obj, "ScalingActive")
        row["status"] = "Active" if active and active.get("status") == "True" else "Inactive"
        row["reason"] = active.get("reason") if active else None
    elif kind == "Service":
        row["status"] = spec.get("type", "ClusterIP")
    else:
        row["status"] = "Present"
    return row


async def stream_live(ctx: StreamContext) -> None:
    now = datetime.now(UTC)
    children = await app_children(ctx.kube, ctx.namespace, ctx.app)
    pods, _ = await app_pods(ctx.kube, ctx.namespace, ctx.app)
    rows: list[dict[str, Any]] = []
    for obj in children:
        if obj.get("kind") in HIDDEN_KINDS:
            continue
        rows.append(
            {
                "kind": obj.get("kind"),
                "name": obj["metadata"]["name"],
                "age": age_seconds(obj, now),
                **child_row(obj),
            }
        )
    for pod in pods:
        rows.append(
            {"kind": "Pod", "name": pod["metadata"]["name"], "age": age_seconds(pod, now), **pod_row(pod)}
        )
    await ctx.channel.objects(rows, always=True)
