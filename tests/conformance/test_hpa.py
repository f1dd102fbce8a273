"""HPA emulation (emulator only): an HPA clamps its Deployment into [min, max] like the real controller."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from tests.conformance.helpers import deployment, unique, wait_for

pytestmark = pytest.mark.emulator_only


def _hpa(name: str, lo: int, hi: int) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": lo,
            "maxReplicas": hi,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}},
                }
            ],
        },
    }


def test_hpa_scales_deployment_without_replicas_up_to_min(api: client.ApiClient, ns: str) -> None:
    apps = client.AppsV1Api(api)
    auto = client.AutoscalingV2Api(api)
    name = unique("hpa")
    body = deployment(name)
    del body["spec"]["replicas"]  # what the operator renders for an autoscaled app
    apps.create_namespaced_deployment(ns, body)
    auto.create_namespaced_horizontal_pod_autoscaler(ns, _hpa(name, 2, 5))
    st = wait_for(
        lambda: (
            (s := apps.read_namespaced_deployment_status(name, ns).status) and s.ready_replicas == 2 and s
        ),
        what="2 ready replicas",
    )
    assert st.replicas == 2
    d = apps.read_namespaced_deployment(name, ns)
    assert d.spec.replicas == 2
    managers = {(m.manager, m.operation) for m in d.metadata.managed_fields}
    assert ("kube-controller-manager", "Update") in managers
    h = wait_for(
        lambda: (
            (h := auto.read_namespaced_horizontal_pod_autoscaler(name, ns))
            and h.status
            and h.status.current_replicas == 2
            and {c.type for c in h.status.conditions or []} >= {"AbleToScale", "ScalingActive"}
            and h
        ),
        what="HPA status",
    )
    assert h.status.desired_replicas == 2 and h.status.last_scale_time is not None
    conds = {c.type: c for c in h.status.conditions}
    assert conds["AbleToScale"].status == "True"
    # no metrics API in the emulator, as on a cluster without metrics-server
    assert (conds["ScalingActive"].status, conds["ScalingActive"].reason) == (
        "False",
        "FailedGetResourceMetric",
    )


def test_hpa_clamps_down_to_max_and_never_scales_inside_range(api: client.ApiClient, ns: str) -> None:
    apps = client.AppsV1Api(api)
    auto = client.AutoscalingV2Api(api)
    name = unique("hpa")
    apps.create_namespaced_deployment(ns, deployment(name, replicas=4))
    auto.create_namespaced_horizontal_pod_autoscaler(ns, _hpa(name, 1, 2))
    wait_for(lambda: apps.read_namespaced_deployment(name, ns).spec.replicas == 2, what="clamp to max 2")
    # inside the range nothing moves: a manual scale to 1 (the minimum) stays
    apps.patch_namespaced_deployment_scale(name, ns, {"spec": {"replicas": 1}})
    wait_for(
        lambda: (
            (h := auto.read_namespaced_horizontal_pod_autoscaler(name, ns).status) and h.current_replicas == 1
        ),
        what="HPA sees 1 replica",
    )
    assert apps.read_namespaced_deployment(name, ns).spec.replicas == 1
    # below the new minimum after an HPA edit: scaled up again
    auto.patch_namespaced_horizontal_pod_autoscaler(name, ns, {"spec": {"minReplicas": 3, "maxReplicas": 3}})
    wait_for(lambda: apps.read_namespaced_deployment(name, ns).spec.replicas == 3, what="clamp to min 3")
