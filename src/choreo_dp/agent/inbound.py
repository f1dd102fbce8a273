"""The agent's inbound direction: frames from the control plane, the change stream, applying.

Changes are applied concurrently within a window, strictly in order per key (and an app after its
Environment); the change stream releases them in chain order and tells the outbound side how far
everything is done, so the acknowledged revision never passes an unfinished change.
"""

from __future__ import annotations

import asyncio
import logging

from websockets.asyncio.client import ClientConnection

from choreo_dp.agent import guards as G
from choreo_dp.agent import metrics as M
from choreo_dp.agent.cluster import ApplyRefused, ClusterStore, NotYetApplicable
from choreo_dp.agent.outbound import Outbound
from choreo_dp.agent.shared import SessionEnded, SessionState
from choreo_dp.agent.snapshot import Resync
from choreo_dp.agent.statusreport import now_ms
from choreo_dp.agent.stream import Change
from choreo_dp.agent.streams import StreamManager
from choreo_dp.kube import ApiError
from choreo_dp.kube.backoff import Backoff, is_retryable, retrying
from choreo_wire import protocol as P

log = logging.getLogger("choreo_dp.agent.session")

APPLY_WINDOW = 16
# Changes released from the chain but not yet acknowledged (finished ones wait behind an unfinished
# one, e.g. an app whose namespace does not exist yet). Past this the reader stops reading: memory
# stays bounded however many changes a control plane pushes behind a stuck one.
UNACKED_LIMIT = 4096
# A change that cannot be written yet is retried up to a minute apart, for as long as it takes.
APPLY_BACKOFF = Backoff(base=0.5, cap=60.0)
# Retries of an unreachable or failing Kubernetes API before the control plane hears about it.
NACK_AFTER_RETRIES = 3


def _retry_apply(exc: BaseException) -> bool:
    return isinstance(exc, NotYetApplicable) or is_retryable(exc)


def _log_unexpected(task: asyncio.Task[None]) -> None:
    # record_heartbeat absorbs API and network errors; anything else is a bug worth a traceback.
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("renewing the heartbeat failed unexpectedly", exc_info=exc)


