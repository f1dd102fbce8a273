"""Watches that handle what real clusters send: large events, dropped connections, 410s, errors.

Every test that talks to an API runs on both targets (``kube_faulty``: a fresh emulator, or the
real kube-apiserver behind a ``FaultProxy``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from choreo_dp.kube import ApiError, Backoff, KubeClient
from choreo_dp.kube import resources as R
from choreo_dp.kube.errors import WatchEventTooLarge
from choreo_dp.kube.lines import split_lines
from choreo_dp.kube.watch import Listed, WatchStream
from kube_emulator import ApiServer
from tests.fixtures.kube import FaultyApi
from tests.polling import eventually

FAST = Backoff(base=0.01, cap=0.05)


def _cm(name: str, namespace: str, **data: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": data,
    }


async def _client(api: FaultyApi) -> KubeClient:
    return await KubeClient.from_kubeconfig(api.kubeconfig_path, backoff=FAST)


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for p in parts:
        yield p


async def _lines(*parts: bytes, limit: int = 10) -> list[bytes]:
    return [line async for line in split_lines(_chunks(*parts), limit)]


@pytest.mark.parametrize(
    ("parts", "lines"),
    [
        ((b"a\nb\n",), [b"a", b"b"]),
        ((b"a", b"b\n", b"c"), [b"ab", b"c"]),  # a line over chunks; an unterminated tail
        ((b"\n\n",), [b"", b""]),
        ((b"0123456789\n",), [b"0123456789"]),  # exactly the bound
        ((b"", b"x\ny", b"", b"z\n"), [b"x", b"yz"]),
    ],
)
async def test_split_lines(parts: tuple[bytes, ...], lines: list[bytes]) -> None:
    assert await _lines(*parts) == lines


@pytest.mark.parametrize("parts", [(b"01234567890\n",), (b"012345", b"67890"), (b"a\n", b"0123456789", b"0")])
async def test_split_lines_refuses_a_line_over_the_bound(parts: tuple[bytes, ...]) -> None:
    with pytest.raises(WatchEventTooLarge):
        await _lines(*parts)


async def test_watch_reads_an_event_larger_than_aiohttps_line_limit(kube_faulty: FaultyApi) -> None:
    """aiohttp's line iterator raises LineTooLong past twice its read buffer (128 KiB in
    older aiohttp, 512 KiB in 3.14) and ended the watch; a ConfigMap may hold 1 MiB."""
    ns = kube_faulty.namespace
    big = "x" * (900 * 1024)
    async with await _client(kube_faulty) as kube:
        _, rv = await kube.list(R.CONFIGMAPS, ns)
        watch = kube.watch(R.CONFIGMAPS, ns, resource_version=rv, timeout_seconds=10)
        create = asyncio.create_task(kube.create(R.CONFIGMAPS, _cm("big", ns, blob=big)))
        async with contextlib.aclosing(watch):
            async for etype, obj in watch:
                # kube-controller-manager may publish kube-root-ca.crt into the new namespace
                # after the list: not the event this test is about
                if etype == "ADDED" and obj["metadata"]["name"] == "big":
                    assert obj["data"]["blob"] == big
                    break
        await create


SELECTOR = {"test.choreo.dev/stream": "yes"}


def _labelled(name: str, namespace: str, **data: str) -> dict[str, Any]:
    body = _cm(name, namespace, **data)
    body["metadata"]["labels"] = SELECTOR
    return body


class Consumer:
    """Runs a WatchStream in a task and keeps what it yields, in a readable form."""

    def __init__(self, stream: WatchStream) -> None:
        self.stream = stream
        self.seen: list[tuple[str, ...]] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for event in self.stream:
            if isinstance(event, Listed):
                self.seen.append(("LISTED", *sorted(i["metadata"]["name"] for i in event.items)))
            else:
                self.seen.append((event.type, event.object["metadata"]["name"]))

    def guard(self) -> None:
        if self.task.done():
            raise AssertionError(f"the stream stopped: {self.task!r}")

    async def wait_for(self, *event: str) -> None:
        await eventually(lambda: event in self.seen, f"{event} in {self.seen}", guard=self.guard)

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@contextlib.asynccontextmanager
async def consuming(stream: WatchStream) -> AsyncIterator[Consumer]:
    consumer = Consumer(stream)
    try:
        yield consumer
    finally:
        await consumer.close()


def _stream(kube: KubeClient, ns: str, **kwargs: Any) -> WatchStream:
    return WatchStream(kube, R.CONFIGMAPS, ns, label_selector=SELECTOR, **kwargs)


async def test_watch_stream_lists_then_resumes_where_a_watch_ended(kube_faulty: FaultyApi) -> None:
    ns = kube_faulty.namespace
    async with await _client(kube_faulty) as kube:
        await kube.create(R.CONFIGMAPS, _labelled("before", ns))
        stream = _stream(kube, ns, timeout_seconds=1)
        async with consuming(stream) as c:
            await c.wait_for("LISTED", "before")
            await kube.create(R.CONFIGMAPS, _labelled("a", ns))
            await c.wait_for("ADDED", "a")
            # the server ends each watch after a second; the stream watches again from "a"'s version
            await eventually(lambda: stream.watches >= 2, "a second watch", guard=c.guard)
            await kube.create(R.CONFIGMAPS, _labelled("b", ns))
            await c.wait_for("ADDED", "b")
        # resumed, not relisted, and nothing replayed
        assert c.seen == [("LISTED", "before"), ("ADDED", "a"), ("ADDED", "b")]
        assert stream.lists == 1 and stream.failures == 0


async def test_watch_stream_relists_on_http_410(kube_faulty: FaultyApi) -> None:
    ns = kube_faulty.namespace
    gone = kube_faulty.faults.add(verb="watch", resource="configmaps", status=410, count=1)
    async with await _client(kube_faulty) as kube:
        await kube.create(R.CONFIGMAPS, _labelled("before", ns))
        stream = _stream(kube, ns)
        async with consuming(stream) as c:
            await eventually(lambda: stream.lists == 2, "a relist", guard=c.guard)
            await kube.create(R.CONFIGMAPS, _labelled("a", ns))
            await c.wait_for("ADDED", "a")
        assert c.seen == [("LISTED", "before"), ("LISTED", "before"), ("ADDED", "a")]
        assert gone.hits == 1 and stream.failures == 0


async def test_watch_stream_retries_errors_with_backoff_and_never_stops(kube_faulty: FaultyApi) -> None:
    ns = kube_faulty.namespace
    faults = kube_faulty.faults
    # 403 too: RBAC can be fixed while the stream waits, so it is retried (and logged), not fatal
    forbidden = faults.add(verb="list", resource="configmaps", status=403, count=2)
    broken = faults.add(verb="watch", resource="configmaps", status=500, count=2)
    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)
        await asyncio.sleep(0)

    async with await _client(kube_faulty) as kube:
        stream = _stream(kube, ns, backoff=Backoff(base=1.0, cap=4.0), sleep=sleep)
        async with consuming(stream) as c:
            await c.wait_for("LISTED")
            await eventually(lambda: stream.watches >= 3, "a watch after the failures", guard=c.guard)
            await kube.create(R.CONFIGMAPS, _labelled("a", ns))
            await c.wait_for("ADDED", "a")
        assert (forbidden.hits, broken.hits) == (2, 2)
        assert len(delays) == 4 and all(0 <= d <= 4.0 for d in delays)
        assert stream.failures == 0 and isinstance(stream.last_error, ApiError)
        assert stream.last_error.status == 500 and stream.lists == 1


async def test_watch_stream_relists_past_an_event_too_large_to_read(kube_faulty: FaultyApi) -> None:
    ns = kube_faulty.namespace
    async with await KubeClient.from_kubeconfig(
        kube_faulty.kubeconfig_path, backoff=FAST, max_watch_event=64 * 1024
    ) as kube:
        stream = _stream(kube, ns)
        async with consuming(stream) as c:
            await c.wait_for("LISTED")
            await kube.create(R.CONFIGMAPS, _labelled("big", ns, blob="x" * (100 * 1024)))
            # the watch cannot read it; a list reads objects whole
            await c.wait_for("LISTED", "big")
            await kube.create(R.CONFIGMAPS, _labelled("small", ns))
            await c.wait_for("ADDED", "small")
        assert stream.lists == 2 and isinstance(stream.last_error, WatchEventTooLarge)


@pytest.mark.emulator_only
async def test_watch_stream_relists_on_a_410_error_event_from_the_emulator(tmp_path: Path) -> None:
    """The emulator ends a watch whose queue overflowed with an ERROR event (410).

    Emulator only: kube-apiserver sends the same form for a version its watch cache and etcd no
    longer hold, which needs an etcd compaction no fixture can trigger (the HTTP 410 form runs on
    both targets above).
    """
    async with ApiServer(watch_queue_size=1) as srv:
        kube = await KubeClient.from_kubeconfig(srv.write_kubeconfig(tmp_path / "kc"), backoff=FAST)
        async with kube:
            for i in range(3):
                await kube.create(R.CONFIGMAPS, _labelled(f"c{i}", "default"))
            stream = _stream(kube, "default")
            async with consuming(stream) as c:
                await c.wait_for("LISTED", "c0", "c1", "c2")
                # one request, three events at once: the queue of one overflows
                await kube.request(
                    "DELETE",
                    R.CONFIGMAPS.path("default"),
                    params={"labelSelector": "test.choreo.dev/stream=yes"},
                )
                await c.wait_for("LISTED")
            assert stream.lists == 2 and stream.failures == 0
