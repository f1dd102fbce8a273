"""The kwok Stages that stand in for a kubelet's failures: pure shape checks, table-driven."""

from __future__ import annotations

from typing import Any

import pytest

from choreo_sandbox.cluster.control_plane import kubelet_like
from choreo_sandbox.cluster.workload_faults import (
    FAILURE_MODES,
    HEALTHY,
    failure_stage,
    pod_verdict,
    stage_name,
)


def _pod(*, ready: str | None = None, waiting: str | None = None, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "p", "namespace": "ns"}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status: dict[str, Any] = {"conditions": [{"type": "PodScheduled", "status": "True"}]}
    if ready is not None:
        status["conditions"].append({"type": "Ready", "status": ready})
    if waiting is not None:
        status["containerStatuses"] = [{"name": "app", "state": {"waiting": {"reason": waiting}}}]
    return {"metadata": meta, "status": status}


@pytest.mark.parametrize(
    ("pod", "verdict"),
    [
        (_pod(), None),  # scheduled, not yet judged by kwok
        (_pod(ready="True"), HEALTHY),
        (_pod(ready="False"), None),  # not ready for a reason that is not ours
        (_pod(ready="False", waiting="CrashLoopBackOff"), "CrashLoopBackOff"),
        (_pod(ready="False", waiting="ImagePullBackOff"), "ImagePullBackOff"),
        (_pod(ready="False", waiting="ContainerCreating"), None),
        (_pod(ready="True", deleting=True), None),  # going away: counts for nothing
    ],
)
def test_pod_verdict(pod: dict[str, Any], verdict: str | None) -> None:
    assert pod_verdict(pod) == verdict


@pytest.mark.parametrize("mode", FAILURE_MODES)
def test_failure_stage_selects_only_the_deployments_unjudged_pods(mode: str) -> None:
    stage = failure_stage("shop", {"app": "web", "tier": "x"}, mode, "web")
    assert stage["kind"] == "Stage" and stage["metadata"]["name"] == stage_name("shop", "web", mode)
    exprs = {e["key"]: e for e in stage["spec"]["selector"]["matchExpressions"]}
    assert exprs[".metadata.namespace"]["values"] == ["shop"]
    assert exprs['.metadata.labels["app"]']["values"] == ["web"]
    assert exprs['.metadata.labels["tier"]']["values"] == ["x"]
    # fires once: a pod kwok already judged (Ready True or False) never matches again
    ready = exprs['.status.conditions.[] | select( .type == "Ready" ) | .status']
    assert ready["operator"] == "NotIn" and set(ready["values"]) == {"True", "False"}
    # wins over kwok's zero-weight pod-ready
    assert stage["spec"]["weight"] > 0
    assert mode in stage["spec"]["next"]["statusTemplate"]


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="failure mode"):
        failure_stage("ns", {}, "OOMKilled", "web")


def test_stage_names_are_distinct_per_mode_and_bounded() -> None:
    long = "x" * 63
    names = {stage_name("ns", long, m) for m in FAILURE_MODES}
    assert len(names) == len(FAILURE_MODES)
    assert all(len(n) <= 63 for n in names)
    assert stage_name("a", "web", "CrashLoopBackOff") != stage_name("b", "web", "CrashLoopBackOff")


def test_pod_ready_stage_leaves_image_pull_failures_waiting_and_reports_image_ids() -> None:
    template = "containerStatuses:\n- image: {{ .image | Quote }}\n  name: {{ .name | Quote }}\n"
    stage = {
        "metadata": {"name": "pod-ready"},
        "spec": {"selector": {"matchExpressions": []}, "next": {"statusTemplate": template}},
    }
    amended = kubelet_like(stage)
    assert "  imageID: " in amended["spec"]["next"]["statusTemplate"].splitlines()[2]
    exprs = amended["spec"]["selector"]["matchExpressions"]
    assert exprs == [
        {
            "key": ".status.containerStatuses.[].state.waiting.reason",
            "operator": "NotIn",
            "values": ["ImagePullBackOff", "ErrImagePull"],
        }
    ]
    other = {"metadata": {"name": "pod-complete"}, "spec": {"selector": {"matchExpressions": []}}}
    assert kubelet_like(other)["spec"]["selector"]["matchExpressions"] == []
