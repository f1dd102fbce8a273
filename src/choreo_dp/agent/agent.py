"""The tunnel agent: dial out, run sessions, reconnect with backoff, keep DataPlane status true.

Why not ``async for ws in websockets.connect(...)``: that iterator keeps one set of headers for its
lifetime (the token file may rotate between attempts), reconnects immediately after a session that
ended cleanly (a control plane that accepts and closes would be hammered), and its delays are
process-wide settings with no way to wait much longer after 401/403 or to report each failure on the
DataPlane. The loop below uses ``websockets.asyncio.client.connect`` for each attempt and owns the
policy: exponential backoff with full jitter, reset only after a session was welcomed; a long
backoff on 401/403, cut short when the token file changes; ``goaway``'s retry-after honoured.

What the loop says about each attempt (and writes as the DataPlane ``Connected``/``Ready`` reason)
is decided in :mod:`~choreo_dp.agent.connlog`: one line per change of state, repeats summed up.
Kubernetes failing under the agent never ends it: every DataPlane write here is best effort and
bounded in time, so the link to the control plane outlives an API server restart.
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

from websockets.asyncio.client import connect

from choreo_dp.agent import metrics as M
from choreo_dp.agent.cluster import ClusterStore
from choreo_dp.agent.connlog import (
    ConnectionLog,
    Outcome,
    Repeats,
    SessionRefused,
    Target,
    cause_text,
    classify,
    target_of,
)
from choreo_dp.agent.desired_copy import DesiredCopy, default_state_namespace
from choreo_dp.agent.dpstatus import HEARTBEAT_BOUND, HEARTBEAT_EVERY, DataPlaneStatus
from choreo_dp.agent.guards import ProtectedNamespaces, default_protected_namespaces
from choreo_dp.agent.restorer import Restorer
from choreo_dp.agent.session import AGENT_VERSION, UNACKED_LIMIT, Session
from choreo_dp.agent.statusreport import StatusReporter
from choreo_dp.agent.streams.budget import DEFAULT_READ_RATE, read_budget
from choreo_dp.agent.tlsconfig import client_context, describe_server_certificate
from choreo_dp.agent.tokens import TokenFile
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
    # lastHeartbeatTime is renewed this often while connected; older than the bound = agent gone
    heartbeat_every: float = HEARTBEAT_EVERY
    heartbeat_bound: int = HEARTBEAT_BOUND
    # a best-effort DataPlane write never holds the connection loop longer than this
    status_write_timeout: float = 10.0
    # the same connection failure is logged again ("still failing") at most this often
    log_repeat_every: float = 300.0
    # a healthy session logs a one-line summary this often
    summary_every: float = 600.0
    # Where the offline copy of the desired specs is kept (ConfigMaps); None:
    # ``desired_copy.default_state_namespace()`` (CHOREO_DP_STATE_NAMESPACE, the pod's namespace, choreo-system).
    state_namespace: str | None = None
    # On-demand streams (logs, events, live state; issue 16). Off: every stream.open is answered
    # with stream.end ``disabled`` (the chart's ``observability.enabled``).
    observability_enabled: bool = True
    # The data plane's log-read budget (bytes/s) shared by every log reader of every stream, so that
    # log traffic never slows the API server's writes much (issue 16); 0 switches it off.
    stream_read_rate: int = DEFAULT_READ_RATE


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


@dataclass
class _Ended:
    """How one connection attempt ended without an exception."""

    welcomed: bool
    retry_after: float | None = None
    failure: Outcome | None = None  # set when the control plane ended it before its welcome


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
        self.read_budget = read_budget(cfg.stream_read_rate)
        protected = (
            cfg.protected_namespaces
            if cfg.protected_namespaces is not None
            else default_protected_namespaces()
        )
        self.dp = DataPlaneStatus(
            kube,
            cfg.dataplane_id,
            cfg.control_plane,
            heartbeat_every=cfg.heartbeat_every,
            heartbeat_bound=cfg.heartbeat_bound,
        )
        self.desired = DesiredCopy(
            kube,
            cfg.dataplane_id,
            cfg.state_namespace or default_state_namespace(),
            on_state=self.dp.set_desired_copy,
        )
        self.store = ClusterStore(
            kube, cfg.dataplane_id, protected=ProtectedNamespaces(protected), desired=self.desired
        )
        self.restorer = Restorer(self.store)
        self.restorer_liveness = self.liveness.child("restorer", max_silence=None)
        self.reporter = StatusReporter(kube, self.store, self.restorer)
        self.sessions = 0  # welcomed sessions, for tests and metrics
        self.last_failure: str | None = None
        self.next_delay: float | None = None  # the backoff chosen after the last failure
        self.connected = asyncio.Event()
        self.session: Session | None = None  # the live session, for tests and introspection
        self.connlog = ConnectionLog(log, self.url, repeat_every=cfg.log_repeat_every)
        self.repeats = Repeats(log, every=cfg.log_repeat_every)
        self._condition_written: tuple[str, str] | None = None  # key of the last condition written

    async def _ssl(self) -> ssl.SSLContext | None:
        if not self.url.startswith("wss://"):
            return None
        return await client_context(self.cfg.ca_file, self.cfg.client_cert, self.cfg.client_key)

    @property
    def target(self) -> Target:
        # per call: HTTPS_PROXY / NO_PROXY are read when used, as websockets does
        return target_of(self.url, self.cfg.proxy, self.cfg.token_file, self.cfg.ca_file)

    async def _dp_condition(self, reason: str, message: str) -> bool:
        """Best effort and bounded: the cluster may itself be unreachable, and the connection loop
        must not wait on it. Returns whether the write landed."""
        try:
            await asyncio.wait_for(
                self.dp.set_connected(False, reason, message), self.cfg.status_write_timeout
            )
        except Exception as exc:  # any failure of a best-effort write is logged, none ends the agent
            self._dp_write_failed("the connection state", exc)
            return False
        self._dp_write_ok("the connection state")
        return True

    def _dp_write_failed(self, what: str, exc: BaseException) -> None:
        M.DATAPLANE_WRITE_FAILURES.labels(what).inc()
        M.KUBERNETES_REACHABLE.set(0)
        # an outage is a warning (it passes); a refusal (RBAC on dataplanes/status) needs someone
        level = logging.WARNING if is_retryable(exc) else logging.ERROR
        self.repeats.warn(
            f"dataplane_write:{what}",
            level,
            f"cannot record {what} on the DataPlane: {cause_text(exc)}"[:600],
            what=what,
        )

    def _dp_write_ok(self, what: str) -> None:
        M.KUBERNETES_REACHABLE.set(1)
        self.repeats.ok(f"dataplane_write:{what}", f"recording {what} on the DataPlane works again")

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
            # the copy before the watch: the first list already judges objects against it
            await retrying(
                self.desired.load,
                backoff=self.backoff,
                sleep=lambda delay: self._sleep_or_stop(stop, delay),
                what="loading the desired copy",
                logger=log,
            )
        except _Stopped:
            return
        restorer = asyncio.create_task(
            supervise(
                "restorer",
                lambda: self.restorer.run(self.reporter.synced),
                liveness=self.restorer_liveness,
                backoff=self.backoff,
                logger=log,
            ),
            name="restorer",
        )
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
            for task in (watcher, restorer):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
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
            retry_after: float | None = None
            outcome: Outcome | None = None
            try:
                token = await self.tokens.read()
                ended = await self._connect_once(token, stop)
                if ended.welcomed:
                    attempt = 0
                retry_after, outcome = ended.retry_after, ended.failure
            except Exception as exc:  # every failure is an outcome to report and retry; none ends the agent
                outcome = classify(exc, self.target, open_timeout=self.cfg.open_timeout)
                if outcome.reason == "InternalError":
                    log.error("connection attempt failed unexpectedly", exc_info=exc)
            if stop.is_set():
                return
            token_wait = outcome is not None and outcome.reason in ("Unauthorized", "TokenUnavailable")
            if retry_after is not None:
                delay = retry_after * random.uniform(1.0, 1.5)
            elif outcome is not None and outcome.reason == "Unauthorized":
                delay = self.cfg.unauthorized_backoff * random.uniform(0.8, 1.0)
            else:
                delay = self._backoff(attempt)
                if token_wait:
                    delay = max(delay, 5.0)
            attempt += 1
            self.next_delay = delay
            if outcome is not None:
                await self._failed(outcome, delay)
            else:
                log.debug("reconnecting in %.1fs", delay)
            await self._wait(stop, delay, until_token_changes=token_wait)

    async def _failed(self, outcome: Outcome, delay: float) -> None:
        """Count, log (once per change), and mirror on the DataPlane (when it changed or its
        last write did not land)."""
        self.last_failure = outcome.reason
        M.CONNECT_FAILURES.labels(outcome.reason).inc()
        target = self.target
        new = self.connlog.failing is None or self.connlog.failing.key != outcome.key
        if new and outcome.reason == "TLSVerifyFailed" and target.proxy is None:
            described = await describe_server_certificate(target.host, target.port, target.host)
            if described:
                outcome = outcome.with_certificate(described)
        logged = self.connlog.failure(outcome, next_delay=delay)
        if logged is not None or self._condition_written != outcome.key:
            written = await self._dp_condition(outcome.reason, logged or outcome.message)
            self._condition_written = outcome.key if written else None

    async def _connect_once(self, token: str, stop: asyncio.Event) -> _Ended:
        ctx = await self._ssl()
        loop = asyncio.get_running_loop()
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
                raise SessionRefused(f"control plane did not accept subprotocol {P.SUBPROTOCOL}")
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
                observability=self.cfg.observability_enabled,
            )
            # the budget outlives the session: it is the data plane's, not the connection's
            session.streams.budget = self.read_budget
            welcomed_at: float | None = None

            def on_welcome() -> None:
                nonlocal welcomed_at
                welcomed_at = loop.time()
                self._log_connected(session)

            self.dp.on_connected = on_welcome
            self.connected.set()
            self.session = session
            M.CONNECTED.set(1)
            run = asyncio.create_task(session.run())
            stopper = asyncio.create_task(stop.wait())
            renewer = asyncio.create_task(self._renew_heartbeats(session), name="heartbeat-renewer")
            try:
                await asyncio.wait([run, stopper], return_when=asyncio.FIRST_COMPLETED)
            finally:
                self.dp.on_connected = None
                self.connected.clear()
                self.session = None
                M.CONNECTED.set(0)
                stopper.cancel()
                renewer.cancel()
                if not run.done():
                    run.cancel()
                await asyncio.gather(run, renewer, return_exceptions=True)
            failure = None if run.cancelled() else run.exception()
        welcomed = session.result.welcomed
        if welcomed:
            self.sessions += 1
        if run.cancelled():  # asked to stop
            if welcomed_at is not None:
                self.connlog.disconnected("agent stopping", loop.time() - welcomed_at, level=logging.INFO)
            return _Ended(welcomed)
        if failure is not None and not welcomed:
            raise failure
        if not welcomed:
            return _Ended(False, session.result.retry_after, self._refusal(session.result.reason))
        cause = (
            cause_text(failure)[:500]
            if failure is not None
            else _session_cause(session.result.reason, ws.close_code, ws.close_reason)
        )
        self.connlog.disconnected(cause, loop.time() - (welcomed_at or loop.time()))
        written = await self._dp_condition("Disconnected", cause)
        self._condition_written = ("Disconnected", "") if written else None
        return _Ended(True, session.result.retry_after)

    def _refusal(self, cause: str) -> Outcome:
        return classify(SessionRefused(cause), self.target, open_timeout=self.cfg.open_timeout)

    def _log_connected(self, session: Session) -> None:
        welcome = session.welcome
        self.connlog.connected(
            session=welcome.session if welcome is not None else None,
            mode=welcome.mode if welcome is not None else "unknown",
            epoch=session.epoch,
            revision=session.persisted,
        )

    async def _renew_heartbeats(self, session: Session) -> None:
        """While the session is up, renew ``lastHeartbeatTime`` on the agent's own timer: the
        control plane's heartbeat interval is its choice, and a reader of the DataPlane needs a
        renewal well within ``heartbeatBoundSeconds``. Best effort: a failed write is logged
        (rate-limited) and tried again at the next tick; it never ends the session.

        Also the liveness beat of an idle session: the control plane may heartbeat only every
        300 s (``guards.HEARTBEAT_MAX_SECONDS``), longer than the agent's liveness allows, and an
        idle session otherwise beats only on its frames. Idle means welcomed, incremental and
        nothing in flight; the link itself is proven by the WebSocket pings, which end a dead
        session. A change or a resync that hangs keeps its own beats away, so /healthz still
        reports it."""
        loop = asyncio.get_running_loop()
        tick = max(self.dp.heartbeat_every / 2, 0.05)  # coalesced with the control plane's in dp
        next_summary = loop.time() + self.cfg.summary_every
        while True:
            await asyncio.sleep(tick)
            stream = session.stream
            if (
                session.result.welcomed
                and session.state == "incremental"
                and not (stream.in_flight or stream.buffered)
            ):
                self.liveness.beat()
            try:
                wrote = await asyncio.wait_for(self.dp.heartbeat(), self.cfg.status_write_timeout)
            except Exception as exc:  # best effort, see above
                self._dp_write_failed("the heartbeat", exc)
                continue
            if wrote:
                M.HEARTBEATS.inc()
                self._dp_write_ok("the heartbeat")
            if session.result.welcomed and loop.time() >= next_summary:
                next_summary = loop.time() + self.cfg.summary_every
                log.info(
                    "connected to %s: revision %d, %d heartbeat renewal(s) so far",
                    self.url,
                    session.persisted,
                    self.dp.heartbeats,
                    extra={"event": "session_summary", "url": self.url, "revision": session.persisted},
                )


def _session_cause(reason: str, code: int | None, text: str | None) -> str:
    cause = "the control plane closed the connection" if reason == "closed" else reason
    if code is not None and code != 1000:
        cause += f" (close code {code}{': ' + text if text else ''})"
    return cause
