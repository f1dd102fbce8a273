"""Operator cold start: N ChoreoApps across 5 environments until every app is Ready.

The emulated API (with its workload simulator) and the operator each run in their own process
(``choreo-dp sandbox apiserver``, ``choreo-dp operator``), so the operator's peak RSS is its own.

Figures (quick: N=200; --full: N=1,000 and 5,000):
- floor: the same API writes the operator issues (create the ChoreoApp, apply its Deployment and
  Service, write its status) done by a bare client with the same concurrency, against the same
  server, in this run, into separate namespaces (deleted before the operator starts, so it does
  not see the floor's objects);
- operator: wall time from the first create until every app reports Ready (includes the
  simulator's pod start-up), apps/s, p50/p99 create-to-Ready, ratio to the floor;
- idle: p50/p99 create-to-children (ChoreoApp created -> its Deployment exists) for apps created
  one by one after the cold start;
- peak RSS of the operator process (VmHWM).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from choreo_dp.api import ChoreoApp, Environment
from choreo_dp.api.crdgen import all_crds
from choreo_dp.kube import ApiError, KubeClient
from choreo_dp.kube import resources as R
from choreo_dp.render import ClusterCapabilities, render_app
from choreo_dp.render.labels import FIELD_MANAGER

ENVS = 5
CONCURRENCY = 16
BIN = str(Path(sys.executable).with_name("choreo-dp"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def _app_body(name: str, env: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "choreo.dev/v1alpha1",
        "kind": "ChoreoApp",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "environment": env,
            "project": f"p{hash(name) % 7}",
            "type": "service",
            "image": "registry.example.com/bench/app:1",
            "endpoints": [{"name": "http", "port": 8080}],
        },
    }


async def _bounded(items: list[Any], fn: Any) -> None:
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(item: Any) -> None:
        async with sem:
            await fn(item)

    await asyncio.gather(*(one(i) for i in items))


async def _start_apiserver(tmp: Path) -> tuple[asyncio.subprocess.Process, Path]:
    port = _free_port()
    kubeconfig = tmp / "kubeconfig"
    proc = await asyncio.create_subprocess_exec(
        BIN,
        "sandbox",
        "apiserver",
        "--port",
        str(port),
        "--kubeconfig",
        str(kubeconfig),
        "--simulate-workloads",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    if b"listening" not in line:
        raise RuntimeError(f"apiserver did not start: {line!r}")
    return proc, kubeconfig


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def _peak_rss_mib(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def _floor(kube: KubeClient, n: int) -> float:
    """The operator's writes for n apps, issued by a bare client."""
    envs = []
    for i in range(ENVS):
        ns = f"floor-{i}"
        await kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}, "bench")
        envs.append(
            Environment.model_validate(
                {
                    "kind": "Environment",
                    "metadata": {"name": f"floor{i}", "uid": f"u{i}"},
                    "spec": {"namespace": ns},
                }
            )
        )
    caps = ClusterCapabilities(gateway_api=True)

    async def one(i: int) -> None:
        env = envs[i % ENVS]
        body = _app_body(f"app-{i}", env.metadata.name, env.target_namespace)
        created = await kube.create(R.CHOREOAPPS, body)
        app = ChoreoApp.model_validate(created)
        for manifest in render_app(app, env, caps).manifests:
            await kube.apply(manifest, FIELD_MANAGER)
        status = {"phase": "Progressing", "ready": "0/1", "observedGeneration": 1}
        await kube.patch(
            R.CHOREOAPPS, app.metadata.name, {"status": status}, env.target_namespace, subresource="status"
        )

    t0 = time.perf_counter()
    await _bounded(list(range(n)), one)
    elapsed = time.perf_counter() - t0
    # The floor's apps, Deployments and Pods carry the managed-by label: left in place, the operator
    # would list and reconcile them too (twice the apps, their lists in its peak RSS).
    for i in range(ENVS):
        await kube.delete(R.NAMESPACES, f"floor-{i}")
    deadline = time.monotonic() + 120
    for i in range(ENVS):
        while await kube.get(R.NAMESPACES, f"floor-{i}") is not None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"floor namespace floor-{i} not deleted")
            await asyncio.sleep(0.1)
    return elapsed


async def _wait_ready(
    kube: KubeClient, created: dict[str, float], n: int, deadline: float
) -> dict[str, float]:
    ready: dict[str, float] = {}
    while len(ready) < n and time.monotonic() < deadline:
        items, rv = await kube.list(R.CHOREOAPPS)
        now = time.perf_counter()
        for item in items:
            key = f"{item['metadata']['namespace']}/{item['metadata']['name']}"
            if key in created and key not in ready and (item.get("status") or {}).get("phase") == "Ready":
                ready[key] = now
        if len(ready) >= n:
            break
        try:
            async for etype, obj in kube.watch(R.CHOREOAPPS, resource_version=rv, timeout_seconds=30):
                if etype not in ("ADDED", "MODIFIED"):
                    continue
                key = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
                if key in created and key not in ready and (obj.get("status") or {}).get("phase") == "Ready":
                    ready[key] = time.perf_counter()
                    if len(ready) >= n:
                        break
                if time.monotonic() > deadline:
                    break
        except ApiError:
            continue
    return ready


