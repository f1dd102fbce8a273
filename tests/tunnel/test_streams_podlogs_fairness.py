"""The emulated API's ``pods/log`` shares its event loop with every other request (issue 16's
starvation tail): a log read whose client keeps up must hand the loop back every
``WRITE_BATCH`` bytes, and a follow must not hold lines back while it waits for more.

aiohttp's ``write`` yields only once the transport is paused, i.e. after the kernel's socket
buffers are full; the ``write`` here never blocks, which is that case, and the case that held
the loop for up to seconds before. A real kube-apiserver and kubelet serve each log in its own
goroutine, so the wire behaviour (bytes, order) is all the conformance suite compares."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kube_emulator.podlogs import WRITE_BATCH, LogOptions, stream_file
from tests.polling import eventually

pytestmark = pytest.mark.timeout(20)

LINE = b"2026-01-01T00:00:00.000000000Z stdout F " + b"x" * 180 + b"\n"
TEXT = b"x" * 180 + b"\n"


async def test_a_read_that_keeps_up_hands_the_loop_back_every_batch(tmp_path: Path) -> None:
    lines = 4 * WRITE_BATCH // len(TEXT) + 7
    log = tmp_path / "big.log"
    log.write_bytes(LINE * lines)
    writes: list[int] = []
    turns = 0
    done = asyncio.Event()

    async def write(data: bytes) -> None:
        writes.append(len(data))  # never blocks: the kernel takes everything

    async def other_request() -> None:
        nonlocal turns
        while not done.is_set():
            await asyncio.sleep(0)
            turns += 1

    other = asyncio.create_task(other_request())
    await stream_file(str(log), LogOptions(), write)
    done.set()
    await other
    assert sum(writes) == lines * len(TEXT)  # every line, once
    assert max(writes) < WRITE_BATCH + len(TEXT)  # no write holds more than a batch and a line
    # one turn for the other request at least per batch written (none before the fix)
    assert turns >= sum(writes) // WRITE_BATCH - 1
    assert len(writes) >= 4


async def test_a_follow_sends_what_it_has_before_it_waits_for_more(tmp_path: Path) -> None:
    log = tmp_path / "followed.log"
    log.write_bytes(LINE * 3)
    got: list[bytes] = []
    stop = False

    async def write(data: bytes) -> None:
        got.append(data)

    reader = asyncio.create_task(stream_file(str(log), LogOptions(follow=True), write, lambda: stop))
    try:
        # three lines are far below a batch: they go out before the reader polls the file again
        await eventually(lambda: b"".join(got) == TEXT * 3, timeout=5, what="the first three lines")
        with log.open("ab") as f:
            f.write(LINE)
        await eventually(lambda: b"".join(got) == TEXT * 4, timeout=5, what="the appended line")
    finally:
        stop = True
        await asyncio.wait_for(reader, 5)
