"""Several control-plane replicas with real agents behind a load balancer (issue 19).

The agent (``choreo_dp.agent``) dials a small round-robin TCP balancer in front of the replicas,
as it would dial HAProxy in front of a Deployment; it writes to the test's Kubernetes API (the
emulator and the real kube-apiserver, through the tunnel tests' fixtures). Replicas share one
PostgreSQL database; a replica may reach it through a TCP proxy this test can cut (a partition
between that replica and the database only).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from choreo_cp.context import TunnelSettings
from choreo_cp.server import ControlPlaneServer, ServerConfig
from choreo_dp.agent.agent import Agent, AgentConfig
from choreo_dp.agent.cluster import ANN_REVISION
from choreo_dp.kube import KubeClient
from choreo_dp.kube import resources as R
from tests.controlplane.helpers import ADMIN_TOKEN, ENV_SPEC
from tests.polling import eventually
from tests.soak.tcp_proxy import TunnelProxy
from tests.tunnel import conftest as tunnel
from tests.tunnel.conftest import Names

# The tunnel tests' fixtures: the test's Kubernetes API (emulator and real) with the CRDs, unique
# names on the shared real cluster, the agent's state namespace, no proxy from the environment.
apiserver = tunnel.apiserver
kube = tunnel.kube
names = tunnel.names
_state_namespace = tunnel._state_namespace
_no_proxy_env = tunnel._no_proxy_env

pytestmark = pytest.mark.timeout(180)

CHUNK = 64 * 1024


class Balancer:
    """Round robin over backends; a backend that refuses the connection is skipped (HAProxy's
    ``redispatch``), so a killed replica costs a client one failed dial at most."""

    def __init__(self, backends: list[tuple[str, int]]) -> None:
        self.backends = backends
        self.port = 0
        self._next = 0
        self._server: asyncio.Server | None = None
        self._live: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._live):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    async def _dial(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        for _ in range(len(self.backends)):
            target = self.backends[self._next % len(self.backends)]
            self._next += 1
            try:
                return await asyncio.wait_for(asyncio.open_connection(*target), 2)
            except (OSError, TimeoutError):
                continue
        return None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = await self._dial()
        if upstream is None:
            writer.transport.abort()
            return
        up_reader, up_writer = upstream
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
            for task in pumps:
                task.cancel()
                self._tasks.discard(task)

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, TimeoutError, asyncio.IncompleteReadError):
            while data := await reader.read(CHUNK):
                writer.write(data)
                await asyncio.wait_for(writer.drain(), 30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def via(url: str, port: int) -> str:
    """The database URL ``url`` reached through a proxy on 127.0.0.1:``port``."""
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{user}@127.0.0.1:{port}" if user else f"127.0.0.1:{port}"))


def replica(db: str) -> ControlPlaneServer:
    return ControlPlaneServer(
        ServerConfig(
            host="127.0.0.1",
            port=0,
            db=db,
            admin_token=ADMIN_TOKEN,
            tunnel=TunnelSettings(heartbeat_interval=2.0, idle_timeout=30.0, status_flush_interval=0.05),
        )
    )


@contextlib.asynccontextmanager
async def rest(base: str, *, keepalive: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    # keepalive off: every request dials the balancer again and so goes to the next replica
    limits = httpx.Limits() if keepalive else httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=15, limits=limits
    ) as client:
        yield client


@contextlib.asynccontextmanager
async def agent_through(
    lb: Balancer, kube: KubeClient, token: str, names: Names, tmp_path: Path
) -> AsyncIterator[Agent]:
    token_file = tmp_path / "dp-token"
    token_file.write_text(token + "\n")
    agent = Agent(
        AgentConfig(
            control_plane=f"ws://127.0.0.1:{lb.port}",
            dataplane_id=names.dp,
            token_file=str(token_file),
            insecure=True,
            backoff_base=0.05,
            backoff_cap=0.5,
            proxy=None,
        ),
        kube,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        yield agent
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def dp_view(http: httpx.AsyncClient, dp: str) -> dict[str, Any]:
    r = await http.get(f"/api/v1/dataplanes/{dp}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def app(image: str = "ghcr.io/acme/shop:1") -> dict[str, Any]:
    return {"project": "shop", "type": "service", "image": image, "replicas": 1}


async def in_cluster_at(kube: KubeClient, names: Names, name: str, revision: int) -> bool:
    obj = await kube.get(R.CHOREOAPPS, name, names.ns)
    return obj is not None and obj["metadata"]["annotations"].get(ANN_REVISION) == str(revision)


async def test_a_replica_that_loses_postgresql_refuses_writes_and_its_agents_move(
    postgres_db: Callable[[], str], kube: KubeClient, names: Names, tmp_path: Path
) -> None:
    db = postgres_db()
    host, port = urlsplit(db).hostname or "127.0.0.1", urlsplit(db).port or 5432
    pg_for_a = TunnelProxy(host, port)
    await pg_for_a.start()
    a, b = replica(via(db, pg_for_a.port)), replica(db)
    lb: Balancer | None = None
    try:
        await a.start()
        await b.start()
        lb = Balancer([("127.0.0.1", a.port), ("127.0.0.1", b.port)])  # the agent's first dial: A
        await lb.start()
        async with rest(a.url) as http_a, rest(b.url) as http_b:
            token = (await http_b.put(f"/api/v1/dataplanes/{names.dp}")).json()["token"]
            r = await http_b.put(
                f"/api/v1/dataplanes/{names.dp}/environments/{names.env}", json={"spec": ENV_SPEC}
            )
            assert r.status_code == 202, r.text
            async with agent_through(lb, kube, token, names, tmp_path):
                await eventually(lambda: a.cp.hub.get(names.dp) is not None, timeout=15, what="agent on A")
                r = await http_b.put(
                    f"/api/v1/dataplanes/{names.dp}/environments/{names.env}/apps/one", json={"spec": app()}
                )
                one = r.json()["revision"]
                await eventually(
                    lambda: in_cluster_at(kube, names, "one", one), timeout=15, what="one applied"
                )

                pg_for_a.cut()  # A alone loses the database
                await eventually(
                    lambda: b.cp.hub.get(names.dp) is not None, timeout=20, what="agent moved to B"
                )

                async def a_unhealthy() -> bool:
                    r = await http_a.get("/healthz")
                    return r.status_code == 500 and "PostgreSQL unreachable" in r.text

                await eventually(a_unhealthy, timeout=10, what="A's healthz says why")
                refused = await http_a.put(
                    f"/api/v1/dataplanes/{names.dp}/environments/{names.env}/apps/two", json={"spec": app()}
                )
                assert refused.status_code == 503 and refused.headers.get("retry-after"), refused.text
                assert a.cp.hub.get(names.dp) is None
                r = await http_b.put(
                    f"/api/v1/dataplanes/{names.dp}/environments/{names.env}/apps/two", json={"spec": app()}
                )
                two = r.json()["revision"]
                assert two == one + 1  # A's refused write left nothing
                await eventually(
                    lambda: in_cluster_at(kube, names, "two", two), timeout=15, what="two applied"
                )

                async def applied_visible() -> bool:
                    return (await dp_view(http_b, names.dp))["appliedRevision"] == two

                await eventually(applied_visible, timeout=15, what="applied revision through B")

                pg_for_a.restore()

                async def a_healthy_and_writing() -> bool:
                    if (await http_a.get("/healthz")).status_code != 200:
                        return False
                    r = await http_a.put(
                        f"/api/v1/dataplanes/{names.dp}/environments/{names.env}/apps/three",
                        json={"spec": app()},
                    )
                    return r.status_code == 202

                await eventually(a_healthy_and_writing, timeout=20, what="A recovered")
                three = (await dp_view(http_a, names.dp))["revision"]
                await eventually(
                    lambda: in_cluster_at(kube, names, "three", three), timeout=15, what="three applied"
                )
    finally:
        if lb is not None:
            await lb.stop()
        await a.stop()
        await b.stop()
        await pg_for_a.stop()


def _log_file(path: Path) -> Any:
    return path.open("wb")


async def _spawn_replica(db: str, tmp_path: Path) -> tuple[asyncio.subprocess.Process, int]:
    port = free_port()
    token_file = tmp_path / "admin-token"
    token_file.write_text(ADMIN_TOKEN + "\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "choreo_dp.cli.main", "control-plane", "serve",
        "--listen", f"127.0.0.1:{port}", "--db", db, "--admin-token-file", str(token_file),
        stdout=asyncio.subprocess.DEVNULL, stderr=_log_file(tmp_path / "replica.log"),
    )  # fmt: skip

    async def healthy() -> bool:
        try:
            async with httpx.AsyncClient(timeout=1) as c:
                return (await c.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
        except httpx.HTTPError:
            return False

    await eventually(healthy, timeout=30, interval=0.1, what="subprocess replica healthy")
    return proc, port


async def test_killing_the_replica_that_holds_the_agent_loses_no_acknowledged_revision(
    postgres_db: Callable[[], str], kube: KubeClient, names: Names, tmp_path: Path
) -> None:
    """kill -9 of the replica holding the agent during a burst of pushes through the balancer:
    every 202 is in the cluster at its revision, once; the agent continues incrementally on B."""
    db = postgres_db()
    proc, port = await _spawn_replica(db, tmp_path)
    b = replica(db)
    lb: Balancer | None = None
    try:
        await b.start()
        lb = Balancer([("127.0.0.1", port), ("127.0.0.1", b.port)])  # the agent's first dial: the child
        await lb.start()
        async with rest(b.url) as http_b, rest(f"http://127.0.0.1:{lb.port}", keepalive=False) as http_lb:
            token = (await http_b.put(f"/api/v1/dataplanes/{names.dp}")).json()["token"]
            r = await http_b.put(
                f"/api/v1/dataplanes/{names.dp}/environments/{names.env}", json={"spec": ENV_SPEC}
            )
            assert r.status_code == 202
            async with agent_through(lb, kube, token, names, tmp_path):

                async def on_the_child() -> bool:
                    v = await dp_view(http_b, names.dp)
                    return bool(v["connected"]) and b.cp.hub.get(names.dp) is None

                await eventually(on_the_child, timeout=15, what="agent on the subprocess replica")
                acked: dict[str, int] = {}
                failed = 0

                async def push(i: int) -> None:
                    nonlocal failed
                    name = f"burst{i}"
                    try:
                        r = await http_lb.put(
                            f"/api/v1/dataplanes/{names.dp}/environments/{names.env}/apps/{name}",
                            json={"spec": app(f"ghcr.io/acme/shop:{i}")},
                        )
                    except httpx.HTTPError:
                        failed += 1
                        return
                    if r.status_code == 202:
                        acked[name] = int(r.json()["revision"])
                    else:
                        failed += 1

                pushes = []
                for i in range(40):
                    pushes.append(asyncio.create_task(push(i)))
                    if i == 15:
                        os.kill(proc.pid, signal.SIGKILL)
                    await asyncio.sleep(0.01)
                await asyncio.gather(*pushes)
                await asyncio.wait_for(proc.wait(), 10)
                assert len(acked) >= 20, (acked, failed)
                last = max(acked.values())

                async def all_applied() -> bool:
                    return (await dp_view(http_b, names.dp))["appliedRevision"] == last

                await eventually(all_applied, timeout=30, what="every acknowledged revision applied")
                for name, revision in acked.items():
                    obj = await kube.get(R.CHOREOAPPS, name, names.ns)
                    assert obj is not None, name
                    assert obj["metadata"]["annotations"][ANN_REVISION] == str(revision), name
                    assert obj["metadata"]["generation"] == 1, name  # written once, never re-applied
                    assert obj["spec"]["image"] == f"ghcr.io/acme/shop:{name.removeprefix('burst')}"
                starts = b.cp.metrics.registry.get_sample_value
                assert starts("choreo_cp_tunnel_session_starts_total", {"mode": "incremental"}) == 1.0
                assert starts("choreo_cp_tunnel_session_starts_total", {"mode": "resync"}) is None
                print(f"burst: {len(acked)} acknowledged, {failed} refused or cut by the kill")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if lb is not None:
            await lb.stop()
        await b.stop()
