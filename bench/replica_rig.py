"""Control-plane replicas as processes behind one load balancer, and the rolling restart over them.

Shared by ``bench/bench_replicas.py`` (3,000 simulated agents) and
``tests/controlplane/test_replicas_rolling.py`` (30): replicas are ``choreo-dp control-plane serve
--db postgresql://...`` subprocesses on fixed loopback ports (a restarted replica comes back on its
port, so the balancer's configuration never changes), one TLS certificate for 127.0.0.1 shared by
all of them (the agents pin one CA, as behind a real load balancer), one admin token.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import ssl
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx
import trustme

from bench.agent_sim import SimAgent, Simulator
from bench.balancer import Balancer, free_port, make_balancer
from choreo_cp.store import Store
from choreo_dp.kube.backoff import Backoff
from choreo_wire import protocol as p
from tests.polling import eventually

ENV = "dev"
APP = "app"
ENV_SPEC: dict[str, Any] = {"registry": {"allowedPrefixes": ["*"]}}
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
PUSH_CLIENTS = 8
PUSH_ATTEMPTS = 12
PUSH_BACKOFF = Backoff(base=0.1, cap=2.0)
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


class Certs:
    def __init__(self, workdir: Path) -> None:
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1")
        self.ca = workdir / "ca.pem"
        self.cert = workdir / "cert.pem"
        self.key = workdir / "key.pem"
        ca.cert_pem.write_to_path(str(self.ca))
        cert.cert_chain_pems[0].write_to_path(str(self.cert))
        cert.private_key_pem.write_to_path(str(self.key))
        self.admin_token = secrets.token_urlsafe(24)
        self.admin_token_file = workdir / "admin-token"
        self.admin_token_file.write_text(self.admin_token)

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


class Replica:
    def __init__(
        self, index: int, db: str, certs: Certs, workdir: Path, rebalance_interval: float | None = None
    ) -> None:
        self.index = index
        # None: the server's default (30 s)
        self.rebalance_interval = rebalance_interval
        self.db = db
        self.certs = certs
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.log = workdir / f"replica-{index}.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "choreo_dp.cli.main", "control-plane", "serve",
                "--listen", f"127.0.0.1:{self.port}", "--db", self.db,
                "--tls-cert", str(self.certs.cert), "--tls-key", str(self.certs.key),
                "--admin-token-file", str(self.certs.admin_token_file), "--log-level", "WARNING",
                *(() if self.rebalance_interval is None else ("--rebalance-interval", str(self.rebalance_interval))),
                stdout=asyncio.subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
        self.starts += 1
        async with httpx.AsyncClient(verify=self.certs.client_context(), timeout=5) as http:

            async def healthy() -> bool:
                if not self.running:
                    raise RuntimeError(f"replica {self.index} exited: {self.tail()}")
                try:
                    return (await http.get(f"{self.url}/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(healthy, f"replica {self.index} healthy", timeout=START_TIMEOUT, interval=0.1)

    async def terminate(self) -> float:
        """SIGTERM (agents get goaway) and wait for the exit; seconds it took."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise RuntimeError(f"replica {self.index} ignored SIGTERM for {STOP_TIMEOUT} s") from None
        return time.monotonic() - t0

    async def kill(self) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.kill()
            await self.proc.wait()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""

    async def sessions(self, http: httpx.AsyncClient) -> int:
        """The replica's own count of tunnel sessions (``choreo_cp_tunnel_sessions``)."""
        text = (await http.get(f"{self.url}/metrics")).text
        for line in text.splitlines():
            if line.startswith("choreo_cp_tunnel_sessions "):
                return int(float(line.split()[1]))
        return 0


async def seed(db: str, n: int, prefix: str = "sim") -> list[SimAgent]:
    """n registered dataplanes, each with one Environment, written through the store (group commits:
    REST would take minutes for 3,000); one SimAgent (fresh: no epoch, nothing applied) each."""
    async with Store(db) as store:
        names = [f"{prefix}-{i}" for i in range(n)]
        todo = iter(names)
        tokens: dict[str, str] = {}

        async def writer() -> None:
            for dp in todo:
                _, token, _ = await store.register_dataplane(dp)
                assert token is not None, f"{dp} was registered already"
                tokens[dp] = token
                await store.put_object(dp, "Environment", ENV, ENV, ENV_SPEC)

        await asyncio.gather(*(writer() for _ in range(min(64, n))))
    return [SimAgent(dp, tokens[dp]) for dp in names]


