"""``/healthz`` and ``/metrics``: open (no admin token), for probes and scrapers."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from choreo_cp.api.deps import CP

router = APIRouter(tags=["ops"])


@router.get(
    "/healthz",
    response_class=PlainTextResponse,
    responses={500: {"description": "Unhealthy.", "content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def healthz(cp: CP) -> Response:
    problems = cp.liveness.problems()
    if problems:
        return PlainTextResponse("".join(f"{line}\n" for line in problems), status_code=500)
    return PlainTextResponse("ok\n")


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(cp: CP) -> Response:
    cp.metrics.sessions.set(len(cp.hub))
    return Response(generate_latest(cp.metrics.registry), media_type=CONTENT_TYPE_LATEST)
