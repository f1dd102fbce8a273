"""Each way a connection attempt fails is logged once with a reason a human can act on, repeats are
summed up, and the DataPlane ``Connected``/``Ready`` conditions carry the same reason.

Every failure is real and on loopback: a port with nothing listening, a TLS server whose certificate
comes from a CA the agent does not trust (trustme), a 401, a 502, a peer that never answers, a
server that speaks no ``choreo-dp.v1``, a name under ``.invalid`` (RFC 6761: never resolves), and
HTTP proxies that refuse. Runs against the emulated API and the real kube-apiserver.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import InvalidMessage

from choreo_dp.agent.agent import AgentConfig
from choreo_dp.kube import KubeClient
from choreo_dp.observability.logging import JsonFormatter
from tests.tunnel.conftest import Names, eventually
from tests.tunnel.fakecp import FakeControlPlane
from tests.tunnel.test_agent import config, converged, dataplane, running, seed

pytestmark = pytest.mark.timeout(60)

AGENT_LOG = "choreo_dp.agent.agent"
ATTEMPTS = 6  # failed attempts each test waits for: all but the first must stay silent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def failure_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == AGENT_LOG and getattr(r, "event", None) == "connect_failed" and r.levelno >= logging.INFO
    ]


async def conditions(kube: KubeClient, names: Names) -> dict[str, dict[str, Any]]:
    st = await dataplane(kube, names)
    return {c["type"]: c for c in st.get("conditions", [])}


@dataclass
class Scenario:
    """A failing control plane: the agent configuration that meets it and what must be said."""

    reason: str
    says: tuple[str, ...]  # fragments the one log line and the condition message must hold
    cfg: dict[str, Any]


@contextlib.asynccontextmanager
async def ws_server(tls: dict[str, Any], **kw: Any) -> AsyncIterator[int]:
    async def handler(ws: ServerConnection) -> None:
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, ssl=tls["server"], **kw) as server:
        yield int(server.sockets[0].getsockname()[1])


@contextlib.asynccontextmanager
async def tcp_server(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[int]:
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accepts and never answers (a firewall that drops, a hung peer)."""
    with contextlib.suppress(Exception):
        await reader.read()
    writer.close()


async def hangs_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads the TLS ClientHello and closes: what the soak's fault proxy does when it cuts a link."""
    with contextlib.suppress(Exception):
        await reader.read(65536)
    writer.close()


async def refusing_proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def scenario(
    kind: str, fake_cp: FakeControlPlane, tls: dict[str, Any], tmp_path: Path, token_file: Path
) -> AsyncIterator[Scenario]:
    if kind == "refused":
        port = free_port()
        yield Scenario(
            "ConnectionRefused",
            ("connection refused by 127.0.0.1:", str(port)),
            {"control_plane": f"wss://127.0.0.1:{port}"},
        )
    elif kind == "dns":
        yield Scenario(
            "DNSFailure",
            ("cannot resolve host choreo-agent-test.invalid",),
            {"control_plane": "wss://choreo-agent-test.invalid:8443"},
        )
    elif kind == "unknown-ca":
        other = tmp_path / "other-ca.pem"
        trustme.CA().cert_pem.write_to_path(str(other))
        yield Scenario(
            "TLSVerifyFailed",
            ("not trusted: unable to get local issuer certificate", "--ca-file", "issuer OU=Testing CA"),
            {"ca_file": str(other)},
        )
    elif kind == "unauthorized":
        await asyncio.to_thread(token_file.write_text, "wrong\n")
        yield Scenario(
            "Unauthorized",
            ("HTTP 401", "check the dataplane token", str(token_file)),
            {"unauthorized_backoff": 0.05},
        )
    elif kind == "http-502":
        fake_cp.refuse_status = 502
        yield Scenario("HandshakeFailed", ("answered HTTP 502 instead of a WebSocket upgrade",), {})
    elif kind == "version":
        async with ws_server(tls) as port:  # a WebSocket server that speaks no choreo-dp.v1
            yield Scenario(
                "ProtocolVersionRefused",
                ("refused the agent's protocol version", "choreo-dp.v1"),
                {"control_plane": f"wss://127.0.0.1:{port}"},
            )
    elif kind == "timeout":
        async with tcp_server(silent) as port:
            yield Scenario(
                "Timeout",
                (f"no answer from 127.0.0.1:{port} within 0.3s",),
                {"control_plane": f"wss://127.0.0.1:{port}", "open_timeout": 0.3},
            )
    elif kind == "proxy-403":
        async with tcp_server(refusing_proxy) as port:
            yield Scenario(
                "ProxyError",
                (f"proxy 127.0.0.1:{port} refused to tunnel", "HTTP 403"),
                {"proxy": f"http://127.0.0.1:{port}"},
            )
    elif kind == "proxy-down":
        port = free_port()
        yield Scenario(
            "ProxyError",
            (f"connection refused by proxy 127.0.0.1:{port}",),
            {"proxy": f"http://127.0.0.1:{port}"},
        )
    elif kind == "hang-up":
        async with tcp_server(hangs_up) as port:
            yield Scenario(
                "Unreachable",
                (
                    f"connection to 127.0.0.1:{port} cut during the TLS or WebSocket handshake",
                    "(ConnectionResetError",
                ),
                {"control_plane": f"wss://127.0.0.1:{port}"},
            )
    else:  # pragma: no cover - a typo in the parameter list
        raise AssertionError(kind)


