"""The agent and a failing Kubernetes API: it outlives an outage, and a refusal is not retried quietly.

The API is put behind a TCP relay that the test stops (connections refused, open ones cut, watches
included) and restarts on the same port: on the emulator and on the real kube-apiserver alike.
Before supervision, the first DataPlane status write during the outage (the heartbeat's) raised an
uncaught ``ApiError: 503 ConnectionError`` that ended the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import yaml

from choreo_dp.kube import KubeClient
from tests.proxies import splice
from tests.tunnel.conftest import Faulty, Names, TunnelApi, client_for, eventually
from tests.tunnel.fakecp import FakeControlPlane
from tests.tunnel.test_agent import app_spec, config, converged, dataplane, running, seed

pytestmark = pytest.mark.timeout(90)


class TcpRelay:
    """A loopback TCP relay: ``stop()`` refuses new connections and cuts the open ones."""

    def __init__(self, host: str, upstream_port: int) -> None:
        self.host = host
        self.upstream_port = upstream_port
        self.port = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._open):
            task.cancel()
        await asyncio.gather(*self._open, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._open.add(task)
        self.connections += 1
        up_writer: asyncio.StreamWriter | None = None
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.upstream_port)
            await asyncio.gather(splice(reader, up_writer), splice(up_reader, writer))
        except OSError:
            pass
        finally:
            self._open.discard(task)
            for w in (writer, up_writer):
                if w is not None:
                    w.close()


def relayed_kubeconfig(source: Path, target: Path) -> tuple[str, int, Any]:
    """``source`` rewritten to reach the API through a relay; returns (host, upstream port, writer)."""
    doc = yaml.safe_load(source.read_text())
    cluster = doc["clusters"][0]["cluster"]
    parts = urlsplit(cluster["server"])
    assert parts.hostname is not None and parts.port is not None

    def write(relay_port: int) -> None:
        cluster["server"] = urlunsplit(parts._replace(netloc=f"{parts.hostname}:{relay_port}"))
        target.write_text(yaml.safe_dump(doc))

    return parts.hostname, parts.port, write


async def test_agent_survives_the_kubernetes_api_going_away_and_converges_after(
    apiserver: TunnelApi,
    fake_cp: FakeControlPlane,
    kube: KubeClient,
    token_file: Path,
    tls: dict[str, Any],
    names: Names,
    tmp_path: Path,
) -> None:
    host, upstream, write = relayed_kubeconfig(apiserver.kubeconfig, tmp_path / "relayed-kubeconfig")
    relay = TcpRelay(host, upstream)
    await relay.start()
    write(relay.port)
    agent_kube = client_for((await KubeClient.from_kubeconfig(tmp_path / "relayed-kubeconfig")).config)
    fake_cp.heartbeat_interval = 1.0  # the agent heartbeats every second ...
    await seed(fake_cp, 2, names)
    try:
        async with agent_kube, running(config(fake_cp, token_file, tls, names), agent_kube) as r:
            r.agent.dp.heartbeat_every = 0.5  # ... and records each reply on the DataPlane
            await eventually(lambda: converged(fake_cp, kube, names), timeout=30, what="initial sync")
            writes = r.agent.dp.writes

            await relay.stop()  # the API is gone: refused, and every open watch cut
            outage = asyncio.get_running_loop().time()
            await fake_cp.put(names.app_key("during-outage"), app_spec(names.env))
            while asyncio.get_running_loop().time() - outage < 5.0:
                assert not r.task.done(), f"the agent died during the outage: {r.task}"
                await asyncio.sleep(0.1)
            assert r.agent.dp.writes == writes  # nothing got through: the outage was real

            await relay.start()  # same port: the agent's kubeconfig is unchanged
            await eventually(
                lambda: converged(fake_cp, kube, names), timeout=60, what="convergence after the outage"
            )
            assert not r.task.done()
            # the status watch came back too: statuses of the cluster reach the control plane
            await eventually(lambda: r.agent.watch_liveness.failure is None, timeout=30)
            assert r.agent.liveness.healthy
    finally:
        with contextlib.suppress(AssertionError):
            await relay.stop()


async def test_a_refused_dataplane_write_ends_the_session_with_an_error_instead_of_retrying(
    faulty: Faulty,
    fake_cp: FakeControlPlane,
    kube: KubeClient,
    token_file: Path,
    tls: dict[str, Any],
    names: Names,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 403 would be refused again: retrying it quietly (as before) hides a missing RBAC rule."""
    await seed(fake_cp, 1, names)
    async with running(config(fake_cp, token_file, tls, names), faulty.kube) as r:
        await eventually(lambda: converged(fake_cp, kube, names), timeout=30, what="initial sync")
        hellos = len(fake_cp.hellos)
        caplog.set_level(logging.ERROR, logger="choreo_dp.agent.session")
        fault = faulty.faults.add(verb="patch", resource="dataplanes/status", status=403, count=1)
        await fake_cp.put(names.app_key("after-403"), app_spec(names.env))
        await eventually(lambda: fault.hits == 1, timeout=30, what="the refused DataPlane write")
        await eventually(lambda: converged(fake_cp, kube, names), timeout=30, what="convergence")
        refused = [rec for rec in caplog.records if "Kubernetes refused" in rec.getMessage()]
        assert refused and refused[0].levelno == logging.ERROR
        # the session ended and the next one resumed from what the DataPlane records
        assert r.agent.sessions >= 1 and len(fake_cp.hellos) > hellos
        assert not r.task.done()


