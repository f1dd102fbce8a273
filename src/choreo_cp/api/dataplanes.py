"""``/api/v1/dataplanes``: registration (and token rotation), listing, one dataplane."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from choreo_cp.api.deps import API_V1, CP, DpId, known_dataplane
from choreo_cp.api.http import JsonRoute
from choreo_cp.api.models import DataplaneList, DataplaneView, Registration, documented
from choreo_cp.api.objects import dataplane_view

log = logging.getLogger(__name__)

router = APIRouter(prefix=API_V1, route_class=JsonRoute, tags=["dataplanes"])


@router.put(
    "/dataplanes/{dp}",
    response_model=Registration,
    responses={
        200: {"description": "Already registered (token only when rotated)."},
        201: {"model": Registration, "description": "Registered; the response holds its token once."},
    },
)
async def register_dataplane(
    dp: DpId,
    response: Response,
    cp: CP,
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
    return {**(await dataplane_view(cp, record)), "created": created, "token": token}


@router.get("/dataplanes", response_model=DataplaneList)
async def list_dataplanes(cp: CP) -> dict[str, Any]:
    return {"items": [await dataplane_view(cp, d) for d in await cp.store.list_dataplanes()]}


@router.get("/dataplanes/{dp}", response_model=DataplaneView, responses=documented(404))
async def get_dataplane(dp: DpId, cp: CP) -> dict[str, Any]:
    return await dataplane_view(cp, await known_dataplane(cp, dp))
