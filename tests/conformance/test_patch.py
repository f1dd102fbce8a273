"""Patches: JSON merge, JSON patch (incl. test), strategic merge for built-ins, server-side apply."""

from __future__ import annotations

import json

import yaml
from kubernetes import client

from tests.conformance.helpers import deployment, install_crds, raw, unique

MERGE = {"Content-Type": "application/merge-patch+json"}
JSONP = {"Content-Type": "application/json-patch+json"}
SMP = {"Content-Type": "application/strategic-merge-patch+json"}
APPLY = {"Content-Type": "application/apply-patch+yaml"}


def test_json_merge_patch(api: client.ApiClient, core: client.CoreV1Api, ns: str) -> None:
    core.create_namespaced_config_map(
        ns, {"metadata": {"name": "mp", "labels": {"a": "1", "b": "2"}}, "data": {"x": "1", "y": "2"}}
    )
    status, body, _ = raw(
        api,
        "PATCH",
        f"/api/v1/namespaces/{ns}/configmaps/mp",
        body={"metadata": {"labels": {"b": None, "c": "3"}}, "data": {"y": None}},
        headers=MERGE,
    )
    assert status == 200
    assert body["metadata"]["labels"] == {"a": "1", "c": "3"}
    assert body["data"] == {"x": "1"}


def test_json_patch_with_test_op(api: client.ApiClient, core: client.CoreV1Api, ns: str) -> None:
    core.create_namespaced_config_map(ns, {"metadata": {"name": "jp"}, "data": {"x": "1"}})
    ok = [
        {"op": "test", "path": "/data/x", "value": "1"},
        {"op": "add", "path": "/data/y", "value": "2"},
        {"op": "remove", "path": "/data/x"},
    ]
    status, body, _ = raw(api, "PATCH", f"/api/v1/namespaces/{ns}/configmaps/jp", body=ok, headers=JSONP)
    assert status == 200 and body["data"] == {"y": "2"}
    failing = [
        {"op": "test", "path": "/data/y", "value": "wrong"},
        {"op": "add", "path": "/data/z", "value": "3"},
    ]
    status, body, _ = raw(api, "PATCH", f"/api/v1/namespaces/{ns}/configmaps/jp", body=failing, headers=JSONP)
    assert status == 422 and body["kind"] == "Status"
    assert core.read_namespaced_config_map("jp", ns).data == {"y": "2"}


def test_strategic_merge_patch_merges_lists_by_key(api: client.ApiClient, ns: str) -> None:
    apps = client.AppsV1Api(api)
    d = deployment("smp")
    pod = d["spec"]["template"]["spec"]
    pod["containers"][0]["env"] = [{"name": "A", "value": "1"}]
    pod["containers"][0]["ports"] = [{"containerPort": 80}]
    pod["containers"][0]["volumeMounts"] = [{"name": "v1", "mountPath": "/a"}]
    pod["volumes"] = [{"name": "v1", "emptyDir": {}}]
    apps.create_namespaced_deployment(ns, d)
    patch = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "env": [{"name": "B", "value": "2"}],
                            "ports": [{"containerPort": 8080}],
                            "volumeMounts": [{"name": "v2", "mountPath": "/b"}],
                        },
                        {"name": "sidecar", "image": "busybox"},
                    ],
                    "volumes": [{"name": "v2", "emptyDir": {}}],
                }
            }
        }
    }
    status, body, _ = raw(
        api, "PATCH", f"/apis/apps/v1/namespaces/{ns}/deployments/smp", body=patch, headers=SMP
    )
    assert status == 200, body
    spec = body["spec"]["template"]["spec"]
    app = next(c for c in spec["containers"] if c["name"] == "app")
    assert app["image"] == "nginx:1.25"
    # apimachinery's normalizeElementOrder: the patch's items first (in the patch's order),
    # then the live items the patch did not mention; an item new to a list is not appended.
    assert [e["name"] for e in app["env"]] == ["B", "A"]
    assert [p["containerPort"] for p in app["ports"]] == [8080, 80]
    assert [m["mountPath"] for m in app["volumeMounts"]] == ["/b", "/a"]
    assert [v["name"] for v in spec["volumes"]] == ["v2", "v1"]
    assert [c["name"] for c in spec["containers"]] == ["app", "sidecar"]
    # a live item before a patched one (in the live order) stays before it
    interleave = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"name": "app", "env": [{"name": "A", "value": "9"}, {"name": "C", "value": "3"}]}
                    ]
                }
            }
        }
    }
    status, body, _ = raw(
        api, "PATCH", f"/apis/apps/v1/namespaces/{ns}/deployments/smp", body=interleave, headers=SMP
    )
    assert status == 200, body
    app = next(c for c in body["spec"]["template"]["spec"]["containers"] if c["name"] == "app")
    assert [(e["name"], e["value"]) for e in app["env"]] == [("B", "2"), ("A", "9"), ("C", "3")]
    # $setElementOrder (what kubectl apply sends) decides the order of the whole list
    ordered = {
        "spec": {
            "template": {
                "spec": {
                    "$setElementOrder/volumes": [{"name": "v1"}, {"name": "v3"}, {"name": "v2"}],
                    "volumes": [{"name": "v3", "emptyDir": {}}],
                }
            }
        }
    }
    status, body, _ = raw(
        api, "PATCH", f"/apis/apps/v1/namespaces/{ns}/deployments/smp", body=ordered, headers=SMP
    )
    assert status == 200, body
    assert [v["name"] for v in body["spec"]["template"]["spec"]["volumes"]] == ["v1", "v3", "v2"]
    # primitive lists with patchStrategy=merge (finalizers) follow the same rule
    for finalizers, want in (
        (["example.com/a"], ["example.com/a"]),
        (["example.com/b"], ["example.com/b", "example.com/a"]),
    ):
        status, body, _ = raw(
            api,
            "PATCH",
            f"/apis/apps/v1/namespaces/{ns}/deployments/smp",
            body={"metadata": {"finalizers": finalizers}},
            headers=SMP,
        )
        assert status == 200 and body["metadata"]["finalizers"] == want, body
    status, body, _ = raw(
        api,
        "PATCH",
        f"/apis/apps/v1/namespaces/{ns}/deployments/smp",
        body={"metadata": {"finalizers": None}},
        headers=SMP,
    )
    assert status == 200 and not body["metadata"].get("finalizers"), body
    delete = {"spec": {"template": {"spec": {"containers": [{"name": "sidecar", "$patch": "delete"}]}}}}
    status, body, _ = raw(
        api, "PATCH", f"/apis/apps/v1/namespaces/{ns}/deployments/smp", body=delete, headers=SMP
    )
    assert [c["name"] for c in body["spec"]["template"]["spec"]["containers"]] == ["app"]


