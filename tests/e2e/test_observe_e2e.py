"""Issue 16 end to end: logs, events and live state asked over REST (and the CLI) of the real control
plane, carried by the real TLS tunnel to the real agent, read from the cluster the operator made.

Each target (``kube_faulty_target``: emulator | real): the emulated API with its workload simulator, and the session's real
cluster (kube-apiserver, controllers, kwok). The operator turns the app into a Deployment whose pods
(made Running by the simulator or kwok) get kwok ``Logs`` naming files this test writes and appends
to; both API servers serve ``pods/log`` from them (``follow``, ``previous``, ``sinceSeconds``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from choreo_cp.server import ControlPlaneServer
from choreo_dp.agent.agent import Agent, AgentConfig
from choreo_dp.agent.streams.manager import StreamManager
from choreo_dp.api.environment import default_namespace
from choreo_dp.kube import resources as R
from tests import polling
from tests.controlplane.helpers import ADMIN_TOKEN
from tests.e2e.test_tunnel_e2e import dataplane_removed, target_cluster, tls_server
from tests.fixtures.kube import RealClusterProcess
from tests.operator.harness import Cluster, running_operator
from tests.tunnel.test_streams import OLD, _running_pods, _serve_logs, cri

pytestmark = pytest.mark.timeout(240)

APP = "orders"
ENV_SPEC: dict[str, Any] = {"displayName": "Dev", "registry": {"allowedPrefixes": ["ghcr.io/acme/"]}}
APP_SPEC: dict[str, Any] = {
    "project": "shop",
    "type": "service",
    "image": "ghcr.io/acme/orders:1.0",
    "replicas": 2,
    "endpoints": [{"name": "http", "port": 8080, "visibility": "Organization"}],
}


async def eventually(probe: Any, what: str, timeout: float = 30.0, interval: float = 0.05) -> Any:
    return await polling.eventually(probe, what, timeout=timeout, interval=interval)


@dataclass
class Stack:
    cluster: Cluster
    cp: ControlPlaneServer
    http: httpx.AsyncClient
    dp: str
    env: str
    ns: str
    tmp: Path
    agent: Agent
    pods: list[str]
    files: dict[str, Path]
    stop: asyncio.Event
    task: asyncio.Task[None]

    @property
    def base(self) -> str:
        return f"/api/v1/dataplanes/{self.dp}/environments/{self.env}/apps/{APP}"

    @property
    def manager(self) -> StreamManager:
        session = self.agent.session
        assert session is not None
        return session.streams

    def append(self, pod: str, *texts: str) -> None:
        with self.files[pod].open("a") as f:
            for text in texts:
                f.write(cri(text, datetime.now(UTC)))
                f.flush()

    async def restart_agent(self, **kw: Any) -> None:
        await self.stop_agent()
        self.stop = asyncio.Event()
        self.agent = Agent(agent_config(self.cp, self.dp, self.tmp, **kw), self.cluster.kube)
        self.task = asyncio.create_task(self.agent.run(self.stop))
        await eventually(self.connected, "the agent connected again")

    async def stop_agent(self) -> None:
        self.stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.task, 15)

    async def connected(self) -> bool:
        return bool((await self.http.get(f"/api/v1/dataplanes/{self.dp}")).json()["connected"])


def agent_config(cp: ControlPlaneServer, dp: str, tmp: Path, **kw: Any) -> AgentConfig:
    return AgentConfig(
        control_plane=f"wss://127.0.0.1:{cp.port}",
        dataplane_id=dp,
        token_file=str(tmp / "dp-token"),
        ca_file=str(tmp / "ca.pem"),
        backoff_base=0.05,
        backoff_cap=0.5,
        proxy=None,
        **kw,
    )


@contextlib.asynccontextmanager
async def live_stack(target: RealClusterProcess | None, tmp_path: Path) -> AsyncIterator[Stack]:
    """Control plane, agent and operator; the app Ready with two pods whose logs are files here."""
    async with target_cluster(target, tmp_path) as cluster:
        dp, env = cluster.env_name("obs"), cluster.env_name("obsdev")
        async with dataplane_removed(cluster, dp), running_operator(cluster), tls_server(tmp_path) as cp:
            http = httpx.AsyncClient(
                base_url=cp.url,
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                verify=ssl.create_default_context(cafile=str(tmp_path / "ca.pem")),
                timeout=20,
            )
            stack: Stack | None = None
            try:
                token = (await http.put(f"/api/v1/dataplanes/{dp}")).json()["token"]
                (tmp_path / "dp-token").write_text(token + "\n")
                assert (
                    await http.put(f"/api/v1/dataplanes/{dp}/environments/{env}", json={"spec": ENV_SPEC})
                ).status_code == 202
                put = await http.put(
                    f"/api/v1/dataplanes/{dp}/environments/{env}/apps/{APP}", json={"spec": APP_SPEC}
                )
                assert put.status_code == 202
                stop = asyncio.Event()
                agent = Agent(agent_config(cp, dp, tmp_path), cluster.kube)
                task = asyncio.create_task(agent.run(stop))
                stack = Stack(
                    cluster, cp, http, dp, env, default_namespace(env), tmp_path, agent, [], {}, stop, task
                )

                async def ready() -> bool:
                    status = (await http.get(stack.base)).json().get("status") or {}
                    return status.get("phase") == "Ready" and status.get("ready") == "2/2"

                await eventually(ready, "the app Ready upstream", timeout=90)
                stack.pods = await _running_pods(cluster.kube, stack.ns, APP, 2)
                for i, pod in enumerate(stack.pods):
                    stack.files[pod] = tmp_path / f"{pod}.log"
                    stack.files[pod].write_text(
                        cri(f"p{i} one", OLD) + cri(f"p{i} two", OLD.replace(second=1))
                    )
                    previous = tmp_path / f"{pod}.prev.log"
                    previous.write_text(cri(f"p{i} before the restart", OLD.replace(year=2023)))
                    await _serve_logs(cluster.kube, stack.ns, pod, stack.files[pod], previous)
                yield stack
            finally:
                if stack is not None:
                    await stack.stop_agent()
                await http.aclose()


def by_pod(lines: list[str], pod: str) -> list[str]:
    return [line.split(": ", 1)[1] for line in lines if line.startswith(f"{pod}/app: ")]


class Follow:
    """A streamed GET read line by line, closable mid-stream like a client going away."""

    def __init__(self, http: httpx.AsyncClient, path: str, **kw: Any) -> None:
        self.http, self.path, self.kw = http, path, kw
        self.lines: list[str] = []
        self.response: httpx.Response | None = None
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Follow:
        self.response = await self._stack.enter_async_context(self.http.stream("GET", self.path, **self.kw))
        self._iter = self.response.aiter_lines()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._stack.aclose()

    async def until(self, n: int, timeout: float = 30.0) -> list[str]:
        """Read until ``n`` lines in all (or the body ends)."""
        async with asyncio.timeout(timeout):
            while len(self.lines) < n:
                try:
                    self.lines.append(await anext(self._iter))
                except StopAsyncIteration:
                    break
        return self.lines

    async def rest(self, timeout: float = 30.0) -> list[str]:
        async with asyncio.timeout(timeout):
            self.lines.extend([line async for line in self._iter])
        return self.lines


# -----------------------------------------------------------------------------------------------


async def test_logs_follow_interleave_previous_and_both_ends_going_away(
    kube_faulty_target: RealClusterProcess | None, tmp_path: Path
) -> None:
    async with live_stack(kube_faulty_target, tmp_path) as s:
        p0, p1 = s.pods

        # every pod's lines, prefixed, each pod in its order
        r = await s.http.get(s.base + "/logs")
        assert r.status_code == 200, r.text
        lines = r.text.splitlines()
        assert sorted(lines) == sorted(
            f"{p}/app: p{i} {w}" for i, p in enumerate(s.pods) for w in ("one", "two")
        )
        assert by_pod(lines, p0) == ["p0 one", "p0 two"] and by_pod(lines, p1) == ["p1 one", "p1 two"]

        # previous: the container before its restart
        r = await s.http.get(s.base + "/logs", params={"previous": "true", "pod": p1})
        assert r.status_code == 200 and r.text.splitlines() == [f"{p1}/app: p1 before the restart"]

        # a quiet follow (nothing since 1 s) starts at once on the agent's acknowledgement, not
        # after the control plane's answer timeout
        asked = time.monotonic()
        async with Follow(
            s.http, s.base + "/logs", params={"follow": "true", "since": "1s", "pod": p0}
        ) as quiet:
            assert quiet.response is not None and quiet.response.status_code == 200
            started = time.monotonic() - asked
            assert started < s.cp.cp.streams.limits.answer_timeout, started
            s.append(p0, "p0 fresh")
            assert await quiet.until(1) == [f"{p0}/app: p0 fresh"]

        # follow every pod: the old lines, then appended ones of both pods as they come
        async with Follow(s.http, s.base + "/logs", params={"follow": "true"}) as both:
            assert len(await both.until(5)) == 5  # p0 has three lines now
            s.append(p1, "p1 a")
            s.append(p0, "p0 b")
            s.append(p1, "p1 c")
            got = await both.until(8)
            assert by_pod(got, p0) == ["p0 one", "p0 two", "p0 fresh", "p0 b"]
            assert by_pod(got, p1) == ["p1 one", "p1 two", "p1 a", "p1 c"]
            tasks = [entry.task for entry in s.manager.streams.values()]
            assert len(tasks) == 1
        # the client went away: the agent's stream (its pod readers included) ends within a second
        gone = time.monotonic()
        # Done, and forgotten by the manager (a done callback, one loop turn after the task ends).
        await eventually(
            lambda: all(t.done() for t in tasks) and not s.manager.streams,
            "the agent's stream task to end",
            timeout=1.0,
            interval=0.01,
        )
        assert time.monotonic() - gone < 1.0

        # the data plane goes away mid-stream: text and NDJSON clients get a clean end with the reason
        async with (
            Follow(s.http, s.base + "/logs", params={"follow": "true", "pod": p0}) as text,
            Follow(
                s.http,
                s.base + "/logs",
                params={"follow": "true", "pod": p1},
                headers={"Accept": "application/x-ndjson"},
            ) as nd,
        ):
            await text.until(4)
            await nd.until(4)
            await s.stop_agent()
            rest = await text.rest(timeout=20)
            assert rest[-1].startswith("--- stream ended: disconnected: the data plane disconnected"), rest
            records = [json.loads(x) for x in await nd.rest(timeout=20)]
            assert [r["type"] for r in records] == ["line"] * 4 + ["end"]
            assert records[-1]["code"] == "disconnected"
        assert s.cp.cp.streams.count(s.dp) == 0

        audit = (await s.http.get("/api/v1/audit", params={"dataplane": s.dp})).json()["items"]
        assert [a["code"] for a in audit[:2]] == ["disconnected", "disconnected"]
        assert not any("p0 fresh" in json.dumps(a) for a in audit), "log content is never stored"


async def test_events_live_cli_and_the_switch(
    kube_faulty_target: RealClusterProcess | None, tmp_path: Path
) -> None:
    async with live_stack(kube_faulty_target, tmp_path) as s:
        p0, p1 = s.pods
        pod = await s.cluster.kube.get(R.PODS, p0, s.ns)
        assert pod is not None
        await s.cluster.kube.post_event(
            {**pod, "apiVersion": "v1", "kind": "Pod"}, "Warning", "E2EOops", "first", "e2e"
        )

        events = (await s.http.get(s.base + "/events")).json()
        mine = [e for e in events if e["reason"] == "E2EOops"]
        assert len(mine) == 1 and mine[0]["object"] == f"Pod/{p0}" and mine[0]["type"] == "Warning"
        stamps = [e["lastTimestamp"] for e in events]
        assert stamps == sorted(stamps, reverse=True), "newest first"

        async with Follow(s.http, s.base + "/events", params={"watch": "true"}) as watch:
            await watch.until(len(events))
            await s.cluster.kube.post_event(
                {**pod, "apiVersion": "v1", "kind": "Pod"}, "Normal", "E2ELater", "second", "e2e"
            )

            async def later() -> bool:
                await watch.until(len(watch.lines) + 1, timeout=5)
                return any(json.loads(x)["object"]["reason"] == "E2ELater" for x in watch.lines)

            await eventually(later, "the watched event")

        live = (await s.http.get(s.base + "/live")).json()
        rows = {(o["kind"], o["name"]): o for o in live["objects"]}
        deployments = [o for (kind, _), o in rows.items() if kind == "Deployment"]
        assert len(deployments) == 1 and deployments[0]["ready"] == "2/2"
        for name in (p0, p1):
            assert rows[("Pod", name)]["status"] == "Running" and rows[("Pod", name)]["ready"] == "1/1"

        # the CLI against the live stack
        env = {
            **os.environ,
            "CHOREO_DP_CP_URL": s.cp.url,
            "CHOREO_DP_CP_TOKEN": ADMIN_TOKEN,
            "CHOREO_DP_CA_FILE": str(s.tmp / "ca.pem"),
        }
        target = [APP, "--environment", s.env, "--dataplane", s.dp]
        cli = [sys.executable, "-m", "choreo_dp.cli.main", "cp"]
        proc = await asyncio.create_subprocess_exec(
            *cli,
            "logs",
            *target,
            "-f",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            seen: list[str] = []

            async def line() -> str:
                seen.append((await asyncio.wait_for(proc.stdout.readline(), 30)).decode().rstrip("\n"))  # type: ignore[union-attr]
                return seen[-1]

            for _ in range(4):
                await line()
            assert sorted(seen) == sorted(
                f"{p}/app: p{i} {w}" for i, p in enumerate(s.pods) for w in ("one", "two")
            )
            s.append(p1, "through the CLI")
            assert await line() == f"{p1}/app: through the CLI"
        finally:
            if proc.returncode is None:
                proc.terminate()
            await asyncio.wait_for(proc.wait(), 10)

        described = await asyncio.create_subprocess_exec(
            *cli,
            "describe",
            "app",
            *target,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(described.communicate(), 60)
        text = out.decode()
        assert described.returncode == 0, err.decode()
        for expected in (APP_SPEC["image"], "Ready", p0, p1, "E2EOops", "Live:", "Events:"):
            assert expected in text, (expected, text)

        # switched off in the data plane: every kind is a 403 that says so
        await s.restart_agent(observability_enabled=False)
        for kind in ("logs", "events", "live"):
            r = await s.http.get(f"{s.base}/{kind}")
            assert r.status_code == 403 and "observability" in r.json()["detail"], (kind, r.text)
        r = await s.http.get(s.base + "/logs", params={"follow": "true"})
        assert r.status_code == 403
