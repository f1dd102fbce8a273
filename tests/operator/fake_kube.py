"""An in-memory stand-in for the Kubernetes client that records every call (no API server).

Just enough of the API's behaviour for reconciler unit tests: objects get a uid, a resourceVersion
and a generation that moves with their spec; create refuses an existing name (409); patches are
JSON merge patches or the JSON patch operations the reconcilers send; apply replaces what it sets.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from choreo_dp.kube import ApiError
from choreo_dp.kube import resources as R
from choreo_dp.kube.resources import Resource

ObjectId = tuple[str, str, str]  # (plural, namespace or "", name)


@dataclass(frozen=True)
class Call:
    verb: str
    plural: str
    namespace: str
    name: str
    subresource: str | None = None
    body: Any = None


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge(out.get(k), v)
    return out


def _json_patch(doc: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    for op in ops:
        *parents, last = op["path"].lstrip("/").split("/")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        if op["op"] == "test":
            current = node[int(last)] if isinstance(node, list) else node.get(last)
            if current != op["value"]:
                raise ApiError(422, "Invalid", f"test failed at {op['path']}")
        elif op["op"] == "add":
            if isinstance(node, list):
                node.append(op["value"]) if last == "-" else node.insert(int(last), op["value"])
            else:
                node[last] = op["value"]
        elif op["op"] == "remove":
            del node[int(last) if isinstance(node, list) else last]
        else:
            raise NotImplementedError(op["op"])
    return doc


class FakeKube:
    def __init__(self) -> None:
        self.objects: dict[ObjectId, dict[str, Any]] = {}
        self.calls: list[Call] = []
        self.events: list[tuple[str, str, str, str]] = []  # (involved name, type, reason, message)
        self.fail: dict[str, ApiError] = {}  # verb -> error raised by every such call
        # (verb, plural) -> error raised by such calls (an admission refusal of one kind)
        self.refuse: dict[tuple[str, str], ApiError] = {}
        # errors raised by the next calls of a verb, one per call (a 409 race, a blip)
        self.next_errors: dict[str, list[ApiError]] = {}
        self._counter = itertools.count(1)

    # --- test helpers -----------------------------------------------------------------------

    def put(self, res: Resource, body: dict[str, Any]) -> dict[str, Any]:
        """Seed an object as if someone else had created it; returns the stored copy."""
        obj = copy.deepcopy(body)
        obj.setdefault("apiVersion", res.api_version)
        obj.setdefault("kind", res.kind)
        meta = obj.setdefault("metadata", {})
        n = next(self._counter)
        meta.setdefault("uid", f"uid-{n}")
        meta.setdefault("generation", 1)
        meta["resourceVersion"] = str(n)
        self.objects[self._id(res, meta.get("namespace"), meta["name"])] = obj
        return copy.deepcopy(obj)

    def stored(self, res: Resource, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        return self.objects.get(self._id(res, namespace, name))

    @property
    def writes(self) -> list[Call]:
        return [c for c in self.calls if c.verb not in ("get", "list")]

    def _id(self, res: Resource, namespace: str | None, name: str) -> ObjectId:
        return (res.plural, (namespace or "") if res.namespaced else "", name)

    def _record(self, verb: str, res: Resource, namespace: str | None, name: str, **kw: Any) -> None:
        self.calls.append(Call(verb, res.plural, namespace or "", name, **kw))
        if verb in self.fail:
            raise self.fail[verb]
        if (verb, res.plural) in self.refuse:
            raise self.refuse[verb, res.plural]
        if self.next_errors.get(verb):
            raise self.next_errors[verb].pop(0)

    def _store(self, key: ObjectId, obj: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
        meta = obj["metadata"]
        n = next(self._counter)
        meta["resourceVersion"] = str(n)
        if old is None:
            meta.setdefault("uid", f"uid-{n}")
            meta["generation"] = 1
        elif old.get("spec") != obj.get("spec"):
            meta["generation"] = int(old["metadata"].get("generation") or 1) + 1
        self.objects[key] = obj
        return copy.deepcopy(obj)

    # --- the client's verbs -----------------------------------------------------------------

    async def get(
        self, res: Resource, name: str, namespace: str | None = None, subresource: str | None = None
    ) -> dict[str, Any] | None:
        self._record("get", res, namespace, name)
        obj = self.objects.get(self._id(res, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    async def list(
        self,
        res: Resource,
        namespace: str | None = None,
        label_selector: str | Mapping[str, str] | None = None,
        field_selector: str | None = None,
    ) -> tuple[list[dict[str, Any]], str]:
        self._record("list", res, namespace, "")
        assert label_selector is None or isinstance(label_selector, Mapping)
        out = []
        for (plural, ns, _), obj in self.objects.items():
            if plural != res.plural or (namespace and ns != namespace):
                continue
            labels = obj["metadata"].get("labels") or {}
            if all(labels.get(k) == v for k, v in (label_selector or {}).items()):
                out.append(copy.deepcopy(obj))
        return out, str(next(self._counter))

    async def create(
        self, res: Resource, body: dict[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        ns = namespace or body["metadata"].get("namespace")
        name = body["metadata"]["name"]
        self._record("create", res, ns, name, body=body)
        key = self._id(res, ns, name)
        if key in self.objects:
            raise ApiError(409, "AlreadyExists", f"{res.plural} {name!r} already exists")
        return self._store(key, copy.deepcopy(body), None)

    async def apply(
        self,
        body: dict[str, Any],
        field_manager: str,
        *,
        force: bool = True,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        res = R.for_kind(body["apiVersion"], body["kind"])
        meta = body["metadata"]
        self._record("apply", res, meta.get("namespace"), meta["name"], body=body)
        key = self._id(res, meta.get("namespace"), meta["name"])
        old = self.objects.get(key)
        obj = _merge(old or {}, copy.deepcopy(body))
        if old is not None and "spec" in body:
            obj["spec"] = copy.deepcopy(body["spec"])
        return self._store(key, obj, old)

    async def patch(
        self,
        res: Resource,
        name: str,
        patch: Any,
        namespace: str | None = None,
        patch_type: Literal["merge", "json", "strategic", "apply"] = "merge",
        subresource: str | None = None,
        field_manager: str | None = None,
    ) -> dict[str, Any]:
        self._record("patch", res, namespace, name, subresource=subresource, body=patch)
        key = self._id(res, namespace, name)
        old = self.objects.get(key)
        if old is None:
            raise ApiError(404, "NotFound", f"{res.plural} {name!r} not found")
        if patch_type == "json":
            obj = _json_patch(old, patch)
        else:
            expected = ((patch.get("metadata") or {}) if isinstance(patch, dict) else {}).get(
                "resourceVersion"
            )
            if expected is not None and expected != old["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", "the object has been modified")
            if subresource == "status":
                patch = {"status": patch.get("status")}
            obj = _merge(old, patch)
        return self._store(key, obj, old)

    async def delete(
        self,
        res: Resource,
        name: str,
        namespace: str | None = None,
        propagation: Literal["Background", "Foreground", "Orphan"] = "Background",
        precondition_uid: str | None = None,
    ) -> bool:
        self._record("delete", res, namespace, name)
        return self.objects.pop(self._id(res, namespace, name), None) is not None

    async def post_event(
        self,
        involved: Mapping[str, Any],
        type_: Literal["Normal", "Warning"],
        reason: str,
        message: str,
        component: str,
    ) -> None:
        self.events.append((str((involved.get("metadata") or {}).get("name")), type_, reason, message))
