"""Object lifecycle: create, get, list, update, delete, resourceVersion and generation rules."""

from __future__ import annotations

import pytest
from kubernetes import client

from tests.conformance.helpers import deployment, raw, unique


def test_create_sets_server_fields(core: client.CoreV1Api, ns: str) -> None:
    cm = core.create_namespaced_config_map(ns, {"metadata": {"name": "plain"}, "data": {"a": "1"}})
    assert cm.metadata.uid and cm.metadata.creation_timestamp is not None
    assert int(cm.metadata.resource_version) > 0
    gen = core.create_namespaced_config_map(ns, {"metadata": {"generateName": "gen-"}, "data": {}})
    assert gen.metadata.name.startswith("gen-") and len(gen.metadata.name) == len("gen-") + 5
    with pytest.raises(client.ApiException) as exc:
        core.create_namespaced_config_map(ns, {"metadata": {"name": "plain"}})
    assert exc.value.status == 409


def test_create_returns_201_and_checks_namespace(api: client.ApiClient, ns: str) -> None:
    status, body, _ = raw(
        api, "POST", f"/api/v1/namespaces/{ns}/configmaps", body={"metadata": {"name": "code201"}}
    )
    assert status == 201 and body["metadata"]["name"] == "code201"
    status, body, _ = raw(
        api, "POST", f"/api/v1/namespaces/{unique('missing')}/configmaps", body={"metadata": {"name": "x"}}
    )
    assert status == 404 and body["kind"] == "Status" and body["reason"] == "NotFound"


def test_invalid_name_is_422(api: client.ApiClient, ns: str) -> None:
    status, body, _ = raw(
        api, "POST", f"/api/v1/namespaces/{ns}/configmaps", body={"metadata": {"name": "Not_Valid"}}
    )
    assert status == 422 and body["reason"] == "Invalid"


def test_list_has_kind_and_resource_version(api: client.ApiClient, core: client.CoreV1Api, ns: str) -> None:
    core.create_namespaced_config_map(ns, {"metadata": {"name": "listed"}})
    status, body, _ = raw(api, "GET", f"/api/v1/namespaces/{ns}/configmaps")
    assert status == 200
    assert body["kind"] == "ConfigMapList" and body["apiVersion"] == "v1"
    assert int(body["metadata"]["resourceVersion"]) >= max(
        int(i["metadata"]["resourceVersion"]) for i in body["items"]
    )
    assert "listed" in {i["metadata"]["name"] for i in body["items"]}


def test_pagination(core: client.CoreV1Api, ns: str) -> None:
    for i in range(5):
        core.create_namespaced_secret(ns, {"metadata": {"name": f"page-{i}"}, "stringData": {"k": str(i)}})
    first = core.list_namespaced_secret(ns, limit=2)
    assert len(first.items) == 2 and first.metadata._continue
    names = [s.metadata.name for s in first.items]
    token = first.metadata._continue
    while token:
        page = core.list_namespaced_secret(ns, limit=2, _continue=token)
        names += [s.metadata.name for s in page.items]
        token = page.metadata._continue
    assert [n for n in names if n.startswith("page-")] == [f"page-{i}" for i in range(5)]


def test_resource_version_is_global_and_monotonic(core: client.CoreV1Api, ns: str) -> None:
    a = core.create_namespaced_config_map(ns, {"metadata": {"name": "rv-a"}})
    b = core.create_namespaced_secret(ns, {"metadata": {"name": "rv-b"}})
    c = core.patch_namespaced_config_map("rv-a", ns, {"data": {"x": "y"}})
    assert (
        int(a.metadata.resource_version) < int(b.metadata.resource_version) < int(c.metadata.resource_version)
    )


def test_stale_resource_version_conflicts(core: client.CoreV1Api, ns: str) -> None:
    cm = core.create_namespaced_config_map(ns, {"metadata": {"name": "occ"}, "data": {"v": "1"}})
    stale = cm.metadata.resource_version
    core.patch_namespaced_config_map("occ", ns, {"data": {"v": "2"}})
    with pytest.raises(client.ApiException) as put:
        core.replace_namespaced_config_map(
            "occ", ns, {"metadata": {"name": "occ", "resourceVersion": stale}, "data": {"v": "3"}}
        )
    assert put.value.status == 409
    with pytest.raises(client.ApiException) as patch:
        core.patch_namespaced_config_map(
            "occ", ns, {"metadata": {"resourceVersion": stale}, "data": {"v": "4"}}
        )
    assert patch.value.status == 409
    assert core.read_namespaced_config_map("occ", ns).data == {"v": "2"}


