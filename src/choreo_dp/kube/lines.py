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
