"""CustomResourceDefinition objects -> served resource types, plus the status the API sets."""

from __future__ import annotations

from typing import Any

from kube_emulator.errors import cause, invalid
from kube_emulator.resources import CrdVersion, ResourceType

JSON = dict[str, Any]


def check_crd(obj: JSON) -> None:
    """The checks a client is most likely to trip over; 422 like the real server."""
    spec = obj.get("spec") or {}
    name = obj.get("metadata", {}).get("name", "")
    names = spec.get("names") or {}
    errors = []
    if not spec.get("group"):
        errors.append(cause("spec.group", "Required value", "FieldValueRequired"))
    if not names.get("plural"):
        errors.append(cause("spec.names.plural", "Required value", "FieldValueRequired"))
    if not names.get("kind"):
        errors.append(cause("spec.names.kind", "Required value", "FieldValueRequired"))
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        errors.append(
            cause(
                "spec.scope",
                'Unsupported value: supported values: "Cluster", "Namespaced"',
                "FieldValueNotSupported",
            )
        )
    versions = spec.get("versions") or []
    if not versions or sum(1 for v in versions if v.get("storage")) != 1:
        errors.append(
            cause("spec.versions", "Invalid value: must have exactly one version marked as storage version")
        )
    if names.get("plural") and spec.get("group") and name != f"{names['plural']}.{spec['group']}":
        errors.append(
            cause("metadata.name", f'Invalid value: "{name}": must be spec.names.plural+"."+spec.group')
        )
    for i, v in enumerate(versions):
        if not (v.get("schema") or {}).get("openAPIV3Schema"):
            errors.append(
                cause(
                    f"spec.versions[{i}].schema.openAPIV3Schema",
                    "Required value: schemas are required",
                    "FieldValueRequired",
                )
            )
    if errors:
        raise invalid("CustomResourceDefinition", "apiextensions.k8s.io", name, errors)


def resource_types(obj: JSON) -> list[ResourceType]:
    spec = obj["spec"]
    names = spec["names"]
    storage = next(v["name"] for v in spec["versions"] if v.get("storage"))
    out = []
    for v in spec["versions"]:
        if not v.get("served", True):
            continue
        subs = set((v.get("subresources") or {}).keys())
        out.append(
            ResourceType(
                group=spec["group"],
                version=v["name"],
                plural=names["plural"],
                kind=names["kind"],
                namespaced=spec.get("scope") == "Namespaced",
                short_names=tuple(names.get("shortNames") or ()),
                categories=tuple(names.get("categories") or ()),
                subresources=frozenset(subs),
                singular=names.get("singular") or names["kind"].lower(),
                crd=CrdVersion(
                    name=v["name"],
                    schema=(v.get("schema") or {}).get("openAPIV3Schema"),
                    printer_columns=list(v.get("additionalPrinterColumns") or []),
                    storage=bool(v.get("storage")),
                ),
                crd_name=obj["metadata"]["name"],
                storage_version=storage,
            )
        )
    return out


def established_status(obj: JSON, now: str) -> JSON:
    spec = obj.get("spec") or {}
    names = dict(spec.get("names") or {})
    names.setdefault("singular", str(names.get("kind", "")).lower())
    names.setdefault("listKind", f"{names.get('kind', '')}List")
    old = {c.get("type"): c for c in (obj.get("status") or {}).get("conditions") or []}

    def cond(type_: str, reason: str, message: str) -> JSON:
        prev = old.get(type_)
        ts = prev["lastTransitionTime"] if prev and prev.get("status") == "True" else now
        return {
            "type": type_,
            "status": "True",
            "reason": reason,
            "message": message,
            "lastTransitionTime": ts,
        }

    return {
        "acceptedNames": names,
        "conditions": [
            cond("NamesAccepted", "NoConflicts", "no conflicts found"),
            cond("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
        "storedVersions": [v["name"] for v in spec.get("versions") or [] if v.get("storage")],
    }
