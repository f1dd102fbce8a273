"""The REST API's request and response models (camelCase on the wire) and its documented errors."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from choreo_cp.api.http import body_error
from choreo_dp.api import ChoreoAppSpec, EnvironmentSpec
from choreo_dp.api.common import DNS1123_LABEL

DATAPLANE_ID = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"


class ApiModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


# -- responses -----------------------------------------------------------------------------------
class SessionView(ApiModel):
    id: str
    since: str
    remote: str


class InventoryView(ApiModel):
    count: int
    digest: str = Field(
        description="inventory_digest of key -> spec hash of what the agent has in its cluster."
    )
    revision: int = Field(description="The persisted revision the summary describes.")
    reported_at: str


class DataplaneView(ApiModel):
    id: str
    epoch: str
    revision: int = Field(description="Newest desired-state revision of this dataplane.")
    log_horizon: int = Field(description="Agents older than this revision get a resync instead of a replay.")
    created_at: str
    connected: bool = Field(
        description="A session is open and its last heartbeat is within the dead-link bound (30 s)."
    )
    session: SessionView | None = None
    last_heartbeat: str | None = None
    last_heartbeat_age_seconds: float | None = Field(default=None, description="Age of the last heartbeat.")
    last_connected: str | None = None
    last_disconnected: str | None = None
    applied_revision: int | None = Field(default=None, description="Newest revision the agent acknowledged.")
    applied_epoch: str | None = None
    in_sync: bool = Field(
        description="The agent acknowledged the newest revision of the current epoch and its inventory "
        "digest (from the specs in its cluster) equals the desired digest at that revision, with no "
        "desired object refused."
    )
    sync_reason: str | None = Field(default=None, description="Why it is not in sync.")
    desired_digest: str | None = Field(default=None, description="Digest of the desired state at `revision`.")
    refused: list[str] = Field(
        default_factory=list, description="Desired keys the data plane refused for good."
    )
    inventory: InventoryView | None = Field(default=None, description="The agent's last inventory summary.")
    resync_required: str | None = Field(
        default=None,
        description="Why the next session must resync (anti-entropy); null when none is required.",
    )
    resync_requests: int = Field(default=0, description="Anti-entropy resyncs requested in a row.")
    resync_requested_at: str | None = None
    orphans: int | None = Field(default=None, description="Deletions the agent holds back (safety rules).")
    orphaned_keys: list[str] = Field(default_factory=list)
    objects: int = 0
    agent: dict[str, Any] = Field(default_factory=dict, description="Other facts the agent reported.")


class Registration(DataplaneView):
    created: bool
    token: str | None = Field(
        default=None,
        description="The dataplane token: shown only when minted (first registration or rotateToken=true).",
    )


class Accepted(ApiModel):
    dataplane: str
    kind: str
    environment: str
    name: str
    revision: int = Field(description="The dataplane's revision after this request.")
    object_revision: int | None = None
    spec_hash: str | None = None
    changed: bool
    removed: list[str] = Field(default_factory=list)


class NackView(ApiModel):
    revision: int
    code: str
    message: str
    retryable: bool
    at: str


class ObjectView(ApiModel):
    dataplane: str
    kind: str
    environment: str
    name: str
    spec: dict[str, Any]
    spec_hash: str
    revision: int
    updated_at: str
    applied: bool = Field(description="The agent acknowledged a revision at or after this object's.")
    status: dict[str, Any] | None = Field(default=None, description="Last status reported by the data plane.")
    status_reported_at: str | None = None
    phase: str | None = Field(
        default=None,
        description="The reported phase; `Missing` when the data plane does not have the object.",
    )
    reason: str | None = Field(default=None, description="Reason of the reported Ready condition.")
    message: str | None = None
    missing: bool = False
    observed_at: str | None = Field(default=None, description="When the data plane observed this status.")
    observed_revision: int | None = Field(default=None, description="The revision the status describes.")
    stale: bool | None = Field(
        default=None,
        description="The status describes another revision than the desired one (null: no status).",
    )
    last_error: NackView | None = None


class ObjectList(ApiModel):
    items: list[ObjectView]


class ErrorDetail(ApiModel):
    detail: str


def documented(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route can answer (422 FastAPI declares itself)."""
    what = {
        401: "Missing or wrong admin token; answered before the body is read.",
        404: "Unknown data plane, environment or app.",
        409: "Well-formed but impossible: no trustworthy digest, image not allowed at the target, "
        "project mismatch.",
        413: "Request body over 1 MiB.",
        503: "The store is unavailable (locked, disk I/O); retry after Retry-After seconds.",
    }
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entry: dict[str, Any] = {"model": ErrorDetail, "description": what[code]}
        if code == 401:
            entry["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}}
        if code == 503:
            entry["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
        out[code] = entry
    return out


class DataplaneList(ApiModel):
    items: list[DataplaneView]


# -- requests ------------------------------------------------------------------------------------
class AppSpecBody(ChoreoAppSpec):
    """A ChoreoApp spec; ``environment`` may be left out (it comes from the path)."""

    environment: Annotated[str, Field(min_length=1, max_length=63, pattern=DNS1123_LABEL)] | None = None  # type: ignore[assignment]


class ObjectBody(ApiModel):
    """``{"spec": ...}``, optionally a whole manifest (apiVersion, kind, metadata); a bare spec is
    accepted too and treated as ``{"spec": <body>}``."""

    api_version: Literal["choreo.dev/v1alpha1"] | None = Field(default=None, alias="apiVersion")
    metadata: dict[str, Any] | None = Field(
        default=None, description="Only metadata.name is read (must match)."
    )

    @model_validator(mode="before")
    @classmethod
    def _wrap_bare_spec(cls, data: Any) -> Any:
        if isinstance(data, dict) and not {"spec", "apiVersion", "kind", "metadata"} & set(data):
            return {"spec": data}
        return data

    def check_name(self, name: str) -> None:
        given = (self.metadata or {}).get("name")
        if given is not None and given != name:
            raise body_error(
                ("body", "metadata", "name"),
                f"metadata.name {given!r} does not match the path ({name!r})",
                given,
            )


class EnvironmentBody(ObjectBody):
    kind: Literal["Environment"] | None = None
    spec: EnvironmentSpec


class AppBody(ObjectBody):
    kind: Literal["ChoreoApp"] | None = None
    spec: AppSpecBody


class Location(ApiModel):
    dataplane: str = Field(min_length=1, max_length=253, pattern=DATAPLANE_ID)
    environment: str = Field(min_length=1, max_length=63, pattern=DNS1123_LABEL)


class PromotionRequest(ApiModel):
    app: str = Field(min_length=1, max_length=63, pattern=DNS1123_LABEL)
    project: str | None = Field(default=None, min_length=1, max_length=63, pattern=DNS1123_LABEL)
    from_: Location = Field(alias="from")
    to: Location
    overrides: dict[str, Any] | None = Field(
        default=None, description="JSON merge patch applied to the promoted spec (not image/environment)."
    )

    @model_validator(mode="after")
    def _sane(self) -> PromotionRequest:
        if self.from_ == self.to:
            raise ValueError("from and to are the same place")
        if self.overrides and {"image", "environment"} & set(self.overrides):
            raise ValueError(
                "overrides cannot set image or environment: the image is the digest running in from"
            )
        return self


class PromotionResult(Accepted):
    image: str
    source_revision: int
