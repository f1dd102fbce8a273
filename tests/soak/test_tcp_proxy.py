"""The soak's tunnel proxy does what the adversary relies on: forwards, delays, cuts, restores."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from tests.soak.tcp_proxy import TunnelProxy


@contextlib.asynccontextmanager
async def echo_proxy() -> AsyncIterator[TunnelProxy]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(1024):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    proxy = TunnelProxy("127.0.0.1", int(server.sockets[0].getsockname()[1]))
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()
        server.close()
        await server.wait_closed()


async def roundtrip(proxy: TunnelProxy, payload: bytes) -> tuple[bytes, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    started = time.monotonic()
    try:
        writer.write(payload)
        await writer.drain()
        got = await asyncio.wait_for(reader.readexactly(len(payload)), 5)
        return got, time.monotonic() - started
    finally:
        writer.close()


async def test_forwards_and_adds_latency_each_way() -> None:
    async with echo_proxy() as proxy:
        got, fast = await roundtrip(proxy, b"hello")
        assert got == b"hello"
        proxy.latency = 0.2
        got, slow = await roundtrip(proxy, b"again")
        assert got == b"again"
        assert slow >= 0.4 > fast  # 0.2 s on the way there and 0.2 s on the way back


async def test_cut_resets_live_connections_and_refuses_new_ones_until_restored() -> None:
    async with echo_proxy() as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"x")
        assert await asyncio.wait_for(reader.readexactly(1), 5) == b"x"
        proxy.cut()
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
            await asyncio.wait_for(reader.readexactly(1), 5)
        writer.close()
        reader2, writer2 = await asyncio.open_connection("127.0.0.1", proxy.port)
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
            writer2.write(b"y")
            await asyncio.wait_for(reader2.readexactly(1), 5)
        writer2.close()
        proxy.restore()
        got, _ = await roundtrip(proxy, b"back")
        assert got == b"back"
        assert proxy.connections == 2  # the one refused while cut was never forwarded
