"""One reconcile's worth of a canary rollout: observe, plan, render (issue 17).

For an app whose ``spec.rollout.strategy`` is Canary, the app reconciler renders through
:func:`render_app_with_rollout` instead of ``render_app``:

1. render the spec once without a rollout state, which names its pod template hash;
2. gather the :class:`~choreo_dp.render.rollout_plan.Observations` from the watch-fed cache (the
   live stable Deployment's template and hash, the canary's pods: ready, restarts) and, when
   ``analysis.httpGet`` is set, the HTTP check of the canary Service;
3. ``plan()`` the next ``status.rollout`` from the one the object holds (the whole state: an
   operator restart resumes from it), and render for that state.

The reconciler applies the manifests, writes the decided status with the app's status in one
write, then :func:`announce` posts the decision's Event. Nothing here needs the control plane.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from choreo_dp.api import ChoreoApp, Environment
from choreo_dp.api.rollout import ACTIVE_PHASES, RolloutStatus
from choreo_dp.api.vocabulary import TEMPLATE_HASH_ANNOTATION, TRACK_CANARY
from choreo_dp.kube import resources as R
from choreo_dp.operator.keys import AppKey
from choreo_dp.operator.reconcile import COMPONENT, ReconcileContext
from choreo_dp.operator.summaries import DeploymentSummary
from choreo_dp.render import render_app
from choreo_dp.render.app import AppRender
from choreo_dp.render.connections import ConnectionResolution
from choreo_dp.render.rollout import canary_replicas, http_check_url, is_canary
from choreo_dp.render.rollout_plan import Decision, HttpCheckResult, Observations, plan

log = logging.getLogger("choreo_dp.operator.rollout")

# Phases whose render keeps the stable Deployment on the template it runs (read back from it).
_KEEPS_STABLE = frozenset({"Progressing", "Paused", "Aborted"})


@dataclass(frozen=True)
class RolloutRender:
    rendered: AppRender
    # None for an app that is not canary-managed (render_app as always).
    decision: Decision | None
    # status.rollout to write: the decision's, with the Ingress approximation note in its message.
    status: RolloutStatus | None
    # The object holds a status.rollout its spec no longer asks for: clear it.
    stale: bool = False


async def render_app_with_rollout(
    ctx: ReconcileContext,
    key: AppKey,
    body: dict[str, Any],
    app: ChoreoApp,
    env: Environment,
    *,
    secrets_hash: str | None,
    connections: tuple[ConnectionResolution, ...],
) -> RolloutRender:
    """The app's manifests and, for a canary app, the rollout decision they were rendered for.

    Raises RenderError as ``render_app`` does (StableTemplateUnknown when a rollout is under way
    and the stable Deployment is gone).
    """
    current = current_status(body)
    first = render_app(app, env, ctx.caps, secrets_hash=secrets_hash, connections=connections)
    if not is_canary(app) or first.template_revision is None:
        ctx.rollout_probe.forget(key)
        return RolloutRender(first, None, None, stale=current is not None)
    stable = await _stable(ctx, key, current)
    obs = await observe(ctx, key, app, current, first.template_revision, stable)
    assert app.spec.rollout is not None  # is_canary
    decision = plan(app.spec.rollout, current, obs, ctx.rollout_probe.now())
    status = decision.status
    if status is None or status.phase not in ACTIVE_PHASES:
        ctx.rollout_probe.forget(key)
    if status is None or status.phase in ("Idle", "Completed"):
        return RolloutRender(first, decision, status)
    rendered = render_app(
        app,
        env,
        ctx.caps,
        secrets_hash=secrets_hash,
        connections=connections,
        rollout=status,
        stable_template=stable.template if stable is not None else None,
    )
    note = rendered.rollout_note
    if note is not None and status.phase in ACTIVE_PHASES and note not in (status.message or ""):
        status = status.model_copy(
            update={"message": f"{status.message}; {note}" if status.message else note}
        )
    return RolloutRender(rendered, decision, status)


async def announce(
    ctx: ReconcileContext, key: AppKey, body: dict[str, Any], decision: Decision | None
) -> None:
    """Post the decision's Event. A Warning goes through the recorder, which the reconciler also
    warns through about the Degraded app: one RolloutAborted Event, not two."""
    event = decision.event if decision is not None else None
    if event is None:
        return
    log.info("choreoapp %s/%s: %s: %s", key.namespace, key.name, event.reason, event.message)
    if event.type == "Warning":
        await ctx.recorder.warn(key, body, event.reason, event.message)
    else:
        await ctx.kube.post_event(body, "Normal", event.reason, event.message, COMPONENT)


def current_status(body: dict[str, Any]) -> RolloutStatus | None:
    raw = (body.get("status") or {}).get("rollout")
    if not isinstance(raw, dict):
        return None
    try:
        return RolloutStatus.model_validate(raw)
    except ValidationError:
        # Hand-edited into nonsense: start from what runs (the stable Deployment's hash).
        log.warning(
            "ignoring an invalid status.rollout of %s/%s",
            body["metadata"].get("namespace"),
            body["metadata"].get("name"),
        )
        return None


@dataclass(frozen=True)
class StableView:
    template_hash: str | None
    template: dict[str, Any] | None
    summary: DeploymentSummary | None


async def _stable(ctx: ReconcileContext, key: AppKey, current: RolloutStatus | None) -> StableView | None:
    summary = ctx.cache.deployment(key)
    expected = current.stable_revision if current is not None else None
    if summary is not None and summary.template is not None:
        if expected is None or summary.template_hash == expected:
            return StableView(summary.template_hash, summary.template, summary)
    elif current is None or current.phase not in _KEEPS_STABLE:
        # Nothing to keep: the stable side takes the spec (the first switch to Canary included).
        return StableView(None, None, summary) if summary is not None else None
    # No template in the cache (just after a restart, before the Deployment watch delivered it),
    # or an older one than the status names (our last apply's event not seen yet): ask, rather
    # than keep a stable side we do not know, or roll it back.
    live = await ctx.kube.get(R.DEPLOYMENTS, key.name, key.namespace)
    if live is None:
        return None
    annotations = (live.get("metadata") or {}).get("annotations") or {}
    return StableView(
        annotations.get(TEMPLATE_HASH_ANNOTATION), (live.get("spec") or {}).get("template"), summary
    )


async def observe(
    ctx: ReconcileContext,
    key: AppKey,
    app: ChoreoApp,
    current: RolloutStatus | None,
    desired_revision: str,
    stable: StableView | None,
) -> Observations:
    """What the planner needs, from the cache (and the canary's HTTP check when one is due)."""
    active = current is not None and current.phase in ACTIVE_PHASES
    pods = [p for p in ctx.cache.pods(key) if p.track == TRACK_CANARY and not p.terminating]
    total = canary_replicas(
        _total_replicas(app),
        current.weight if current is not None and active else 0,
        weighted_routes=ctx.caps.gateway_api,
    )
    http = None
    rollout = app.spec.rollout
    checking = current is not None and current.phase in ("Progressing", "Paused")
    if rollout is not None and rollout.gate.http_get is not None and checking:
        assert current is not None
        if current.canary_revision == desired_revision:
            http = await _http_check(ctx, key, app, desired_revision)
    return Observations(
        desired_revision=desired_revision,
        canary_ready=min(sum(1 for p in pods if p.ready), total),
        canary_total=total,
        canary_restarts=sum(p.restarts for p in pods),
        http=http,
        stable_revision=stable.template_hash if stable is not None else None,
        stable_updated=_stable_updated(ctx, key, current, stable),
    )


async def _http_check(ctx: ReconcileContext, key: AppKey, app: ChoreoApp, revision: str) -> HttpCheckResult:
    assert app.spec.rollout is not None
    url = http_check_url(app)
    if url is None:
        # Not silently "no result yet" until the gate aborts: say what is missing.
        return HttpCheckResult(
            False, "no port to check: set analysis.httpGet.port or give the app an endpoint"
        )
    return await ctx.rollout_probe.check(key, url, revision, app.spec.rollout.gate.interval_delta)


def _stable_updated(
    ctx: ReconcileContext, key: AppKey, current: RolloutStatus | None, stable: StableView | None
) -> bool:
    """The stable Deployment runs the canary's template on every replica, all ready (ends Promoting)."""
    dep = stable.summary if stable is not None else None
    if dep is None or current is None or current.canary_revision is None:
        return False
    if dep.template_hash != current.canary_revision:
        return False
    rolled = dep.observed_generation >= max(dep.generation, ctx.record.applied_generation.get(key, 0))
    desired = dep.spec_replicas
    return (
        rolled
        and dep.updated_replicas >= desired
        and dep.ready_replicas >= desired
        and dep.replicas == dep.updated_replicas
    )


def _total_replicas(app: ChoreoApp) -> int:
    # As choreo_dp.render.rollout counts them for the canary's share (HPA: its floor).
    if app.spec.suspend:
        return 0
    if app.spec.autoscaling is not None:
        return app.spec.autoscaling.min_replicas
    return app.spec.replicas
