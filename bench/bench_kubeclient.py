"""Our Kubernetes client against a well-kept one (lightkube), on the same API servers.

The measurement issue 13 asks for before deciding whether to keep ``choreo_dp.kube`` or put
lightkube (or kubernetes_asyncio, kr8s) underneath a thin wrapper. Per API server kind
(``bench/clusters.py``) and per client, on ConfigMaps of ~700 bytes in one namespace:

- apply_per_s: server-side applies of N new objects, 16 in flight;
- list_ms: listing the N objects (label selector; each client's own pagination, 500 a page);
- watch_events_per_s: N merge patches sent 16 in flight while one watch from the list's
  version receives them; events received per second, from the first patch sent to the Nth event.

lightkube is not a dependency of the project: without it installed the figures are ours alone
and ``lightkube`` says why. Figures are keyed ``<kind>_<client>_<figure>``.
"""

from __future__ import annotations

import asyncio
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


async def _ours(kubeconfig: Path, n: int) -> dict[str, float]:
    async with await KubeClient.from_kubeconfig(kubeconfig, max_connections=CONCURRENCY * 2) as kube:
        selector = {**LABELS, "client": "own"}
        took = await _bounded(n, lambda i: kube.apply(_cm("own", i), "bench"))
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
            n, lambda i: kube.patch(R.CONFIGMAPS, f"own-{i:05d}", {"data": {"k0": "w"}}, NAMESPACE)
        )
        await asyncio.wait_for(done.wait(), 120)
        out["watch_events_per_s"] = n / (time.perf_counter() - t0)
        await watcher
        return out


async def _lightkube(kubeconfig: Path, n: int) -> dict[str, float]:
    from lightkube import AsyncClient, KubeConfig
    from lightkube.resources.core_v1 import ConfigMap
    from lightkube.types import PatchType

    client = AsyncClient(config=KubeConfig.from_file(str(kubeconfig)), field_manager="bench")
    try:
        labels = {**LABELS, "client": "lightkube"}
        took = await _bounded(
            n, lambda i: client.apply(ConfigMap.from_dict(_cm("lightkube", i)), field_manager="bench")
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
                f"lightkube-{i:05d}",
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


async def run(quick: bool) -> dict[str, float | int | str]:
    n = 300 if quick else 2000
    figures: dict[str, float | int | str] = {"objects": n}
    try:
        import lightkube  # noqa: F401

        have_lightkube = True
    except ImportError:
        have_lightkube = False
        figures["lightkube"] = "not installed (pip install lightkube): our client only"
    with tempfile.TemporaryDirectory(prefix="bench-kubeclient-") as tmp:
        for kind in clusters.selected_kinds():
            async with clusters.api_server(kind, Path(tmp)) as server:
                async with await KubeClient.from_kubeconfig(server.kubeconfig) as admin:
                    await admin.create(R.NAMESPACES, {"metadata": {"name": NAMESPACE}})
                runs: list[tuple[str, Callable[[Path, int], Awaitable[dict[str, float]]]]] = [("own", _ours)]
                if have_lightkube:
                    runs.append(("lightkube", _lightkube))
                for name, fn in runs:
                    for figure, value in (await fn(server.kubeconfig, n)).items():
                        figures[f"{kind}_{name}_{figure}"] = round(value, 1)
                if have_lightkube:
                    for figure in ("apply_per_s", "watch_events_per_s"):
                        own, other = figures[f"{kind}_own_{figure}"], figures[f"{kind}_lightkube_{figure}"]
                        figures[f"{kind}_own_vs_lightkube_{figure}"] = round(float(own) / float(other), 2)
                    own_ms, other_ms = figures[f"{kind}_own_list_ms"], figures[f"{kind}_lightkube_list_ms"]
                    figures[f"{kind}_lightkube_vs_own_list_ms"] = round(float(other_ms) / float(own_ms), 2)
    return figures


if __name__ == "__main__":
    import json

    print(json.dumps(asyncio.run(run(quick=True)), indent=2))
