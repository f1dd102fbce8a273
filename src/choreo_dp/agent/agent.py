"""The tunnel agent: dial out, run sessions, reconnect with backoff, keep DataPlane status true.

Why not ``async for ws in websockets.connect(...)``: that iterator keeps one set of headers for its
lifetime (the token file may rotate between attempts), reconnects immediately after a session that
ended cleanly (a control plane that accepts and closes would be hammered), and its delays are
process-wide settings with no way to wait much longer after 401/403 or to report each failure on the
DataPlane. The loop below uses ``websockets.asyncio.client.connect`` for each attempt and owns the
policy: exponential backoff with full jitter, reset only after a session was welcomed; a long
backoff on 401/403, cut short when the token file changes; ``goaway``'s retry-after honoured.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidHandshake, InvalidStatus, WebSocketException

from choreo_dp.agent import metrics as M
from choreo_dp.agent.cluster import ClusterStore
from choreo_dp.agent.dpstatus import DataPlaneStatus
from choreo_dp.agent.guards import ProtectedNamespaces, default_protected_namespaces
from choreo_dp.agent.session import AGENT_VERSION, UNACKED_LIMIT, Session
from choreo_dp.agent.statusreport import StatusReporter
from choreo_dp.agent.tlsconfig import client_context
from choreo_dp.agent.tokens import TokenError, TokenFile
from choreo_dp.kube import ApiError, KubeClient
from choreo_dp.kube.backoff import Backoff, is_retryable, retrying
from choreo_dp.observability.health import Liveness
from choreo_dp.observability.supervise import supervise
from choreo_wire import protocol as P

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """Bad agent configuration (reported as a usage error by the CLI)."""


@dataclass
class AgentConfig:
    control_plane: str
    dataplane_id: str
    token_file: str
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    insecure: bool = False
    # websockets keepalive: a ping every 10 s, dead when no pong within 10 s; the library then spends
    # up to close_timeout on the closing handshake -> a dead link ends the session in <= 22 s.
    ping_interval: float = 10.0
    ping_timeout: float = 10.0
    close_timeout: float = 2.0
    open_timeout: float = 10.0
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    unauthorized_backoff: float = 300.0
    # True: honour HTTPS_PROXY / NO_PROXY from the environment; None: never; str: this proxy
    proxy: str | Literal[True] | None = True
    window: int = 16
    unacked_limit: int = UNACKED_LIMIT
    # Namespaces no Environment may name (globs); None: ``guards.default_protected_namespaces()``
    # (kube-*, default, the operator's and the agent's own namespace, CHOREO_DP_PROTECTED_NAMESPACES).
    protected_namespaces: tuple[str, ...] | None = None


def tunnel_url(control_plane: str, insecure: bool) -> str:
    """``wss://host:port`` (path optional) -> the tunnel endpoint URL; refuses ws:// unless insecure."""
    parts = urlsplit(control_plane)
    if parts.scheme not in ("wss", "ws", "https", "http"):
        raise ConfigError(f"--control-plane must be wss://HOST:PORT, got {control_plane!r}")
    if parts.scheme in ("ws", "http") and not insecure:
        raise ConfigError("refusing an unencrypted ws:// control plane without --insecure")
    if not parts.hostname:
        raise ConfigError(f"--control-plane has no host: {control_plane!r}")
    scheme = "wss" if parts.scheme in ("wss", "https") else "ws"
    path = parts.path if parts.path not in ("", "/") else P.TUNNEL_PATH
    return urlunsplit((scheme, parts.netloc, path, "", ""))


class _Stopped(Exception):
    """The agent was asked to stop while waiting to retry."""


def _status_of(exc: BaseException) -> int | None:
    if isinstance(exc, InvalidStatus):
        return exc.response.status_code
    return None


