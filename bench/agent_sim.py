"""Lightweight simulated agents speaking the real tunnel protocol (``choreo_wire.protocol``).

A real agent is a Kubernetes client, a reporter and a session; thousands of them do not fit on two
cores. A simulated agent keeps only what the protocol needs: its "cluster" is a dict key -> spec
hash (plus the revision each key was written at), it answers a resync with the bucket digests and
inventory of that dict, applies incremental changes along the ``prev`` chain with the real agent's
duplicate rule (a revision at or below the high-water mark writes nothing), acknowledges at once,
sends heartbeats carrying its inventory summary at the interval ``welcome`` asks for, and
reconnects after ``goaway``/close with the retry the control plane asked for plus jitter.

It records what the rolling-restart invariants need: every delivery of ``(key, revision)``
(frames), every write it caused (effects), session counts, the time from losing a session to being
synced again (a move), and heartbeat round trips.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection, connect

from choreo_dp.kube.backoff import Backoff
from choreo_wire import protocol as p

OPEN_TIMEOUT = 30.0
HANDSHAKE_TIMEOUT = 30.0
# Reconnects as the real agent's (AgentConfig.backoff_base/cap, Agent.run): after a failure, full-jitter
# exponential backoff from 0.5 s to 30 s, reset once welcomed; after goaway, its retry_after x U(1, 1.5).
RECONNECT_BACKOFF = Backoff(base=0.5, cap=30.0)
REORDER_LIMIT = 256


@dataclass
class SimAgent:
    dataplane: str
    token: str
    epoch: str | None = None
    applied: int = 0
    items: dict[str, str] = field(default_factory=dict)  # the "cluster": key -> spec hash
    written_at: dict[str, int] = field(default_factory=dict)  # key -> revision of its last write
    deliveries: Counter[tuple[str, int]] = field(default_factory=Counter)
    effects: Counter[tuple[str, int]] = field(default_factory=Counter)
    sessions: int = 0
    resyncs: int = 0
    goaways: int = 0
    errors: list[str] = field(default_factory=list)  # error frames the control plane sent us
    failures: list[str] = field(default_factory=list)  # why sessions ended (other than goaway)
    synced: asyncio.Event = field(default_factory=asyncio.Event)
    lost_at: float | None = None  # when the last session ended
    moves: list[float] = field(default_factory=list)  # seconds from losing a session to synced again
    rtts: list[float] = field(default_factory=list)
    _digest: str | None = None

    def summary(self) -> p.InventorySummary:
        if self._digest is None:
            self._digest = p.inventory_digest(self.items)
        return p.InventorySummary(count=len(self.items), digest=self._digest, revision=self.applied)

    def write(self, key: str, revision: int, spec_hash: str | None) -> None:
        """One write into the simulated cluster (None: delete). Identical writes cost nothing, as in
        the real agent (an apply whose revision and hash match the annotations is skipped)."""
        if spec_hash is None:
            if key in self.items:
                del self.items[key]
                self.written_at.pop(key, None)
                self.effects[(key, revision)] += 1
        elif self.items.get(key) != spec_hash or self.written_at.get(key) != revision:
            self.items[key] = spec_hash
            self.written_at[key] = revision
            self.effects[(key, revision)] += 1
        self._digest = None


class _Ended(Exception):
    def __init__(self, retry_after: float | None, why: str) -> None:
        super().__init__(why)
        self.retry_after = retry_after


class _Session:
    """One connection of one simulated agent: handshake, then read frames and send heartbeats."""

    def __init__(self, agent: SimAgent, ws: ClientConnection) -> None:
        self.agent = agent
        self.ws = ws
        self.seq = p.Sequencer()
        self.hw = agent.applied  # received-and-written high-water mark of this connection
        self.pending: dict[int, p.DesiredPut | p.DesiredDelete] = {}  # by prev, waiting for the chain
        self.heartbeat_interval = 10.0
        self.sent: dict[str, float] = {}  # heartbeat id -> monotonic send time
        self.snapshot: tuple[int, list[int], set[str]] | None = None  # buckets, compared, named keys

    async def send(self, body: p.Body, corr: str | None = None) -> str:
        frame_id = p.new_id()
        await self.ws.send(p.encode(body, seq=self.seq.next(), corr=corr, id=frame_id))
        return frame_id

    async def handshake(self) -> None:
        a = self.agent
        await self.send(
            p.Hello(
                dataplane_id=a.dataplane,
                versions=[p.PROTOCOL_VERSION],
                epoch=a.epoch,
                applied_revision=a.applied,
                agent_version="bench-sim",
                inventory_count=len(a.items),
            )
        )
        welcome = p.decode(await asyncio.wait_for(self.ws.recv(), HANDSHAKE_TIMEOUT))
        if not isinstance(welcome.body, p.Welcome):
            await self.dispatch(welcome)  # goaway / error before welcome
            raise _Ended(None, f"expected welcome, got {welcome.type}")
        self.heartbeat_interval = welcome.body.heartbeat_interval
        if welcome.body.mode == "resync":
            a.resyncs += 1
            # synced is set by snapshot.end
        else:
            a.epoch = welcome.body.epoch
            self._synced()

    def _synced(self) -> None:
        a = self.agent
        if a.lost_at is not None:
            a.moves.append(time.monotonic() - a.lost_at)
            a.lost_at = None
        a.synced.set()

    async def run(self) -> None:
        beats = asyncio.create_task(self._heartbeats())
        try:
            while True:
                frame = p.decode(await self.ws.recv())
                await self.dispatch(frame)
        finally:
            beats.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await beats

    async def _heartbeats(self) -> None:
        # Spread over the interval so N agents do not beat in step.
        await asyncio.sleep(random.uniform(0, self.heartbeat_interval))
        while True:
            a = self.agent
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            t0 = time.monotonic()
            frame_id = await self.send(
                p.Heartbeat(time=now, applied_revision=a.applied, inventory=a.summary())
            )
            self.sent[frame_id] = t0
            if len(self.sent) > 64:  # echoes that never came (the session is about to end)
                self.sent.pop(next(iter(self.sent)))
            await asyncio.sleep(self.heartbeat_interval)

    async def dispatch(self, frame: p.Frame) -> None:
        body = frame.body
        a = self.agent
        if isinstance(body, p.Heartbeat):
            if frame.envelope.corr is not None:
                t0 = self.sent.pop(frame.envelope.corr, None)
                if t0 is not None:
                    a.rtts.append(time.monotonic() - t0)
            else:
                await self.send(p.Heartbeat(time=body.time, applied_revision=a.applied), corr=frame.id)
        elif isinstance(body, p.DesiredPut | p.DesiredDelete):
            a.deliveries[(body.key, body.revision)] += 1
            if body.prev is None and self.snapshot is not None:
                assert isinstance(body, p.DesiredPut)
                self.snapshot[2].add(body.key)
                a.write(body.key, body.revision, body.spec_hash)
                return
            await self._chain(body)
        elif isinstance(body, p.SnapshotBegin):
            mine = p.bucket_digests(a.items, body.buckets)
            theirs = p.decode_digests(body.digests, body.buckets)
            compared = p.differing_buckets(mine, theirs)
            self.snapshot = (body.buckets, compared, set())
            for inv in p.inventory_frames(compared, p.in_buckets(a.items, compared, body.buckets)):
                await self.send(inv)
        elif isinstance(body, p.SnapshotKeys):
            if self.snapshot is not None:
                self.snapshot[2].update(body.keys)
        elif isinstance(body, p.SnapshotEnd):
            if self.snapshot is not None:
                buckets, compared, named = self.snapshot
                for key in list(p.in_buckets(a.items, compared, buckets)):
                    if key not in named:  # the control plane no longer has it
                        a.write(key, body.revision, None)
            self.snapshot = None
            a.epoch = body.epoch
            a.applied = self.hw = body.revision
            await self.send(p.Applied(revision=a.applied, epoch=a.epoch))
            self._synced()
        elif isinstance(body, p.GoAway):
            a.goaways += 1
            raise _Ended(body.retry_after, f"goaway: {body.reason}")
        elif isinstance(body, p.Error):
            a.errors.append(f"{body.code}: {body.message}"[:300])

    async def _chain(self, change: p.DesiredPut | p.DesiredDelete) -> None:
        a = self.agent
        if change.revision <= self.hw:  # a duplicate: nothing written, the ack repeated
            await self.send(p.Applied(revision=a.applied, epoch=a.epoch))
            return
        if change.prev != self.hw:
            if len(self.pending) >= REORDER_LIMIT:
                raise _Ended(None, "reorder buffer full")
            self.pending[change.prev or 0] = change
            return
        while True:
            spec_hash = change.spec_hash if isinstance(change, p.DesiredPut) else None
            a.write(change.key, change.revision, spec_hash)
            self.hw = a.applied = change.revision
            nxt = self.pending.pop(self.hw, None)
            if nxt is None:
                break
            change = nxt
        await self.send(p.Applied(revision=a.applied, epoch=a.epoch))


class Simulator:
    """N simulated agents against ``wss://host:port`` (a load balancer or one control plane)."""

    def __init__(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext,
        agents: list[SimAgent],
        connect_concurrency: int = 50,
    ) -> None:
        self.url = f"wss://{host}:{port}{p.TUNNEL_PATH}"
        self.ssl = ssl_context
        self.agents = agents
        self.gate = asyncio.Semaphore(connect_concurrency)
        self.stopping = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._live(a), name=f"sim-{a.dataplane}") for a in self.agents]

    def synced(self) -> int:
        return sum(a.synced.is_set() for a in self.agents)

    async def wait_synced(self, timeout: float) -> float:
        """Seconds until every agent is synced; TimeoutError naming how many are not."""
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(asyncio.gather(*(a.synced.wait() for a in self.agents)), timeout)
        except TimeoutError:
            raise TimeoutError(
                f"{len(self.agents) - self.synced()} of {len(self.agents)} agents not synced"
            ) from None
        return time.monotonic() - t0

    async def stop(self) -> None:
        self.stopping.set()
        for t in self.tasks:
            t.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=30)

    async def _live(self, a: SimAgent) -> None:
        attempt = 0
        while not self.stopping.is_set():
            retry: float | None = None
            try:
                async with self.gate:
                    ws = await connect(
                        self.url,
                        subprotocols=[p.SUBPROTOCOL],  # type: ignore[list-item]
                        additional_headers={"Authorization": f"Bearer {a.token}"},
                        ssl=self.ssl,
                        open_timeout=OPEN_TIMEOUT,
                        ping_interval=10.0,  # as the real agent (AgentConfig)
                        ping_timeout=10.0,
                        close_timeout=2.0,
                        max_size=p.TRANSPORT_MAX_BYTES,
                        max_queue=16,
                        compression=None,
                    )
                    a.sessions += 1
                    session = _Session(a, ws)
                    try:
                        await session.handshake()
                    except BaseException:
                        await ws.close()
                        raise
                attempt = 0
                try:
                    await session.run()
                finally:
                    await ws.close()
            except asyncio.CancelledError:
                raise
            except _Ended as ended:
                retry = ended.retry_after
                if ended.retry_after is None:
                    a.failures.append(str(ended))
            except (websockets.ConnectionClosed, websockets.InvalidStatus, OSError, TimeoutError) as exc:
                a.failures.append(f"{exc.__class__.__name__}: {exc}"[:200])
            except p.ProtocolError as exc:
                a.failures.append(f"protocol: {exc}"[:200])
            if a.synced.is_set():
                a.synced.clear()
                a.lost_at = time.monotonic()
            if retry is not None:
                delay = retry * random.uniform(1.0, 1.5)
            else:
                delay = RECONNECT_BACKOFF.delay(attempt)
                attempt += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)


def invariants(agents: list[SimAgent], pushed: dict[str, tuple[str, int]]) -> dict[str, Any]:
    """What the rolling restart must keep: every pushed revision delivered and written exactly once.

    ``pushed``: dataplane -> (key, revision) acknowledged by a 202. Also counts, over everything any
    agent received, deliveries and writes of one ``(key, revision)`` more than once."""
    by_dp = {a.dataplane: a for a in agents}
    lost = [dp for dp, kr in pushed.items() if by_dp[dp].effects[kr] == 0]
    dup_effects = sum(1 for a in agents for n in a.effects.values() if n > 1)
    dup_deliveries = sum(1 for a in agents for n in a.deliveries.values() if n > 1)
    behind = [dp for dp, (_, rev) in pushed.items() if by_dp[dp].applied < rev]
    return {
        "pushed": len(pushed),
        "lost": len(lost),
        "lost_examples": lost[:5],
        "duplicate_effects": dup_effects,
        "duplicate_deliveries": dup_deliveries,
        "behind": len(behind),
        "error_frames": sum(len(a.errors) for a in agents),
        "error_examples": [e for a in agents for e in a.errors][:3],
    }
