"""What every route of the REST API depends on: the control plane, the admin check, path parameters."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from choreo_cp.api.http import AuthError
from choreo_cp.api.models import DATAPLANE_ID
from choreo_cp.context import ControlPlane
from choreo_cp.store import Dataplane, StoreError
from choreo_dp.api.common import DNS1123_LABEL

# Routes declare the full path (not a prefix added when the routers are put together): FastAPI hands
# middleware the route as declared, and the request metrics are labelled by its path template.
API_V1 = "/api/v1"

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


# async on purpose: FastAPI runs a plain ``def`` dependency on a worker thread, a thread hop (and
# two lock handoffs) on every request for one attribute read.
async def control_plane(request: Request) -> ControlPlane:
    cp: ControlPlane = request.app.state.cp
    return cp


CP = Annotated[ControlPlane, Depends(control_plane)]

_bearer = HTTPBearer(auto_error=False, description="Admin token")
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


async def require_admin(credentials: BearerCredentials, request: Request) -> None:
    # ``request``, not the CP dependency: one dependency fewer to solve on every request.
    cp = await control_plane(request)
    if credentials is None:
        raise AuthError("missing bearer token")
    if not cp.is_admin(credentials.credentials):
        raise AuthError("invalid admin token")


async def known_dataplane(cp: ControlPlane, dp: str) -> Dataplane:
    found = await cp.store.get_dataplane(dp)
    if found is None:
        raise StoreError("not_found", f"dataplane {dp!r} is not registered")
    return found
