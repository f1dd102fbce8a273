"""The tunnel endpoint: one session per connected agent (docs/protocol.md).

A session is two tasks on the event loop, no threads: a reader that decodes and dispatches agent
frames, and a writer that owns the socket's send side. The writer streams desired changes from the
store (never from memory: the store is the truth, and a change is committed before anyone is
woken), runs the resync snapshot when the agent's inventory is complete, and sends replies the
reader queued. REST changes reach it through :meth:`TunnelSession.wake` via the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

from fastapi import FastAPI, WebSocket
from starlette.responses import JSONResponse

from choreo_cp import insync, reports, retry
from choreo_cp.context import ControlPlane
from choreo_cp.store import (
    KIND_ENVIRONMENT,
    Change,
    Kind,
    LogGap,
    Snapshot,
    StoreError,
    now_rfc3339,
)
from choreo_wire import protocol as p

log = logging.getLogger(__name__)

T = TypeVar("T")

SEND_TIMEOUT = 30.0
GOAWAY_RETRY_REPLACED = 5.0
GOAWAY_RETRY_SHUTDOWN = 1.0
# An agent whose session could not read the store (locked, disk I/O) reconnects after this.
GOAWAY_RETRY_STORE = 5.0
# Reports the session can lose (an inventory summary's judgement) are retried this long at most, so a
# locked database slows the reader down only briefly.
SUMMARY_STORE_SECONDS = 1.0

Phase = Literal["await_inventory", "snapshot_ready", "streaming", "refused"]

# What the REST API admits: the largest desired.put frame, measured with worst-case envelope
# numbers, plus room for envelope fields a later protocol version may add. Anything the API
# accepts therefore fits in a frame, and no object can block its data plane's stream.
FRAME_MARGIN_BYTES = 8 * 1024
MAX_OBJECT_FRAME_BYTES = p.MAX_FRAME_BYTES - FRAME_MARGIN_BYTES
_WORST_REVISION = 2**63 - 1  # SQLite's largest integer: no revision or sequence number is longer
_WORST_ID = "f" * len(p.new_id())


class _Closing(Exception):
    pass


def change_frame(change: Change, prev: int | None) -> p.Body:
    """The frame that carries one desired-state change (streamed or inside a snapshot)."""
    if change.op == "delete" or change.spec is None or change.spec_hash is None:
        return p.DesiredDelete(key=change.key, revision=change.revision, prev=prev)
    return p.DesiredPut(
        key=change.key,
        kind="Environment" if change.kind == KIND_ENVIRONMENT else "ChoreoApp",
        revision=change.revision,
        prev=prev,
        spec_hash=change.spec_hash,
        spec=change.spec,
        metadata={"environment": change.environment, "name": change.name},
    )


def put_frame_bytes(kind: Kind, environment: str, name: str, spec: dict[str, Any], spec_hash: str) -> int:
    """UTF-8 size of the largest desired.put frame that can ever carry this object.

    Built with :func:`change_frame` and :func:`protocol.encode` exactly as the session sends it,
    with the longest revision, prev, seq and id the envelope can hold.
    """
    key = p.environment_key(name) if kind == KIND_ENVIRONMENT else p.app_key(environment, name)
    change = Change(_WORST_REVISION, "put", key, kind, environment, name, spec, spec_hash)
    body = change_frame(change, prev=_WORST_REVISION)
    try:
        return len(p.encode(body, seq=_WORST_REVISION, id=_WORST_ID).encode())
    except p.FrameTooLarge:
        # encode refuses to build it; the same envelope around an empty spec, plus the spec
        # serialised as encode serialises it, is the same byte count.
        empty = change_frame(
            Change(_WORST_REVISION, "put", key, kind, environment, name, {}, spec_hash), prev=_WORST_REVISION
        )
        envelope = len(p.encode(empty, seq=_WORST_REVISION, id=_WORST_ID).encode()) - len("{}")
        return envelope + len(json.dumps(spec, separators=(",", ":"), ensure_ascii=False).encode())


def _bearer(websocket: WebSocket) -> str | None:
    header = websocket.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def _deny(websocket: WebSocket, status: int, detail: str) -> None:
    """Refuse the upgrade with a real HTTP status when the server supports it (agents back off on 401)."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        if status == 503:
            headers = {"Retry-After": str(retry.STORE_RETRY_AFTER_SECONDS)}
        await websocket.send_denial_response(
            JSONResponse({"detail": detail}, status_code=status, headers=headers)
        )
    else:
        await websocket.close(code=1008, reason=detail[:120])


