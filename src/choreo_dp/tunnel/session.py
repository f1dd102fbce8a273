"""One connected tunnel session: hello/welcome, the change stream, resync, acks, status, heartbeats.

The session ends when the connection closes (for whatever reason); the agent loop reconnects. All
state that matters survives in the cluster (objects and the DataPlane status), so ending a session
anywhere loses nothing: unacknowledged changes are redelivered and redelivery is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from choreo_dp.kube import ApiError
from choreo_dp.observability.health import Liveness
from choreo_dp.tunnel import guards as G
from choreo_dp.tunnel import metrics as M
from choreo_dp.tunnel import protocol as P
from choreo_dp.tunnel.cluster import ApplyRefused, ClusterStore, NotYetApplicable
from choreo_dp.tunnel.dpstatus import DataPlaneStatus
from choreo_dp.tunnel.statusreport import StatusReporter, now_ms
from choreo_dp.tunnel.stream import ChainBroken, Change, ChangeStream

log = logging.getLogger(__name__)

AGENT_VERSION = "choreo-dp-agent/0.1"
WELCOME_TIMEOUT = 10.0
OUTQ_FRAMES = 1024
APPLY_WINDOW = 16
# Changes released from the chain but not yet acknowledged (finished ones wait behind an unfinished
# one, e.g. an app whose namespace does not exist yet). Past this the reader stops reading: memory
# stays bounded however many changes a control plane pushes behind a stuck one.
UNACKED_LIMIT = 4096
STATUS_COALESCE = 0.05  # seconds to let a burst of status changes collapse into one batch
# Orphan hold reason when a resync snapshot names fewer (or more) keys than it says it has.
SNAPSHOT_INCONSISTENT = "snapshot_inconsistent"


class SessionEnded(Exception):
    """The session cannot continue (protocol violation, broken chain); reconnect."""


@dataclass
class SessionResult:
    welcomed: bool = False
    retry_after: float | None = None
    reason: str = "closed"


@dataclass
class _Snapshot:
    begin: P.SnapshotBegin
    compared: list[int]
    # the agent's keys in the buckets whose digests matched: the cp has exactly these there
    identical: int = 0
    # keys the cp named in the compared buckets (puts and snapshot.keys), counted as they come ...
    delivered: int = 0
    # ... and kept only when the agent has them: only those can be deletion candidates, so a control
    # plane naming millions of keys costs no memory
    remote: set[str] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class Session:
    def __init__(
        self,
        ws: ClientConnection,
        *,
        dataplane_id: str,
        store: ClusterStore,
        dp: DataPlaneStatus,
        reporter: StatusReporter,
        liveness: Liveness | None = None,
        window: int = APPLY_WINDOW,
        unacked_limit: int = UNACKED_LIMIT,
    ) -> None:
        self.ws = ws
        self.dataplane_id = dataplane_id
        self.store = store
        self.dp = dp
        self.reporter = reporter
        self.liveness = liveness
        self.seq = P.Sequencer()
        self.outq: asyncio.Queue[tuple[str, list[P.StatusItem] | None]] = asyncio.Queue(OUTQ_FRAMES)
        self.window = asyncio.Semaphore(window)
        self.unacked_limit = unacked_limit
        self.progress = asyncio.Event()  # set whenever a change finishes
        self.result = SessionResult()
        self.epoch = ""
        self.state: Literal["hello", "await_snapshot", "resync", "incremental"] = "hello"
        self.stream = ChangeStream(base=dp.applied_revision)
        self.persisted = dp.applied_revision
        self.snapshot: _Snapshot | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.key_tail: dict[str, asyncio.Task[None]] = {}
        self.ack_wakeup = asyncio.Event()
        self.errors_dropped = 0
        self.heartbeat_interval = 15.0

    # --- sending -----------------------------------------------------------------------------

    async def send(self, body: P.Body, corr: str | None = None) -> None:
        await self.outq.put((self.seq.encode(body, corr=corr), None))

    def send_soon(self, body: P.Body, corr: str | None = None) -> None:
        """For error frames: never block the reader; drop when the queue is full (counted)."""
        try:
            self.outq.put_nowait((self.seq.encode(body, corr=corr), None))
        except asyncio.QueueFull:
            self.errors_dropped += 1

    async def _sender(self) -> None:
        while True:
            text, items = await self.outq.get()
            try:
                await self.ws.send(text)
            except BaseException:
                if items:
                    self.reporter.requeue(items)
                raise
            if items:
                self.reporter.mark_sent(items)

    # --- the session -------------------------------------------------------------------------

    async def run(self) -> SessionResult:
        hello = P.Hello(
            dataplane_id=self.dataplane_id,
            versions=list(P.SUPPORTED_VERSIONS),
            epoch=self.dp.epoch,
            applied_revision=self.dp.applied_revision,
            agent_version=AGENT_VERSION,
            inventory_count=len(self.store.index),
        )
        await self.ws.send(self.seq.encode(hello))
        welcome = await self._await_welcome()
        if welcome is None:
            return self.result
        self.result.welcomed = True
        self.epoch = welcome.epoch
        self.heartbeat_interval = min(
            max(welcome.heartbeat_interval, G.HEARTBEAT_MIN_SECONDS), G.HEARTBEAT_MAX_SECONDS
        )
        if welcome.mode == "incremental":
            if welcome.epoch != self.dp.epoch:
                self.send_soon(P.Error(code="protocol", message="incremental mode in a different epoch"))
                self.result.reason = "protocol"
                return self.result
            self.state = "incremental"
        else:
            self.state = "await_snapshot"
            self.reporter.resend_all()
        await self.dp.set_connected(True, "Connected", f"session with epoch {welcome.epoch}")
        helpers = [
            asyncio.create_task(self._sender(), name="tunnel-sender"),
            asyncio.create_task(self._acker(), name="tunnel-acker"),
            asyncio.create_task(self._status_flusher(), name="tunnel-status"),
            asyncio.create_task(self._heartbeats(), name="tunnel-heartbeat"),
        ]
        if self.state == "incremental":
            await self._report_orphans(None)
        reader = asyncio.create_task(self._reader(), name="tunnel-reader")
        try:
            done, _ = await asyncio.wait([reader, *helpers], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = task.exception()
                if isinstance(exc, SessionEnded | ChainBroken):
                    self.result.reason = str(exc)
                    log.warning("tunnel session ended: %s", exc)
                elif exc is not None and not isinstance(exc, ConnectionClosed):
                    raise exc
        finally:
            for task in [reader, *helpers, *self.tasks]:
                task.cancel()
            await asyncio.gather(reader, *helpers, *self.tasks, return_exceptions=True)
            # status items still queued were never sent: give them back
            while not self.outq.empty():
                _, items = self.outq.get_nowait()
                if items:
                    self.reporter.requeue(items)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 2.0)
        return self.result

    async def _await_welcome(self) -> P.Welcome | None:
        async with asyncio.timeout(WELCOME_TIMEOUT):
            async for raw in self.ws:
                try:
                    frame = P.decode(raw)
                except P.ProtocolError as exc:
                    await self.ws.send(self.seq.encode(exc.to_error()))
                    continue
                body = frame.body
                if isinstance(body, P.Welcome):
                    if body.version not in P.SUPPORTED_VERSIONS:
                        await self.ws.send(
                            self.seq.encode(P.Error(code="unsupported_version", message=str(body.version)))
                        )
                        self.result.reason = "unsupported_version"
                        return None
                    return body
                if isinstance(body, P.GoAway):
                    self.result.retry_after = body.retry_after
                    self.result.reason = f"goaway: {body.reason}"
                    return None
                if isinstance(body, P.Error):
                    log.warning("control plane error before welcome: %s %s", body.code, body.message)
                    self.result.reason = f"error: {body.code}"
                    if body.code in ("unauthorized", "unsupported_version"):
                        return None
                    continue
        return None

    # --- reading -----------------------------------------------------------------------------

    async def _reader(self) -> None:
        async for raw in self.ws:
            if self.liveness is not None:
                self.liveness.beat()
            try:
                frame = P.decode(raw)
            except P.ProtocolError as exc:
                log.info("refused frame: %s", exc)
                M.FRAMES_REFUSED.labels(exc.code).inc()
                self.send_soon(exc.to_error())
                continue
            M.FRAMES_IN.labels(frame.type).inc()
            await self._handle(frame)

    async def _handle(self, frame: P.Frame) -> None:
        body = frame.body
        if isinstance(body, P.Heartbeat):
            if frame.envelope.corr is None:
                await self.send(P.Heartbeat(time=now_ms(), applied_revision=self.persisted), corr=frame.id)
            else:
                await self.dp.heartbeat()
        elif isinstance(body, P.DesiredPut | P.DesiredDelete):
            await self._on_change(frame, body)
        elif isinstance(body, P.SnapshotBegin):
            await self._on_snapshot_begin(frame, body)
        elif isinstance(body, P.SnapshotKeys):
            if self.snapshot is None:
                self.send_soon(
                    P.Error(code="protocol", message="snapshot.keys outside a snapshot", ref=frame.id)
                )
            else:
                for key in body.keys:
                    self._note_remote(self.snapshot, key)
        elif isinstance(body, P.SnapshotEnd):
            await self._on_snapshot_end(frame, body)
        elif isinstance(body, P.GoAway):
            self.result.retry_after = body.retry_after
            self.result.reason = f"goaway: {body.reason}"
            raise SessionEnded(self.result.reason)
        elif isinstance(body, P.Error):
            log.warning("control plane reports error %s: %s (ref %s)", body.code, body.message, body.ref)
        else:
            self.send_soon(
                P.Error(code="protocol", message=f"{frame.type} is not expected by the agent", ref=frame.id)
            )

    async def _on_change(self, frame: P.Frame, change: Change) -> None:
        if change.revision > G.MAX_REVISION or (change.prev or 0) > G.MAX_REVISION:
            # refused before it reaches the chain: accepted, it would mark every later change a
            # duplicate, and its revision could never be persisted
            self.send_soon(
                P.Error(code="bad_body", message=f"revision beyond {G.MAX_REVISION}", ref=frame.id)
            )
            return
        if change.prev is None:
            snap = self.snapshot
            if snap is None or not isinstance(change, P.DesiredPut):
                self.send_soon(
                    P.Error(code="protocol", message="change without prev outside a snapshot", ref=frame.id)
                )
                return
            self._note_remote(snap, change.key)
            task = await self._schedule(change, chained=False)
            snap.tasks.add(task)
            task.add_done_callback(self._snapshot_put_done(snap, change.key))
            return
        if self.state != "incremental":
            self.send_soon(
                P.Error(code="protocol", message=f"{frame.type} during {self.state}", ref=frame.id)
            )
            return
        while self.stream.in_flight >= self.unacked_limit:
            self.progress.clear()
            await self.progress.wait()
        verdict, released = self.stream.offer(change)
        if verdict == "duplicate":
            # already received (maybe already applied): nothing to write, repeat what is persisted
            await self.send(P.Applied(revision=self.persisted, epoch=self.epoch))
        for item in released:
            await self._schedule(item, chained=True)

    async def _schedule(self, change: Change, *, chained: bool) -> asyncio.Task[None]:
        # The reader waits here when the window is full: TCP backpressure instead of buffering.
        await self.window.acquire()
        before = [t for t in (self.key_tail.get(change.key),) if t is not None]
        if change.key.startswith("ChoreoApp/"):
            # an app waits for a write of its environment still in flight (the namespace follows it)
            env_task = self.key_tail.get(P.environment_key(change.key.split("/")[1]))
            if env_task is not None:
                before.append(env_task)
        task = asyncio.create_task(self._apply(change, before, chained))
        self.key_tail[change.key] = task
        self.tasks.add(task)
        task.add_done_callback(self._task_done(change.key))
        return task

    def _note_remote(self, snap: _Snapshot, key: str, *, count: bool = True) -> None:
        if count:
            snap.delivered += 1
        if key in self.store.index:
            snap.remote.add(key)

    def _snapshot_put_done(self, snap: _Snapshot, key: str) -> Any:
        def done(task: asyncio.Task[None]) -> None:
            snap.tasks.discard(task)
            # a key the put just created is the cp's too (it must not become a deletion candidate)
            self._note_remote(snap, key, count=False)

        return done

    def _task_done(self, key: str) -> Any:
        def done(task: asyncio.Task[None]) -> None:
            self.tasks.discard(task)
            if self.key_tail.get(key) is task:
                del self.key_tail[key]

        return done

    async def _apply(self, change: Change, before: list[asyncio.Task[None]], chained: bool) -> None:
        try:
            if before:
                # same key: strictly in order (the previous one's failure is its own business)
                await asyncio.wait(before)
            await self._apply_with_retry(change)
            if chained:
                acked = self.stream.finish(change.revision)
                self.progress.set()
                if acked > self.persisted:
                    self.ack_wakeup.set()
        finally:
            self.window.release()

    async def _apply_with_retry(self, change: Change) -> None:
        attempt = 0
        nacked = False
        while True:
            try:
                if isinstance(change, P.DesiredPut):
                    await self.store.put(change, self.epoch)
                else:
                    await self.store.delete(change.key)
                if self.liveness is not None:
                    self.liveness.beat()
                return
            except ApplyRefused as exc:
                log.warning("refused %s r%d: %s", change.key, change.revision, exc)
                M.NACKS.labels(exc.code, "false").inc()
                await self.send(
                    P.Nack(
                        revision=change.revision,
                        key=change.key,
                        code=exc.code,
                        message=exc.message,
                        retryable=False,
                    )
                )
                return
            except (NotYetApplicable, ApiError, aiohttp.ClientError, TimeoutError) as exc:
                code = exc.code if isinstance(exc, NotYetApplicable) else "kubernetes_unavailable"
                if not nacked and (isinstance(exc, NotYetApplicable) or attempt >= 3):
                    nacked = True
                    M.NACKS.labels(code, "true").inc()
                    await self.send(
                        P.Nack(
                            revision=change.revision,
                            key=change.key,
                            code=code,
                            message=str(exc)[:2000],
                            retryable=True,
                        )
                    )
                log.info("retrying %s r%d: %s", change.key, change.revision, exc)
            except Exception as exc:  # nothing the control plane sends may wedge the stream
                log.exception("unexpected failure applying %s r%d", change.key, change.revision)
                M.NACKS.labels("internal", "false").inc()
                await self.send(
                    P.Nack(
                        revision=change.revision,
                        key=change.key,
                        code="internal",
                        message=f"{type(exc).__name__}: {exc}"[:2000],
                        retryable=False,
                    )
                )
                return
            ceiling = min(60.0, 0.5 * 2**attempt)
            await asyncio.sleep(random.uniform(ceiling / 2, ceiling))
            attempt += 1

    # --- resync ------------------------------------------------------------------------------

    async def _on_snapshot_begin(self, frame: P.Frame, begin: P.SnapshotBegin) -> None:
        if self.state != "await_snapshot" or begin.epoch != self.epoch:
            self.send_soon(P.Error(code="protocol", message="unexpected snapshot.begin", ref=frame.id))
            return
        if begin.revision > G.MAX_REVISION:
            self.send_soon(
                P.Error(code="bad_body", message=f"revision beyond {G.MAX_REVISION}", ref=frame.id)
            )
            return
        try:
            theirs = P.decode_digests(begin.digests, begin.buckets)
        except ValueError as exc:
            self.send_soon(P.Error(code="bad_body", message=str(exc), ref=frame.id))
            return
        inventory = self.store.inventory()
        ours = P.bucket_digests(inventory, begin.buckets)
        compared = P.differing_buckets(ours, theirs)
        inside = P.in_buckets(inventory, compared, begin.buckets)
        self.snapshot = _Snapshot(begin=begin, compared=compared, identical=len(inventory) - len(inside))
        self.state = "resync"
        for inv in P.inventory_frames(compared, inside):
            await self.send(inv)

    async def _on_snapshot_end(self, frame: P.Frame, end: P.SnapshotEnd) -> None:
        snap = self.snapshot
        if snap is None or end.epoch != snap.begin.epoch or end.revision != snap.begin.revision:
            self.send_soon(P.Error(code="protocol", message="unexpected snapshot.end", ref=frame.id))
            return
        if snap.tasks:
            await asyncio.wait(snap.tasks)
        plan = P.plan_resync(
            {k: m.local_item() for k, m in self.store.index.items()},
            snap.remote,
            compared_buckets=snap.compared,
            buckets=snap.begin.buckets,
            agent_epoch=self.dp.epoch,
            agent_revision=self.dp.applied_revision,
            cp_epoch=snap.begin.epoch,
            cp_revision=snap.begin.revision,
            cp_total=snap.begin.total,
        )
        hold_reason: str | None = plan.hold_reason
        deletes, orphans = plan.deletes, plan.orphans
        if deletes and snap.delivered + snap.identical != snap.begin.total:
            # The cp said it has `total` keys but named a different number: a broken snapshot
            # (lost keys, a bug, a truncated store) must not delete what it failed to mention.
            log.warning(
                "resync snapshot inconsistent: %d keys named + %d identical != total %d",
                snap.delivered,
                snap.identical,
                snap.begin.total,
            )
            deletes, orphans, hold_reason = [], sorted([*deletes, *orphans]), SNAPSHOT_INCONSISTENT
        for key in deletes:
            await self._retrying(lambda k=key: self._resync_delete(k))
        for key in orphans:
            await self._retrying(lambda k=key, r=hold_reason or "held": self.store.mark_orphan(k, r))
        if orphans:
            log.warning("resync held %d deletion(s) as orphans (%s)", len(orphans), hold_reason)
        await self._retrying(lambda: self.dp.persist_revision(end.epoch, end.revision))
        self.persisted = end.revision
        M.APPLIED_REVISION.set(end.revision)
        self.stream.reset(end.revision)
        self.snapshot = None
        self.state = "incremental"
        await self.send(P.Applied(revision=end.revision, epoch=end.epoch))
        await self._report_orphans(hold_reason)

    async def _resync_delete(self, key: str) -> None:
        try:
            await self.store.delete(key)
        except ApplyRefused as exc:
            # it stopped being ours since the inventory was taken: not ours to delete
            log.warning("resync left %s alone: %s", key, exc)

    async def _retrying(self, op: Any) -> None:
        attempt = 0
        while True:
            try:
                await op()
                return
            except ApiError as exc:
                if exc.status in (400, 422):
                    # the request itself is refused and will be again: retrying would wedge the
                    # session; ending it resumes from what is persisted
                    raise SessionEnded(f"Kubernetes refused a write: {exc}") from None
                log.info("retrying after %s", exc)
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.info("retrying after %s", exc)
            ceiling = min(30.0, 0.2 * 2**attempt)
            await asyncio.sleep(random.uniform(ceiling / 2, ceiling))
            attempt += 1

    async def _report_orphans(self, reason: str | None) -> None:
        orphans = self.store.orphans()
        M.ORPHANS.set(len(orphans))
        if orphans or self.dp.conditions:
            await self._retrying(lambda: self.dp.set_orphans(orphans, reason))
        if orphans:
            await self.send(
                P.Orphans(count=len(orphans), keys=orphans[: P.ORPHAN_REPORT_KEYS], reason=reason)
            )

    # --- helpers tasks -----------------------------------------------------------------------

    async def _acker(self) -> None:
        while True:
            await self.ack_wakeup.wait()
            self.ack_wakeup.clear()
            target = self.stream.acked
            if target <= self.persisted:
                continue
            # persist first: an acknowledged revision must survive a crash of the agent
            await self._retrying(lambda t=target: self.dp.persist_revision(self.epoch, t))
            self.persisted = target
            M.APPLIED_REVISION.set(target)
            await self.send(P.Applied(revision=target, epoch=self.epoch))

    async def _status_flusher(self) -> None:
        while True:
            await self.reporter.changed.wait()
            await asyncio.sleep(STATUS_COALESCE)
            while True:
                items = self.reporter.take()
                if not items:
                    break
                try:
                    text = self.seq.encode(P.StatusBatch(items=items))
                except P.FrameTooLarge:
                    # statuses are small; if not, send them one by one and drop any still too big
                    for item in items:
                        with contextlib.suppress(P.FrameTooLarge):
                            await self.outq.put((self.seq.encode(P.StatusBatch(items=[item])), [item]))
                    continue
                await self.outq.put((text, items))

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            await self.send(P.Heartbeat(time=now_ms(), applied_revision=self.persisted))
            if self.liveness is not None:
                self.liveness.beat()
