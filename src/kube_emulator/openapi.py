"""OpenAPI endpoints: ``/openapi/v3`` for ``kubectl explain``, ``/openapi/v2`` kept empty.

``/openapi/v3`` is the apiserver's discovery document (one ``serverRelativeURL`` with a content
hash per group-version) and ``/openapi/v3/<api|apis/group>/<version>`` one document per
group-version, built live from the registry: a CRD's schema comes from its served version (a CRD
added later appears under a new hash), a built-in kind's from ``openapi_builtin.json.gz``, the
schemas the real apiserver publishes (see ``openapi_gen``).  Hash, redirect and cache headers
follow kube-openapi's handler3, so kubectl's HTTP cache behaves as against a real server.

Paths carry only ``get`` (``post`` for create-only kinds) operations, each tagged with its
group-version-kind, which is all explain looks up.  No ``patch`` operation is published on
purpose: kubectl computes a client-side apply patch and decides on server-side field validation
from the ``patch`` operations of this document; without them it keeps the behaviour it had when
this server published no v3 (its compiled-in types), which the conformance suite proves.

``/openapi/v2`` answers with an empty (valid) document: kubectl's client-side validation then finds
no schema for any kind and skips it, leaving validation to this server.
"""

from __future__ import annotations

import copy
import functools
import gzip
import hashlib
import json
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web

from kube_emulator.errors import ApiFailure
from kube_emulator.resources import Registry, ResourceType

JSON = dict[str, Any]
PB_V2 = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"
BUILTIN_FILE = Path(__file__).with_name("openapi_builtin.json.gz")
REF = "#/components/schemas/"
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
LIST_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta"
# Any built-in kind carries the standard apiVersion/kind/metadata descriptions; CRDs get the same.
_STANDARD_FIELDS_FROM = "io.k8s.api.core.v1.ConfigMap"


@functools.cache
def builtin_schemas() -> JSON:
    loaded: JSON = json.loads(gzip.decompress(BUILTIN_FILE.read_bytes()))
    return loaded


@functools.cache
def _builtin_by_gvk() -> dict[tuple[str, str, str], str]:
    out: dict[tuple[str, str, str], str] = {}
    for name, schema in builtin_schemas().items():
        for gvk in schema.get("x-kubernetes-group-version-kind", []):
            out.setdefault((gvk.get("group", ""), gvk["version"], gvk["kind"]), name)
    return out


def gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def component_name(rt: ResourceType) -> str:
    """What the apiserver names a CRD's schema: the group reversed, version, kind."""
    return ".".join([*reversed(rt.group.split(".")), rt.version, rt.kind])


def _closure(roots: list[str], schemas: JSON) -> JSON:
    out: JSON = {}
    stack = list(roots)
    while stack:
        name = stack.pop()
        if name in out or name not in schemas:
            continue
        out[name] = schemas[name]
        _collect_refs(schemas[name], stack)
    return out


