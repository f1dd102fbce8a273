"""``ApiServer``: the emulated Kubernetes API as an async context manager (and a thread helper)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import signal
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from aiohttp import web

from kube_emulator.app import ApiApp
from kube_emulator.faults import Faults
from kube_emulator.gc import GarbageCollector
from kube_emulator.patch import clone
from kube_emulator.podlogs import install_kwok_crds
from kube_emulator.quota import QuotaController
from kube_emulator.resources import Registry
from kube_emulator.serving import ServiceThread, start_site
from kube_emulator.simulator import WorkloadSimulator
from kube_emulator.store import Store, WriteOptions

JSON = dict[str, Any]
SEED_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
DUMMY_TOKEN = "choreo-dp-emulator-token"


class ApiServer:
    """In-memory Kubernetes API on loopback.

    ``async with ApiServer(port=0, simulate_workloads=True) as srv:`` then use
    ``srv.url``, ``srv.write_kubeconfig(path)``, ``srv.faults``, ``srv.simulator``
    and ``srv.store`` (or the copying helpers ``srv.get_object`` / ``srv.objects``).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        simulate_workloads: bool = False,
        simulator_delay: float = 0.2,
        history_size: int = 10_000,
        watch_queue_size: int = 4096,
        bookmark_interval: float = 1.0,
    ) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"the emulated API only listens on loopback, not {host}")
        self.host = host
        self.requested_port = port
        self.registry = Registry.with_builtins()
        self.store = Store(self.registry, history_size=history_size, watch_queue_size=watch_queue_size)
        self.faults = Faults()
        self.gc = GarbageCollector(self.store)
        self.quota = QuotaController(self.store)
        self.simulator = WorkloadSimulator(self.store, delay=simulator_delay, enabled=simulate_workloads)
        self.api = ApiApp(self.store, self.faults, bookmark_interval=bookmark_interval)
        self.kubeconfig_path: Path | None = None
        self._runner: web.AppRunner | None = None
        self._port = 0
        for ns in SEED_NAMESPACES:
            ns_rt = self.registry.get("", "v1", "namespaces")
            assert ns_rt is not None
            self.store.create(ns_rt, "", {"metadata": {"name": ns}}, WriteOptions(manager="kube-apiserver"))
        install_kwok_crds(self.store)  # kwok's Logs/ClusterLogs, as ``sandbox cluster`` serves them

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self._port}"

    async def start(self) -> None:
        self._runner, self._port = await start_site(self.api.build(), self.host, self.requested_port)
        self.api.server_address = f"{self.host}:{self._port}"
        self.gc.start()
        self.quota.start()
        self.simulator.start()

    async def stop(self) -> None:
        await self.simulator.stop()
        await self.quota.stop()
        await self.gc.stop()
        for b in list(self.store.buckets.values()):
            for w in list(b.watchers):
                w.close("the server is shutting down")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> ApiServer:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def kubeconfig(self) -> JSON:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "choreo-emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "choreo-emulator", "user": {"token": DUMMY_TOKEN}}],
            "contexts": [
                {
                    "name": "choreo-emulator",
                    "context": {
                        "cluster": "choreo-emulator",
                        "user": "choreo-emulator",
                        "namespace": "default",
                    },
                }
            ],
            "current-context": "choreo-emulator",
            "preferences": {},
        }

    def write_kubeconfig(self, path: str | os.PathLike[str]) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(yaml.safe_dump(self.kubeconfig(), sort_keys=False))
        tmp.chmod(0o600)
        tmp.replace(p)
        self.kubeconfig_path = p
        return p

    # ----- helpers for in-process tests --------------------------------------------------
    def _rt(self, plural: str, group: str | None) -> Any:
        for rt in self.registry:
            if (
                rt.plural == plural
                and (group is None or rt.group == group)
                and rt.version == rt.storage_version
            ):
                return rt
        raise KeyError(f"no resource {plural!r} (group {group!r})")

    def get_object(
        self, plural: str, name: str, namespace: str = "", group: str | None = None
    ) -> JSON | None:
        """A copy of a stored object, or None."""
        obj = self.store.get(self._rt(plural, group), namespace, name)
        return clone(obj) if obj is not None else None

    def objects(self, plural: str, namespace: str | None = None, group: str | None = None) -> list[JSON]:
        """Copies of all stored objects of a resource (optionally in one namespace)."""
        return [clone(o) for o in self.store.list(self._rt(plural, group), namespace)]


class ApiServerThread(ServiceThread[ApiServer]):
    """Runs an ApiServer on its own event loop in a daemon thread, for synchronous clients.

    ``with ApiServerThread(simulate_workloads=True) as t: t.server.url``; use ``t.call(fn)``
    to run a function on the server's loop (e.g. to inject faults safely).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(lambda: ApiServer(**kwargs), "emulated-apiserver", start_timeout=30.0)

    @property
    def server(self) -> ApiServer:
        return self.service


async def serve_forever(
    port: int, kubeconfig: str | os.PathLike[str], simulate_workloads: bool = False, host: str = "127.0.0.1"
) -> int:
    """The ``choreo-dp sandbox apiserver`` main loop: serve until SIGINT/SIGTERM, exit 0."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async with ApiServer(host=host, port=port, simulate_workloads=simulate_workloads) as srv:
        srv.write_kubeconfig(kubeconfig)
        sys.stdout.write(f"listening on {srv.url}\n")
        sys.stdout.flush()
        await stop.wait()
    return 0
