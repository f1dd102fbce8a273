"""Logs, events and live state through the tunnel, at the control plane: a raw agent peer answers
stream.open with scripted data and the HTTP client sees it as it arrives, with every limit and end."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from choreo_cp.server import ControlPlaneServer
from choreo_cp.streams import StreamLimits
from choreo_wire import protocol as p
from tests.controlplane.helpers import RawAgent, eventually, put_app, put_env, register

DP, ENV, APP = "dp1", "dev", "shop"
BASE = f"/api/v1/dataplanes/{DP}/environments/{ENV}/apps/{APP}"
KEY = p.app_key(ENV, APP)


class Peer:
    """A raw agent that keeps reading: frames are kept by type for the test to take in order."""

    def __init__(self, agent: RawAgent) -> None:
        self.agent = agent
        self.frames: list[p.Frame] = []
        self._arrived = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            try:
                frame = await self.agent.recv(timeout=3600)
            except Exception:
                return
            self.frames.append(frame)
            self._arrived.set()

    async def take(
        self, type_: str, where: Callable[[Any], bool] = lambda _: True, timeout: float = 5.0
    ) -> Any:
        """The first frame of ``type_`` (whose body passes ``where``) not taken yet."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for frame in self.frames:
                if frame.type == type_ and where(frame.body):
                    self.frames.remove(frame)
                    return frame.body
            self._arrived.clear()
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"no {type_} within {timeout}s; have {[f.type for f in self.frames]}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)

    def pending(self, type_: str) -> list[Any]:
        return [f.body for f in self.frames if f.type == type_]

    async def data(
        self, stream: str, lines: list[str] | None = None, objects: list[Any] | None = None
    ) -> None:
        await self.agent.send(p.StreamData(id=stream, seq=0, lines=lines or [], objects=objects or []))

    async def end(self, stream: str, code: p.StreamEndCode = "done", message: str = "", **kw: Any) -> None:
        await self.agent.send(p.StreamEnd(id=stream, code=code, message=message, **kw))

    async def close(self) -> None:
        await self.agent.close()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


@dataclass
class Setup:
    server: ControlPlaneServer
    http: httpx.AsyncClient
    peer: Peer

    def limits(self, **kw: Any) -> None:
        self.server.cp.streams.limits = StreamLimits(**kw)


async def connect_peer(server: ControlPlaneServer, http: httpx.AsyncClient, token: str) -> Peer:
    view = (await http.get(f"/api/v1/dataplanes/{DP}")).json()
    agent = await RawAgent.connect(server.tunnel_url, token)
    await agent.hello(DP, epoch=view["epoch"], revision=view["revision"])
    return Peer(agent)


@pytest.fixture
async def setup(server: ControlPlaneServer, http: httpx.AsyncClient) -> AsyncIterator[Setup]:
    token = await register(http, DP)
    await put_env(http, DP, ENV)
    await put_app(http, DP, ENV, APP)
    peer = await connect_peer(server, http, token)
    try:
        yield Setup(server, http, peer)
    finally:
        await peer.close()


class Streamed:
    """A streamed GET whose response is awaited later: the control plane sends headers only once the
    agent answered, so the test must play the agent before it can have the response."""

    def __init__(self, http: httpx.AsyncClient, path: str, **kw: Any) -> None:
        self._task = asyncio.create_task(http.send(http.build_request("GET", path, **kw), stream=True))

    async def response(self, timeout: float = 5.0) -> httpx.Response:
        return await asyncio.wait_for(asyncio.shield(self._task), timeout)

    async def __aenter__(self) -> Streamed:
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._task.done() and not self._task.cancelled() and self._task.exception() is None:
            await self._task.result().aclose()
        else:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


async def read_line(lines: AsyncIterator[str], timeout: float = 5.0) -> str:
    return await asyncio.wait_for(anext(lines), timeout)


