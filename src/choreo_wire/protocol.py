"""The tunnel protocol shared by the agent and the control plane (see docs/protocol.md).

Every WebSocket text frame is one JSON envelope ``{v, type, id, seq, corr, body}``. Bodies are
pydantic models registered by their ``type``. Decoding never raises anything but
:class:`ProtocolError`, which carries the error code and the id of the offending frame so the
receiver can answer with an ``error`` frame and carry on: nothing a peer sends is fatal.

This module also holds the pure helpers both sides must compute identically: keys, spec hashes,
the bucketed inventory digests used by resync and the mode decision. The resync safety planner
is the agent's alone (:mod:`choreo_dp.agent.resync`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS: tuple[int, ...] = (1,)
SUBPROTOCOL = "choreo-dp.v1"
TUNNEL_PATH = "/api/v1/tunnel"

# Frames larger than this are refused by the protocol layer with an ``error`` frame (code
# ``too_large``); the connection survives. The WebSocket layer is configured with
# TRANSPORT_MAX_BYTES so a frame up to that size is still read (and refused politely); anything
# bigger is closed by the library with 1009 before it is buffered. Memory per connection is
# therefore bounded by TRANSPORT_MAX_BYTES either way.
MAX_FRAME_BYTES = 1 << 20
TRANSPORT_MAX_BYTES = 2 << 20

# Chunk sizes that keep inventory / snapshot / status frames well below MAX_FRAME_BYTES.
INVENTORY_CHUNK_ITEMS = 4000  # ~110 bytes per item -> ~440 KiB
SNAPSHOT_KEYS_CHUNK = 8000  # ~50 bytes per key -> ~400 KiB
STATUS_BATCH_ITEMS = 200
ORPHAN_REPORT_KEYS = 100

DIGEST_BYTES = 8
MIN_BUCKETS = 16
MAX_BUCKETS = 16384

Kind = Literal["Environment", "ChoreoApp"]
Mode = Literal["incremental", "resync"]
ErrorCode = Literal[
    "bad_json",
    "bad_envelope",
    "unknown_type",
    "bad_body",
    "too_large",
    "unsupported_version",
    "protocol",
    "internal",
    "unauthorized",
]

# --------------------------------------------------------------------------------------------
# keys and hashes

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_ENV_KEY = re.compile(rf"^Environment/(?P<env>{_LABEL})$")
_APP_KEY = re.compile(rf"^ChoreoApp/(?P<env>{_LABEL})/(?P<app>{_LABEL})$")


@dataclass(frozen=True)
class Key:
    """``Environment/<env>`` or ``ChoreoApp/<env>/<app>``."""

    kind: Kind
    environment: str
    name: str

    def __str__(self) -> str:
        if self.kind == "Environment":
            return f"Environment/{self.environment}"
        return f"ChoreoApp/{self.environment}/{self.name}"


def environment_key(env: str) -> str:
    return f"Environment/{env}"


def app_key(env: str, app: str) -> str:
    return f"ChoreoApp/{env}/{app}"


def parse_key(text: str) -> Key:
    """Parse a key; raises ValueError on anything else (names are DNS-1123 labels, <= 63 chars)."""
    if len(text) > 200:
        raise ValueError("key too long")
    m = _ENV_KEY.match(text)
    if m and len(m["env"]) <= 63:
        return Key("Environment", m["env"], m["env"])
    m = _APP_KEY.match(text)
    if m and len(m["env"]) <= 63 and len(m["app"]) <= 63:
        return Key("ChoreoApp", m["env"], m["app"])
    raise ValueError(f"not a valid key: {text[:80]!r}")


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8: the bytes the spec hash is taken over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def spec_hash(spec: Mapping[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of a spec."""
    return hashlib.sha256(canonical_json(spec)).hexdigest()


# --------------------------------------------------------------------------------------------
# message bodies


