"""The canary rollout planner: (spec, status, observations, now) -> the next status.

Pure and level-based: it keeps no memory but ``status.rollout`` (so an operator restart resumes
where it was), reads the clock only through ``now``, and planning again with the same inputs
returns the same decision. The operator calls it on every reconcile of a canary-strategy app:

1. render the app once without a rollout state to learn the spec's pod template hash
   (``AppRender.template_revision``); read the canary's pods and, when
   ``spec.rollout.analysis.httpGet`` is set, the last HTTP check of the canary Service;
2. ``decision = plan(spec.rollout, status.rollout, Observations(...), now)``;
3. render with ``rollout=decision.status`` and the live stable Deployment's pod template, apply,
   write ``decision.status`` to ``status.rollout``, post ``decision.event`` when there is one,
   and reconcile again after ``decision.requeue_after`` seconds.

Transitions:

- Idle / Completed: a spec whose pod template hash differs from the stable one starts a rollout
  at step 1 (the canary gets the step's weight).
- Progressing / Paused: every ``analysis.interval`` the gate is checked (all canary pods ready, no
  new container restart, the HTTP check 2xx when configured); ``failureThreshold`` consecutive
  failures, or ``spec.rollout.abort``, abort: weight 0, canary scaled to zero, a Warning event
  RolloutAborted naming the failing check. A step ends when its pause has elapsed (or, for a
  manual pause, ``spec.rollout.promote`` reaches its number) and the latest check in the step
  passed; the next step starts, or after the last one the rollout is Promoting.
- Promoting: the stable Deployment takes the new template; once it runs it everywhere
  (``Observations.stable_updated``) the rollout is Completed (canary removed).
- Aborted: stays so until the spec's template changes again (a new rollout from stable), or goes
  back to the stable one (Idle).
- A new template during a rollout restarts it from step 1 against the same stable; back to the
  stable template cancels it (Idle).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from choreo_dp.api.rollout import Rollout, RolloutStatus, RolloutStep
from choreo_dp.api.vocabulary import (
    ROLLOUT_ABORTED_REASON,
    ROLLOUT_CANCELLED_REASON,
    ROLLOUT_COMPLETED_REASON,
    ROLLOUT_PROMOTING_REASON,
    ROLLOUT_STARTED_REASON,
    ROLLOUT_STEP_REASON,
)


@dataclass(frozen=True)
class HttpCheckResult:
    """The operator's last HTTP GET against the canary Service."""

    ok: bool
    # What was asked and answered, e.g. "GET http://orders-canary:8080/healthz: 503".
    detail: str


@dataclass(frozen=True)
class Observations:
    """What the operator saw of the cluster for this decision."""

    # The spec's pod template hash (AppRender.template_revision).
    desired_revision: str
    # Canary pods Ready, and canary pods that exist or should (the canary Deployment's replicas).
    canary_ready: int = 0
    canary_total: int = 0
    # Sum of the container restart counts of the current canary pods.
    canary_restarts: int = 0
    # The latest HTTP check of the canary, when spec.rollout.analysis.httpGet is set; None before the first.
    http: HttpCheckResult | None = None
    # The live stable Deployment's choreo.dev/template-hash annotation (first decision only).
    stable_revision: str | None = None
    # The stable Deployment runs the canary's template on all its replicas, all ready (ends Promoting).
    stable_updated: bool = False


@dataclass(frozen=True)
class RolloutEvent:
    type: str  # "Normal" or "Warning"
    reason: str
    message: str


@dataclass(frozen=True)
class Decision:
    """The next ``status.rollout`` (also what to render), an event to post, when to look again.

    ``status`` is None when the app is not canary-managed (render as a plain rolling update).
    """

    status: RolloutStatus | None
    event: RolloutEvent | None = None
    # Seconds until a timer (pause or check) may change the decision; None when only a change in
    # the cluster or the spec can.
    requeue_after: float | None = None

    @property
    def aborted(self) -> bool:
        """The app should show phase Degraded with reason RolloutAborted and status.rollout.message."""
        return self.status is not None and self.status.phase == "Aborted"


