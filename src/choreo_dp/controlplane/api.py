"""REST API of the reference control plane (contract section 6).

All ``/api/v1`` routes need ``Authorization: Bearer <admin token>``; ``/healthz``, ``/metrics`` and
``/openapi.json`` are open. Bad input is answered with 4xx, in this order: 401 before anything else
is looked at (the body is not even read), 413 for bodies over 1 MiB, 404/405 for unknown routes,
422 for every body that is not parseable JSON and for names and bodies that do not validate
(pydantic's error list), for objects too large for the tunnel and for apps their Environment's
registry allowlist refuses, 404 for unknown dataplanes/objects, 409 when a request is well-formed
but cannot be carried out (promotion without a trustworthy digest). Every one of these codes is
declared in the OpenAPI document.
"""

from __future__ import annotations

import email.message
import json
import logging
import math
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from choreo_dp import __version__
from choreo_dp.api import ChoreoAppSpec, EnvironmentSpec
from choreo_dp.api.common import DNS1123_LABEL
from choreo_dp.api.images import image_refusal
from choreo_dp.controlplane import promotion, reports
from choreo_dp.controlplane.context import ControlPlane
from choreo_dp.controlplane.metrics import Metrics
from choreo_dp.controlplane.store import (
    KIND_APP,
    KIND_ENVIRONMENT,
    Dataplane,
    DesiredObject,
    Kind,
    StoreError,
    WriteResult,
)
from choreo_dp.controlplane.tunnel import FRAME_MARGIN_BYTES, MAX_OBJECT_FRAME_BYTES, put_frame_bytes
from choreo_dp.tunnel.protocol import MAX_FRAME_BYTES

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
# Request bodies nest a handful of levels (spec.probes.liveness.httpGet.path); anything far deeper
# is refused before recursive code (pydantic, merge patch) walks it.
MAX_BODY_DEPTH = 32
API_PREFIX = "/api/"
DATAPLANE_ID = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"

DpId = Annotated[
    str,
    Path(
        min_length=1, max_length=253, pattern=DATAPLANE_ID, description="Dataplane id (lowercase DNS name)."
    ),
]
EnvName = Annotated[
    str, Path(min_length=1, max_length=63, pattern=DNS1123_LABEL, description="Environment name.")
]
AppName = Annotated[str, Path(min_length=1, max_length=63, pattern=DNS1123_LABEL, description="App name.")]


_bearer = HTTPBearer(auto_error=False, description="Admin token")
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


class ApiModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


# -- responses -----------------------------------------------------------------------------------
class SessionView(ApiModel):
    id: str
    since: str
    remote: str


class DataplaneView(ApiModel):
    id: str
    epoch: str
    revision: int = Field(description="Newest desired-state revision of this dataplane.")
    log_horizon: int = Field(description="Agents older than this revision get a resync instead of a replay.")
    created_at: str
    connected: bool
    session: SessionView | None = None
    last_heartbeat: str | None = None
    last_connected: str | None = None
    last_disconnected: str | None = None
    applied_revision: int | None = Field(default=None, description="Newest revision the agent acknowledged.")
    applied_epoch: str | None = None
    in_sync: bool = Field(description="The agent acknowledged the newest revision of the current epoch.")
    orphans: int | None = Field(default=None, description="Deletions the agent holds back (safety rules).")
    orphaned_keys: list[str] = Field(default_factory=list)
    objects: int = 0
    agent: dict[str, Any] = Field(default_factory=dict, description="Other facts the agent reported.")


class Registration(DataplaneView):
    created: bool
    token: str | None = Field(
        default=None,
        description="The dataplane token: shown only when minted (first registration or rotateToken=true).",
    )


class Accepted(ApiModel):
    dataplane: str
    kind: str
    environment: str
    name: str
    revision: int = Field(description="The dataplane's revision after this request.")
    object_revision: int | None = None
    spec_hash: str | None = None
    changed: bool
    removed: list[str] = Field(default_factory=list)


class NackView(ApiModel):
    revision: int
    code: str
    message: str
    retryable: bool
    at: str