class Body(BaseModel):
    """Base for message bodies: camelCase on the wire, unknown fields ignored (forward compat)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")
    TYPE: ClassVar[str]

    def wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="json", exclude_none=True)


_KEY_FIELD = Field(min_length=1, max_length=200)
_HASH_FIELD = Field(pattern=r"^[0-9a-f]{64}$")
_ID_FIELD = Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


class Hello(Body):
    """agent -> cp, first frame. ``epoch`` None / revision 0 for a fresh data plane."""

    TYPE: ClassVar[str] = "hello"
    dataplane_id: str = _ID_FIELD
    versions: list[int] = Field(min_length=1, max_length=16)
    epoch: str | None = Field(default=None, max_length=128)
    applied_revision: int = Field(default=0, ge=0)
    agent_version: str = Field(default="", max_length=64)
    inventory_count: int = Field(default=0, ge=0, description="managed objects; sizes resync buckets")


class Welcome(Body):
    """cp -> agent, answer to hello."""

    TYPE: ClassVar[str] = "welcome"
    version: int
    epoch: str = Field(min_length=1, max_length=128)
    revision: int = Field(ge=0, description="the control plane's current revision")
    mode: Mode
    heartbeat_interval: float = Field(default=15.0, gt=0, le=300)
    session: str | None = Field(default=None, max_length=128)


class DesiredPut(Body):
    """cp -> agent: the desired spec of one object.

    ``prev`` is the revision of the previous change in the stream (the chain lets the agent detect
    gaps and reordering); it is None for puts inside a snapshot (between snapshot.begin/end).
    """

    TYPE: ClassVar[str] = "desired.put"
    key: str = _KEY_FIELD
    kind: Kind
    revision: int = Field(ge=1)
    prev: int | None = Field(default=None, ge=0)
    spec_hash: str = _HASH_FIELD
    spec: dict[str, Any]
    metadata: dict[str, str] = Field(default_factory=dict, max_length=64)


class DesiredDelete(Body):
    """cp -> agent: the object is no longer desired."""

    TYPE: ClassVar[str] = "desired.delete"
    key: str = _KEY_FIELD
    revision: int = Field(ge=1)
    prev: int | None = Field(default=None, ge=0)


class Applied(Body):
    """agent -> cp: every change with revision <= ``revision`` is persisted in the cluster."""

    TYPE: ClassVar[str] = "applied"
    revision: int = Field(ge=0)
    epoch: str | None = Field(default=None, max_length=128)


class Nack(Body):
    """agent -> cp: one change could not be applied.

    retryable=False: refused for good (e.g. the cluster rejects the spec); it counts as processed.
    retryable=True: the agent keeps retrying (e.g. the namespace does not exist yet) and does not
    acknowledge past it; the control plane shows it and may re-push.
    """

    TYPE: ClassVar[str] = "nack"
    revision: int = Field(ge=0)
    key: str = Field(max_length=200)
    code: str = Field(max_length=64)
    message: str = Field(default="", max_length=4096)
    retryable: bool = False


class Inventory(Body):
    """agent -> cp during resync: key -> spec hash of the agent's objects in the differing buckets.

    ``buckets`` (the differing bucket indices) is sent in the first chunk (chunk 0); ``last`` ends
    the inventory.
    """

    TYPE: ClassVar[str] = "inventory"
    chunk: int = Field(default=0, ge=0)
    last: bool = True
    buckets: list[int] | None = Field(default=None, max_length=MAX_BUCKETS)
    items: dict[str, str] = Field(default_factory=dict)


class SnapshotBegin(Body):
    """cp -> agent: a resync snapshot consistent at ``revision`` starts.

    ``total`` is the number of keys the control plane has; ``digests`` is the base64 of
    ``buckets`` x DIGEST_BYTES bucket digests (see :func:`bucket_digests`).
    """

    TYPE: ClassVar[str] = "snapshot.begin"
    epoch: str = Field(min_length=1, max_length=128)
    revision: int = Field(ge=0)
    total: int = Field(ge=0)
    buckets: int = Field(ge=1, le=MAX_BUCKETS)
    digests: str


class SnapshotKeys(Body):
    """cp -> agent during a snapshot: keys in the compared buckets whose hash already matches."""

    TYPE: ClassVar[str] = "snapshot.keys"
    keys: list[str] = Field(default_factory=list, max_length=SNAPSHOT_KEYS_CHUNK)


class SnapshotEnd(Body):
    """cp -> agent: the snapshot is complete; the cp's key set in the compared buckets is the set of
    snapshot puts plus snapshot.keys."""

    TYPE: ClassVar[str] = "snapshot.end"
    epoch: str = Field(min_length=1, max_length=128)
    revision: int = Field(ge=0)


class StatusItem(Body):
    """The status of one object as observed in the cluster at ``observed_at``; ``missing`` says the
    object the control plane desires is not in the cluster (deleted by another writer, not yet
    restored), with ``status`` empty."""

    key: str = _KEY_FIELD
    status: dict[str, Any]
    observed_at: str = Field(max_length=64)
    missing: bool = False


class StatusBatch(Body):
    """agent -> cp: the newest status of some objects (coalesced)."""

    TYPE: ClassVar[str] = "status.batch"
    items: list[StatusItem] = Field(max_length=STATUS_BATCH_ITEMS * 5)


class Orphans(Body):
    """agent -> cp: deletions held back by the safety rules (count and the first keys)."""

    TYPE: ClassVar[str] = "orphans"
    count: int = Field(ge=0)
    keys: list[str] = Field(default_factory=list, max_length=ORPHAN_REPORT_KEYS)
    reason: str | None = Field(default=None, max_length=64)


class InventorySummary(BaseModel):
    """What the agent has in the cluster, in one line: the anti-entropy check.

    ``digest`` is :func:`inventory_digest` over key -> spec hash of the agent's non-orphaned objects,
    hashed from the specs *in the cluster* (not from annotations), at persisted ``revision``. The
    control plane compares it with the digest of its desired state at that revision: equal means
    in sync; different (twice in a row) makes it ask for a resync.
    """

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")
    count: int = Field(ge=0)
    digest: str = _HASH_FIELD
    revision: int = Field(ge=0)


class Heartbeat(Body):
    """either way; the peer answers a heartbeat with ``corr`` unset by one with ``corr`` = its id.

    The agent's own heartbeats (``corr`` unset) carry its :class:`InventorySummary`."""

    TYPE: ClassVar[str] = "heartbeat"
    time: str | None = Field(default=None, max_length=64)
    applied_revision: int | None = Field(default=None, ge=0)
    inventory: InventorySummary | None = None