# -- streaming -----------------------------------------------------------------------------------
async def test_log_lines_reach_the_client_as_they_arrive(setup: Setup) -> None:
    peer = setup.peer
    params = {
        "follow": "true",
        "since": "10m",
        "tail": "5",
        "container": "app",
        "pod": "shop-1",
        "previous": "true",
    }
    async with Streamed(setup.http, BASE + "/logs", params=params) as r_s:
        opened = await peer.take("stream.open")
        assert (opened.kind, opened.key) == ("logs", KEY)
        assert opened.params.model_dump() == {
            "follow": True,
            "since_seconds": 600,
            "tail_lines": 5,
            "container": "app",
            "pod": "shop-1",
            "previous": True,
            "limit_bytes": None,
        }
        assert opened.credit == StreamLimits().window_bytes
        await peer.data(opened.id, ["shop-1/app: first"])
        r = await r_s.response()
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        lines = r.aiter_lines()
        # the first line is readable while the stream is still open
        assert await read_line(lines) == "shop-1/app: first"
        await peer.data(opened.id, ["shop-1/app: second", "shop-2/app: third"])
        assert [await read_line(lines), await read_line(lines)] == ["shop-1/app: second", "shop-2/app: third"]
        await peer.end(opened.id, "done")
        assert [line async for line in lines] == []  # a normal end adds nothing


async def test_ndjson_logs_always_end_with_an_end_record(setup: Setup) -> None:
    peer = setup.peer
    async with Streamed(setup.http, BASE + "/logs", headers={"Accept": "application/x-ndjson"}) as r_s:
        opened = await peer.take("stream.open")
        # a request that does not follow is bounded by the default limitBytes
        assert opened.params.limit_bytes == StreamLimits().default_limit_bytes and not opened.params.follow
        await peer.data(opened.id, ["p/c: a", 'p/c: "quoted"'])
        r = await r_s.response()
        await peer.end(opened.id, "done")
        records = [json.loads(line) async for line in r.aiter_lines()]
    assert r.headers["content-type"].startswith("application/x-ndjson"), r.headers
    assert records == [
        {"type": "line", "text": "p/c: a"},
        {"type": "line", "text": 'p/c: "quoted"'},
        {"type": "end", "code": "done", "message": ""},
    ]


async def test_client_disconnect_sends_stream_end_within_a_second(setup: Setup) -> None:
    peer = setup.peer
    async with Streamed(setup.http, BASE + "/logs", params={"follow": "true"}) as r_s:
        opened = await peer.take("stream.open")
        await peer.data(opened.id, ["p/c: one"])
        r = await r_s.response()
        assert await read_line(r.aiter_lines()) == "p/c: one"
    gone = time.monotonic()
    end = await peer.take("stream.end", lambda b: b.id == opened.id, timeout=1.0)
    assert end.code == "cancelled" and time.monotonic() - gone < 1.0
    await eventually(lambda: setup.server.cp.streams.count(DP) == 0, what="slot released")


async def test_session_disconnect_mid_stream_ends_cleanly_with_the_reason(setup: Setup) -> None:
    peer = setup.peer
    async with (
        Streamed(setup.http, BASE + "/logs", params={"follow": "true"}) as text_s,
        Streamed(
            setup.http, BASE + "/logs", params={"follow": "true"}, headers={"Accept": "application/x-ndjson"}
        ) as nd_s,
    ):
        first = await peer.take("stream.open")
        second = await peer.take("stream.open")
        await peer.data(first.id, ["p/c: one"])
        await peer.data(second.id, ["p/c: one"])
        text, nd = await text_s.response(), await nd_s.response()
        text_lines, nd_lines = text.aiter_lines(), nd.aiter_lines()
        assert await read_line(text_lines) == "p/c: one"
        assert json.loads(await read_line(nd_lines)) == {"type": "line", "text": "p/c: one"}
        await peer.close()
        rest = [line async for line in text_lines]
        assert len(rest) == 1 and rest[0].startswith(
            "--- stream ended: disconnected: the data plane disconnected"
        )
        end = json.loads(await read_line(nd_lines))
        assert end["type"] == "end" and end["code"] == "disconnected"
        assert [line async for line in nd_lines] == []
    assert setup.server.cp.streams.count(DP) == 0