def _apply(
    api: client.ApiClient, path: str, obj: dict, manager: str, force: bool = False
) -> tuple[int, dict]:
    query = {"fieldManager": manager}
    if force:
        query["force"] = "true"
    status, body, _ = raw(api, "PATCH", path, query=query, body=yaml.safe_dump(obj), headers=APPLY)
    return status, body


def test_server_side_apply_ownership(api: client.ApiClient, ns: str) -> None:
    name = unique("ssa")
    path = f"/api/v1/namespaces/{ns}/configmaps/{name}"
    cfg = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {"team": "a"}},
        "data": {"one": "1", "two": "2"},
    }
    status, body = _apply(api, path, cfg, "alice")
    assert status == 201, body
    mf = {e["manager"]: e for e in body["metadata"]["managedFields"]}
    assert mf["alice"]["operation"] == "Apply"
    assert set(mf["alice"]["fieldsV1"]["f:data"]) == {"f:one", "f:two"}
    # bob owns a different field: no conflict, both keep their fields
    status, body = _apply(
        api,
        path,
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"three": "3"}},
        "bob",
    )
    assert status == 200 and body["data"] == {"one": "1", "two": "2", "three": "3"}
    # alice drops "two": removed, because nobody else owns it
    cfg["data"] = {"one": "1"}
    status, body = _apply(api, path, cfg, "alice")
    assert status == 200 and body["data"] == {"one": "1", "three": "3"}
    # bob tries to change alice's field: conflict without force
    status, body = _apply(
        api,
        path,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name},
            "data": {"three": "3", "one": "uno"},
        },
        "bob",
    )
    assert status == 409 and body["reason"] == "Conflict"
    assert "alice" in body["message"]
    status, body = _apply(
        api,
        path,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name},
            "data": {"three": "3", "one": "uno"},
        },
        "bob",
        force=True,
    )
    assert status == 200 and body["data"]["one"] == "uno"
    owners = {
        e["manager"]: e.get("fieldsV1", {}).get("f:data", {}) for e in body["metadata"]["managedFields"]
    }
    assert "f:one" in owners["bob"] and "f:one" not in owners.get("alice", {})
    # same value applied by two managers is shared, not a conflict
    status, body = _apply(
        api,
        path,
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"three": "3"}},
        "carol",
    )
    assert status == 200