def plan(rollout: Rollout | None, status: RolloutStatus | None, obs: Observations, now: datetime) -> Decision:
    """The next rollout state; see the module docstring for the transitions."""
    if rollout is None or not rollout.canary:
        return Decision(None)
    cur = status or RolloutStatus(phase="Idle", stable_revision=obs.stable_revision or obs.desired_revision)
    if cur.stable_revision is None:
        cur = cur.model_copy(update={"stable_revision": obs.stable_revision or obs.desired_revision})
    desired = obs.desired_revision
    if cur.phase in ("Idle", "Completed"):
        if desired == cur.stable_revision:
            return _settle(cur)
        return _start(rollout, obs, cur, desired, now, ROLLOUT_STARTED_REASON, "started")
    if cur.phase == "Aborted":
        if desired == cur.stable_revision:
            return _idle(cur, None)
        if desired != cur.canary_revision:
            return _start(rollout, obs, cur, desired, now, ROLLOUT_STARTED_REASON, "started")
        return _settle(cur)
    if cur.phase == "Promoting":
        if desired != cur.canary_revision:
            # The stable Deployment is already moving to the canary's template: that is the new base.
            base = cur.model_copy(update={"stable_revision": cur.canary_revision})
            if desired == base.stable_revision:
                return _idle(base, None)
            return _start(rollout, obs, base, desired, now, ROLLOUT_STARTED_REASON, "started")
        if obs.stable_updated:
            return _completed(cur)
        return Decision(_summarized(cur), requeue_after=rollout.gate.interval_delta.total_seconds())
    # Progressing or Paused
    if desired == cur.stable_revision:
        event = RolloutEvent("Normal", ROLLOUT_CANCELLED_REASON, "the spec is back to the stable version")
        return _idle(cur, event)
    if desired != cur.canary_revision:
        return _start(
            rollout, obs, cur, desired, now, ROLLOUT_STARTED_REASON, "restarted with a newer version"
        )
    if rollout.abort:
        return _abort(cur, "aborted by spec.rollout.abort")
    return _progress(rollout, cur, obs, now)


def _progress(rollout: Rollout, cur: RolloutStatus, obs: Observations, now: datetime) -> Decision:
    gate = rollout.gate
    interval = gate.interval_delta
    # The steps may have been edited mid-rollout (they are not part of the template): the weight
    # always follows the step in force, and a step beyond the new list is the last one.
    step_index = min(max(cur.step, 1), len(rollout.steps)) - 1
    step = rollout.steps[step_index]
    if (cur.step, cur.weight) != (step_index + 1, step.weight):
        cur = cur.model_copy(update={"step": step_index + 1, "weight": step.weight})
    step_started = _parse(cur.step_started_at) or now
    last_check = _parse(cur.last_check_at)
    due = (last_check or step_started) + interval
    if now >= due:
        problem = _check(obs, cur, http_expected=gate.http_get is not None)
        failures = cur.failures + 1 if problem else 0
        restarts = obs.canary_restarts
        cur = cur.model_copy(
            update={
                "last_check_at": _fmt(now),
                "failures": failures,
                "restarts": restarts,
                "message": f"check failed ({failures}/{gate.failure_threshold}): {problem}"
                if problem
                else None,
            }
        )
        if failures >= gate.failure_threshold:
            return _abort(cur, f"canary failed {failures} consecutive checks; last: {problem}")
    # The step's last check passed, and nothing has gone wrong since (a restart, a pod not ready).
    passed = (
        cur.last_check_at is not None
        and cur.failures == 0
        and _check(obs, cur, http_expected=gate.http_get is not None) is None
    )
    released = (rollout.promote or 0) >= cur.step if step.manual else now >= step_started + step.duration
    if released and passed:
        if cur.step < len(rollout.steps):
            nxt = rollout.steps[cur.step]
            new = cur.model_copy(
                update={
                    "phase": "Progressing",
                    "step": cur.step + 1,
                    "weight": nxt.weight,
                    "step_started_at": _fmt(now),
                    "last_check_at": None,
                    "failures": 0,
                    "promote_requested": None,
                    "message": None,
                }
            )
            new = _summarized(new)
            msg = f"step {new.step}/{len(rollout.steps)}: {nxt.weight}% of traffic to the canary"
            settled = _progress(rollout, new, obs, now)
            return Decision(
                settled.status, RolloutEvent("Normal", ROLLOUT_STEP_REASON, msg), settled.requeue_after
            )
        new = _summarized(
            cur.model_copy(
                update={
                    "phase": "Promoting",
                    "promote_requested": None,
                    "message": "promoting: the stable Deployment takes the new version",
                }
            )
        )
        if obs.stable_updated:
            # Already the case (the stable side was moved by hand): nothing left to wait for.
            return _completed(new)
        msg = "all steps passed; the stable Deployment takes the new version"
        return Decision(
            new,
            RolloutEvent("Normal", ROLLOUT_PROMOTING_REASON, msg),
            rollout.gate.interval_delta.total_seconds(),
        )
    waiting_manual = step.manual and not released
    update: dict[str, object] = {
        "phase": "Paused" if waiting_manual else "Progressing",
        "promote_requested": True if step.manual and released else None,
    }
    if waiting_manual and not cur.failures:
        update["message"] = f"paused at step {cur.step}: set spec.rollout.promote to {cur.step} to continue"
    new = _summarized(cur.model_copy(update=update))
    timers = [(_parse(new.last_check_at) or step_started) + interval]
    if not step.manual and step_started + step.duration > now:
        timers.append(step_started + step.duration)
    return Decision(new, None, max((min(timers) - now).total_seconds(), 0.001))


