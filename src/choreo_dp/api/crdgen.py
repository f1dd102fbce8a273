"""Generate CustomResourceDefinitions from the pydantic models.

Pydantic emits JSON Schema with ``$ref``/``$defs``, ``anyOf`` for optionals, ``title`` and
``additionalProperties: false``; Kubernetes wants structural OpenAPI v3: everything inlined,
every node typed, no ``anyOf`` with types, and no ``additionalProperties: false``.
"""

from __future__ import annotations

from typing import Any

import yaml

from choreo_dp.api.choreoapp import ChoreoApp
from choreo_dp.api.common import GROUP, VERSION, Resource
from choreo_dp.api.dataplane import DataPlane
from choreo_dp.api.environment import Environment

RESOURCES: tuple[type[Resource], ...] = (Environment, ChoreoApp, DataPlane)
_DROP_KEYS = {"title", "additionalProperties", "$defs"}
# Kubernetes' own wording for the fields every object has (as in its published schemas).
_API_VERSION_DESCRIPTION = (
    "APIVersion defines the versioned schema of this representation of an object. Servers should convert "
    "recognized schemas to the latest internal value, and may reject unrecognized values. More info: "
    "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources"
)
_KIND_DESCRIPTION = (
    "Kind is a string value representing the REST resource this object represents. Servers may infer this "
    "from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: "
    "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds"
)


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].split("/")[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _inline(merged, defs)
    if "anyOf" in node:
        # Optional[X] is anyOf [X, null]: not required is how OpenAPI says "may be absent".
        variants = [v for v in node["anyOf"] if v.get("type") != "null"]
        if len(variants) != 1:
            raise ValueError(f"cannot express union in a structural schema: {node}")
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if rest.get("default", ...) is None:
            rest.pop("default")
        return _inline({**variants[0], **rest}, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP_KEYS:
            continue
        if key == "properties":
            out[key] = {name: _inline(sub, defs) for name, sub in value.items()}
        else:
            out[key] = _inline(value, defs)
    if out.get("default") == [] or out.get("default") == {}:
        # Empty defaults only add noise to every stored object.
        out.pop("default")
    return out


def _schema_for(model: type[Resource]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    spec = _inline(raw["properties"]["spec"], defs)
    status = _inline(raw["properties"]["status"], defs)
    if model.spec_cel_rules:
        spec["x-kubernetes-validations"] = model.spec_cel_rules
    return {
        "type": "object",
        "description": model.crd.description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": _API_VERSION_DESCRIPTION},
            "kind": {"type": "string", "description": _KIND_DESCRIPTION},
            # Kubernetes refuses anything but a type here (it supplies ObjectMeta and its description).
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


def crd_for(model: type[Resource]) -> dict[str, Any]:
    info = model.crd
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": info.name,
            "labels": {"app.kubernetes.io/name": "choreo-dp", "app.kubernetes.io/part-of": "choreo-dp"},
        },
        "spec": {
            "group": GROUP,
            "scope": info.scope,
            "names": {
                "kind": info.kind,
                "listKind": f"{info.kind}List",
                "plural": info.plural,
                "singular": info.singular,
                "shortNames": info.short_names,
                "categories": info.categories,
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [c.to_crd() for c in info.printer_columns],
                    "schema": {"openAPIV3Schema": _schema_for(model)},
                }
            ],
        },
    }


def all_crds() -> dict[str, dict[str, Any]]:
    """File name -> CRD manifest."""
    return {f"{m.crd.name}.yaml": crd_for(m) for m in RESOURCES}


def render_yaml(crd: dict[str, Any]) -> str:
    header = "# Generated from choreo_dp.api by `choreo-dp crds`; do not edit by hand.\n"
    return header + yaml.safe_dump(crd, sort_keys=False, width=120)
