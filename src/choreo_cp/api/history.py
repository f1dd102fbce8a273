"""``.../apps/{app}/history`` and ``.../apps/{app}/rollback``: every accepted spec of an app, and
pushing one of them again.

A rollback is a new revision, never a rewind: the old spec goes through :func:`apps.accept_app`,
the path of a PUT, so the registry allowlist, the size bound and the spec validation of today judge
it (an Environment tightened since refuses an old image with the same 422 as a PUT would). When the
data plane reported the digest that ran that revision, the image is pinned to it
(``<spec repository>@<digest>``, :func:`choreo_cp.promotion.pinned_image`): a tag may have moved
since, the digest is what ran. Every rollback, refused or not, is written to the audit trail.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import Field, ValidationError, model_validator

from choreo_cp import promotion
from choreo_cp.api import apps
from choreo_cp.api.deps import API_V1, CP, AppName, DpId, EnvName, known_dataplane
from choreo_cp.api.http import JsonRoute, strict_body
from choreo_cp.api.models import Accepted, ApiModel, AppBody, documented
from choreo_cp.api.observe import WHO
from choreo_cp.context import ControlPlane
from choreo_cp.store import KIND_APP, AuditRecord, StoreError, object_key
from choreo_cp.store.history import HistoryEntry, HistoryNote

router = APIRouter(prefix=API_V1, route_class=JsonRoute, tags=["history"])

_PATH = "/dataplanes/{dp}/environments/{env}/apps/{app}"
AUDIT_KIND = "rollback"


class HistoryItem(ApiModel):
    revision: int = Field(description="The dataplane revision that accepted this spec.")
    at: str = Field(description="When the control plane accepted it.")
    author: str | None = Field(description="Who pushed it (null: accepted before history was kept).")
    cause: str = Field(description="apply, rollback or promotion.")
    rollback_of: int | None = Field(default=None, description="For a rollback: the revision pushed again.")
    image: str | None = Field(default=None, description="The image the spec names.")
    digest: str | None = Field(
        default=None,
        description="The digest the data plane reported running this revision Ready (same repository "
        "as the spec's image only); a rollback to this revision pins it.",
    )
    ran_image: str | None = Field(default=None, description="The image as the data plane reported it.")
    ran_at: str | None = None
    spec: dict[str, Any]


class HistoryList(ApiModel):
    dataplane: str
    environment: str
    name: str
    limit: int = Field(description="How many revisions per app the control plane keeps (oldest pruned).")
    items: list[HistoryItem] = Field(description="Newest first.")


class RollbackRequest(ApiModel):
    revision: int | None = Field(default=None, ge=1, description="The revision to push again.")
    steps: int | None = Field(
        default=None, ge=1, description="How many entries back in the history (default 1: the previous)."
    )

    @model_validator(mode="after")
    def _one(self) -> RollbackRequest:
        if self.revision is not None and self.steps is not None:
            raise ValueError("give revision or steps, not both")
        return self


class RollbackResult(Accepted):
    rolled_back_to: int = Field(description="The revision whose spec was pushed again.")
    image: str = Field(description="The image pushed: pinned to the digest that ran when one was reported.")
    pinned: bool = Field(description="The image was pinned to a reported digest.")


def _digest(pinned: str | None) -> str | None:
    return None if pinned is None else pinned.rpartition("@")[2]


def item_view(entry: HistoryEntry) -> dict[str, Any]:
    image = entry.spec.get("image")
    pinned = promotion.pinned_image(entry.ran_image, image) if isinstance(image, str) else None
    return {
        "revision": entry.revision,
        "at": entry.at,
        "author": entry.author,
        "cause": entry.cause,
        "rollback_of": entry.rollback_of,
        "image": image if isinstance(image, str) else None,
        "digest": _digest(pinned),
        "ran_image": entry.ran_image,
        "ran_at": entry.ran_at,
        "spec": entry.spec,
    }


@router.get(f"{_PATH}/history", response_model=HistoryList, responses=documented(404))
async def get_history(dp: DpId, env: EnvName, app: AppName, cp: CP) -> dict[str, Any]:
    await known_dataplane(cp, dp)
    # Digests that ran are stamped when statuses are written; write the pending ones first.
    await cp.store.flush()
    entries = await cp.store.list_history(dp, object_key(KIND_APP, env, app))
    if not entries:
        raise StoreError(
            "not_found", f"app {app!r} in environment {env!r} has no history on dataplane {dp!r}"
        )
    return {
        "dataplane": dp,
        "environment": env,
        "name": app,
        "limit": cp.store.history_limit,
        "items": [item_view(e) for e in entries],
    }


async def _target(cp: ControlPlane, dp: str, env: str, app: str, req: RollbackRequest) -> HistoryEntry:
    key = object_key(KIND_APP, env, app)
    if req.revision is not None:
        entry = await cp.store.get_history(dp, key, req.revision)
        if entry is None:
            raise StoreError(
                "not_found",
                f"revision {req.revision} is not in the history of app {app!r} in environment {env!r} "
                f"(GET .../history lists the {cp.store.history_limit} newest revisions kept)",
            )
        return entry
    steps = req.steps or 1
    entries = await cp.store.list_history(dp, key, limit=steps + 1)
    if not entries:
        raise StoreError(
            "not_found", f"app {app!r} in environment {env!r} has no history on dataplane {dp!r}"
        )
    if len(entries) <= steps:
        raise HTTPException(
            409,
            f"cannot go {steps} step(s) back: the history of app {app!r} holds {len(entries)} revision(s), "
            f"the oldest {entries[-1].revision}",
        )
    return entries[steps]


def _spec_body(entry: HistoryEntry, image: str) -> AppBody:
    """The historical spec as a PUT body, validated by today's rules (a 422 names the revision)."""
    try:
        return AppBody.model_validate({"spec": {**entry.spec, "image": image}}, strict=True)
    except ValidationError as exc:
        raise RequestValidationError(
            [
                {**e, "loc": ("history", entry.revision, *e.get("loc", ()))}
                for e in exc.errors(include_url=False)
            ]
        ) from None