class Agent:
    def __init__(self, cfg: AgentConfig, kube: KubeClient, *, liveness: Liveness | None = None) -> None:
        self.cfg = cfg
        self.url = tunnel_url(cfg.control_plane, cfg.insecure)
        self.kube = kube
        self.liveness = liveness or Liveness("agent", max_silence=120.0)
        # the status watch is idle for as long as nothing changes: only a crash makes it unhealthy
        self.watch_liveness = self.liveness.child("status-watch", max_silence=None)
        self.backoff = Backoff(base=cfg.backoff_base, cap=cfg.backoff_cap)
        self.tokens = TokenFile(cfg.token_file)
        protected = (
            cfg.protected_namespaces
            if cfg.protected_namespaces is not None
            else default_protected_namespaces()
        )
        self.store = ClusterStore(kube, cfg.dataplane_id, protected=ProtectedNamespaces(protected))
        self.dp = DataPlaneStatus(kube, cfg.dataplane_id, cfg.control_plane)
        self.reporter = StatusReporter(kube, self.store)
        self.sessions = 0  # welcomed sessions, for tests and metrics
        self.last_failure: str | None = None
        self.next_delay: float | None = None  # the backoff chosen after the last failure
        self.connected = asyncio.Event()
        self.session: Session | None = None  # the live session, for tests and introspection

    async def _ssl(self) -> ssl.SSLContext | None:
        if not self.url.startswith("wss://"):
            return None
        return await client_context(self.cfg.ca_file, self.cfg.client_cert, self.cfg.client_key)

    async def _dp_condition(self, reason: str, message: str) -> None:
        """Best effort: the cluster may itself be unreachable."""
        if reason not in ("Disconnected", "Stopped"):
            M.CONNECT_FAILURES.labels(reason).inc()
        try:
            await self.dp.set_connected(False, reason, message)
        except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("cannot update DataPlane status: %s", exc)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        try:
            await retrying(
                self.dp.load,
                # 404: the CRDs may be installed just after the agent starts
                retry_on=lambda exc: is_retryable(exc) or (isinstance(exc, ApiError) and exc.not_found),
                backoff=self.backoff,
                sleep=lambda delay: self._sleep_or_stop(stop, delay),
                what="loading the DataPlane",
                logger=log,
            )
        except _Stopped:
            return
        watcher = asyncio.create_task(
            supervise(
                "status-watch",
                self.reporter.run,
                liveness=self.watch_liveness,
                backoff=self.backoff,
                logger=log,
            ),
            name="status-watch",
        )
        try:
            await self._loop(stop)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.dp.set_connected(False, "Stopped", "agent stopped"), 5.0)

    async def _sleep_or_stop(self, stop: asyncio.Event, delay: float) -> None:
        await self._wait(stop, delay)
        if stop.is_set():
            raise _Stopped

    def _backoff(self, attempt: int) -> float:
        return self.backoff.delay(attempt)

    async def _wait(self, stop: asyncio.Event, delay: float, *, until_token_changes: bool = False) -> None:
        """Sleep ``delay`` unless stopped (or, after 401/403, the token file changes)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        while not stop.is_set():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(remaining, 1.0))
            self.liveness.beat()
            if until_token_changes and await self.tokens.changed():
                log.info("token file changed; reconnecting now")
                return

    async def _loop(self, stop: asyncio.Event) -> None:
        attempt = 0
        while not stop.is_set():
            self.liveness.beat()
            delay: float | None = None
            token_wait = False
            try:
                token = await self.tokens.read()
                welcomed, retry_after = await self._connect_once(token, stop)
                if welcomed:
                    attempt = 0
                if retry_after is not None:
                    delay = retry_after * random.uniform(1.0, 1.5)
            except TokenError as exc:
                self.last_failure = "TokenUnavailable"
                await self._dp_condition("TokenUnavailable", str(exc))
                token_wait = True
            except InvalidStatus as exc:
                status = exc.response.status_code
                if status in (401, 403):
                    self.last_failure = "Unauthorized"
                    log.error("control plane refused the token (%d); waiting for a new token", status)
                    await self._dp_condition(
                        "Unauthorized", f"control plane answered {status}: check the dataplane token"
                    )
                    delay = self.cfg.unauthorized_backoff * random.uniform(0.8, 1.0)
                    token_wait = True
                else:
                    self.last_failure = f"HTTP{status}"
                    await self._dp_condition("HandshakeFailed", f"control plane answered HTTP {status}")
            except (ApiError, aiohttp.ClientError) as exc:
                # the Kubernetes API failed under the session (a refused write ends it too): the
                # agent stays up and tries again; the cluster holds everything that matters
                self.last_failure = "KubernetesUnavailable"
                level = logging.WARNING if is_retryable(exc) else logging.ERROR
                log.log(level, "tunnel session ended by the Kubernetes API: %s", exc)
                await self._dp_condition("KubernetesUnavailable", f"{type(exc).__name__}: {exc}"[:500])
            except ssl.SSLError as exc:
                self.last_failure = "TLSError"
                await self._dp_condition("TLSError", str(exc)[:500])
            except (OSError, TimeoutError, InvalidHandshake, WebSocketException) as exc:
                self.last_failure = "Unreachable"
                await self._dp_condition("Unreachable", f"{type(exc).__name__}: {exc}"[:500])
            if stop.is_set():
                return
            if delay is None:
                delay = self._backoff(attempt)
                if token_wait:
                    delay = max(delay, 5.0)
            attempt += 1
            self.next_delay = delay
            log.info("reconnecting in %.1fs", delay)
            await self._wait(stop, delay, until_token_changes=token_wait)

    async def _connect_once(self, token: str, stop: asyncio.Event) -> tuple[bool, float | None]:
        ctx = await self._ssl()
        async with connect(
            self.url,
            subprotocols=[P.SUBPROTOCOL],  # type: ignore[list-item]
            additional_headers={"Authorization": f"Bearer {token}"},
            user_agent_header=AGENT_VERSION,
            ssl=ctx,
            proxy=self.cfg.proxy,
            open_timeout=self.cfg.open_timeout,
            ping_interval=self.cfg.ping_interval,
            ping_timeout=self.cfg.ping_timeout,
            close_timeout=self.cfg.close_timeout,
            max_size=P.TRANSPORT_MAX_BYTES,
            max_queue=16,
        ) as ws:
            if ws.subprotocol != P.SUBPROTOCOL:
                raise InvalidHandshake(f"control plane did not accept subprotocol {P.SUBPROTOCOL}")
            # The status watcher's list + watch keeps the index of managed objects current; only
            # when it has not synced (yet) does the session list the inventory itself.
            try:
                await asyncio.wait_for(self.reporter.synced.wait(), 30.0)
            except TimeoutError:
                await self.store.refresh()
            session = Session(
                ws,
                dataplane_id=self.cfg.dataplane_id,
                store=self.store,
                dp=self.dp,
                reporter=self.reporter,
                liveness=self.liveness,
                window=self.cfg.window,
                unacked_limit=self.cfg.unacked_limit,
            )
            self.connected.set()
            self.session = session
            M.CONNECTED.set(1)
            run = asyncio.create_task(session.run())
            stopper = asyncio.create_task(stop.wait())
            try:
                await asyncio.wait([run, stopper], return_when=asyncio.FIRST_COMPLETED)
            finally:
                self.connected.clear()
                self.session = None
                M.CONNECTED.set(0)
                stopper.cancel()
                if not run.done():
                    run.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await run
            result = run.result() if not run.cancelled() else None
        if result is None:
            return False, None
        if result.welcomed:
            self.sessions += 1
        await self._dp_condition("Disconnected", result.reason)
        log.info("tunnel session ended: %s", result.reason)
        return result.welcomed, result.retry_after