KINDS = [
    "refused",
    "dns",
    "unknown-ca",
    "unauthorized",
    "http-502",
    "version",
    "timeout",
    "proxy-403",
    "proxy-down",
    "hang-up",
]


@pytest.mark.parametrize("kind", KINDS)
async def test_each_failure_is_logged_once_with_its_reason_and_on_the_dataplane(
    kind: str,
    fake_cp: FakeControlPlane,
    kube: KubeClient,
    token_file: Path,
    tls: dict[str, Any],
    names: Names,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=AGENT_LOG)
    async with scenario(kind, fake_cp, tls, tmp_path, token_file) as sc:
        cfg = config(fake_cp, token_file, tls, names, backoff_base=0.01, backoff_cap=0.05, **sc.cfg)
        async with running(cfg, kube) as r:
            await eventually(
                lambda: r.agent.connlog.attempts >= ATTEMPTS, timeout=30, what=f"{ATTEMPTS} failed attempts"
            )

            async def condition_says_it() -> bool:
                conds = await conditions(kube, names)
                return all(conds.get(t, {}).get("reason") == sc.reason for t in ("Connected", "Ready"))

            await eventually(condition_says_it, what=f"Connected/Ready reason {sc.reason}")
            conds = await conditions(kube, names)
            assert conds["Connected"]["status"] == conds["Ready"]["status"] == "False"
            lines = failure_lines(caplog)
            assert len(lines) == 1, [r.getMessage() for r in lines]  # once, however many attempts
            line = lines[0]
            assert getattr(line, "reason", None) == sc.reason and line.levelno >= logging.WARNING
            for fragment in sc.says:
                assert fragment in line.getMessage(), line.getMessage()
                assert fragment in conds["Connected"]["message"]
            assert r.agent.last_failure == sc.reason
            assert not fake_cp.hellos  # nothing ever got through


