"""One open stream's way out: credit accounting, chunking, ``limitBytes``, the line bound.

Credit is counted exactly as the control plane counts it (``len(line.encode()) + 1`` per line, the
length of the compact JSON per object). A frame is built only from what the credit already covers,
so sending never waits on credit; only admitting the next line or object does, and that wait is
bounded: a stream the control plane stops crediting ends with ``limit`` instead of holding a task,
a Kubernetes connection and its buffers forever.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from choreo_wire import protocol as P

# A stream that gets no credit for this long ends with ``limit`` (its reader is gone or stuck).
CREDIT_WAIT = 60.0
# Appended to a log line cut at STREAM_MAX_LINE_BYTES (the whole marked line stays within it).
CUT_MARK = " [line cut]"
# StreamData.lines / objects hold at most this many entries (the wire's own bound).
MAX_ENTRIES = 10_000

Send = Callable[[P.Body], Awaitable[None]]


class StreamStop(Exception):
    """End the stream now with ``code`` (raised by producers and by the channel's bounds)."""

    def __init__(self, code: P.StreamEndCode, message: str = "", retry_after: float | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code: P.StreamEndCode = code
        self.message = message
        self.retry_after = retry_after


def bound_line(line: str, limit: int = P.STREAM_MAX_LINE_BYTES) -> str:
    """``line`` if it fits in ``limit`` bytes, else cut and marked."""
    return line if len(line.encode()) <= limit else cut_line(line, limit)


def cut_line(line: str, limit: int = P.STREAM_MAX_LINE_BYTES) -> str:
    """``line`` cut (on a character boundary) so that with the mark it fits in ``limit`` bytes."""
    room = limit - len(CUT_MARK.encode())
    return line.encode()[:room].decode(errors="ignore") + CUT_MARK


def object_cost(obj: dict[str, Any]) -> int:
    return len(json.dumps(obj, separators=(",", ":")).encode())


class Channel:
    def __init__(
        self,
        open_: P.StreamOpen,
        send: Send,
        *,
        credit_wait: float = CREDIT_WAIT,
        chunk_bytes: int = P.STREAM_CHUNK_BYTES,
    ) -> None:
        self.id = open_.id
        self.credit = open_.credit
        self.limit_bytes = open_.params.limit_bytes
        self.sent_bytes = 0
        self.frames = 0
        self._send = send
        self._credit_wait = credit_wait
        self._chunk_bytes = chunk_bytes
        self._credited = asyncio.Event()
        # one writer at a time: the parts of a logs stream share this channel
        self.lock = asyncio.Lock()

    async def accept(self) -> None:
        """Tell the control plane the stream is served (an empty ``stream.data``, seq 0) before any
        data: a quiet follow can start its HTTP response at once. Producers call it once their own
        checks passed, so a refusal still comes as the stream's only frame. A control plane that
        predates this sees an empty chunk and ignores it."""
        if self.frames == 0:
            await self._send(P.StreamData(id=self.id, seq=0))
            self.frames = 1

    def grant(self, n: int) -> None:
        self.credit += n
        self._credited.set()

    async def _admit(self, cost: int) -> None:
        """Wait (bounded) until the credit covers ``cost``."""
        if self.credit >= cost:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._credit_wait
        while self.credit < cost:
            self._credited.clear()
            left = deadline - loop.time()
            if left <= 0:
                raise StreamStop("limit", f"no credit from the control plane for {self._credit_wait:g}s")
            try:
                await asyncio.wait_for(self._credited.wait(), left)
            except TimeoutError:
                continue

    def _within_limit(self, pending: int, cost: int) -> bool:
        return self.limit_bytes is None or self.sent_bytes + pending + cost <= self.limit_bytes

    async def lines(self, lines: list[str]) -> None:
        """Send log lines (already prefixed), each bounded, in frames the credit covers."""
        await self._entries(
            [bound_line(line) for line in lines], lambda line: len(line.encode()) + 1, "lines"
        )

    async def objects(self, objects: list[dict[str, Any]], *, always: bool = False) -> None:
        """``always``: one (empty) frame even for no objects, for an answer that is a snapshot."""
        if always and not objects:
            await self._send(P.StreamData(id=self.id, seq=self.frames, objects=[]))
            self.frames += 1
            return
        await self._entries(objects, object_cost, "objects")

    async def _entries(self, entries: list[Any], cost_of: Callable[[Any], int], field: str) -> None:
        batch: list[Any] = []
        size = 0
        for entry in entries:
            cost = cost_of(entry)
            if not self._within_limit(size, cost):
                await self._flush(batch, size, field)
                raise StreamStop("limit", f"limitBytes {self.limit_bytes} reached")
            if batch and (
                size + cost > self._chunk_bytes or size + cost > self.credit or len(batch) >= MAX_ENTRIES
            ):
                await self._flush(batch, size, field)
                batch, size = [], 0
            await self._admit(cost)
            batch.append(entry)
            size += cost
        await self._flush(batch, size, field)

    async def _flush(self, batch: list[Any], size: int, field: str) -> None:
        if not batch:
            return
        self.credit -= size
        self.sent_bytes += size
        body = P.StreamData(id=self.id, seq=self.frames, **{field: batch})
        self.frames += 1
        await self._send(body)
        # sending yields only when the stream lane is full: a reader whose chunks are already
        # buffered would otherwise cut, encode and queue frame after frame in one turn of the
        # loop, and the agent's desired-state work (the same loop) would wait for all of them
        await asyncio.sleep(0)
