"""CustomResourceDefinitions: serving, schema validation (422), pruning, defaults, status subresource."""

from __future__ import annotations

import pytest
from kubernetes import client

from tests.conformance.helpers import choreo_app, install_crds, raw, unique

G, V, P = "choreo.dev", "v1alpha1", "choreoapps"


@pytest.fixture(scope="module")
def custom(api: client.ApiClient) -> client.CustomObjectsApi:
    install_crds(api)
    return client.CustomObjectsApi(api)


def test_discovery_lists_crd_resources(api: client.ApiClient, custom: client.CustomObjectsApi) -> None:
    status, body, _ = raw(api, "GET", "/apis/choreo.dev/v1alpha1")
    assert status == 200 and body["groupVersion"] == "choreo.dev/v1alpha1"
    res = {r["name"]: r for r in body["resources"]}
    assert res["choreoapps"]["kind"] == "ChoreoApp" and res["choreoapps"]["namespaced"] is True
    assert "capp" in res["choreoapps"]["shortNames"] and "choreo" in res["choreoapps"]["categories"]
    assert res["environments"]["namespaced"] is False
    assert "choreoapps/status" in res
    groups = {g.name for g in client.ApisApi(api).get_api_versions().groups}
    assert "choreo.dev" in groups


def test_crd_status_established(api: client.ApiClient, custom: client.CustomObjectsApi) -> None:
    crd = client.ApiextensionsV1Api(api).read_custom_resource_definition("choreoapps.choreo.dev")
    conds = {c.type: c.status for c in crd.status.conditions}
    assert conds.get("Established") == "True"


def test_create_with_defaults_and_pruning(custom: client.CustomObjectsApi, ns: str) -> None:
    body = choreo_app("pruned", ns)
    body["spec"]["notInSchema"] = "dropped"
    body["spec"]["endpoints"] = [
        {"name": "http", "port": 8080, "protocol": "REST", "visibility": "Public", "bogus": 1}
    ]
    obj = custom.create_namespaced_custom_object(G, V, ns, P, body)
    assert "notInSchema" not in obj["spec"]
    assert "bogus" not in obj["spec"]["endpoints"][0]
    assert obj["spec"]["replicas"] == 1, "schema default applied"
    assert obj["metadata"]["generation"] == 1


def test_schema_violations_are_422(api: client.ApiClient, custom: client.CustomObjectsApi, ns: str) -> None:
    bad = choreo_app("bad", ns, type="nope", replicas=5000, image="")
    status, body, _ = raw(api, "POST", f"/apis/{G}/{V}/namespaces/{ns}/{P}", body=bad)
    assert status == 422
    assert body["kind"] == "Status" and body["reason"] == "Invalid" and body["code"] == 422
    fields = {c["field"] for c in body["details"]["causes"]}
    assert {"spec.type", "spec.replicas", "spec.image"} <= fields
    missing = choreo_app("missing", ns)
    del missing["spec"]["project"]
    status, body, _ = raw(api, "POST", f"/apis/{G}/{V}/namespaces/{ns}/{P}", body=missing)
    assert status == 422 and any(c["field"] == "spec.project" for c in body["details"]["causes"])
    wrong_type = choreo_app("wrongtype", ns, replicas="three")
    status, body, _ = raw(api, "POST", f"/apis/{G}/{V}/namespaces/{ns}/{P}", body=wrong_type)
    assert status == 422


def test_list_map_keys_must_be_unique(
    api: client.ApiClient, custom: client.CustomObjectsApi, ns: str
) -> None:
    dup = choreo_app("dup", ns, env=[{"name": "A", "value": "1"}, {"name": "A", "value": "2"}])
    status, body, _ = raw(api, "POST", f"/apis/{G}/{V}/namespaces/{ns}/{P}", body=dup)
    assert status == 422, body


