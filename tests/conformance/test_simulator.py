"""Workloads: Deployments become available with owned ReplicaSets and pods, roll out, scale to
zero, fail on request and are collected; the emulator's simulator against kube-controller-manager,
kube-scheduler and kwok.

Controllers are asynchronous on the real cluster (and the simulator on the emulator), so each
state is awaited whole, with a deadline, before it is asserted on.
"""

from __future__ import annotations

import pytest
from kubernetes import client

from tests.conformance.helpers import deployment, set_pod_failure, unique, wait_for
from tests.fixtures.kube import KubeTarget

DEADLINE = 60.0


def _status(apps: client.AppsV1Api, name: str, ns: str) -> client.V1DeploymentStatus:
    return apps.read_namespaced_deployment_status(name, ns).status


def _conds(st: client.V1DeploymentStatus) -> dict[str, client.V1DeploymentCondition]:
    return {c.type: c for c in st.conditions or []}


def _pods(core: client.CoreV1Api, ns: str, name: str, live: bool = True) -> list[client.V1Pod]:
    pods = [p for p in core.list_namespaced_pod(ns).items if p.metadata.name.startswith(f"{name}-")]
    return [p for p in pods if not (live and p.metadata.deletion_timestamp)]


def _complete(apps: client.AppsV1Api, name: str, ns: str, generation: int, replicas: int) -> bool:
    st = _status(apps, name, ns)
    progressing = _conds(st).get("Progressing")
    return bool(
        st.observed_generation == generation
        and (st.ready_replicas or 0) == replicas
        and (st.replicas or 0) == replicas
        and progressing is not None
        and progressing.reason == "NewReplicaSetAvailable"
    )


def test_deployment_becomes_available_with_owned_pods(
    api: client.ApiClient, core: client.CoreV1Api, ns: str
) -> None:
    apps = client.AppsV1Api(api)
    name = unique("sim")
    apps.create_namespaced_deployment(ns, deployment(name, replicas=2))
    wait_for(lambda: _complete(apps, name, ns, 1, 2), timeout=DEADLINE, what="2 ready replicas")
    st = _status(apps, name, ns)
    assert st.available_replicas == 2 and st.updated_replicas == 2 and st.replicas == 2
    assert st.observed_generation == 1
    conds = _conds(st)
    assert conds["Available"].status == "True" and conds["Progressing"].reason == "NewReplicaSetAvailable"
    rs = [
        r
        for r in apps.list_namespaced_replica_set(ns).items
        if r.metadata.owner_references and r.metadata.owner_references[0].name == name
    ]
    assert len(rs) == 1 and rs[0].metadata.owner_references[0].kind == "Deployment"
    assert rs[0].metadata.labels["pod-template-hash"] and rs[0].metadata.name.startswith(f"{name}-")
    pods = [
        p
        for p in core.list_namespaced_pod(ns).items
        if p.metadata.owner_references and p.metadata.owner_references[0].name == rs[0].metadata.name
    ]
    assert len(pods) == 2 and all(p.status.phase == "Running" for p in pods)
    assert all(p.spec.node_name and p.status.pod_ip for p in pods)
    # a new template rolls out: observedGeneration follows, old pods go away
    apps.patch_namespaced_deployment(
        name, ns, {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "nginx:1.26"}]}}}}
    )
    wait_for(lambda: _complete(apps, name, ns, 2, 2), timeout=DEADLINE, what="rollout")
    # pods of the old ReplicaSet terminate asynchronously (kwok, or the simulator, removes them)
    wait_for(
        lambda: {p.spec.containers[0].image for p in _pods(core, ns, name, live=False)} == {"nginx:1.26"},
        timeout=DEADLINE,
        what="old pods to go away",
    )


def test_scale_to_zero(api: client.ApiClient, ns: str) -> None:
    apps = client.AppsV1Api(api)
    name = unique("zero")
    apps.create_namespaced_deployment(ns, deployment(name, replicas=0))
    st = wait_for(
        lambda: (
            (s := _status(apps, name, ns)) and s.observed_generation == 1 and "Available" in _conds(s) and s
        ),
        timeout=DEADLINE,
        what="observed",
    )
    assert not st.ready_replicas and not st.replicas
    assert _conds(st)["Available"].status == "True"


@pytest.mark.parametrize("mode", ["CrashLoopBackOff", "ImagePullBackOff"])
def test_pod_failure_modes(
    kube_target: KubeTarget, api: client.ApiClient, core: client.CoreV1Api, ns: str, mode: str
) -> None:
    apps = client.AppsV1Api(api)
    name = unique("fail")
    apps.create_namespaced_deployment(ns, deployment(name, replicas=2))
    set_pod_failure(kube_target, ns, name, mode)
    pods = _pods(core, ns, name)
    assert len(pods) == 2
    assert {p.status.container_statuses[0].state.waiting.reason for p in pods} == {mode}
    assert all(not p.status.container_statuses[0].ready for p in pods)
    phases = {p.status.phase for p in pods}
    assert phases == ({"Running"} if mode == "CrashLoopBackOff" else {"Pending"})
    if mode == "CrashLoopBackOff":
        assert all(p.status.container_statuses[0].restart_count > 0 for p in pods)
    st = wait_for(
        lambda: (
            (s := _status(apps, name, ns))
            and s.observed_generation == 1
            and "Available" in _conds(s)
            and _conds(s)["Available"].status == "False"
            and s
        ),
        timeout=DEADLINE,
        what="the Deployment to report it unavailable",
    )
    assert not st.ready_replicas
    assert _conds(st)["Available"].reason == "MinimumReplicasUnavailable"
    set_pod_failure(kube_target, ns, name, None)
    wait_for(lambda: _status(apps, name, ns).ready_replicas == 2, timeout=DEADLINE, what="recovery")


def test_deleting_deployment_collects_pods(api: client.ApiClient, core: client.CoreV1Api, ns: str) -> None:
    apps = client.AppsV1Api(api)
    name = unique("gc")
    apps.create_namespaced_deployment(ns, deployment(name, replicas=1))
    wait_for(lambda: _status(apps, name, ns).ready_replicas == 1, timeout=DEADLINE, what="ready")
    apps.delete_namespaced_deployment(name, ns)
    wait_for(lambda: not _pods(core, ns, name, live=False), timeout=DEADLINE, what="pods collected")
    wait_for(
        lambda: (
            not [
                r
                for r in apps.list_namespaced_replica_set(ns).items
                if r.metadata.owner_references and r.metadata.owner_references[0].name == name
            ]
        ),
        timeout=DEADLINE,
        what="ReplicaSet collected",
    )
