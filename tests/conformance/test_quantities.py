"""Quantities come back the way kube-apiserver stores them, whatever form a write used.

Built-in objects are Go structs on the real server: each ``resource.Quantity`` is parsed on decode
and printed canonically on encode, and ``SetDefaults_ResourceList`` rounds every ``ResourceList``
entry up to milli-units (a lone ``Quantity`` such as ``emptyDir.sizeLimit`` is not rounded).  The
drift check compares what it applied with what it reads back, so the emulator must answer the same
for every way of writing: create, update, JSON / merge / strategic patch and server-side apply.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client

from choreo_dp.api.quantity import canonical_quantity, resource_quantity
from tests.conformance.helpers import deployment, raw, unique

MERGE = {"Content-Type": "application/merge-patch+json"}
JSONP = {"Content-Type": "application/json-patch+json"}
SMP = {"Content-Type": "application/strategic-merge-patch+json"}
APPLY = {"Content-Type": "application/apply-patch+yaml"}

# Written form -> stored form.  Spelled out (not computed) so the emulator and choreo_dp's quantity
# module are both held to what the real apiserver answers.
REQUESTS: dict[str, Any] = {"cpu": "0.5", "memory": "1024Mi", "ephemeral-storage": "100u"}
REQUESTS_STORED = {"cpu": "500m", "memory": "1Gi", "ephemeral-storage": "1m"}
LIMITS: dict[str, Any] = {"cpu": "1000m", "memory": "1.5Gi", "ephemeral-storage": "2048Ki"}
LIMITS_STORED = {"cpu": "1", "memory": "1536Mi", "ephemeral-storage": "2Mi"}
# JSON numbers are quantities too; 0.25 and 2 stay numbers on the wire.
NUMBERS: dict[str, Any] = {"cpu": 0.25, "memory": 134217728}
NUMBERS_STORED = {"cpu": "250m", "memory": "134217728"}
SIZE_LIMIT, SIZE_LIMIT_STORED = "1024Mi", "1Gi"
# One of each suffix family, including a decimal exponent, which keeps its family.
MORE: dict[str, Any] = {"cpu": "1500e-3", "memory": "1000M", "ephemeral-storage": "0.5Gi"}
MORE_STORED = {"cpu": "1500e-3", "memory": "1G", "ephemeral-storage": "512Mi"}


def _pod_spec(requests: dict[str, Any], limits: dict[str, Any]) -> dict[str, Any]:
    return {
        "containers": [
            {
                "name": "app",
                "image": "nginx:1.25",
                "resources": {"requests": dict(requests), "limits": dict(limits)},
                "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
            }
        ],
        "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": SIZE_LIMIT}}],
    }


def _deployment(
    name: str, requests: dict[str, Any] = REQUESTS, limits: dict[str, Any] = LIMITS
) -> dict[str, Any]:
    d = deployment(name)
    d["spec"]["template"]["spec"] = _pod_spec(requests, limits)
    return d


def _container(pod_spec: dict[str, Any]) -> dict[str, Any]:
    c: dict[str, Any] = pod_spec["containers"][0]
    return c


def _assert_stored(pod_spec: dict[str, Any], requests: dict[str, str], limits: dict[str, str]) -> None:
    resources = _container(pod_spec)["resources"]
    assert resources == {"requests": requests, "limits": limits}
    assert pod_spec["volumes"][0]["emptyDir"] == {"sizeLimit": SIZE_LIMIT_STORED}


@pytest.fixture
def scratch_ns(core: client.CoreV1Api) -> Iterator[str]:
    """A namespace of its own, for objects (quotas, limit ranges) that would constrain others."""
    name = unique("qty")
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)


def test_the_table_agrees_with_choreo_dps_quantity_module() -> None:
    # The renderer and the drift check use choreo_dp.api.quantity; it must predict this table.
    for written, stored in ((REQUESTS, REQUESTS_STORED), (LIMITS, LIMITS_STORED), (NUMBERS, NUMBERS_STORED)):
        assert {k: resource_quantity(v) for k, v in written.items()} == stored
    assert {k: resource_quantity(v) for k, v in MORE.items()} == MORE_STORED
    assert canonical_quantity(SIZE_LIMIT) == SIZE_LIMIT_STORED
    assert canonical_quantity("100u") == "100u"  # not a ResourceList entry: no rounding


def test_create_and_update_store_canonical_quantities(api: client.ApiClient, ns: str) -> None:
    name = unique("qty-put")
    path = f"/apis/apps/v1/namespaces/{ns}/deployments/{name}"
    status, body, _ = raw(api, "POST", f"/apis/apps/v1/namespaces/{ns}/deployments", body=_deployment(name))
    assert status == 201, body
    _assert_stored(body["spec"]["template"]["spec"], REQUESTS_STORED, LIMITS_STORED)
    status, body, _ = raw(api, "GET", path)
    _assert_stored(body["spec"]["template"]["spec"], REQUESTS_STORED, LIMITS_STORED)

    body["spec"]["template"]["spec"] = _pod_spec(NUMBERS, MORE)
    # Unconditional: the Deployment controller may have written status since the read.
    del body["metadata"]["resourceVersion"]
    status, body, _ = raw(api, "PUT", path, body=body)
    assert status == 200, body
    _assert_stored(body["spec"]["template"]["spec"], NUMBERS_STORED, MORE_STORED)


def test_patches_store_canonical_quantities(api: client.ApiClient, ns: str) -> None:
    name = unique("qty-patch")
    path = f"/apis/apps/v1/namespaces/{ns}/deployments/{name}"
    status, body, _ = raw(
        api, "POST", f"/apis/apps/v1/namespaces/{ns}/deployments", body=_deployment(name, {}, {})
    )
    assert status == 201, body

    merge = {"spec": {"template": {"spec": _pod_spec(REQUESTS, LIMITS)}}}
    status, body, _ = raw(api, "PATCH", path, body=merge, headers=MERGE)
    assert status == 200, body
    _assert_stored(body["spec"]["template"]["spec"], REQUESTS_STORED, LIMITS_STORED)

    ops = [
        {"op": "replace", "path": "/spec/template/spec/containers/0/resources/requests", "value": NUMBERS},
        {"op": "add", "path": "/spec/template/spec/containers/0/resources/limits/cpu", "value": "2000m"},
    ]
    status, body, _ = raw(api, "PATCH", path, body=ops, headers=JSONP)
    assert status == 200, body
    _assert_stored(body["spec"]["template"]["spec"], NUMBERS_STORED, {**LIMITS_STORED, "cpu": "2"})

    smp = {"spec": {"template": {"spec": {"containers": [{"name": "app", "resources": {"limits": MORE}}]}}}}
    status, body, _ = raw(api, "PATCH", path, body=smp, headers=SMP)
    assert status == 200, body
    _assert_stored(body["spec"]["template"]["spec"], NUMBERS_STORED, {**LIMITS_STORED, **MORE_STORED})


def test_server_side_apply_stores_canonical_quantities_and_reapplying_is_a_no_op(
    api: client.ApiClient, ns: str
) -> None:
    name = unique("qty-ssa")
    path = f"/apis/apps/v1/namespaces/{ns}/deployments/{name}"
    query = {"fieldManager": "qty-test", "force": "true"}
    desired = _deployment(name)
    status, body, _ = raw(api, "PATCH", path, query=query, body=yaml.safe_dump(desired), headers=APPLY)
    assert status == 201, body
    _assert_stored(body["spec"]["template"]["spec"], REQUESTS_STORED, LIMITS_STORED)
    assert body["metadata"]["generation"] == 1

    # The same intent, written non-canonically or canonically, changes nothing.  (Generation, not
    # resourceVersion: the Deployment controller writes status meanwhile.)
    canonical = copy.deepcopy(desired)
    canonical["spec"]["template"]["spec"] = _pod_spec(REQUESTS_STORED, LIMITS_STORED)
    for again in (desired, canonical):
        status, body, _ = raw(api, "PATCH", path, query=query, body=yaml.safe_dump(again), headers=APPLY)
        assert status == 200, body
        assert body["metadata"]["generation"] == 1
        _assert_stored(body["spec"]["template"]["spec"], REQUESTS_STORED, LIMITS_STORED)

    # JSON is YAML: numbers through apply too.
    numbers = copy.deepcopy(desired)
    numbers["spec"]["template"]["spec"] = _pod_spec(NUMBERS, MORE)
    status, body, _ = raw(api, "PATCH", path, query=query, body=json.dumps(numbers), headers=APPLY)
    assert status == 200, body
    assert body["metadata"]["generation"] == 2
    _assert_stored(body["spec"]["template"]["spec"], NUMBERS_STORED, MORE_STORED)


def test_workload_kinds_and_pods_store_canonical_quantities(api: client.ApiClient, ns: str) -> None:
    name = unique("qty-kinds")
    pod_spec = _pod_spec(REQUESTS, LIMITS)
    sts = {
        "metadata": {"name": name},
        "spec": {
            "serviceName": name,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec},
        },
    }
    job_pod = {**pod_spec, "restartPolicy": "Never"}
    job = {"metadata": {"name": name}, "spec": {"template": {"spec": job_pod}}}
    cron = {
        "metadata": {"name": name},
        "spec": {
            "schedule": "0 0 1 1 *",
            "suspend": True,
            "jobTemplate": {"spec": {"template": {"spec": job_pod}}},
        },
    }
    pod = {"metadata": {"name": name}, "spec": pod_spec}
    created = {
        "statefulset": (f"/apis/apps/v1/namespaces/{ns}/statefulsets", sts, ("spec", "template", "spec")),
        "job": (f"/apis/batch/v1/namespaces/{ns}/jobs", job, ("spec", "template", "spec")),
        "cronjob": (
            f"/apis/batch/v1/namespaces/{ns}/cronjobs",
            cron,
            ("spec", "jobTemplate", "spec", "template", "spec"),
        ),
        "pod": (f"/api/v1/namespaces/{ns}/pods", pod, ("spec",)),
    }
    for kind, (collection, obj, at) in created.items():
        status, body, _ = raw(api, "POST", collection, body=obj)
        assert status == 201, (kind, body)
        status, body, _ = raw(api, "GET", f"{collection}/{name}")
        assert status == 200, (kind, body)
        for step in at:
            body = body[step]
        _assert_stored(body, REQUESTS_STORED, LIMITS_STORED)


def test_quota_limit_range_and_claim_store_canonical_quantities(
    api: client.ApiClient, scratch_ns: str
) -> None:
    ns = scratch_ns
    quota = {
        "metadata": {"name": "q"},
        "spec": {
            "hard": {
                "requests.storage": "10240Mi",
                "requests.cpu": "4000m",
                "pods": "1e1",
                "limits.memory": 2.5e9,
            }
        },
    }
    status, body, _ = raw(api, "POST", f"/api/v1/namespaces/{ns}/resourcequotas", body=quota)
    assert status == 201, body
    assert body["spec"]["hard"] == {
        "requests.storage": "10Gi",
        "requests.cpu": "4",
        "pods": "10",
        "limits.memory": "2500M",
    }

    limit_range = {
        "metadata": {"name": "lr"},
        "spec": {
            "limits": [
                {
                    "type": "Container",
                    "max": {"cpu": "2000m", "memory": "2048Mi"},
                    "min": {"cpu": "0.0001"},
                    "default": {"cpu": "0.5"},
                    "defaultRequest": {"cpu": "100u"},
                    "maxLimitRequestRatio": {"cpu": "1000.0"},
                }
            ]
        },
    }
    status, body, _ = raw(api, "POST", f"/api/v1/namespaces/{ns}/limitranges", body=limit_range)
    assert status == 201, body.get("message")
    item = body["spec"]["limits"][0]
    assert item["max"] == {"cpu": "2", "memory": "2Gi"}
    assert item["min"] == {"cpu": "1m"}
    # The memory default comes from max, as SetDefaults_LimitRangeItem fills it.
    assert item["default"] == {"cpu": "500m", "memory": "2Gi"}
    assert item["defaultRequest"] == {"cpu": "1m", "memory": "2Gi"}
    assert item["maxLimitRequestRatio"] == {"cpu": "1k"}

    claim = {
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "0.5Gi"}}},
    }
    status, body, _ = raw(api, "POST", f"/api/v1/namespaces/{ns}/persistentvolumeclaims", body=claim)
    assert status == 201, body
    assert body["spec"]["resources"]["requests"] == {"storage": "512Mi"}
    # The claim's size is immutable while it is unbound; the same size written another way is not a change.
    merge = {"spec": {"resources": {"requests": {"storage": "524288Ki"}}}}
    status, body, _ = raw(
        api, "PATCH", f"/api/v1/namespaces/{ns}/persistentvolumeclaims/data", body=merge, headers=MERGE
    )
    assert status == 200, body.get("message")
    assert body["spec"]["resources"]["requests"] == {"storage": "512Mi"}
