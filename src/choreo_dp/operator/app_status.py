"""ChoreoApp status from what actually runs (pure: observations in, status out)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from choreo_dp.api import Condition, set_condition
from choreo_dp.api.choreoapp import LONG_RUNNING_TYPES, ChoreoAppSpec
from choreo_dp.api.rollout import ACTIVE_PHASES, RolloutStatus
from choreo_dp.api.vocabulary import APP_SERVICE_ACCOUNT, ROLLOUT_ABORTED_REASON
from choreo_dp.operator.summaries import CronJobSummary, DeploymentSummary, PodSummary, running_image
from choreo_dp.render.connections import ConnectionResolution
from choreo_dp.render.endpoints import EndpointExposure


@dataclass(frozen=True)
class Refusal:
    """Why nothing was (or will be) applied for the app: phase, reason and message."""

    phase: str
    reason: str
    message: str
    # The Key Vault sync posts its own Warning Events; a second one from us would only repeat it.
    already_reported: bool = False


@dataclass
class AppObservation:
    name: str
    generation: int
    revision: int | None
    spec: ChoreoAppSpec | None
    refusal: Refusal | None = None
    exposures: Sequence[EndpointExposure] = ()
    deployment: DeploymentSummary | None = None
    applied_generation: int = 0  # Deployment generation our last apply produced
    pods: Sequence[PodSummary] = ()
    cronjob: CronJobSummary | None = None
    secrets: Condition | None = None  # the SecretsSynced condition, None when the app has no secrets
    previous_conditions: list[Condition] = field(default_factory=list)
    connections: list[ConnectionResolution] = field(default_factory=list)
    # status.rollout as decided this reconcile (canary apps); ``rollout_stale``: the object holds
    # one its spec no longer asks for. Neither is set when the reconcile stopped before rendering.
    rollout: RolloutStatus | None = None
    rollout_stale: bool = False


def _cond(obs: AppObservation, type_: str, ok: bool | None, reason: str, message: str) -> Condition:
    status = "Unknown" if ok is None else ("True" if ok else "False")
    return Condition(
        type=type_, status=status, reason=reason, message=message, observed_generation=obs.generation
    )


def compute_app_status(obs: AppObservation) -> dict[str, Any]:
    phase, message, ready_text, replicas, ready_replicas, image = _workload_state(obs)
    phase, message, rollout_reason = _with_rollout(obs, phase, message)
    conditions = list(obs.previous_conditions)

    def put(c: Condition) -> None:
        nonlocal conditions
        conditions = set_condition(conditions, c)

    ready_reason = (
        obs.refusal.reason
        if obs.refusal is not None
        else rollout_reason or ("Available" if phase == "Ready" else phase)
    )
    unresolved = [r.message for r in obs.connections if not r.resolved]
    if unresolved and obs.refusal is None and phase in ("Ready", "Progressing"):
        # The workload runs (without those variables) but cannot do its job: not Ready.
        ready_reason = "ConnectionUnresolved"
        if phase == "Ready":
            phase, message = "Degraded", "; ".join(unresolved)
    put(_cond(obs, "Ready", phase == "Ready", ready_reason, message))
    progressing = phase in ("Progressing", "Pending")
    put(_cond(obs, "Progressing", progressing, "RolloutInProgress" if progressing else phase, message))
    put(_exposed(obs))
    if obs.secrets is not None:
        put(obs.secrets.model_copy(update={"observed_generation": obs.generation}))
    else:
        put(_cond(obs, "SecretsSynced", True, "NoSecrets", "the app uses no Key Vault secrets"))

    status: dict[str, Any] = {
        "phase": phase,
        "message": message,
        "observedGeneration": obs.generation,
        "endpoints": [
            {"name": e.endpoint.name, "visibility": e.endpoint.visibility, "url": e.url}
            for e in obs.exposures
            if e.url is not None and obs.refusal is None
        ],
        "connections": [r.status() for r in obs.connections],
        "conditions": [c.to_k8s() for c in conditions],
        "ready": ready_text,
        "replicas": replicas,
        "readyReplicas": ready_replicas,
        "image": image,
        "revision": obs.revision,
    }
    if obs.rollout is not None:
        status["rollout"] = obs.rollout.to_k8s()
    elif obs.rollout_stale:
        status["rollout"] = None  # a merge patch removes it
    return status


def _with_rollout(obs: AppObservation, phase: str, message: str) -> tuple[str, str, str | None]:
    """The app's phase and message as a canary rollout changes them, and the Ready reason it gives.

    An aborted rollout leaves the spec's version not running: Degraded, reason RolloutAborted, the
    failing check as the message. One under way is not done yet: Progressing, with its step
    (what ``cp get apps`` shows upstream, the agent reporting the status as it is).
    """
    rollout, spec = obs.rollout, obs.spec
    if rollout is None or spec is None or obs.refusal is not None or phase not in ("Ready", "Progressing"):
        return phase, message, None
    if rollout.phase == "Aborted":
        return "Degraded", rollout.message or "the canary rollout aborted", ROLLOUT_ABORTED_REASON
    if rollout.phase not in ACTIVE_PHASES:
        return phase, message, None
    steps = len(spec.rollout.steps) if spec.rollout is not None else 0
    text = f"canary rollout: {rollout.summary}, step {rollout.step}/{steps}"
    if rollout.message:
        text += f": {rollout.message}"
    if phase == "Progressing" and rollout.phase != "Promoting":
        text += f"; stable: {message}"
    return "Progressing", text, None


def _exposed(obs: AppObservation) -> Condition:
    if obs.refusal is not None:
        return _cond(obs, "Exposed", False, "NotReconciled", obs.refusal.message)
    if not obs.exposures:
        return _cond(obs, "Exposed", False, "NoEndpoints", "the app has no endpoints")
    problems = [e.problem for e in obs.exposures if e.problem is not None]
    hard = [p for p in problems if p[0] != "HostnameUnknown"]
    if hard:
        return _cond(obs, "Exposed", False, hard[0][0], "; ".join(p[1] for p in hard))
    routed = sum(1 for e in obs.exposures if e.routed)
    msg = f"{len(obs.exposures)} endpoint(s), {routed} routed through a gateway"
    if problems:
        msg += "; " + "; ".join(p[1] for p in problems)
    return _cond(obs, "Exposed", True, "EndpointsExposed", msg)


_Workload = tuple[str, str, str | None, int | None, int | None, str | None]


def _workload_state(obs: AppObservation) -> _Workload:
    spec = obs.spec
    if obs.refusal is not None or spec is None:
        r = obs.refusal or Refusal("Failed", "InvalidSpec", "spec could not be read")
        dep = obs.deployment
        image = dep.image if dep is not None else None
        return r.phase, r.message, None, None, None, image
    if spec.type in LONG_RUNNING_TYPES:
        return _deployment_state(obs, spec)
    cj = obs.cronjob
    if cj is None:
        return "Progressing", "waiting for the CronJob to be created", None, None, None, None
    if spec.suspend:
        return "Suspended", "the task is suspended", None, None, None, spec.image
    if spec.type == "manualTask":
        msg = f"ready to run: kubectl create job --from=cronjob/{obs.name} {obs.name}-<suffix>"
    else:
        msg = f"scheduled ({spec.schedule})"
        if cj.last_schedule_time:
            msg += f"; last run scheduled at {cj.last_schedule_time}"
    if cj.active:
        msg += f"; {cj.active} job(s) running"
    return "Ready", msg, None, None, None, spec.image


def _deployment_state(obs: AppObservation, spec: ChoreoAppSpec) -> _Workload:
    dep = obs.deployment
    if dep is None:
        return "Progressing", "waiting for the Deployment to be created", None, None, None, spec.image
    desired = dep.spec_replicas
    ready_text = f"{dep.ready_replicas}/{desired}"
    live_pods = [p for p in obs.pods if not p.terminating]
    current = [p for p in live_pods if p.image == dep.image]
    image = dep.image or spec.image
    for pod in current:
        if pod.ready and pod.image_id and pod.image:
            image = running_image(pod.image, pod.image_id)
            break
    if spec.suspend:
        if dep.replicas > 0:
            msg = f"suspending: {dep.replicas} pod(s) still running"
            return "Progressing", msg, ready_text, 0, dep.ready_replicas, image
        return "Suspended", "the app is suspended (0 replicas)", ready_text, 0, 0, image
    problems = [p.problem for p in live_pods if p.problem]
    rolled = dep.observed_generation >= max(dep.generation, obs.applied_generation)
    complete = (
        rolled
        and dep.updated_replicas >= desired
        and dep.available_replicas >= desired
        and dep.replicas == dep.updated_replicas
    )
    if complete and not problems:
        return (
            "Ready",
            f"{dep.available_replicas}/{desired} replicas available",
            ready_text,
            desired,
            dep.ready_replicas,
            image,
        )
    if problems:
        shown = "; ".join(sorted(problems)[:3])
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        return "Degraded", shown + more, ready_text, desired, dep.ready_replicas, image
    if dep.replica_failure and not _awaits_app_service_account(dep.replica_failure):
        # Not "rolling out": nothing will roll until the cause (a quota, most often) changes.
        msg = f"pods cannot be created: {dep.replica_failure[:300]}"
        return "Degraded", msg, ready_text, desired, dep.ready_replicas, image
    if dep.progress_deadline_exceeded:
        return (
            "Degraded",
            dep.progressing_message or "rollout exceeded its progress deadline",
            ready_text,
            desired,
            dep.ready_replicas,
            image,
        )
    if not rolled:
        msg = "waiting for the Deployment controller to observe the new generation"
    else:
        msg = f"rolling out: {dep.updated_replicas}/{desired} updated, {dep.available_replicas}/{desired} available"
    return "Progressing", msg, ready_text, desired, dep.ready_replicas, image


def _awaits_app_service_account(failure: str) -> bool:
    """Pods refused because the namespace's app ServiceAccount is not there yet: the Environment's
    reconcile creates it and the ReplicaSet controller retries, so this is progress, not damage
    (a lasting absence still ends as Degraded through the progress deadline)."""
    return "service account " in failure and f"/{APP_SERVICE_ACCOUNT}" in failure
