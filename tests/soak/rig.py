"""Everything the soak runs, started and stopped in one place.

A real Kubernetes control plane of the soak's own (``RealCluster`` in this process, so the
adversary can SIGSTOP and restart its kube-apiserver without disturbing any other test), and the
product as a customer runs it: ``choreo-dp control-plane serve`` (SQLite under the soak's
directory, TLS from ``choreo_sandbox.tls``), ``choreo-dp operator`` and ``choreo-dp agent`` as
child processes (``choreo_sandbox.children.Children``: logs in DIR/<name>.log, restart with the
same argv and ports), the agent reaching the control plane through a ``TunnelProxy``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from choreo_dp.api.crdgen import all_crds
from choreo_dp.kube import ApiError, KubeClient
from choreo_dp.kube import resources as R
from choreo_sandbox.children import Children, free_port
from choreo_sandbox.cluster import RealCluster
from choreo_sandbox.cluster.processes import Component
from choreo_sandbox.tls import ensure_tls
from tests import polling
from tests.soak.tcp_proxy import TunnelProxy

DATAPLANE = "soak"
OPERATOR_NAMESPACE = "choreo-system"
FIELD_MANAGER = "choreo-dp-soak"
PARTS = ("control-plane", "operator", "agent")
APISERVER = "kube-apiserver"
# Every call the soak itself makes is short: a stopped apiserver must not stall the harness.
CALL_TIMEOUT = 8.0


class Rig:
    def __init__(self, directory: Path) -> None:
        self.directory = directory.resolve()
        self.children = Children(self.directory)
        self.cluster: RealCluster | None = None
        self.kube: KubeClient | None = None
        self.proxy: TunnelProxy | None = None
        self.cp_port = free_port()
        self.health = {"operator": free_port(), "agent": free_port()}
        self.admin_token = secrets.token_urlsafe(24)
        self._ssl: ssl.SSLContext | None = None

    # --- paths and clients ---------------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        assert self.cluster is not None
        return self.cluster.kubeconfig_path

    @property
    def cp_url(self) -> str:
        return f"https://127.0.0.1:{self.cp_port}"

    def cp_client(self) -> httpx.AsyncClient:
        assert self._ssl is not None
        return httpx.AsyncClient(
            base_url=self.cp_url,
            headers={"Authorization": f"Bearer {self.admin_token}"},
            verify=self._ssl,
            timeout=CALL_TIMEOUT,
        )

    def apiserver(self) -> Component:
        assert self.cluster is not None
        return next(c for c in self.cluster.components if c.name == APISERVER)

    # --- start -----------------------------------------------------------------------------------

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.cluster = RealCluster(nodes=2, data_dir=self.directory / "cluster")
        await self.cluster.start()
        self.kube = await KubeClient.from_kubeconfig(
            self.kubeconfig, max_retries=1, request_timeout=CALL_TIMEOUT
        )
        await self._install_crds()
        tls = ensure_tls(self.directory)
        self._ssl = ssl.create_default_context(cafile=str(tls.ca_cert))
        token_file = self.directory / "admin-token"
        token_file.write_text(self.admin_token + "\n")
        await self.children.start(
            "control-plane",
            [
                "control-plane", "serve", "--listen", f"127.0.0.1:{self.cp_port}",
                "--db", str(self.directory / "cp.db"),
                "--tls-cert", str(tls.server_cert), "--tls-key", str(tls.server_key),
                "--admin-token-file", str(token_file),
            ],
        )  # fmt: skip
        await self.wait_healthy("control-plane", timeout=30)
        async with self.cp_client() as cp:
            r = await cp.put(f"/api/v1/dataplanes/{DATAPLANE}", params={"rotateToken": "true"}, json={})
            r.raise_for_status()
            dp_token = self.directory / "dataplane-token"
            dp_token.write_text(r.json()["token"] + "\n")
        self.proxy = TunnelProxy("127.0.0.1", self.cp_port)
        await self.proxy.start()
        await self.children.start(
            "operator",
            [
                "operator", "--kubeconfig", str(self.kubeconfig),
                "--health-port", str(self.health["operator"]), "--metrics-port", str(free_port()),
            ],
            env={"CHOREO_DP_OPERATOR_NAMESPACE": OPERATOR_NAMESPACE},
        )  # fmt: skip
        await self.children.start(
            "agent",
            [
                "agent", "--control-plane", f"wss://127.0.0.1:{self.proxy.port}",
                "--dataplane", DATAPLANE, "--token-file", str(dp_token),
                "--ca-file", str(tls.ca_cert), "--kubeconfig", str(self.kubeconfig),
                "--health-port", str(self.health["agent"]), "--metrics-port", str(free_port()),
            ],
        )  # fmt: skip
        for part in ("operator", "agent"):
            await self.wait_healthy(part, timeout=30)

    async def _install_crds(self) -> None:
        assert self.kube is not None
        kube = self.kube
        for crd in all_crds().values():
            await kube.apply(crd, FIELD_MANAGER)
        await kube.apply(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}}, FIELD_MANAGER
        )

        async def served() -> bool:
            for res in (R.ENVIRONMENTS, R.CHOREOAPPS, R.DATAPLANES):
                try:
                    await kube.list(res)
                except ApiError as exc:
                    if exc.status == 404:
                        return False
                    raise
            return True

        await polling.eventually(served, "the choreo.dev CRDs served", timeout=60, interval=0.3)

    # --- health ----------------------------------------------------------------------------------

    def health_url(self, part: str) -> str:
        if part == "control-plane":
            return f"{self.cp_url}/healthz"
        return f"http://127.0.0.1:{self.health[part]}/healthz"

    async def healthy(self, part: str) -> tuple[bool, str]:
        """Whether ``part`` runs and its /healthz answers 200 (and what it answered otherwise)."""
        code = self.children.returncode(part)
        if code is not None:
            return False, f"exited with {code}"
        ssl_ctx: ssl.SSLContext | bool = self._ssl if part == "control-plane" and self._ssl else False
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as http,
                http.get(self.health_url(part), ssl=ssl_ctx) as resp,
            ):
                body = (await resp.text())[:300]
                return resp.status == 200, f"/healthz {resp.status} {body}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return False, f"/healthz unreachable: {type(exc).__name__} {exc}"

    async def wait_healthy(self, part: str, timeout: float) -> None:
        def dead() -> None:
            code = self.children.returncode(part)
            if code is not None:
                raise AssertionError(f"{part} exited with {code} (log {self.children.log_path(part)})")

        async def ok() -> bool:
            return (await self.healthy(part))[0]

        await polling.eventually(ok, f"{part} /healthz", timeout=timeout, interval=0.2, guard=dead)

    async def apiserver_ready(self) -> bool:
        assert self.cluster is not None and self.cluster.pki is not None
        pki = self.cluster.pki
        ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
        ctx.load_cert_chain(str(pki.admin.cert), str(pki.admin.key))
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as http,
                http.get(f"{self.cluster.url}/readyz", ssl=ctx) as resp,
            ):
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    # --- faults ------------------------------------------------------------------------------------

    async def kill9(self, part: str) -> None:
        pid = self.children.pids[part]
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    async def restart(self, part: str) -> None:
        await self.children.restart(part)

    def signal_apiserver(self, sig: signal.Signals) -> None:
        proc = self.apiserver().proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)

    async def restart_apiserver(self, timeout: float = 90.0) -> None:
        """Stop the kube-apiserver (SIGTERM, as an upgrade does) and start it again on the same port
        and etcd: the cluster keeps its data, every client loses its connections."""
        comp = self.apiserver()
        self.signal_apiserver(signal.SIGCONT)  # a stopped process cannot handle SIGTERM
        await comp.stop()
        await comp.start()
        await polling.eventually(
            self.apiserver_ready, "kube-apiserver /readyz", timeout=timeout, interval=0.3
        )

    def cluster_down(self) -> list[str]:
        """Cluster components that are not running."""
        assert self.cluster is not None
        return [c.name for c in self.cluster.components if not c.running]

    # --- stop --------------------------------------------------------------------------------------

    async def stop(self) -> None:
        if self.cluster is not None:
            with contextlib.suppress(StopIteration):
                self.signal_apiserver(signal.SIGCONT)
        with contextlib.suppress(Exception):
            await self.children.stop_all()
        if self.proxy is not None:
            await self.proxy.stop()
        if self.kube is not None:
            await self.kube.close()
        if self.cluster is not None:
            await self.cluster.stop()

    def log_tails(self, lines: int = 25) -> str:
        out = []
        for part in PARTS:
            path = self.children.log_path(part)
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- last {lines} lines of {path}\n" + "\n".join(text))
        return "\n".join(out)


async def bounded(aw: Any, timeout: float = CALL_TIMEOUT) -> Any:
    """``await aw`` within ``timeout`` (the soak's calls must never hang on a stopped server)."""
    return await asyncio.wait_for(aw, timeout)