async def test_credit_is_granted_as_the_client_consumes_and_paced(setup: Setup) -> None:
    window, rate = 4096, 16384
    setup.limits(window_bytes=window, bytes_per_second=rate)
    peer = setup.peer
    line = "p/c: " + "x" * 1018  # 1024 bytes of credit with its newline
    received = 0
    async with Streamed(setup.http, BASE + "/logs", params={"follow": "true"}) as r_s:
        opened = await peer.take("stream.open")
        assert opened.credit == window
        await peer.data(opened.id, [line])
        r = await r_s.response()
        lines = r.aiter_lines()
        started = time.monotonic()
        credit, sent = window - 1024, 1024
        while time.monotonic() - started < 1.5:
            # a well-behaved agent: exactly what the credit allows, then wait for more
            while credit >= 1024:
                await peer.data(opened.id, [line])
                credit -= 1024
                sent += 1024
            while received < sent:
                assert await read_line(lines) == line
                received += 1024
            grant = await peer.take("stream.credit", lambda b: b.id == opened.id, timeout=2.0)
            credit += grant.bytes
        elapsed = time.monotonic() - started
        # never more than the window ahead, and at most rate bytes per second on average
        assert sent <= window + rate * elapsed + 1024
        assert sent >= rate * 0.5, f"only {sent} bytes in {elapsed:.2f}s: credit stalled"
        # nothing is granted beyond what the client consumed
        granted = window + sum(c.bytes for c in peer.pending("stream.credit")) + (credit + sent - window)
        assert granted - received <= window


async def test_a_follow_with_no_data_ends_after_the_idle_timeout(setup: Setup) -> None:
    setup.limits(idle_timeout=0.5, answer_timeout=0.2)
    peer = setup.peer
    async with Streamed(setup.http, BASE + "/logs", params={"follow": "true"}) as r_s:
        opened = await peer.take("stream.open")
        # a quiet follow is started after the answer timeout (no 504): its lines may come later
        r = await r_s.response()
        assert r.status_code == 200
        started = time.monotonic()
        body = [line async for line in r.aiter_lines()]
    assert body == ["--- stream ended: limit: no data for 0.5s"]
    assert 0.4 < time.monotonic() - started < 3
    end = await peer.take("stream.end", lambda b: b.id == opened.id)
    assert end.code == "cancelled"


async def test_a_quiet_follow_starts_on_the_agents_acknowledgement(setup: Setup) -> None:
    setup.limits(answer_timeout=4.0)
    peer = setup.peer
    async with Streamed(setup.http, BASE + "/logs", params={"follow": "true"}) as r_s:
        opened = await peer.take("stream.open")
        asked = time.monotonic()
        await peer.data(opened.id)  # the acknowledgement: an empty stream.data, seq 0
        r = await r_s.response(timeout=2.0)
        assert r.status_code == 200 and time.monotonic() - asked < 2.0, "not held for the answer timeout"
        lines = r.aiter_lines()
        await peer.agent.send(p.StreamData(id=opened.id, seq=1, lines=["p/c: later"]))
        assert await read_line(lines) == "p/c: later"
        await peer.end(opened.id, "done")
        assert [line async for line in lines] == []


async def test_a_request_that_does_not_follow_is_not_started_by_the_acknowledgement(setup: Setup) -> None:
    """Without follow the status still waits for data or the end: a refusal the agent finds while
    reading (its Role missing) is an HTTP status, not a 200 whose body says so."""
    peer = setup.peer
    request = asyncio.create_task(setup.http.get(BASE + "/logs"))
    opened = await peer.take("stream.open")
    await peer.data(opened.id)  # had this started the response, the status below would be 200
    await peer.end(opened.id, "forbidden", "pods/log is forbidden")
    r = await asyncio.wait_for(request, 5)
    assert r.status_code == 403 and r.json()["detail"] == "pods/log is forbidden"


