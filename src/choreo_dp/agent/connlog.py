"""What the agent says about its link to the control plane: one line per change of state.

Every failed attempt used to log only ``reconnecting in 0.4s``: a missing CA, a refused port and a
revoked token looked the same, and a healthy session logged nothing. Here each outcome gets a
CamelCase reason (also the DataPlane ``Connected`` condition's reason) and a message that names
what to check. A failure is logged when it first happens or its reason changes; repeats of the same
failure are summed up in a "still failing" line at most every ``repeat_every`` seconds, because an
agent retrying for a day must not write a line every 30 s. Connects and disconnects are always
logged. Every line carries the same facts as ``extra`` fields for the JSON formatter.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from urllib.parse import urlsplit

import aiohttp
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidProxy,
    InvalidProxyMessage,
    InvalidProxyStatus,
    InvalidStatus,
    NegotiationError,
    ProxyError,
    WebSocketException,
)
from websockets.proxy import get_proxy
from websockets.uri import parse_uri

from choreo_dp.agent.tokens import TokenError
from choreo_dp.kube import ApiError

# "still failing" at most this often while the same failure repeats
REPEAT_EVERY = 300.0

Field = str | int | float


class SessionRefused(Exception):
    """The connection opened but the control plane ended it before its welcome."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


@dataclass(frozen=True)
class Target:
    """Where the agent dials, as a human needs it in a message."""

    url: str
    host: str
    port: int
    proxy: str | None  # the proxy really used for this URL (after HTTPS_PROXY / NO_PROXY)
    token_file: str
    ca_file: str | None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def proxy_address(self) -> str | None:
        if self.proxy is None:
            return None
        parts = urlsplit(self.proxy)
        return parts.netloc.rsplit("@", 1)[-1] or self.proxy


def target_of(url: str, proxy: str | bool | None, token_file: str, ca_file: str | None) -> Target:
    uri = parse_uri(url)
    used = get_proxy(uri) if proxy is True else (proxy or None)
    return Target(url, uri.host, uri.port, used if isinstance(used, str) else None, token_file, ca_file)


@dataclass(frozen=True)
class Outcome:
    reason: str  # CamelCase: the Connected condition's reason
    message: str
    # same reason and detail twice = the same failure (repeats are summed up, not logged)
    detail: str = ""
    level: int = logging.WARNING
    fields: Mapping[str, Field] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.reason, self.detail)

    def with_certificate(self, description: str) -> Outcome:
        return replace(
            self,
            message=f"{self.message}; server certificate: {description}",
            fields={**self.fields, "certificate": description},
        )


# What an exception with an empty str() means (a proxy or peer that resets or closes the socket
# raises ConnectionResetError() or EOFError() with no text), most specific type first.
_SILENT: tuple[tuple[type[BaseException], str], ...] = (
    (ConnectionResetError, "connection reset by peer"),
    (ConnectionAbortedError, "connection aborted"),
    (BrokenPipeError, "connection closed by peer while sending (broken pipe)"),
    (ConnectionRefusedError, "connection refused"),
    (asyncio.IncompleteReadError, "connection closed by peer in the middle of a message"),
    (EOFError, "connection closed by peer"),
    (TimeoutError, "timed out"),
)


def cause_text(exc: BaseException) -> str:
    """One exception as a cause a human can act on, never empty: its text (else what its type
    means), then its type and errno name, e.g. "connection reset by peer (ConnectionResetError)"."""
    code = exc.errno if isinstance(exc, OSError) and isinstance(exc.errno, int) else None
    # without args some types still print something ("()" for ssl.SSLError())
    text = (exc.strerror if isinstance(exc, OSError) else None) or (str(exc).strip() if exc.args else "")
    if not text:
        text = next((say for kind, say in _SILENT if isinstance(exc, kind)), "") or (
            os.strerror(code) if code else "no detail given"
        )
    name = errno.errorcode.get(code) if code is not None else None
    return f"{text} ({type(exc).__name__}{', ' + name if name else ''})"


def _refused(exc: OSError) -> bool:
    # asyncio joins one error per resolved address ("Multiple exceptions: [Errno 111] ...")
    return (
        isinstance(exc, ConnectionRefusedError)
        or exc.errno == errno.ECONNREFUSED
        or (exc.errno is None and f"[Errno {errno.ECONNREFUSED}]" in str(exc))
    )