class ObjectView(ApiModel):
    dataplane: str
    kind: str
    environment: str
    name: str
    spec: dict[str, Any]
    spec_hash: str
    revision: int
    updated_at: str
    applied: bool = Field(description="The agent acknowledged a revision at or after this object's.")
    status: dict[str, Any] | None = Field(default=None, description="Last status reported by the data plane.")
    status_reported_at: str | None = None
    last_error: NackView | None = None


class ObjectList(ApiModel):
    items: list[ObjectView]


class ErrorDetail(ApiModel):
    detail: str


def _documented(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route can answer (422 FastAPI declares itself)."""
    what = {
        401: "Missing or wrong admin token; answered before the body is read.",
        404: "Unknown data plane, environment or app.",
        409: "Well-formed but impossible: no trustworthy digest, image not allowed at the target, "
        "project mismatch.",
        413: "Request body over 1 MiB.",
    }
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entry: dict[str, Any] = {"model": ErrorDetail, "description": what[code]}
        if code == 401:
            entry["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}}
        out[code] = entry
    return out


class DataplaneList(ApiModel):
    items: list[DataplaneView]


# -- requests ------------------------------------------------------------------------------------
class AppSpecBody(ChoreoAppSpec):
    """A ChoreoApp spec; ``environment`` may be left out (it comes from the path)."""

    environment: Annotated[str, Field(min_length=1, max_length=63, pattern=DNS1123_LABEL)] | None = None  # type: ignore[assignment]


class _ObjectBody(ApiModel):
    """``{"spec": ...}``, optionally a whole manifest (apiVersion, kind, metadata); a bare spec is
    accepted too and treated as ``{"spec": <body>}``."""

    api_version: Literal["choreo.dev/v1alpha1"] | None = Field(default=None, alias="apiVersion")
    metadata: dict[str, Any] | None = Field(
        default=None, description="Only metadata.name is read (must match)."
    )

    @model_validator(mode="before")
    @classmethod
    def _wrap_bare_spec(cls, data: Any) -> Any:
        if isinstance(data, dict) and not {"spec", "apiVersion", "kind", "metadata"} & set(data):
            return {"spec": data}
        return data

    def check_name(self, name: str) -> None:
        given = (self.metadata or {}).get("name")
        if given is not None and given != name:
            raise _body_error(
                ("body", "metadata", "name"),
                f"metadata.name {given!r} does not match the path ({name!r})",
                given,
            )


class EnvironmentBody(_ObjectBody):
    kind: Literal["Environment"] | None = None
    spec: EnvironmentSpec


class AppBody(_ObjectBody):
    kind: Literal["ChoreoApp"] | None = None
    spec: AppSpecBody


class Location(ApiModel):
    dataplane: str = Field(min_length=1, max_length=253, pattern=DATAPLANE_ID)
    environment: str = Field(min_length=1, max_length=63, pattern=DNS1123_LABEL)


class PromotionRequest(ApiModel):
    app: str = Field(min_length=1, max_length=63, pattern=DNS1123_LABEL)
    project: str | None = Field(default=None, min_length=1, max_length=63, pattern=DNS1123_LABEL)
    from_: Location = Field(alias="from")
    to: Location
    overrides: dict[str, Any] | None = Field(
        default=None, description="JSON merge patch applied to the promoted spec (not image/environment)."
    )

    @model_validator(mode="after")
    def _sane(self) -> PromotionRequest:
        if self.from_ == self.to:
            raise ValueError("from and to are the same place")
        if self.overrides and {"image", "environment"} & set(self.overrides):
            raise ValueError(
                "overrides cannot set image or environment: the image is the digest running in from"
            )
        return self


class PromotionResult(Accepted):
    image: str
    source_revision: int


# -- plumbing ------------------------------------------------------------------------------------
class BodyLimit:
    """Refuse request bodies over MAX_BODY_BYTES with 413 before they are buffered."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = True
                if too_big:
                    await self._refuse(send)
                    return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(send)

    @staticmethod
    async def _refuse(send: Send) -> None:
        body = b'{"detail":"request body larger than 1 MiB"}'
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _bearer_token(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            text: str = bytes(value).decode("latin-1")
            scheme, _, token = text.partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


class AdminAuth:
    """401 for an ``/api/`` request without the admin token, before the request is routed or a
    byte of its body is read: nothing an anonymous client sends is parsed, buffered or answered
    with anything but 401."""

    def __init__(self, app: ASGIApp, cp: ControlPlane) -> None:
        self.app = app
        self.cp = cp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith(API_PREFIX):
            await self.app(scope, receive, send)
            return
        token = _bearer_token(scope)
        if token is None or not self.cp.is_admin(token):
            detail = "missing bearer token" if token is None else "invalid admin token"
            await _unauthorized(detail)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _json_problem(content_type: str | None, body: bytes) -> dict[str, Any] | None:
    """Why ``body`` is not a JSON document the API can work with, as one pydantic-style error."""

    def problem(msg: str, pos: int = 0) -> dict[str, Any]:
        return {"type": "json_invalid", "loc": ["body", pos], "msg": msg, "input": {}}

    message = email.message.Message()
    message["content-type"] = content_type or ""
    subtype = message.get_content_subtype()
    if message.get_content_maintype() != "application" or not (
        subtype == "json" or subtype.endswith("+json")
    ):
        return problem("the request body must be JSON sent with Content-Type: application/json")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return problem("the request body is not valid UTF-8", exc.start)

    def finite(token: str) -> float:
        value = float(token)
        if not math.isfinite(value):
            raise ValueError(f"number {token[:40]} is out of range")
        return value

    def no_constants(token: str) -> Any:
        raise ValueError(f"{token} is not a JSON number")

    try:
        value = json.loads(text, parse_float=finite, parse_constant=no_constants)
    except json.JSONDecodeError as exc:
        return problem(f"JSON decode error: {exc.msg}", exc.pos)
    except RecursionError:
        return problem(f"the JSON is nested too deeply (at most {MAX_BODY_DEPTH} levels)")
    except ValueError as exc:  # non-finite numbers, integers beyond Python's digit limit
        return problem(f"JSON decode error: {str(exc)[:200]}")
    if reports.json_depth_exceeds(value, MAX_BODY_DEPTH):
        return problem(f"the JSON is nested too deeply (at most {MAX_BODY_DEPTH} levels)")
    try:
        reports.canonical_size(value)
    except UnicodeEncodeError:
        return problem("the JSON holds text that is not Unicode (an unpaired \\ud800-\\udfff escape)")
    return None


class JsonRoute(APIRoute):
    """Routes whose PUT/POST/PATCH bodies are checked to be JSON before FastAPI parses them.

    FastAPI answers some unparseable bodies with 400 (invalid UTF-8, numbers beyond Python's
    digit limit, nesting beyond the recursion limit) and lets others reach validation as raw
    bytes; here every one of them gets the same 422 as an invalid document. The body is read
    once: Starlette caches it on the request FastAPI then uses.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def checked(request: Request) -> Response:
            if request.method in ("PUT", "POST", "PATCH"):
                body = await request.body()
                if body:
                    problem = _json_problem(request.headers.get("content-type"), body)
                    if problem is not None:
                        return JSONResponse({"detail": [problem]}, status_code=422)
            return await handler(request)

        return checked


_M = TypeVar("_M", bound=BaseModel)


async def _strict_body(request: Request, model: type[_M]) -> _M:
    """The body validated again without type coercion.

    FastAPI validates bodies in pydantic's lax mode, where ``false`` is a valid replica count and
    ``"3"`` a number; a JSON API should refuse wrong types (422), not reinterpret them. The JSON
    is the one FastAPI already parsed (Starlette caches it on the request).
    """
    try:
        return model.model_validate(await request.json(), strict=True)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e.get("loc", ()))} for e in exc.errors(include_url=False)]
        ) from None


def _validation_response(exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 body, but never a failure: inputs that cannot be rendered as JSON are left out."""
    errors = list(exc.errors())
    try:
        content = jsonable_encoder({"detail": errors})
        json.dumps(content, allow_nan=False)
    except (ValueError, TypeError):
        content = jsonable_encoder(
            {"detail": [{k: v for k, v in e.items() if k not in ("input", "ctx")} for e in errors]}
        )
    return JSONResponse(content, status_code=422)


class RequestMetrics:
    """Count requests by route template, method and status (pure ASGI: no per-request task group)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            # the router writes the matched route into the (shared) scope
            template = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.http_requests.labels(template, scope.get("method", "?"), str(status)).inc()


class _TooLarge(Exception):
    pass


def _unauthorized(detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=401, headers={"WWW-Authenticate": "Bearer"})


class _AuthError(Exception):
    def __init__(self, detail: str) -> None:
        self.detail = detail


def _http_error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def _body_error(loc: tuple[str | int, ...], msg: str, value: Any) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": loc, "msg": msg, "input": value}])


def _dataplane_view(cp: ControlPlane, dp: Dataplane) -> dict[str, Any]:
    session = cp.hub.get(dp.id)
    agent = dict(dp.agent)
    orphans = agent.pop("orphans", None)
    orphaned = agent.pop("orphanedKeys", None) or []
    if not isinstance(orphans, int) or not 0 <= orphans <= reports.MAX_INVENTORY_ITEMS:
        orphans = None  # a record from before reports were validated
    reason = agent.get("orphanReason")
    agent = {"orphanReason": reason} if isinstance(reason, str) and len(reason) <= 64 else {}
    return {
        "id": dp.id,
        "epoch": dp.epoch,
        "revision": dp.revision,
        "log_horizon": dp.horizon,
        "created_at": dp.created_at,
        "connected": session is not None,
        "session": None
        if session is None
        else {"id": session.session_id, "since": session.started_at, "remote": session.remote},
        "last_heartbeat": dp.last_heartbeat,
        "last_connected": dp.last_connected,
        "last_disconnected": dp.last_disconnected,
        "applied_revision": dp.applied_revision,
        "applied_epoch": dp.applied_epoch,
        "in_sync": dp.applied_epoch == dp.epoch and dp.applied_revision == dp.revision,
        "orphans": orphans,
        "orphaned_keys": [str(k)[:200] for k in orphaned[:100]] if isinstance(orphaned, list) else [],
        "objects": dp.objects,
        "agent": agent,
    }


def _accepted(dp: str, kind: str, env: str, name: str, result: WriteResult) -> dict[str, Any]:
    return {
        "dataplane": dp,
        "kind": kind,
        "environment": env,
        "name": name,
        "revision": result.revision,
        "object_revision": result.object_revision,
        "spec_hash": result.spec_hash,
        "changed": result.changed,
        "removed": result.removed,
    }


# -- the application -----------------------------------------------------------------------------
def create_app(cp: ControlPlane) -> FastAPI:
    app = FastAPI(
        title="choreo-dp reference control plane",
        version=__version__,
        description="Desired state for private data planes, pushed over an outbound tunnel.",
    )
    app.state.cp = cp

    async def require_admin(credentials: BearerCredentials) -> None:
        if credentials is None:
            raise _AuthError("missing bearer token")
        if not cp.is_admin(credentials.credentials):
            raise _AuthError("invalid admin token")

    @app.exception_handler(_AuthError)
    async def _auth_error(_: Request, exc: _AuthError) -> JSONResponse:
        return _unauthorized(exc.detail)

    @app.exception_handler(StoreError)
    async def _store_error(_: Request, exc: StoreError) -> JSONResponse:
        return _http_error(404 if exc.code == "not_found" else 409, exc.message)

    @app.exception_handler(promotion.PromotionRefused)
    async def _promotion_refused(_: Request, exc: promotion.PromotionRefused) -> JSONResponse:
        return _http_error(409, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_response(exc)

    # Outermost first: count everything, then authenticate (before anything reads the body), then
    # bound the body.
    app.add_middleware(BodyLimit)
    app.add_middleware(AdminAuth, cp=cp)
    app.add_middleware(RequestMetrics, metrics=cp.metrics)

    @app.get(
        "/healthz",
        response_class=PlainTextResponse,
        tags=["ops"],
        responses={
            500: {"description": "Unhealthy.", "content": {"text/plain": {"schema": {"type": "string"}}}}
        },
    )
    async def healthz() -> Response:
        if not cp.liveness.healthy:
            return PlainTextResponse(
                f"store writer: no progress for {cp.liveness.silence:.0f}s\n", status_code=500
            )
        return PlainTextResponse("ok\n")

    @app.get("/metrics", response_class=PlainTextResponse, tags=["ops"])
    async def metrics() -> Response:
        cp.metrics.sessions.set(len(cp.hub))
        return Response(generate_latest(cp.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # AdminAuth already answered 401 before routing; the dependency keeps the check next to the
    # routes and declares the bearer scheme in the OpenAPI document.
    api = APIRouter(
        prefix="/api/v1",
        dependencies=[Depends(require_admin)],
        route_class=JsonRoute,
        responses=_documented(401, 413),
    )

    async def known_dataplane(dp: str) -> Dataplane:
        found = await cp.store.get_dataplane(dp)
        if found is None:
            raise StoreError("not_found", f"dataplane {dp!r} is not registered")
        return found

    # dataplanes
    @api.put(
        "/dataplanes/{dp}",
        response_model=Registration,
        tags=["dataplanes"],
        responses={
            200: {"description": "Already registered (token only when rotated)."},
            201: {"model": Registration, "description": "Registered; the response holds its token once."},
        },
    )
    async def register_dataplane(
        dp: DpId,
        response: Response,
        rotate_token: Annotated[bool, Query(alias="rotateToken")] = False,
    ) -> dict[str, Any]:
        record, token, created = await cp.store.register_dataplane(dp, rotate_token=rotate_token)
        response.status_code = 201 if created else 200
        if created:
            log.info("dataplane %s registered (epoch %s)", dp, record.epoch)
        elif token is not None:
            log.info("dataplane %s: token rotated", dp)
            # The old token is dead: a session opened with it must not keep running.
            session = cp.hub.get(dp)
            if session is not None:
                session.go_away("dataplane token rotated", 1.0)
        return {**_dataplane_view(cp, record), "created": created, "token": token}

    @api.get("/dataplanes", response_model=DataplaneList, tags=["dataplanes"])
    async def list_dataplanes() -> dict[str, Any]:
        return {"items": [_dataplane_view(cp, d) for d in await cp.store.list_dataplanes()]}

    @api.get(
        "/dataplanes/{dp}", response_model=DataplaneView, tags=["dataplanes"], responses=_documented(404)
    )
    async def get_dataplane(dp: DpId) -> dict[str, Any]:
        return _dataplane_view(cp, await known_dataplane(dp))

    # desired objects
    async def object_view(dp: Dataplane, obj: DesiredObject) -> dict[str, Any]:
        record = await cp.store.get_status(dp.id, obj.key)
        status = None if record is None else reports.stored_status(obj.key, record.status)
        nack = await cp.store.get_nack(dp.id, obj.key)
        applied = (
            dp.applied_epoch == dp.epoch
            and dp.applied_revision is not None
            and dp.applied_revision >= obj.revision
        )
        return {
            "dataplane": dp.id,
            "kind": obj.kind,
            "environment": obj.environment,
            "name": obj.name,
            "spec": obj.spec,
            "spec_hash": obj.spec_hash,
            "revision": obj.revision,
            "updated_at": obj.updated_at,
            "applied": applied and (nack is None or nack.revision < obj.revision),
            "status": status,
            "status_reported_at": None if status is None or record is None else record.reported_at,
            "last_error": None
            if nack is None
            else {
                "revision": nack.revision,
                "code": nack.code,
                "message": nack.message,
                "retryable": nack.retryable,
                "at": nack.at,
            },
        }

    async def put(dp: str, kind: Kind, env: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        size = put_frame_bytes(kind, env, name, spec, cp.store.spec_hash(spec))
        if size > MAX_OBJECT_FRAME_BYTES:
            raise _body_error(
                ("body", "spec"),
                f"the {kind} would travel to the data plane in a tunnel frame of {size} bytes; "
                f"the limit is {MAX_OBJECT_FRAME_BYTES} bytes (the tunnel's {MAX_FRAME_BYTES}-byte "
                f"frames less {FRAME_MARGIN_BYTES} bytes for the envelope): make the spec smaller",
                size,
            )

        def allowed_by(env_spec: dict[str, Any]) -> None:
            image = spec.get("image")
            prefixes = (env_spec.get("registry") or {}).get("allowedPrefixes") or []
            refusal = image_refusal(image, prefixes) if isinstance(image, str) else "the app has no image"
            if refusal is not None:
                raise _body_error(
                    ("body", "spec", "image"),
                    f"{refusal} (Environment {env!r})",
                    image,
                )

        result = await cp.store.put_object(
            dp, kind, env, name, spec, check_environment=allowed_by if kind == KIND_APP else None
        )
        if result.changed:
            cp.metrics.changes.labels(kind, "put").inc()
            cp.hub.notify(dp)
        return _accepted(dp, kind, env, name, result)

    async def delete(dp: str, kind: Kind, env: str, name: str) -> dict[str, Any]:
        result = await cp.store.delete_object(dp, kind, env, name)
        cp.metrics.changes.labels(kind, "delete").inc(len(result.removed))
        cp.hub.notify(dp)
        return _accepted(dp, kind, env, name, result)

    async def get_one(dp: str, kind: Kind, env: str, name: str) -> dict[str, Any]:
        record = await known_dataplane(dp)
        obj = await cp.store.get_object(dp, kind, env, name)
        if obj is None:
            what = "environment" if kind == KIND_ENVIRONMENT else f"app {name!r} in environment"
            raise StoreError("not_found", f"{what} {env!r} is not defined on dataplane {dp!r}")
        return await object_view(record, obj)

    @api.put(
        "/dataplanes/{dp}/environments/{env}",
        status_code=202,
        response_model=Accepted,
        tags=["environments"],
        responses=_documented(404),
    )
    async def put_environment(
        dp: DpId, env: EnvName, body: EnvironmentBody, request: Request
    ) -> dict[str, Any]:
        body = await _strict_body(request, EnvironmentBody)
        body.check_name(env)
        return await put(dp, KIND_ENVIRONMENT, env, env, body.spec.to_k8s())

    @api.delete(
        "/dataplanes/{dp}/environments/{env}",
        status_code=202,
        response_model=Accepted,
        tags=["environments"],
        responses=_documented(404),
    )
    async def delete_environment(dp: DpId, env: EnvName) -> dict[str, Any]:
        return await delete(dp, KIND_ENVIRONMENT, env, env)

    @api.get(
        "/dataplanes/{dp}/environments/{env}",
        response_model=ObjectView,
        tags=["environments"],
        responses=_documented(404),
    )
    async def get_environment(dp: DpId, env: EnvName) -> dict[str, Any]:
        return await get_one(dp, KIND_ENVIRONMENT, env, env)

    @api.get(
        "/dataplanes/{dp}/environments",
        response_model=ObjectList,
        tags=["environments"],
        responses=_documented(404),
    )
    async def list_environments(dp: DpId) -> dict[str, Any]:
        record = await known_dataplane(dp)
        objs = await cp.store.list_objects(dp, kind=KIND_ENVIRONMENT)
        return {"items": [await object_view(record, o) for o in objs]}

    @api.put(
        "/dataplanes/{dp}/environments/{env}/apps/{app}",
        status_code=202,
        response_model=Accepted,
        tags=["apps"],
        responses=_documented(404),
    )
    async def put_app(
        dp: DpId, env: EnvName, app: AppName, body: AppBody, request: Request
    ) -> dict[str, Any]:
        body = await _strict_body(request, AppBody)
        body.check_name(app)
        given = body.spec.environment
        if given is not None and given != env:
            raise _body_error(
                ("body", "spec", "environment"),
                f"spec.environment {given!r} does not match the environment in the path ({env!r})",
                given,
            )
        raw = body.spec.model_dump(by_alias=True, exclude_none=True, mode="json")
        raw["environment"] = env
        try:
            spec = ChoreoAppSpec.model_validate(raw)
        except ValidationError as exc:  # pragma: no cover - AppSpecBody already validated everything else
            raise RequestValidationError(exc.errors()) from None
        return await put(dp, KIND_APP, env, app, spec.to_k8s())

    @api.delete(
        "/dataplanes/{dp}/environments/{env}/apps/{app}",
        status_code=202,
        response_model=Accepted,
        tags=["apps"],
        responses=_documented(404),
    )
    async def delete_app(dp: DpId, env: EnvName, app: AppName) -> dict[str, Any]:
        return await delete(dp, KIND_APP, env, app)

    @api.get(
        "/dataplanes/{dp}/environments/{env}/apps/{app}",
        response_model=ObjectView,
        tags=["apps"],
        responses=_documented(404),
    )
    async def get_app(dp: DpId, env: EnvName, app: AppName) -> dict[str, Any]:
        return await get_one(dp, KIND_APP, env, app)

    @api.get(
        "/dataplanes/{dp}/environments/{env}/apps",
        response_model=ObjectList,
        tags=["apps"],
        responses=_documented(404),
    )
    async def list_apps(dp: DpId, env: EnvName) -> dict[str, Any]:
        record = await known_dataplane(dp)
        objs = await cp.store.list_objects(dp, kind=KIND_APP, environment=env)
        return {"items": [await object_view(record, o) for o in objs]}

    # promotions
    @api.post(
        "/promotions",
        status_code=202,
        response_model=PromotionResult,
        tags=["promotions"],
        responses=_documented(404, 409),
    )
    async def promote(req: PromotionRequest, request: Request) -> dict[str, Any]:
        req = await _strict_body(request, PromotionRequest)
        src, dst = req.from_, req.to
        where = f"{src.dataplane}/{src.environment}"
        await known_dataplane(src.dataplane)
        await known_dataplane(dst.dataplane)
        source = await cp.store.get_object(src.dataplane, KIND_APP, src.environment, req.app)
        if source is None:
            raise StoreError("not_found", f"app {req.app!r} is not defined in {where}")
        if req.project is not None and source.spec.get("project") != req.project:
            raise promotion.PromotionRefused(
                f"app {req.app!r} in {where} belongs to project {source.spec.get('project')!r}, not {req.project!r}"
            )
        record = await cp.store.get_status(src.dataplane, source.key)
        status = None if record is None else reports.stored_status(source.key, record.status)
        image = promotion.promoted_image(status, str(source.spec.get("image", "")), req.app, where)
        target_env = await cp.store.get_object(
            dst.dataplane, KIND_ENVIRONMENT, dst.environment, dst.environment
        )
        if target_env is None:
            raise StoreError(
                "not_found", f"environment {dst.environment!r} is not defined on dataplane {dst.dataplane!r}"
            )
        prefixes = (target_env.spec.get("registry") or {}).get("allowedPrefixes") or []
        refusal = image_refusal(image, prefixes)
        if refusal is not None:
            raise promotion.PromotionRefused(
                f"{refusal}: not allowed in {dst.dataplane}/{dst.environment} (registry.allowedPrefixes)"
            )
        existing = await cp.store.get_object(dst.dataplane, KIND_APP, dst.environment, req.app)
        raw = promotion.promoted_spec(
            source_spec=source.spec,
            target_spec=None if existing is None else existing.spec,
            image=image,
            environment=dst.environment,
            overrides=req.overrides,
        )
        try:
            spec = ChoreoAppSpec.model_validate(raw, strict=True)
        except ValidationError as exc:
            raise RequestValidationError(
                [
                    {**e, "loc": ("body", "overrides", *e.get("loc", ()))}
                    for e in exc.errors(include_url=False)
                ]
            ) from None
        accepted = await put(dst.dataplane, KIND_APP, dst.environment, req.app, spec.to_k8s())
        log.info("promoted %s from %s to %s/%s (%s)", req.app, where, dst.dataplane, dst.environment, image)
        return {**accepted, "image": image, "source_revision": source.revision}

    app.include_router(api)
    return app