class Error(Body):
    TYPE: ClassVar[str] = "error"
    code: str = Field(max_length=64)
    message: str = Field(default="", max_length=4096)
    ref: str | None = Field(default=None, max_length=128)


# goaway reason the control plane sends when the agent's inventory digest keeps differing from the
# desired state: the next session (after retry_after) is a resync, whatever epoch and revision say.
GOAWAY_RESYNC = "resync"


class GoAway(Body):
    """either way: I am closing; reconnect after ``retry_after`` seconds."""

    TYPE: ClassVar[str] = "goaway"
    reason: str = Field(max_length=256)
    retry_after: float = Field(default=1.0, ge=0, le=3600)


# --------------------------------------------------------------------------------------------
# on-demand streams (logs, events, live state): cp -> agent stream.open / stream.credit /
# stream.end (cancel); agent -> cp stream.data / stream.end. They never carry desired state and are
# never stored by the control plane. Flow control is by credit: the agent sends at most ``credit``
# bytes of stream.data payload (lines + objects, as encoded) before the control plane grants more,
# and the agent's sender serves stream frames only when no desired-state frame (applied, nack,
# status, heartbeat, inventory) is waiting, so streams can never starve convergence.

StreamKind = Literal["logs", "events", "live"]
StreamEndCode = Literal[
    "done",  # everything asked for was sent (non-follow), or the followed object went away
    "cancelled",  # the other side asked to stop (client gone)
    "disabled",  # observability is switched off in this data plane
    "forbidden",  # the agent may not read it (not an app of its Environments, RBAC)
    "not_found",  # no such app / pod / container
    "limit",  # a bound was hit (concurrent streams, bytes, idle time); ``retry_after`` may say when
    "error",  # anything else; ``message`` says what
    "disconnected",  # the session ended (the control plane tells its client so)
]
# Bounds both ends enforce (the control plane may choose lower ones).
STREAM_MAX_CONCURRENT = 16  # open streams per session
STREAM_CHUNK_BYTES = 64 * 1024  # payload of one stream.data frame
STREAM_INITIAL_CREDIT = 256 * 1024
STREAM_MAX_LINE_BYTES = 16 * 1024  # longer log lines are cut (and marked) by the agent


