"""REST API of the reference control plane (contract section 6).

All ``/api/v1`` routes need ``Authorization: Bearer <admin token>``; ``/healthz``, ``/metrics`` and
``/openapi.json`` are open. Bad input is answered with 4xx, in this order: 401 before anything else
is looked at (the body is not even read), 413 for bodies over 1 MiB, 404/405 for unknown routes,
422 for every body that is not parseable JSON and for names and bodies that do not validate
(pydantic's error list), for objects too large for the tunnel and for apps their Environment's
registry allowlist refuses, 404 for unknown dataplanes/objects, 409 when a request is well-formed
but cannot be carried out (promotion without a trustworthy digest). Every one of these codes is
declared in the OpenAPI document.

One router module per resource (``dataplanes``, ``environments``, ``apps``, ``promotions``, and
``ops`` for the open routes); ``http`` holds the plumbing, ``models`` the wire shapes.
"""

from __future__ import annotations

import logging
import sqlite3

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from choreo_cp import promotion
from choreo_cp.api import apps, dataplanes, environments, history, observe, ops, promotions
from choreo_cp.api.deps import require_admin
from choreo_cp.api.http import (
    AdminAuth,
    AuthError,
    BodyLimit,
    RequestMetrics,
    http_error,
    install_docs,
    unauthorized,
    validation_response,
)
from choreo_cp.api.models import documented
from choreo_cp.context import ControlPlane
from choreo_cp.retry import STORE_RETRY_AFTER_SECONDS
from choreo_cp.store import StoreError
from choreo_dp import __version__

__all__ = ["create_app"]

cp_log = logging.getLogger(__name__)


async def _auth_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AuthError)
    return unauthorized(exc.detail)


async def _store_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StoreError)
    return http_error(404 if exc.code == "not_found" else 409, exc.message)


async def _promotion_refused(_: Request, exc: Exception) -> JSONResponse:
    return http_error(409, str(exc))


async def _store_unavailable(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, sqlite3.OperationalError)
    cp_log.warning("store unavailable, answered 503: %s", exc)
    return JSONResponse(
        {"detail": f"the control plane's store is unavailable ({str(exc)[:200]}); retry"},
        status_code=503,
        headers={"Retry-After": str(STORE_RETRY_AFTER_SECONDS)},
    )


async def _invalid(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return validation_response(exc)


def create_app(cp: ControlPlane) -> FastAPI:
    app = FastAPI(
        title="choreo-dp reference control plane",
        version=__version__,
        description="Desired state for private data planes, pushed over an outbound tunnel.",
        docs_url=None,
        redoc_url=None,
    )
    install_docs(app)
    app.state.cp = cp
    app.add_exception_handler(AuthError, _auth_error)
    app.add_exception_handler(StoreError, _store_error)
    app.add_exception_handler(promotion.PromotionRefused, _promotion_refused)
    app.add_exception_handler(RequestValidationError, _invalid)
    # "database is locked", disk I/O: a retry can succeed, so 503 + Retry-After, never a 500
    app.add_exception_handler(sqlite3.OperationalError, _store_unavailable)

    # Outermost first: count everything, then authenticate (before anything reads the body), then
    # bound the body.
    app.add_middleware(BodyLimit)
    app.add_middleware(AdminAuth, cp=cp)
    app.add_middleware(RequestMetrics, metrics=cp.metrics)

    app.include_router(ops.router)
    # AdminAuth already answered 401 before routing; the dependency keeps the check next to the
    # routes and declares the bearer scheme in the OpenAPI document. Included on the app, not
    # through one more router: FastAPI matches every level again on each request (-17% of the
    # Python calls of a PUT).
    for resource in (dataplanes, environments, apps, history, promotions, observe):
        app.include_router(
            resource.router, dependencies=[Depends(require_admin)], responses=documented(401, 413, 503)
        )
    return app
