"""What the store hands out: records, write results, errors, and the naming of desired objects."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from choreo_wire import protocol

KIND_ENVIRONMENT: Literal["Environment"] = "Environment"
KIND_APP: Literal["ChoreoApp"] = "ChoreoApp"
Kind = Literal["Environment", "ChoreoApp"]
Op = Literal["put", "delete"]


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def default_spec_hash(spec: dict[str, Any]) -> str:
    """The tunnel protocol's spec hash: both ends must compute it identically."""
    return protocol.spec_hash(spec)


def object_key(kind: str, environment: str, name: str) -> str:
    """Inventory key of a desired object: ``Environment/<env>`` or ``ChoreoApp/<env>/<app>``."""
    if kind == KIND_ENVIRONMENT:
        return protocol.environment_key(name)
    return protocol.app_key(environment, name)


@dataclass(frozen=True)
class InventoryReport:
    """The agent's last inventory summary (what it has in the cluster) and when it arrived."""

    count: int
    digest: str
    revision: int
    at: str


@dataclass(frozen=True)
class Dataplane:
    id: str
    epoch: str
    revision: int
    horizon: int
    created_at: str
    token_rotated_at: str | None
    applied_revision: int | None
    applied_epoch: str | None
    last_heartbeat: str | None
    last_connected: str | None
    last_disconnected: str | None
    agent: dict[str, Any]
    objects: int = 0
    inventory: InventoryReport | None = None
    # why the next session must resync (None: no resync required), and the anti-entropy backoff state
    resync_required: str | None = None
    resync_requests: int = 0
    resync_requested_at: str | None = None


@dataclass(frozen=True)
class DesiredObject:
    key: str
    kind: str
    environment: str
    name: str
    spec: dict[str, Any]
    spec_hash: str
    revision: int
    updated_at: str


@dataclass(frozen=True)
class Change:
    """One entry of the revision log, resolved against the current objects."""

    revision: int
    op: Op
    key: str
    kind: str
    environment: str
    name: str
    spec: dict[str, Any] | None
    spec_hash: str | None


@dataclass(frozen=True)
class StatusRecord:
    key: str
    status: dict[str, Any]
    reported_at: str
    # the data plane says the object is not in its cluster (deleted by another writer)
    missing: bool = False
    # when the agent observed it (its clock); None for reports from before the agent said
    observed_at: str | None = None


@dataclass(frozen=True)
class Nack:
    key: str
    revision: int
    code: str
    message: str
    retryable: bool
    at: str


@dataclass(frozen=True)
class ObjectReport:
    """A desired object with what the data plane last said about it (status, refusal)."""

    object: DesiredObject
    status: StatusRecord | None
    nack: Nack | None


@dataclass(frozen=True)
class WriteResult:
    """Outcome of a desired-state change: the dataplane revision after it and whether anything changed."""

    revision: int
    changed: bool
    object_revision: int | None = None
    spec_hash: str | None = None
    removed: list[str] = field(default_factory=list)


class LogGap(Exception):
    """The revision log no longer covers the changes after the requested revision (compacted)."""

    def __init__(self, since: int, horizon: int) -> None:
        super().__init__(f"log starts after revision {horizon}; cannot replay from {since}")
        self.since = since
        self.horizon = horizon


@dataclass(frozen=True)
class Snapshot:
    """The desired state of one dataplane at one revision: key -> spec hash."""

    epoch: str
    revision: int
    hashes: dict[str, str]


@dataclass(frozen=True)
class DesiredState:
    """A snapshot plus the keys the data plane refused for good at their current spec (key -> code)."""

    epoch: str
    revision: int
    hashes: dict[str, str]
    refused: dict[str, str]


class StoreError(Exception):
    """A request the store refuses (unknown dataplane, missing parent...); the API maps it to 4xx."""

    def __init__(self, code: Literal["not_found", "conflict"], message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def not_registered(dp: str) -> StoreError:
    return StoreError("not_found", f"dataplane {dp!r} is not registered")


def _inventory(text: str | None) -> InventoryReport | None:
    if not text:
        return None
    try:
        raw = json.loads(text)
        return InventoryReport(int(raw["count"]), str(raw["digest"]), int(raw["revision"]), str(raw["at"]))
    except (ValueError, KeyError, TypeError):
        return None  # written by another version: no summary rather than a failing read


def inventory_json(count: int, digest: str, revision: int, at: str) -> str:
    return canonical_json({"count": count, "digest": digest, "revision": revision, "at": at})


def row_dataplane(row: Any, objects: int = 0) -> Dataplane:
    return Dataplane(
        id=row["id"],
        epoch=row["epoch"],
        revision=row["revision"],
        horizon=row["horizon"],
        created_at=row["created_at"],
        token_rotated_at=row["token_rotated_at"],
        applied_revision=row["applied_revision"],
        applied_epoch=row["applied_epoch"],
        last_heartbeat=row["last_heartbeat"],
        last_connected=row["last_connected"],
        last_disconnected=row["last_disconnected"],
        agent=json.loads(row["agent"] or "{}"),
        objects=objects,
        inventory=_inventory(row["inventory"]),
        resync_required=row["resync_required"],
        resync_requests=int(row["resync_requests"] or 0),
        resync_requested_at=row["resync_requested_at"],
    )


def row_object(row: Any) -> DesiredObject:
    return DesiredObject(
        key=row["key"],
        kind=row["kind"],
        environment=row["environment"],
        name=row["name"],
        spec=json.loads(row["spec"]),
        spec_hash=row["spec_hash"],
        revision=row["revision"],
        updated_at=row["updated_at"],
    )