def classify(exc: BaseException, target: Target, *, open_timeout: float) -> Outcome:
    """The reason and an actionable message for one failed connection attempt."""
    via = target.proxy_address
    hop = f"proxy {via}" if via else target.address
    base: dict[str, Field] = {"host": target.host, "port": target.port}
    if via:
        base["proxy"] = via
    if isinstance(exc, TokenError):
        return Outcome(
            "TokenUnavailable",
            str(exc) or cause_text(exc),
            level=logging.ERROR,
            fields={"token_file": target.token_file},
        )
    if isinstance(exc, SessionRefused):
        return _refused_session(exc.cause, target)
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        if status in (401, 403):
            return Outcome(
                "Unauthorized",
                f"control plane answered HTTP {status}: check the dataplane token "
                f"(token file {target.token_file}); waiting for the file to change",
                detail=str(status),
                level=logging.ERROR,
                fields={**base, "http_status": status, "token_file": target.token_file},
            )
        return Outcome(
            "HandshakeFailed",
            f"control plane at {target.address} answered HTTP {status} instead of a WebSocket upgrade",
            detail=str(status),
            fields={**base, "http_status": status},
        )
    if isinstance(exc, InvalidProxyStatus):
        status = exc.response.status_code
        hint = " (proxy authentication required: put credentials in the proxy URL)" if status == 407 else ""
        return Outcome(
            "ProxyError",
            f"proxy {via} refused to tunnel to {target.address}: HTTP {status}{hint}",
            detail=str(status),
            fields={**base, "http_status": status},
        )
    if isinstance(exc, InvalidProxyMessage | ProxyError):
        cause = exc.__cause__ or exc
        return Outcome(
            "ProxyError", f"proxy {via} failed: {cause_text(cause)}", detail=type(cause).__name__, fields=base
        )
    if isinstance(exc, InvalidProxy):
        return Outcome("ProxyError", str(exc), detail="invalid", level=logging.ERROR, fields=base)
    if isinstance(exc, NegotiationError):
        return _version_refused(str(exc), target)
    if isinstance(exc, ssl.SSLCertVerificationError):
        hint = (
            f"--ca-file {target.ca_file} must hold the CA that issued the control plane's certificate"
            if target.ca_file
            else "checked against the system trust store: pin the control plane's CA with --ca-file"
        )
        return Outcome(
            "TLSVerifyFailed",
            f"TLS certificate of {target.host} not trusted: {exc.verify_message}; {hint}",
            detail=str(exc.verify_code),
            level=logging.ERROR,
            fields={**base, "verify_message": str(exc.verify_message), "server_name": target.host},
        )
    if isinstance(exc, ssl.SSLError):
        tls_reason = getattr(exc, "reason", None)  # only set when OpenSSL raised it
        return Outcome(
            "TLSError",
            f"TLS with {target.address} failed: {tls_reason or cause_text(exc)}",
            detail=str(tls_reason),
            fields=base,
        )
    if isinstance(exc, socket.gaierror):
        name = via.rsplit(":", 1)[0] if via else target.host
        what = "proxy host" if via else "host"
        return Outcome(
            "DNSFailure",
            f"cannot resolve {what} {name}: {exc.strerror or cause_text(exc)}",
            detail=name,
            fields={**base, "resolving": name},
        )
    if isinstance(exc, TimeoutError):
        return Outcome(
            "Timeout",
            f"no answer from {hop} within {open_timeout:g}s (TCP, TLS or WebSocket handshake)",
            fields=base,
        )
    if isinstance(exc, ApiError | aiohttp.ClientError):
        return Outcome(
            "KubernetesUnavailable",
            f"the Kubernetes API failed under the session: {cause_text(exc)}"[:500],
            fields=base,
        )
    if isinstance(exc, OSError) and _refused(exc):
        return Outcome(
            "ProxyError" if via else "ConnectionRefused",
            f"connection refused by {hop}" + ("" if via else ": is the control plane listening there?"),
            detail="refused",
            fields=base,
        )
    if isinstance(exc, ConnectionResetError | ConnectionAbortedError | BrokenPipeError):
        # TCP got through: the peer, or a proxy, load balancer or firewall on the way, cut it
        return Outcome(
            "Unreachable",
            f"connection to {hop} cut during the TLS or WebSocket handshake: {cause_text(exc)}; "
            "is something between the agent and the control plane closing connections?",
            detail=type(exc).__name__,
            fields=base,
        )
    if isinstance(exc, OSError):
        return Outcome(
            "Unreachable",
            f"cannot reach {hop}: {cause_text(exc)}",
            detail=str(exc.errno) if exc.errno is not None else type(exc).__name__,
            fields=base,
        )
    if isinstance(exc, EOFError):
        return Outcome(
            "ConnectionLost",
            f"connection to {hop} closed before the session started: {cause_text(exc)}",
            detail=type(exc).__name__,
            fields=base,
        )
    if isinstance(exc, ConnectionClosed):
        return Outcome(
            "ConnectionLost", f"connection to {target.address} lost: {cause_text(exc)}", fields=base
        )
    if isinstance(exc, InvalidHandshake | WebSocketException):
        return Outcome(
            "HandshakeFailed",
            f"WebSocket handshake with {target.address} failed: {_with_cause(exc)}"[:500],
            detail=type(exc).__name__,
            fields=base,
        )
    return Outcome(
        "InternalError",
        f"unexpected error: {_with_cause(exc)}"[:500],
        detail=type(exc).__name__,
        level=logging.ERROR,
        fields=base,
    )


def _with_cause(exc: BaseException) -> str:
    """``exc`` and what raised it: a handshake that "did not receive a valid HTTP response" says
    whether the peer reset or closed the connection."""
    cause = exc.__cause__ or exc.__context__
    return cause_text(exc) + (f"; cause: {cause_text(cause)}" if cause is not None else "")


