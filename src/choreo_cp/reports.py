"""What a data plane reports, validated before the control plane keeps any of it.

A data plane is trusted for the facts only it can know (what runs, with which digest, whether it
is ready) and for nothing else: a compromised or buggy agent must not be able to store data the
REST API cannot serve, make the control plane hold unbounded memory, or make counts absurd. So
every status, inventory and orphan report is checked here against a schema and hard bounds, and
only the validated, normalised form is ever stored (see docs/controlplane.md, "Trust").

Statuses are the ``status`` of the agent's Environment and ChoreoApp objects (written by the
operator). Known fields are type-checked strictly (no coercion: ``"3"`` is not a replica count);
unknown fields are dropped rather than refused, so a newer operator's extra status fields do not
make the whole status unusable, but nothing unvalidated is stored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from choreo_dp.api.choreoapp import AppPhase, Visibility
from choreo_dp.api.environment import EnvironmentPhase
from choreo_dp.api.rollout import RolloutPhase
from choreo_wire import protocol as p

# One object's status, as canonical JSON. The operator's statuses are a few KiB; conditions carry
# messages of up to a few hundred bytes each.
MAX_STATUS_BYTES = 64 * 1024
# Deepest legitimate path: status.conditions[i].message (3 containers). Checked before any
# recursive code (pydantic, json) sees the value.
MAX_STATUS_DEPTH = 6
# Status reports held in memory per data plane between two store flushes; beyond it the session
# waits for a flush (backpressure on that agent's socket), so memory stays bounded however fast
# an agent reports.
MAX_PENDING_STATUS_BYTES = 4 * 1024 * 1024

# Keys one resync inventory may name in total; also the largest orphan count believed. A data
# plane's objects all came from the control plane, so this is far above any real one.
MAX_INVENTORY_ITEMS = 100_000
# Keys per inventory frame (the agent sends INVENTORY_CHUNK_ITEMS).
MAX_INVENTORY_CHUNK_ITEMS = 2 * p.INVENTORY_CHUNK_ITEMS

INT64_MAX = 2**63 - 1
_HASH = re.compile(r"^[0-9a-f]{64}$")
_REASON = re.compile(r"^[A-Za-z][A-Za-z0-9_.:-]*$")


class InvalidReport(ValueError):
    """A report the control plane refuses to keep; the message says why (sent back to the agent)."""


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """True when ``value`` nests containers deeper than ``limit`` (iterative: safe on any depth)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth + 1 > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def canonical_size(value: Any) -> int:
    """Bytes of the canonical JSON the store writes (call only on depth-checked values).

    Raises UnicodeEncodeError for text that is not Unicode (a lone surrogate, which JSON's
    ``\\ud800`` escape can produce): SQLite and every JSON response would fail on it later.
    """
    return len(json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())


def parse_key(text: str) -> p.Key:
    """The protocol's key parser, and the key must be exactly its canonical spelling (the parser's
    ``$`` also accepts a trailing newline)."""
    key = p.parse_key(text)
    if str(key) != text:
        raise ValueError(f"not a valid key: {text[:80]!r}")
    return key


def _check_text(what: str, *texts: str) -> None:
    for text in texts:
        try:
            text.encode()
        except UnicodeEncodeError:
            raise InvalidReport(f"{what}: text that is not valid Unicode (an unpaired surrogate)") from None


# -- status schema ---------------------------------------------------------------------------
Text = Annotated[str, Field(max_length=1024)]
LongText = Annotated[str, Field(max_length=32768)]
Count = Annotated[int, Field(ge=0, le=1_000_000)]
Generation = Annotated[int, Field(ge=0, le=INT64_MAX)]


class _Reported(BaseModel):
    # strict: a wrong type is refused, never coerced; ignore: unknown fields are not stored.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", strict=True)

    def stored(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, exclude_unset=True, mode="json")


class ReportedCondition(_Reported):
    type: str = Field(min_length=1, max_length=316)
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    message: LongText | None = None
    last_transition_time: str | None = Field(default=None, max_length=64)
    observed_generation: Generation | None = None


class ReportedEndpoint(_Reported):
    name: str = Field(min_length=1, max_length=253)
    visibility: Visibility
    url: str = Field(max_length=2048)


class ReportedConnection(_Reported):
    """One entry of status.connections (choreo_dp.api.connections.ConnectionStatus): whether the
    app's connection resolves, so ``cp describe app`` can say so without a live read."""

    name: str = Field(min_length=1, max_length=48)
    target: str = Field(min_length=1, max_length=1024)
    resolved: bool
    reason: str = Field(min_length=1, max_length=64, pattern=_REASON.pattern)
    message: LongText | None = None
    url: str | None = Field(default=None, max_length=2048)


class ReportedRollout(_Reported):
    """status.rollout of a canary app (choreo_dp.api.rollout.RolloutStatus): where it stands, so
    ``cp promote-rollout`` knows the step it waits at."""

    phase: RolloutPhase
    step: Count | None = None
    weight: int | None = Field(default=None, ge=0, le=100)
    summary: str | None = Field(default=None, max_length=64)
    message: LongText | None = None
    stable_revision: str | None = Field(default=None, max_length=64)
    canary_revision: str | None = Field(default=None, max_length=64)


