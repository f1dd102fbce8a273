"""Our Kubernetes client against well-kept ones (lightkube, kubernetes_asyncio), on the same API servers.

The measurement issue 13 asks for before deciding whether to keep ``choreo_dp.kube`` or put
lightkube (or kubernetes_asyncio, kr8s) underneath a thin wrapper. Per API server kind
(``bench/clusters.py``) and per client, on ConfigMaps of ~700 bytes in one namespace:

- apply_per_s: server-side applies of N new objects, 16 in flight;
- list_ms: listing the N objects (label selector; each client's own pagination, 500 a page);
- watch_events_per_s: N merge patches sent 16 in flight while one watch from the list's
  version receives them; events received per second, from the first patch sent to the Nth event.

Every client runs ``rounds`` times per server, each round in a rotated order; figures are medians.
The baseline is our own client, measured in the same run on the same server: besides the absolute
figures (``<kind>_<client>_<figure>``) each other client has ``<kind>_<client>_vs_own_<figure>`` =
its figure / ours (above 1: more applies or events per second, or a slower list).  lightkube and
kubernetes_asyncio are in the ``dev`` extra only; a client that is not installed is left out and
its key says why.
"""

from __future__ import annotations

import asyncio
import importlib
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import clusters
from choreo_dp.kube import KubeClient
from choreo_dp.kube import resources as R

CONCURRENCY = 16
NAMESPACE = "bench-kubeclient"
LABELS = {"bench": "kubeclient"}


def _cm(client: str, i: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": f"{client}-{i:05d}",
            "namespace": NAMESPACE,
            "labels": {**LABELS, "client": client},
        },
        "data": {f"k{k}": "v" * 64 for k in range(10)},
    }


async def _bounded(n: int, fn: Callable[[int], Awaitable[Any]]) -> float:
    """Run fn(0..n-1) with CONCURRENCY in flight; seconds taken."""
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> None:
        async with sem:
            await fn(i)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return time.perf_counter() - t0


async def _ours(kubeconfig: Path, n: int, tag: str) -> dict[str, float]:
    async with await KubeClient.from_kubeconfig(kubeconfig, max_connections=CONCURRENCY * 2) as kube:
        selector = {**LABELS, "client": tag}
        took = await _bounded(n, lambda i: kube.apply(_cm(tag, i), "bench"))
        out = {"apply_per_s": n / took}
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            items, rv = await kube.list(R.CONFIGMAPS, NAMESPACE, label_selector=selector)
            times.append((time.perf_counter() - t0) * 1000)
            assert len(items) == n
        out["list_ms"] = statistics.median(times)
        seen = 0
        done = asyncio.Event()

        async def watch() -> None:
            nonlocal seen
            async for etype, _ in kube.watch(
                R.CONFIGMAPS, NAMESPACE, label_selector=selector, resource_version=rv
            ):
                if etype == "MODIFIED":
                    seen += 1
                    if seen == n:
                        done.set()
                        return

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0.2)  # the watch is established before the first patch
        t0 = time.perf_counter()
        await _bounded(
            n, lambda i: kube.patch(R.CONFIGMAPS, f"{tag}-{i:05d}", {"data": {"k0": "w"}}, NAMESPACE)
        )
        await asyncio.wait_for(done.wait(), 120)
        out["watch_events_per_s"] = n / (time.perf_counter() - t0)
        await watcher
        return out


async def _lightkube(kubeconfig: Path, n: int, tag: str) -> dict[str, float]:
    from lightkube import AsyncClient, KubeConfig
    from lightkube.resources.core_v1 import ConfigMap
    from lightkube.types import PatchType

    client = AsyncClient(config=KubeConfig.from_file(str(kubeconfig)), field_manager="bench")
    try:
        labels = {**LABELS, "client": tag}
        took = await _bounded(
            n, lambda i: client.apply(ConfigMap.from_dict(_cm(tag, i)), field_manager="bench")
        )
        out = {"apply_per_s": n / took}
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            items = [
                o async for o in client.list(ConfigMap, namespace=NAMESPACE, labels=labels, chunk_size=500)
            ]
            times.append((time.perf_counter() - t0) * 1000)
            assert len(items) == n
        out["list_ms"] = statistics.median(times)
        # lightkube's list iterator does not expose the list's resourceVersion: a plain GET for it
        async with await KubeClient.from_kubeconfig(kubeconfig) as kube:
            _, rv = await kube.list(R.CONFIGMAPS, NAMESPACE, label_selector={"client": "none"})
        seen = 0
        done = asyncio.Event()

        async def watch() -> None:
            nonlocal seen
            async for etype, _ in client.watch(
                ConfigMap, namespace=NAMESPACE, labels=labels, resource_version=rv
            ):
                if etype == "MODIFIED":
                    seen += 1
                    if seen == n:
                        done.set()
                        return

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0.2)
        t0 = time.perf_counter()
        await _bounded(
            n,
            lambda i: client.patch(
                ConfigMap,
                f"{tag}-{i:05d}",
                {"data": {"k0": "w"}},
                namespace=NAMESPACE,
                patch_type=PatchType.MERGE,
            ),
        )
        await asyncio.wait_for(done.wait(), 120)
        out["watch_events_per_s"] = n / (time.perf_counter() - t0)
        await watcher
        return out
    finally:
        await client.close()