class TunnelSession:
    def __init__(self, cp: ControlPlane, websocket: WebSocket, dataplane: str) -> None:
        self.cp = cp
        self.ws = websocket
        self._dataplane = dataplane
        self._session_id = p.new_id()[:16]
        self._started_at = now_rfc3339()
        client = websocket.client
        self._remote = f"{client.host}:{client.port}" if client else "?"
        self._seq = p.Sequencer()
        self._wake = asyncio.Event()
        # The store may hold changes beyond ``sent_revision``: set by :meth:`wake` (a commit here,
        # a notification or the sweep from another replica), cleared by a read that found none.
        # Replies and ticks wake the writer too, but only this sends it to the store: an idle
        # agent's heartbeats cost no read of the change log.
        self._moved = True
        # The last read found nothing beyond ``sent_revision``: while no commit is announced, that is
        # the store's head too (every revision writes a log entry in its own transaction).
        self._caught_up = False
        self._outbox: deque[tuple[p.Body, str | None]] = deque()
        self._goaway: p.GoAway | None = None
        self._close_code = 1000
        self.version = p.PROTOCOL_VERSION
        self.epoch = ""
        self.mode: p.Mode = "incremental"
        self.phase: Phase = "streaming"
        self.sent_revision = 0
        self.agent_revision = 0
        self._snapshot: Snapshot | None = None
        self._buckets = 0
        # Only the agent's hashes of keys we desire are kept: nothing else can change the snapshot
        # diff, so what one agent makes us hold is bounded by our own object count.
        self._inventory: dict[str, str] = {}
        self._inventory_seen = 0
        self._compared: list[int] | None = None
        self._next_chunk = 0
        self.last_seen = time.monotonic()
        # the hello was answered with a resync because the store said one is required
        self._forced_resync = False
        self._anti_entropy = insync.AntiEntropy()
        self._resync_requests = 0
        self._resync_requested_at: str | None = None
        self._deferred_logged = False
        # fencing token of this session in the store (several replicas on PostgreSQL only)
        self._fence: int | None = None

    # -- hub.Session -------------------------------------------------------------------------
    @property
    def dataplane(self) -> str:
        return self._dataplane

    @property
    def session_id(self) -> str:
        return self._session_id

    @property
    def started_at(self) -> str:
        return self._started_at

    @property
    def remote(self) -> str:
        return self._remote

    @property
    def fence(self) -> int | None:
        return self._fence

    def wake(self) -> None:
        self._moved = True
        self._wake.set()

    @property
    def inventory_held(self) -> int:
        """Inventory entries held for the running resync (bounded by the desired object count)."""
        return len(self._inventory)

    def go_away(self, reason: str, retry_after: float) -> None:
        if self._goaway is None:
            self._goaway = p.GoAway(reason=reason, retry_after=retry_after)
            self._wake.set()

    async def _with_store(
        self, what: str, fn: Callable[[], Awaitable[T]], deadline: float | None = None
    ) -> T:
        """A store call retried with backoff while the database is locked or failing (OperationalError);
        past the deadline the last error is raised for the caller to defer or end the session."""
        try:
            return await retry.retrying(
                fn,
                what=f"{what} (dataplane {self.dataplane})",
                deadline=self.cp.tunnel.store_retry_seconds if deadline is None else deadline,
                logger=log,
            )
        except sqlite3.OperationalError:
            self.cp.metrics.store_unavailable.labels("tunnel").inc()
            raise

    # -- sending -----------------------------------------------------------------------------
    def send_soon(self, body: p.Body, corr: str | None = None) -> None:
        """Queue a reply for the writer; an agent that stops reading gets dropped, not buffered."""
        if len(self._outbox) >= self.cp.tunnel.outbox_limit:
            self.go_away("too many unread frames", GOAWAY_RETRY_REPLACED)
            return
        self._outbox.append((body, corr))
        self._wake.set()

    def _welcome_frame(self, version: int, epoch: str, revision: int) -> p.Welcome:
        return p.Welcome(
            version=version,
            epoch=epoch,
            revision=revision,
            mode=self.mode,
            heartbeat_interval=self.cp.tunnel.heartbeat_interval,
            session=self.session_id,
        )

    async def _send(self, body: p.Body, corr: str | None = None) -> None:
        text = p.encode(body, seq=self._seq.next(), corr=corr, version=self.version)
        try:
            await asyncio.wait_for(self.ws.send_text(text), SEND_TIMEOUT)
        except TimeoutError:
            raise _Closing("send timed out (agent not reading)") from None
        except Exception as exc:  # the socket is gone (ClientDisconnected, RuntimeError after close)
            raise _Closing(f"send failed: {exc.__class__.__name__}") from None
        self.cp.metrics.frames_out.labels(body.TYPE).inc()
        self.cp.metrics.bytes_out.inc(len(text))

    async def _drain_outbox(self) -> None:
        while self._outbox:
            body, corr = self._outbox.popleft()
            await self._send(body, corr)

    # -- handshake ---------------------------------------------------------------------------
    async def _receive_text(self) -> str | bytes | None:
        message = await self.ws.receive()
        if message["type"] == "websocket.disconnect":
            return None
        data: str | bytes | None = message.get("text")
        if data is None:
            data = message.get("bytes") or b""
        self.last_seen = time.monotonic()
        self.cp.metrics.bytes_in.inc(len(data))
        return data

    async def _await_hello(self) -> p.Hello | None:
        """Read frames until a valid hello; anything else is answered with an error, not fatal."""
        while True:
            data = await self._receive_text()
            if data is None:
                return None
            try:
                frame = p.decode(data)
            except p.ProtocolError as exc:
                self.cp.metrics.frames_in.labels("invalid").inc()
                await self._send(exc.to_error())
                continue
            self.cp.metrics.frames_in.labels(frame.type).inc()
            if isinstance(frame.body, p.Hello):
                return frame.body
            await self._send(
                p.Error(code="protocol", message=f"expected hello, got {frame.type}", ref=frame.id)
            )

    async def _welcome(self, hello: p.Hello) -> bool:
        version = p.negotiate(p.SUPPORTED_VERSIONS, hello.versions)
        if version is None:
            await self._send(
                p.Error(
                    code="unsupported_version",
                    message=f"no common protocol version (ours {list(p.SUPPORTED_VERSIONS)}, yours {hello.versions})",
                )
            )
            return False
        self.version = version
        if hello.dataplane_id != self.dataplane:
            await self._send(
                p.Error(
                    code="unauthorized",
                    message=f"the token belongs to dataplane {self.dataplane!r}, not {hello.dataplane_id!r}",
                )
            )
            return False
        record = await self._with_store(
            "reading the dataplane", lambda: self.cp.store.get_dataplane(self.dataplane)
        )
        if record is None:  # deleted between authentication and now
            await self._send(p.Error(code="unauthorized", message="dataplane is not registered"))
            return False
        self.agent_revision = hello.applied_revision
        self.mode = p.choose_mode(
            cp_epoch=record.epoch,
            cp_revision=record.revision,
            log_floor=record.horizon,
            agent_epoch=hello.epoch,
            agent_revision=hello.applied_revision,
        )
        self._resync_requests = record.resync_requests
        self._resync_requested_at = record.resync_requested_at
        if record.resync_required is not None:
            # Anti-entropy asked for it (persisted, so a restart of either end does not lose it).
            self.mode = "resync"
            self._forced_resync = True
        if self.cp.store.clustered:
            # Newest session wins on every replica: the token is bumped before we attach, so an
            # older session elsewhere is fenced off (and told goaway) from this commit on.
            self._fence = await self._with_store(
                "registering the session",
                lambda: self.cp.store.claim_session(
                    self.dataplane,
                    self.session_id,
                    replica=self.cp.hub.replica,
                    remote=self.remote,
                    started_at=self.started_at,
                ),
            )
        self.cp.hub.attach(self)
        self.cp.metrics.session_starts.labels(self.mode).inc()
        if self.mode == "incremental":
            self.epoch = record.epoch
            self.sent_revision = hello.applied_revision
            self.phase = "streaming"
            await self._send(self._welcome_frame(version, record.epoch, record.revision))
        else:
            snap = await self._with_store(
                "reading the snapshot", lambda: self.cp.store.snapshot(self.dataplane)
            )
            self.epoch = snap.epoch
            self._snapshot = snap
            self.sent_revision = snap.revision
            self._buckets = p.bucket_count(len(snap.hashes), hello.inventory_count)
            self.phase = "await_inventory"
            await self._send(self._welcome_frame(version, snap.epoch, snap.revision))
            digests = p.bucket_digests(snap.hashes, self._buckets)
            await self._send(
                p.SnapshotBegin(
                    epoch=snap.epoch,
                    revision=snap.revision,
                    total=len(snap.hashes),
                    buckets=self._buckets,
                    digests=p.encode_digests(digests),
                )
            )
        log.info(
            "dataplane %s: session %s from %s, agent epoch=%s revision=%d, cp epoch=%s revision=%d -> %s%s",
            self.dataplane,
            self.session_id,
            self.remote,
            hello.epoch,
            hello.applied_revision,
            record.epoch,
            record.revision,
            self.mode,
            f" (required: {record.resync_required})" if self._forced_resync else "",
        )
        return True

    # -- the session -------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            hello = await asyncio.wait_for(self._await_hello(), self.cp.tunnel.hello_timeout)
        except TimeoutError:
            await self._close(1008, "no hello")
            return
        except _Closing:
            return
        if hello is None:
            return
        try:
            if not await self._welcome(hello):
                await self._close(1008, "refused")
                return
        except _Closing:
            self.cp.hub.detach(self)
            return
        except sqlite3.OperationalError as exc:
            # The store cannot be read: tell the agent to come back instead of failing the endpoint.
            log.warning("dataplane %s: store unavailable at hello (%s); sending goaway", self.dataplane, exc)
            self.cp.hub.detach(self)
            with contextlib.suppress(_Closing):
                await self._send(
                    p.GoAway(reason="control plane store unavailable", retry_after=GOAWAY_RETRY_STORE)
                )
            await self._close(1013, "store unavailable")
            return
        # beside the session, not before it: the record is informational, and a locked store would
        # hold the agent's first frames (its heartbeats too) until the retry deadline
        marking = asyncio.create_task(self._mark_connection(True), name=f"tunnel-mark-{self.dataplane}")
        self.cp.store.queue_heartbeat(self.dataplane)
        self.cp.metrics.sessions.set(len(self.cp.hub))
        reader = asyncio.create_task(self._reader(), name=f"tunnel-reader-{self.dataplane}")
        writer = asyncio.create_task(self._writer(), name=f"tunnel-writer-{self.dataplane}")
        ended = "session ended"
        try:
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                failure = task.exception()
                if failure is not None and not isinstance(failure, _Closing):
                    log.error(
                        "dataplane %s: session %s failed", self.dataplane, self.session_id, exc_info=failure
                    )
                elif isinstance(failure, _Closing):
                    ended = str(failure)
                    log.info("dataplane %s: session %s closing: %s", self.dataplane, self.session_id, failure)
        finally:
            # Every HTTP client of this session's streams gets a clean end with the reason.
            self.cp.streams.session_ended(self, ended)
            for task in (reader, writer):
                task.cancel()
            for task in (reader, writer):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            still_active = self.cp.hub.detach(self)
            self.cp.metrics.sessions.set(len(self.cp.hub))
            with contextlib.suppress(Exception):
                await self._close(self._close_code, "bye")
            if not still_active:
                marking.cancel()  # a newer session records its own start
            # the start's record lands (or gives up) before the end's: never "connected" after it
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await marking
            if still_active:
                with contextlib.suppress(Exception):
                    await self._mark_connection(False)
            log.info("dataplane %s: session %s ended", self.dataplane, self.session_id)

    async def _mark_connection(self, connected: bool) -> None:
        """Connection times are informational: a store that stays locked costs the record, not the session."""
        store, fence = self.cp.store, self._fence
        try:
            if fence is None:
                await self._with_store(
                    "recording the connection", lambda: store.mark_connection(self.dataplane, connected)
                )
            else:
                # conditional on the token: a session replaced on another replica records nothing
                await self._with_store(
                    "recording the connection", lambda: store.mark_session(self.dataplane, fence, connected)
                )
        except sqlite3.OperationalError as exc:
            log.warning("dataplane %s: connection time not recorded: %s", self.dataplane, exc)

    async def _close(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(code=code, reason=reason), 5)

    async def _writer(self) -> None:
        settings = self.cp.tunnel
        tick = max(0.05, min(settings.heartbeat_interval, settings.idle_timeout) / 2)
        while True:
            await self._drain_outbox()
            if self._goaway is not None:
                await self._send(self._goaway)
                return
            if self.phase == "snapshot_ready":
                await self._finish_snapshot()
                continue
            if self.phase == "streaming" and await self._stream_some():
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), tick)
            except TimeoutError:
                silent = time.monotonic() - self.last_seen
                if silent > settings.idle_timeout:
                    raise _Closing(f"nothing heard from the agent for {silent:.0f}s") from None
            self._wake.clear()

    async def _stream_some(self) -> bool:
        """Send the next batch of changes after ``sent_revision``; False when there is nothing new."""
        if not self._moved:
            return False
        # Cleared before the read: a commit announced while it runs sets it again.
        self._moved = False
        try:
            changes = await self._with_store(
                "reading changes",
                lambda: self.cp.store.changes_since(
                    self.dataplane, self.sent_revision, limit=self.cp.tunnel.send_batch
                ),
            )
        except sqlite3.OperationalError:
            self.go_away("control plane store unavailable", GOAWAY_RETRY_STORE)
            return False
        except LogGap as exc:
            # The agent fell behind the log while connected: a reconnect resyncs it.
            self.go_away(f"change log compacted past revision {exc.since}; resync needed", 0.0)
            return False
        except StoreError:
            self.go_away("dataplane no longer registered", GOAWAY_RETRY_REPLACED)
            return False
        for change in changes:
            # Counted as sent before the await: the agent's `applied` for it can arrive while the
            # send is still returning, and must not be refused as ahead of what was sent.
            prev, self.sent_revision = self.sent_revision, change.revision
            await self._send_change(change, prev=prev)
            if self._outbox or self._goaway is not None:
                break  # replies (heartbeat echoes) must not wait behind a long stream
        if changes:
            self._moved = True  # a batch may not be all there is: read again until one is empty
        self._caught_up = not changes
        return bool(changes)

    def _known_head(self) -> int | None:
        """The store's revision of this dataplane without asking the store, when it is known."""
        caught_up = self.phase == "streaming" and self._caught_up and not self._moved
        return self.sent_revision if caught_up else None

    async def _send_change(self, change: Change, prev: int | None) -> None:
        try:
            await self._send(change_frame(change, prev))
        except p.FrameTooLarge:
            # Only an object stored before the REST API checked sizes can get here; say which one
            # instead of failing the session with a traceback on every reconnect.
            log.error(
                "dataplane %s: %s (revision %d) does not fit in a tunnel frame; delete or shrink it",
                self.dataplane,
                change.key,
                change.revision,
            )
            raise _Closing(f"{change.key} is too large for the tunnel") from None

    async def _finish_snapshot(self) -> None:
        snap = self._snapshot
        assert snap is not None
        compared = self._compared if self._compared is not None else list(range(self._buckets))
        puts, same = p.snapshot_diff(snap.hashes, self._inventory, compared, self._buckets)
        # the agent's hashes are used up: release them before the (possibly long) sending
        self._inventory = {}
        self._inventory_seen = 0
        try:
            objects = await self._with_store(
                "reading snapshot objects", lambda: self.cp.store.get_objects(self.dataplane, puts)
            )
        except sqlite3.OperationalError:
            self._snapshot = None
            self.phase = "refused"
            self.go_away("control plane store unavailable", GOAWAY_RETRY_STORE)
            return
        # Environments first, so apps never arrive before the environment they live in.
        objects.sort(key=lambda o: (o.kind != KIND_ENVIRONMENT, o.key))
        for obj in objects:
            change = Change(
                obj.revision, "put", obj.key, obj.kind, obj.environment, obj.name, obj.spec, obj.spec_hash
            )
            await self._send_change(change, prev=None)
        for part in p.chunked(same, p.SNAPSHOT_KEYS_CHUNK):
            if part:
                await self._send(p.SnapshotKeys(keys=part))
        await self._send(p.SnapshotEnd(epoch=snap.epoch, revision=snap.revision))
        log.info(
            "dataplane %s: resync at revision %d: %d of %d buckets differ, %d puts, %d keys confirmed",
            self.dataplane,
            snap.revision,
            len(compared),
            self._buckets,
            len(objects),
            len(same),
        )
        self._snapshot = None
        self.phase = "streaming"
        if self._forced_resync:
            self._forced_resync = False
            try:
                await self._with_store(
                    "clearing the required resync", lambda: self.cp.store.resync_done(self.dataplane)
                )
            except sqlite3.OperationalError as exc:
                # The flag stays: the next session resyncs once more, which is harmless.
                log.warning("dataplane %s: required resync done but not recorded: %s", self.dataplane, exc)

    # -- receiving ---------------------------------------------------------------------------
    async def _reader(self) -> None:
        while True:
            data = await self._receive_text()
            if data is None:
                raise _Closing("agent disconnected")
            try:
                frame = p.decode(data, versions=(self.version,))
            except p.ProtocolError as exc:
                self.cp.metrics.frames_in.labels("invalid").inc()
                log.debug("dataplane %s: bad frame: %s", self.dataplane, exc)
                self.send_soon(exc.to_error())
                continue
            self.cp.metrics.frames_in.labels(frame.type).inc()
            await self._dispatch(frame)

    async def _dispatch(self, frame: p.Frame) -> None:
        body = frame.body
        dp = self.dataplane
        store = self.cp.store
        if isinstance(body, p.Heartbeat):
            store.queue_heartbeat(dp)
            if frame.envelope.corr is None:
                self.send_soon(p.Heartbeat(time=now_rfc3339()), corr=frame.id)
                if body.inventory is not None:
                    await self._take_summary(body.inventory)
        elif isinstance(body, p.Applied):
            epoch = body.epoch or self.epoch
            if epoch != self.epoch:
                self.send_soon(
                    self._error("protocol", f"applied for epoch {epoch}, session is {self.epoch}", frame)
                )
            elif body.revision > max(self.sent_revision, self.agent_revision):
                self.send_soon(
                    self._error(
                        "protocol", f"applied {body.revision} but only {self.sent_revision} was sent", frame
                    )
                )
            else:
                store.queue_applied(dp, body.revision, epoch)
        elif isinstance(body, p.StatusBatch):
            await self._take_statuses(body, frame)
        elif isinstance(body, p.Nack):
            try:
                reports.check_nack(body.key, body.code, body.message)
            except reports.InvalidReport as exc:
                self._refuse_report("nack", str(exc), frame)
                return
            self.cp.metrics.nacks.labels(body.code[:32]).inc()
            log.warning(
                "dataplane %s: nack %s at revision %d: %s (%s)%s",
                dp,
                body.key,
                body.revision,
                body.code,
                body.message,
                ", retrying" if body.retryable else "",
            )
            try:
                await self._with_store(
                    "recording a nack",
                    lambda: store.record_nack(
                        dp, body.key, body.revision, body.code, body.message, body.retryable
                    ),
                )
            except sqlite3.OperationalError as exc:
                # The refusal is lost only if the agent never repeats it; it nacks again on resync.
                log.error("dataplane %s: nack of %s not recorded: %s", dp, body.key, exc)
            # refused keys are part of the in-sync verdict
            self.cp.digests.invalidate(dp)
        elif isinstance(body, p.Inventory):
            self._take_inventory(body, frame)
        elif isinstance(body, p.Orphans):
            try:
                info = reports.validated_orphans(body.count, body.keys, body.reason)
            except reports.InvalidReport as exc:
                self._refuse_report("orphans", str(exc), frame)
                return
            store.queue_agent_info(dp, info)
            if body.count:
                log.warning("dataplane %s holds %d orphans (%s)", dp, body.count, body.reason)
        elif isinstance(body, p.Error):
            log.info(
                "dataplane %s: agent reports error %s: %s (ref %s)", dp, body.code, body.message, body.ref
            )
        elif isinstance(body, p.StreamData | p.StreamEnd):
            # routed by stream id to the waiting HTTP response; never stored, never logged
            self.cp.streams.deliver(self, body)
        elif isinstance(body, p.GoAway):
            raise _Closing(f"agent goaway: {body.reason}")
        else:
            self.send_soon(self._error("protocol", f"{frame.type} is not a message an agent sends", frame))

    async def _take_statuses(self, body: p.StatusBatch, frame: p.Frame) -> None:
        """Store the valid statuses of a batch; refuse the others with one error frame.

        Keys are not checked against the desired objects here: the store keeps a status only for
        an object this data plane has (another data plane's objects are not even addressable), so
        reports for anything else are dropped at the next flush.
        """
        refused: list[str] = []
        for item in body.items:
            try:
                status = reports.validated_status(item.key, item.status)
            except reports.InvalidReport as exc:
                refused.append(str(exc))
                continue
            if self.cp.store.pending_status_bytes(self.dataplane) > reports.MAX_PENDING_STATUS_BYTES:
                # backpressure: this agent waits (its socket is not read) until the store caught up;
                # while the database is locked it keeps waiting (the flush keeps the batch)
                await self._with_store("flushing reports", self.cp.store.flush, deadline=float("inf"))
            self.cp.store.queue_status(
                self.dataplane,
                item.key,
                status,
                missing=item.missing,
                observed_at=reports.observed_time(item.observed_at),
            )
        if refused:
            more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
            self._refuse_report("status", f"status refused: {refused[0]}{more}", frame, len(refused))

    async def _take_summary(self, summary: p.InventorySummary) -> None:
        """Record the agent's inventory summary and judge it against the desired state (anti-entropy)."""
        dp, store = self.dataplane, self.cp.store
        store.queue_inventory(dp, summary.count, summary.digest, summary.revision)
        try:
            known = self._known_head()
            if known is not None:
                # an idle agent's heartbeat: judged without a database read
                epoch, revision = self.epoch, known
            else:
                epoch, revision = await self._with_store(
                    "reading the revision", lambda: store.head(dp), SUMMARY_STORE_SECONDS
                )
            desired = None
            if summary.revision == revision:
                desired = await self._with_store(
                    "computing the desired digest",
                    lambda: self.cp.digests.at(dp, epoch, revision),
                    SUMMARY_STORE_SECONDS,
                )
            seen = self._anti_entropy.observe(summary, revision, desired)
            self.cp.metrics.anti_entropy.labels(seen).inc()
            if seen in ("match", "explained"):
                self._deferred_logged = False
                if self._resync_requests:
                    await self._with_store("settling anti-entropy", lambda: store.anti_entropy_settled(dp))
                    self._resync_requests, self._resync_requested_at = 0, None
            elif seen == "differs":
                await self._differs(summary, revision)
        except sqlite3.OperationalError as exc:
            # A summary comes with every heartbeat: judging the next one is as good as this one.
            log.info("dataplane %s: inventory summary not judged (store unavailable: %s)", dp, exc)
        except StoreError:
            self.go_away("dataplane no longer registered", GOAWAY_RETRY_REPLACED)

    async def _differs(self, summary: p.InventorySummary, revision: int) -> None:
        settings = self.cp.tunnel
        wait = insync.resync_allowed(
            self._resync_requests,
            self._resync_requested_at,
            dt.datetime.now(dt.UTC),
            base=settings.anti_entropy_backoff,
            cap=settings.anti_entropy_backoff_cap,
        )
        if wait > 0:
            self.cp.metrics.anti_entropy.labels("resync_deferred").inc()
            if not self._deferred_logged:
                self._deferred_logged = True
                log.warning(
                    "dataplane %s: inventory still differs from the desired state at revision %d after %d "
                    "resync(s); next resync in %.0fs at the earliest",
                    self.dataplane,
                    revision,
                    self._resync_requests,
                    wait,
                )
            return
        reason = (
            f"inventory digest {summary.digest[:12]} ({summary.count} objects) differs from the desired "
            f"state at revision {revision}"
        )
        self._resync_requests = await self._with_store(
            "requiring a resync", lambda: self.cp.store.request_resync(self.dataplane, reason)
        )
        self._resync_requested_at = now_rfc3339()
        self._deferred_logged = False
        self.cp.metrics.anti_entropy.labels("resync_requested").inc()
        log.warning(
            "dataplane %s: %s; asking the agent to resync (request %d in a row)",
            self.dataplane,
            reason,
            self._resync_requests,
        )
        self.go_away(p.GOAWAY_RESYNC, settings.resync_retry_after)

    def _refuse_report(self, what: str, message: str, frame: p.Frame, count: int = 1) -> None:
        self.cp.metrics.reports_refused.labels(what).inc(count)
        log.warning("dataplane %s: %s", self.dataplane, message[:300])
        self.send_soon(self._error("bad_body", message, frame))

    def _refuse_inventory(self, message: str, frame: p.Frame) -> None:
        """An inventory we cannot use ends the resync: drop what was collected and go away (the
        agent reconnects and resyncs from scratch)."""
        self._refuse_report("inventory", message, frame)
        self._inventory = {}
        self._inventory_seen = 0
        self._snapshot = None
        self.phase = "refused"
        self.go_away(f"resync refused: {message[:200]}", GOAWAY_RETRY_REPLACED)

    def _take_inventory(self, body: p.Inventory, frame: p.Frame) -> None:
        if self.phase == "refused":
            return  # the goaway is on its way; later chunks of that inventory are moot
        if self.phase != "await_inventory":
            self.send_soon(self._error("protocol", "inventory outside a resync", frame))
            return
        if body.chunk != self._next_chunk:
            self.send_soon(
                self._error("protocol", f"inventory chunk {body.chunk}, expected {self._next_chunk}", frame)
            )
            return
        if body.chunk == 0:
            if body.buckets is not None and any(not 0 <= b < self._buckets for b in body.buckets):
                self._refuse_inventory(f"bucket index outside 0..{self._buckets - 1}", frame)
                return
            self._compared = None if body.buckets is None else sorted(set(body.buckets))
        self._inventory_seen += len(body.items)
        if self._inventory_seen > reports.MAX_INVENTORY_ITEMS:
            self._refuse_inventory(f"inventory larger than {reports.MAX_INVENTORY_ITEMS} items", frame)
            return
        try:
            reports.check_inventory_items(body.items)
        except reports.InvalidReport as exc:
            self._refuse_inventory(str(exc), frame)
            return
        desired = self._snapshot.hashes if self._snapshot is not None else {}
        self._inventory.update((k, h) for k, h in body.items.items() if k in desired)
        self._next_chunk += 1
        if body.last:
            self.phase = "snapshot_ready"
            self._wake.set()

    @staticmethod
    def _error(code: p.ErrorCode, message: str, frame: p.Frame) -> p.Error:
        return p.Error(code=code, message=message[:4096], ref=frame.id)


