"""``/api/v1/promotions``: run the digest an app runs in one place in another (contract section 6)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import Field, ValidationError

from choreo_cp import promotion, reports
from choreo_cp.api import history, objects
from choreo_cp.api.deps import API_V1, CP, known_dataplane
from choreo_cp.api.http import JsonRoute, strict_body
from choreo_cp.api.models import PromotionRequest, PromotionResult, documented
from choreo_cp.api.observe import WHO
from choreo_cp.context import ControlPlane
from choreo_cp.store import KIND_APP, KIND_ENVIRONMENT, StoreError
from choreo_cp.store.history import HistoryNote
from choreo_dp.api import ChoreoAppSpec
from choreo_dp.api.images import image_refusal
from choreo_wire.protocol import app_key

log = logging.getLogger(__name__)

router = APIRouter(prefix=API_V1, route_class=JsonRoute, tags=["promotions"])

AUDIT_KIND = "promotion"


class PromotionBody(PromotionRequest):
    rollout: dict[str, Any] | None = Field(
        default=None,
        description="Replaces the promoted spec's whole `rollout` (e.g. a canary for production); null "
        "removes it (a plain rolling update); left out, the target keeps its own. Validated as the "
        "spec's `rollout` field is by a PUT.",
    )


@router.post(
    "/promotions",
    status_code=202,
    response_model=PromotionResult,
    responses=documented(404, 409),
)
async def promote(req: PromotionBody, request: Request, cp: CP) -> dict[str, Any]:
    req = await strict_body(request, PromotionBody)
    params = {"from": f"{req.from_.dataplane}/{req.from_.environment}", "project": req.project}
    return await history.audited(
        cp,
        request,
        dp=req.to.dataplane,
        key=app_key(req.to.environment, req.app),
        kind=AUDIT_KIND,
        params={k: v for k, v in params.items() if v is not None},
        call=lambda: _promote(req, cp),
    )


async def _promote(req: PromotionBody, cp: ControlPlane) -> dict[str, Any]:
    src, dst = req.from_, req.to
    where = f"{src.dataplane}/{src.environment}"
    await known_dataplane(cp, src.dataplane)
    await known_dataplane(cp, dst.dataplane)
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
    target_env = await cp.store.get_object(dst.dataplane, KIND_ENVIRONMENT, dst.environment, dst.environment)
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
        rollout=req.rollout if "rollout" in req.model_fields_set else promotion.UNSET,
    )
    try:
        spec = ChoreoAppSpec.model_validate(raw, strict=True)
    except ValidationError as exc:
        raise RequestValidationError([_located(e, req) for e in exc.errors(include_url=False)]) from None
    accepted = await objects.put_object(
        cp,
        dst.dataplane,
        KIND_APP,
        dst.environment,
        req.app,
        spec.to_k8s(),
        HistoryNote(author=WHO, cause="promotion"),
    )
    log.info("promoted %s from %s to %s/%s (%s)", req.app, where, dst.dataplane, dst.environment, image)
    return {**accepted, "image": image, "source_revision": source.revision}


def _located(error: Any, req: PromotionBody) -> Any:
    """Point an error of the promoted spec at the part of the request that put it there."""
    loc = tuple(error.get("loc", ()))
    given_rollout = "rollout" in req.model_fields_set and loc[:1] == ("rollout",)
    return {**error, "loc": ("body", *loc) if given_rollout else ("body", "overrides", *loc)}
