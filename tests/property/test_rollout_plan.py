"""The canary planner under any sequence of clock ticks, observations and spec changes.

A rollout spec (steps, pauses, gate, promote, abort) and a stream of events (time passes, the
canary's pods become ready or restart, the HTTP check answers, a new template is pushed) drive
``plan``; its status goes through the object's wire form between calls, as it does through
``status.rollout`` in the cluster. Checked after every decision: the canary's weight never
exceeds its step's, and is 0 outside a running canary; steps advance one at a time and a new
rollout starts at step 1; a requested or earned abort reaches weight 0 with a Warning
RolloutAborted naming the failing check; planning again at the same instant changes nothing
(and the same inputs give the same decision); and a status read back from its wire form plans
exactly like the original (restart safety). A healthy canary with its manual steps promoted
always completes, with the stable side on the new template.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from choreo_dp.api.rollout import ACTIVE_PHASES, Rollout, RolloutStatus
from choreo_dp.render.rollout_plan import Decision, HttpCheckResult, Observations, plan

START = datetime(2026, 1, 1, 12, 0, 0, 250000, tzinfo=UTC)
REVISIONS = ("r0", "r1", "r2")


@st.composite
def rollouts(draw: st.DrawFn) -> Rollout:
    count = draw(st.integers(1, 4))
    weights = sorted(draw(st.lists(st.integers(1, 99), min_size=count, max_size=count)))
    if draw(st.booleans()):
        weights[-1] = 100
    steps = [{"weight": w, "pause": draw(st.sampled_from(["1s", "3s", "20s", "manual"]))} for w in weights]
    analysis: dict[str, Any] = {
        "failureThreshold": draw(st.integers(1, 4)),
        "interval": draw(st.sampled_from(["1s", "2s", "10s"])),
    }
    if draw(st.booleans()):
        analysis["httpGet"] = {"path": "/healthz"}
    return Rollout.model_validate(
        {
            "strategy": "Canary",
            "steps": steps,
            "analysis": analysis,
            "promote": draw(st.one_of(st.none(), st.integers(1, 5))),
            "abort": draw(st.sampled_from([False, False, False, True])),
        }
    )


@st.composite
def observations(draw: st.DrawFn, desired: str, restarts: int) -> Observations:
    total = draw(st.integers(0, 3))
    http = draw(st.one_of(st.none(), st.builds(HttpCheckResult, st.booleans(), st.just("GET /healthz: 503"))))
    return Observations(
        desired_revision=desired,
        canary_ready=draw(st.integers(0, total)),
        canary_total=total,
        canary_restarts=restarts,
        http=http,
        stable_revision="r0",
        stable_updated=draw(st.booleans()),
    )


def _round_trip(status: RolloutStatus | None) -> RolloutStatus | None:
    return None if status is None else RolloutStatus.model_validate(status.to_k8s())


def _check(
    rollout: Rollout, before: RolloutStatus | None, obs: Observations, now: datetime, d: Decision
) -> None:
    new = d.status
    assert new is not None
    # the same inputs, and the same inputs read back from the wire, give the same decision
    assert plan(rollout, before, obs, now) == d
    assert plan(rollout, _round_trip(before), obs, now) == d
    # planning again at the same instant changes nothing
    assert plan(rollout, new, obs, now).status == new
    if new.phase in ACTIVE_PHASES:
        assert 1 <= new.step <= len(rollout.steps)
        assert 0 < new.weight <= rollout.steps[new.step - 1].weight
        assert new.canary_revision == obs.desired_revision
    else:
        assert new.weight == 0
    same_rollout = (
        before is not None
        and new.started_at == before.started_at
        and new.canary_revision == before.canary_revision
    )
    if new.phase in ACTIVE_PHASES:
        if same_rollout:
            assert before is not None and new.step in (before.step, before.step + 1), "a step was skipped"
        else:
            assert new.step == 1, "a new rollout must start at step 1"
    if new.phase == "Aborted" and (before is None or before.phase != "Aborted"):
        assert d.event is not None and (d.event.type, d.event.reason) == ("Warning", "RolloutAborted")
        assert new.message and new.message == d.event.message
    if rollout.abort and new.phase in ("Progressing", "Paused", "Aborted"):
        assert new.phase == "Aborted" and new.weight == 0
    if before is not None and before.phase in ("Progressing", "Paused") and new.phase in ACTIVE_PHASES:
        assert new.failures < rollout.gate.failure_threshold


@settings(max_examples=120, deadline=None)
@given(rollout=rollouts(), data=st.data())
def test_planner_invariants_hold_for_any_history(rollout: Rollout, data: st.DataObject) -> None:
    status: RolloutStatus | None = None
    now = START
    desired = "r0"
    restarts = 0
    for _ in range(data.draw(st.integers(1, 40))):
        now += timedelta(seconds=data.draw(st.sampled_from([0, 0.5, 1, 2, 5, 11, 30])))
        if data.draw(st.integers(0, 9)) == 0:
            desired = data.draw(st.sampled_from(REVISIONS))
        restarts += data.draw(st.sampled_from([0, 0, 0, 1]))
        obs = data.draw(observations(desired, restarts))
        decision = plan(rollout, status, obs, now)
        _check(rollout, status, obs, now, decision)
        status = _round_trip(decision.status)


@settings(max_examples=80, deadline=None)
@given(rollout=rollouts(), data=st.data())
def test_enough_failed_checks_always_abort_to_weight_zero(rollout: Rollout, data: st.DataObject) -> None:
    rollout = rollout.model_copy(update={"abort": False, "promote": None})
    start = plan(rollout, RolloutStatus(stable_revision="r0"), Observations(desired_revision="r1"), START)
    assert start.status is not None and start.status.phase in ("Progressing", "Paused")
    status, now = start.status, START
    failing = data.draw(
        st.sampled_from(
            [
                Observations("r1", canary_ready=0, canary_total=2, http=HttpCheckResult(True, "ok")),
                Observations(
                    "r1", canary_ready=2, canary_total=2, canary_restarts=5, http=HttpCheckResult(True, "ok")
                ),
            ]
        )
    )
    interval = rollout.gate.interval_delta
    for _ in range(rollout.gate.failure_threshold):
        now += interval
        decision = plan(rollout, status, failing, now)
        assert decision.status is not None
        status = decision.status
        # restarts are counted once: later checks see them as old
        failing = Observations("r1", canary_ready=0, canary_total=2)
    assert status.phase == "Aborted" and status.weight == 0
    assert status.message is not None and "canary" in status.message
    assert plan(rollout, status, failing, now + timedelta(hours=1)).status == status, (
        "an abort stays until a new spec"
    )
    again = plan(rollout, status, Observations("r2"), now)
    assert again.status is not None and again.status.phase in ("Progressing", "Paused")
    assert again.status.step == 1 and again.status.canary_revision == "r2"
    assert again.status.stable_revision == "r0"


@settings(max_examples=80, deadline=None)
@given(rollout=rollouts())
def test_a_healthy_promoted_canary_completes(rollout: Rollout) -> None:
    rollout = rollout.model_copy(update={"abort": False, "promote": len(rollout.steps)})
    healthy = Observations(
        "r1", canary_ready=1, canary_total=1, http=HttpCheckResult(True, "200"), stable_revision="r0"
    )
    status: RolloutStatus | None = None
    now = START
    weights: list[int] = []
    for _ in range(500):
        decision = plan(rollout, status, healthy, now)
        status = _round_trip(decision.status)
        assert status is not None
        if status.phase == "Promoting":
            healthy = Observations("r1", canary_ready=1, canary_total=1, stable_updated=True)
        if status.phase == "Completed":
            break
        if status.phase in ACTIVE_PHASES:
            weights.append(status.weight)
        now += timedelta(seconds=decision.requeue_after or 1)
    assert status is not None and status.phase == "Completed", status
    assert status.stable_revision == "r1" and status.weight == 0
    assert weights == sorted(weights) and set(weights) == {s.weight for s in rollout.steps}


def test_manual_pause_waits_for_promote() -> None:
    rollout = Rollout.model_validate(
        {"strategy": "Canary", "steps": [{"weight": 20, "pause": "manual"}, {"weight": 60, "pause": "1s"}]}
    )
    healthy = Observations("r1", canary_ready=1, canary_total=1)
    status = plan(rollout, RolloutStatus(stable_revision="r0"), healthy, START).status
    for minutes in (1, 10, 60):
        status = plan(rollout, status, healthy, START + timedelta(minutes=minutes)).status
        assert status is not None and (status.phase, status.step, status.weight) == ("Paused", 1, 20)
        assert status.summary == "Canary 20% paused"
    promoted = rollout.model_copy(update={"promote": 1})
    status = plan(promoted, status, healthy, START + timedelta(minutes=61)).status
    assert status is not None and (status.phase, status.step, status.weight) == ("Progressing", 2, 60)


def test_a_rolling_update_app_has_no_rollout_state() -> None:
    assert plan(None, None, Observations("r1"), START).status is None
    assert (
        plan(
            Rollout(), RolloutStatus(phase="Progressing", step=1, weight=5), Observations("r1"), START
        ).status
        is None
    )