def _check(obs: Observations, cur: RolloutStatus, *, http_expected: bool) -> str | None:
    """The first failing check, in words, or None when the gate holds."""
    if obs.canary_total <= 0 or obs.canary_ready < obs.canary_total:
        return f"canary readiness: {obs.canary_ready}/{obs.canary_total} pods ready"
    if obs.canary_restarts > cur.restarts:
        return f"canary restarts: {obs.canary_restarts - cur.restarts} new container restarts"
    if http_expected:
        if obs.http is None:
            return "canary HTTP check: no result yet"
        if not obs.http.ok:
            return f"canary HTTP check: {obs.http.detail}"
    return None


def _start(
    rollout: Rollout,
    obs: Observations,
    base: RolloutStatus,
    desired: str,
    now: datetime,
    reason: str,
    verb: str,
) -> Decision:
    first: RolloutStep = rollout.steps[0]
    new = RolloutStatus(
        phase="Progressing",
        step=1,
        weight=first.weight,
        stable_revision=base.stable_revision,
        canary_revision=desired,
        started_at=_fmt(now),
        step_started_at=_fmt(now),
        restarts=0,
    )
    new = _summarized(new)
    if rollout.abort:
        # Level-based: while abort is set no canary gets traffic, not even for one reconcile.
        return _abort(new, "aborted by spec.rollout.abort")
    msg = f"canary {verb}: step 1/{len(rollout.steps)}, {first.weight}% of traffic to the canary"
    # The step's own rules (a manual pause, the timers) apply from the first instant.
    settled = _progress(rollout, new, obs, now)
    return Decision(settled.status, RolloutEvent("Normal", reason, msg), settled.requeue_after)


def _abort(cur: RolloutStatus, message: str) -> Decision:
    new = _summarized(
        cur.model_copy(
            update={"phase": "Aborted", "weight": 0, "message": message, "promote_requested": None}
        )
    )
    return Decision(new, RolloutEvent("Warning", ROLLOUT_ABORTED_REASON, message))


def _completed(cur: RolloutStatus) -> Decision:
    new = _summarized(
        cur.model_copy(
            update={
                "phase": "Completed",
                "weight": 0,
                "stable_revision": cur.canary_revision,
                "last_check_at": None,
                "failures": 0,
                "message": None,
            }
        )
    )
    return Decision(new, RolloutEvent("Normal", ROLLOUT_COMPLETED_REASON, "the new version is promoted"))


def _idle(cur: RolloutStatus, event: RolloutEvent | None) -> Decision:
    new = RolloutStatus(phase="Idle", stable_revision=cur.stable_revision)
    return Decision(_summarized(new), event)


def _settle(cur: RolloutStatus) -> Decision:
    return Decision(_summarized(cur))


def _summarized(status: RolloutStatus) -> RolloutStatus:
    summary = {
        "Idle": None,
        "Completed": "Completed",
        "Aborted": "Aborted",
        "Promoting": f"Promoting {status.weight}%",
        "Paused": f"Canary {status.weight}% paused",
        "Progressing": f"Canary {status.weight}%",
    }[status.phase]
    return status if status.summary == summary else status.model_copy(update={"summary": summary})


def _fmt(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(text: str | None) -> datetime | None:
    if text is None:
        return None
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