async def test_frames_of_a_stream_already_forgotten_are_ignored(setup: Setup) -> None:
    """The agent confirms a cancel with stream.end cancelled after the control plane forgot the id."""
    peer = setup.peer
    async with Streamed(setup.http, BASE + "/logs", params={"follow": "true"}) as r_s:
        opened = await peer.take("stream.open")
        await peer.data(opened.id, ["p/c: one"])
        r = await r_s.response()
        assert await read_line(r.aiter_lines()) == "p/c: one"
    assert (await peer.take("stream.end", lambda b: b.id == opened.id, timeout=1.0)).code == "cancelled"
    await eventually(lambda: setup.server.cp.streams.count(DP) == 0, what="stream forgotten")
    # in flight when the cancel crossed: a late chunk and the confirmation
    await peer.agent.send(p.StreamData(id=opened.id, seq=5, lines=["p/c: late"]))
    await peer.end(opened.id, "cancelled")
    await peer.end("never-opened", "done")
    # the session is unharmed and answers nothing to them: the next stream works on it
    async with Streamed(setup.http, BASE + "/logs", params={"follow": "true"}) as again_s:
        again = await peer.take("stream.open")
        await peer.data(again.id, ["p/c: again"])
        r = await again_s.response()
        assert await read_line(r.aiter_lines()) == "p/c: again"
    assert not peer.pending("error") and setup.server.cp.hub.get(DP) is not None
    await eventually(lambda: setup.server.cp.streams.count(DP) == 0, what="the second stream forgotten")


async def test_limit_bytes_cuts_the_stream_and_stops_the_agent(setup: Setup) -> None:
    peer = setup.peer
    async with Streamed(setup.http, BASE + "/logs", params={"limitBytes": "20"}) as r_s:
        opened = await peer.take("stream.open")
        assert opened.params.limit_bytes == 20
        await peer.data(opened.id, ["p/c: 12345", "p/c: 67890", "p/c: more"])  # 11 + 11 + 10 bytes
        r = await r_s.response()
        body = [line async for line in r.aiter_lines()]
    assert body == ["p/c: 12345", "--- stream ended: limit: limitBytes 20 reached"]
    end = await peer.take("stream.end", lambda b: b.id == opened.id)
    assert end.code == "cancelled"


async def test_an_agent_beyond_its_credit_is_cut_off(setup: Setup) -> None:
    setup.limits(window_bytes=1024)
    peer = setup.peer
    big = ["p/c: " + "y" * 10_000] * 8  # far beyond the window and the one-chunk slack
    async with Streamed(setup.http, BASE + "/logs", params={"follow": "true"}) as r_s:
        opened = await peer.take("stream.open")
        await peer.data(opened.id, ["p/c: fine"])
        r = await r_s.response()
        await peer.data(opened.id, big)
        body = [line async for line in r.aiter_lines()]
    assert body[0] == "p/c: fine" and len(body) == 2
    assert body[1].startswith("--- stream ended: error: the data plane sent")
    assert (await peer.take("stream.end", lambda b: b.id == opened.id)).code == "cancelled"


# -- refusals before the first byte --------------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "status", "retry"),
    [
        ("disabled", 403, None),
        ("forbidden", 403, None),
        ("not_found", 404, None),
        ("limit", 429, 7.0),
        ("error", 502, None),
    ],
)
async def test_agent_refusals_map_to_http_statuses(
    setup: Setup, code: p.StreamEndCode, status: int, retry: float | None
) -> None:
    peer = setup.peer
    request = asyncio.create_task(setup.http.get(BASE + "/logs"))
    opened = await peer.take("stream.open")
    await peer.end(opened.id, code, f"agent says {code}", retry_after=retry)
    r = await request
    assert r.status_code == status, r.text
    assert r.json()["detail"] == f"agent says {code}"
    if retry is not None:
        assert r.headers["retry-after"] == "7"
    assert not peer.pending("stream.end")  # the agent ended it: nothing to cancel


async def test_no_answer_is_504_and_the_stream_is_cancelled(setup: Setup) -> None:
    setup.limits(answer_timeout=0.3)
    r = await setup.http.get(BASE + "/logs")
    assert r.status_code == 504
    opened = await setup.peer.take("stream.open")
    assert (await setup.peer.take("stream.end", lambda b: b.id == opened.id)).code == "cancelled"
    assert setup.server.cp.streams.count(DP) == 0


