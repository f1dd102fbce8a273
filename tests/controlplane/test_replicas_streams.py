"""Logs, events and live state through any replica (issues 16 x 19).

Replicas share one PostgreSQL database; the real agent (``choreo_dp.agent``) holds its session on
replica B (or on a replica in a child process, to kill it), and the user asks replica A. The pods
are a Deployment's whose template carries the app's label (no operator runs here), Running by the
emulator's simulator or by kwok on the real cluster; both API servers serve their logs from kwok
``Logs`` files this test writes and appends to (as tests/tunnel/test_streams.py does).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from choreo_cp.forward import HOP_HEADER
from choreo_cp.store import now_rfc3339
from choreo_dp.agent.agent import Agent
from choreo_dp.agent.streams.manager import StreamManager
from choreo_dp.kube import KubeClient
from choreo_dp.kube import resources as R
from tests.controlplane.helpers import ENV_SPEC
from tests.controlplane.test_replicas_agents import (
    Balancer,
    _spawn_replica,
    agent_through,
    app,
    free_port,
    replica,
    rest,
)
from tests.e2e.test_observe_e2e import Follow
from tests.polling import eventually
from tests.tunnel import conftest as tunnel
from tests.tunnel.conftest import Names, TunnelApi
from tests.tunnel.test_streams import OLD, _deployment, _running_pods, _serve_logs, cri

apiserver = tunnel.apiserver
kube = tunnel.kube
names = tunnel.names
_state_namespace = tunnel._state_namespace
_no_proxy_env = tunnel._no_proxy_env

pytestmark = pytest.mark.timeout(180)

APP = "web"


@dataclass
class Pods:
    names: list[str]
    files: dict[str, Path]

    def append(self, pod: str, text: str) -> None:
        with self.files[pod].open("a") as f:
            f.write(cri(text, datetime.now(UTC)))


async def define(http: httpx.AsyncClient, names: Names) -> str:
    token: str = (await http.put(f"/api/v1/dataplanes/{names.dp}")).json()["token"]
    r = await http.put(f"/api/v1/dataplanes/{names.dp}/environments/{names.env}", json={"spec": ENV_SPEC})
    assert r.status_code == 202, r.text
    r = await http.put(
        f"/api/v1/dataplanes/{names.dp}/environments/{names.env}/apps/{APP}", json={"spec": app()}
    )
    assert r.status_code == 202, r.text
    return token


async def pods_with_logs(apiserver: TunnelApi, kube: KubeClient, names: Names, tmp_path: Path) -> Pods:
    """Two running pods of the app, each logging two old lines (kwok ``Logs`` files)."""
    if apiserver.emulated and not apiserver.server.simulator.enabled:
        apiserver.server.simulator.enabled = True
        apiserver.server.simulator.start()
    await _deployment(kube, names.ns, f"{APP}-w", APP, 2)
    pods = Pods(await _running_pods(kube, names.ns, APP, 2), {})
    for i, pod in enumerate(pods.names):
        pods.files[pod] = tmp_path / f"{pod}.log"
        pods.files[pod].write_text(cri(f"p{i} one", OLD) + cri(f"p{i} two", OLD + timedelta(seconds=1)))
        previous = tmp_path / f"{pod}.prev.log"
        previous.write_text(cri(f"p{i} before", OLD - timedelta(hours=1)))
        await _serve_logs(kube, names.ns, pod, pods.files[pod], previous)
    return pods


def manager(agent: Agent) -> StreamManager:
    session = agent.session
    assert session is not None
    return session.streams


async def audit(http: httpx.AsyncClient, dp: str) -> list[dict[str, Any]]:
    r = await http.get("/api/v1/audit", params={"dataplane": dp, "limit": 1000})
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def audited(http: httpx.AsyncClient, dp: str, n: int) -> list[dict[str, Any]]:
    """The audit trail once it holds ``n`` records (they are written just after each response)."""

    async def probe() -> list[dict[str, Any]] | None:
        items = await audit(http, dp)
        return items if len(items) >= n else None

    items = await eventually(probe, timeout=10, what=f"{n} audit records")
    assert items is not None
    return items


async def test_logs_events_and_live_through_a_replica_that_does_not_hold_the_session(
    postgres_db: Callable[[], str], apiserver: TunnelApi, kube: KubeClient, names: Names, tmp_path: Path
) -> None:
    db = postgres_db()
    a, b = replica(db), replica(db)
    lb: Balancer | None = None
    try:
        await a.start()
        await b.start()
        lb = Balancer([("127.0.0.1", b.port)])
        await lb.start()
        async with rest(a.url) as http_a, rest(b.url) as http_b:
            token = await define(http_a, names)
            async with agent_through(lb, kube, token, names, tmp_path) as agent:
                await eventually(lambda: b.cp.hub.get(names.dp) is not None, timeout=15, what="agent on B")
                assert a.cp.hub.get(names.dp) is None
                pods = await pods_with_logs(apiserver, kube, names, tmp_path)
                p0, p1 = pods.names
                base = f"/api/v1/dataplanes/{names.dp}/environments/{names.env}/apps/{APP}"
                asked = 0

                # the same answer through A as from B itself (every pod's lines, prefixed)
                via_a = await http_a.get(base + "/logs")
                via_b = await http_b.get(base + "/logs")
                asked += 2
                assert via_a.status_code == via_b.status_code == 200, via_a.text
                assert via_a.headers["content-type"] == via_b.headers["content-type"]
                expected = sorted(
                    f"{p}/app: p{i} {w}" for i, p in enumerate(pods.names) for w in ("one", "two")
                )
                assert sorted(via_a.text.splitlines()) == sorted(via_b.text.splitlines()) == expected
                r = await http_a.get(base + "/logs", params={"previous": "true", "pod": p1})
                asked += 1
                assert r.status_code == 200 and r.text == f"{p1}/app: p1 before\n", r.text

                # a refusal keeps its status and detail; a misspelt parameter is refused by A itself
                gone_a = await http_a.get(base + "/logs", params={"pod": "nope"})
                gone_b = await http_b.get(base + "/logs", params={"pod": "nope"})
                asked += 2
                assert gone_a.status_code == gone_b.status_code != 200, gone_a.text
                assert gone_a.json() == gone_b.json()
                assert (await http_a.get(base + "/logs", params={"folow": "true"})).status_code == 422

                # a user cannot pass for a replica (a wrong hop secret): audited and answered as usual
                r = await http_a.get(base + "/live", headers={HOP_HEADER: "guess"})
                asked += 1
                assert r.status_code == 200 and r.headers["content-type"] == "application/json"

                # follow through A: old lines, then appended ones as they come, in NDJSON too
                async with Follow(http_a, base + "/logs", params={"follow": "true", "pod": p0}) as text:
                    asked += 1
                    assert await text.until(2) == [f"{p0}/app: p0 one", f"{p0}/app: p0 two"]
                    pods.append(p0, "appended 1")
                    assert (await text.until(3))[2] == f"{p0}/app: appended 1"
                    pods.append(p0, "appended 2")
                    assert (await text.until(4))[3] == f"{p0}/app: appended 2"
                    assert b.cp.streams.count(names.dp) == 1 and a.cp.streams.count(names.dp) == 0
                    tasks = [entry.task for entry in manager(agent).streams.values()]
                    assert len(tasks) == 1
                # the client went away at A: the agent's stream (on B's session) ends within a second
                gone = time.monotonic()
                await eventually(
                    lambda: all(t.done() for t in tasks) and not manager(agent).streams,
                    timeout=1.0,
                    interval=0.01,
                    what="the agent's stream task to end",
                )
                assert time.monotonic() - gone < 1.0
                await eventually(
                    lambda: b.cp.streams.count(names.dp) == 0, timeout=1.0, what="B's slot freed"
                )

                nd_headers = {"Accept": "application/x-ndjson"}
                async with Follow(
                    http_a, base + "/logs", params={"follow": "true", "pod": p1}, headers=nd_headers
                ) as nd:
                    asked += 1
                    assert nd.response is not None
                    assert nd.response.headers["content-type"] == "application/x-ndjson"
                    records = [json.loads(x) for x in await nd.until(2)]
                    assert records == [
                        {"type": "line", "text": f"{p1}/app: p1 one"},
                        {"type": "line", "text": f"{p1}/app: p1 two"},
                    ]

                # events, newest first, and a watch that sees a new one
                pod = await kube.get(R.PODS, p0, names.ns)
                assert pod is not None
                await kube.post_event(
                    {**pod, "apiVersion": "v1", "kind": "Pod"}, "Warning", "HopOops", "x", "t"
                )

                async def event_through_a() -> list[dict[str, Any]] | None:
                    nonlocal asked
                    r = await http_a.get(base + "/events")
                    asked += 1
                    assert r.status_code == 200, r.text
                    events: list[dict[str, Any]] = r.json()
                    return events if any(e["reason"] == "HopOops" for e in events) else None

                events = await eventually(event_through_a, timeout=15, what="the event through A")
                assert events is not None
                stamps = [e["lastTimestamp"] for e in events]
                assert stamps == sorted(stamps, reverse=True)
                async with Follow(http_a, base + "/events", params={"watch": "true"}) as watch:
                    asked += 1
                    await watch.until(len(events))
                    await kube.post_event(
                        {**pod, "apiVersion": "v1", "kind": "Pod"}, "Normal", "HopLater", "y", "t"
                    )

                    async def later() -> bool:
                        await watch.until(len(watch.lines) + 1, timeout=5)
                        return any(
                            json.loads(x).get("object", {}).get("reason") == "HopLater" for x in watch.lines
                        )

                    await eventually(later, timeout=15, what="the watched event through A")

                # live state: the same objects as B answers
                live_a = (await http_a.get(base + "/live")).json()
                live_b = (await http_b.get(base + "/live")).json()
                asked += 2
                rows = {(o["kind"], o["name"]) for o in live_a["objects"]}
                assert rows == {(o["kind"], o["name"]) for o in live_b["objects"]}
                assert {("Pod", p0), ("Pod", p1)} <= rows and live_a["app"] == live_b["app"]

                # one audit record per request, none by the owner for what it served for A
                records = await audited(http_b, names.dp, asked)
                assert len(await audit(http_a, names.dp)) == asked, [r["kind"] for r in records]
                assert {r["who"] for r in records} == {"admin"}
                assert {r["client"] for r in records} == {"127.0.0.1"}
                text_follow = [r for r in records if r["kind"] == "logs" and r["params"].get("pod") == p0]
                assert len(text_follow) == 1 and text_follow[0]["bytes"] == sum(
                    len(f"{p0}/app: {t}\n") for t in ("p0 one", "p0 two", "appended 1", "appended 2")
                )
                assert "appended 1" not in json.dumps(records), "log content is never stored"
    finally:
        if lb is not None:
            await lb.stop()
        await a.stop()
        await b.stop()


async def test_an_owner_that_cannot_be_reached_is_503_with_retry_after(
    postgres_db: Callable[[], str], tmp_path: Path
) -> None:
    db = postgres_db()
    a, ghost = replica(db), replica(db)
    try:
        await a.start()
        await ghost.start()
        names = Names("ghost")
        async with rest(a.url) as http_a:
            await define(http_a, names)
            # a session held by a replica that is gone (its row still says open: killed before it
            # could end it), advertised at a port nobody listens on
            ghost.store.advertise_url = f"http://127.0.0.1:{free_port()}"
            await ghost.store.claim_session(
                names.dp, "s1", replica="gone", remote="127.0.0.1", started_at=now_rfc3339()
            )
            base = f"/api/v1/dataplanes/{names.dp}/environments/{names.env}/apps/{APP}"
            for kind, params in (("logs", {"follow": "true"}), ("events", {}), ("live", {})):
                started = time.monotonic()
                r = await http_a.get(f"{base}/{kind}", params=params)
                assert r.status_code == 503, (kind, r.text)
                assert int(r.headers["retry-after"]) >= 1
                assert "cannot be reached" in r.json()["detail"]
                assert time.monotonic() - started < 5.0, "bounded by the hop's connect timeout"
            records = await audited(http_a, names.dp, 3)
            assert [(r["status"], r["code"]) for r in records] == [(503, "unavailable")] * 3
    finally:
        await a.stop()
        await ghost.stop()


async def test_the_owner_killed_mid_stream_ends_the_stream_at_a_with_a_reason(
    postgres_db: Callable[[], str], apiserver: TunnelApi, kube: KubeClient, names: Names, tmp_path: Path
) -> None:
    db = postgres_db()
    proc, port = await _spawn_replica(db, tmp_path)
    a = replica(db)
    lb: Balancer | None = None
    try:
        await a.start()
        lb = Balancer([("127.0.0.1", port)])  # the agent holds its session on the child alone
        await lb.start()
        async with rest(a.url) as http_a:
            token = await define(http_a, names)
            async with agent_through(lb, kube, token, names, tmp_path):

                async def on_the_child() -> bool:
                    r = await http_a.get(f"/api/v1/dataplanes/{names.dp}")
                    return bool(r.json()["connected"]) and a.cp.hub.get(names.dp) is None

                await eventually(on_the_child, timeout=15, what="agent on the child replica")
                pods = await pods_with_logs(apiserver, kube, names, tmp_path)
                p0, p1 = pods.names
                base = f"/api/v1/dataplanes/{names.dp}/environments/{names.env}/apps/{APP}"
                async with (
                    Follow(http_a, base + "/logs", params={"follow": "true", "pod": p0}) as text,
                    Follow(
                        http_a,
                        base + "/logs",
                        params={"follow": "true", "pod": p1},
                        headers={"Accept": "application/x-ndjson"},
                    ) as nd,
                ):
                    assert len(await text.until(2)) == 2
                    assert len(await nd.until(2)) == 2
                    os.kill(proc.pid, signal.SIGKILL)
                    rest_text = await text.rest(timeout=10)
                    assert rest_text[-1].startswith(
                        "--- stream ended: disconnected: the control-plane replica serving the data plane went away"
                    ), rest_text
                    ends = [json.loads(x) for x in await nd.rest(timeout=10)]
                    assert [r["type"] for r in ends] == ["line", "line", "end"], ends
                    assert ends[-1]["code"] == "disconnected" and "went away" in ends[-1]["message"]
                await asyncio.wait_for(proc.wait(), 10)
                records = await audited(http_a, names.dp, 2)
                assert len(records) == 2 and {r["code"] for r in records} == {"disconnected"}
                assert {r["status"] for r in records} == {200}
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if lb is not None:
            await lb.stop()
        await a.stop()