async def test_a_refused_kubernetes_request_is_nacked_not_retryable(
    faulty: Faulty,
    fake_cp: FakeControlPlane,
    kube: KubeClient,
    token_file: Path,
    tls: dict[str, Any],
    names: Names,
) -> None:
    await seed(fake_cp, 1, names)
    async with running(config(fake_cp, token_file, tls, names), faulty.kube) as r:
        await eventually(lambda: converged(fake_cp, kube, names), timeout=30, what="initial sync")
        # the app's Environment cannot be read (RBAC): the same read would be refused again
        fault = faulty.faults.add(verb="get", resource="environments", status=403, count=1)
        key = names.app_key("forbidden")
        revision = await fake_cp.put(key, app_spec(names.env))
        await eventually(lambda: any(n.key == key for n in fake_cp.nacks), timeout=30, what="the nack")
        nack = next(n for n in fake_cp.nacks if n.key == key)
        assert (nack.code, nack.retryable, nack.revision) == ("rejected", False, revision)
        assert fault.hits == 1 and "403" in nack.message
        # processed: acknowledged past it, nothing left waiting behind it
        await eventually(lambda: fake_cp.applied >= revision, timeout=30, what="the ack past the nack")
        assert not r.task.done()


# --- every step of the agent against a failing API (issue 14.4) ---------------------------------


async def test_agent_started_while_the_api_is_down_waits_healthy_and_loads_when_it_returns(
    apiserver: TunnelApi,
    fake_cp: FakeControlPlane,
    kube: KubeClient,
    token_file: Path,
    tls: dict[str, Any],
    names: Names,
    tmp_path: Path,
) -> None:
    host, upstream, write = relayed_kubeconfig(apiserver.kubeconfig, tmp_path / "relayed-kubeconfig")
    relay = TcpRelay(host, upstream)
    await relay.start()
    write(relay.port)
    await relay.stop()  # down before the agent starts: the DataPlane cannot be loaded
    agent_kube = client_for((await KubeClient.from_kubeconfig(tmp_path / "relayed-kubeconfig")).config)
    await seed(fake_cp, 1, names)
    try:
        async with agent_kube, running(config(fake_cp, token_file, tls, names), agent_kube) as r:
            loop = asyncio.get_running_loop()
            down = loop.time()
            while loop.time() - down < 3.0:
                assert not r.task.done(), f"the agent died while the API was down: {r.task}"
                await asyncio.sleep(0.1)
            # waiting out an outage is progress (a restart would not cure it), a hung step is not
            assert r.agent.liveness.healthy and not fake_cp.hellos
            await relay.start()
            await eventually(
                lambda: converged(fake_cp, kube, names), timeout=60, what="sync after the outage"
            )
    finally:
        with contextlib.suppress(AssertionError):
            await relay.stop()


async def test_dataplane_load_through_5xx_and_429(
    faulty: Faulty,
    fake_cp: FakeControlPlane,
    kube: KubeClient,
    token_file: Path,
    tls: dict[str, Any],
    names: Names,
) -> None:
    # more failures than the client's own retries (3): the agent's retry loop must carry them
    unavailable = faulty.faults.add(verb="patch", resource="dataplanes", status=503, count=6)
    throttled = faulty.faults.add(verb="patch", resource="dataplanes", status=429, count=6, retry_after=1)
    await seed(fake_cp, 1, names)
    async with running(config(fake_cp, token_file, tls, names), faulty.kube) as r:
        await eventually(lambda: converged(fake_cp, kube, names), timeout=45, what="sync after the faults")
        assert (unavailable.hits, throttled.hits) == (6, 6)
        assert not r.task.done()