def test_update_and_generation_rules(api: client.ApiClient, ns: str) -> None:
    apps = client.AppsV1Api(api)
    d = apps.create_namespaced_deployment(ns, deployment("gen"))
    assert d.metadata.generation == 1
    d = apps.patch_namespaced_deployment("gen", ns, {"metadata": {"labels": {"only": "metadata"}}})
    assert d.metadata.generation == 1, "metadata changes must not bump generation"
    d = apps.patch_namespaced_deployment("gen", ns, {"spec": {"replicas": 3}})
    assert d.metadata.generation == 2
    # A read-modify-write races the deployment controller's own writes (status, the revision
    # annotation), so like every client it retries on 409 with a fresh read.
    for _ in range(10):
        body = apps.read_namespaced_deployment("gen", ns)
        body.spec.replicas = 4
        try:
            d = apps.replace_namespaced_deployment("gen", ns, body)
            break
        except client.ApiException as exc:
            if exc.status != 409:
                raise
    else:
        raise AssertionError("replace kept conflicting")
    assert d.metadata.generation == 3 and d.spec.replicas == 4


def test_noop_write_keeps_resource_version(core: client.CoreV1Api, ns: str) -> None:
    cm = core.create_namespaced_config_map(ns, {"metadata": {"name": "noop"}, "data": {"a": "1"}})
    again = core.patch_namespaced_config_map("noop", ns, {"data": {"a": "1"}})
    assert again.metadata.resource_version == cm.metadata.resource_version


def test_get_and_delete(core: client.CoreV1Api, ns: str) -> None:
    core.create_namespaced_config_map(ns, {"metadata": {"name": "doomed"}})
    assert core.read_namespaced_config_map("doomed", ns).metadata.name == "doomed"
    core.delete_namespaced_config_map("doomed", ns)
    with pytest.raises(client.ApiException) as exc:
        core.read_namespaced_config_map("doomed", ns)
    assert exc.value.status == 404
    with pytest.raises(client.ApiException) as exc:
        core.delete_namespaced_config_map("doomed", ns)
    assert exc.value.status == 404


def test_secret_string_data_is_encoded(core: client.CoreV1Api, ns: str) -> None:
    s = core.create_namespaced_secret(ns, {"metadata": {"name": "sd"}, "stringData": {"password": "hunter2"}})
    assert s.data == {"password": "aHVudGVyMg=="} and s.type == "Opaque"


def test_cluster_scoped_and_builtin_kinds(api: client.ApiClient, ns: str) -> None:
    rbac = client.RbacAuthorizationV1Api(api)
    role = rbac.create_namespaced_role(
        ns,
        {"metadata": {"name": "r"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]},
    )
    assert role.rules[0].verbs == ["get"]
    lease = client.CoordinationV1Api(api).create_namespaced_lease(
        ns, {"metadata": {"name": "l"}, "spec": {"holderIdentity": "me"}}
    )
    assert lease.spec.holder_identity == "me"
    batch = client.BatchV1Api(api)
    cj = batch.create_namespaced_cron_job(
        ns,
        {
            "metadata": {"name": "cj"},
            "spec": {
                "schedule": "*/5 * * * *",
                "jobTemplate": {
                    "spec": {
                        "template": {
                            "spec": {
                                "restartPolicy": "Never",
                                "containers": [{"name": "c", "image": "busybox"}],
                            }
                        }
                    }
                },
            },
        },
    )
    assert cj.spec.schedule == "*/5 * * * *"
    hpa = client.AutoscalingV2Api(api).create_namespaced_horizontal_pod_autoscaler(
        ns,
        {
            "metadata": {"name": "h"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"},
                "minReplicas": 1,
                "maxReplicas": 3,
            },
        },
    )
    assert hpa.spec.max_replicas == 3
    pdb = client.PolicyV1Api(api).create_namespaced_pod_disruption_budget(
        ns, {"metadata": {"name": "p"}, "spec": {"minAvailable": 1, "selector": {"matchLabels": {"a": "b"}}}}
    )
    assert pdb.spec.min_available == 1
    net = client.NetworkingV1Api(api)
    assert (
        net.create_namespaced_network_policy(
            ns, {"metadata": {"name": "np"}, "spec": {"podSelector": {}}}
        ).metadata.name
        == "np"
    )
    svc = client.CoreV1Api(api).create_namespaced_service(
        ns, {"metadata": {"name": "svc"}, "spec": {"selector": {"a": "b"}, "ports": [{"port": 80}]}}
    )
    assert svc.spec.cluster_ip and svc.spec.ports[0].target_port == 80


