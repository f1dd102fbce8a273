"""``/api/v1/dataplanes``: registration (and token rotation), listing, one dataplane."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from choreo_cp import insync
from choreo_cp.api.deps import API_V1, CP, DpId, known_dataplane
from choreo_cp.api.http import JsonRoute
from choreo_cp.api.models import DataplaneList, DataplaneView, Registration, documented
from choreo_cp.api.objects import dataplane_view
from choreo_cp.context import ControlPlane
from choreo_cp.store import Dataplane, SessionRecord

log = logging.getLogger(__name__)

router = APIRouter(prefix=API_V1, route_class=JsonRoute, tags=["dataplanes"])


_UNREAD: Any = object()


async def _view(cp: ControlPlane, dp: Dataplane, record: SessionRecord | None = _UNREAD) -> dict[str, Any]:
    """The dataplane as REST shows it; with several replicas its session may be on another one, so
    ``connected`` and ``session`` come from the store's session row (``record``, read here unless
    the caller read them all), not this process's hub."""
    view = await dataplane_view(cp, dp)
    if not cp.store.clustered:
        return view
    if record is _UNREAD:
        record = await cp.store.session_record(dp.id)
    if record is None or not record.open:
        view["connected"], view["session"] = False, None
        return view
    now = dt.datetime.now(dt.UTC)
    # The replica holding the session writes heartbeats (flushed every status_flush_interval);
    # a replica killed with its session open stops them, and the link counts as dead past the bound.
    ages = [
        a
        for a in (insync.age_seconds(dp.last_heartbeat, now), insync.age_seconds(record.started_at, now))
        if a is not None
    ]
    view["connected"] = bool(ages) and min(ages) <= cp.tunnel.dead_link_after
    view["session"] = {"id": record.session_id, "since": record.started_at, "remote": record.remote}
    return view


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
        if cp.store.clustered:
            # ... on whichever replica it runs: a bumped fencing token sends it away there.
            await cp.store.fence(dp)
    return {**(await _view(cp, record)), "created": created, "token": token}


@router.get("/dataplanes", response_model=DataplaneList)
async def list_dataplanes(cp: CP) -> dict[str, Any]:
    dataplanes = await cp.store.list_dataplanes()
    if not cp.store.clustered:
        return {"items": [await _view(cp, d) for d in dataplanes]}
    records = await cp.store.session_records()
    return {"items": [await _view(cp, d, records.get(d.id)) for d in dataplanes]}


@router.get("/dataplanes/{dp}", response_model=DataplaneView, responses=documented(404))
async def get_dataplane(dp: DpId, cp: CP) -> dict[str, Any]:
    return await _view(cp, await known_dataplane(cp, dp))