class Inbound:
    def __init__(
        self,
        ws: ClientConnection,
        shared: SessionState,
        out: Outbound,
        resync: Resync,
        *,
        store: ClusterStore,
        window: int = APPLY_WINDOW,
        unacked_limit: int = UNACKED_LIMIT,
        streams: StreamManager | None = None,
    ) -> None:
        self.ws = ws
        self.streams = streams
        self.shared = shared
        self.out = out
        self.resync = resync
        self.store = store
        self.window = asyncio.Semaphore(window)
        self.unacked_limit = unacked_limit
        self.progress = asyncio.Event()  # set whenever a change finishes
        self.tasks: set[asyncio.Task[None]] = set()
        self.key_tail: dict[str, asyncio.Task[None]] = {}
        # set by the session when the cp says go away (the reason and delay end the session)
        self.goaway: P.GoAway | None = None
        # The DataPlane heartbeat write in flight (see _renew_heartbeat); cancelled with the session.
        self.heartbeat_renewal: asyncio.Task[None] | None = None

    async def reader(self) -> None:
        async for raw in self.ws:
            self.shared.beat()
            try:
                frame = P.decode(raw)
            except P.ProtocolError as exc:
                log.info("refused frame: %s", exc)
                M.FRAMES_REFUSED.labels(exc.code).inc()
                self.out.send_soon(exc.to_error())
                continue
            M.FRAMES_IN.labels(frame.type).inc()
            await self.handle(frame)

    async def handle(self, frame: P.Frame) -> None:
        body = frame.body
        if isinstance(body, P.Heartbeat):
            if frame.envelope.corr is None:
                await self.out.send(
                    P.Heartbeat(time=now_ms(), applied_revision=self.shared.persisted), corr=frame.id
                )
            else:
                self._renew_heartbeat()
        elif isinstance(body, P.DesiredPut | P.DesiredDelete):
            await self.on_change(frame, body)
        elif isinstance(body, P.SnapshotBegin):
            await self.resync.on_begin(frame, body)
        elif isinstance(body, P.SnapshotKeys):
            self.resync.on_keys(frame, body)
        elif isinstance(body, P.SnapshotEnd):
            await self.resync.on_end(frame, body)
        elif isinstance(body, P.StreamOpen | P.StreamCredit | P.StreamEnd):
            self.on_stream(frame, body)
        elif isinstance(body, P.GoAway):
            self.goaway = body
            raise SessionEnded(f"goaway: {body.reason}")
        elif isinstance(body, P.Error):
            log.warning("control plane reports error %s: %s (ref %s)", body.code, body.message, body.ref)
        else:
            self.out.send_soon(
                P.Error(code="protocol", message=f"{frame.type} is not expected by the agent", ref=frame.id)
            )

    def _renew_heartbeat(self) -> None:
        """Write lastHeartbeatTime off the read path: the reader must not hold the desired changes
        behind it while a busy API server takes its time with a cosmetic write. One write at a
        time; an answer arriving while one is in flight is covered by that one."""
        if self.heartbeat_renewal is None or self.heartbeat_renewal.done():
            self.heartbeat_renewal = asyncio.create_task(
                self.out.record_heartbeat(), name="agent-heartbeat-renewal"
            )
            self.heartbeat_renewal.add_done_callback(_log_unexpected)

    def on_stream(self, frame: P.Frame, body: P.StreamOpen | P.StreamCredit | P.StreamEnd) -> None:
        """On-demand streams: never awaited here, so a stream cannot hold up desired state."""
        if self.streams is None:
            if isinstance(body, P.StreamOpen):
                self.out.send_soon(
                    P.StreamEnd(id=body.id, code="error", message="this agent serves no streams")
                )
            return
        if isinstance(body, P.StreamOpen):
            self.streams.open(body)
        elif isinstance(body, P.StreamCredit):
            self.streams.credit(body)
        else:
            self.streams.end(body)

    async def on_change(self, frame: P.Frame, change: Change) -> None:
        if change.revision > G.MAX_REVISION or (change.prev or 0) > G.MAX_REVISION:
            # refused before it reaches the chain: accepted, it would mark every later change a
            # duplicate, and its revision could never be persisted
            self.out.send_soon(
                P.Error(code="bad_body", message=f"revision beyond {G.MAX_REVISION}", ref=frame.id)
            )
            return
        if change.prev is None:
            snap = self.resync.snapshot
            if snap is None or not isinstance(change, P.DesiredPut):
                self.out.send_soon(
                    P.Error(code="protocol", message="change without prev outside a snapshot", ref=frame.id)
                )
                return
            self.resync.note_remote(snap, change.key)
            task = await self.schedule(change, chained=False)
            self.resync.track_put(snap, change.key, task)
            return
        if self.shared.state != "incremental":
            self.out.send_soon(
                P.Error(code="protocol", message=f"{frame.type} during {self.shared.state}", ref=frame.id)
            )
            return
        stream = self.shared.stream
        while stream.in_flight >= self.unacked_limit:
            self.progress.clear()
            await self.progress.wait()
        verdict, released = stream.offer(change)
        if verdict == "duplicate":
            # already received (maybe already applied): nothing to write, repeat what is persisted
            await self.out.send(P.Applied(revision=self.shared.persisted, epoch=self.shared.epoch))
        for item in released:
            await self.schedule(item, chained=True)

    async def schedule(self, change: Change, *, chained: bool) -> asyncio.Task[None]:
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

        def done(task: asyncio.Task[None], key: str = change.key) -> None:
            self.tasks.discard(task)
            if self.key_tail.get(key) is task:
                del self.key_tail[key]

        task.add_done_callback(done)
        return task

    async def _apply(self, change: Change, before: list[asyncio.Task[None]], chained: bool) -> None:
        try:
            if before:
                # same key: strictly in order (the previous one's failure is its own business)
                await asyncio.wait(before)
            await self.apply_with_retry(change)
            if chained:
                acked = self.shared.stream.finish(change.revision)
                self.progress.set()
                if acked > self.shared.persisted:
                    self.out.ack_wakeup.set()
        finally:
            self.window.release()

    async def _nack(self, change: Change, code: str, message: str, *, retryable: bool) -> None:
        M.NACKS.labels(code, "true" if retryable else "false").inc()
        await self.out.send(
            P.Nack(
                revision=change.revision,
                key=change.key,
                code=code,
                message=message[:2000],
                retryable=retryable,
            )
        )

    async def apply_with_retry(self, change: Change) -> None:
        """Write one change. What may succeed later (a namespace not there yet, 429, 5xx, an
        unreachable API) is retried for as long as it takes, the control plane told once with a
        retryable nack; what Kubernetes or the agent refuses is nacked not retryable and counts as
        processed."""
        nacked = False

        async def write() -> None:
            if isinstance(change, P.DesiredPut):
                await self.store.put(change, self.shared.epoch)
            else:
                await self.store.delete(change.key)

        async def on_retry(attempt: int, exc: BaseException) -> None:
            nonlocal nacked
            if nacked or not (isinstance(exc, NotYetApplicable) or attempt > NACK_AFTER_RETRIES):
                return
            nacked = True
            code = exc.code if isinstance(exc, NotYetApplicable) else "kubernetes_unavailable"
            await self._nack(change, code, str(exc), retryable=True)

        try:
            await retrying(
                write,
                retry_on=_retry_apply,
                backoff=APPLY_BACKOFF,
                on_retry=on_retry,
                what=f"{change.key} r{change.revision}",
                logger=log,
            )
        except ApplyRefused as exc:
            log.warning("refused %s r%d: %s", change.key, change.revision, exc)
            await self._nack(change, exc.code, exc.message, retryable=False)
            return
        except ApiError as exc:
            # 403 (RBAC), 404, 409, 422 ...: the same request would be refused again
            log.error("Kubernetes refused %s r%d: %s", change.key, change.revision, exc)
            await self._nack(change, "rejected", f"{exc.status} {exc.reason}: {exc.message}", retryable=False)
            return
        except Exception as exc:  # nothing the control plane sends may wedge the stream
            log.exception("unexpected failure applying %s r%d", change.key, change.revision)
            await self._nack(change, "internal", f"{type(exc).__name__}: {exc}", retryable=False)
            return
        if isinstance(change, P.DesiredPut):
            # A control plane that deleted and re-created the object dropped its status, and when
            # the cluster's object did not change no new status would come: send the current one.
            self.out.reporter.resend(change.key)
        self.shared.beat()