class ReportedAppStatus(_Reported):
    phase: AppPhase | None = None
    ready: str | None = Field(default=None, max_length=32)
    replicas: Count | None = None
    ready_replicas: Count | None = None
    image: str | None = Field(default=None, max_length=1024, pattern=r"^\S+$")
    revision: Generation | None = None
    endpoints: list[ReportedEndpoint] | None = Field(default=None, max_length=64)
    connections: list[ReportedConnection] | None = Field(default=None, max_length=64)
    rollout: ReportedRollout | None = None
    message: LongText | None = None
    observed_generation: Generation | None = None
    conditions: list[ReportedCondition] | None = Field(default=None, max_length=32)


class ReportedEnvironmentStatus(_Reported):
    phase: EnvironmentPhase | None = None
    namespace: str | None = Field(default=None, max_length=63)
    apps: Count | None = None
    message: LongText | None = None
    observed_generation: Generation | None = None
    conditions: list[ReportedCondition] | None = Field(default=None, max_length=32)


def _summary(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(x) for x in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg', '')}")
    more = f" (and {exc.error_count() - 3} more)" if exc.error_count() > 3 else ""
    return "; ".join(parts)[:800] + more


def validated_status(key: str, status: Any) -> dict[str, Any]:
    """The normalised status to store for ``key``; raises :class:`InvalidReport`."""
    try:
        parsed = parse_key(key)
    except ValueError as exc:
        raise InvalidReport(str(exc)) from None
    if not isinstance(status, dict):
        raise InvalidReport(f"status of {key} is a {type(status).__name__}, not an object")
    if json_depth_exceeds(status, MAX_STATUS_DEPTH):
        raise InvalidReport(f"status of {key} nests deeper than {MAX_STATUS_DEPTH} levels")
    try:
        size = canonical_size(status)
    except UnicodeEncodeError:
        raise InvalidReport(
            f"status of {key} holds text that is not valid Unicode (an unpaired surrogate)"
        ) from None
    if size > MAX_STATUS_BYTES:
        raise InvalidReport(f"status of {key} is {size} bytes, over the limit of {MAX_STATUS_BYTES}")
    model: type[_Reported] = ReportedAppStatus if parsed.kind == "ChoreoApp" else ReportedEnvironmentStatus
    try:
        return model.model_validate(status).stored()
    except ValidationError as exc:
        raise InvalidReport(f"status of {key}: {_summary(exc)}") from None


def stored_status(key: str, status: Any) -> dict[str, Any] | None:
    """A status read back from the store, validated again (rows written before validation existed,
    or by another version, must not break a response); None when it does not pass."""
    try:
        return validated_status(key, status)
    except InvalidReport:
        return None


# -- inventory and orphans -------------------------------------------------------------------
def check_inventory_items(items: Mapping[str, str]) -> None:
    """One inventory frame's ``key -> spec hash``; raises :class:`InvalidReport`."""
    if len(items) > MAX_INVENTORY_CHUNK_ITEMS:
        raise InvalidReport(
            f"inventory chunk of {len(items)} items; at most {MAX_INVENTORY_CHUNK_ITEMS} per frame"
        )
    for key, digest in items.items():
        try:
            parse_key(key)
        except ValueError as exc:
            raise InvalidReport(f"inventory: {exc}") from None
        if not isinstance(digest, str) or not _HASH.match(digest):
            raise InvalidReport(f"inventory: the hash of {key} is not 64 lowercase hex digits")


def validated_orphans(count: int, keys: list[str], reason: str | None) -> dict[str, Any]:
    """The agent facts to store for an ``orphans`` report; raises :class:`InvalidReport`."""
    if count > MAX_INVENTORY_ITEMS:
        raise InvalidReport(
            f"orphan count {count} exceeds {MAX_INVENTORY_ITEMS}, the most objects a data plane can hold"
        )
    for key in keys:
        try:
            parse_key(key)
        except ValueError as exc:
            raise InvalidReport(f"orphans: {exc}") from None
    if len(set(keys)) != len(keys):
        raise InvalidReport("orphans: keys repeat")
    if len(keys) > count:
        raise InvalidReport(f"orphans: {len(keys)} keys listed but the count is {count}")
    if reason is not None and not _REASON.match(reason):
        raise InvalidReport("orphans: reason must be a word (letters, digits, _ . : -)")
    return {"orphans": count, "orphanedKeys": keys, "orphanReason": reason}


def check_nack(key: str, code: str, message: str) -> None:
    """A nack the store may record (only for an object desired on that data plane, checked there)."""
    try:
        parse_key(key)
    except ValueError as exc:
        raise InvalidReport(f"nack for {exc}") from None
    _check_text("nack", code, message)


def observed_time(text: str) -> str | None:
    """The agent's ``observedAt`` normalised to our RFC 3339 form, or None when it is not a time."""
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
