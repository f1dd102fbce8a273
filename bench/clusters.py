"""The Kubernetes API servers the benchmarks measure against, started as subprocesses.

Two kinds, one interface, so every figure can be taken on both in the same run:

- ``emulated``: ``choreo-dp sandbox apiserver --simulate-workloads``, the in-repo emulated API with
  its workload simulator (Deployments become available the way a kubelet would make them);
- ``real``: ``choreo-dp sandbox cluster --nodes K``, etcd + kube-apiserver (RBAC, default
  admission) + kube-controller-manager + kube-scheduler + kwok nodes, from the binaries
  ``tools/kube/build.py`` cached.  A Deployment becomes available only through the real
  deployment and replicaset controllers, the scheduler and kwok's pod stages.

Which kinds a run uses: ``CHOREO_BENCH_KUBE`` = ``emulated`` | ``real`` | ``both`` (``python -m
bench --kube`` sets it); unset means ``both`` when the real binaries are cached, ``emulated``
otherwise.  Figures are keyed ``<kind>_<name>``; ``real_vs_emulated_<name>`` is real / emulated.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from choreo_dp.api.crdgen import all_crds
from choreo_dp.kube import ApiError, KubeClient
from choreo_dp.kube import resources as R
from choreo_sandbox.cluster.binaries import BinariesMissing, binaries_available, find_binaries

KINDS = ("emulated", "real")
KUBE_ENV = "CHOREO_BENCH_KUBE"
CHOICES = ("emulated", "real", "both")
BIN = str(Path(sys.executable).with_name("choreo-dp"))
# kwok's node-initialize Stage gives every node it manages cpu 1k, memory 1Ti, pods 1M allocatable
# (``api_server`` reads it back); the operator's pods request no resources, so two nodes hold any
# size the benchmarks use: the second one only so the scheduler has a choice to make, as it would.
REAL_NODES = 2
START_TIMEOUT = {"emulated": 30.0, "real": 240.0}
STOP_TIMEOUT = {"emulated": 15.0, "real": 90.0}
NODES = R.Resource("", "v1", "nodes", "Node", False)
NOTES = {
    "emulated": "emulated API (choreo-dp sandbox apiserver --simulate-workloads): in-memory store, "
    "the simulator makes Deployments available",
    "real": "real control plane (choreo-dp sandbox cluster): etcd + kube-apiserver v1.36 "
    "(RBAC, admission, managedFields) + controller-manager + scheduler + kwok nodes; "
    "Ready goes Deployment -> ReplicaSet -> Pod -> scheduled -> kwok Ready; no Gateway API CRDs "
    "(routes fall back to Ingress)",
}


def real_available() -> bool:
    return binaries_available()


def default_choice() -> str:
    return "both" if real_available() else "emulated"


def selected_kinds(choice: str | None = None) -> list[str]:
    """The kinds to measure: ``choice``, else ``$CHOREO_BENCH_KUBE``, else the default."""
    choice = choice or os.environ.get(KUBE_ENV) or default_choice()
    if choice not in CHOICES:
        raise ValueError(f"{KUBE_ENV}={choice!r}: expected one of {', '.join(CHOICES)}")
    kinds = list(KINDS) if choice == "both" else [choice]
    if "real" in kinds:
        find_binaries()  # BinariesMissing names the build command
    return kinds


def describe(kinds: Iterable[str]) -> str:
    """One line for the table header saying what was measured and why."""
    kinds = list(kinds)
    text = " + ".join(kinds)
    if kinds == ["emulated"] and not real_available():
        try:
            find_binaries()
        except BinariesMissing as exc:
            text += f" only (real: {exc})"
    return text


@dataclass
class ApiServerProcess:
    kind: str
    url: str
    kubeconfig: Path
    log: Path
    proc: asyncio.subprocess.Process = field(repr=False)
    nodes: int = 0
    # Real only: what the kwok nodes offer in total (pods, cpu cores, bytes), read from their status.
    allocatable_pods: int = 0
    allocatable_cpu: float = 0.0
    allocatable_memory: float = 0.0

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def stop(self) -> None:
        proc = self.proc
        if proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT[self.kind])
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


def quantity(raw: str) -> float:
    """A Kubernetes quantity as a number (cores, bytes, count): enough for node capacity."""
    binary = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}
    decimal = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}
    if raw[-2:] in binary:
        return float(raw[:-2]) * binary[raw[-2:]]
    if raw and raw[-1] in decimal:
        return float(raw[:-1]) * decimal[raw[-1]]
    return float(raw)


async def _read_capacity(server: ApiServerProcess) -> None:
    async with await KubeClient.from_kubeconfig(str(server.kubeconfig)) as kube:
        nodes, _ = await kube.list(NODES)
    server.nodes = len(nodes)
    for node in nodes:
        alloc = (node.get("status") or {}).get("allocatable") or {}
        server.allocatable_pods += int(quantity(str(alloc.get("pods", "0"))))
        server.allocatable_cpu += quantity(str(alloc.get("cpu", "0")))
        server.allocatable_memory += quantity(str(alloc.get("memory", "0")))


@contextlib.asynccontextmanager
async def api_server(
    kind: str, directory: Path, *, nodes: int = REAL_NODES
) -> AsyncIterator[ApiServerProcess]:
    """Start ``kind`` as a subprocess writing ``directory/<kind>.kubeconfig``; stop it on exit."""
    if kind not in KINDS:
        raise ValueError(f"unknown API server kind {kind!r}")
    kubeconfig = directory / f"{kind}.kubeconfig"
    log = directory / f"{kind}-apiserver.log"
    common = ["--port", "0", "--kubeconfig", str(kubeconfig)]
    if kind == "emulated":
        argv = ["sandbox", "apiserver", *common, "--simulate-workloads"]
    else:
        find_binaries()
        argv = ["sandbox", "cluster", *common, "--nodes", str(nodes)]
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            BIN, *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=err
        )
    server: ApiServerProcess | None = None
    try:
        assert proc.stdout is not None
        t0 = time.monotonic()
        line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT[kind])
        if not line.startswith(b"listening on "):
            await asyncio.wait_for(proc.wait(), 30)
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{kind} API server did not start ({proc.returncode}): {line!r}\n{tail}")
        server = ApiServerProcess(kind, line.decode().split()[-1], kubeconfig, log, proc)
        if kind == "real":
            await _read_capacity(server)
        print(f"  [{kind}] {server.url} ready in {time.monotonic() - t0:.1f}s", flush=True)
        yield server
    finally:
        if server is not None:
            await server.stop()
        elif proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT[kind])
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def install_crds(kube: KubeClient, timeout: float = 60.0) -> None:
    """Create the choreo.dev CRDs and wait until they are served (a real apiserver establishes a new
    CRD asynchronously; the first create of a ChoreoApp would 404 otherwise)."""
    crds = list(all_crds().values())
    for crd in crds:
        try:
            await kube.create(R.CRDS, crd)
        except ApiError as exc:
            if exc.status != 409:
                raise
    deadline = time.monotonic() + timeout
    for crd in crds:
        spec = crd["spec"]
        version = next(v["name"] for v in spec["versions"] if v.get("served", True))
        path = f"/apis/{spec['group']}/{version}/{spec['names']['plural']}"
        while True:
            try:
                await kube.request("GET", path, params={"limit": "1"}, retry=False)
                break
            except ApiError as exc:
                if exc.status != 404 or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.1)


def cross_ratios(out: dict[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """``real_vs_emulated_<name>`` = real / emulated for every name both kinds measured."""
    ratios: dict[str, Any] = {}
    for name in names:
        real, emulated = out.get(f"real_{name}"), out.get(f"emulated_{name}")
        if isinstance(real, int | float) and isinstance(emulated, int | float):
            if not (math.isfinite(real) and math.isfinite(emulated)) or not emulated:
                continue
            ratios[f"real_vs_emulated_{name}"] = round(real / emulated, 2)
    return ratios
