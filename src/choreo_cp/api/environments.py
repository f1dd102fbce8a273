"""``/api/v1/dataplanes/{dp}/environments``: the Environments desired on a dataplane."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from choreo_cp.api import objects
from choreo_cp.api.deps import API_V1, CP, DpId, EnvName
from choreo_cp.api.http import JsonRoute, strict_body
from choreo_cp.api.models import Accepted, EnvironmentBody, ObjectList, ObjectView, documented
from choreo_cp.store import KIND_ENVIRONMENT

router = APIRouter(prefix=API_V1, route_class=JsonRoute, tags=["environments"], responses=documented(404))


@router.put("/dataplanes/{dp}/environments/{env}", status_code=202, response_model=Accepted)
async def put_environment(
    dp: DpId, env: EnvName, body: EnvironmentBody, request: Request, cp: CP
) -> dict[str, Any]:
    body = await strict_body(request, EnvironmentBody)
    body.check_name(env)
    return await objects.put_object(cp, dp, KIND_ENVIRONMENT, env, env, body.spec.to_k8s())


@router.delete("/dataplanes/{dp}/environments/{env}", status_code=202, response_model=Accepted)
async def delete_environment(dp: DpId, env: EnvName, cp: CP) -> dict[str, Any]:
    return await objects.delete_object(cp, dp, KIND_ENVIRONMENT, env, env)


@router.get("/dataplanes/{dp}/environments/{env}", response_model=ObjectView)
async def get_environment(dp: DpId, env: EnvName, cp: CP) -> dict[str, Any]:
    return await objects.get_object(cp, dp, KIND_ENVIRONMENT, env, env)


@router.get("/dataplanes/{dp}/environments", response_model=ObjectList)
async def list_environments(dp: DpId, cp: CP) -> dict[str, Any]:
    return await objects.list_objects(cp, dp, KIND_ENVIRONMENT)
