"""The agent's outbound direction: frames to the control plane, acknowledgements, status, heartbeats.

Everything goes through one bounded queue and one sender task, so the order of frames is the
order they were queued and a slow control plane slows the producers instead of growing memory.
On-demand streams (logs, events, live state) have a second bounded lane that the sender serves only
when the first is empty: desired-state traffic (acks, nacks, status, heartbeats, inventory) is
never queued behind log lines, and a stream's producer blocks on its lane, not on the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TypeVar

from websockets.asyncio.client import ClientConnection

from choreo_dp.agent import metrics as M
from choreo_dp.agent.dpstatus import DataPlaneStatus
from choreo_dp.agent.shared import SessionState, durable
from choreo_dp.agent.statusreport import StatusReporter, now_ms
from choreo_dp.kube import ApiError
from choreo_dp.kube.backoff import is_retryable
from choreo_wire import protocol as P

log = logging.getLogger("choreo_dp.agent.session")
T = TypeVar("T")

OUTQ_FRAMES = 1024
# stream.data frames are up to STREAM_CHUNK_BYTES of payload: 16 queued are at most ~1 MiB
STREAM_LANE_FRAMES = 16
STATUS_COALESCE = 0.05  # seconds to let a burst of status changes collapse into one batch
HEARTBEAT_DEFAULT = 15.0
SUMMARY_SPACING = 1.0  # seconds between heartbeats sent early for an inventory summary


class _Lane(asyncio.Queue[T]):
    """A bounded queue that tells the sender when anything is put on it (either lane)."""

    def __init__(self, maxsize: int, queued: asyncio.Event) -> None:
        super().__init__(maxsize)
        self._queued = queued

    def put_nowait(self, item: T) -> None:
        super().put_nowait(item)
        self._queued.set()


class Outbound:
    def __init__(
        self, ws: ClientConnection, shared: SessionState, *, dp: DataPlaneStatus, reporter: StatusReporter
    ) -> None:
        self.ws = ws
        self.shared = shared
        self.dp = dp
        self.reporter = reporter
        self.seq = P.Sequencer()
        self.queued = asyncio.Event()
        self.outq: asyncio.Queue[tuple[str, list[P.StatusItem] | None]] = _Lane(OUTQ_FRAMES, self.queued)
        # the low-priority lane of on-demand streams: served only when outq is empty
        self.streamq: asyncio.Queue[str] = _Lane(STREAM_LANE_FRAMES, self.queued)
        self.stream_frames_dropped = 0
        self.ack_wakeup = asyncio.Event()
        self.errors_dropped = 0
        self.heartbeat_interval = HEARTBEAT_DEFAULT
        # set when the inventory settled at a new revision: the next heartbeat goes out early, so
        # the control plane can judge "in sync" right after an acknowledgement, not a period later
        self.summary_due = asyncio.Event()

    async def send_now(self, body: P.Body) -> None:
        """Before the sender runs (hello, errors before welcome): straight onto the socket."""
        await self.ws.send(self.seq.encode(body))

    async def send(self, body: P.Body, corr: str | None = None) -> None:
        await self.outq.put((self.seq.encode(body, corr=corr), None))

    def send_soon(self, body: P.Body, corr: str | None = None) -> None:
        """For error frames: never block the reader; drop when the queue is full (counted)."""
        try:
            self.outq.put_nowait((self.seq.encode(body, corr=corr), None))
        except asyncio.QueueFull:
            self.errors_dropped += 1

    async def send_stream(self, body: P.Body) -> None:
        """A frame of an on-demand stream: waits while the stream lane is full."""
        await self.streamq.put(self.seq.encode(body))

    def send_stream_soon(self, body: P.Body) -> bool:
        """A stream refusal or cancellation confirmation from the reader: never blocks; False (and
        counted) when the lane is full."""
        try:
            self.streamq.put_nowait(self.seq.encode(body))
        except asyncio.QueueFull:
            self.stream_frames_dropped += 1
            return False
        return True

    def give_back(self) -> None:
        """At the end of a session: status items still queued were never sent."""
        while not self.outq.empty():
            _, items = self.outq.get_nowait()
            if items:
                self.reporter.requeue(items)

    async def mark_connected(self, epoch: str) -> None:
        """Best effort: the tunnel works even while the DataPlane cannot be written."""
        try:
            await self.dp.set_connected(True, "Connected", f"session with epoch {epoch}")
        except ApiError as exc:
            _log_status_failure("the connection", exc)
        except Exception as exc:
            if not is_retryable(exc):
                raise
            _log_status_failure("the connection", exc)

    async def record_heartbeat(self) -> None:
        """The control plane answered a heartbeat: note it on the DataPlane, best effort. The
        write is cosmetic (lastHeartbeatTime); an API outage must not end the session, let alone
        the agent."""
        try:
            await self.dp.heartbeat()
        except ApiError as exc:
            _log_status_failure("the heartbeat", exc)
        except Exception as exc:
            if not is_retryable(exc):
                raise
            _log_status_failure("the heartbeat", exc)

    async def flush_desired_copy(self) -> None:
        """The offline copy of the desired specs first: an acknowledged spec always has its copy."""
        desired = self.reporter.store.desired

        async def flush() -> None:
            await desired.flush()

        await durable(flush, "writing the desired copy")

    def inventory_summary(self) -> P.InventorySummary | None:
        """The anti-entropy line of the agent's own heartbeats: what the cluster holds, hashed from
        its specs, at the persisted revision. Only when nothing is in flight, because then the
        inventory is exactly that revision's; a summary of a moving state would only make the
        control plane ask for needless resyncs."""
        stream = self.shared.stream
        if self.shared.state != "incremental" or stream.in_flight or stream.acked != self.shared.persisted:
            return None
        inventory = self.reporter.store.inventory()
        return P.InventorySummary(
            count=len(inventory), digest=P.inventory_digest(inventory), revision=self.shared.persisted
        )

    async def acknowledge(self, epoch: str, revision: int) -> None:
        """Persist first: an acknowledged revision must survive a crash of the agent."""
        await self.flush_desired_copy()
        await durable(lambda: self.dp.persist_revision(epoch, revision), f"persisting revision {revision}")
        self.shared.persisted = revision
        M.APPLIED_REVISION.set(revision)
        await self.send(P.Applied(revision=revision, epoch=epoch))
        self.summary_due.set()

    # --- the session's outbound tasks --------------------------------------------------------

    async def _next(self) -> tuple[str, list[P.StatusItem] | None]:
        """The next frame: the main lane first, the stream lane only when the main one is empty."""
        while True:
            if not self.outq.empty():
                return self.outq.get_nowait()
            if not self.streamq.empty():
                return self.streamq.get_nowait(), None
            # nothing awaits between the checks and the clear: a put cannot slip through
            self.queued.clear()
            await self.queued.wait()

    async def sender(self) -> None:
        while True:
            text, items = await self._next()
            try:
                await self.ws.send(text)
            except BaseException:
                if items:
                    self.reporter.requeue(items)
                raise

    async def acker(self) -> None:
        while True:
            await self.ack_wakeup.wait()
            self.ack_wakeup.clear()
            target = self.shared.stream.acked
            if target <= self.shared.persisted:
                continue
            await self.acknowledge(self.shared.epoch, target)

    async def status_flusher(self) -> None:
        while True:
            await self.reporter.changed.wait()
            await asyncio.sleep(STATUS_COALESCE)
            while True:
                items = self.reporter.take()
                if not items:
                    break
                try:
                    await self._queue_statuses(items)
                except BaseException:
                    # cancelled (the session ends) while the queue was full: not lost, queued again
                    self.reporter.requeue(items)
                    raise

    async def _queue_statuses(self, items: list[P.StatusItem]) -> None:
        try:
            text = self.seq.encode(P.StatusBatch(items=items))
        except P.FrameTooLarge:
            # statuses are small; if not, send them one by one and drop any still too big
            for item in items:
                with contextlib.suppress(P.FrameTooLarge):
                    await self.outq.put((self.seq.encode(P.StatusBatch(items=[item])), [item]))
            return
        await self.outq.put((text, items))

    async def heartbeats(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        early = -SUMMARY_SPACING  # when the last early one went out
        while True:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for returns normally when the task is
            # cancelled just as the event is set, and this loop would then outlive its session
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, last + self.heartbeat_interval - loop.time())):
                    await self.summary_due.wait()
            if self.summary_due.is_set():
                # early ones at most every SUMMARY_SPACING: a burst of acknowledgements sends few
                await asyncio.sleep(max(0.0, early + SUMMARY_SPACING - loop.time()))
                early = loop.time()
            self.summary_due.clear()
            last = loop.time()
            await self.send(
                P.Heartbeat(
                    time=now_ms(), applied_revision=self.shared.persisted, inventory=self.inventory_summary()
                )
            )
            self.shared.beat()


def _log_status_failure(what: str, exc: Exception) -> None:
    # an outage is a warning (it passes); a refusal (RBAC on dataplanes/status) needs someone to act
    level = logging.WARNING if is_retryable(exc) else logging.ERROR
    log.log(level, "cannot record %s on the DataPlane: %s", what, exc)