async def test_not_connected_is_503_with_retry_after(setup: Setup) -> None:
    await setup.peer.close()
    await eventually(lambda: setup.server.cp.hub.get(DP) is None, what="session gone")
    r = await setup.http.get(BASE + "/logs")
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert "not connected" in r.json()["detail"]


async def test_unknown_dataplane_environment_or_app_is_404(setup: Setup) -> None:
    for path in (
        "/api/v1/dataplanes/nope/environments/dev/apps/shop/logs",
        f"/api/v1/dataplanes/{DP}/environments/prod/apps/shop/events",
        f"/api/v1/dataplanes/{DP}/environments/dev/apps/cart/live",
    ):
        r = await setup.http.get(path)
        assert r.status_code == 404, (path, r.text)
    assert not setup.peer.pending("stream.open")


async def test_bad_since_is_422(setup: Setup) -> None:
    r = await setup.http.get(BASE + "/logs", params={"since": "10 minutes"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "since"]
    r = await setup.http.get(BASE + "/logs", params={"folow": "true"})  # misspelt: refused, not ignored
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "folow"]


async def test_concurrent_streams_per_dataplane_and_per_client_are_bounded(setup: Setup) -> None:
    setup.limits(per_dataplane=2, per_client=5, retry_after=3)
    peer = setup.peer
    follow = {"follow": "true"}
    async with (
        Streamed(setup.http, BASE + "/logs", params=follow) as a_s,
        Streamed(setup.http, BASE + "/logs", params=follow) as b_s,
    ):
        for _ in range(2):
            opened = await peer.take("stream.open")
            await peer.data(opened.id, ["p/c: x"])
        a, b = await a_s.response(), await b_s.response()
        assert (a.status_code, b.status_code) == (200, 200)
        third = await setup.http.get(BASE + "/live")
        assert third.status_code == 429 and third.headers["retry-after"] == "3"
        assert "2 streams are open" in third.json()["detail"]
    await eventually(lambda: setup.server.cp.streams.count(DP) == 0, what="slots released")
    setup.limits(per_dataplane=5, per_client=1)
    async with Streamed(setup.http, BASE + "/logs", params={"follow": "true"}) as a_s:
        opened = await peer.take("stream.open")
        await peer.data(opened.id, ["p/c: x"])
        a = await a_s.response()
        assert a.status_code == 200
        r = await setup.http.get(BASE + "/live")
        assert r.status_code == 429 and "from this client" in r.json()["detail"]


# -- events and live state -----------------------------------------------------------------------
EVENT = {
    "type": "Warning",
    "reason": "BackOff",
    "message": "Back-off restarting failed container",
    "object": "Pod/shop-1",
    "count": 3,
    "firstTimestamp": "2026-01-01T00:00:00Z",
    "lastTimestamp": "2026-01-01T00:01:00Z",
}


async def test_events_list_and_watch(setup: Setup) -> None:
    peer = setup.peer
    request = asyncio.create_task(setup.http.get(BASE + "/events"))
    opened = await peer.take("stream.open")
    assert opened.kind == "events" and not opened.params.follow
    older = {**EVENT, "reason": "Pulled"}
    await peer.data(opened.id, objects=[EVENT])
    await peer.data(opened.id, objects=[older])
    await peer.end(opened.id, "done")
    r = await request
    assert r.status_code == 200 and r.json() == [EVENT, older]

    async with Streamed(setup.http, BASE + "/events", params={"watch": "true"}) as w_s:
        opened = await peer.take("stream.open")
        assert opened.params.follow
        await peer.data(opened.id, objects=[EVENT])
        w = await w_s.response()
        lines = w.aiter_lines()
        assert json.loads(await read_line(lines)) == {"type": "object", "object": EVENT}
        await peer.end(opened.id, "error", "watch expired")
        assert json.loads(await read_line(lines)) == {
            "type": "end",
            "code": "error",
            "message": "watch expired",
        }