def test_status_subresource_semantics(custom: client.CustomObjectsApi, ns: str) -> None:
    name = unique("st")
    body = choreo_app(name, ns)
    body["status"] = {"phase": "Ready"}
    obj = custom.create_namespaced_custom_object(G, V, ns, P, body)
    assert "status" not in obj or obj["status"].get("phase") != "Ready", (
        "status is not set through the main resource"
    )
    obj = custom.patch_namespaced_custom_object_status(
        G, V, ns, P, name, {"status": {"phase": "Progressing"}, "spec": {"replicas": 9}}
    )
    assert obj["status"]["phase"] == "Progressing"
    assert obj["spec"]["replicas"] == 1, "the status subresource ignores spec"
    assert obj["metadata"]["generation"] == 1
    obj = custom.patch_namespaced_custom_object(
        G, V, ns, P, name, {"status": {"phase": "Failed"}, "spec": {"replicas": 2}}
    )
    assert obj["status"]["phase"] == "Progressing", "the main resource ignores status"
    assert obj["spec"]["replicas"] == 2 and obj["metadata"]["generation"] == 2


def test_cluster_scoped_custom_resource(custom: client.CustomObjectsApi) -> None:
    name = unique("env")
    env = {
        "apiVersion": "choreo.dev/v1alpha1",
        "kind": "Environment",
        "metadata": {"name": name},
        "spec": {"displayName": "Dev"},
    }
    obj = custom.create_cluster_custom_object(G, V, "environments", env)
    assert obj["metadata"]["name"] == name and "namespace" not in obj["metadata"]
    listed = custom.list_cluster_custom_object(G, V, "environments")
    assert listed["kind"] == "EnvironmentList" and name in {i["metadata"]["name"] for i in listed["items"]}
    custom.delete_cluster_custom_object(G, V, "environments", name)


def test_new_crd_is_served_and_deleted(api: client.ApiClient) -> None:
    ext = client.ApiextensionsV1Api(api)
    group = "conformance.example.com"
    plural = unique("widgets").replace("-", "")
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {
                "plural": plural,
                "singular": plural[:-1],
                "kind": "Widget" + plural[-4:].capitalize(),
                "listKind": "WidgetList",
            },
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                            },
                        }
                    },
                }
            ],
        },
    }
    ext.create_custom_resource_definition(crd)
    custom = client.CustomObjectsApi(api)

    from tests.conformance.helpers import wait_for

    def served() -> bool:
        status, body, _ = raw(api, "GET", f"/apis/{group}/v1")
        return status == 200 and plural in {r["name"] for r in body["resources"]}

    wait_for(served, what="new CRD served")
    obj = custom.create_namespaced_custom_object(
        group,
        "v1",
        "default",
        plural,
        {
            "apiVersion": f"{group}/v1",
            "kind": crd["spec"]["names"]["kind"],
            "metadata": {"name": "w"},
            "spec": {"anything": {"goes": [1, 2]}},
        },
    )
    assert obj["spec"]["anything"] == {"goes": [1, 2]}, (
        "x-kubernetes-preserve-unknown-fields keeps unknown fields"
    )
    ext.delete_custom_resource_definition(crd["metadata"]["name"])
    wait_for(
        lambda: raw(api, "GET", f"/apis/{group}/v1/namespaces/default/{plural}")[0] == 404,
        what="CRD resource to disappear",
    )


def test_cel_validation_rules(api: client.ApiClient, custom: client.CustomObjectsApi, ns: str) -> None:
    path = f"/apis/{G}/{V}/namespaces/{ns}/{P}"
    no_schedule = choreo_app(unique("cel"), ns, type="scheduledTask")
    status, body, _ = raw(api, "POST", path, body=no_schedule)
    assert status == 422 and "schedule is required" in body["message"]
    bad_scaling = choreo_app(unique("cel"), ns, autoscaling={"minReplicas": 5, "maxReplicas": 2})
    status, body, _ = raw(api, "POST", path, body=bad_scaling)
    assert status == 422 and "maxReplicas" in body["message"]
    ok = choreo_app(unique("cel"), ns, type="scheduledTask", schedule="*/5 * * * *")
    status, body, _ = raw(api, "POST", path, body=ok)
    assert status == 201, body


def test_field_validation_directives(api: client.ApiClient, custom: client.CustomObjectsApi, ns: str) -> None:
    path = f"/apis/{G}/{V}/namespaces/{ns}/{P}"
    body = choreo_app(unique("fv"), ns)
    body["spec"]["bogus"] = 1
    status, resp, _ = raw(api, "POST", path, query={"fieldValidation": "Strict"}, body=body)
    assert status == 400 and "bogus" in resp["message"]
    status, resp, headers = raw(api, "POST", path, query={"fieldValidation": "Warn"}, body=body)
    assert status == 201 and "bogus" not in resp["spec"]
    assert "bogus" in headers.get("Warning", "")
