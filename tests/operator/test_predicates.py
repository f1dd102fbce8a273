"""Table tests of the named event filters, and of the controller's use of them on watch events."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from choreo_dp.operator.config import OperatorConfig
from choreo_dp.operator.controller import Controller
from choreo_dp.operator.keys import AppKey, ChildKey
from choreo_dp.operator.predicates import (
    child_needs_repair,
    deployment_status_changed,
    generation_or_metadata_changed,
    pod_changed,
)
from choreo_dp.operator.state import TrackedChild
from choreo_dp.operator.summaries import DeploymentSummary, PodSummary
from choreo_dp.render import ClusterCapabilities
from tests.operator.fake_kube import FakeKube

APP: dict[str, Any] = {
    "metadata": {
        "name": "web",
        "namespace": "ns",
        "uid": "u1",
        "generation": 3,
        "labels": {"a": "1"},
        "annotations": {"choreo.dev/revision": "7"},
        "finalizers": ["f"],
    },
    "spec": {"image": "i:1"},
    "status": {"phase": "Ready"},
}


def _edit(path: str, value: Any) -> dict[str, Any]:
    body = copy.deepcopy(APP)
    *parents, last = path.split(".")
    node = body
    for part in parents:
        node = node[part]
    if value is None:
        node.pop(last, None)
    else:
        node[last] = value
    return body


@pytest.mark.parametrize(
    ("new", "expected"),
    [
        pytest.param(copy.deepcopy(APP), False, id="same object again (resync, relist)"),
        pytest.param(_edit("status.phase", "Failed"), False, id="status only: our own write back"),
        pytest.param(_edit("metadata.resourceVersion", "99"), False, id="resourceVersion only"),
        pytest.param(_edit("metadata.generation", 4), True, id="spec edit bumps generation"),
        pytest.param(_edit("metadata.labels", {"a": "2"}), True, id="label"),
        pytest.param(_edit("metadata.annotations", {"choreo.dev/revision": "8"}), True, id="annotation"),
        pytest.param(_edit("metadata.deletionTimestamp", "2026-01-01T00:00:00Z"), True, id="deletion"),
        pytest.param(_edit("metadata.finalizers", None), True, id="finalizer removed"),
        pytest.param(_edit("metadata.uid", "u2"), True, id="deleted and created again"),
    ],
)
def test_generation_or_metadata_changed(new: dict[str, Any], expected: bool) -> None:
    assert generation_or_metadata_changed(APP, new) is expected


def test_generation_or_metadata_changed_on_first_sight() -> None:
    assert generation_or_metadata_changed(None, APP) is True


def _summary(**kw: Any) -> DeploymentSummary:
    base: dict[str, Any] = dict(
        uid="d1",
        image="i:1",
        progress_deadline_exceeded=False,
        progressing_message=None,
        generation=2,
        observed_generation=2,
        spec_replicas=3,
        replicas=3,
        updated_replicas=3,
        ready_replicas=2,
        available_replicas=2,
    )
    base.update(kw)
    return DeploymentSummary(**base)


IN_SYNC = TrackedChild("a1", True)
DRIFTED = TrackedChild("a1", False)


@pytest.mark.parametrize(
    ("old", "new", "tracked", "expected"),
    [
        pytest.param(_summary(), _summary(), IN_SYNC, False, id="nothing the status reads moved"),
        pytest.param(_summary(), _summary(ready_replicas=3), IN_SYNC, True, id="a replica became ready"),
        pytest.param(_summary(), _summary(observed_generation=1), IN_SYNC, True, id="rollout started"),
        pytest.param(None, _summary(), IN_SYNC, True, id="first sight"),
        pytest.param(_summary(), None, None, True, id="deleted"),
        pytest.param(_summary(), _summary(), DRIFTED, True, id="edited by hand: repair"),
        pytest.param(_summary(), _summary(), None, True, id="not tracked"),
    ],
)
def test_deployment_status_changed(
    old: DeploymentSummary | None, new: DeploymentSummary | None, tracked: TrackedChild | None, expected: bool
) -> None:
    assert deployment_status_changed(old, new, tracked) is expected


POD = PodSummary("p1", "i:1", None, True, None, False)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        pytest.param(POD, POD, False, id="same"),
        pytest.param(None, POD, True, id="new pod"),
        pytest.param(POD, None, True, id="pod gone"),
        pytest.param(None, None, False, id="unknown pod gone"),
        pytest.param(POD, PodSummary("p1", "i:1", None, False, "CrashLoopBackOff", False), True, id="crash"),
    ],
)
def test_pod_changed(old: PodSummary | None, new: PodSummary | None, expected: bool) -> None:
    assert pod_changed(old, new) is expected


@pytest.mark.parametrize(
    ("tracked", "expected"),
    [(IN_SYNC, False), (DRIFTED, True), (None, True)],
    ids=["in sync", "drifted", "gone"],
)
def test_child_needs_repair(tracked: TrackedChild | None, expected: bool) -> None:
    assert child_needs_repair(tracked) is expected


# --- the predicates at work in the controller's watch handlers --------------------------------


def _deployment(generation: int, replicas: int, ready: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "web",
            "namespace": "ns",
            "uid": "d1",
            "generation": generation,
            "labels": {"choreo.dev/app": "web", "app.kubernetes.io/managed-by": "choreo-dp"},
            "ownerReferences": [{"uid": "a1", "controller": True}],
        },
        "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "c", "image": "i:1"}]}}},
        "status": {"observedGeneration": generation, "readyReplicas": ready},
    }


async def test_deployment_events_enqueue_only_when_status_facts_or_sync_change() -> None:
    ctl = Controller(
        FakeKube(), OperatorConfig(secrets_factory=None), ClusterCapabilities(gateway_api=False), None
    )
    owner = AppKey("ns", "web")
    body = _deployment(1, 2, 0)
    key = ChildKey.of(body)
    ctl.record.desired[key] = json.dumps({"spec": {"replicas": 2}}, sort_keys=True)

    async def enqueued() -> list[AppKey]:
        """Drain the queue: the keys the last events enqueued."""
        out = []
        while len(ctl.queue):
            got = await ctl.queue.get()
            ctl.queue.done(got)
            out.append(got)
        return out  # type: ignore[return-value]

    ctl.on_child_event("ADDED", body)
    assert await enqueued() == [owner] and ctl.context.cache.in_sync(key, owner)

    ctl.on_child_event("MODIFIED", _deployment(1, 2, 0))  # nothing the status reads moved
    assert await enqueued() == []
    ctl.on_child_event("MODIFIED", _deployment(1, 2, 1))  # a replica became ready
    assert await enqueued() == [owner]

    # Scaled by hand: the generation moves, the drift check runs again and finds it out of sync.
    ctl.on_child_event("MODIFIED", _deployment(2, 5, 1))
    assert not ctl.context.cache.in_sync(key, owner)
    assert await enqueued() == [owner]
    # Same facts again: still out of sync, so still worth a reconcile (the repair).
    ctl.on_child_event("MODIFIED", _deployment(2, 5, 1))
    assert await enqueued() == [owner]


async def test_status_only_events_of_an_app_do_not_enqueue_it() -> None:
    ctl = Controller(
        FakeKube(), OperatorConfig(secrets_factory=None), ClusterCapabilities(gateway_api=False), None
    )
    key = AppKey("ns", "web")
    ctl.on_app_event("ADDED", copy.deepcopy(APP))
    assert len(ctl.queue) == 1
    await ctl.queue.get()
    ctl.queue.done(key)
    ctl.on_app_event("MODIFIED", _edit("status.phase", "Failed"))
    assert len(ctl.queue) == 0
    assert ctl.context.cache.app(key)["status"] == {"phase": "Failed"}  # type: ignore[index]
    ctl.on_app_event("MODIFIED", _edit("metadata.generation", 4))
    assert len(ctl.queue) == 1
    ctl.queue.shut_down()