async def test_live_state_is_one_json_document(setup: Setup) -> None:
    peer = setup.peer
    request = asyncio.create_task(setup.http.get(BASE + "/live"))
    opened = await peer.take("stream.open")
    assert opened.kind == "live"
    pod = {
        "kind": "Pod",
        "name": "shop-1",
        "ready": "1/1",
        "restarts": 0,
        "age": 12,
        "status": "Running",
        "reason": None,
        "node": "n1",
    }
    dep = {
        "kind": "Deployment",
        "name": "shop",
        "ready": "1/1",
        "restarts": 0,
        "age": 30,
        "status": "Available",
        "reason": None,
        "node": None,
    }
    await peer.data(opened.id, objects=[dep, pod])
    await peer.end(opened.id, "done")
    r = await request
    assert r.status_code == 200
    body = r.json()
    assert body["app"] == KEY and body["objects"] == [dep, pod] and body["observedAt"].endswith("Z")


# -- audit ---------------------------------------------------------------------------------------
async def test_every_request_is_audited_and_listed_newest_first(setup: Setup) -> None:
    peer = setup.peer
    async with Streamed(setup.http, BASE + "/logs", params={"tail": "3"}) as r_s:
        opened = await peer.take("stream.open")
        await peer.data(opened.id, ["p/c: 1234"])  # 10 bytes
        r = await r_s.response()
        await peer.end(opened.id, "done")
        assert [line async for line in r.aiter_lines()] == ["p/c: 1234"]
    request = asyncio.create_task(setup.http.get(BASE + "/events"))
    opened = await peer.take("stream.open")
    await peer.end(opened.id, "forbidden", "not mine")
    assert (await request).status_code == 403
    assert (
        await setup.http.get(f"/api/v1/dataplanes/{DP}/environments/dev/apps/cart/live")
    ).status_code == 404

    async def three() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = (await setup.http.get("/api/v1/audit")).json()["items"]
        return items if len(items) == 3 else []

    items = await eventually(three, what="three audit records")
    assert [(i["kind"], i["status"], i["code"]) for i in items] == [
        ("live", 404, "not_found"),
        ("events", 403, "forbidden"),
        ("logs", 200, "done"),
    ]
    logs = items[2]
    assert logs["who"] == "admin" and logs["client"] == "127.0.0.1" and logs["dataplane"] == DP
    assert logs["app"] == KEY and logs["bytes"] == 10 and logs["durationSeconds"] >= 0
    assert logs["params"] == {"tailLines": 3, "limitBytes": StreamLimits().default_limit_bytes}
    assert logs["at"] < items[0]["at"]
    assert (await setup.http.get("/api/v1/audit", params={"limit": 1})).json()["items"] == items[:1]
    assert (await setup.http.get("/api/v1/audit", params={"dataplane": "other"})).json()["items"] == []


async def test_log_content_never_reaches_the_database_or_the_logs(
    setup: Setup, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    marker = f"secret-log-line-{time.time_ns()}"
    peer = setup.peer
    async with Streamed(setup.http, BASE + "/logs", headers={"Accept": "application/x-ndjson"}) as r_s:
        opened = await peer.take("stream.open")
        await peer.data(opened.id, [f"p/c: {marker}"])
        r = await r_s.response()
        await peer.end(opened.id, "error", "broke after the line")
        body = [json.loads(line) async for line in r.aiter_lines()]
    assert body[0] == {"type": "line", "text": f"p/c: {marker}"}  # it did pass through
    await eventually(lambda: _audited(setup), what="audit record written")
    await setup.server.store.flush()
    files = await asyncio.to_thread(lambda: {f.name: f.read_bytes() for f in tmp_path.glob("cp.db*")})
    assert "cp.db" in files
    for name, content in files.items():
        assert marker.encode() not in content, name
    assert marker not in caplog.text


async def _audited(setup: Setup) -> bool:
    return bool((await setup.http.get("/api/v1/audit")).json()["items"])
