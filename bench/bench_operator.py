"""Operator cold start: N ChoreoApps across 5 environments until every app is Ready.

The API server and the operator each run in their own process (``choreo-dp operator``), so the
operator's peak RSS is its own.  The API server is each kind ``bench/clusters.py`` selects: the
emulated API with its workload simulator, and a real control plane (kube-apiserver, etcd,
controller-manager, scheduler, kwok nodes); every figure is keyed ``<kind>_n<N>_...`` and measured
on a fresh server of that kind, ``real_vs_emulated_n<N>_...`` is real / emulated.

Figures (quick: N=200; --full: N=1,000 and 5,000):
- floor: the same API writes the operator issues (create the ChoreoApp, apply its Deployment and
  Service, write its status) done by a bare client with the same concurrency, against the same
  server, in this run, into separate namespaces (deleted before the operator starts, so it does
  not see the floor's objects);
- floor_deploy_available: for the floor's Deployments, apply -> available (status says every
  replica available at the current generation), with no operator involved: what the cluster's
  workload machinery takes on its own (the simulator; or the deployment and replicaset
  controllers, the scheduler and kwok) -- the part of create-to-Ready that is not the operator's;
- operator: wall time from the first create until every app reports Ready (includes pod
  start-up as above), apps/s, p50/p99 create-to-Ready, ratio to the floor;
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

from bench import clusters
from choreo_dp.api import ChoreoApp, Environment
from choreo_dp.kube import ApiError, KubeClient
from choreo_dp.kube import resources as R
from choreo_dp.kube.resources import Resource
from choreo_dp.render import ClusterCapabilities, render_app
from choreo_dp.render.environment import DEFAULT_REQUESTS, render_environment
from choreo_dp.render.labels import FIELD_MANAGER

ENVS = 5
CONCURRENCY = 16
IDLE_APPS = 20
BIN = clusters.BIN


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


async def _floor(kube: KubeClient, n: int) -> tuple[float, dict[str, float], dict[str, float]]:
    """The operator's writes for n apps, issued by a bare client; then until its Deployments are
    available.  Returns (seconds for the writes, apply time and available time per Deployment)."""
    envs = []
    for i in range(ENVS):
        env = Environment.model_validate(
            {
                "kind": "Environment",
                "metadata": {"name": f"floor{i}", "uid": f"u{i}"},
                "spec": {"namespace": f"floor-{i}"},
            }
        )
        envs.append(env)
        # Untimed: what the operator's Environment reconcile puts in place before any app (namespace,
        # LimitRange, NetworkPolicies, the apps' ServiceAccount).  A real API server refuses pods
        # naming a ServiceAccount that does not exist, and its LimitRanger gives them requests.
        # Without owner references: the Environment does not exist, and a real garbage collector
        # deletes what a missing owner owns.
        for manifest in render_environment(env, projects=[f"p{k}" for k in range(7)]):
            manifest["metadata"].pop("ownerReferences", None)
            await kube.apply(manifest, "bench")
    # What the operator detects on this server (the real cluster has no Gateway API: Ingress).
    caps = ClusterCapabilities(gateway_api=await kube.served("gateway.networking.k8s.io/v1"))
    applied: dict[str, float] = {}

    async def one(i: int) -> None:
        env = envs[i % ENVS]
        body = _app_body(f"app-{i}", env.metadata.name, env.target_namespace)
        created = await kube.create(R.CHOREOAPPS, body)
        app = ChoreoApp.model_validate(created)
        for manifest in render_app(app, env, caps).manifests:
            if manifest["kind"] == "Deployment":
                applied[f"{env.target_namespace}/{manifest['metadata']['name']}"] = time.perf_counter()
            await kube.apply(manifest, FIELD_MANAGER)
        status = {"phase": "Progressing", "ready": "0/1", "observedGeneration": 1}
        await kube.patch(
            R.CHOREOAPPS, app.metadata.name, {"status": status}, env.target_namespace, subresource="status"
        )

    waiter = asyncio.create_task(
        _wait_each(kube, R.DEPLOYMENTS, applied, n, _available, time.monotonic() + 60 + n * 0.2)
    )
    t0 = time.perf_counter()
    await _bounded(list(range(n)), one)
    elapsed = time.perf_counter() - t0
    available = await waiter
    # The floor's apps, Deployments and Pods carry the managed-by label: left in place, the operator
    # would list and reconcile them too (twice the apps, their lists in its peak RSS).
    for i in range(ENVS):
        await kube.delete(R.NAMESPACES, f"floor-{i}")
    deadline = time.monotonic() + 120 + n * 0.1  # a real namespace controller deletes in rounds
    for i in range(ENVS):
        while await kube.get(R.NAMESPACES, f"floor-{i}") is not None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"floor namespace floor-{i} not deleted")
            await asyncio.sleep(0.1)
    return elapsed, applied, available


def _available(deployment: dict[str, Any]) -> bool:
    """Every replica updated and available at the current generation (what the operator waits for)."""
    want = int((deployment.get("spec") or {}).get("replicas", 1))
    status = deployment.get("status") or {}
    return (
        int(status.get("observedGeneration") or 0) >= int(deployment["metadata"].get("generation") or 1)
        and int(status.get("updatedReplicas") or 0) >= want
        and int(status.get("availableReplicas") or 0) >= want
    )


def _app_ready(app: dict[str, Any]) -> bool:
    return (app.get("status") or {}).get("phase") == "Ready"


async def _wait_each(
    kube: KubeClient,
    res: Resource,
    created: dict[str, float],
    n: int,
    done: Any,
    deadline: float,
) -> dict[str, float]:
    """When each object of ``created`` (namespace/name) first satisfies ``done``, until n have."""
    ready: dict[str, float] = {}
    while len(ready) < n and time.monotonic() < deadline:
        items, rv = await kube.list(res)
        now = time.perf_counter()
        for item in items:
            key = f"{item['metadata']['namespace']}/{item['metadata']['name']}"
            if key in created and key not in ready and done(item):
                ready[key] = now
        if len(ready) >= n:
            break
        try:
            async for etype, obj in kube.watch(res, resource_version=rv, timeout_seconds=30):
                if etype not in ("ADDED", "MODIFIED"):
                    continue
                key = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
                if key in created and key not in ready and done(obj):
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


async def _one_size(kind: str, n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        async with clusters.api_server(kind, Path(d)) as server:
            return await _measure(server, n)


def _check_fits(server: clusters.ApiServerProcess, pods: int) -> None:
    """The kwok nodes must hold every pod at the requests the Environment's LimitRange gives it
    (kwok's default node: cpu 1k, memory 1Ti, pods 1M), or the figures would measure Pending pods."""
    cpu = pods * clusters.quantity(DEFAULT_REQUESTS["cpu"])
    memory = pods * clusters.quantity(DEFAULT_REQUESTS["memory"])
    if pods > server.allocatable_pods or cpu > server.allocatable_cpu or memory > server.allocatable_memory:
        raise RuntimeError(
            f"{server.nodes} kwok nodes (pods {server.allocatable_pods}, cpu {server.allocatable_cpu:g}, "
            f"memory {server.allocatable_memory:g}) cannot hold {pods} pods (cpu {cpu:g}, memory {memory:g})"
        )


async def _measure(server: clusters.ApiServerProcess, n: int) -> dict[str, Any]:
    key = f"{server.kind}_n{n}"
    out: dict[str, Any] = {}
    if server.kind == "real":
        out[f"{key}_nodes"] = server.nodes
        _check_fits(server, n + IDLE_APPS)
    operator: asyncio.subprocess.Process | None = None
    kube = await KubeClient.from_kubeconfig(str(server.kubeconfig), max_connections=CONCURRENCY * 2)
    try:
        await clusters.install_crds(kube)
        await kube.apply(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "choreo-system"}}, "bench"
        )
        floor, applied, available = await _floor(kube, n)
        deploy_lat = [available[k] - applied[k] for k in available]

        env = dict(os.environ, CHOREO_DP_OPERATOR_NAMESPACE="choreo-system")
        # CHOREO_BENCH_OPERATOR_PREFIX: a wrapper command for profiling, e.g. "py-spy record -o x --".
        prefix = os.environ.get("CHOREO_BENCH_OPERATOR_PREFIX", "").split()
        operator = await asyncio.create_subprocess_exec(
            *prefix,
            BIN,
            "operator",
            "--kubeconfig",
            str(server.kubeconfig),
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
                    "spec": {"registry": {"allowedPrefixes": ["*"]}},
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
                    raise RuntimeError(f"environment bench{i} not Ready on the {server.kind} API server")
                await asyncio.sleep(0.05)

        created: dict[str, float] = {}

        async def create(i: int) -> None:
            ns = f"choreo-bench{i % ENVS}"
            created[f"{ns}/app-{i}"] = time.perf_counter()
            await kube.create(R.CHOREOAPPS, _app_body(f"app-{i}", f"bench{i % ENVS}", ns))

        t0 = time.perf_counter()
        waiter = asyncio.create_task(
            _wait_each(kube, R.CHOREOAPPS, created, n, _app_ready, time.monotonic() + 60 + n * 0.2)
        )
        await _bounded(list(range(n)), create)
        ready = await waiter
        total = (max(ready.values()) if ready else time.perf_counter()) - t0
        latencies = [ready[k] - created[k] for k in ready]
        idle = await _idle_children(kube, IDLE_APPS)
        rss = _peak_rss_mib(operator.pid)
        out.update(
            {
                f"{key}_apps_ready": len(ready),
                f"{key}_floor_s": round(floor, 3),
                f"{key}_floor_deploys_available": len(available),
                f"{key}_floor_deploy_available_p50_ms": round(_pct(deploy_lat, 50) * 1000, 1),
                f"{key}_floor_deploy_available_p99_ms": round(_pct(deploy_lat, 99) * 1000, 1),
                f"{key}_operator_s": round(total, 3),
                f"{key}_ratio_to_floor": round(total / floor, 2),
                f"{key}_apps_per_s": round(len(ready) / total, 1),
                f"{key}_create_to_ready_p50_ms": round(_pct(latencies, 50) * 1000, 1),
                f"{key}_create_to_ready_p99_ms": round(_pct(latencies, 99) * 1000, 1),
                f"{key}_idle_create_to_children_p50_ms": round(_pct(idle, 50) * 1000, 1),
                f"{key}_idle_create_to_children_p99_ms": round(_pct(idle, 99) * 1000, 1),
                f"{key}_operator_peak_rss_mib": round(rss, 1),
            }
        )
        return out
    finally:
        await kube.close()
        if operator is not None:
            await _stop(operator)


# real / emulated, where the same quantity was measured on both (ratio_to_floor is already a ratio).
CROSS = (
    "floor_s",
    "floor_deploy_available_p50_ms",
    "operator_s",
    "create_to_ready_p50_ms",
    "create_to_ready_p99_ms",
    "idle_create_to_children_p50_ms",
    "operator_peak_rss_mib",
)


async def run(quick: bool) -> dict[str, Any]:
    sizes = [200] if quick else [1000, 5000]
    kinds = clusters.selected_kinds()
    out: dict[str, Any] = {"kube": "+".join(kinds)}
    for kind in kinds:
        for n in sizes:
            out.update(await _one_size(kind, n))
    for n in sizes:
        out.update(clusters.cross_ratios(out, (f"n{n}_{name}" for name in CROSS)))
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(asyncio.run(run(quick="--full" not in sys.argv)), indent=2))
