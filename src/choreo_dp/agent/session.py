"""One connected tunnel session: hello/welcome, then its three directions until the connection ends.

The session ends when the connection closes (for whatever reason); the agent loop reconnects. All
state that matters survives in the cluster (objects and the DataPlane status), so ending a session
anywhere loses nothing: unacknowledged changes are redelivered and redelivery is idempotent.

The directions live in their own modules: :mod:`~choreo_dp.agent.inbound` (changes from the
control plane, applied), :mod:`~choreo_dp.agent.snapshot` (resync) and
:mod:`~choreo_dp.agent.outbound` (acknowledgements, status, heartbeats).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from choreo_dp.agent import guards as G
from choreo_dp.agent.cluster import ClusterStore
from choreo_dp.agent.dpstatus import DataPlaneStatus
from choreo_dp.agent.inbound import APPLY_WINDOW, UNACKED_LIMIT, Inbound
from choreo_dp.agent.outbound import OUTQ_FRAMES, STATUS_COALESCE, Outbound
from choreo_dp.agent.shared import SessionEnded, SessionState, State
from choreo_dp.agent.snapshot import SNAPSHOT_INCONSISTENT, Resync, Snapshot
from choreo_dp.agent.statusreport import StatusReporter
from choreo_dp.agent.stream import ChainBroken, ChangeStream
from choreo_dp.agent.streams import StreamManager
from choreo_dp.observability.health import Liveness
from choreo_wire import protocol as P

__all__ = [
    "AGENT_VERSION",
    "APPLY_WINDOW",
    "OUTQ_FRAMES",
    "SNAPSHOT_INCONSISTENT",
    "STATUS_COALESCE",
    "UNACKED_LIMIT",
    "Session",
    "SessionEnded",
    "SessionResult",
]

log = logging.getLogger(__name__)

AGENT_VERSION = "choreo-dp-agent/0.1"
WELCOME_TIMEOUT = 10.0


@dataclass
class SessionResult:
    welcomed: bool = False
    retry_after: float | None = None
    reason: str = "closed"


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
        observability: bool = True,
    ) -> None:
        self.ws = ws
        self.dataplane_id = dataplane_id
        self.store = store
        self.dp = dp
        self.reporter = reporter
        self.result = SessionResult()
        self.welcome: P.Welcome | None = None  # the control plane's answer (session id, mode), for logs
        self.shared = SessionState(
            liveness=liveness,
            stream=ChangeStream(base=dp.applied_revision),
            persisted=dp.applied_revision,
        )
        self.outbound = Outbound(ws, self.shared, dp=dp, reporter=reporter)
        self.resync = Resync(self.shared, self.outbound, store=store, dp=dp)
        # on-demand streams live and die with the session: their frames go nowhere after it
        self.streams = StreamManager(
            store.kube,
            store,
            self.outbound.send_stream,
            self.outbound.send_stream_soon,
            enabled=observability,
        )
        self.inbound = Inbound(
            ws,
            self.shared,
            self.outbound,
            self.resync,
            store=store,
            window=window,
            unacked_limit=unacked_limit,
            streams=self.streams,
        )

    # read-only views for metrics, tests and introspection
    @property
    def state(self) -> State:
        return self.shared.state

    @property
    def epoch(self) -> str:
        return self.shared.epoch

    @property
    def persisted(self) -> int:
        return self.shared.persisted

    @property
    def stream(self) -> ChangeStream:
        return self.shared.stream

    @property
    def snapshot(self) -> Snapshot | None:
        return self.resync.snapshot

    @property
    def tasks(self) -> set[asyncio.Task[None]]:
        return self.inbound.tasks

    @property
    def outq(self) -> asyncio.Queue[tuple[str, list[P.StatusItem] | None]]:
        return self.outbound.outq

    @property
    def errors_dropped(self) -> int:
        return self.outbound.errors_dropped

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
        await self.outbound.send_now(hello)
        welcome = await self._await_welcome()
        if welcome is None:
            return self.result
        self.result.welcomed = True
        self.welcome = welcome
        self.shared.epoch = welcome.epoch
        self.outbound.heartbeat_interval = min(
            max(welcome.heartbeat_interval, G.HEARTBEAT_MIN_SECONDS), G.HEARTBEAT_MAX_SECONDS
        )
        if welcome.mode == "incremental":
            if welcome.epoch != self.dp.epoch:
                self.outbound.send_soon(
                    P.Error(code="protocol", message="incremental mode in a different epoch")
                )
                self.result.reason = "protocol"
                return self.result
            self.shared.state = "incremental"
        else:
            self.shared.state = "await_snapshot"
        # Statuses are not acknowledged: what the last session sent may have died with it (in its
        # socket, or in a control plane killed before writing it). Every session starts level-based.
        self.reporter.resend_all()
        await self.outbound.mark_connected(welcome.epoch)
        helpers = [
            asyncio.create_task(self.outbound.sender(), name="tunnel-sender"),
            asyncio.create_task(self.outbound.acker(), name="tunnel-acker"),
            asyncio.create_task(self.outbound.status_flusher(), name="tunnel-status"),
            asyncio.create_task(self.outbound.heartbeats(), name="tunnel-heartbeat"),
        ]
        reader: asyncio.Task[None] | None = None
        try:
            if self.shared.state == "incremental":
                await self.resync.report_orphans(None)
            reader = asyncio.create_task(self.inbound.reader(), name="tunnel-reader")
            done, _ = await asyncio.wait([reader, *helpers], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = task.exception()
                if isinstance(exc, SessionEnded | ChainBroken):
                    self.result.reason = str(exc)
                    log.warning("tunnel session ended: %s", exc)
                elif exc is not None and not isinstance(exc, ConnectionClosed):
                    raise exc
        except SessionEnded as exc:
            self.result.reason = str(exc)
            log.warning("tunnel session ended: %s", exc)
        finally:
            if self.inbound.goaway is not None:
                self.result.retry_after = self.inbound.goaway.retry_after
            running = [
                t
                for t in (reader, *helpers, *self.inbound.tasks, self.inbound.heartbeat_renewal)
                if t is not None
            ]
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            await self.streams.close()
            self.outbound.give_back()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 2.0)
        return self.result

    async def _await_welcome(self) -> P.Welcome | None:
        async with asyncio.timeout(WELCOME_TIMEOUT):
            async for raw in self.ws:
                try:
                    frame = P.decode(raw)
                except P.ProtocolError as exc:
                    await self.outbound.send_now(exc.to_error())
                    continue
                body = frame.body
                if isinstance(body, P.Welcome):
                    if body.version not in P.SUPPORTED_VERSIONS:
                        await self.outbound.send_now(
                            P.Error(code="unsupported_version", message=str(body.version))
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
