"""HTTP layer: routes Kubernetes REST paths onto the store, negotiates JSON vs Table."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Any

import yaml
from aiohttp import web

from kube_emulator import discovery, openapi, podlogs, protobuf
from kube_emulator.errors import (
    ApiFailure,
    cause,
    check_resource_version,
    invalid,
    status_body,
    success_status,
)
from kube_emulator.faults import Faults
from kube_emulator.patch import clone, json_patch, merge_patch, strategic_merge
from kube_emulator.resources import ResourceType
from kube_emulator.selectors import parse_field_selector, parse_label_selector
from kube_emulator.store import PATCH_TYPES, Store, WriteOptions
from kube_emulator.tables import to_table
from kube_emulator.watch import Event, error_event

JSON = dict[str, Any]
log = logging.getLogger(__name__)
_YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
DEFAULT_WATCH_TIMEOUT = 1800.0


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=_dumps(obj), status=status, content_type="application/json")


def failure_response(exc: ApiFailure) -> web.Response:
    resp = json_response(exc.status(), exc.code)
    if exc.retry_after is not None:
        resp.headers["Retry-After"] = str(exc.retry_after)
    return resp


@dataclass
class Target:
    rt: ResourceType
    namespace: str
    name: str
    subresource: str
    watch_path: bool


def wants_table(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "as=Table" in accept


def _flag(value: str | None) -> bool:
    """A boolean query parameter as apimachinery converts it: absent, "0" and "false" are false."""
    return value is not None and value != "0" and value.lower() != "false"


def check_list_options(q: Any, watch: bool) -> None:
    """``ValidateListOptions`` (WatchList on, as in 1.36): 422 ListOptions.meta.k8s.io."""
    match = q.get("resourceVersionMatch", "")
    initial = q.get("sendInitialEvents")
    errors: list[JSON] = []

    def forbidden(field: str, text: str) -> None:
        errors.append(cause(field, f"Forbidden: {text}", "FieldValueForbidden"))

    if watch:
        if initial is not None and match != "NotOlderThan":
            forbidden(
                "resourceVersionMatch",
                "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            )
        if match:
            if initial is None:
                forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
                )
            if match != "NotOlderThan":
                errors.append(
                    cause(
                        "resourceVersionMatch",
                        f'Unsupported value: "{match}": supported values: "NotOlderThan"',
                        "FieldValueNotSupported",
                    )
                )
            if q.get("continue"):
                forbidden(
                    "resourceVersionMatch", "resourceVersionMatch is forbidden when continue is provided"
                )
    else:
        if match:
            if not q.get("resourceVersion"):
                forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden unless resourceVersion is provided",
                )
            if q.get("continue"):
                forbidden(
                    "resourceVersionMatch", "resourceVersionMatch is forbidden when continue is provided"
                )
            if match not in ("Exact", "NotOlderThan"):
                errors.append(
                    cause(
                        "resourceVersionMatch",
                        f'Unsupported value: "{match}": supported values: "Exact", "NotOlderThan", ""',
                        "FieldValueNotSupported",
                    )
                )
            if match == "Exact" and q.get("resourceVersion") == "0":
                forbidden(
                    "resourceVersionMatch",
                    'resourceVersionMatch "exact" is forbidden for resourceVersion "0"',
                )
        if initial is not None:
            forbidden("sendInitialEvents", "sendInitialEvents is forbidden for list")
    if errors:
        raise invalid("ListOptions", "meta.k8s.io", "", errors)


def _validation(request: web.Request) -> str:
    value = request.query.get("fieldValidation", "Warn")
    if value not in ("Ignore", "Warn", "Strict"):
        raise ApiFailure(400, f"fieldValidation must be Ignore, Warn or Strict, not {value!r}")
    return value


def _warn(resp: web.Response, opts: WriteOptions) -> web.Response:
    """Warnings travel as RFC 7234 ``Warning: 299 - "..."`` headers, as kubectl expects."""
    for text in opts.warnings:
        resp.headers.add("Warning", '299 - "' + text.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return resp


def _manager(request: web.Request, default_suffix: str = "") -> str:
    fm = request.query.get("fieldManager")
    if fm:
        return fm
    ua = request.headers.get("User-Agent", "")
    name = ua.split("/", 1)[0].strip()
    return name or "unknown"


class ApiApp:
    """Builds the aiohttp application around one Store."""

    def __init__(self, store: Store, faults: Faults, bookmark_interval: float = 1.0) -> None:
        self.store = store
        self.faults = faults
        self.bookmark_interval = bookmark_interval
        self.server_address = "127.0.0.1:0"
        self.active_watches = 0

    def build(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.dispatch)
        return app

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._dispatch(request)
        except ApiFailure as exc:
            return failure_response(exc)
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception as exc:  # a bug must not take the server down; report it like kube does
            log.exception("internal error serving %s %s", request.method, request.path)
            return json_response(status_body(500, f"internal error: {exc}", "InternalError"), 500)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if len(path) > 1 and path.endswith("/"):
            path = path.rstrip("/")
        segs = [s for s in path.split("/") if s]
        if not segs:
            return json_response(
                {"paths": ["/api", "/api/v1", "/apis", "/healthz", "/openapi/v2", "/openapi/v3", "/version"]}
            )
        head = segs[0]
        if head == "version":
            return json_response(discovery.VERSION_INFO)
        if head in ("healthz", "livez", "readyz"):
            return web.Response(text="ok")
        if head == "openapi":
            return openapi.respond(request, self.store.registry, segs[1:])
        if head == "api":
            if len(segs) == 1:
                return json_response(discovery.api_versions(self.server_address))
            if len(segs) == 2:
                doc = discovery.api_resource_list(self.store.registry, "", segs[1])
                if doc is None:
                    raise ApiFailure(404, "the server could not find the requested resource")
                return json_response(doc)
            return await self._resource(request, "", segs[1], segs[2:])
        if head == "apis":
            if len(segs) == 1:
                return json_response(discovery.api_group_list(self.store.registry))
            if len(segs) == 2:
                doc = discovery.api_group(self.store.registry, segs[1])
                if doc is None:
                    raise ApiFailure(404, "the server could not find the requested resource")
                return json_response(doc)
            if len(segs) == 3:
                doc = discovery.api_resource_list(self.store.registry, segs[1], segs[2])
                if doc is None:
                    raise ApiFailure(404, "the server could not find the requested resource")
                return json_response(doc)
            return await self._resource(request, segs[1], segs[2], segs[3:])
        raise ApiFailure(404, "the server could not find the requested resource")

    def _target(self, group: str, version: str, rest: list[str]) -> Target:
        reg = self.store.registry
        watch_path = False
        if rest and rest[0] == "watch":
            watch_path = True
            rest = rest[1:]
        namespace = ""
        if len(rest) >= 3 and rest[0] == "namespaces":
            candidate = reg.get(group, version, rest[2])
            if candidate is not None and candidate.namespaced:
                namespace = rest[1]
                rest = rest[2:]
        if not rest:
            raise ApiFailure(404, "the server could not find the requested resource")
        rt = reg.get(group, version, rest[0])
        if rt is None or len(rest) > 3:
            raise ApiFailure(404, "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else ""
        sub = rest[2] if len(rest) > 2 else ""
        if sub and sub not in rt.subresources and not (rt.plural == "namespaces" and sub == "finalize"):
            raise ApiFailure(404, "the server could not find the requested resource")
        return Target(rt, namespace, name, sub, watch_path)

    async def _resource(
        self, request: web.Request, group: str, version: str, rest: list[str]
    ) -> web.StreamResponse:
        t = self._target(group, version, rest)
        method = request.method
        q = request.query
        if method == "GET":
            if t.name and not t.watch_path:
                await self.faults.apply("get", t.rt.plural, t.subresource, t.namespace, t.name)
                if t.subresource == "log":
                    return await podlogs.serve(request, self.store, t.rt, t.namespace, t.name)
                return self._get(request, t)
            if t.watch_path or _flag(q.get("watch")):
                check_list_options(q, watch=True)
                await self.faults.apply("watch", t.rt.plural, t.subresource, t.namespace, t.name)
                return await self._watch(request, t)
            check_list_options(q, watch=False)
            await self.faults.apply("list", t.rt.plural, "", t.namespace, "")
            return self._list(request, t)
        body = await self._body(request)
        dry = q.get("dryRun") == "All"
        if method == "POST" and not t.name:
            await self.faults.apply("create", t.rt.plural, "", t.namespace, "")
            if t.rt.kind == "SelfSubjectAccessReview":
                out = dict(body) if isinstance(body, dict) else {}
                out["status"] = {"allowed": True, "reason": "the emulated API server allows everything"}
                return json_response(out, 201)
            opts = WriteOptions(manager=_manager(request), dry_run=dry, field_validation=_validation(request))
            obj = self.store.create(t.rt, t.namespace, body, opts)
            return _warn(self._object_response(request, t.rt, obj, 201), opts)
        if method == "PUT" and t.name:
            await self.faults.apply("update", t.rt.plural, t.subresource, t.namespace, t.name)
            sub = "" if t.subresource == "finalize" else t.subresource
            if sub == "scale":
                return self._write_scale(t, "put", body, _manager(request), dry)
            opts = WriteOptions(
                manager=_manager(request), dry_run=dry, subresource=sub, field_validation=_validation(request)
            )
            obj = self.store.update(t.rt, t.namespace, t.name, body, opts)
            return _warn(self._object_response(request, t.rt, obj, 200), opts)
        if method == "PATCH" and t.name:
            await self.faults.apply("patch", t.rt.plural, t.subresource, t.namespace, t.name)
            ctype = request.headers.get("Content-Type", "").split(";")[0].strip()
            ptype = PATCH_TYPES.get(ctype)
            if ptype is None:
                raise ApiFailure(
                    415,
                    f"the body of the request was in an unknown format - accepted media types include: {', '.join(PATCH_TYPES)}",
                )
            if t.subresource == "scale":
                return self._write_scale(t, ptype, body, _manager(request), dry)
            force = _flag(q.get("force"))
            opts = WriteOptions(
                manager=_manager(request),
                dry_run=dry,
                subresource=t.subresource,
                force=force,
                field_validation=_validation(request),
            )
            obj, created = self.store.patch(t.rt, t.namespace, t.name, ptype, body, opts)
            return _warn(self._object_response(request, t.rt, obj, 201 if created else 200), opts)
        if method == "DELETE":
            options = body if isinstance(body, dict) else {}
            propagation = q.get("propagationPolicy") or options.get("propagationPolicy")
            if q.get("dryRun") == "All" or options.get("dryRun") == ["All"]:
                dry = True
            if t.name:
                await self.faults.apply("delete", t.rt.plural, "", t.namespace, t.name)
                obj = self.store.delete(
                    t.rt, t.namespace, t.name, propagation, options.get("preconditions"), dry
                )
                gone = self.store.get(t.rt, t.namespace, t.name) is None
                if gone and t.rt.crd is None and not dry:
                    # Built-ins answer an immediate deletion with a Status; custom resources with the object.
                    m = obj["metadata"]
                    return json_response(success_status(m["name"], t.rt.group, t.rt.plural, m["uid"]))
                return self._object_response(request, t.rt, obj, 200)
            await self.faults.apply("deletecollection", t.rt.plural, "", t.namespace, "")
            items = self.store.list(
                t.rt,
                t.namespace or None,
                parse_label_selector(q.get("labelSelector")),
                parse_field_selector(q.get("fieldSelector")),
            )
            deleted = []
            for o in items:
                m = o["metadata"]
                deleted.append(
                    self.store.delete(t.rt, m.get("namespace", ""), m["name"], propagation, None, dry)
                )
            return json_response(self._list_body(t.rt, deleted, ""))
        raise ApiFailure(405, f"the server does not allow this method on the requested resource ({method})")

    async def _body(self, request: web.Request) -> Any:
        if not request.body_exists:
            return None
        ctype = request.headers.get("Content-Type", "")
        if "protobuf" in ctype:
            return protobuf.decode(await request.read())
        if "cbor" in ctype:
            # client-go falls back to JSON after a 415, and we only speak JSON.
            raise ApiFailure(
                415,
                f"the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (got {ctype})",
                "UnsupportedMediaType",
            )
        raw = await request.read()
        if not raw.strip():
            return None
        try:
            if "yaml" in ctype:
                return yaml.load(raw, Loader=_YAML_LOADER)
            return json.loads(raw)
        except (ValueError, yaml.YAMLError) as exc:
            raise ApiFailure(400, f"the body of the request could not be decoded: {exc}") from None

    def _api_version_view(self, rt: ResourceType, obj: JSON) -> JSON:
        """Objects are stored once; a request through another served version sees that apiVersion."""
        if obj.get("apiVersion") == rt.api_version:
            return obj
        return {**obj, "apiVersion": rt.api_version}

    def _object_response(
        self, request: web.Request, rt: ResourceType, obj: JSON, status: int
    ) -> web.Response:
        obj = self._api_version_view(rt, obj)
        if wants_table(request):
            return json_response(
                to_table(
                    rt,
                    [obj],
                    request.query.get("includeObject", "Metadata"),
                    obj["metadata"].get("resourceVersion", ""),
                ),
                status,
            )
        return json_response(obj, status)

    def _write_scale(self, t: Target, how: str, body: Any, manager: str, dry: bool) -> web.Response:
        """``/scale`` writes: compute the new Scale, then write spec.replicas of the main object."""
        obj = self.store.must_get(t.rt, t.namespace, t.name)
        current = _scale(t.rt, obj)
        if how == "put":
            new = body
        elif how == "json":
            new = json_patch(clone(current), body)
        elif how in ("merge", "apply"):
            new = merge_patch(current, body)
        else:
            new = strategic_merge(current, body, None)
        if not isinstance(new, dict):
            raise ApiFailure(400, "the body of the request was in an unknown format")
        check_resource_version(
            t.rt.plural,
            t.rt.group,
            t.name,
            (new.get("metadata") or {}).get("resourceVersion"),
            obj["metadata"]["resourceVersion"],
        )
        replicas = (new.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise ApiFailure(
                422,
                f'Scale.autoscaling "{t.name}" is invalid: spec.replicas: Invalid value: {replicas!r}: must be greater than or equal to 0',
            )
        updated = clone(obj)
        updated.setdefault("spec", {})["replicas"] = replicas
        updated["metadata"].pop("resourceVersion", None)
        stored = self.store.update(
            t.rt,
            t.namespace,
            t.name,
            updated,
            WriteOptions(manager=manager, dry_run=dry, subresource="scale"),
        )
        return json_response(_scale(t.rt, stored))

    def _get(self, request: web.Request, t: Target) -> web.Response:
        obj = self.store.must_get(t.rt, t.namespace, t.name)
        if t.subresource == "scale":
            return json_response(_scale(t.rt, obj))
        return self._object_response(request, t.rt, obj, 200)

    def _list_body(
        self, rt: ResourceType, items: list[JSON], cont: str, remaining: int | None = None
    ) -> JSON:
        meta: JSON = {"resourceVersion": str(self.store.rv)}
        if cont:
            meta["continue"] = cont
            if remaining is not None:
                meta["remainingItemCount"] = remaining
        return {
            "kind": f"{rt.kind}List",
            "apiVersion": rt.api_version,
            "metadata": meta,
            "items": [self._api_version_view(rt, o) for o in items],
        }

    def _list(self, request: web.Request, t: Target) -> web.Response:
        q = request.query
        items = self.store.list(
            t.rt,
            t.namespace or None,
            parse_label_selector(q.get("labelSelector")),
            parse_field_selector(q.get("fieldSelector")),
        )
        cont_in = q.get("continue")
        if cont_in:
            try:
                after = json.loads(base64.urlsafe_b64decode(cont_in.encode()))
                start_key = (after["ns"], after["name"])
            except (ValueError, KeyError, TypeError, binascii.Error):
                raise ApiFailure(400, "invalid continue token") from None
            items = [
                o for o in items if (o["metadata"].get("namespace", ""), o["metadata"]["name"]) > start_key
            ]
        cont = ""
        remaining = None
        limit = int(q.get("limit") or 0)
        if limit > 0 and len(items) > limit:
            remaining = len(items) - limit
            items = items[:limit]
            last = items[-1]["metadata"]
            cont = base64.urlsafe_b64encode(
                _dumps({"ns": last.get("namespace", ""), "name": last["name"]})
            ).decode()
        if wants_table(request):
            return json_response(
                to_table(t.rt, items, q.get("includeObject", "Metadata"), str(self.store.rv), True, cont)
            )
        return json_response(self._list_body(t.rt, items, cont, remaining))

    async def _watch(self, request: web.Request, t: Target) -> web.StreamResponse:
        q = request.query
        label_pred = parse_label_selector(q.get("labelSelector"))
        field_pred = parse_field_selector(q.get("fieldSelector"))
        if t.name:  # /watch/namespaces/ns/things/NAME (legacy form)
            name = t.name
            prev = field_pred
            field_pred = lambda o: o["metadata"]["name"] == name and (prev is None or prev(o))  # noqa: E731
        timeout = float(q.get("timeoutSeconds") or DEFAULT_WATCH_TIMEOUT)
        bookmarks = _flag(q.get("allowWatchBookmarks"))
        initial_events = _flag(q.get("sendInitialEvents"))
        rv = q.get("resourceVersion")
        if initial_events:
            rv = None
        watcher, backlog = self.store.watch(t.rt, t.namespace or None, rv, label_pred, field_pred)
        table = wants_table(request)
        include = q.get("includeObject", "Metadata")
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        self.active_watches += 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0)
        first_table = [True]

        def encode(ev: Event) -> bytes:
            if not table:
                if ev.obj.get("apiVersion") != t.rt.api_version:
                    return _dumps({"type": ev.type, "object": self._api_version_view(t.rt, ev.obj)}) + b"\n"
                return ev.line()
            tab = to_table(
                t.rt,
                [self._api_version_view(t.rt, ev.obj)],
                include,
                ev.obj["metadata"].get("resourceVersion", ""),
                first_table[0],
            )
            first_table[0] = False
            return _dumps({"type": ev.type, "object": tab}) + b"\n"

        def bookmark(initial_end: bool = False) -> bytes:
            meta: JSON = {"resourceVersion": str(self.store.rv)}
            if initial_end:
                meta["annotations"] = {"k8s.io/initial-events-end": "true"}
            return (
                _dumps(
                    {
                        "type": "BOOKMARK",
                        "object": {"kind": t.rt.kind, "apiVersion": t.rt.api_version, "metadata": meta},
                    }
                )
                + b"\n"
            )

        try:
            await resp.prepare(request)
            if backlog:
                await resp.write(b"".join(encode(ev) for ev in backlog))
            if initial_events and bookmarks:
                await resp.write(bookmark(initial_end=True))
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                wait = min(remaining, self.bookmark_interval) if bookmarks else remaining
                try:
                    ev = await asyncio.wait_for(watcher.queue.get(), wait)
                except TimeoutError:
                    if bookmarks and deadline - loop.time() > 0:
                        await resp.write(bookmark())
                    continue
                if ev is None:
                    await resp.write(error_event(410, watcher.closed_reason or "watch closed"))
                    break
                chunk = [encode(ev)]
                while not watcher.queue.empty() and len(chunk) < 512:
                    nxt = watcher.queue.get_nowait()
                    if nxt is None:
                        chunk.append(error_event(410, watcher.closed_reason or "watch closed"))
                        break
                    chunk.append(encode(nxt))
                await resp.write(b"".join(chunk))
                if watcher.closed_reason is not None:
                    break
        except (ConnectionResetError, ConnectionError):
            pass
        finally:
            self.active_watches -= 1
            self.store.unwatch(t.rt, watcher)
        with contextlib.suppress(ConnectionResetError, ConnectionError, RuntimeError):
            await resp.write_eof()
        return resp


def _scale(rt: ResourceType, obj: JSON) -> JSON:
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    meta = obj["metadata"]
    selector = (spec.get("selector") or {}).get("matchLabels") or {}
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            k: meta[k]
            for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            if k in meta
        },
        "spec": {"replicas": spec.get("replicas", 1)},
        "status": {
            "replicas": status.get("replicas", 0),
            "selector": ",".join(f"{k}={v}" for k, v in selector.items()),
        },
    }
