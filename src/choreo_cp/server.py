"""Run the reference control plane: REST API + tunnel endpoint on one uvicorn server.

Used by ``choreo-dp control-plane serve``, by the sandbox (as a child process) and in-process by
tests and benchmarks (``async with ControlPlaneServer(...) as server``).
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import contextlib
import logging
import os
import socket
import sqlite3
import ssl
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from choreo_cp.api import create_app
from choreo_cp.context import ControlPlane, TunnelSettings
from choreo_cp.hub import ClusterLink
from choreo_cp.retry import Backoff
from choreo_cp.store import DEFAULT_LOG_LIMIT, Store
from choreo_cp.store.history import DEFAULT_HISTORY_LIMIT
from choreo_cp.streams import Hop
from choreo_cp.tunnel import add_tunnel_route, shutdown_sessions
from choreo_dp.observability.supervise import supervise
from choreo_wire import protocol

log = logging.getLogger(__name__)
STORE_CLOSE_TIMEOUT = 30.0

# WebSocket keepalive on the server side too: a dead agent's socket is found within
# interval + timeout (<= 30 s, the contract's bound) even if it never sends another frame.
# Waiting for uvicorn to listen, and backing off a failing report flush (the store's own backoff).
STARTUP_POLL = Backoff(base=0.01, cap=0.2)
FLUSH_BACKOFF = Backoff(base=0.25, cap=10.0)
SUPERVISE_BACKOFF = Backoff(base=0.5, cap=30.0)

WS_PING_INTERVAL = 10.0
WS_PING_TIMEOUT = 10.0


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8443
    db: str | Path = "./choreo-cp.db"
    admin_token: str = ""
    tls_cert: str | None = None
    tls_key: str | None = None
    # When set, every TLS client (agents and REST clients alike) must present a certificate
    # signed by this CA: uvicorn verifies at the TLS layer, before any route runs.
    client_ca: str | None = None
    log_limit: int = DEFAULT_LOG_LIMIT
    # accepted specs kept per app for history and rollback (oldest pruned)
    history_limit: int = DEFAULT_HISTORY_LIMIT
    tunnel: TunnelSettings = field(default_factory=TunnelSettings)
    synchronous: str = "FULL"
    # seconds a write waits for another process's lock before the store reports it unavailable
    busy_timeout: float = 5.0
    # where the other replicas reach this one (several replicas); None: derived from host and port
    advertise_url: str | None = None


# asyncio gives every TLS connection a 256 KiB read buffer (SSLProtocol.max_size); with hundreds of
# mostly idle agents that buffer is ~85% of the per-connection memory (measured: 313 KiB per TLS
# connection vs 40 KiB plain). TLS records are at most 16 KiB, so 32 KiB loses nothing but a few
# extra read calls on bulk transfers. Process-wide, which is fine: this process is a server.
TLS_READ_BUFFER = 32 * 1024


def _shrink_tls_read_buffers() -> None:
    if getattr(asyncio.sslproto.SSLProtocol, "max_size", 0) > TLS_READ_BUFFER:
        asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER


class _DenialNoise(logging.Filter):
    """uvicorn's sans-I/O binding logs an error after every refused upgrade (401 via the ASGI denial
    response extension) although the response went out correctly; refusals are ours to log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "without completing handshake" not in record.getMessage()


logging.getLogger("uvicorn.error").addFilter(_DenialNoise())


