"""On-demand streams through the agent (issue 16): logs from kwok ``Logs`` files, events, live state,
cancellation, limits, credit, the switch and the session's end, against both API servers.

The fake control plane sends stream.open / stream.credit / stream.end as raw frames and records what
comes back. Pods are a Deployment's whose template carries the app's label (no operator runs here);
on the real cluster kwok serves their logs and learns of a new ``Logs`` through its own watch, so the
first read waits until the file is served.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from choreo_dp.agent.streams.budget import ReadBudget
from choreo_dp.agent.streams.manager import StreamManager
from choreo_dp.api.vocabulary import APP_LABEL
from choreo_dp.kube import ApiError, KubeClient
from choreo_dp.kube import resources as R
from choreo_wire import protocol as P
from tests.tunnel.conftest import Names, TunnelApi, eventually
from tests.tunnel.fakecp import FakeControlPlane
from tests.tunnel.test_agent import Running, config, converged, running, seed

pytestmark = pytest.mark.timeout(120)

KWOK_LOGS = R.Resource("kwok.x-k8s.io", "v1alpha1", "logs", "Logs", True)
APP = "app-0"
DEADLINE = 60.0


def cri(text: str, at: datetime) -> str:
    return f"{at.strftime('%Y-%m-%dT%H:%M:%S.%fZ')} stdout F {text}\n"


OLD = datetime(2024, 1, 1, tzinfo=UTC)


@dataclass
class Setup:
    cp: FakeControlPlane
    kube: KubeClient
    names: Names
    agent: Running
    pods: list[str]
    files: dict[str, Path]

    @property
    def manager(self) -> StreamManager:
        session = self.agent.agent.session
        assert session is not None
        return session.streams

    async def open(
        self, kind: str = "logs", *, app: str = APP, credit: int = P.STREAM_INITIAL_CREDIT, **params: Any
    ) -> str:
        sid = uuid.uuid4().hex[:12]
        body = P.StreamOpen(
            id=sid, kind=kind, key=self.names.app_key(app), params=P.StreamParams(**params), credit=credit
        )  # type: ignore[arg-type]
        await self.cp.send_raw(P.encode(body, seq=1))
        return sid

    async def send(self, body: P.Body) -> None:
        await self.cp.send_raw(P.encode(body, seq=1))

    def frames(self, sid: str) -> list[P.StreamData | P.StreamEnd]:
        return [
            f.body
            for f in self.cp.received
            if isinstance(f.body, P.StreamData | P.StreamEnd) and f.body.id == sid
        ]

    def lines(self, sid: str) -> list[str]:
        return [line for f in self.frames(sid) if isinstance(f, P.StreamData) for line in f.lines]

    def objects(self, sid: str) -> list[dict[str, Any]]:
        return [o for f in self.frames(sid) if isinstance(f, P.StreamData) for o in f.objects]

    def end(self, sid: str) -> P.StreamEnd | None:
        ends = [f for f in self.frames(sid) if isinstance(f, P.StreamEnd)]
        assert len(ends) <= 1, ends
        return ends[0] if ends else None

    async def ended(self, sid: str, timeout: float = 20.0) -> P.StreamEnd:
        end = await eventually(lambda: self.end(sid), timeout=timeout, what=f"the end of stream {sid}")
        assert isinstance(end, P.StreamEnd)
        return end


async def _deployment(kube: KubeClient, ns: str, name: str, app: str, replicas: int) -> None:
    labels = {APP_LABEL: app}
    await kube.create(
        R.DEPLOYMENTS,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "app", "image": "registry.example.com/app:1"}]},
                },
            },
        },
    )


async def _running_pods(kube: KubeClient, ns: str, app: str, n: int) -> list[str]:
    async def probe() -> list[str] | None:
        items, _ = await kube.list(R.PODS, ns, label_selector={APP_LABEL: app})
        up = sorted(
            p["metadata"]["name"]
            for p in items
            if (p.get("spec") or {}).get("nodeName")
            and (p.get("status") or {}).get("phase") == "Running"
            and not p["metadata"].get("deletionTimestamp")
        )
        return up if len(up) == n else None

    pods = await eventually(probe, timeout=DEADLINE, interval=0.2, what=f"{n} running pods of {app}")
    assert pods is not None
    return pods


async def _serve_logs(kube: KubeClient, ns: str, pod: str, current: Path, previous: Path) -> None:
    await kube.create(
        KWOK_LOGS,
        {
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "Logs",
            "metadata": {"name": pod, "namespace": ns},
            "spec": {
                "logs": [
                    {
                        "containers": ["app"],
                        "logsFile": str(current),
                        "previousLogsFile": str(previous),
                        "follow": True,
                    }
                ]
            },
        },
    )

    async def served() -> bool:
        try:
            chunks = [
                c
                async for c in kube.stream(R.PODS.path(ns, pod, "log"), {"container": "app"}, idle_timeout=5)
            ]
        except ApiError:
            return False
        return bool(chunks)

    await eventually(served, timeout=DEADLINE, interval=0.2, what=f"kwok to serve the log of {pod}")


@pytest.fixture
async def setup(
    apiserver: TunnelApi,
    fake_cp: FakeControlPlane,
    kube: KubeClient,
    token_file: Path,
    tls: dict[str, Any],
    names: Names,
    tmp_path: Path,
) -> AsyncIterator[Setup]:
    """The agent connected and managing ``app-0`` (and ``app-1``), two running pods of app-0 whose
    container ``app`` logs two old lines each (and one previous line)."""
    if apiserver.emulated and not apiserver.server.simulator.enabled:
        # the tunnel tests' emulator runs no workloads; these need the Deployment's pods
        apiserver.server.simulator.enabled = True
        apiserver.server.simulator.start()
    await seed(fake_cp, 2, names)
    async with running(config(fake_cp, token_file, tls, names), kube) as agent:
        await eventually(lambda: converged(fake_cp, kube, names), timeout=30, what="initial sync")
        await _deployment(kube, names.ns, f"{APP}-w", APP, 2)
        pods = await _running_pods(kube, names.ns, APP, 2)
        files: dict[str, Path] = {}
        for i, pod in enumerate(pods):
            files[pod] = tmp_path / f"{pod}.log"
            files[pod].write_text(cri(f"p{i} one", OLD) + cri(f"p{i} two", OLD + timedelta(seconds=1)))
            prev = tmp_path / f"{pod}.prev.log"
            prev.write_text(cri(f"p{i} before the restart", OLD - timedelta(hours=1)))
            await _serve_logs(kube, names.ns, pod, files[pod], prev)
        yield Setup(fake_cp, kube, names, agent, pods, files)


# --------------------------------------------------------------------------------------------


async def test_logs_of_every_pod_prefixed_in_order_with_tail_since_previous_and_one_pod(setup: Setup) -> None:
    s = setup
    p0, p1 = s.pods
    sid = await s.open()
    assert (await s.ended(sid)).code == "done"
    got = s.lines(sid)
    assert sorted(got) == sorted(
        [f"{p0}/app: p0 one", f"{p0}/app: p0 two", f"{p1}/app: p1 one", f"{p1}/app: p1 two"]
    )
    for pod in (p0, p1):  # each pod's lines in their order, whatever the interleaving
        mine = [line for line in got if line.startswith(f"{pod}/")]
        assert [line.rsplit(" ", 1)[1] for line in mine] == ["one", "two"]

    tail = await s.open(tail_lines=1)
    assert (await s.ended(tail)).code == "done"
    assert sorted(s.lines(tail)) == [f"{p0}/app: p0 two", f"{p1}/app: p1 two"]

    previous = await s.open(previous=True, pod=p1)
    assert (await s.ended(previous)).code == "done"
    assert s.lines(previous) == [f"{p1}/app: p1 before the restart"]

    # sinceSeconds: only lines younger than that (the file's first lines are from 2024)
    with s.files[p0].open("a") as f:
        f.write(cri("p0 fresh", datetime.now(UTC)))
    since = await s.open(since_seconds=300, pod=p0)
    assert (await s.ended(since)).code == "done"
    assert s.lines(since) == [f"{p0}/app: p0 fresh"]


async def test_follow_sees_appended_lines_and_cancel_stops_the_reader_within_a_second(setup: Setup) -> None:
    s = setup
    p0, _ = s.pods
    sid = await s.open(follow=True, pod=p0)
    await eventually(lambda: len(s.lines(sid)) == 2, timeout=20, what="the existing lines")
    # acknowledged before any data, so the control plane can start a quiet follow's response
    assert s.frames(sid)[0] == P.StreamData(id=sid, seq=0)
    assert [f.seq for f in s.frames(sid) if isinstance(f, P.StreamData)] == list(range(len(s.frames(sid))))
    with s.files[p0].open("a") as f:
        f.write(cri("appended 1", datetime.now(UTC)))
        f.flush()
        f.write(cri("appended 2", datetime.now(UTC)))
    await eventually(
        lambda: s.lines(sid)[2:] == [f"{p0}/app: appended 1", f"{p0}/app: appended 2"],
        timeout=20,
        what="appended lines",
    )
    assert s.end(sid) is None, "a follow stays open"
    entry = s.manager.streams[sid]
    await s.send(P.StreamEnd(id=sid, code="cancelled"))
    await eventually(lambda: entry.task.done(), timeout=1.0, interval=0.01, what="the stream's task to stop")
    assert sid not in s.manager.streams
    assert (await s.ended(sid, timeout=2)).code == "cancelled"
    # nothing after the end: a line appended now goes nowhere
    with s.files[p0].open("a") as f:
        f.write(cri("after the end", datetime.now(UTC)))
    probe = await s.open(pod=p0, tail_lines=1)
    await s.ended(probe)
    assert s.lines(probe) == [f"{p0}/app: after the end"]
    assert not any("after the end" in line for line in s.lines(sid))


async def test_follow_ends_done_when_its_pod_goes_away(setup: Setup) -> None:
    s = setup
    p0, _ = s.pods
    sid = await s.open(follow=True, pod=p0)
    await eventually(lambda: len(s.lines(sid)) == 2, timeout=20, what="the existing lines")
    await s.kube.request("DELETE", R.PODS.path(s.names.ns, p0), body={"gracePeriodSeconds": 0})
    end = await s.ended(sid, timeout=30)
    assert end.code == "done"


async def test_limits_concurrency_bytes_and_credit(setup: Setup) -> None:
    s = setup
    p0, _ = s.pods
    # limitBytes: what fits, then limit
    capped = await s.open(limit_bytes=40)
    end = await s.ended(capped)
    assert end.code == "limit" and "limitBytes" in end.message
    assert sum(len(x.encode()) + 1 for x in s.lines(capped)) <= 40

    # no credit: the first line only, waiting, until stream.credit
    first_cost = len(f"{p0}/app: p0 one".encode()) + 1
    slow = await s.open(pod=p0, credit=first_cost)
    await eventually(lambda: s.lines(slow) == [f"{p0}/app: p0 one"], timeout=20, what="the first line")
    channel = s.manager.streams[slow].channel
    assert channel.credit == 0 and s.end(slow) is None, "waits for credit, not done"
    await s.send(P.StreamCredit(id=slow, bytes=1000))
    assert (await s.ended(slow)).code == "done"
    assert s.lines(slow) == [f"{p0}/app: p0 one", f"{p0}/app: p0 two"]

    # no credit for too long: limit
    s.manager.credit_wait = 0.3
    starved = await s.open(pod=p0, credit=1)
    end = await s.ended(starved)
    assert end.code == "limit" and "no credit" in end.message

    # concurrency: past the bound the open is refused with a retry-after
    s.manager.max_concurrent = 1
    held = await s.open(follow=True, pod=p0)
    await eventually(lambda: len(s.lines(held)) >= 2, timeout=20, what="the held stream's lines")
    refused = await s.open(pod=p0)
    end = await s.ended(refused)
    assert end.code == "limit" and end.retry_after and end.retry_after > 0
    assert s.lines(refused) == []


async def test_refusals_not_found_forbidden_and_a_pod_of_another_app(setup: Setup) -> None:
    s = setup
    # an app nobody has
    gone = await s.open(app="no-such-app")
    assert (await s.ended(gone)).code == "not_found"
    # an app in the Environment's namespace that this data plane did not write
    await s.kube.create(
        R.CHOREOAPPS,
        {
            "apiVersion": "choreo.dev/v1alpha1",
            "kind": "ChoreoApp",
            "metadata": {"name": "foreign", "namespace": s.names.ns},
            "spec": {
                "environment": s.names.env,
                "project": "p",
                "type": "service",
                "image": "registry.example.com/x:1",
            },
        },
    )
    foreign = await s.open(app="foreign")
    assert (await s.ended(foreign)).code == "forbidden"
    # app-1 is ours, but app-0's pod is not one of its pods
    other = await s.open(app="app-1", pod=s.pods[0])
    end = await s.ended(other)
    assert end.code == "forbidden" and s.frames(other) == [end], "a refusal is never acknowledged first"
    # a live stream of an app without pods answers an empty snapshot
    empty = await s.open("live", app="app-1")
    assert (await s.ended(empty)).code == "done"
    assert [f for f in s.frames(empty) if isinstance(f, P.StreamData)] == [P.StreamData(id=empty, seq=0)]


async def test_events_newest_first_and_live_state(setup: Setup) -> None:
    s = setup
    p0, p1 = s.pods
    pod = await s.kube.get(R.PODS, p0, s.names.ns)
    assert pod is not None
    await s.kube.post_event(
        {**pod, "apiVersion": "v1", "kind": "Pod"}, "Warning", "TestOops", "first", "tests"
    )
    await s.kube.post_event(
        {**pod, "apiVersion": "v1", "kind": "Pod"}, "Normal", "TestFine", "second", "tests"
    )
    sid = await s.open("events")
    assert (await s.ended(sid)).code == "done"
    ours = [o for o in s.objects(sid) if str(o["reason"]).startswith("Test")]
    assert {o["reason"] for o in ours} == {"TestOops", "TestFine"}
    assert all(o["object"] == f"Pod/{p0}" for o in ours)
    stamps = [o["lastTimestamp"] for o in s.objects(sid)]
    assert stamps == sorted(stamps, reverse=True), "newest first"

    # follow: an Event written after the start arrives
    watch = await s.open("events", follow=True)
    await eventually(lambda: s.frames(watch)[:1] == [P.StreamData(id=watch, seq=0)], what="the ack")
    await eventually(
        lambda: len(s.objects(watch)) >= len(s.objects(sid)), timeout=20, what="the listed events"
    )
    await s.kube.post_event(
        {**pod, "apiVersion": "v1", "kind": "Pod"}, "Warning", "TestLater", "third", "tests"
    )
    await eventually(
        lambda: any(o["reason"] == "TestLater" for o in s.objects(watch)),
        timeout=20,
        what="the watched event",
    )
    await s.send(P.StreamEnd(id=watch, code="cancelled"))
    assert (await s.ended(watch)).code == "cancelled"

    live = await s.open("live")
    assert (await s.ended(live)).code == "done"
    rows = {(o["kind"], o["name"]): o for o in s.objects(live)}
    assert rows[("Deployment", f"{APP}-w")]["ready"] == "2/2"
    for name in (p0, p1):
        row = rows[("Pod", name)]
        assert row["ready"] == "1/1" and row["restarts"] == 0 and row["status"] == "Running"
        assert row["node"] and isinstance(row["age"], int)
    assert not any(kind == "ReplicaSet" for kind, _ in rows)


async def test_session_end_cancels_every_stream(setup: Setup) -> None:
    s = setup
    manager = s.manager
    sids = [await s.open(follow=True, pod=pod) for pod in s.pods]
    await eventually(lambda: all(len(s.lines(sid)) == 2 for sid in sids), timeout=20, what="both streams")
    tasks = [manager.streams[sid].task for sid in sids]
    await s.cp.kill_link()
    await eventually(lambda: all(t.done() for t in tasks), timeout=10, what="the streams to be cancelled")
    assert manager.closed and not manager.streams


@pytest.fixture
async def switched_off(
    fake_cp: FakeControlPlane, kube: KubeClient, token_file: Path, tls: dict[str, Any], names: Names
) -> AsyncIterator[Setup]:
    await seed(fake_cp, 1, names)
    async with running(config(fake_cp, token_file, tls, names, observability_enabled=False), kube) as agent:
        await eventually(lambda: converged(fake_cp, kube, names), timeout=30, what="initial sync")
        yield Setup(fake_cp, kube, names, agent, [], {})


async def test_switched_off_answers_disabled(switched_off: Setup) -> None:
    s = switched_off
    for kind in ("logs", "events", "live"):
        sid = await s.open(kind)
        end = await s.ended(sid)
        assert end.code == "disabled" and "observability" in end.message
        assert s.frames(sid) == [end]
    assert not s.manager.streams


async def test_the_log_read_budget_holds_the_aggregate_rate_of_several_streams(setup: Setup) -> None:
    """Three followed streams read one shared budget: the bytes read from the API over a window stay
    within rate * window + burst + one read per reader in flight, at least 70 % of the rate is used
    (the API serves far faster), and the streams share it evenly (turns go first come, first served)."""
    s = setup
    p0, p1 = s.pods
    for pod in s.pods:  # ~2 MiB per file: no reader reaches the end within the window
        with s.files[pod].open("a") as f:
            f.write("".join(cri(f"{pod} {'x' * 180} {n}", OLD + timedelta(seconds=2)) for n in range(10_000)))
    rate, burst, readers = 512 << 10, 64 << 10, 3
    budget = ReadBudget(rate, burst)
    s.manager.budget = budget
    sids = [await s.open(follow=True, pod=p, credit=16 << 20) for p in (p0, p1, p0)]
    # past the burst, the bucket is in its steady state
    await eventually(
        lambda: budget.read_bytes > 2 * burst and all(s.lines(sid) for sid in sids),
        timeout=20,
        what="every stream flowing",
    )
    loop = asyncio.get_running_loop()
    t0, read0 = loop.time(), budget.read_bytes
    sent0 = {sid: _payload(s.lines(sid)) for sid in sids}
    await eventually(
        lambda: budget.read_bytes >= read0 + 3 * rate, timeout=30, interval=0.02, what="3 s of the rate"
    )
    window, read = loop.time() - t0, budget.read_bytes - read0
    assert all(s.end(sid) is None for sid in sids), [s.end(sid) for sid in sids]
    assert read <= rate * window + burst + readers * budget.largest_read, (read, window)
    assert read >= 0.7 * rate * window, (read, window)
    assert budget.largest_read <= budget.reserve, budget.largest_read
    shares = [_payload(s.lines(sid)) - sent0[sid] for sid in sids]
    # Every stream gets its share: reads are at most one reservation, turns go round in arrival
    # order, so the shares differ by a few reservations (~600 KB each here). Unbounded reads (a
    # whole buffered connection, half a second of the rate at once) gave [603747, 603747, 0] in a
    # loaded fresh-clone run.
    assert min(shares) >= 0.6 * max(shares), shares


def _payload(lines: list[str]) -> int:
    return sum(len(line.encode()) + 1 for line in lines)
