"""Server-side apply drops a whole struct the applier stopped sending, defaulted children included.

Kubernetes (structured-merge-diff ``EnsureNamedFieldsAreMembers`` in prune) treats the struct fields
an applier owned as members: when the next apply no longer mentions ``spec.autoscaling`` at all and
no other manager owns anything under it, the struct goes, with the fields the schema defaulted in it
(``minReplicas``, ``targetCPUUtilizationPercentage``).  Leaving the defaults behind would make the
object invalid (``maxReplicas`` is required), i.e. a 422 for a perfectly ordinary apply.
"""

from __future__ import annotations

from typing import Any

import yaml
from kubernetes import client

from tests.conformance.helpers import choreo_app, install_crds, raw, unique

APPLY = {"Content-Type": "application/apply-patch+yaml"}


def _apply(api: client.ApiClient, path: str, obj: dict[str, Any], manager: str) -> tuple[int, Any]:
    query = {"fieldManager": manager, "force": "true"}
    status, body, _ = raw(api, "PATCH", path, query=query, body=yaml.safe_dump(obj), headers=APPLY)
    return status, body


def test_dropping_a_struct_removes_its_defaulted_children(api: client.ApiClient, ns: str) -> None:
    install_crds(api)
    name = unique("drop")
    path = f"/apis/choreo.dev/v1alpha1/namespaces/{ns}/choreoapps/{name}"
    status, body = _apply(api, path, choreo_app(name, ns, autoscaling={"maxReplicas": 5}), "ctl")
    assert status == 201, body
    # The schema defaulted the rest of the struct (nobody owns those fields).
    assert body["spec"]["autoscaling"]["minReplicas"] == 1
    assert body["spec"]["autoscaling"]["maxReplicas"] == 5

    status, body = _apply(api, path, choreo_app(name, ns, replicas=2), "ctl")
    assert status == 200, body
    assert "autoscaling" not in body["spec"], body["spec"]
    assert body["spec"]["replicas"] == 2


def test_a_struct_another_manager_owns_part_of_stays(api: client.ApiClient, ns: str) -> None:
    install_crds(api)
    name = unique("keep")
    path = f"/apis/choreo.dev/v1alpha1/namespaces/{ns}/choreoapps/{name}"
    status, body = _apply(api, path, choreo_app(name, ns, autoscaling={"maxReplicas": 5}), "ctl")
    assert status == 201, body
    partial = {
        "apiVersion": "choreo.dev/v1alpha1",
        "kind": "ChoreoApp",
        "metadata": {"name": name},
        "spec": {"autoscaling": {"maxReplicas": 7}},
    }
    status, body = _apply(api, path, partial, "scaler")
    assert status == 200, body
    # ctl stops sending autoscaling; "scaler" still owns maxReplicas, so the struct stays.
    status, body = _apply(api, path, choreo_app(name, ns), "ctl")
    assert status == 200, body
    assert body["spec"]["autoscaling"]["maxReplicas"] == 7
