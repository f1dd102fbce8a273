"""Every rendered manifest, in every scenario, is valid (strict) for Kubernetes 1.29 to 1.33 and 1.36.

Rendered for each version as helm renders for a cluster of it (ValidatingAdmissionPolicy from 1.30).

kubernetes-validate's own ``validate()`` re-reads the 1 MB definitions file on every call; we use its
bundled schemas with one compiled validator per (version, kind), which keeps this test fast.
"""

from __future__ import annotations

import functools
import importlib.resources as resources
import json
import re
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from kubernetes_validate.utils import all_versions
from referencing import Registry, Resource

from tests.helm.chart import ADMISSION_POLICY_API, MONITORING_API, SCENARIOS, Manifest, render

KUBE_VERSIONS = ["1.29", "1.30", "1.31", "1.32", "1.33", "1.36"]  # 1.36: the real test cluster

# Kinds kubernetes-validate has no schema for: the Prometheus Operator's CRD. Skipped explicitly,
# and only these; any other missing schema fails the test.
NO_SCHEMA = {(MONITORING_API, "ServiceMonitor")}


def schema_dir(version: str) -> Any:
    base = resources.files(kubernetes_validate).joinpath("kubernetes-json-schema")
    return base.joinpath(f"v{version}.0-local-strict")


@functools.cache
def definitions(version: str) -> Resource[Any]:
    return Resource.from_contents(json.loads(schema_dir(version).joinpath("_definitions.json").read_text()))


@functools.cache
def validator(version: str, api_version: str, kind: str) -> jsonschema.protocols.Validator | None:
    # kubernetes-validate's file naming: rbac.authorization.k8s.io/v1 -> rbac-v1, v1 -> v1.
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    path = schema_dir(version).joinpath(f"{kind.lower()}-{group_version}.json")
    if not path.is_file():
        return None
    schema = json.loads(path.read_text())
    registry: Registry[Any] = Resource.from_contents(schema) @ Registry()
    registry = definitions(version) @ registry
    return jsonschema.Draft202012Validator(schema, registry=registry)


def errors_for(doc: Manifest, version: str) -> list[str]:
    check = validator(version, doc["apiVersion"], doc["kind"])
    if check is None:
        if (doc["apiVersion"], doc["kind"]) in NO_SCHEMA:
            return []
        return [f"no schema for {doc['apiVersion']} {doc['kind']}"]
    return [
        f"{'.'.join(str(p) for p in err.absolute_path) or '<root>'}: {err.message}"
        for err in check.iter_errors(doc)
    ]


def test_the_installed_package_covers_the_versions() -> None:
    available = {v.rsplit(".", 1)[0] if v.count(".") == 2 else v for v in all_versions()}
    assert set(KUBE_VERSIONS) <= available, sorted(available)


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_rendered_manifests_validate_strictly(version: str) -> None:
    seen: dict[str, str] = {}  # identical objects across scenarios are validated once
    failures: list[str] = []
    for name, scenario in sorted(SCENARIOS.items()):
        # A cluster of this version serves ValidatingAdmissionPolicy from 1.30 on.
        extra = (ADMISSION_POLICY_API,) if version != "1.29" else ()
        for doc in render(
            scenario.values, tuple(a for a in scenario.api_versions if a != ADMISSION_POLICY_API) + extra
        ):
            key = json.dumps(doc, sort_keys=True)
            if key in seen:
                continue
            seen[key] = name
            for error in errors_for(doc, version):
                failures.append(f"[{name}] {doc['kind']}/{doc['metadata']['name']}: {error}")
    assert not failures, "\n".join(failures)
    kinds = {json.loads(k)["kind"] for k in seen}
    # The matrix really exercised every kind the chart can render (on this version).
    policy = {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}  # GA in 1.30
    assert (kinds >= policy) == (version != "1.29"), sorted(kinds)
    assert kinds >= {
        "CustomResourceDefinition",
        "Deployment",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Service",
        "Secret",
        "ConfigMap",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "ServiceMonitor",
    }


def test_the_validator_is_strict() -> None:
    """A typo'd field and a wrong type are reported: the check above can fail."""
    docs = SCENARIOS["defaults"].render()
    dep = next(d for d in docs if d["kind"] == "Deployment")
    dep["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    dep["spec"]["replicas"] = "one"
    errors = errors_for(dep, "1.33")
    assert any("securityContxt" in e for e in errors), errors
    assert any("replicas" in e for e in errors), errors
    assert errors_for({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}, "1.29")