async def _kubernetes_asyncio(kubeconfig: Path, n: int, tag: str) -> dict[str, float]:
    from kubernetes_asyncio import client as k8s
    from kubernetes_asyncio import config, watch

    api = await config.new_client_from_config(config_file=str(kubeconfig))
    api.rest_client.pool_manager.connector._limit = CONCURRENCY * 2
    try:
        core = k8s.CoreV1Api(api)
        selector = f"bench=kubeclient,client={tag}"
        # It has no apply helper: a PATCH with the apply content type, as kubectl sends.
        took = await _bounded(
            n,
            lambda i: core.patch_namespaced_config_map(
                f"{tag}-{i:05d}",
                NAMESPACE,
                _cm(tag, i),
                field_manager="bench",
                _content_type="application/apply-patch+yaml",
            ),
        )
        out = {"apply_per_s": n / took}
        times = []
        rv = ""
        for _ in range(5):
            t0 = time.perf_counter()
            items: list[Any] = []
            token: str | None = None
            while True:  # it does not page by itself
                page = await core.list_namespaced_config_map(
                    NAMESPACE, label_selector=selector, limit=500, _continue=token
                )
                items += page.items
                token = page.metadata._continue
                if not token:
                    break
            times.append((time.perf_counter() - t0) * 1000)
            rv = page.metadata.resource_version
            assert len(items) == n
        out["list_ms"] = statistics.median(times)
        seen = 0
        done = asyncio.Event()

        async def consume() -> None:
            nonlocal seen
            w = watch.Watch()
            async with w.stream(
                core.list_namespaced_config_map,
                NAMESPACE,
                label_selector=selector,
                resource_version=rv,
                timeout_seconds=300,
            ) as stream:
                async for event in stream:
                    if event["type"] == "MODIFIED":
                        seen += 1
                        if seen == n:
                            done.set()
                            return

        watcher = asyncio.create_task(consume())
        await asyncio.sleep(0.2)
        t0 = time.perf_counter()
        await _bounded(
            n,
            lambda i: core.patch_namespaced_config_map(
                f"{tag}-{i:05d}",
                NAMESPACE,
                {"data": {"k0": "w"}},
                _content_type="application/merge-patch+json",
            ),
        )
        await asyncio.wait_for(done.wait(), 120)
        out["watch_events_per_s"] = n / (time.perf_counter() - t0)
        await watcher
        return out
    finally:
        await api.close()


Runner = Callable[[Path, int, str], Awaitable[dict[str, float]]]
# (figure key, module to import, runner); ours first: it is the baseline.
CLIENTS: tuple[tuple[str, str, Runner], ...] = (
    ("own", "choreo_dp.kube", _ours),
    ("lightkube", "lightkube", _lightkube),
    ("kasync", "kubernetes_asyncio", _kubernetes_asyncio),
)
FIGURES = ("apply_per_s", "list_ms", "watch_events_per_s")


async def run(quick: bool) -> dict[str, float | int | str]:
    n, rounds = (300, 3) if quick else (2000, 5)
    figures: dict[str, float | int | str] = {"objects": n, "rounds": rounds}
    runs: list[tuple[str, Runner]] = []
    for name, module, fn in CLIENTS:
        try:
            importlib.import_module(module)
        except ImportError:
            figures[name] = f"not installed (pip install {module}): left out"
            continue
        runs.append((name, fn))
    with tempfile.TemporaryDirectory(prefix="bench-kubeclient-") as tmp:
        for kind in clusters.selected_kinds():
            async with clusters.api_server(kind, Path(tmp)) as server:
                async with await KubeClient.from_kubeconfig(server.kubeconfig) as admin:
                    await admin.create(R.NAMESPACES, {"metadata": {"name": NAMESPACE}})
                samples: dict[str, list[float]] = {}
                for r in range(rounds):
                    # Each round in another order, so no client always meets a cold (or a
                    # warmed-up) server; the figure is the median over the rounds.
                    for name, fn in runs[r % len(runs) :] + runs[: r % len(runs)]:
                        for figure, value in (await fn(server.kubeconfig, n, f"{name}{r}")).items():
                            samples.setdefault(f"{kind}_{name}_{figure}", []).append(value)
                for key, values in samples.items():
                    figures[key] = round(statistics.median(values), 1)
                for name, _ in runs[1:]:
                    for figure in FIGURES:
                        own, other = figures[f"{kind}_own_{figure}"], figures[f"{kind}_{name}_{figure}"]
                        figures[f"{kind}_{name}_vs_own_{figure}"] = round(float(other) / float(own), 2)
    return figures


if __name__ == "__main__":
    import json

    print(json.dumps(asyncio.run(run(quick=True)), indent=2))