async def audited(
    cp: ControlPlane,
    request: Request,
    *,
    dp: str,
    key: str,
    kind: str,
    params: dict[str, Any],
    call: Callable[[], Awaitable[dict[str, Any]]],
) -> dict[str, Any]:
    """Run a desired-state request and append its outcome to the audit trail, refused or not.

    ``params`` is recorded as it is when the call ends, so the call may add what it decided (the
    revision and image a rollback pushed). Written before the answer: the record is as durable as
    the change it describes.
    """
    started = time.monotonic()
    status, code = 500, "error"
    try:
        result = await call()
        status, code = 202, "ok" if result.get("changed") else "unchanged"
        return result
    except StoreError as exc:
        status, code = (404 if exc.code == "not_found" else 409), exc.code
        raise
    except promotion.PromotionRefused:
        status, code = 409, "refused"
        raise
    except HTTPException as exc:
        status, code = exc.status_code, "refused"
        raise
    except RequestValidationError:
        status, code = 422, "invalid"
        raise
    finally:
        await cp.store.append_audit(
            AuditRecord(
                who=WHO,
                client=request.client.host if request.client else "?",
                dataplane=dp,
                app=key,
                kind=kind,
                params=params,
                status=status,
                code=code,
                bytes=0,
                duration_seconds=round(time.monotonic() - started, 3),
            )
        )


@router.post(
    f"{_PATH}/rollback", status_code=202, response_model=RollbackResult, responses=documented(404, 409)
)
async def rollback(
    dp: DpId, env: EnvName, app: AppName, req: RollbackRequest, request: Request, cp: CP
) -> dict[str, Any]:
    req = await strict_body(request, RollbackRequest)
    params: dict[str, Any] = req.model_dump(exclude_none=True)

    async def call() -> dict[str, Any]:
        await known_dataplane(cp, dp)
        await cp.store.flush()
        entry = await _target(cp, dp, env, app, req)
        spec_image = str(entry.spec.get("image", ""))
        pinned = promotion.pinned_image(entry.ran_image, spec_image)
        image = pinned or spec_image
        params.update(to=entry.revision, image=image)
        body = _spec_body(entry, image)
        note = HistoryNote(author=WHO, cause="rollback", rollback_of=entry.revision)
        accepted = await apps.accept_app(cp, dp, env, app, body, note)
        return {**accepted, "rolled_back_to": entry.revision, "image": image, "pinned": pinned is not None}

    key = object_key(KIND_APP, env, app)
    return await audited(cp, request, dp=dp, key=key, kind=AUDIT_KIND, params=params, call=call)
