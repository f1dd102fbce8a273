"""Regenerate ``openapi_builtin.json.gz``: the OpenAPI v3 schemas of the built-in kinds the emulator serves.

The source is the OpenAPI v3 the real kube-apiserver publishes, as Kubernetes commits it
(``api/openapi-spec/v3/*.json`` of ``k8s.io/kubernetes``, written from a running apiserver by
``hack/update-openapi-spec.sh``), read from a Go module cache that ``tools/kube/build.py`` fills:
``python -m kube_emulator.openapi_gen --sources $(go env GOMODCACHE) v1.36.3``.

What is kept is compact: only the schemas reachable from the kinds in ``resources.BUILTINS``
(their ``$ref`` closure), and in each schema only what describes a field (type, description,
properties, items, refs, enums, formats, defaults, ``x-kubernetes-*`` extensions); paths, examples
and the kinds the emulator does not serve are dropped.  The Gateway API kinds are CRDs on a real
cluster, not part of that document, and are left out.  The output is deterministic.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path
from typing import Any

from kube_emulator.resources import BUILTINS

JSON = dict[str, Any]
OUTPUT = Path(__file__).with_name("openapi_builtin.json.gz")
_KEEP = {
    "description",
    "type",
    "properties",
    "items",
    "additionalProperties",
    "allOf",
    "$ref",
    "required",
    "enum",
    "format",
    "default",
}


def spec_dir(modcache: Path, version: str) -> Path:
    return modcache / f"k8s.io/kubernetes@{version}" / "api" / "openapi-spec" / "v3"


def _document_name(group: str, version: str) -> str:
    return f"apis__{group}__{version}_openapi.json" if group else f"api__{version}_openapi.json"


def _prune(schema: Any) -> Any:
    """Keep what describes a field; recurse only where a value is itself a schema."""
    if not isinstance(schema, dict):
        return schema  # additionalProperties: true/false
    out: JSON = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {name: _prune(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties"):
            out[key] = _prune(value)
        elif key == "allOf":
            out[key] = [_prune(sub) for sub in value]
        elif key in _KEEP or key.startswith("x-kubernetes-"):
            out[key] = value

    return out


def _refs(node: Any, found: list[str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            # JSONSchemaProps has a property called "$ref"; only a string is a reference.
            if key == "$ref" and isinstance(value, str):
                found.append(value.rsplit("/", 1)[-1])
            else:
                _refs(value, found)
    elif isinstance(node, list):
        for item in node:
            _refs(item, found)


# Not reached from a kind, but what a CRD's list kind refers to (the emulator publishes those).
EXTRA_ROOTS = ("api__v1_openapi.json", "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta")


def collect(source: Path) -> JSON:
    """Schema name -> pruned schema, for every schema the served built-in kinds reach."""
    out: JSON = {}
    documents: dict[str, JSON] = {}
    core = json.loads((source / EXTRA_ROOTS[0]).read_text())["components"]["schemas"]
    out[EXTRA_ROOTS[1]] = _prune(core[EXTRA_ROOTS[1]])
    for rt in BUILTINS:
        path = source / _document_name(rt.group, rt.version)
        if not path.exists():
            continue  # not an upstream group (Gateway API)
        doc = documents.setdefault(path.name, json.loads(path.read_text()))
        schemas: JSON = doc["components"]["schemas"]
        gvk = {"group": rt.group, "version": rt.version, "kind": rt.kind}
        roots = [n for n, s in schemas.items() if gvk in s.get("x-kubernetes-group-version-kind", [])]
        if not roots:
            raise SystemExit(f"{rt.group}/{rt.version} {rt.kind}: no schema in {path.name}")
        stack = list(roots)
        while stack:
            name = stack.pop()
            if name in out:
                continue
            out[name] = _prune(schemas[name])
            _refs(schemas[name], stack)
    return dict(sorted(out.items()))


def render(schemas: JSON) -> bytes:
    raw = json.dumps(schemas, sort_keys=True, separators=(",", ":")).encode()
    return gzip.compress(raw, compresslevel=9, mtime=0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--sources", type=Path, required=True, help="a Go module cache (go env GOMODCACHE)")
    ap.add_argument("version", help="the k8s.io/kubernetes version, e.g. v1.36.3")
    ap.add_argument("--output", type=Path, default=OUTPUT)
    args = ap.parse_args(argv)
    source = spec_dir(args.sources, args.version)
    if not source.is_dir():
        print(f"{source}: not found (run tools/kube/build.py first)", file=sys.stderr)
        return 1
    schemas = collect(source)
    args.output.write_bytes(render(schemas))
    print(f"{len(schemas)} schemas -> {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