def test_server_side_apply_merges_containers_by_name(api: client.ApiClient, ns: str) -> None:
    name = unique("ssad")
    path = f"/apis/apps/v1/namespaces/{ns}/deployments/{name}"
    d = deployment(name)
    d["metadata"]["name"] = name
    status, body = _apply(api, path, d, "base")
    assert status == 201, body
    side = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"template": {"spec": {"containers": [{"name": "sidecar", "image": "busybox"}]}}},
    }
    status, body = _apply(api, path, side, "injector")
    assert status == 200, body
    names = [c["name"] for c in body["spec"]["template"]["spec"]["containers"]]
    assert names == ["app", "sidecar"]
    # the injector stops applying its sidecar: it is removed, "app" stays
    status, body = _apply(
        api, path, {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name}}, "injector"
    )
    assert [c["name"] for c in body["spec"]["template"]["spec"]["containers"]] == ["app"]


def test_server_side_apply_custom_resource_list_map(api: client.ApiClient, ns: str) -> None:
    install_crds(api)
    name = unique("ssacr")
    path = f"/apis/choreo.dev/v1alpha1/namespaces/{ns}/choreoapps/{name}"
    app = {
        "apiVersion": "choreo.dev/v1alpha1",
        "kind": "ChoreoApp",
        "metadata": {"name": name},
        "spec": {
            "environment": "dev",
            "project": "p",
            "type": "service",
            "image": "nginx:1",
            "env": [{"name": "A", "value": "1"}],
        },
    }
    status, body = _apply(api, path, app, "ctl")
    assert status == 201, body
    status, body = _apply(
        api,
        path,
        {
            "apiVersion": "choreo.dev/v1alpha1",
            "kind": "ChoreoApp",
            "metadata": {"name": name},
            "spec": {"env": [{"name": "B", "value": "2"}]},
        },
        "other",
    )
    assert status == 200, body
    assert [e["name"] for e in body["spec"]["env"]] == ["A", "B"]
    status, body = _apply(api, path, {**app, "spec": {**app["spec"], "replicas": 2000}}, "ctl")
    assert status == 422


def test_status_patch_via_apply_is_separate(api: client.ApiClient, ns: str) -> None:
    install_crds(api)
    name = unique("ssast")
    base = f"/apis/choreo.dev/v1alpha1/namespaces/{ns}/choreoapps/{name}"
    app = {
        "apiVersion": "choreo.dev/v1alpha1",
        "kind": "ChoreoApp",
        "metadata": {"name": name},
        "spec": {"environment": "dev", "project": "p", "type": "service", "image": "nginx:1"},
    }
    assert _apply(api, base, app, "ctl")[0] == 201
    status, body = _apply(api, base + "/status", {**app, "status": {"phase": "Ready"}}, "op", force=True)
    assert status == 200, body
    assert body["status"]["phase"] == "Ready"
    entry = next(e for e in body["metadata"]["managedFields"] if e["manager"] == "op")
    assert entry.get("subresource") == "status"


def test_unknown_patch_type_is_415(api: client.ApiClient, core: client.CoreV1Api, ns: str) -> None:
    core.create_namespaced_config_map(ns, {"metadata": {"name": "ptype"}})
    status, _, _ = raw(
        api,
        "PATCH",
        f"/api/v1/namespaces/{ns}/configmaps/ptype",
        body=json.dumps({}),
        headers={"Content-Type": "text/plain"},
    )
    assert status == 415


def test_scale_subresource_owns_replicas(api: client.ApiClient, ns: str) -> None:
    """A write through ``/scale`` is recorded with ``subresource: scale`` and takes spec.replicas
    from the applier, who then conflicts with it (what happens between an HPA and a GitOps tool)."""
    name = unique("scale")
    path = f"/apis/apps/v1/namespaces/{ns}/deployments/{name}"
    d = deployment(name, replicas=2)
    d["metadata"]["name"] = name
    status, body = _apply(api, path, d, "ctl")
    assert status == 201, body
    status, scale, _ = raw(
        api,
        "PATCH",
        f"{path}/scale",
        query={"fieldManager": "scaler"},
        body={"spec": {"replicas": 3}},
        headers=MERGE,
    )
    assert status == 200 and scale["kind"] == "Scale" and scale["spec"]["replicas"] == 3, scale
    status, live, _ = raw(api, "GET", path)
    entries = {
        (e["manager"], e["operation"], e.get("subresource")): e for e in live["metadata"]["managedFields"]
    }
    assert "f:replicas" in entries[("scaler", "Update", "scale")]["fieldsV1"]["f:spec"]
    assert "f:replicas" not in entries[("ctl", "Apply", None)]["fieldsV1"]["f:spec"]
    status, body = _apply(api, path, d, "ctl")
    assert status == 409 and body["reason"] == "Conflict", body
    assert body["message"] == (
        'Apply failed with 1 conflict: conflict with "scaler" with subresource "scale" using apps/v1: .spec.replicas'
    )
    status, body = _apply(api, path, d, "ctl", force=True)
    assert status == 200 and body["spec"]["replicas"] == 2, body