async def _idle_children(kube: KubeClient, count: int) -> list[float]:
    latencies = []
    for i in range(count):
        name = f"idle-{i}"
        ns = "choreo-bench0"
        t0 = time.perf_counter()
        await kube.create(R.CHOREOAPPS, _app_body(name, "bench0", ns))
        while await kube.get(R.DEPLOYMENTS, name, ns) is None:
            if time.perf_counter() - t0 > 10:
                break
            await asyncio.sleep(0.002)
        latencies.append(time.perf_counter() - t0)
    return latencies


async def _one_size(n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        server, kubeconfig = await _start_apiserver(tmp)
        operator: asyncio.subprocess.Process | None = None
        kube = await KubeClient.from_kubeconfig(str(kubeconfig), max_connections=CONCURRENCY * 2)
        try:
            for crd in all_crds().values():
                await kube.create(R.CRDS, crd)
            await kube.apply(
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "choreo-system"}}, "bench"
            )
            floor = await _floor(kube, n)

            env = dict(os.environ, CHOREO_DP_OPERATOR_NAMESPACE="choreo-system")
            # CHOREO_BENCH_OPERATOR_PREFIX: a wrapper command for profiling, e.g. "py-spy record -o x --".
            prefix = os.environ.get("CHOREO_BENCH_OPERATOR_PREFIX", "").split()
            operator = await asyncio.create_subprocess_exec(
                *prefix,
                BIN,
                "operator",
                "--kubeconfig",
                str(kubeconfig),
                "--health-port",
                str(_free_port()),
                "--metrics-port",
                str(_free_port()),
                "--log-level",
                "WARNING",
                env=env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            for i in range(ENVS):
                await kube.apply(
                    {
                        "apiVersion": "choreo.dev/v1alpha1",
                        "kind": "Environment",
                        "metadata": {"name": f"bench{i}"},
                        "spec": {},
                    },
                    "bench",
                )
            for i in range(ENVS):
                t_env = time.monotonic()
                while True:
                    e = await kube.get(R.ENVIRONMENTS, f"bench{i}")
                    if ((e or {}).get("status") or {}).get("phase") == "Ready":
                        break
                    if time.monotonic() - t_env > 60:
                        raise RuntimeError(f"environment bench{i} not Ready")
                    await asyncio.sleep(0.05)

            created: dict[str, float] = {}

            async def create(i: int) -> None:
                ns = f"choreo-bench{i % ENVS}"
                created[f"{ns}/app-{i}"] = time.perf_counter()
                await kube.create(R.CHOREOAPPS, _app_body(f"app-{i}", f"bench{i % ENVS}", ns))

            t0 = time.perf_counter()
            waiter = asyncio.create_task(_wait_ready(kube, created, n, time.monotonic() + 60 + n * 0.2))
            await _bounded(list(range(n)), create)
            ready = await waiter
            total = (max(ready.values()) if ready else time.perf_counter()) - t0
            latencies = [ready[k] - created[k] for k in ready]
            idle = await _idle_children(kube, 20)
            rss = _peak_rss_mib(operator.pid)
            return {
                f"n{n}_apps_ready": len(ready),
                f"n{n}_floor_s": round(floor, 3),
                f"n{n}_operator_s": round(total, 3),
                f"n{n}_ratio_to_floor": round(total / floor, 2),
                f"n{n}_apps_per_s": round(len(ready) / total, 1),
                f"n{n}_create_to_ready_p50_ms": round(_pct(latencies, 50) * 1000, 1),
                f"n{n}_create_to_ready_p99_ms": round(_pct(latencies, 99) * 1000, 1),
                f"n{n}_idle_create_to_children_p50_ms": round(_pct(idle, 50) * 1000, 1),
                f"n{n}_idle_create_to_children_p99_ms": round(_pct(idle, 99) * 1000, 1),
                f"n{n}_operator_peak_rss_mib": round(rss, 1),
            }
        finally:
            await kube.close()
            if operator is not None:
                await _stop(operator)
            await _stop(server)


async def run(quick: bool) -> dict[str, Any]:
    sizes = [200] if quick else [1000, 5000]
    out: dict[str, Any] = {}
    for n in sizes:
        out.update(await _one_size(n))
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(asyncio.run(run(quick="--full" not in sys.argv)), indent=2))
