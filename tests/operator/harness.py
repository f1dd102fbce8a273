"""An emulated API with CRDs installed and one operator running against it, plus polling helpers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from choreo_dp.kube import KubeClient
from choreo_dp.kube import resources as R
from choreo_dp.operator import OperatorConfig, run_operator
from choreo_dp.operator.config import SecretsFactory
from choreo_dp.sandbox.apiserver.server import ApiServer

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"
OPERATOR_NS = "choreo-system"
T = TypeVar("T")


async def install_crds(kube: KubeClient) -> None:
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        if await kube.get(R.CRDS, crd["metadata"]["name"]) is None:
            await kube.create(R.CRDS, crd)


async def eventually(
    probe: Callable[[], Awaitable[T | None]], *, timeout: float = 20.0, interval: float = 0.1, what: str = ""
) -> T:
    """Poll ``probe`` until it returns something truthy; fail with the last value after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = await probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or probe}; last: {last!r}")
        await asyncio.sleep(interval)


@dataclass
class Cluster:
    server: ApiServer
    kube: KubeClient
    kubeconfig: Path


@contextlib.asynccontextmanager
async def cluster_on(srv: ApiServer, kubeconfig: Path) -> AsyncIterator[Cluster]:
    """A client on a running emulator, with our CRDs and the operator namespace installed."""
    kube = await KubeClient.from_kubeconfig(str(kubeconfig))
    try:
        await install_crds(kube)
        await kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NS}}, "test")
        yield Cluster(srv, kube, kubeconfig)
    finally:
        await kube.close()


@contextlib.asynccontextmanager
async def emulated_cluster(tmp: Path) -> AsyncIterator[Cluster]:
    """A fresh emulator whose workload simulator makes Deployments available (pods Ready after 50 ms)."""
    async with (
        ApiServer(port=0, simulate_workloads=True, simulator_delay=0.05) as srv,
        cluster_on(srv, srv.write_kubeconfig(tmp / "kubeconfig")) as cluster,
    ):
        yield cluster


def stop_serving_group(srv: ApiServer, group: str) -> None:
    """Make the emulator behave like a cluster without ``group`` (e.g. no Gateway API CRDs).

    ApiServer has no switch for this; its registry is what discovery and routing serve from,
    and discovery caches are keyed on the registry generation, so bump it.
    """
    for key in [k for k in srv.registry.by_gvr if k[0] == group]:
        del srv.registry.by_gvr[key]
    srv.registry.generation += 1


@contextlib.asynccontextmanager
async def running_operator(
    cluster: Cluster, *, secrets_factory: SecretsFactory | None = None, **overrides: Any
) -> AsyncIterator[OperatorConfig]:
    config = OperatorConfig(
        kubeconfig=str(cluster.kubeconfig),
        operator_namespace=OPERATOR_NS,
        secrets_factory=secrets_factory,
        env_resync_seconds=overrides.pop("env_resync_seconds", 5.0),
        progressing_requeue_seconds=overrides.pop("progressing_requeue_seconds", 5.0),
        **overrides,
    )
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_operator(config, stop, ready), name="operator-under-test")
    try:
        done, _ = await asyncio.wait(
            {task, asyncio.create_task(ready.wait())}, timeout=30, return_when="FIRST_COMPLETED"
        )
        if task in done:
            task.result()  # surfaces the startup error
        yield config
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, timeout=20)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def environment(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "choreo.dev/v1alpha1",
        "kind": "Environment",
        "metadata": {"name": name},
        "spec": spec,
    }


def choreoapp(name: str, env: str, namespace: str | None = None, **spec: Any) -> dict[str, Any]:
    body = {
        "environment": env,
        "project": "shop",
        "type": "service",
        "image": "registry.example.com/shop/x:1",
    }
    body.update(spec)
    return {
        "apiVersion": "choreo.dev/v1alpha1",
        "kind": "ChoreoApp",
        "metadata": {"name": name, "namespace": namespace or f"choreo-{env}"},
        "spec": body,
    }