class Rig:
    """``replicas`` control planes on one database behind one balancer."""

    def __init__(
        self,
        db: str,
        replicas: int,
        workdir: Path,
        certs: Certs,
        balancer: str = "haproxy",
        rebalance_interval: float | None = None,
    ) -> None:
        self.db = db
        self.certs = certs
        self.workdir = workdir
        self.replicas = [Replica(i, db, certs, workdir, rebalance_interval) for i in range(replicas)]
        self.balancer: Balancer = make_balancer([r.port for r in self.replicas], workdir, balancer)
        self.ssl = certs.client_context()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.balancer.port}"

    async def __aenter__(self) -> Rig:
        try:
            await asyncio.gather(*(r.start() for r in self.replicas))
            await self.balancer.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.balancer.stop()
        for r in self.replicas:
            if r.running:
                with contextlib.suppress(RuntimeError):
                    await r.terminate()

    def simulator(self, agents: list[SimAgent], connect_concurrency: int = 50) -> Simulator:
        return Simulator("127.0.0.1", self.balancer.port, self.ssl, agents, connect_concurrency)

    def http(self, base: str | None = None) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=base or self.url,
            headers={"Authorization": f"Bearer {self.certs.admin_token}"},
            verify=self.ssl,
            timeout=30,
            limits=httpx.Limits(max_connections=PUSH_CLIENTS),
        )

    async def sessions(self) -> list[int]:
        async with self.http() as http:
            return [await r.sessions(http) if r.running else 0 for r in self.replicas]


async def push_app(http: httpx.AsyncClient, dp: str, tag: str) -> int:
    """PUT the dataplane's app (through the balancer) until a 202; its object revision.

    A retry after a lost answer is harmless: the same spec again is not a change and answers the
    stored object's revision, so the figure is the revision the 202 acknowledged either way."""
    spec = {"project": "shop", "type": "service", "image": f"ghcr.io/acme/x:{tag}", "replicas": 1}
    last = ""
    for attempt in range(PUSH_ATTEMPTS):
        try:
            r = await http.put(f"/api/v1/dataplanes/{dp}/environments/{ENV}/apps/{APP}", json={"spec": spec})
            if r.status_code == 202:
                return int(r.json()["objectRevision"])
            last = f"{r.status_code} {r.text[:200]}"
            if r.status_code < 500:
                break
        except httpx.TransportError as exc:  # a replica going away under the request
            last = f"{exc.__class__.__name__}: {exc}"
        await asyncio.sleep(PUSH_BACKOFF.delay(attempt))
    raise RuntimeError(f"PUT app of {dp} failed: {last}")


async def push_all(rig: Rig, dataplanes: list[str], tag: str) -> dict[str, tuple[str, int]]:
    pushed: dict[str, tuple[str, int]] = {}
    todo = iter(dataplanes)
    async with rig.http() as http:

        async def worker() -> None:
            for dp in todo:
                pushed[dp] = (p.app_key(ENV, APP), await push_app(http, dp, tag))

        await asyncio.gather(*(worker() for _ in range(PUSH_CLIENTS)))
    return pushed