class _Server(uvicorn.Server):
    """uvicorn without its signal handling: the caller owns SIGINT/SIGTERM (and exit codes)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class ControlPlaneServer:
    def __init__(self, config: ServerConfig) -> None:
        if bool(config.tls_cert) != bool(config.tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        if not config.admin_token:
            raise ValueError("an admin token is required")
        self.config = config
        self.store = Store(
            config.db,
            log_limit=config.log_limit,
            synchronous="NORMAL" if config.synchronous == "NORMAL" else "FULL",
            busy_timeout=config.busy_timeout,
        )
        self.store.history_limit = config.history_limit
        self.cp = ControlPlane(store=self.store, admin_token=config.admin_token, tunnel=config.tunnel)
        self.app: FastAPI = create_app(self.cp)
        add_tunnel_route(self.app, self.cp)
        self._server: _Server | None = None
        self._serve_task: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._cluster_tasks: list[asyncio.Task[None]] = []
        self.cluster: ClusterLink | None = None
        self.port = config.port

    @property
    def tls(self) -> bool:
        return bool(self.config.tls_cert)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.config.host}:{self.port}"

    @property
    def advertise_url(self) -> str:
        """What the other replicas dial to hand this one a stream request of an agent it holds."""
        if self.config.advertise_url:
            return self.config.advertise_url.rstrip("/")
        host = self.config.host
        if host in ("", "0.0.0.0", "::"):
            # every interface: the host name is the best guess (set --advertise-url in Kubernetes)
            host = socket.gethostname()
        elif ":" in host:
            host = f"[{host}]"
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    @property
    def tunnel_url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://{self.config.host}:{self.port}{protocol.TUNNEL_PATH}"

    def _uvicorn_config(self) -> uvicorn.Config:
        c = self.config
        kwargs: dict[str, Any] = {}
        if c.tls_cert:
            kwargs.update(ssl_certfile=c.tls_cert, ssl_keyfile=c.tls_key)
            if c.client_ca:
                kwargs.update(ssl_ca_certs=c.client_ca, ssl_cert_reqs=ssl.CERT_REQUIRED)
        return uvicorn.Config(
            self.app,
            host=c.host,
            port=c.port,
            # The websockets library through its maintained (sans-I/O) uvicorn binding; "websockets"
            # is uvicorn's deprecated legacy binding of the same library.
            ws="websockets-sansio",
            ws_max_size=protocol.TRANSPORT_MAX_BYTES,
            ws_ping_interval=WS_PING_INTERVAL,
            ws_ping_timeout=WS_PING_TIMEOUT,
            # Off: +45 KiB of zlib state per connection (measured) for frames that are mostly small;
            # resync already sends only differences.
            ws_per_message_deflate=False,
            lifespan="off",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=5,
            backlog=2048,
            **kwargs,
        )

    async def start(self, timeout: float = 15.0) -> None:
        if self.tls:
            _shrink_tls_read_buffers()
        await self.store.open()
        self._server = _Server(self._uvicorn_config())
        self._serve_task = asyncio.create_task(self._server.serve(), name="control-plane-http")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        attempt = 0
        while not self._server.started:
            if self._serve_task.done():
                # uvicorn reports bind errors by logging and exiting; surface them as ours.
                exc = self._serve_task.exception() if not self._serve_task.cancelled() else None
                await self.store.close()
                raise OSError(
                    f"control plane could not listen on {self.config.host}:{self.config.port}"
                ) from exc
            if loop.time() > deadline:
                await self.stop()
                raise TimeoutError("control plane did not start in time")
            await asyncio.sleep(min(STARTUP_POLL.delay(attempt), max(0.0, deadline - loop.time())))
            attempt += 1
        sockets = [s for srv in self._server.servers for s in (srv.sockets or ())]
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        self._flusher = asyncio.create_task(self._flush_loop(), name="control-plane-flush")
        if self.store.clustered:
            # recorded with each session this replica claims (the agents may dial in already)
            self.store.advertise_url = self.advertise_url
            await self.store.forget_replicas()
            c = self.config
            self.cp.streams.hop = Hop(
                secret=await self.store.hop_secret(),
                token=c.admin_token,
                ca_file=c.tls_cert,
                client_cert=(c.tls_cert, c.tls_key) if c.client_ca and c.tls_cert and c.tls_key else None,
            )
            self._start_cluster_link()
        log.info(
            "control plane listening on %s (tunnel %s, db %s, epoch per dataplane, store %s)",
            self.url,
            self.tunnel_url,
            self.store.engine.location,
            self.store.store_id,
        )

    def _start_cluster_link(self) -> None:
        """Several replicas on one PostgreSQL: changes and newer sessions reach this replica's agents
        whichever replica they went through (see docs/controlplane.md, "Several replicas")."""
        self.cp.hub.replica = f"{socket.gethostname()}:{os.getpid()}:{self.port}"
        link = ClusterLink(self.cp.hub, self.store, str(self.config.db), self.cp.liveness.child("database"))
        self.store.changed_hooks.append(link.changed)
        self.cluster = link
        loops: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("cluster-listener", link.run_listener),
            ("cluster-notifier", link.run_notifier),
        ]
        interval = self.config.tunnel.rebalance_interval
        if interval > 0:
            loops.append(("cluster-balancer", lambda: link.run_balancer(interval)))
        for name, loop in loops:
            probe = self.cp.liveness.child(name)
            self._cluster_tasks.append(
                asyncio.create_task(
                    supervise(name, loop, liveness=probe, backoff=SUPERVISE_BACKOFF), name=name
                )
            )

    async def _flush_loop(self) -> None:
        """Write coalesced reports every interval; a failing store backs off (the batch is kept, see
        ``Reports.flush``) and fails /healthz until a write succeeds again. Never ends but by cancel."""
        interval = self.config.tunnel.status_flush_interval
        failures = 0
        while True:
            await asyncio.sleep(interval + (FLUSH_BACKOFF.delay(failures - 1) if failures else 0.0))
            try:
                with self.cp.metrics.store_flush_seconds.time():
                    await asyncio.wait_for(self.store.flush(), 30)
            except Exception as exc:
                failures += 1
                self.cp.metrics.store_unavailable.labels("flush").inc()
                self.cp.liveness.fail(f"writing reports failed {failures} time(s) in a row: {exc}"[:300])
                if isinstance(exc, sqlite3.OperationalError | TimeoutError):
                    level = logging.WARNING if failures in (1, 10) or failures % 100 == 0 else logging.INFO
                    log.log(level, "writing reports to the store failed (%s); retrying with backoff", exc)
                else:
                    log.exception("writing reports to the store failed; retrying with backoff")
                continue
            if failures:
                log.info("writing reports to the store works again after %d failure(s)", failures)
            failures = 0
            self.cp.liveness.beat()

    async def stop(self) -> None:
        shutdown_sessions(self.cp)
        # Let writers send their goaway before uvicorn closes the sockets (bounded wait).
        await self.cp.hub.wait_empty(1.0)
        if self._server is not None:
            self._server.should_exit = True
        if self._serve_task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._serve_task, 10)
        for task in self._cluster_tasks:
            task.cancel()
        if self._cluster_tasks:
            await asyncio.wait(self._cluster_tasks, timeout=10)
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._flusher, 10)
        try:
            # Bounded like every other step: a store that cannot close (a wedged connection)
            # must not hold the process (or a test's teardown) forever.
            await asyncio.wait_for(self.store.close(), STORE_CLOSE_TIMEOUT)
        except TimeoutError:
            log.error("the store did not close within %.0f s; leaving it", STORE_CLOSE_TIMEOUT)

    async def __aenter__(self) -> ControlPlaneServer:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()
