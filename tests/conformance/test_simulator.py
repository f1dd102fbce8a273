"""Workload simulator (emulator only): deployments become available, pods fail on request."""

from __future__ import annotations

import pytest
from kubernetes import client

from tests.conformance.helpers import deployment, unique, wait_for
from tests.fixtures.kube import KubeTarget

pytestmark = pytest.mark.emulator_only


def _status(apps: client.AppsV1Api, name: str, ns: str) -> client.V1DeploymentStatus:
    return apps.read_namespaced_deployment_status(name, ns).status


def test_deployment_becomes_available_with_owned_pods(
    api: client.ApiClient, core: client.CoreV1Api, ns: str
) -> None:
    apps = client.AppsV1Api(api)
    name = unique("sim")
    apps.create_namespaced_deployment(ns, deployment(name, replicas=2))
    st = wait_for(
        lambda: (s := _status(apps, name, ns)) and s.ready_replicas == 2 and s, what="2 ready replicas"
    )
    assert st.available_replicas == 2 and st.updated_replicas == 2 and st.replicas == 2
    assert st.observed_generation == 1
    conds = {c.type: c for c in st.conditions}
    assert conds["Available"].status == "True" and conds["Progressing"].reason == "NewReplicaSetAvailable"
    rs = [
        r
        for r in apps.list_namespaced_replica_set(ns).items
        if r.metadata.owner_references and r.metadata.owner_references[0].name == name
    ]
    assert len(rs) == 1 and rs[0].metadata.owner_references[0].kind == "Deployment"
    pods = [
        p
        for p in core.list_namespaced_pod(ns).items
        if p.metadata.owner_references[0].name == rs[0].metadata.name
    ]
    assert len(pods) == 2 and all(p.status.phase == "Running" for p in pods)
    # a new template rolls out: observedGeneration follows, old pods go away
    apps.patch_namespaced_deployment(
        name, ns, {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "nginx:1.26"}]}}}}
    )
    wait_for(
        lambda: (
            (s := _status(apps, name, ns))
            and s.observed_generation == 2
            and s.ready_replicas == 2
            and s.replicas == 2
        ),
        what="rollout",
    )
    images = {
        p.spec.containers[0].image
        for p in core.list_namespaced_pod(ns).items
        if p.metadata.name.startswith(name)
    }
    assert images == {"nginx:1.26"}


def test_scale_to_zero(api: client.ApiClient, ns: str) -> None:
    apps = client.AppsV1Api(api)
    name = unique("zero")
    apps.create_namespaced_deployment(ns, deployment(name, replicas=0))
    st = wait_for(
        lambda: (s := _status(apps, name, ns)) and s.observed_generation == 1 and s, what="observed"
    )
    assert not st.ready_replicas and not st.replicas
    assert {c.type: c.status for c in st.conditions}["Available"] == "True"


@pytest.mark.parametrize("mode", ["CrashLoopBackOff", "ImagePullBackOff"])
def test_pod_failure_modes(
    kube_target: KubeTarget, api: client.ApiClient, core: client.CoreV1Api, ns: str, mode: str
) -> None:
    apps = client.AppsV1Api(api)
    name = unique("fail")
    srv = kube_target.server
    assert srv is not None
    kube_target.run(lambda: srv.simulator.set_pod_failure(ns, name, mode))
    apps.create_namespaced_deployment(ns, deployment(name, replicas=2))

    def failing_pods() -> list[client.V1Pod]:
        pods = [p for p in core.list_namespaced_pod(ns).items if p.metadata.name.startswith(name)]
        waiting = [
            p for p in pods if p.status.container_statuses and p.status.container_statuses[0].state.waiting
        ]
        return waiting if len(waiting) == 2 else []

    pods = wait_for(failing_pods, what=f"pods in {mode}")
    assert {p.status.container_statuses[0].state.waiting.reason for p in pods} == {mode}
    st = wait_for(lambda: (s := _status(apps, name, ns)) and s.observed_generation == 1 and s, what="status")
    assert not st.ready_replicas
    assert {c.type: c.status for c in st.conditions}["Available"] == "False"
    kube_target.run(lambda: srv.simulator.set_pod_failure(ns, name, None))
    wait_for(lambda: _status(apps, name, ns).ready_replicas == 2, what="recovery")


def test_deleting_deployment_collects_pods(api: client.ApiClient, core: client.CoreV1Api, ns: str) -> None:
    apps = client.AppsV1Api(api)
    name = unique("gc")
    apps.create_namespaced_deployment(ns, deployment(name, replicas=1))
    wait_for(lambda: _status(apps, name, ns).ready_replicas == 1, what="ready")
    apps.delete_namespaced_deployment(name, ns)
    wait_for(
        lambda: not [p for p in core.list_namespaced_pod(ns).items if p.metadata.name.startswith(name)],
        what="pods collected",
    )