def _collect_refs(node: Any, found: list[str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                found.append(value.rsplit("/", 1)[-1])
            else:
                _collect_refs(value, found)
    elif isinstance(node, list):
        for item in node:
            _collect_refs(item, found)


def _int_or_string(node: Any) -> None:
    """Publish int-or-string as the apiserver does: with ``anyOf: [integer, string]``."""
    if isinstance(node, dict):
        if node.get("x-kubernetes-int-or-string") and "anyOf" not in node:
            node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        for value in node.values():
            _int_or_string(value)
    elif isinstance(node, list):
        for item in node:
            _int_or_string(item)


def _crd_component(rt: ResourceType) -> JSON:
    assert rt.crd is not None
    schema = copy.deepcopy(rt.crd.schema or {"type": "object"})
    _int_or_string(schema)
    standard = builtin_schemas()[_STANDARD_FIELDS_FROM]["properties"]
    properties = schema.setdefault("properties", {})
    properties["apiVersion"] = copy.deepcopy(standard["apiVersion"])
    properties["kind"] = copy.deepcopy(standard["kind"])
    # As the apiserver publishes a CRD's metadata: the built-ins' description and ref, no default.
    properties["metadata"] = {k: v for k, v in standard["metadata"].items() if k != "default"}
    schema["x-kubernetes-group-version-kind"] = [{"group": rt.group, "kind": rt.kind, "version": rt.version}]
    return schema


def _crd_list_component(rt: ResourceType, item: str) -> JSON:
    standard = builtin_schemas()[_STANDARD_FIELDS_FROM]["properties"]
    conventions = "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md"
    return {
        "description": f"{rt.kind}List is a list of {rt.kind}",
        "type": "object",
        "required": ["items"],
        "properties": {
            "apiVersion": copy.deepcopy(standard["apiVersion"]),
            "items": {
                "description": f"List of {rt.plural}. More info: {conventions}",
                "type": "array",
                "items": {"$ref": REF + item},
            },
            "kind": copy.deepcopy(standard["kind"]),
            "metadata": {
                "description": f"Standard list metadata. More info: {conventions}#types-kinds",
                "allOf": [{"$ref": REF + LIST_META}],
            },
        },
        "x-kubernetes-group-version-kind": [
            {"group": rt.group, "kind": f"{rt.kind}List", "version": rt.version}
        ],
    }


def _paths(rt: ResourceType, component: str) -> JSON:
    base = f"/{gv_path(rt.group, rt.version)}"
    collection = f"{base}/namespaces/{{namespace}}/{rt.plural}" if rt.namespaced else f"{base}/{rt.plural}"
    content = {"application/json": {"schema": {"$ref": REF + component}}}
    gvk = {"group": rt.group, "version": rt.version, "kind": rt.kind}
    if "get" in rt.verbs:
        op: JSON = {
            "description": f"read the specified {rt.kind}",
            "operationId": f"read{rt.kind}",
            "responses": {"200": {"description": "OK", "content": content}},
            "x-kubernetes-action": "get",
            "x-kubernetes-group-version-kind": gvk,
        }
        return {f"{collection}/{{name}}": {"get": op}}
    op = {
        "description": f"create a {rt.kind}",
        "operationId": f"create{rt.kind}",
        "requestBody": {"content": content},
        "responses": {"201": {"description": "Created", "content": content}},
        "x-kubernetes-action": "post",
        "x-kubernetes-group-version-kind": gvk,
    }
    return {collection: {"post": op}}


def group_version_document(reg: Registry, group: str, version: str) -> JSON | None:
    kinds = reg.in_group_version(group, version)
    if not kinds:
        return None
    builtins = builtin_schemas()
    by_gvk = _builtin_by_gvk()
    components: JSON = {}
    paths: JSON = {}
    roots: list[str] = []
    for rt in kinds:
        if rt.crd is not None:
            name = component_name(rt)
            components[name] = _crd_component(rt)
            components[f"{name}List"] = _crd_list_component(rt, name)
            roots += [OBJECT_META, LIST_META]
        else:
            found = by_gvk.get((rt.group, rt.version, rt.kind))
            if found is None:
                continue  # served without a published schema (Gateway API, see openapi_gen)
            name = found
            roots.append(found)
        paths.update(_paths(rt, name))
    components.update(_closure(roots, builtins))
    title = "Kubernetes CRD Swagger" if all(rt.crd is not None for rt in kinds) else "Kubernetes"
    return {
        "openapi": "3.0.0",
        "info": {"title": title, "version": "v0.1.0" if title != "Kubernetes" else "unversioned"},
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": dict(sorted(components.items()))},
    }


@dataclass(frozen=True, slots=True)
class _Rendered:
    body: bytes
    etag: str


class OpenApiV3:
    """The v3 documents of one registry, rebuilt when a CRD changes (``Registry.generation``)."""

    def __init__(self) -> None:
        self._generation = -1
        self._documents: dict[str, _Rendered] = {}
        self._discovery = _Rendered(b"", "")

    def _refresh(self, reg: Registry) -> None:
        if self._generation == reg.generation:
            return
        documents: dict[str, _Rendered] = {}
        gvs: dict[str, tuple[str, str]] = {}
        for rt in reg:
            gvs.setdefault(gv_path(rt.group, rt.version), (rt.group, rt.version))
        for path, (group, version) in sorted(gvs.items()):
            doc = group_version_document(reg, group, version)
            if doc is not None:
                documents[path] = _render(doc)
        discovery = {
            "paths": {
                path: {"serverRelativeURL": f"/openapi/v3/{path}?hash={quote(r.etag)}"}
                for path, r in documents.items()
            }
        }
        self._documents = documents
        self._discovery = _render(discovery)
        self._generation = reg.generation

    def respond(self, request: web.Request, reg: Registry, rest: list[str]) -> web.Response:
        self._refresh(reg)
        if not rest:
            return _send(request, self._discovery, {"Cache-Control": "no-cache, private"})
        path = "/".join(rest)
        found = self._documents.get(path)
        if found is None:
            raise ApiFailure(404, "the server could not find the requested resource")
        if not _accepts_json(request.headers.get("Accept", "")):
            return web.Response(status=406)
        headers = {"Vary": "Accept", "Cache-Control": "no-cache, private"}
        wanted = request.query.get("hash")
        if wanted:
            if wanted != found.etag:
                # A client holding an old URL is sent to the current one, as kube-openapi does.
                location = f"/openapi/v3/{path}?hash={quote(found.etag)}"
                return web.Response(status=301, headers={**headers, "Location": location})
            headers["Cache-Control"] = "public, immutable"
        return _send(request, found, headers)


def _render(doc: JSON) -> _Rendered:
    body = json.dumps(doc, separators=(",", ":")).encode()
    return _Rendered(body, hashlib.sha512(body).hexdigest().upper())


def _accepts_json(accept: str) -> bool:
    if not accept.strip():
        return True
    for clause in accept.split(","):
        media = clause.split(";", 1)[0].strip().lower()
        if media in ("application/json", "application/*", "*/*"):
            return True
    return False


def _send(request: web.Request, rendered: _Rendered, headers: dict[str, str]) -> web.Response:
    etag = f'"{rendered.etag}"'
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers={"Etag": etag, **headers})
    return web.Response(
        body=rendered.body, headers={"Etag": etag, "Content-Type": "application/json", **headers}
    )


def v2(request: web.Request) -> web.Response:
    accept = request.headers.get("Accept", "")
    if "protobuf" in accept:
        return web.Response(body=b"", headers={"Content-Type": PB_V2})
    return web.json_response(
        {
            "swagger": "2.0",
            "info": {"title": "Kubernetes", "version": "v1.32.0"},
            "paths": {},
            "definitions": {},
        }
    )


def respond(request: web.Request, reg: Registry, rest: list[str]) -> web.Response:
    if rest == ["v2"]:
        return v2(request)
    if rest and rest[0] == "v3":
        return _for(reg).respond(request, reg, rest[1:])
    raise ApiFailure(404, "the server could not find the requested resource")


# One OpenApiV3 per registry (one per emulated server), dropped with its registry: the cache holds
# no reference to the registry, so a stopped server's documents go with it.
_BY_REGISTRY: dict[int, OpenApiV3] = {}


def _for(reg: Registry) -> OpenApiV3:
    found = _BY_REGISTRY.get(id(reg))
    if found is None:
        found = _BY_REGISTRY[id(reg)] = OpenApiV3()
        weakref.finalize(reg, _BY_REGISTRY.pop, id(reg), None)
    return found
