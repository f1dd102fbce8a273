"""On-demand streams at the control plane: limits, the registry of open streams, credit policy.

A stream is one HTTP request (logs, events, live state) carried over its data plane's tunnel
session as ``stream.open`` / ``stream.data`` / ``stream.credit`` / ``stream.end``
(choreo_wire.protocol, "on-demand streams"). Nothing of its content is stored or logged here.

Memory is bounded by credit: the agent may send only what was granted, and grants follow what the
HTTP client has consumed, so a stream never holds more than its window (plus one chunk of slack
for an agent that counts payload bytes slightly differently). Grants are paced so that a stream
averages at most ``bytes_per_second``: log traffic cannot crowd the tunnel however fast the client
reads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from choreo_wire import protocol as p

log = logging.getLogger(__name__)


@dataclass
class StreamLimits:
    """Bounds of on-demand streams (docs/controlplane.md, "Logs, events and live state")."""

    # Open streams per dataplane, and per client address across all dataplanes; beyond -> 429.
    per_dataplane: int = 10
    per_client: int = 20
    # Credit window: what the agent may send ahead of the HTTP client (the stream's buffer bound).
    window_bytes: int = p.STREAM_INITIAL_CREDIT
    # Average payload rate of one stream (credit grants are paced to it).
    bytes_per_second: int = 1 << 20
    # Total bytes of a request that does not follow, unless it asks for less (limitBytes).
    default_limit_bytes: int = 10 << 20
    # A stream with no data for this long ends (code limit); an HTTP stream has no other activity.
    idle_timeout: float = 300.0
    # How long the agent has to answer stream.open (first data or end) before 504; a follow
    # request that is merely quiet is started instead (its data may come later).
    answer_timeout: float = 5.0
    # Retry-After of a 429 (no slot) or a 503 (data plane not connected).
    retry_after: float = 5.0


@dataclass(frozen=True)
class Hop:
    """How this replica hands a stream request to the replica holding the dataplane's session
    (several replicas on PostgreSQL; see forward.py)."""

    # shared by the replicas through the store: marks a handed-over request (see Sessions.hop_secret)
    secret: str
    # the admin token authenticates the hop like any REST call
    token: str
    # verify an https owner with this CA bundle as well as the system's (a self-signed serving cert)
    ca_file: str | None = None
    # present this certificate when the owners require client certificates (--client-ca)
    client_cert: tuple[str, str] | None = None


class StreamRefused(Exception):
    """The control plane refuses a stream before asking the agent (429 or 503)."""

    def __init__(self, status: int, code: str, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


@runtime_checkable
class StreamPeer(Protocol):
    """What a stream needs of a tunnel session: which dataplane, and a way to queue a frame."""

    @property
    def dataplane(self) -> str: ...

    def send_soon(self, body: p.Body, corr: str | None = None) -> None: ...


def line_bytes(line: str) -> int:
    return len(line.encode()) + 1


def object_bytes(obj: dict[str, object]) -> int:
    return len(json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode())


def payload_bytes(data: p.StreamData) -> int:
    """What a stream.data costs in credit (the wire's rule: lines + newline, objects as compact JSON)."""
    return sum(line_bytes(x) for x in data.lines) + sum(object_bytes(o) for o in data.objects)


Item = p.StreamData | p.StreamEnd


class Source(Protocol):
    """What an HTTP response reads a stream from: a local :class:`Stream` or a stream another
    replica serves (forward.RemoteStream)."""

    @property
    def limits(self) -> StreamLimits: ...

    @property
    def end(self) -> p.StreamEnd | None: ...

    async def answer(self, timeout: float, *, ack_starts: bool) -> Item | None: ...

    async def next(self, timeout: float) -> Item | None: ...

    def consumed(self, size: int) -> None: ...

    def finish(self, code: p.StreamEndCode, message: str) -> None: ...

    def close(self) -> None: ...


class Stream:
    """One open stream: the agent's frames buffered for one HTTP response, and its credit."""

    def __init__(
        self,
        registry: StreamRegistry,
        peer: StreamPeer,
        kind: p.StreamKind,
        key: str,
        params: p.StreamParams,
        client: str,
    ) -> None:
        self.registry = registry
        self.peer = peer
        self.id = p.new_id()
        self.dataplane = peer.dataplane
        self.kind: p.StreamKind = kind
        self.key = key
        self.params = params
        self.client = client
        self.limits = registry.limits
        self.window = max(1, self.limits.window_bytes)
        # None: unbounded (a follow without limitBytes; still paced, still idle-bounded)
        self.limit_bytes = params.limit_bytes
        self.started = time.monotonic()
        self.granted = self.window
        self.received = 0
        self.delivered = 0
        self.answered = False
        # the agent acknowledged the open (an empty stream.data, seq 0) before any data
        self.accepted = False
        self._owed = 0
        self._items: deque[p.StreamData] = deque()
        self._end: p.StreamEnd | None = None
        self._agent_done = False
        self._closed = False
        self._wake = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None

    # -- from the tunnel session ---------------------------------------------------------------
    def open_frame(self) -> p.StreamOpen:
        return p.StreamOpen(id=self.id, kind=self.kind, key=self.key, params=self.params, credit=self.window)

    def on_data(self, data: p.StreamData) -> None:
        if self._agent_done or self._end is not None:
            return  # frames in flight after a cancel
        self.answered = True
        if data.seq == 0 and not data.lines and not data.objects:
            self.accepted = True
            self._wake.set()
            return
        size = payload_bytes(data)
        self.received += size
        if self.received > self.granted + p.STREAM_CHUNK_BYTES:
            self._finish_locally(
                "error", f"the data plane sent {self.received - self.granted} bytes beyond its credit"
            )
            return
        if self.limit_bytes is not None and self.received > self.limit_bytes:
            data = _cut(data, size - (self.received - self.limit_bytes))
            if data.lines or data.objects:
                self._items.append(data)
            self._finish_locally("limit", f"limitBytes {self.limit_bytes} reached")
            return
        if data.lines or data.objects:
            self._items.append(data)
        self._wake.set()

    def on_end(self, end: p.StreamEnd) -> None:
        if self._agent_done or self._end is not None:
            return
        self.answered = True
        self._agent_done = True
        self._end = end
        self._cancel_timer()
        self._wake.set()

    def on_disconnect(self, reason: str) -> None:
        if self._agent_done or self._end is not None:
            return
        self._agent_done = True
        self._end = p.StreamEnd(
            id=self.id, code="disconnected", message=f"the data plane disconnected: {reason}"[:4096]
        )
        self._cancel_timer()
        self._wake.set()

    # -- from the HTTP response ------------------------------------------------------------------
    async def next(self, timeout: float) -> Item | None:
        """The next chunk, then the end; None when nothing came within ``timeout``."""
        while not self._items and self._end is None:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                return None
        if self._items:
            return self._items.popleft()
        return self._end

    async def answer(self, timeout: float, *, ack_starts: bool) -> Item | None:
        """The agent's answer to the open: its first chunk or its end, or (``ack_starts``) an empty
        chunk as soon as it acknowledged the open; None when nothing came within ``timeout``. An
        agent that sends no acknowledgement is answered by its first data, as before."""
        while not self._items and self._end is None and not (ack_starts and self.accepted):
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                return None
        if self._items:
            return self._items.popleft()
        if self._end is not None:
            return self._end
        return p.StreamData(id=self.id, seq=0)

    def consumed(self, size: int) -> None:
        """The HTTP client took ``size`` bytes of payload: the agent may send as much again (paced)."""
        self.delivered += size
        self._owed += size
        self._grant()

    def finish(self, code: p.StreamEndCode, message: str) -> None:
        """End the stream from this side (idle, a limit): the agent is told to stop."""
        self._finish_locally(code, message)

    def close(self) -> None:
        """The HTTP response is over: release the slot and stop the agent if it still runs."""
        if self._closed:
            return
        self._closed = True
        self._cancel_timer()
        if not self._agent_done:
            self._agent_done = True
            if self._end is None:
                self._end = p.StreamEnd(id=self.id, code="cancelled", message="the client went away")
            self.peer.send_soon(p.StreamEnd(id=self.id, code="cancelled", message=self._end.message))
        self.registry.remove(self)

    @property
    def end(self) -> p.StreamEnd | None:
        return self._end

    # -- credit ----------------------------------------------------------------------------------
    def _finish_locally(self, code: p.StreamEndCode, message: str) -> None:
        self._end = p.StreamEnd(id=self.id, code=code, message=message)
        if not self._agent_done:
            self._agent_done = True
            self.peer.send_soon(p.StreamEnd(id=self.id, code="cancelled", message=message))
        self._cancel_timer()
        self._wake.set()

    def _grant(self) -> None:
        if self._agent_done or self._timer is not None or self._owed <= 0:
            return
        # Small grants would cost a frame per chunk: wait for a quarter window unless the agent is
        # nearly out of credit (then a slow trickle must not stall).
        quarter = max(1, self.window // 4)
        outstanding = self.granted - self.received
        if self._owed < quarter and outstanding >= quarter:
            return
        step = min(self._owed, quarter)
        rate = max(1, self.limits.bytes_per_second)
        allowance = self.window + rate * (time.monotonic() - self.started) - self.granted
        if allowance >= step:
            amount = int(min(self._owed, allowance, 16 << 20))
            self._owed -= amount
            self.granted += amount
            self.peer.send_soon(p.StreamCredit(id=self.id, bytes=amount))
            return
        self._timer = asyncio.get_running_loop().call_later((step - allowance) / rate, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self._grant()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _cut(data: p.StreamData, budget: int) -> p.StreamData:
    """The leading lines/objects of ``data`` that fit in ``budget`` bytes."""
    lines: list[str] = []
    objects: list[dict[str, object]] = []
    for line in data.lines:
        budget -= line_bytes(line)
        if budget < 0:
            break
        lines.append(line)
    for obj in data.objects:
        budget -= object_bytes(obj)
        if budget < 0:
            break
        objects.append(obj)
    return p.StreamData(id=data.id, seq=data.seq, lines=lines, objects=objects)


@dataclass
class StreamRegistry:
    """Every open stream, by dataplane and id; the per-dataplane and per-client slots."""

    limits: StreamLimits = field(default_factory=StreamLimits)
    # set when several replicas share the store: requests of a dataplane whose session is elsewhere
    # are handed to the replica holding it
    hop: Hop | None = None
    _by_dp: dict[str, dict[str, Stream]] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def open(
        self, peer: StreamPeer, kind: p.StreamKind, key: str, params: p.StreamParams, client: str
    ) -> Stream:
        """Take a slot and send stream.open; raises :class:`StreamRefused` (429) when none is free."""
        streams = self._by_dp.setdefault(peer.dataplane, {})
        limit = min(self.limits.per_dataplane, p.STREAM_MAX_CONCURRENT)
        if len(streams) >= limit:
            raise StreamRefused(
                429,
                "limit",
                f"{limit} streams are open on dataplane {peer.dataplane!r}",
                self.limits.retry_after,
            )
        mine = sum(1 for s in self.all() if s.client == client)
        if mine >= self.limits.per_client:
            raise StreamRefused(
                429,
                "limit",
                f"{self.limits.per_client} streams are open from this client",
                self.limits.retry_after,
            )
        stream = Stream(self, peer, kind, key, params, client)
        streams[stream.id] = stream
        peer.send_soon(stream.open_frame())
        return stream

    def remove(self, stream: Stream) -> None:
        streams = self._by_dp.get(stream.dataplane)
        if streams is not None and streams.get(stream.id) is stream:
            del streams[stream.id]
            if not streams:
                del self._by_dp[stream.dataplane]

    def all(self) -> list[Stream]:
        return [s for streams in self._by_dp.values() for s in streams.values()]

    def count(self, dataplane: str) -> int:
        return len(self._by_dp.get(dataplane, {}))

    def deliver(self, peer: StreamPeer, body: p.StreamData | p.StreamEnd) -> None:
        """A frame from ``peer``'s agent; frames of streams that are over (or of another session) are dropped."""
        stream = self._by_dp.get(peer.dataplane, {}).get(body.id)
        if stream is None or stream.peer is not peer:
            return
        if isinstance(body, p.StreamData):
            stream.on_data(body)
        else:
            stream.on_end(body)

    def session_ended(self, peer: StreamPeer, reason: str) -> int:
        """End every stream of a finished session with code disconnected; how many there were."""
        ended = [s for s in self._by_dp.get(peer.dataplane, {}).values() if s.peer is peer]
        for stream in ended:
            stream.on_disconnect(reason)
        return len(ended)

    def run_soon(self, what: str, make: Callable[[], Awaitable[object]]) -> None:
        """Run a bookkeeping coroutine (an audit write) outside the request's cancellation."""
        if len(self._tasks) >= 1000:
            log.warning("%s dropped: too many pending", what)
            return

        async def guarded() -> None:
            try:
                await make()
            except Exception as exc:
                log.warning("%s failed: %s", what, exc)

        task = asyncio.get_running_loop().create_task(guarded(), name=what)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: float) -> None:
        """Wait (bounded) for pending bookkeeping, e.g. before the store closes."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
