"""A TCP proxy the soak puts between the agent and the control plane, to cut and slow the tunnel.

Our own rather than Toxiproxy (which ``tools/kube/build.py`` builds): the soak needs two knobs
only, a cut that resets the live connections at once and refuses new ones, and a delay on every
chunk, and switching them in-process costs nothing, where Toxiproxy is one more process to start,
supervise, stop and drive through its HTTP API. TLS passes through untouched (the agent pins the
control plane's CA, whose certificate names 127.0.0.1, the proxy's address too).
"""

from __future__ import annotations

import asyncio
import contextlib

CHUNK = 64 * 1024


class TunnelProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.up = True
        self.latency = 0.0  # seconds added to every chunk, each direction
        self.connections = 0  # accepted while up, for tests and the fault log
        self._server: asyncio.Server | None = None
        self._live: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def cut(self) -> None:
        """Reset every live connection and refuse new ones until :meth:`restore`."""
        self.up = False
        for writer in list(self._live):
            writer.transport.abort()
        self._live.clear()

    def restore(self) -> None:
        self.up = True
        self.latency = 0.0

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*self.target), 5)
        except (OSError, TimeoutError):
            writer.transport.abort()
            return
        if not self.up:  # cut while connecting
            writer.transport.abort()
            up_writer.transport.abort()
            return
        self.connections += 1
        self._live.update((writer, up_writer))
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, writer)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in (writer, up_writer):
                self._live.discard(w)
                w.transport.abort()
            for p in pumps:
                p.cancel()
                self._tasks.discard(p)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, TimeoutError, asyncio.IncompleteReadError):
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    return
                if self.latency:
                    await asyncio.sleep(self.latency)
                if not self.up:
                    return
                writer.write(data)
                # drain() is the backpressure that keeps what a slow side buffers bounded
                await asyncio.wait_for(writer.drain(), 60)
