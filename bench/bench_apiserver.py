"""Emulated Kubernetes API benchmarks (one process, one event loop: server and client share a core).

Figures (quick: 2,000 objects; --full: the issue's 10,000):
- baseline_trivial_rps: a bare aiohttp app answering POST /echo with a tiny JSON body, driven by
  the same client with the same concurrency — the ceiling any aiohttp-based server has here.
- creates_per_s / patches_per_s: ConfigMap creates (POST) and JSON merge patches, 32 in flight,
  with ratios against the baseline.
- watch latency (p50/p99, ms) with N objects stored: one watcher on all ConfigMaps; sequential
  patches, time from sending the PATCH to the MODIFIED line arriving on the watch stream.
- list_ms: a LIST of the N objects (label selector bench=yes; the namespace also holds kube-root-ca.crt).
- memory: bytes retained per stored ConfigMap-sized object (10 keys x 64 bytes of data), measured
  with tracemalloc around store writes (object, event history entry, indexes, managedFields),
  reported per object and as MiB per 10,000.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
import tracemalloc
from typing import Any

import aiohttp
from aiohttp import web

from kube_emulator import ApiServer
from kube_emulator.store import Store, WriteOptions

CONCURRENCY = 32


def configmap(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"cm-{i:06d}", "labels": {"bench": "yes", "shard": str(i % 10)}},
        "data": {f"key{k}": "v" * 64 for k in range(10)},
    }


async def _drive(n: int, make: Any) -> float:
    """Run ``make(i)`` for i in range(n) with bounded concurrency; returns requests per second."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def worker() -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await make(i)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return n / (time.perf_counter() - t0)


async def baseline(session: aiohttp.ClientSession, n: int) -> float:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(body=body, content_type="application/json", status=201)

    app = web.Application()
    app.router.add_post("/echo", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    payload = json.dumps(configmap(0)).encode()

    async def one(i: int) -> None:
        async with session.post(
            f"http://127.0.0.1:{port}/echo", data=payload, headers={"Content-Type": "application/json"}
        ) as r:
            await r.read()

    try:
        return await _drive(n, one)
    finally:
        await runner.cleanup()


async def watch_latency(session: aiohttp.ClientSession, url: str, samples: int) -> tuple[float, float]:
    seen: dict[str, float] = {}
    got = asyncio.Event()
    async with session.get(f"{url}/api/v1/namespaces/default/configmaps") as r:
        rv = (await r.json())["metadata"]["resourceVersion"]
    resp = await session.get(
        f"{url}/api/v1/namespaces/default/configmaps",
        params={"watch": "true", "resourceVersion": rv, "timeoutSeconds": "600"},
    )

    async def reader() -> None:
        async for line in resp.content:
            ev = json.loads(line)
            seen[ev["object"]["metadata"]["resourceVersion"]] = time.perf_counter()
            got.set()

    task = asyncio.create_task(reader())
    lat: list[float] = []
    try:
        for i in range(samples):
            t0 = time.perf_counter()
            async with session.patch(
                f"{url}/api/v1/namespaces/default/configmaps/cm-{i:06d}",
                data=json.dumps({"data": {"key0": f"x{i}"}}),
                headers={"Content-Type": "application/merge-patch+json"},
            ) as r:
                new_rv = (await r.json())["metadata"]["resourceVersion"]
            while new_rv not in seen:
                got.clear()
                await asyncio.wait_for(got.wait(), 10)
            lat.append((seen[new_rv] - t0) * 1000)
    finally:
        task.cancel()
        resp.close()
    lat.sort()
    return statistics.median(lat), lat[min(len(lat) - 1, int(len(lat) * 0.99))]


def memory_per_object(n: int) -> float:
    srv = ApiServer()  # not started: only its store is used
    store: Store = srv.store
    rt = srv.registry.get("", "v1", "configmaps")
    assert rt is not None
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(n):
        store.create(rt, "default", configmap(i), WriteOptions(manager="bench"))
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / n


async def run(quick: bool) -> dict[str, Any]:
    n = 2_000 if quick else 10_000
    samples = 200 if quick else 500
    out: dict[str, Any] = {"objects": n}
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:
        base = await baseline(session, n)
        out["baseline_trivial_rps"] = round(base)
        async with ApiServer() as srv:
            url = srv.url

            async def create(i: int) -> None:
                async with session.post(
                    f"{url}/api/v1/namespaces/default/configmaps", json=configmap(i)
                ) as r:
                    assert r.status == 201, await r.text()
                    await r.read()

            async def patch(i: int) -> None:
                async with session.patch(
                    f"{url}/api/v1/namespaces/default/configmaps/cm-{i:06d}",
                    data=json.dumps({"data": {"key1": f"p{i}"}}),
                    headers={"Content-Type": "application/merge-patch+json"},
                ) as r:
                    assert r.status == 200, await r.text()
                    await r.read()

            creates = await _drive(n, create)
            patches = await _drive(n, patch)
            out["creates_per_s"] = round(creates)
            out["creates_vs_baseline"] = round(creates / base, 3)
            out["patches_per_s"] = round(patches)
            out["patches_vs_baseline"] = round(patches / base, 3)
            t0 = time.perf_counter()
            async with session.get(
                f"{url}/api/v1/namespaces/default/configmaps", params={"labelSelector": "bench=yes"}
            ) as r:
                items = (await r.json())["items"]
            out["list_ms"] = round((time.perf_counter() - t0) * 1000, 1)
            assert len(items) == n
            p50, p99 = await watch_latency(session, url, samples)
            out["watch_latency_p50_ms"] = round(p50, 2)
            out["watch_latency_p99_ms"] = round(p99, 2)
    per = memory_per_object(n)
    out["memory_bytes_per_object"] = round(per)
    out["memory_mib_per_10k_objects"] = round(per * 10_000 / 2**20, 1)
    return out