async def test_failing_status_writes_and_heartbeat_renewals_never_end_the_session(
    faulty: Faulty,
    fake_cp: FakeControlPlane,
    kube: KubeClient,
    token_file: Path,
    tls: dict[str, Any],
    names: Names,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """5xx, 429 and a stalled write (past the write timeout) on every DataPlane status write while
    connected: renewals fail and are logged once per kind, the session stays, renewals resume."""
    caplog.set_level(logging.INFO, logger="choreo_dp.agent.agent")
    await seed(fake_cp, 1, names)
    cfg = config(fake_cp, token_file, tls, names, heartbeat_every=0.3, status_write_timeout=1.0)
    async with running(cfg, faulty.kube) as r:
        await eventually(lambda: converged(fake_cp, kube, names), timeout=30, what="sync")
        hellos = len(fake_cp.hellos)
        faults = [
            faulty.faults.add(verb="patch", resource="dataplanes/status", status=503, count=12),
            faulty.faults.add(verb="patch", resource="dataplanes/status", status=429, count=8),
            faulty.faults.add(verb="patch", resource="dataplanes/status", stall=3.0, count=1),
        ]
        await eventually(lambda: all(f.count == 0 for f in faults), timeout=45, what="every fault met")
        renewed = r.agent.dp.heartbeats
        await eventually(lambda: r.agent.dp.heartbeats > renewed + 1, timeout=15, what="renewals again")
        assert len(fake_cp.hellos) == hellos and r.agent.session is not None  # the same session
        failed = [rec for rec in caplog.records if "cannot record the heartbeat" in rec.getMessage()]
        assert len(failed) == 1 and failed[0].levelno == logging.WARNING  # rate-limited, an outage
        assert any("works again" in rec.getMessage() for rec in caplog.records)
        assert r.agent.liveness.healthy and not r.task.done()


async def test_connection_state_is_written_once_the_api_returns_while_disconnected(
    faulty: Faulty,
    fake_cp: FakeControlPlane,
    kube: KubeClient,
    token_file: Path,
    tls: dict[str, Any],
    names: Names,
) -> None:
    """No control plane and no Kubernetes: the loop keeps trying (never blocked on the API); the
    Connected condition lands when the API comes back, even though the failure did not change."""
    await seed(fake_cp, 1, names)
    async with running(config(fake_cp, token_file, tls, names), faulty.kube) as r:
        await eventually(lambda: converged(fake_cp, kube, names), timeout=30, what="sync")
        fault = faulty.faults.add(verb="patch", resource="dataplanes/status", status=503, count=40)
        await fake_cp.stop()
        await eventually(lambda: r.agent.connlog.attempts >= 3, timeout=30, what="refused attempts")
        # cp down, API refusing: the loop went on; the DataPlane still says Disconnected or older
        assert fault.hits > 0 and not r.task.done()
        faulty.faults.clear()

        async def refused_recorded() -> bool:
            st = await dataplane(kube, names)
            conds = {c["type"]: c for c in st.get("conditions", [])}
            return (
                conds.get("Connected", {}).get("reason") == "ConnectionRefused" and st["connected"] is False
            )

        await eventually(refused_recorded, timeout=30, what="ConnectionRefused on the DataPlane")


async def test_the_session_outlives_a_kubernetes_outage(
    apiserver: TunnelApi,
    fake_cp: FakeControlPlane,
    kube: KubeClient,
    token_file: Path,
    tls: dict[str, Any],
    names: Names,
    tmp_path: Path,
) -> None:
    host, upstream, write = relayed_kubeconfig(apiserver.kubeconfig, tmp_path / "relayed-kubeconfig")
    relay = TcpRelay(host, upstream)
    await relay.start()
    write(relay.port)
    agent_kube = client_for((await KubeClient.from_kubeconfig(tmp_path / "relayed-kubeconfig")).config)
    fake_cp.heartbeat_interval = 1.0
    await seed(fake_cp, 1, names)
    cfg = config(fake_cp, token_file, tls, names, heartbeat_every=0.5, status_write_timeout=1.0)
    try:
        async with agent_kube, running(cfg, agent_kube) as r:
            await eventually(lambda: converged(fake_cp, kube, names), timeout=30, what="sync")
            hellos, renewed = len(fake_cp.hellos), r.agent.dp.heartbeats
            await relay.stop()
            loop = asyncio.get_running_loop()
            down = loop.time()
            while loop.time() - down < 5.0:
                assert not r.task.done()
                await asyncio.sleep(0.1)
            assert r.agent.dp.heartbeats == renewed  # nothing landed: the outage was real
            await relay.start()
            await eventually(lambda: r.agent.dp.heartbeats > renewed, timeout=30, what="renewal after")
            assert len(fake_cp.hellos) == hellos  # the control plane never saw the outage
            assert r.agent.liveness.healthy
    finally:
        with contextlib.suppress(AssertionError):
            await relay.stop()