def _version_refused(text: str, target: Target) -> Outcome:
    return Outcome(
        "ProtocolVersionRefused",
        f"control plane at {target.address} refused the agent's protocol version ({text}): "
        "upgrade the agent or the control plane",
        level=logging.ERROR,
        fields={"host": target.host, "port": target.port},
    )


def _refused_session(cause: str, target: Target) -> Outcome:
    cause = cause or "no reason given"
    if "unsupported_version" in cause or "subprotocol" in cause:
        return _version_refused(cause, target)
    if "unauthorized" in cause:
        return Outcome(
            "Unauthorized",
            f"control plane refused the session ({cause}): check the dataplane token "
            f"(token file {target.token_file})",
            detail=cause,
            level=logging.ERROR,
        )
    if cause.startswith("goaway"):
        return Outcome("GoAway", f"control plane asked the agent to come back later ({cause})", detail=cause)
    return Outcome(
        "NoWelcome", f"control plane ended the session before welcoming it ({cause})", detail=cause
    )


def _wall(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def duration_text(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class ConnectionLog:
    """The agent's connection state as log lines: each change once, repeats rate-limited."""

    def __init__(
        self,
        logger: logging.Logger,
        url: str,
        *,
        repeat_every: float = REPEAT_EVERY,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.log = logger
        self.url = url
        self.repeat_every = repeat_every
        self.clock = clock
        self.wall = wall
        self.failing: Outcome | None = None
        self.attempts = 0  # failed attempts with the current failure
        self.since = 0.0  # wall time of its first attempt
        self._last_line = 0.0

    def failure(self, outcome: Outcome, *, next_delay: float) -> str | None:
        """Record one failed attempt; returns the message when a line was logged (a state change or
        a periodic repeat), which is also when the DataPlane condition is worth rewriting."""
        now = self.clock()
        extra: dict[str, Field] = {
            **outcome.fields,
            "event": "connect_failed",
            "reason": outcome.reason,
            "url": self.url,
            "retry_in": round(next_delay, 2),
        }
        if self.failing is None or self.failing.key != outcome.key:
            self.failing, self.attempts, self.since, self._last_line = outcome, 1, self.wall(), now
            extra["attempt"] = 1
            self.log.log(
                outcome.level,
                "cannot connect to %s: %s [%s]; retrying in %.1fs",
                self.url,
                outcome.message,
                outcome.reason,
                next_delay,
                extra=extra,
            )
            return outcome.message
        self.attempts += 1
        self.failing = outcome
        extra.update(attempt=self.attempts, since=_wall(self.since))
        if now - self._last_line < self.repeat_every:
            self.log.debug("attempt %d failed: %s", self.attempts, outcome.message, extra=extra)
            return None
        self._last_line = now
        summary = (
            f"still failing: {self.attempts} attempts since {_wall(self.since)}, last: {outcome.message}"
        )
        self.log.log(outcome.level, "%s [%s]", summary, outcome.reason, extra=extra)
        return summary

    def connected(self, *, session: str | None, mode: str, epoch: str, revision: int) -> None:
        extra: dict[str, Field] = {
            "event": "connected",
            "url": self.url,
            "session": session or "",
            "mode": mode,
            "epoch": epoch,
            "revision": revision,
        }
        after = ""
        if self.failing is not None:
            after = f" after {self.attempts} failed attempt(s) since {_wall(self.since)}"
            extra.update(failed_attempts=self.attempts, last_reason=self.failing.reason)
        self.failing, self.attempts = None, 0
        self.log.info(
            "connected to %s: session %s, %s, epoch %s, revision %d%s",
            self.url,
            session or "-",
            mode,
            epoch,
            revision,
            after,
            extra=extra,
        )

    def disconnected(self, cause: str, duration: float, *, level: int = logging.WARNING) -> None:
        self.failing, self.attempts = None, 0
        self.log.log(
            level,
            "disconnected from %s after %s: %s",
            self.url,
            duration_text(duration),
            cause,
            extra={
                "event": "disconnected",
                "url": self.url,
                "reason": "Disconnected",
                "cause": cause,
                "duration_s": round(duration, 1),
            },
        )


class Repeats:
    """Rate-limits a warning that may repeat every few seconds (a heartbeat renewal failing for the
    length of an API outage): the first of each kind at once, then at most one per ``every``."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        every: float = REPEAT_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = logger
        self.every = every
        self.clock = clock
        self._last: dict[str, tuple[float, int]] = {}

    def warn(self, kind: str, level: int, message: str, **extra: Field) -> bool:
        now = self.clock()
        last, suppressed = self._last.get(kind, (None, 0))
        if last is not None and now - last < self.every:
            self._last[kind] = (last, suppressed + 1)
            return False
        tail = f" ({suppressed} more since the last report)" if suppressed else ""
        self._last[kind] = (now, 0)
        self.log.log(level, "%s%s", message, tail, extra={"event": kind, **extra})
        return True

    def ok(self, kind: str, message: str) -> None:
        """The failure is over: say so once, and log the next one at once."""
        if self._last.pop(kind, None) is not None:
            self.log.info("%s", message, extra={"event": kind})
