"""Serving an aiohttp app on loopback, and running an async service on a thread of its own.

Shared by the emulated API (``server.py``) and the sandbox's fault proxy in front of a real
apiserver (``choreo_sandbox.cluster.fault_proxy``): both bind port 0 by default and must learn the
port the kernel chose, and both are used from synchronous tests through a background loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ssl
import threading
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Generic, Self, TypeVar

from aiohttp import web

T = TypeVar("T")
S = TypeVar("S", bound=AbstractAsyncContextManager[object])


async def start_site(
    app: web.Application,
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    handler_cancellation: bool = False,
) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port``; returns the runner (``cleanup()`` stops it) and the bound port."""
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=1.0,
        handler_cancellation=handler_cancellation,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_address=True)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    # aiohttp exposes the bound port only through the asyncio server.
    sockets = getattr(site._server, "sockets", None) or []
    return runner, int(sockets[0].getsockname()[1])


class ServiceThread(Generic[S]):
    """An async context manager (``factory()``) entered on its own event loop in a daemon thread.

    ``with ServiceThread(factory, name) as t:`` returns once the service is up (or raises what
    its start raised); ``t.service`` is it and ``t.call(fn)`` runs ``fn()`` on its loop, which
    is the only safe place to touch its state.  Leaving stops it within ``stop_timeout``.
    """

    def __init__(
        self,
        factory: Callable[[], S],
        name: str,
        *,
        start_timeout: float = 60.0,
        stop_timeout: float = 15.0,
    ) -> None:
        self._factory = factory
        self._name = name
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._service: S | None = None
        self._stop: asyncio.Event | None = None

    @property
    def service(self) -> S:
        assert self._service is not None, "the service is not running"
        return self._service

    def __enter__(self) -> Self:
        started: concurrent.futures.Future[None] = concurrent.futures.Future()

        async def main() -> None:
            self._stop = asyncio.Event()
            try:
                service = self._factory()
                async with service:
                    self._service = service
                    started.set_result(None)
                    await self._stop.wait()
            except BaseException as exc:
                if not started.done():
                    started.set_exception(exc)
                    return
                raise

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(main())
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=self._name, daemon=True)
        self._thread.start()
        try:
            started.result(timeout=self._start_timeout)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        assert self._loop is not None

        async def invoke() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(invoke(), self._loop).result(timeout)

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=self._stop_timeout)