async def test_repeats_are_summed_up_and_a_change_of_state_logs_at_once(
    fake_cp: FakeControlPlane,
    kube: KubeClient,
    token_file: Path,
    tls: dict[str, Any],
    names: Names,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """refused (once, then "still failing" at most every 0.5 s) -> connected (once, saying how long it
    failed) -> disconnected (cause and duration) -> refused again (logged at once)."""
    caplog.set_level(logging.DEBUG, logger=AGENT_LOG)
    port = free_port()
    await seed(fake_cp, 1, names)
    await fake_cp.stop()  # down for now; it comes back on ``port``
    cfg = config(fake_cp, token_file, tls, names, backoff_base=0.01, backoff_cap=0.05, log_repeat_every=0.5)
    cfg.control_plane = f"wss://127.0.0.1:{port}"
    async with running(cfg, kube) as r:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await eventually(lambda: r.agent.connlog.attempts >= 20, timeout=30, what="20 refused attempts")
        elapsed = loop.time() - started
        lines = [rec.getMessage() for rec in failure_lines(caplog)]
        assert lines[0].startswith(f"cannot connect to wss://127.0.0.1:{port}")
        repeats = lines[1:]
        assert all(line.startswith("still failing: ") for line in repeats)
        assert len(repeats) <= elapsed / 0.5 + 1  # rate-limited, not one per attempt
        if repeats:
            assert "attempts since" in repeats[-1] and "connection refused" in repeats[-1]

        await fake_cp.start(port)  # the control plane comes up on that port
        await eventually(lambda: converged(fake_cp, kube, names), timeout=30, what="sync")
        connected = [rec for rec in caplog.records if getattr(rec, "event", None) == "connected"]
        assert len(connected) == 1
        msg = connected[0].getMessage()
        assert "resync" in msg and f"epoch {fake_cp.store.epoch}" in msg and "failed attempt(s)" in msg
        assert getattr(connected[0], "mode", None) == "resync" and getattr(connected[0], "url", None)

        caplog.clear()
        await fake_cp.stop()  # the control plane goes away: disconnected, then refused again
        await eventually(lambda: r.agent.connlog.attempts >= 3, timeout=30, what="refused again")
        events = [getattr(rec, "event", None) for rec in caplog.records if rec.levelno >= logging.INFO]
        assert events.count("disconnected") == 1 and events.count("connect_failed") == 1
        assert events.index("disconnected") < events.index("connect_failed")
        gone = next(rec for rec in caplog.records if getattr(rec, "event", None) == "disconnected")
        assert "disconnected from" in gone.getMessage() and " after " in gone.getMessage()
        assert isinstance(getattr(gone, "duration_s", None), float)


async def test_json_logs_carry_the_same_fields(
    fake_cp: FakeControlPlane,
    kube: KubeClient,
    token_file: Path,
    tls: dict[str, Any],
    names: Names,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=AGENT_LOG)
    port = free_port()
    cfg = config(fake_cp, token_file, tls, names, backoff_base=0.01, backoff_cap=0.05)
    cfg.control_plane = f"wss://127.0.0.1:{port}"
    async with running(cfg, kube) as r:
        await eventually(lambda: r.agent.connlog.attempts >= 2, what="two attempts")
    doc = json.loads(JsonFormatter().format(failure_lines(caplog)[0]))
    assert doc["reason"] == "ConnectionRefused" and doc["attempt"] == 1
    assert doc["url"] == f"wss://127.0.0.1:{port}/api/v1/tunnel" and doc["port"] == port
    assert doc["host"] == "127.0.0.1" and isinstance(doc["retry_in"], float)
    assert "connection refused" in doc["message"]


async def test_heartbeat_renewed_on_the_agents_own_timer_with_its_bound_and_ready(
    fake_cp: FakeControlPlane, kube: KubeClient, token_file: Path, tls: dict[str, Any], names: Names
) -> None:
    """The control plane heartbeats only every 300 s: the renewals are the agent's own."""
    fake_cp.heartbeat_interval = 300.0
    await seed(fake_cp, 1, names)
    cfg: AgentConfig = config(fake_cp, token_file, tls, names, heartbeat_every=0.4, heartbeat_bound=7)
    async with running(cfg, kube) as r:
        await eventually(lambda: converged(fake_cp, kube, names), what="sync")
        first = (await dataplane(kube, names))["lastHeartbeatTime"]

        async def renewed() -> bool:
            return (await dataplane(kube, names)).get("lastHeartbeatTime") != first

        await eventually(renewed, timeout=5, what="a renewed lastHeartbeatTime")
        st = await dataplane(kube, names)
        assert st["connected"] is True and st["heartbeatBoundSeconds"] == 7
        conds = {c["type"]: c for c in st["conditions"]}
        assert conds["Ready"]["status"] == conds["Connected"]["status"] == "True"
        assert conds["Ready"]["reason"] == "Connected"
        await eventually(lambda: r.agent.dp.heartbeats >= 3, timeout=5, what="renewals every 0.4 s")
        assert len(fake_cp.hellos) == 1
    st = await dataplane(kube, names)
    conds = {c["type"]: c for c in st["conditions"]}
    assert st["connected"] is False
    assert (conds["Ready"]["status"], conds["Ready"]["reason"]) == ("False", "Stopped")
    assert conds["Connected"]["reason"] == "Stopped"


async def test_default_heartbeat_bound_is_45_seconds(
    fake_cp: FakeControlPlane, kube: KubeClient, token_file: Path, tls: dict[str, Any], names: Names
) -> None:
    await seed(fake_cp, 1, names)
    async with running(config(fake_cp, token_file, tls, names), kube):
        await eventually(lambda: converged(fake_cp, kube, names), what="sync")
        assert (await dataplane(kube, names))["heartbeatBoundSeconds"] == 45


def test_tls_handshake_failure_other_than_verification_is_tls_error() -> None:
    from choreo_dp.agent.connlog import classify, target_of

    target = target_of("wss://cp.example:8443/api/v1/tunnel", None, "/t", None)
    exc = ssl.SSLError(1, "[SSL: TLSV1_ALERT_PROTOCOL_VERSION] tlsv1 alert protocol version")
    exc.reason = "TLSV1_ALERT_PROTOCOL_VERSION"
    out = classify(exc, target, open_timeout=10)
    assert out.reason == "TLSError" and "cp.example:8443" in out.message
    assert "TLSV1_ALERT_PROTOCOL_VERSION" in out.message


SILENT_FAILURES = [
    (ConnectionResetError(), "Unreachable", "connection reset by peer (ConnectionResetError)"),
    (ConnectionAbortedError(), "Unreachable", "connection aborted (ConnectionAbortedError)"),
    (BrokenPipeError(), "Unreachable", "(broken pipe) (BrokenPipeError)"),
    (
        ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
        "Unreachable",
        "Connection reset by peer (ConnectionResetError, ECONNRESET)",
    ),
    (OSError(), "Unreachable", "no detail given (OSError)"),
    (OSError(errno.EHOSTUNREACH, ""), "Unreachable", "(OSError, EHOSTUNREACH)"),
    (EOFError(), "ConnectionLost", "connection closed by peer (EOFError)"),
    (asyncio.IncompleteReadError(b"", 5), "ConnectionLost", "(IncompleteReadError)"),
    (ssl.SSLError(), "TLSError", "(SSLError)"),
    (InvalidMessage("did not receive a valid HTTP response"), "HandshakeFailed", "(InvalidMessage)"),
    (RuntimeError(), "InternalError", "no detail given (RuntimeError)"),
]


@pytest.mark.parametrize(
    ("exc", "reason", "says"),
    SILENT_FAILURES,
    ids=[f"{type(e).__name__}-{i}" for i, (e, _, _) in enumerate(SILENT_FAILURES)],
)
def test_a_failure_without_text_still_names_its_cause(exc: BaseException, reason: str, says: str) -> None:
    """An exception whose str() is empty (a peer or proxy that resets the connection) used to log
    "cannot reach 127.0.0.1:PORT:  [Unreachable]"; every line names a cause instead."""
    from choreo_dp.agent.connlog import classify, target_of

    out = classify(exc, target_of("wss://cp.example:8443/api/v1/tunnel", None, "/t", None), open_timeout=10)
    assert out.reason == reason and says in out.message, out.message
    assert not out.message.rstrip().endswith(":") and ":  " not in out.message and "()" not in out.message


def test_a_handshake_failure_names_what_ended_it() -> None:
    from choreo_dp.agent.connlog import classify, target_of

    try:
        try:
            raise EOFError("connection closed while reading HTTP status line")
        except EOFError as eof:
            raise InvalidMessage("did not receive a valid HTTP response") from eof
    except InvalidMessage as exc:
        out = classify(exc, target_of("wss://cp.example:8443", None, "/t", None), open_timeout=10)
    assert out.reason == "HandshakeFailed"
    assert out.message.endswith("cause: connection closed while reading HTTP status line (EOFError)")


def test_cause_text_of_an_empty_timeout_and_of_plain_text() -> None:
    from choreo_dp.agent.connlog import cause_text

    assert cause_text(TimeoutError()) == "timed out (TimeoutError)"
    assert cause_text(ValueError("bad frame")) == "bad frame (ValueError)"
