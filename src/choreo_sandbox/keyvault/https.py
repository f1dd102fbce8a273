"""A small HTTPS aiohttp server on a loopback port (ephemeral, or a fixed one)."""

from __future__ import annotations

import ssl

from aiohttp import web


class HttpsServer:
    def __init__(self, app: web.Application, ssl_context: ssl.SSLContext, port: int = 0) -> None:
        self._app = app
        self._ssl = ssl_context
        self._runner: web.AppRunner | None = None
        self.port = port

    async def start(self) -> None:
        """Listen on ``port`` (0: an ephemeral one), or on the previous one again after ``stop`` (an outage)."""
        self._runner = web.AppRunner(self._app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, "127.0.0.1", self.port, ssl_context=self._ssl, backlog=512, reuse_address=True
        )
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
