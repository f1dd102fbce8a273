"""HorizontalPodAutoscaler without a metrics API: what kube-controller-manager's HPA controller
does (clamping into [min, max], status, conditions, events), and what the emulator copies.

On the real cluster the controller syncs each HPA periodically (every 2 s in `sandbox cluster`,
15 s by default) and an edit only queues the next sync, so every step here is an eventual one:
polled with a deadline that also covers the default period.
"""

from __future__ import annotations

from typing import Any

from kubernetes import client

from tests.conformance.helpers import deployment, raw, unique, wait_for

SYNC_DEADLINE = 75.0  # two syncs at the default 15 s period, with room for a loaded machine


def _hpa(name: str, lo: int, hi: int, target: str | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target or name},
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


def _status(api: client.ApiClient, ns: str, name: str) -> dict[str, Any]:
    status, body, _ = raw(api, "GET", f"/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers/{name}")
    assert status == 200, body
    return dict(body.get("status") or {})


def _conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status.get("conditions") or []}


def test_hpa_defaults(api: client.ApiClient, ns: str) -> None:
    """autoscaling/v2 defaulting: minReplicas 1 and a CPU 80% metric; behavior stays unset."""
    auto = client.AutoscalingV2Api(api)
    body = _hpa(unique("hpad"), 1, 3)
    del body["spec"]["minReplicas"], body["spec"]["metrics"]
    h = auto.create_namespaced_horizontal_pod_autoscaler(ns, body)
    assert h.spec.min_replicas == 1 and h.spec.behavior is None
    (m,) = h.spec.metrics
    assert (m.type, m.resource.name, m.resource.target.type, m.resource.target.average_utilization) == (
        "Resource",
        "cpu",
        "Utilization",
        80,
    )


def test_hpa_scales_deployment_without_replicas_up_to_min(api: client.ApiClient, ns: str) -> None:
    apps = client.AppsV1Api(api)
    auto = client.AutoscalingV2Api(api)
    core = client.CoreV1Api(api)
    name = unique("hpa")
    body = deployment(name)
    del body["spec"]["replicas"]  # what the operator renders for an autoscaled app
    apps.create_namespaced_deployment(ns, body)
    auto.create_namespaced_horizontal_pod_autoscaler(ns, _hpa(name, 2, 5))
    st = wait_for(
        lambda: (
            (s := apps.read_namespaced_deployment_status(name, ns).status) and s.ready_replicas == 2 and s
        ),
        timeout=SYNC_DEADLINE,
        what="2 ready replicas",
    )
    assert st.replicas == 2
    d = apps.read_namespaced_deployment(name, ns)
    assert d.spec.replicas == 2
    # the controller writes through the scale subresource
    managers = {(m.manager, m.operation, m.subresource) for m in d.metadata.managed_fields}
    assert ("kube-controller-manager", "Update", "scale") in managers
    status = wait_for(
        lambda: (
            (s := _status(api, ns, name))
            and s.get("currentReplicas") == 2
            and {"AbleToScale", "ScalingActive"} <= set(_conditions(s))
            and s
        ),
        timeout=SYNC_DEADLINE,
        what="HPA status",
    )
    assert status["desiredReplicas"] == 2 and status.get("lastScaleTime")
    assert "observedGeneration" not in status
    conds = _conditions(status)
    assert conds["AbleToScale"]["status"] == "True"
    # no metrics API, as on a cluster without metrics-server
    active = conds["ScalingActive"]
    assert (active["status"], active["reason"]) == ("False", "FailedGetResourceMetric")
    assert active["message"] == (
        "the HPA was unable to compute the replica count: failed to get cpu utilization: unable to get "
        "metrics for resource cpu: unable to fetch metrics from resource metrics API: the server could "
        "not find the requested resource (get pods.metrics.k8s.io)"
    )
    assert status["currentMetrics"] == [{"type": ""}]  # one unread entry per metric, as upstream

    def rescaled() -> list[client.CoreV1Event]:
        events = core.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}").items
        return [e for e in events if e.reason == "SuccessfulRescale"]

    (ev,) = wait_for(rescaled, timeout=SYNC_DEADLINE, what="SuccessfulRescale event")
    assert ev.type == "Normal" and ev.source.component == "horizontal-pod-autoscaler"
    assert ev.message == "New size: 2; reason: Current number of replicas below Spec.MinReplicas"


def test_hpa_clamps_down_to_max_and_never_scales_inside_range(api: client.ApiClient, ns: str) -> None:
    apps = client.AppsV1Api(api)
    auto = client.AutoscalingV2Api(api)
    name = unique("hpa")
    apps.create_namespaced_deployment(ns, deployment(name, replicas=4))
    auto.create_namespaced_horizontal_pod_autoscaler(ns, _hpa(name, 1, 2))
    wait_for(
        lambda: apps.read_namespaced_deployment(name, ns).spec.replicas == 2,
        timeout=SYNC_DEADLINE,
        what="clamp to max 2",
    )
    # inside the range nothing moves: a manual scale to 1 (the minimum) stays
    apps.patch_namespaced_deployment_scale(name, ns, {"spec": {"replicas": 1}})
    wait_for(
        lambda: _status(api, ns, name).get("currentReplicas") == 1,
        timeout=SYNC_DEADLINE,
        what="HPA sees 1 replica",
    )
    assert apps.read_namespaced_deployment(name, ns).spec.replicas == 1
    # below the new minimum after an HPA edit: scaled up again
    auto.patch_namespaced_horizontal_pod_autoscaler(name, ns, {"spec": {"minReplicas": 3, "maxReplicas": 3}})
    wait_for(
        lambda: apps.read_namespaced_deployment(name, ns).spec.replicas == 3,
        timeout=SYNC_DEADLINE,
        what="clamp to min 3",
    )


def test_hpa_without_its_target(api: client.ApiClient, ns: str) -> None:
    auto = client.AutoscalingV2Api(api)
    name = unique("hpa")
    auto.create_namespaced_horizontal_pod_autoscaler(ns, _hpa(name, 1, 2, target=unique("missing")))
    status = wait_for(
        lambda: (s := _status(api, ns, name)) and "AbleToScale" in _conditions(s) and s,
        timeout=SYNC_DEADLINE,
        what="AbleToScale condition",
    )
    cond = _conditions(status)["AbleToScale"]
    target = auto.read_namespaced_horizontal_pod_autoscaler(name, ns).spec.scale_target_ref.name
    assert (cond["status"], cond["reason"]) == ("False", "FailedGetScale")
    assert cond["message"] == (
        f'the HPA controller was unable to get the target\'s current scale: deployments.apps "{target}" not found'
    )
    assert status["desiredReplicas"] == 0 and "currentReplicas" not in status
