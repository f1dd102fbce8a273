"""ResourceQuota and LimitRange: the admission plugins, the quota controller and what the
ReplicaSet controller makes of a refused pod, on the emulator and on kube-apiserver 1.36.

Every message is compared whole: these texts reach users (the operator copies a Deployment's
ReplicaFailure message into a ChoreoApp's status), so the emulator must word them as the real
server does.  Each test gets its own namespace, since quotas and LimitRanges act namespace-wide.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.conformance.helpers import deployment, raw, unique, wait_for

DEADLINE = 90.0
LIMITS = {"cpu": "500m", "memory": "512Mi"}
REQUESTS = {"cpu": "50m", "memory": "64Mi"}


@pytest.fixture
def fresh(core: client.CoreV1Api) -> Iterator[str]:
    """A namespace of its own, usable for pods (kube-apiserver's ServiceAccount admission
    refuses pods until the namespace's ``default`` ServiceAccount exists)."""
    name = unique("adm")
    core.create_namespace({"metadata": {"name": name}})

    def has_default_sa() -> bool:
        try:
            core.read_namespaced_service_account("default", name)
        except client.ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    wait_for(has_default_sa, timeout=30, what="the default ServiceAccount")
    yield name
    try:
        core.delete_namespace(name)
    except client.ApiException as exc:
        if exc.status != 404:
            raise


def pod(
    name: str, resources: dict[str, Any] | None = None, init: dict[str, Any] | None = None
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "app", "image": "nginx:1.25"}
    if resources is not None:
        container["resources"] = resources
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [container]},
    }
    if init is not None:
        body["spec"]["initContainers"] = [{"name": "setup", "image": "busybox:1.36", "resources": init}]
    return body


def create(
    api: client.ApiClient, path: str, body: Any, query: dict[str, Any] | None = None
) -> tuple[int, Any, dict[str, str]]:
    return raw(api, "POST", path, query=query, body=body)


def refused(api: client.ApiClient, path: str, body: Any, code: int) -> dict[str, Any]:
    status, out, _ = create(api, path, body)
    assert status == code, out
    assert out["kind"] == "Status" and out["code"] == code
    return dict(out)


def make_quota(api: client.ApiClient, ns: str, name: str, hard: dict[str, str]) -> dict[str, Any]:
    """Create a ResourceQuota and wait for the controller's first sync: until then the
    admission plugin does not enforce it (it only looks at ``status.hard``)."""
    status, body, _ = create(
        api, f"/api/v1/namespaces/{ns}/resourcequotas", {"metadata": {"name": name}, "spec": {"hard": hard}}
    )
    assert status == 201, body
    return wait_for(lambda: synced(api, ns, name), timeout=DEADLINE, what=f"quota {name} to be synced")


def synced(api: client.ApiClient, ns: str, name: str) -> dict[str, Any] | None:
    _, q, _ = raw(api, "GET", f"/api/v1/namespaces/{ns}/resourcequotas/{name}")
    st = q.get("status") or {}
    ok = st.get("hard") == q["spec"]["hard"] and set(st.get("used") or {}) == set(q["spec"]["hard"])
    return dict(q) if ok else None


def used(api: client.ApiClient, ns: str, name: str) -> dict[str, str]:
    _, q, _ = raw(api, "GET", f"/api/v1/namespaces/{ns}/resourcequotas/{name}")
    return dict((q.get("status") or {}).get("used") or {})


