"""The pods and children of an app, as the streams see them (one label, from the vocabulary)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from choreo_dp.agent.streams.channel import StreamStop
from choreo_dp.api.vocabulary import APP_LABEL
from choreo_dp.kube import ApiError, KubeClient
from choreo_dp.kube import resources as R
from choreo_dp.kube.resources import Resource

log = logging.getLogger("choreo_dp.agent.streams")

# What the operator renders for an app (render/app.py) and what those make (ReplicaSets of the
# Deployment, Jobs of the CronJob, which carry the app's labels too). A kind the cluster does not
# serve or the agent may not list is left out, not an error.
CHILD_KINDS: tuple[Resource, ...] = (
    R.DEPLOYMENTS,
    R.REPLICASETS,
    R.CRONJOBS,
    R.JOBS,
    R.SERVICES,
    R.HPAS,
    R.PDBS,
    R.INGRESSES,
    R.HTTPROUTES,
    R.NETWORKPOLICIES,  # the ingress openings of the app's connections
)


def selector(app: str) -> dict[str, str]:
    return {APP_LABEL: app}


def created(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("creationTimestamp") or "")


async def app_pods(
    kube: KubeClient, namespace: str, app: str, pod: str | None = None
) -> tuple[list[dict[str, Any]], str]:
    """The app's pods, oldest first, and the list's resourceVersion; only ``pod`` when named (it
    must carry the app's label: a stream never reads a pod of another app)."""
    if pod is not None:
        obj = await kube.get(R.PODS, pod, namespace)
        if obj is None:
            raise StreamStop("not_found", f"no pod {pod} in {namespace}")
        if ((obj.get("metadata") or {}).get("labels") or {}).get(APP_LABEL) != app:
            raise StreamStop("forbidden", f"pod {pod} is not a pod of app {app}")
        return [obj], str(obj["metadata"].get("resourceVersion", ""))
    items, rv = await kube.list(R.PODS, namespace, label_selector=selector(app))
    return sorted(items, key=lambda p: (created(p), p["metadata"]["name"])), rv


async def app_children(kube: KubeClient, namespace: str, app: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for res in CHILD_KINDS:
        try:
            items, _ = await kube.list(res, namespace, label_selector=selector(app))
        except ApiError as exc:
            if exc.status in (403, 404):
                log.debug("streams: cannot list %s in %s: %s", res.plural, namespace, exc)
                continue
            raise
        out.extend(items)
    return out


def age_seconds(obj: dict[str, Any], now: datetime | None = None) -> int | None:
    stamp = created(obj)
    if not stamp:
        return None
    try:
        at = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return max(0, int(((now or datetime.now(UTC)) - at).total_seconds()))