async def steady_state(rig: Rig, sim: Simulator, window: float) -> dict[str, Any]:
    """CPU (% of one core) and RSS per replica over ``window`` seconds of idle agents with heartbeats,
    and the heartbeat round trips measured by the agents in that window."""
    for a in sim.agents:
        a.rtts.clear()
    pids = [r.pid for r in rig.replicas]
    lb_pid = rig.balancer.pid
    cpu0 = [cpu_seconds(pid) for pid in pids]
    lb0 = cpu_seconds(lb_pid) if lb_pid else 0.0
    own0 = time.process_time()
    await asyncio.sleep(window)
    cpu = [cpu_seconds(pid) - c for pid, c in zip(pids, cpu0, strict=True)]
    lb_cpu = (cpu_seconds(lb_pid) - lb0) if lb_pid else None
    own = time.process_time() - own0
    rtts = [x for a in sim.agents for x in a.rtts]
    return {
        "cpu_pct": [round(100 * c / window, 1) for c in cpu],
        "cpu_pct_total": round(100 * sum(cpu) / window, 1),
        "rss_mib": [round(rss_mib(pid), 1) for pid in pids],
        "balancer_cpu_pct": None if lb_cpu is None else round(100 * lb_cpu / window, 1),
        "balancer_rss_mib": round(rss_mib(lb_pid), 1) if lb_pid else None,
        "simulator_cpu_pct": round(100 * own / window, 1),
        "heartbeats": len(rtts),
        "heartbeat_p50_ms": round(percentile(rtts, 0.5) * 1000, 2),
        "heartbeat_p99_ms": round(percentile(rtts, 0.99) * 1000, 2),
        "sessions": await rig.sessions(),
    }


async def _restart_one(
    rig: Rig,
    sim: Simulator,
    i: int,
    pushing: asyncio.Task[dict[str, tuple[str, int]]],
    move_timeout: float,
) -> dict[str, Any]:
    replica = rig.replicas[i]
    held = (await rig.sessions())[i]
    moved_before = sum(len(a.moves) for a in sim.agents)
    t0 = time.monotonic()
    stop_s = await replica.terminate()

    def moved() -> bool:
        if pushing.done() and pushing.exception() is not None:
            raise pushing.exception()  # type: ignore[misc]
        return sum(len(a.moves) for a in sim.agents) - moved_before >= held and sim.synced() == len(
            sim.agents
        )

    await eventually(
        moved, f"the {held} agents of replica {i} synced elsewhere", timeout=move_timeout, interval=0.05
    )
    move_s = time.monotonic() - t0
    await replica.start()
    # Back in rotation before the next one goes: the balancer's health check has seen it.
    await eventually(lambda: rig.balancer.up(i), f"replica {i} back in rotation", timeout=30, interval=0.1)
    return {"replica": i, "agents": held, "stop_s": round(stop_s, 2), "moved_all_s": round(move_s, 2)}


async def rolling_restart(
    rig: Rig,
    sim: Simulator,
    push: Callable[[list[str]], Coroutine[Any, Any, dict[str, tuple[str, int]]]],
    move_timeout: float = 120.0,
) -> dict[str, Any]:
    """SIGTERM each replica in turn, pushing a revision to a third of the dataplanes meanwhile; wait
    until the agents it held are synced on another replica, restart it, wait until it is healthy and
    back in the balancer's rotation, then the next. Returns the pushed revisions and timings."""
    pushed: dict[str, tuple[str, int]] = {}
    dps = [a.dataplane for a in sim.agents]
    steps: list[dict[str, Any]] = []
    for i in range(len(rig.replicas)):
        pushing = asyncio.create_task(push(dps[i :: len(rig.replicas)]))
        try:
            steps.append(await _restart_one(rig, sim, i, pushing, move_timeout))
            pushed.update(await asyncio.wait_for(pushing, move_timeout))
        finally:
            if not pushing.done():
                pushing.cancel()
    moves = [m for a in sim.agents for m in a.moves]
    return {
        "pushed": pushed,
        "steps": steps,
        "moves": len(moves),
        "move_p50_s": round(statistics.median(moves), 3) if moves else None,
        "move_p99_s": round(percentile(moves, 0.99), 3) if moves else None,
        "move_max_s": round(max(moves), 3) if moves else None,
    }


async def wait_applied(sim: Simulator, pushed: dict[str, tuple[str, int]], timeout: float) -> bool:
    """True once every agent has applied (at least) its pushed revision; False at the timeout."""
    by_dp = {a.dataplane: a for a in sim.agents}
    try:
        await eventually(
            lambda: all(by_dp[dp].applied >= rev for dp, (_, rev) in pushed.items()),
            "every pushed revision applied",
            timeout=timeout,
            interval=0.1,
        )
    except AssertionError:
        return False
    return True