# ----- ResourceQuota ------------------------------------------------------------------------
def test_quota_status_charges_and_refusals(api: client.ApiClient, fresh: str) -> None:
    ns = fresh
    pods = f"/api/v1/namespaces/{ns}/pods"
    hard = {"pods": "2", "requests.cpu": "1", "limits.memory": "1Gi", "count/services": "1"}
    q = make_quota(api, ns, "compute", hard)
    assert q["status"] == {
        "hard": hard,
        "used": {"pods": "0", "requests.cpu": "0", "limits.memory": "0", "count/services": "0"},
    }

    status, p1, _ = create(api, pods, pod("p1", {"requests": {"cpu": "500m"}, "limits": {"memory": "512Mi"}}))
    assert status == 201, p1
    # Requests default to limits on a pod (not on a template), so memory is requested too.
    assert p1["spec"]["containers"][0]["resources"] == {
        "limits": {"memory": "512Mi"},
        "requests": {"cpu": "500m", "memory": "512Mi"},
    }
    assert p1["status"]["qosClass"] == "Burstable"
    # The admission plugin charges the quota before the pod is stored: no waiting for a controller.
    assert used(api, ns, "compute") == {
        "pods": "1",
        "requests.cpu": "500m",
        "limits.memory": "512Mi",
        "count/services": "0",
    }

    # A dry run is admitted (or refused) the same way, but charges nothing.
    status, _, _ = create(
        api, pods, pod("dry", {"requests": {"cpu": "100m"}, "limits": {"memory": "1Mi"}}), {"dryRun": "All"}
    )
    assert status == 201
    assert used(api, ns, "compute")["requests.cpu"] == "500m"

    out = refused(api, pods, pod("p2", {"requests": {"cpu": "600m"}, "limits": {"memory": "256Mi"}}), 403)
    assert out["message"] == (
        'pods "p2" is forbidden: exceeded quota: compute, requested: requests.cpu=600m, '
        "used: requests.cpu=500m, limited: requests.cpu=1"
    )
    assert out["reason"] == "Forbidden" and out["details"] == {"name": "p2", "kind": "pods"}

    out = refused(api, pods, pod("p3", {"requests": {"cpu": "2"}, "limits": {"memory": "2Gi"}}), 403)
    assert out["message"] == (
        'pods "p3" is forbidden: exceeded quota: compute, requested: limits.memory=2Gi,requests.cpu=2, '
        "used: limits.memory=512Mi,requests.cpu=500m, limited: limits.memory=1Gi,requests.cpu=1"
    )

    # A quota on requests.cpu / limits.memory makes every container state them.
    out = refused(api, pods, pod("bare"), 403)
    assert out["message"] == (
        'pods "bare" is forbidden: failed quota: compute: must specify limits.memory for: app; requests.cpu for: app'
    )

    svc = {"metadata": {"name": "s1"}, "spec": {"ports": [{"port": 80}]}}
    status, _, _ = create(api, f"/api/v1/namespaces/{ns}/services", svc)
    assert status == 201
    out = refused(api, f"/api/v1/namespaces/{ns}/services", {**svc, "metadata": {"name": "s2"}}, 403)
    assert out["message"] == (
        'services "s2" is forbidden: exceeded quota: compute, requested: count/services=1, '
        "used: count/services=1, limited: count/services=1"
    )
    assert out["details"] == {"name": "s2", "kind": "services"}

    # Deleting frees the usage again (the controller recounts), and raising a limit shows in status.hard.
    status, _, _ = raw(api, "DELETE", f"{pods}/p1", body={"gracePeriodSeconds": 0})
    assert status == 200
    wait_for(
        lambda: (
            used(api, ns, "compute")
            == {"pods": "0", "requests.cpu": "0", "limits.memory": "0", "count/services": "1"}
        ),
        timeout=DEADLINE,
        what="usage to drop after the pod is deleted",
    )
    status, _, _ = raw(
        api,
        "PATCH",
        f"/api/v1/namespaces/{ns}/resourcequotas/compute",
        body={"spec": {"hard": {"count/services": "2"}}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert status == 200
    wait_for(lambda: synced(api, ns, "compute"), timeout=DEADLINE, what="status.hard to follow the spec")
    status, _, _ = create(api, f"/api/v1/namespaces/{ns}/services", {**svc, "metadata": {"name": "s2"}})
    assert status == 201


def test_quota_counts_objects_by_resource_and_group(api: client.ApiClient, fresh: str) -> None:
    ns = fresh
    make_quota(api, ns, "objects", {"count/deployments.apps": "0", "secrets": "1"})
    out = refused(api, f"/apis/apps/v1/namespaces/{ns}/deployments", deployment("web"), 403)
    assert out["message"] == (
        'deployments.apps "web" is forbidden: exceeded quota: objects, requested: count/deployments.apps=1, '
        "used: count/deployments.apps=0, limited: count/deployments.apps=0"
    )
    assert out["details"] == {"name": "web", "group": "apps", "kind": "deployments"}
    status, _, _ = create(api, f"/api/v1/namespaces/{ns}/secrets", {"metadata": {"name": "one"}})
    assert status == 201
    out = refused(api, f"/api/v1/namespaces/{ns}/secrets", {"metadata": {"name": "two"}}, 403)
    assert out["message"] == (
        'secrets "two" is forbidden: exceeded quota: objects, requested: secrets=1, used: secrets=1, limited: secrets=1'
    )


def test_quota_spec_is_decoded_validated_and_warned_about(api: client.ApiClient, fresh: str) -> None:
    path = f"/api/v1/namespaces/{fresh}/resourcequotas"
    hard = {"requests.cpu": "1000m", "requests.memory": "1.5Gi", "limits.memory": "1Gi", "pods": "10"}
    status, q, headers = create(api, path, {"metadata": {"name": "canon"}, "spec": {"hard": hard}})
    assert status == 201, q
    assert q["spec"]["hard"] == {
        "requests.cpu": "1",
        "requests.memory": "1536Mi",
        "limits.memory": "1Gi",
        "pods": "10",
    }
    assert (
        headers.get("Warning")
        == '299 - "ResourceQuota requests.memory (1536Mi) should be less than limits.memory (1Gi)"'
    )

    out = refused(api, path, {"metadata": {"name": "junk"}, "spec": {"hard": {"pods": "lots"}}}, 400)
    assert out["message"] == (
        'ResourceQuota in version "v1" cannot be handled as a ResourceQuota: quantities must match the '
        "regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
    )
    out = refused(api, path, {"metadata": {"name": "neg"}, "spec": {"hard": {"cpu": "-1"}}}, 422)
    assert (
        out["message"]
        == 'ResourceQuota "neg" is invalid: spec.hard[cpu]: Invalid value: "-1": must be greater than or equal to 0'
    )
    out = refused(api, path, {"metadata": {"name": "half"}, "spec": {"hard": {"pods": "1.5"}}}, 422)
    assert (
        out["message"]
        == 'ResourceQuota "half" is invalid: spec.hard[pods]: Invalid value: "1500m": must be an integer'
    )


# ----- LimitRange ---------------------------------------------------------------------------
def _limit_range(api: client.ApiClient, ns: str, name: str, limits: list[dict[str, Any]]) -> dict[str, Any]:
    status, lr, _ = create(
        api, f"/api/v1/namespaces/{ns}/limitranges", {"metadata": {"name": name}, "spec": {"limits": limits}}
    )
    assert status == 201, lr
    return dict(lr)


def test_limit_range_defaults_fill_in_pod_resources(
    api: client.ApiClient, core: client.CoreV1Api, fresh: str
) -> None:
    ns = fresh
    pods = f"/api/v1/namespaces/{ns}/pods"
    _limit_range(api, ns, "defaults", [{"type": "Container", "default": LIMITS, "defaultRequest": REQUESTS}])

    status, p, _ = create(api, pods, pod("plain", init={"limits": {"memory": "128Mi"}}))
    assert status == 201, p
    assert p["spec"]["containers"][0]["resources"] == {"limits": LIMITS, "requests": REQUESTS}
    assert p["spec"]["initContainers"][0]["resources"] == {
        "limits": {"cpu": "500m", "memory": "128Mi"},
        "requests": {"cpu": "50m", "memory": "128Mi"},
    }
    assert p["metadata"]["annotations"]["kubernetes.io/limit-ranger"] == (
        "LimitRanger plugin set: cpu, memory request for container app; cpu, memory limit for container app; "
        "cpu request for init container setup; cpu limit for init container setup"
    )
    assert p["status"]["qosClass"] == "Burstable"

    status, p, _ = create(api, pods, pod("capped", {"limits": {"cpu": "1"}}))
    assert status == 201, p
    assert p["spec"]["containers"][0]["resources"] == {
        "limits": {"cpu": "1", "memory": "512Mi"},
        "requests": {"cpu": "1", "memory": "64Mi"},
    }
    assert p["metadata"]["annotations"]["kubernetes.io/limit-ranger"] == (
        "LimitRanger plugin set: memory request for container app; memory limit for container app"
    )

    # The default limit is below what the container requests: the pod is invalid, not clamped.
    out = refused(api, pods, pod("greedy", {"requests": {"cpu": "1"}}), 422)
    assert out["message"] == (
        'Pod "greedy" is invalid: spec.containers[0].resources.requests: Invalid value: "1": '
        "must be less than or equal to cpu limit of 500m"
    )

    # Pods a Deployment's ReplicaSet creates get the same defaults (the template keeps none).
    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment(ns, deployment("web", replicas=1))

    def defaulted() -> list[client.V1Pod] | None:
        found = core.list_namespaced_pod(ns, label_selector="app=web").items
        return found or None

    (made,) = wait_for(defaulted, timeout=DEADLINE, what="the Deployment's pod")
    res = made.spec.containers[0].resources
    assert res.limits == LIMITS and res.requests == REQUESTS
    d = apps.read_namespaced_deployment("web", ns)
    assert d.spec.template.spec.containers[0].resources.to_dict() == {
        "claims": None,
        "limits": None,
        "requests": None,
    }


def test_limit_range_is_defaulted_and_validated(api: client.ApiClient, fresh: str) -> None:
    lr = _limit_range(
        api, fresh, "bounds", [{"type": "Container", "max": {"cpu": "1"}, "min": {"memory": "10Mi"}}]
    )
    # SetDefaults_LimitRangeItem: the default limit is the max, the default request the default
    # limit, else the min.
    assert lr["spec"]["limits"] == [
        {
            "type": "Container",
            "max": {"cpu": "1"},
            "min": {"memory": "10Mi"},
            "default": {"cpu": "1"},
            "defaultRequest": {"cpu": "1", "memory": "10Mi"},
        }
    ]
    body = {
        "metadata": {"name": "bad"},
        "spec": {
            "limits": [
                {"type": "Container", "max": {"cpu": "1"}, "min": {"cpu": "2"}, "default": {"cpu": "3"}}
            ]
        },
    }
    out = refused(api, f"/api/v1/namespaces/{fresh}/limitranges", body, 422)
    assert out["message"] == (
        'LimitRange "bad" is invalid: ['
        'spec.limits[0].min[cpu]: Invalid value: "2": min value 2 is greater than max value 1, '
        'spec.limits[0].defaultRequest[cpu]: Invalid value: "3": default request value 3 is greater than max value 1, '
        'spec.limits[0].default[cpu]: Invalid value: "1": default value 3 is greater than max value 1]'
    )


def test_limit_range_bounds_refuse_pods(api: client.ApiClient, fresh: str) -> None:
    pods = f"/api/v1/namespaces/{fresh}/pods"
    _limit_range(
        api,
        fresh,
        "bounds",
        [
            {
                "type": "Container",
                "max": {"cpu": "1", "memory": "1Gi"},
                "min": {"cpu": "10m"},
                "maxLimitRequestRatio": {"cpu": "4"},
                "default": {"cpu": "200m"},
                "defaultRequest": {"cpu": "100m", "memory": "100Mi"},
            },
            {"type": "Pod", "max": {"cpu": "1500m"}},
        ],
    )
    cases = {
        "over": (
            {"limits": {"cpu": "2"}},
            "[maximum cpu usage per Container is 1, but limit is 2, maximum cpu usage per Pod is 1500m, but limit is 2]",
        ),
        "ratio": (
            {"requests": {"cpu": "10m"}, "limits": {"cpu": "900m"}},
            "cpu max limit to request ratio per Container is 4, but provided ratio is 90.000000",
        ),
        "tiny": (
            {"requests": {"cpu": "1m"}, "limits": {"cpu": "2m", "memory": "2Gi"}},
            "[minimum cpu usage per Container is 10m, but request is 1m, "
            "maximum memory usage per Container is 1Gi, but limit is 2Gi]",
        ),
    }
    for name, (resources, why) in cases.items():
        out = refused(api, pods, pod(name, resources), 403)
        assert out["message"] == f'pods "{name}" is forbidden: {why}', name
        assert out["details"] == {"name": name, "kind": "pods"}
    status, ok, _ = create(api, pods, pod("fits", {"limits": {"cpu": "400m"}}))
    assert status == 201, ok


# ----- the ReplicaSet controller ------------------------------------------------------------
REFUSAL = re.compile(
    r'^pods "(?P<pod>web-[a-z0-9]+-[a-z0-9]{5})" is forbidden: exceeded quota: one-pod, '
    r"requested: pods=1, used: pods=1, limited: pods=1$"
)


def test_deployment_pods_refused_by_quota_give_replica_failure(
    api: client.ApiClient, core: client.CoreV1Api, fresh: str
) -> None:
    ns = fresh
    apps = client.AppsV1Api(api)
    make_quota(api, ns, "one-pod", {"pods": "1"})
    apps.create_namespaced_deployment(ns, deployment("web", replicas=3))

    def failing() -> tuple[client.V1ReplicaSet, client.V1Deployment] | None:
        sets = apps.list_namespaced_replica_set(ns).items
        d = apps.read_namespaced_deployment_status("web", ns)
        conds = {c.type: c for c in d.status.conditions or []}
        if len(sets) == 1 and "ReplicaFailure" in conds and (d.status.ready_replicas or 0) == 1:
            return sets[0], d
        return None

    rs, d = wait_for(failing, timeout=DEADLINE, what="ReplicaFailure with the one admitted pod ready")
    (rs_cond,) = [c for c in rs.status.conditions or [] if c.type == "ReplicaFailure"]
    assert rs_cond.status == "True" and rs_cond.reason == "FailedCreate"
    assert REFUSAL.match(rs_cond.message), rs_cond.message
    assert rs_cond.message.startswith(f'pods "{rs.metadata.name}-')
    d_cond = next(c for c in d.status.conditions if c.type == "ReplicaFailure")
    assert (d_cond.status, d_cond.reason, d_cond.message) == ("True", "FailedCreate", rs_cond.message)
    assert d_cond.last_update_time == d_cond.last_transition_time == rs_cond.last_transition_time
    assert d.status.replicas == 1 and d.status.unavailable_replicas == 2
    conds = {c.type: c for c in d.status.conditions}
    assert conds["Available"].status == "False" and conds["Progressing"].reason == "ReplicaSetUpdated"

    events = [
        e
        for e in core.list_namespaced_event(ns).items
        if e.reason == "FailedCreate" and e.involved_object.name == rs.metadata.name
    ]
    assert events and all(
        e.type == "Warning" and e.source.component == "replicaset-controller" for e in events
    )
    first = min(events, key=lambda e: e.metadata.creation_timestamp)
    assert first.message.startswith("Error creating: ") and REFUSAL.match(
        first.message.removeprefix("Error creating: ")
    )

    # Room for all three: the ReplicaSet retries, and the failure condition goes away.
    status, _, _ = raw(
        api,
        "PATCH",
        f"/api/v1/namespaces/{ns}/resourcequotas/one-pod",
        body={"spec": {"hard": {"pods": "3"}}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert status == 200

    rs_name = rs.metadata.name

    def recovered() -> bool:
        d = apps.read_namespaced_deployment_status("web", ns)
        rs = apps.read_namespaced_replica_set(rs_name, ns)
        return (
            (d.status.ready_replicas or 0) == 3
            and not any(c.type == "ReplicaFailure" for c in d.status.conditions or [])
            and not any(c.type == "ReplicaFailure" for c in rs.status.conditions or [])
        )

    wait_for(recovered, timeout=DEADLINE, what="3 ready replicas and no ReplicaFailure")
