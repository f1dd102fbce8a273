"""``/api/v1/dataplanes/{dp}/environments/{env}/apps``: the ChoreoApps desired in an Environment."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from choreo_cp.api import objects
from choreo_cp.api.connections import check_connections
from choreo_cp.api.deps import API_V1, CP, AppName, DpId, EnvName, control_plane
from choreo_cp.api.http import JsonRoute, body_error, strict_body
from choreo_cp.api.models import Accepted, AppBody, ObjectList, ObjectView, documented
from choreo_cp.api.observe import WHO
from choreo_cp.context import ControlPlane
from choreo_cp.store import KIND_APP
from choreo_cp.store.history import HistoryNote
from choreo_dp.api import ChoreoAppSpec

router = APIRouter(prefix=API_V1, route_class=JsonRoute, tags=["apps"], responses=documented(404))


@router.put("/dataplanes/{dp}/environments/{env}/apps/{app}", status_code=202, response_model=Accepted)
async def put_app(dp: DpId, env: EnvName, app: AppName, body: AppBody, request: Request) -> dict[str, Any]:
    # The hottest write route: the control plane from ``request``, not one more dependency to solve.
    cp = await control_plane(request)
    body = await strict_body(request, AppBody)
    return await accept_app(cp, dp, env, app, body, HistoryNote(author=WHO))


async def accept_app(
    cp: ControlPlane, dp: str, env: str, app: str, body: AppBody, note: HistoryNote
) -> dict[str, Any]:
    """The one way an app spec is accepted (a PUT, a rollback): every check, then the store, which
    adds the spec to the app's history with ``note``."""
    body.check_name(app)
    given = body.spec.environment
    if given is not None and given != env:
        raise body_error(
            ("body", "spec", "environment"),
            f"spec.environment {given!r} does not match the environment in the path ({env!r})",
            given,
        )
    # The body's spec is a ChoreoAppSpec already validated (strictly) with the body; no validator
    # reads ``environment``, and the path's has the same pattern, so it is set, not validated again.
    spec: ChoreoAppSpec = body.spec
    await check_connections(cp, dp, env, app, spec)
    manifest = {**spec.to_k8s(), "environment": env}
    return await objects.put_object(cp, dp, KIND_APP, env, app, manifest, note)


@router.delete("/dataplanes/{dp}/environments/{env}/apps/{app}", status_code=202, response_model=Accepted)
async def delete_app(dp: DpId, env: EnvName, app: AppName, cp: CP) -> dict[str, Any]:
    return await objects.delete_object(cp, dp, KIND_APP, env, app)


@router.get("/dataplanes/{dp}/environments/{env}/apps/{app}", response_model=ObjectView)
async def get_app(dp: DpId, env: EnvName, app: AppName, cp: CP) -> dict[str, Any]:
    return await objects.get_object(cp, dp, KIND_APP, env, app)


@router.get("/dataplanes/{dp}/environments/{env}/apps", response_model=ObjectList)
async def list_apps(dp: DpId, env: EnvName, cp: CP) -> dict[str, Any]:
    return await objects.list_objects(cp, dp, KIND_APP, env)
