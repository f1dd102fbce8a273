"""The canary layout of an app whose ``spec.rollout.strategy`` is Canary.

:func:`canary_layout` rewrites what :func:`choreo_dp.render.app.render_app` rendered for the
spec (its Deployment is the new version) according to the rollout state the planner decided
(:mod:`choreo_dp.render.rollout_plan`):

- no rollout in progress (no state, Idle, Completed): the one Deployment runs the spec, marked
  ``choreo.dev/track: stable`` and annotated with its template hash; nothing else changes;
- Progressing / Paused: the stable Deployment keeps the template it runs (read back from the
  cluster by the operator: the spec no longer has it), a ``<app>-canary`` Deployment runs the spec;
  the app's Service keeps selecting both tracks, ``<app>-stable`` / ``<app>-canary`` Services select
  one each; HTTPRoutes send ``weight`` percent to the canary's. Ingress cannot weight: the canary
  gets ``ceil(total*weight/100)`` of the replicas and the note says the split is approximate;
- Promoting: as above, but the stable Deployment already takes the spec's template;
- Aborted: stable keeps its template and all the traffic, the canary is scaled to zero.

Pure: the same arguments give the same manifests.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from choreo_dp.api import ChoreoApp
from choreo_dp.api.choreoapp import LONG_RUNNING_TYPES
from choreo_dp.api.rollout import ACTIVE_PHASES, RolloutStatus
from choreo_dp.api.vocabulary import (
    APP_LABEL,
    TEMPLATE_HASH_ANNOTATION,
    TRACK_CANARY,
    TRACK_LABEL,
    TRACK_STABLE,
    track_name,
)
from choreo_dp.render.capabilities import ClusterCapabilities
from choreo_dp.render.errors import RenderError


def is_canary(app: ChoreoApp) -> bool:
    """Whether the app is rendered in the canary layout (strategy Canary, long-running type)."""
    rollout = app.spec.rollout
    return rollout is not None and rollout.canary and app.spec.type in LONG_RUNNING_TYPES


def http_check_url(app: ChoreoApp) -> str | None:
    """The URL the canary's HTTP check requests (its per-track Service), or None when there is none.

    The port is ``analysis.httpGet.port``, else the app's first endpoint's; an app with neither
    has nothing to check over HTTP.
    """
    rollout = app.spec.rollout
    check = rollout.gate.http_get if rollout is not None and is_canary(app) else None
    if check is None:
        return None
    port = check.port or (app.spec.endpoints[0].port if app.spec.endpoints else None)
    if port is None:
        return None
    host = f"{track_name(app.metadata.name, TRACK_CANARY)}.{app.metadata.namespace}.svc.cluster.local"
    return f"http://{host}:{port}{check.path}"


def template_revision(template: dict[str, Any]) -> str:
    """The revision of a pod template as rendered from a spec: a hash of its canonical JSON."""
    text = json.dumps(template, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def canary_replicas(total: int, weight: int, *, weighted_routes: bool) -> int:
    """Replicas of the canary for ``weight`` percent when ``total`` replicas serve the app.

    With weighted routes the canary needs only capacity for its share, but at least one pod so the
    share has somewhere to go; without, the replica ratio *is* the traffic split.
    """
    if total <= 0 or weight <= 0:
        return 0
    share = math.ceil(total * weight / 100)
    return max(1, share) if weighted_routes else share


@dataclass(frozen=True)
class CanaryLayout:
    manifests: list[dict[str, Any]]
    # The spec's pod template hash (what status.rollout.canaryRevision names while it is the canary).
    revision: str
    # For status.rollout.message when the traffic split is only approximate (Ingress), else None.
    note: str | None = None


def canary_layout(
    manifests: list[dict[str, Any]],
    app: ChoreoApp,
    caps: ClusterCapabilities,
    state: RolloutStatus | None,
    stable_template: dict[str, Any] | None,
) -> CanaryLayout:
    """Rewrite the spec's manifests into the canary layout for ``state``.

    ``manifests`` is render_app's output for the spec. ``stable_template`` is the live stable
    Deployment's ``spec.template`` (needed in Progressing, Paused and Aborted; a RenderError with
    reason StableTemplateUnknown otherwise).
    """
    out = [copy.deepcopy(m) for m in manifests]
    stable = next(m for m in out if m["kind"] == "Deployment")
    new_template = copy.deepcopy(stable["spec"]["template"])
    new_revision = template_revision(new_template)
    phase = state.phase if state is not None else "Idle"
    _mark(stable, TRACK_STABLE)
    if phase not in ACTIVE_PHASES and phase != "Aborted":
        _annotate(stable, new_revision)
        return CanaryLayout(out, new_revision)
    assert state is not None
    weight = state.weight if phase in ACTIVE_PHASES else 0
    if phase == "Promoting":
        _annotate(stable, new_revision)
    else:
        if stable_template is None:
            raise RenderError(
                "StableTemplateUnknown",
                "a canary rollout is under way but the stable Deployment's pod template is not known",
            )
        stable["spec"]["template"] = _clean_template(stable_template)
        _mark(stable, TRACK_STABLE)
        _annotate(stable, state.stable_revision or "")
    total = _total_replicas(app)
    weighted = caps.gateway_api
    canary_count = canary_replicas(total, weight, weighted_routes=weighted)
    note = None
    if not weighted and phase in ACTIVE_PHASES and total > 0:
        stable_count = max(total - canary_count, 1)
        if app.spec.autoscaling is None:
            stable["spec"]["replicas"] = stable_count
        share = round(100 * canary_count / (canary_count + stable_count))
        note = (
            f"approximate split (Ingress cannot weight traffic): {canary_count} canary and "
            f"{stable_count} stable replicas, about {share}% to the canary for a {weight}% step"
        )
    canary = _canary_deployment(stable, new_template, app.metadata.name, canary_count)
    _annotate(canary, state.canary_revision or new_revision)
    out.insert(out.index(stable) + 1, canary)
    service = next(
        (m for m in out if m["kind"] == "Service" and m["metadata"]["name"] == app.metadata.name), None
    )
    if service is not None:
        at = out.index(service) + 1
        out[at:at] = [_track_service(service, app.metadata.name, t) for t in (TRACK_STABLE, TRACK_CANARY)]
    for route in (m for m in out if m["kind"] == "HTTPRoute"):
        _weigh(route, app.metadata.name, weight)
    return CanaryLayout(out, new_revision, note)


def _total_replicas(app: ChoreoApp) -> int:
    if app.spec.suspend:
        return 0
    if app.spec.autoscaling is not None:
        return app.spec.autoscaling.min_replicas
    return app.spec.replicas


def _mark(obj: dict[str, Any], track: str) -> None:
    obj["metadata"]["labels"] = {**obj["metadata"]["labels"], TRACK_LABEL: track}
    template_meta = obj["spec"]["template"].setdefault("metadata", {})
    template_meta["labels"] = {**template_meta.get("labels", {}), TRACK_LABEL: track}


def _annotate(obj: dict[str, Any], revision: str) -> None:
    obj["metadata"]["annotations"] = {
        **obj["metadata"].get("annotations", {}),
        TEMPLATE_HASH_ANNOTATION: revision,
    }


def _clean_template(live: dict[str, Any]) -> dict[str, Any]:
    template = copy.deepcopy(live)
    # The apiserver reports `creationTimestamp: null` in templates; applying it back is noise.
    template.get("metadata", {}).pop("creationTimestamp", None)
    return template


def _canary_deployment(
    stable: dict[str, Any], template: dict[str, Any], app_name: str, replicas: int
) -> dict[str, Any]:
    canary = copy.deepcopy(stable)
    canary["metadata"]["name"] = track_name(app_name, TRACK_CANARY)
    canary["metadata"].pop("annotations", None)
    canary["spec"]["template"] = copy.deepcopy(template)
    # A selector of its own (Deployment selectors are immutable, so it is fixed from the start).
    canary["spec"]["selector"] = {"matchLabels": {APP_LABEL: app_name, TRACK_LABEL: TRACK_CANARY}}
    spec = {"replicas": replicas, **{k: v for k, v in canary["spec"].items() if k != "replicas"}}
    canary["spec"] = spec
    _mark(canary, TRACK_CANARY)
    return canary


def _track_service(service: dict[str, Any], app_name: str, track: str) -> dict[str, Any]:
    out = copy.deepcopy(service)
    out["metadata"]["name"] = track_name(app_name, track)
    out["metadata"]["labels"] = {**out["metadata"]["labels"], TRACK_LABEL: track}
    out["spec"]["selector"] = {**out["spec"]["selector"], TRACK_LABEL: track}
    return out


def _weigh(route: dict[str, Any], app_name: str, weight: int) -> None:
    for rule in route["spec"].get("rules", []):
        refs = []
        for ref in rule.get("backendRefs", []):
            if ref.get("name") != app_name:
                refs.append(ref)
                continue
            refs.append({**ref, "name": track_name(app_name, TRACK_STABLE), "weight": 100 - weight})
            refs.append({**ref, "name": track_name(app_name, TRACK_CANARY), "weight": weight})
        rule["backendRefs"] = refs