def test_events_in_both_groups(api: client.ApiClient, core: client.CoreV1Api, ns: str) -> None:
    involved = {"kind": "ConfigMap", "namespace": ns, "name": "x", "apiVersion": "v1"}
    ev = core.create_namespaced_event(
        ns,
        {
            "metadata": {"generateName": "x."},
            "involvedObject": involved,
            "reason": "Tested",
            "message": "hello",
            "type": "Warning",
            "source": {"component": "conformance"},
        },
    )
    assert ev.metadata.name.startswith("x.")
    found = core.list_namespaced_event(ns, field_selector="involvedObject.name=x").items
    assert [e.reason for e in found] == ["Tested"]
    body = {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": "x.v1"},
        "eventTime": "2024-01-01T01:00:00.000001+01:00",
        "reportingController": "conformance",
        "reportingInstance": "i",
        "action": "Test",
        "reason": "Tested",
        "regarding": involved,
        "type": "Normal",
    }
    # Sent raw: the kubernetes client's model would re-serialize eventTime with isoformat()
    # ("...T00:00:00+00:00"), which is not a MicroTime, and the real API refuses it (below).
    path = f"/apis/events.k8s.io/v1/namespaces/{ns}/events"
    status, ev2, _ = raw(api, "POST", path, body=body)
    assert status == 201 and ev2["reason"] == "Tested", ev2
    # MicroTime is read back as Go writes it: UTC, exactly six fractional digits
    assert ev2["eventTime"] == "2024-01-01T00:00:00.000001Z"
    for bad in ("2024-01-01T00:00:00+00:00", "2024-01-01T00:00:00.123Z", "2024-01-01 00:00:00.000000Z"):
        status, err, _ = raw(
            api, "POST", path, body={**body, "metadata": {"name": unique("x")}, "eventTime": bad}
        )
        assert status == 400 and err["reason"] == "BadRequest", (bad, err)
        assert err["message"].startswith(
            'Event in version "v1" cannot be handled as a Event: parsing time'
        ), err


def test_time_fields_are_decoded_and_reencoded(api: client.ApiClient, ns: str) -> None:
    """metav1.Time is RFC 3339 (any fraction accepted, seconds kept), written back in UTC."""
    path = f"/api/v1/namespaces/{ns}/events"
    body = {
        "metadata": {"name": unique("t")},
        "involvedObject": {"kind": "ConfigMap", "namespace": ns, "name": "x", "apiVersion": "v1"},
        "reason": "Tested",
        "message": "times",
        "type": "Normal",
        "firstTimestamp": "2024-01-01T01:00:00.5+01:00",
        "lastTimestamp": "2024-01-01T01:00:00.123456789Z",
    }
    status, ev, _ = raw(api, "POST", path, body=body)
    assert status == 201, ev
    assert (ev["firstTimestamp"], ev["lastTimestamp"]) == ("2024-01-01T00:00:00Z", "2024-01-01T01:00:00Z")
    for bad, why in (
        ("2024-01-01T01:00:00", 'cannot parse "" as "Z07:00"'),
        ("2024-13-01T01:00:00Z", "month out of range"),
        ("2024-02-30T01:00:00Z", "day out of range"),
    ):
        status, err, _ = raw(
            api, "POST", path, body={**body, "metadata": {"name": unique("t")}, "firstTimestamp": bad}
        )
        assert status == 400 and why in err["message"], (bad, err)
    lease = {"metadata": {"name": unique("l")}, "spec": {"renewTime": "2024-01-01T00:00:00.123456-02:00"}}
    status, got, _ = raw(api, "POST", f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases", body=lease)
    assert status == 201 and got["spec"]["renewTime"] == "2024-01-01T02:00:00.123456Z", got


def test_server_side_dry_run(api: client.ApiClient, core: client.CoreV1Api, ns: str) -> None:
    status, body, _ = raw(
        api,
        "POST",
        f"/api/v1/namespaces/{ns}/configmaps",
        query={"dryRun": "All"},
        body={"metadata": {"name": "dry"}, "data": {"a": "1"}},
    )
    assert status == 201 and body["data"] == {"a": "1"}
    with pytest.raises(client.ApiException) as exc:
        core.read_namespaced_config_map("dry", ns)
    assert exc.value.status == 404
    core.create_namespaced_config_map(ns, {"metadata": {"name": "wet"}, "data": {"a": "1"}})
    status, body, _ = raw(
        api,
        "PATCH",
        f"/api/v1/namespaces/{ns}/configmaps/wet",
        query={"dryRun": "All"},
        body={"data": {"a": "2"}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert status == 200 and body["data"] == {"a": "2"}
    assert core.read_namespaced_config_map("wet", ns).data == {"a": "1"}
