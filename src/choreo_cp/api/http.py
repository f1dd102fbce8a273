"""HTTP plumbing of the REST API: admin authentication, body limits, JSON checks, error bodies, metrics.

Bad input is answered with 4xx, in this order: 401 before anything else is looked at (the body is
not even read), 413 for bodies over 1 MiB, 404/405 for unknown routes, 422 for every body that is
not parseable JSON.
"""

from __future__ import annotations

import email.message
import json
import math
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from choreo_cp import reports
from choreo_cp.context import ControlPlane
from choreo_cp.metrics import Metrics

MAX_BODY_BYTES = 1024 * 1024
# Request bodies nest a handful of levels (spec.probes.liveness.httpGet.path); anything far deeper
# is refused before recursive code (pydantic, merge patch) walks it.
MAX_BODY_DEPTH = 32
API_PREFIX = "/api/"


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


def bearer_token(scope: Scope) -> str | None:
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
        token = bearer_token(scope)
        if token is None or not self.cp.is_admin(token):
            detail = "missing bearer token" if token is None else "invalid admin token"
            await unauthorized(detail)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def json_problem(content_type: str | None, body: bytes) -> dict[str, Any] | None:
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
                    problem = json_problem(request.headers.get("content-type"), body)
                    if problem is not None:
                        return JSONResponse({"detail": [problem]}, status_code=422)
            return await handler(request)

        return checked


_M = TypeVar("_M", bound=BaseModel)


async def strict_body(request: Request, model: type[_M]) -> _M:
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


def validation_response(exc: RequestValidationError) -> JSONResponse:
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


def unauthorized(detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=401, headers={"WWW-Authenticate": "Bearer"})


class AuthError(Exception):
    def __init__(self, detail: str) -> None:
        self.detail = detail


def http_error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def body_error(loc: tuple[str | int, ...], msg: str, value: Any) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": loc, "msg": msg, "input": value}])


# -- API documentation pages ------------------------------------------------------------------------
DOCS_ASSETS = "/docs-assets"
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


def install_docs(app: FastAPI) -> None:
    """Swagger UI at /docs and ReDoc at /redoc, every script, style and icon served by this process.

    FastAPI's own pages load them from a CDN and Google Fonts, so they stay blank in an air-gapped
    network, exactly where private data planes run (create the app with docs_url=redoc_url=None).
    """
    app.mount(DOCS_ASSETS, StaticFiles(directory=STATIC_DIR), name="docs-assets")
    favicon = f"{DOCS_ASSETS}/favicon-32x32.png"
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> Response:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=favicon,
            # Swagger UI would otherwise send the document to validator.swagger.io for a badge.
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> Response:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=favicon,
            with_google_fonts=False,
        )
