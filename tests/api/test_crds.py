"""The generated CRDs: fresh, structural, accepted by Kubernetes' own schemas, and faithful to the models."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from choreo_dp.api.crdgen import all_crds, render_yaml

from .samples import DATAPLANE, ROOT, example_objects

CRDS = all_crds()
BY_KIND = {crd["spec"]["names"]["kind"]: crd for crd in CRDS.values()}
ALLOWED_KEYS = {
    "type", "properties", "items", "required", "description", "enum", "pattern", "format", "default",
    "minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems",
    "x-kubernetes-list-type", "x-kubernetes-list-map-keys", "x-kubernetes-validations",
    "x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string",
}  # fmt: skip


def test_committed_crds_match_the_models() -> None:
    committed = {p.name: p.read_text() for p in (ROOT / "crds").glob("*.yaml")}
    generated = {name: render_yaml(crd) for name, crd in CRDS.items()}
    assert committed.keys() == generated.keys(), "crds/ holds other files than the generator writes"
    stale = [name for name in generated if committed[name] != generated[name]]
    assert not stale, f"crds/ is stale for {stale}: run `make crds` and commit"


def _walk(node: dict[str, Any], path: str) -> list[str]:
    problems = [f"{path}: key {k}" for k in node if k not in ALLOWED_KEYS]
    if "type" not in node and not node.get("x-kubernetes-int-or-string"):
        problems.append(f"{path}: untyped node")
    for name, sub in node.get("properties", {}).items():
        if path.endswith(".metadata") or (name == "metadata" and path == ""):
            continue
        problems += _walk(sub, f"{path}.{name}")
    if "items" in node:
        problems += _walk(node["items"], f"{path}[]")
    return problems


@pytest.mark.parametrize("name", sorted(CRDS))
def test_schemas_are_structural(name: str) -> None:
    schema = CRDS[name]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert _walk(schema, "") == []
    text = yaml.safe_dump(schema)
    assert "$ref" not in text and "anyOf" not in text and "additionalProperties" not in text


@pytest.mark.parametrize("name", sorted(CRDS))
@pytest.mark.parametrize("k8s", ["1.29.0", "1.33.0"])
def test_kubernetes_accepts_the_crds(name: str, k8s: str) -> None:
    kubernetes_validate.validate(CRDS[name], k8s, strict=True)


@pytest.mark.parametrize("name", sorted(CRDS))
def test_crd_metadata(name: str) -> None:
    spec = CRDS[name]["spec"]
    version = spec["versions"][0]
    assert spec["group"] == "choreo.dev" and version["name"] == "v1alpha1"
    assert version["subresources"] == {"status": {}}
    assert spec["names"]["categories"] == ["choreo"]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert {"conditions", "observedGeneration"} <= status.keys()
    cond = status["conditions"]["items"]["properties"]
    assert {"type", "status", "reason", "message", "lastTransitionTime", "observedGeneration"} <= cond.keys()


def _undescribed(node: dict[str, Any], path: str) -> list[str]:
    out = []
    for name, sub in node.get("properties", {}).items():
        where = f"{path}.{name}"
        # The apiserver refuses anything but a type on metadata; it supplies ObjectMeta's description.
        if not str(sub.get("description", "")).strip() and where != ".metadata":
            out.append(where)
        out += _undescribed(sub, where)
        if "items" in sub:
            out += _undescribed(sub["items"], f"{where}[]")
    return out


@pytest.mark.parametrize("name", sorted(CRDS))
def test_every_field_is_described(name: str) -> None:
    schema = CRDS[name]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert schema["description"]
    assert _undescribed(schema, "") == [], "add Field(description=...) in choreo_dp.api for these"


def test_metadata_is_left_to_kubernetes() -> None:
    """A real apiserver refuses a CRD whose metadata schema says more than its type (422)."""
    for crd in CRDS.values():
        assert crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["metadata"] == {
            "type": "object"
        }


def _schema(kind: str) -> dict[str, Any]:
    return BY_KIND[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


@pytest.mark.parametrize("obj", [*example_objects(), DATAPLANE], ids=lambda o: o["metadata"]["name"])
def test_examples_validate_against_the_generated_schema(obj: dict[str, Any]) -> None:
    jsonschema.validate(obj, _schema(obj["kind"]))


@pytest.mark.parametrize(
    ("patch", "where"),
    [
        ({"type": "daemon"}, "type"),
        ({"replicas": -1}, "replicas"),
        ({"endpoints": [{"name": "h", "port": 70000}]}, "port"),
        ({"environment": "UPPER"}, "environment"),
        ({"secrets": [{"name": "1x", "keyVaultSecret": "s"}]}, "name"),
    ],
)
def test_the_schema_refuses_what_the_model_refuses(patch: dict[str, Any], where: str) -> None:
    obj = copy.deepcopy(next(o for o in example_objects() if o["kind"] == "ChoreoApp"))
    obj["spec"].update(patch)
    with pytest.raises(jsonschema.ValidationError) as info:
        jsonschema.validate(obj, _schema("ChoreoApp"))
    assert where in str(info.value.path) or where in info.value.message


def test_cel_rules_cover_cross_field_constraints() -> None:
    rules = [r["rule"] for r in _schema("ChoreoApp")["properties"]["spec"]["x-kubernetes-validations"]]
    assert any("schedule" in r for r in rules) and any("maxReplicas" in r for r in rules)


def _jsonpath(obj: Any, path: str) -> Any:
    """The JSONPath subset printer columns use: .a.b and .a[0].b."""
    for part in re.findall(r"\.([A-Za-z0-9_-]+)|\[(\d+)\]", path):
        key, index = part
        if key:
            obj = obj.get(key) if isinstance(obj, dict) else None
        else:
            obj = obj[int(index)] if isinstance(obj, list) and len(obj) > int(index) else None
    return obj


SAMPLE_APP = {
    "metadata": {"name": "a", "creationTimestamp": "2026-01-01T00:00:00Z"},
    "spec": {"environment": "dev", "type": "service"},
    "status": {
        "ready": "2/3",
        "phase": "Progressing",
        "image": "ghcr.io/acme/x@sha256:abc",
        "endpoints": [{"name": "http", "visibility": "Public", "url": "https://dev.acme.example/orders"}],
        "rollout": {"phase": "Progressing", "step": 1, "weight": 25, "summary": "Canary 25%"},
    },
}
SAMPLE_ENV = {
    "metadata": {"name": "dev", "creationTimestamp": "2026-01-01T00:00:00Z"},
    "spec": {"production": False},
    "status": {"namespace": "choreo-dev", "apps": 3, "phase": "Ready"},
}


@pytest.mark.parametrize(
    ("kind", "sample"), [("ChoreoApp", SAMPLE_APP), ("Environment", SAMPLE_ENV), ("DataPlane", DATAPLANE)]
)
def test_printer_columns_resolve_on_a_sample(kind: str, sample: dict[str, Any]) -> None:
    columns = BY_KIND[kind]["spec"]["versions"][0]["additionalPrinterColumns"]
    for column in columns:
        value = _jsonpath(sample, column["jsonPath"])
        assert value is not None, f"{kind} column {column['name']} ({column['jsonPath']}) resolves to nothing"


def test_choreoapp_columns_answer_is_it_healthy() -> None:
    columns = BY_KIND["ChoreoApp"]["spec"]["versions"][0]["additionalPrinterColumns"]
    names = [c["name"].upper() for c in columns if not c.get("priority")]
    assert names == ["ENVIRONMENT", "TYPE", "READY", "STATUS", "ROLLOUT", "URL", "AGE"]
    assert [c["name"].upper() for c in columns if c.get("priority") == 1] == ["IMAGE"]


def test_crds_command_writes_the_same_files(tmp_path: Path) -> None:
    from choreo_dp.cli.main import main

    assert main(["crds", "--output-dir", str(tmp_path)]) == 0
    for name in CRDS:
        assert (tmp_path / name).read_text() == (ROOT / "crds" / name).read_text()


def test_crd_reference_doc_is_current() -> None:
    from choreo_dp.api.docgen import render_markdown

    assert (ROOT / "docs" / "crds.md").read_text() == render_markdown(), (
        "docs/crds.md is stale: run `python -m choreo_dp.api.docgen docs/crds.md`"
    )
