"""Split a byte stream into lines with a bound of our choosing.

aiohttp's ``StreamReader`` iterates lines with its own bound (twice its 64 KiB buffer), and a
longer watch event (a ConfigMap of 300 KiB, an object with a large annotation) raises
``LineTooLong`` out of the watch. A watch event is one JSON document per line; its size is bounded
only by what the API server stores (1.5 MiB per object in etcd by default), so the bound here is
far above that and exists only to refuse an endless line from a broken peer.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

from choreo_dp.kube.errors import WatchEventTooLarge

MAX_LINE = 16 * 1024 * 1024


async def split_lines(chunks: AsyncIterable[bytes], limit: int = MAX_LINE) -> AsyncIterator[bytes]:
    """Yield each newline-terminated line (without the newline), then any unterminated tail.

    Raise :class:`WatchEventTooLarge` as soon as a line grows past ``limit`` bytes, before
    buffering more of it.
    """
    pending = bytearray()
    async for chunk in chunks:
        parts = chunk.split(b"\n")
        pending += parts[0]
        if len(parts) > 1:
            _check(pending, limit)
            yield bytes(pending)
            for part in parts[1:-1]:
                _check(part, limit)
                yield part
            pending = bytearray(parts[-1])
        _check(pending, limit)
    if pending:
        yield bytes(pending)


def _check(line: bytes | bytearray, limit: int) -> None:
    if len(line) > limit:
        raise WatchEventTooLarge(limit)


class LineCutter:
    """Lines of text whose lines may be of any length (container logs), fed chunk by chunk: a line
    longer than ``limit`` bytes is cut there and the rest of it skipped, never buffered, so memory
    stays bounded by ``limit``. Each line comes out as ``(line, cut)``; lines come out of the chunk
    that completes them, so a caller can send everything one chunk held at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._pending = bytearray()
        self._cut = False

    def feed(self, chunk: bytes) -> list[tuple[bytes, bool]]:
        out: list[tuple[bytes, bool]] = []
        start = 0
        while start < len(chunk):
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            if not self._cut:
                room = self.limit - len(self._pending)
                if len(piece) > room:
                    self._pending += piece[:room]
                    self._cut = True
                else:
                    self._pending += piece
            if end < 0:
                break
            out.append((bytes(self._pending), self._cut))
            self._pending, self._cut = bytearray(), False
            start = end + 1
        return out

    def finish(self) -> list[tuple[bytes, bool]]:
        """The unterminated tail, if any."""
        if not (self._pending or self._cut):
            return []
        tail = [(bytes(self._pending), self._cut)]
        self._pending, self._cut = bytearray(), False
        return tail
