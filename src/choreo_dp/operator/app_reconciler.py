"""Reconcile one ChoreoApp: policy, secrets, render, apply, prune, status."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError

from choreo_dp.api import ChoreoApp, Condition, Environment
from choreo_dp.api.files import secret_files
from choreo_dp.api.vocabulary import ROLLOUT_ABORTED_REASON, TRACK_CANARY
from choreo_dp.kube import resources as R
from choreo_dp.operator.app_status import AppObservation, Refusal, compute_app_status
from choreo_dp.operator.changes import Before, Changes, report
from choreo_dp.operator.child_errors import ChildWriteError
from choreo_dp.operator.children import apply_children, prune_children
from choreo_dp.operator.connections import resolve_for, unresolved_message
from choreo_dp.operator.env_reconciler import check_app_namespace, with_namespace
from choreo_dp.operator.keys import AppKey, ChildKey
from choreo_dp.operator.reconcile import DONE, ReconcileContext, Result, TerminalError
from choreo_dp.operator.rollout_step import announce, render_app_with_rollout
from choreo_dp.operator.spec_only import without_status
from choreo_dp.operator.summaries import CronJobSummary, DeploymentSummary
from choreo_dp.render import PolicyViolation, RenderError, check_app_policy
from choreo_dp.render.endpoints import EndpointExposure
from choreo_dp.render.labels import REVISION_ANNOTATION
from choreo_dp.render.rollout_plan import Decision

log = logging.getLogger("choreo_dp.operator.app")

APP_CHILD_KINDS = frozenset(
    {
        "Deployment",
        "CronJob",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "HTTPRoute",
        "Ingress",
        "NetworkPolicy",  # the ingress openings of spec.connections, owned by the caller
        "ConfigMap",  # the plain files of spec.files
    }
)
# SecretsSynced reasons that mean "still trying, not broken".
_SECRETS_PENDING = frozenset({"Pending", "Syncing", "Waiting"})


def _validation_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    return f"invalid spec: {where}: {first.get('msg')}" if where else f"invalid spec: {first.get('msg')}"


def _revision(body: dict[str, Any]) -> int | None:
    raw = ((body.get("metadata") or {}).get("annotations") or {}).get(REVISION_ANNOTATION)
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


async def reconcile(ctx: ReconcileContext, key: AppKey) -> Result:
    body = ctx.cache.app(key)
    if body is None:
        # Gone: its children go with it through ownerReferences (the controller forgets the rest).
        if ctx.secrets is not None:
            await ctx.secrets.forget_app(key.namespace, key.name)
        return DONE
    meta = body["metadata"]
    if meta.get("deletionTimestamp"):
        return DONE
    obs = AppObservation(
        name=key.name,
        generation=int(meta.get("generation") or 0),
        revision=_revision(body),
        spec=None,
        previous_conditions=_previous_conditions(body),
    )
    changes = Changes()
    refused: ChildWriteError | None = None
    decision: Decision | None = None
    try:
        decision = await _reconcile_workload(ctx, key, body, obs, changes)
    except ChildWriteError as exc:
        # Recorded, not only raised: the work queue alone would log it and leave the last phase
        # (possibly Ready) standing on the app forever.
        refused = exc
        obs.refusal = Refusal("Degraded", "ApplyFailed", exc.summary)
    status = compute_app_status(obs)
    await _write_status(ctx, key, body, status)
    if obs.refusal is not None and obs.refusal.phase in ("Failed", "Degraded"):
        if not obs.refusal.already_reported:
            await ctx.recorder.warn(key, body, obs.refusal.reason, obs.refusal.message)
    elif (unresolved := unresolved_message(obs.connections)) is not None:
        await ctx.recorder.warn(key, body, "ConnectionUnresolved", unresolved)
    elif status["phase"] == "Degraded":
        aborted = obs.rollout is not None and obs.rollout.phase == "Aborted"
        reason = ROLLOUT_ABORTED_REASON if aborted else "Degraded"
        await ctx.recorder.warn(key, body, reason, str(status["message"]))
    else:
        ctx.recorder.clear(key)
    if refused is None:
        await announce(ctx, key, body, decision)
    previous = (body.get("status") or {}).get("phase")
    report(
        log, "choreoapp", key, changes, previous, status["phase"], obs.refusal.reason if obs.refusal else None
    )
    if refused is not None:
        if refused.terminal:
            # The same write would be refused again: wait for an event (a spec change) or the resync.
            raise TerminalError(refused.summary) from refused
        raise refused  # retried with backoff by the controller
    # A rollout's timers (pause, next check) come due without any event.
    timers = [decision.requeue_after] if decision is not None and decision.requeue_after is not None else []
    if status["phase"] in ("Progressing", "Degraded", "Pending"):
        timers.append(ctx.config.progressing_requeue_seconds)
    return Result(requeue_after=min(timers)) if timers else DONE


async def _reconcile_workload(
    ctx: ReconcileContext, key: AppKey, body: dict[str, Any], obs: AppObservation, changes: Changes
) -> Decision | None:
    """Apply what the app needs; returns the canary rollout's decision (None: no canary, or refused)."""
    try:
        app = ChoreoApp.model_validate(without_status(body))
    except ValidationError as exc:
        obs.refusal = Refusal("Failed", "InvalidSpec", _validation_message(exc))
        return None
    obs.spec = app.spec
    obs.deployment = ctx.cache.deployment(key)
    obs.cronjob = ctx.cache.cronjob(key)
    # The app's status is its stable side; a canary's pods are judged by the rollout's gate.
    obs.pods = [p for p in ctx.cache.pods(key) if p.track != TRACK_CANARY]
    env_body = ctx.cache.env(app.spec.environment)
    if env_body is None:
        obs.refusal = Refusal(
            "Pending", "EnvironmentNotFound", f"environment {app.spec.environment!r} not found"
        )
        return None
    try:
        env = Environment.model_validate(without_status(env_body))
    except ValidationError:
        obs.refusal = Refusal(
            "Pending", "EnvironmentInvalid", f"environment {app.spec.environment!r} is invalid"
        )
        return None
    if env_body["metadata"].get("deletionTimestamp"):
        obs.refusal = Refusal(
            "Pending", "EnvironmentTerminating", f"environment {env.metadata.name!r} is being deleted"
        )
        return None
    # Before anything is written (the Key Vault sync writes a Secret): the app's namespace must be
    # one its Environment owns, as the namespace's mark says, not merely the one it names.
    uid = str(env_body["metadata"].get("uid") or "")
    ns_problem = await check_app_namespace(ctx, env.metadata.name, uid, key.namespace)
    violation: PolicyViolation | None
    if ns_problem is not None and key.namespace == env.target_namespace:
        violation = ns_problem
    else:
        # In the namespace its Environment owns but no longer names (that move is refused), an app
        # is checked against the Environment as bound there.
        violation = (
            check_app_policy(app, env if ns_problem is not None else with_namespace(env, key.namespace))
            or ns_problem
        )
    if violation is not None:
        obs.refusal = Refusal("Failed", violation.reason, violation.message)
        return None

    secrets_hash: str | None = None
    # Also with no secrets: the sync then drops a Secret left from refs that were all removed.
    if app.spec.secrets or secret_files(app.spec.files) or ctx.secrets is not None:
        if ctx.secrets is None:
            obs.refusal = Refusal(
                "Degraded", "SecretsUnavailable", "Key Vault secret sync is not enabled in this operator"
            )
            return None
        result = await ctx.secrets.sync_app(body, env)
        obs.secrets = result.condition
        if not result.ready:
            cond = result.condition
            phase = "Progressing" if cond.reason in _SECRETS_PENDING else "Degraded"
            # No workload: the app would crash on a missing variable.
            obs.refusal = Refusal(
                phase, cond.reason, f"secrets not synced: {cond.message}", already_reported=True
            )
            return None
        secrets_hash = result.values_hash

    # An unresolved connection is reported, not fatal: the workload runs without its variables.
    obs.connections = resolve_for(ctx.cache, key, app)
    try:
        step = await render_app_with_rollout(
            ctx, key, body, app, env, secrets_hash=secrets_hash, connections=tuple(obs.connections)
        )
    except RenderError as exc:
        obs.refusal = Refusal("Failed", exc.reason, exc.message)
        return None
    rendered = step.rendered
    obs.rollout, obs.rollout_stale = step.status, step.stale
    obs.exposures = rendered.exposures
    before = Before.of(ctx, key)
    # A refusal (ChildWriteError) leaves what was applied before it recorded; the caller reports it.
    applied = await apply_children(ctx, key, rendered.manifests)
    for child_key, live in applied.items():
        _note_applied(ctx, key, child_key, live)
    changes.note_applied(ctx, before, applied)
    keep = {ChildKey.of(m) for m in rendered.manifests}
    uid = str(body["metadata"].get("uid", ""))
    changes.note_deleted(await prune_children(ctx, key, uid, keep, APP_CHILD_KINDS))
    # Summaries may have been refreshed by the applies.
    obs.deployment = ctx.cache.deployment(key) if app.spec.type in ("service", "webhook", "worker") else None
    obs.cronjob = ctx.cache.cronjob(key) if obs.deployment is None else None
    obs.applied_generation = ctx.record.applied_generation.get(key, 0)
    return step.decision