def add_tunnel_route(app: FastAPI, cp: ControlPlane) -> None:
    @app.websocket(p.TUNNEL_PATH)
    async def tunnel(websocket: WebSocket) -> None:
        if cp.store.clustered and not cp.hub.replica:
            # Listening, but not yet linked to the other replicas (name, advertised URL, NOTIFY):
            # a session claimed now would be recorded under no replica. The agent retries.
            cp.metrics.session_rejects.labels("starting").inc()
            await _deny(websocket, 503, "control plane replica still starting; retry shortly")
            return
        token = _bearer(websocket)
        if token is None:
            cp.metrics.session_rejects.labels("no_token").inc()
            await _deny(websocket, 401, "missing bearer token")
            return
        try:
            dataplane = await cp.store.authenticate_dataplane(token)
        except sqlite3.OperationalError as exc:
            cp.metrics.session_rejects.labels("store_unavailable").inc()
            log.warning("tunnel: store unavailable while authenticating (%s); 503", exc)
            await _deny(websocket, 503, "control plane store unavailable; retry later")
            return
        if dataplane is None:
            cp.metrics.session_rejects.labels("bad_token").inc()
            await _deny(websocket, 401, "invalid dataplane token")
            return
        if p.SUBPROTOCOL not in websocket.scope.get("subprotocols", []):
            cp.metrics.session_rejects.labels("subprotocol").inc()
            await _deny(websocket, 400, f"the {p.SUBPROTOCOL} subprotocol is required")
            return
        await websocket.accept(subprotocol=p.SUBPROTOCOL)
        session = TunnelSession(cp, websocket, dataplane)
        await session.run()


def shutdown_sessions(cp: ControlPlane) -> None:
    """Tell every agent we are going away (they reconnect after a short, jittered backoff)."""
    for session in cp.hub.sessions():
        if isinstance(session, TunnelSession):
            session.go_away("control plane shutting down", GOAWAY_RETRY_SHUTDOWN)
