"""Unit tests of the controller's pure parts: work queue, drift check, status computation."""

from __future__ import annotations

import asyncio

from choreo_dp.api.choreoapp import ChoreoAppSpec
from choreo_dp.operator.app_status import AppObservation, Refusal, compute_app_status
from choreo_dp.operator.drift import contains
from choreo_dp.operator.summaries import DeploymentSummary, PodSummary, running_image
from choreo_dp.operator.workqueue import WorkQueue

SPEC = ChoreoAppSpec.model_validate(
    {"environment": "dev", "project": "p", "type": "service", "image": "r/x:1", "replicas": 3}
)


def _dep(**kw: int) -> DeploymentSummary:
    base: dict[str, int] = dict(
        generation=2,
        observed_generation=2,
        spec_replicas=3,
        replicas=3,
        updated_replicas=3,
        ready_replicas=3,
        available_replicas=3,
    )
    base.update(kw)
    return DeploymentSummary(
        uid="u",
        image="r/x:1",
        progress_deadline_exceeded=False,
        progressing_message=None,
        generation=base["generation"],
        observed_generation=base["observed_generation"],
        spec_replicas=base["spec_replicas"],
        replicas=base["replicas"],
        updated_replicas=base["updated_replicas"],
        ready_replicas=base["ready_replicas"],
        available_replicas=base["available_replicas"],
    )


def _obs(**kw: object) -> AppObservation:
    return AppObservation(name="a", generation=5, revision=7, spec=SPEC, **kw)  # type: ignore[arg-type]


async def test_queue_dedupes_and_never_hands_a_key_to_two_workers() -> None:
    q: WorkQueue[str] = WorkQueue("t")
    q.add("a")
    q.add("a")
    assert len(q) == 1
    key = await q.get()
    q.add("a")  # while processing: marked dirty, not queued twice
    assert len(q) == 0
    q.done(key)
    assert len(q) == 1


async def test_urgent_adds_are_served_first_and_promote_waiting_keys() -> None:
    q: WorkQueue[str] = WorkQueue("t")
    for key in ("new-1", "new-2", "new-3"):
        q.add(key)
    q.add("ready-app", urgent=True)
    q.add("new-3", urgent=True)  # already waiting: promoted, still queued once
    assert len(q) == 4
    order = [await q.get() for _ in range(4)]
    assert order == ["ready-app", "new-3", "new-1", "new-2"]
    for key in order:
        q.done(key)
    assert len(q) == 0
    # A key made dirty by an urgent add while processing comes back in the urgent lane.
    q.add("x")
    q.add("y")
    got = await q.get()
    assert got == "x"
    q.add("x", urgent=True)
    q.done("x")
    assert await q.get() == "x"


async def test_queue_backoff_grows_and_honours_retry_after() -> None:
    q: WorkQueue[str] = WorkQueue("t", base_delay=0.1, max_delay=10)
    delays = [q.add_rate_limited("k") for _ in range(6)]
    assert delays[-1] > delays[0] and max(delays) <= 10
    assert q.add_rate_limited("j", retry_after=3) >= 3
    q.forget("k")
    assert q.failures("k") == 0
    q.shut_down()
    await asyncio.sleep(0)


def test_contains_is_a_subset_check() -> None:
    assert contains({"a": 1, "b": {"c": [1, 2]}, "x": 9}, {"b": {"c": [1, 2]}})
    assert not contains({"b": {"c": [1]}}, {"b": {"c": [1, 2]}})
    assert not contains({"f": False}, {"f": 0})


def test_status_ready_progressing_degraded() -> None:
    ready = compute_app_status(_obs(deployment=_dep()))
    assert ready["phase"] == "Ready" and ready["ready"] == "3/3" and ready["revision"] == 7
    rolling = compute_app_status(_obs(deployment=_dep(observed_generation=1)))
    assert rolling["phase"] == "Progressing"
    # Our apply produced generation 3, not yet seen by the Deployment controller.
    stale = compute_app_status(_obs(deployment=_dep(), applied_generation=3))
    assert stale["phase"] == "Progressing"
    crash = PodSummary("p1", "r/x:1", None, False, "pod p1: CrashLoopBackOff (restarts: 3)", False)
    degraded = compute_app_status(_obs(deployment=_dep(ready_replicas=2, available_replicas=2), pods=[crash]))
    assert degraded["phase"] == "Degraded" and "CrashLoopBackOff" in degraded["message"]
    conds = {c["type"]: c for c in degraded["conditions"]}
    assert conds["Ready"]["status"] == "False" and conds["Ready"]["observedGeneration"] == 5


def test_pods_that_cannot_be_created_are_degraded_not_rolling_out() -> None:
    refused = 'pods "web-5d8f-x" is forbidden: exceeded quota: choreo-quota, requested: pods=1, used: pods=1, limited: pods=1'
    body = {
        "metadata": {"uid": "u", "generation": 2},
        "spec": {"replicas": 3, "template": {"spec": {"containers": [{"image": "r/x:1"}]}}},
        "status": {
            "observedGeneration": 2,
            "replicas": 1,
            "updatedReplicas": 1,
            "readyReplicas": 1,
            "availableReplicas": 1,
            "conditions": [
                {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable"},
                {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": refused},
            ],
        },
    }
    s = compute_app_status(_obs(deployment=DeploymentSummary.from_body(body)))
    assert s["phase"] == "Degraded" and "exceeded quota" in s["message"] and s["ready"] == "1/3"
    # Cleared by the ReplicaSet controller once pods can be created again: just rolling out.
    body["status"]["conditions"] = [{"type": "ReplicaFailure", "status": "False"}]
    s = compute_app_status(_obs(deployment=DeploymentSummary.from_body(body)))
    assert s["phase"] == "Progressing"


def test_status_refusal_keeps_reason() -> None:
    s = compute_app_status(_obs(refusal=Refusal("Failed", "ImageNotAllowed", "nope")))
    assert s["phase"] == "Failed" and s["message"] == "nope"
    conds = {c["type"]: c for c in s["conditions"]}
    assert conds["Ready"]["reason"] == "ImageNotAllowed"


def test_running_image_prefers_digest() -> None:
    assert running_image("r/x:1", "docker-pullable://r/x@sha256:abc") == "r/x@sha256:abc"
    assert running_image("host:5000/x:1", "sha256:abc") == "host:5000/x@sha256:abc"
    assert running_image("r/x:1", None) == "r/x:1"