def _note_applied(ctx: ReconcileContext, key: AppKey, child: ChildKey, live: dict[str, Any]) -> None:
    # The watch event for this write may already have been handled (it races the HTTP answer), so
    # an answer never replaces a summary of the same object: it only records the generation our
    # write produced, which "Ready" must see observed.
    uid = str((live.get("metadata") or {}).get("uid", ""))
    record = ctx.record
    if child.kind == "Deployment" and child.name == key.name:  # not a canary's
        record.applied_generation[key] = int((live.get("metadata") or {}).get("generation") or 0)
        current = ctx.cache.deployment(key)
        if current is None or current.uid != uid:
            record.deployment_answers[key] = DeploymentSummary.from_body(live)
    elif child.kind == "CronJob":
        cron = ctx.cache.cronjob(key)
        if cron is None or cron.uid != uid:
            record.cronjob_answers[key] = CronJobSummary.from_body(live)


def _previous_conditions(body: dict[str, Any]) -> list[Condition]:
    out = []
    for raw in (body.get("status") or {}).get("conditions") or []:
        try:
            out.append(Condition.model_validate(raw))
        except ValidationError:
            continue
    return out


def _comparable(status: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in status.items() if v is not None and v != []}


def _with_removals(current: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    """The merge patch for ``status``: a merge patch keeps nested fields it does not name, so the
    ones status.rollout dropped (a new step's lastCheckAt, a finished wait's message) are nulled."""
    old, new = current.get("rollout"), status.get("rollout")
    if not isinstance(old, dict) or not isinstance(new, dict):
        return status
    return {**status, "rollout": {**dict.fromkeys(old.keys() - new.keys()), **new}}


async def _write_status(
    ctx: ReconcileContext, key: AppKey, body: dict[str, Any], status: dict[str, Any]
) -> None:
    current = body.get("status") or {}
    if _comparable(current) == _comparable(status):
        return
    live = await ctx.kube.patch(
        R.CHOREOAPPS,
        key.name,
        {"status": _with_removals(current, status)},
        key.namespace,
        "merge",
        subresource="status",
    )
    if live:
        ctx.record.status_answers[key] = live.get("status") or status


__all__ = ["APP_CHILD_KINDS", "EndpointExposure", "reconcile"]