class StreamParams(BaseModel):
    """What a stream asks for; fields that do not apply to its kind are ignored."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")
    follow: bool = False  # logs: keep streaming new lines; events: watch
    since_seconds: int | None = Field(default=None, ge=1, le=30 * 24 * 3600)
    tail_lines: int | None = Field(default=None, ge=0, le=100_000)
    container: str | None = Field(default=None, max_length=253)
    pod: str | None = Field(default=None, max_length=253)
    previous: bool = False
    limit_bytes: int | None = Field(default=None, ge=1, le=1 << 30)


class StreamOpen(Body):
    """cp -> agent: open stream ``id`` of ``kind`` about the app ``key``."""

    TYPE: ClassVar[str] = "stream.open"
    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    kind: StreamKind
    key: str = _KEY_FIELD
    params: StreamParams = Field(default_factory=StreamParams)
    credit: int = Field(default=STREAM_INITIAL_CREDIT, ge=0, le=16 << 20)


class StreamCredit(Body):
    """cp -> agent: the agent may send ``bytes`` more payload on stream ``id``."""

    TYPE: ClassVar[str] = "stream.credit"
    id: str = Field(min_length=1, max_length=64)
    bytes: int = Field(ge=1, le=16 << 20)


class StreamData(Body):
    """agent -> cp: the next chunk of stream ``id``. Logs come as ``lines`` (``pod/container: text``,
    in time order per pod); events and live state as ``objects`` (compact JSON objects)."""

    TYPE: ClassVar[str] = "stream.data"
    id: str = Field(min_length=1, max_length=64)
    seq: int = Field(ge=0)
    lines: list[str] = Field(default_factory=list, max_length=10_000)
    objects: list[dict[str, Any]] = Field(default_factory=list, max_length=10_000)


class StreamEnd(Body):
    """either way: stream ``id`` is over (cp -> agent: cancel it)."""

    TYPE: ClassVar[str] = "stream.end"
    id: str = Field(min_length=1, max_length=64)
    code: StreamEndCode = "done"
    message: str = Field(default="", max_length=4096)
    retry_after: float | None = Field(default=None, ge=0, le=3600)


BODY_TYPES: dict[str, type[Body]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        Welcome,
        DesiredPut,
        DesiredDelete,
        Applied,
        Nack,
        Inventory,
        SnapshotBegin,
        SnapshotKeys,
        SnapshotEnd,
        StatusBatch,
        Orphans,
        Heartbeat,
        Error,
        GoAway,
        StreamOpen,
        StreamCredit,
        StreamData,
        StreamEnd,
    )
}

# --------------------------------------------------------------------------------------------
# envelope, encode / decode


class Envelope(BaseModel):
    model_config = ConfigDict(extra="ignore")

    v: int = Field(ge=1, le=1000)
    type: str = Field(min_length=1, max_length=64)
    id: str = Field(min_length=1, max_length=128)
    seq: int = Field(ge=0)
    corr: str | None = Field(default=None, max_length=128)
    body: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True)
class Frame:
    envelope: Envelope
    body: Body

    @property
    def type(self) -> str:
        return self.envelope.type

    @property
    def id(self) -> str:
        return self.envelope.id


class ProtocolError(Exception):
    """A frame we cannot accept. ``ref`` is the offending frame's id when it could be read."""

    def __init__(self, code: ErrorCode, message: str, ref: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code: ErrorCode = code
        self.message = message
        self.ref = ref

    def to_error(self) -> Error:
        return Error(code=self.code, message=self.message[:4096], ref=self.ref)


class FrameTooLarge(ValueError):
    """Raised by :func:`encode` when a frame would exceed MAX_FRAME_BYTES (a sender bug to chunk)."""


def new_id() -> str:
    return uuid.uuid4().hex


def encode(
    body: Body,
    *,
    seq: int,
    corr: str | None = None,
    id: str | None = None,
    version: int = PROTOCOL_VERSION,
) -> str:
    env = {"v": version, "type": body.TYPE, "id": id or new_id(), "seq": seq, "body": body.wire()}
    if corr is not None:
        env["corr"] = corr
    text = json.dumps(env, separators=(",", ":"), ensure_ascii=False)
    # len(text) <= utf-8 length <= 4*len(text): only encode when it could be close to the limit.
    if len(text) * 4 > MAX_FRAME_BYTES and len(text.encode()) > MAX_FRAME_BYTES:
        raise FrameTooLarge(f"{body.TYPE} frame of {len(text.encode())} bytes exceeds {MAX_FRAME_BYTES}")
    return text


def _summarize(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg', '')}")
    return "; ".join(parts)[:1000]


def decode(data: str | bytes, *, versions: Iterable[int] = SUPPORTED_VERSIONS) -> Frame:
    """Parse and validate one frame; raises only :class:`ProtocolError`."""
    size = len(data.encode() if isinstance(data, str) and len(data) * 4 > MAX_FRAME_BYTES else data)
    if size > MAX_FRAME_BYTES:
        raise ProtocolError("too_large", f"frame of {size} bytes exceeds {MAX_FRAME_BYTES}")
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("bad_json", f"not JSON: {str(exc)[:200]}") from None
    ref: str | None = None
    if isinstance(raw, dict):
        maybe = raw.get("id")
        if isinstance(maybe, str) and 0 < len(maybe) <= 128:
            ref = maybe
    try:
        envelope = Envelope.model_validate(raw)
    except ValidationError as exc:
        raise ProtocolError("bad_envelope", _summarize(exc), ref) from None
    except RecursionError:
        raise ProtocolError("bad_envelope", "nesting too deep", ref) from None
    cls = BODY_TYPES.get(envelope.type)
    if cls is None:
        raise ProtocolError("unknown_type", f"unknown message type {envelope.type[:64]!r}", ref)
    # hello may arrive in any version: it is where versions are negotiated.
    if envelope.type != "hello" and envelope.v not in set(versions):
        raise ProtocolError("unsupported_version", f"protocol version {envelope.v} not supported", ref)
    try:
        body = cls.model_validate(envelope.body)
    except ValidationError as exc:
        raise ProtocolError("bad_body", f"{envelope.type}: {_summarize(exc)}", ref) from None
    except RecursionError:
        raise ProtocolError("bad_body", "nesting too deep", ref) from None
    return Frame(envelope, body)


def negotiate(ours: Iterable[int], theirs: Iterable[int]) -> int | None:
    """The highest version both sides support, or None."""
    common = set(ours) & set(theirs)
    return max(common) if common else None


class Sequencer:
    """Per-connection, per-direction sequence numbers (informational: ordering within a connection
    is TCP's; revisions carry the semantics)."""

    def __init__(self) -> None:
        self._seq = 0

    def next(self) -> int:
        self._seq += 1
        return self._seq

    def encode(self, body: Body, *, corr: str | None = None) -> str:
        return encode(body, seq=self.next(), corr=corr)


def chunked(items: list[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive slices of at most ``size``; one empty slice for an empty list."""
    if not items:
        yield []
        return
    for i in range(0, len(items), size):
        yield items[i : i + size]


def inventory_frames(buckets: list[int], items: Mapping[str, str]) -> list[Inventory]:
    """The agent's inventory for the differing buckets, chunked; always at least one frame."""
    pairs = sorted(items.items())
    out: list[Inventory] = []
    chunks = list(chunked(pairs, INVENTORY_CHUNK_ITEMS))
    for i, part in enumerate(chunks):
        out.append(
            Inventory(
                chunk=i, last=i == len(chunks) - 1, buckets=buckets if i == 0 else None, items=dict(part)
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# bucketed inventory digests (resync: only differing buckets exchange key -> hash lists)


def bucket_count(*sizes: int) -> int:
    """Power of two ~ max(size)/4 (a handful of keys per bucket), clamped to [16, 16384]."""
    target = max([1, *sizes]) // 4
    n = MIN_BUCKETS
    while n < target and n < MAX_BUCKETS:
        n *= 2
    return n


def bucket_of(key: str, buckets: int) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % buckets


def bucket_digests(items: Mapping[str, str], buckets: int) -> bytes:
    """DIGEST_BYTES per bucket: sha256 over the bucket's sorted ``key NUL hash LF`` lines."""
    per: list[list[tuple[str, str]]] = [[] for _ in range(buckets)]
    for key, h in items.items():
        per[bucket_of(key, buckets)].append((key, h))
    out = bytearray()
    for entries in per:
        d = hashlib.sha256()
        for key, h in sorted(entries):
            d.update(f"{key}\0{h}\n".encode())
        out += d.digest()[:DIGEST_BYTES]
    return bytes(out)


def encode_digests(digests: bytes) -> str:
    return base64.b64encode(digests).decode()


def decode_digests(text: str, buckets: int) -> bytes:
    """Raises ValueError unless ``text`` is base64 of exactly buckets x DIGEST_BYTES bytes."""
    raw = base64.b64decode(text.encode(), validate=True)
    if len(raw) != buckets * DIGEST_BYTES:
        raise ValueError(f"expected {buckets * DIGEST_BYTES} digest bytes, got {len(raw)}")
    return raw


def inventory_digest(items: Mapping[str, str]) -> str:
    """sha256 (hex) over the sorted ``key NUL hash LF`` lines of a whole inventory or desired state."""
    d = hashlib.sha256()
    for key, h in sorted(items.items()):
        d.update(f"{key}\0{h}\n".encode())
    return d.hexdigest()


def differing_buckets(a: bytes, b: bytes) -> list[int]:
    if len(a) != len(b):
        raise ValueError("digest lists of different sizes")
    n = len(a) // DIGEST_BYTES
    return [
        i
        for i in range(n)
        if a[i * DIGEST_BYTES : (i + 1) * DIGEST_BYTES] != b[i * DIGEST_BYTES : (i + 1) * DIGEST_BYTES]
    ]


def in_buckets(items: Mapping[str, str], wanted: Iterable[int], buckets: int) -> dict[str, str]:
    keep = set(wanted)
    return {k: h for k, h in items.items() if bucket_of(k, buckets) in keep}


def snapshot_diff(
    desired: Mapping[str, str], agent_items: Mapping[str, str], compared: Iterable[int], buckets: int
) -> tuple[list[str], list[str]]:
    """Control-plane side of a resync: within the compared buckets, which desired keys must travel as
    ``desired.put`` (missing or different at the agent) and which only as ``snapshot.keys``
    (already identical), Environments before ChoreoApps. Keys outside the compared buckets are
    identical by digest."""
    keep = set(compared)
    puts: list[str] = []
    same: list[str] = []
    # Environments first: their apps can only be written once the environment exists.
    for key in sorted(desired, key=lambda k: (not k.startswith("Environment/"), k)):
        if bucket_of(key, buckets) not in keep:
            continue
        (same if agent_items.get(key) == desired[key] else puts).append(key)
    return puts, same


# --------------------------------------------------------------------------------------------
# mode decision


def choose_mode(
    *,
    cp_epoch: str,
    cp_revision: int,
    log_floor: int,
    agent_epoch: str | None,
    agent_revision: int,
) -> Mode:
    """Incremental only when the agent is in our epoch, not ahead of us, and the log still holds
    every change after its revision (``log_floor``: the highest revision no longer in the log)."""
    if agent_epoch == cp_epoch and log_floor <= agent_revision <= cp_revision:
        return "incremental"
    return "resync"
