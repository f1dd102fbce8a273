"""A real Kubernetes control plane on 127.0.0.1 from cached binaries: etcd, kube-apiserver (RBAC,
default admission), kube-controller-manager, kube-scheduler, and kwok simulating nodes and pods.

The processes are started directly, the way kwokctl's binary runtime does, because kwokctl would
download release binaries and this machine builds its own.  Everything lives in one data
directory that is removed on stop.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import yaml

from choreo_dp.kube import KubeClient
from choreo_dp.kube import resources as R
from choreo_dp.kube.errors import ApiError
from choreo_dp.kube.resources import Resource
from choreo_sandbox.cluster.binaries import KubeBinaries, find_binaries
from choreo_sandbox.cluster.pki import ClusterPki, KeyPair, create_pki
from choreo_sandbox.cluster.processes import Component, ProcessFailed

log = logging.getLogger(__name__)
T = TypeVar("T")

STAGES = Resource("kwok.x-k8s.io", "v1alpha1", "stages", "Stage", False)
NODES = Resource("", "v1", "nodes", "Node", False)
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
FIELD_MANAGER = "choreo-dp-sandbox-cluster"
SERVICE_CIDR = "10.96.0.0/16"
START_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _kubeconfig(server: str, ca: Path, client: KeyPair, user: str, *, embed: bool = False) -> dict[str, Any]:
    """A kubeconfig for ``user``; ``embed`` inlines the certificates so the file survives copying
    (the admin one handed to users), otherwise it names the files (the components' own)."""

    def ref(key: str, path: Path) -> dict[str, str]:
        if embed:
            return {f"{key}-data": base64.b64encode(path.read_bytes()).decode()}
        return {key: str(path)}

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "choreo-dp", "cluster": {"server": server, **ref("certificate-authority", ca)}}
        ],
        "users": [
            {
                "name": user,
                "user": {**ref("client-certificate", client.cert), **ref("client-key", client.key)},
            }
        ],
        "contexts": [{"name": "choreo-dp", "context": {"cluster": "choreo-dp", "user": user}}],
        "current-context": "choreo-dp",
    }


def _write_private(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.touch(mode=0o600)
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    tmp.replace(path)


async def _until(
    probe: Callable[[], Awaitable[T | None]], *, timeout: float, what: str, watch: list[Component]
) -> T:
    """Poll ``probe``; fail early with the log of any component that died meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        for c in watch:
            if not c.running:
                raise c.failure(f"exited while waiting for {what}")
        with contextlib.suppress(aiohttp.ClientError, OSError, ApiError, TimeoutError):
            got = await probe()
            if got:
                return got
        if time.monotonic() > deadline:
            raise ProcessFailed(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.2)


class RealCluster:
    """``async with RealCluster(port, kubeconfig, nodes=K) as c``: a ready cluster; stops on exit."""

    def __init__(
        self,
        port: int = 0,
        kubeconfig: str | os.PathLike[str] | None = None,
        *,
        nodes: int = 2,
        data_dir: Path | None = None,
        binaries: KubeBinaries | None = None,
        keep_data: bool = False,
        gateway_api: bool = True,
    ) -> None:
        self.port = port or free_port()
        self.nodes = nodes
        self.binaries = binaries or find_binaries()
        self._own_dir = data_dir is None
        self.dir = data_dir or Path(tempfile.mkdtemp(prefix="choreo-dp-cluster-"))
        self.kubeconfig_path = Path(kubeconfig) if kubeconfig else self.dir / "admin.kubeconfig"
        self.keep_data = keep_data
        # The emulated API serves gateway.networking.k8s.io built in; a real cluster serves it
        # once the CRDs are applied, so by default both offer the operator the same choice.
        self.gateway_api = gateway_api
        self.components: list[Component] = []
        self.pki: ClusterPki | None = None
        self.kwok_port = 0

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def __aenter__(self) -> RealCluster:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    # ----- start --------------------------------------------------------------------------
    def _component(self, name: str, argv: list[str]) -> Component:
        c = Component(name, argv, self.dir / "logs" / f"{name}.log")
        self.components.append(c)
        return c

    async def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        pki = self.pki = await asyncio.to_thread(create_pki, self.dir / "pki")
        b = self.binaries
        etcd_port, peer_port = free_port(), free_port()
        self.kwok_port = free_port()

        etcd = self._component(
            "etcd",
            [
                b.path("etcd"),
                "--name=node0",
                f"--data-dir={self.dir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=node0=http://127.0.0.1:{peer_port}",
                "--auto-compaction-retention=1",
                "--quota-backend-bytes=8589934592",
                # A throwaway test store: durability is not the point, speed is.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        await etcd.start()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as http:

            async def etcd_healthy() -> bool:
                async with http.get(f"http://127.0.0.1:{etcd_port}/health") as r:
                    return r.status == 200 and (await r.json(content_type=None)).get("health") == "true"

            await _until(etcd_healthy, timeout=START_TIMEOUT, what="etcd /health", watch=[etcd])

        apiserver = self._component(
            "kube-apiserver",
            [
                b.path("kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}",
                f"--tls-cert-file={pki.serving.cert}",
                f"--tls-private-key-file={pki.serving.key}",
                f"--client-ca-file={pki.ca.cert}",
                f"--service-account-key-file={pki.service_account_pub}",
                f"--service-account-signing-key-file={pki.service_account_key}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                "--allow-privileged=true",
                f"--kubelet-client-certificate={pki.admin.cert}",
                f"--kubelet-client-key={pki.admin.key}",
                f"--proxy-client-cert-file={pki.admin.cert}",
                f"--proxy-client-key-file={pki.admin.key}",
                "--profiling=false",
                "--v=1",
            ],
        )
        await apiserver.start()
        ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
        ctx.load_cert_chain(str(pki.admin.cert), str(pki.admin.key))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:

            async def readyz() -> bool:
                async with http.get(f"{self.url}/readyz", ssl=ctx) as r:
                    return r.status == 200

            await _until(
                readyz, timeout=START_TIMEOUT, what="kube-apiserver /readyz", watch=[etcd, apiserver]
            )

        server = self.url
        kcm_cfg = self.dir / "controller-manager.kubeconfig"
        sched_cfg = self.dir / "scheduler.kubeconfig"
        admin_cfg = self.dir / "admin-files.kubeconfig"
        for path, pair, user in (
            (kcm_cfg, pki.controller_manager, "system:kube-controller-manager"),
            (sched_cfg, pki.scheduler, "system:kube-scheduler"),
            (admin_cfg, pki.admin, "admin"),
        ):
            _write_private(path, _kubeconfig(server, pki.ca.cert, pair, user))
        _write_private(self.kubeconfig_path, _kubeconfig(server, pki.ca.cert, pki.admin, "admin", embed=True))

        kcm = self._component(
            "kube-controller-manager",
            [
                b.path("kube-controller-manager"),
                f"--kubeconfig={kcm_cfg}",
                f"--authentication-kubeconfig={kcm_cfg}",
                f"--authorization-kubeconfig={kcm_cfg}",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki.service_account_key}",
                f"--root-ca-file={pki.ca.cert}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--controllers=*",
                # Job pods finish in milliseconds under kwok; the default sync periods would
                # make CronJob tests wait for nothing.
                "--concurrent-deployment-syncs=10",
                # The default 15 s HPA resync makes every autoscaler change wait up to 15 s; the
                # controller's decisions are the same at any period.
                "--horizontal-pod-autoscaler-sync-period=2s",
                "--kube-api-qps=200",
                "--kube-api-burst=400",
                "--v=1",
            ],
        )
        scheduler = self._component(
            "kube-scheduler",
            [
                b.path("kube-scheduler"),
                f"--kubeconfig={sched_cfg}",
                f"--authentication-kubeconfig={sched_cfg}",
                f"--authorization-kubeconfig={sched_cfg}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--leader-elect=false",
                "--kube-api-qps=200",
                "--kube-api-burst=400",
                "--v=1",
            ],
        )
        await kcm.start()
        await scheduler.start()

        kube = await KubeClient.from_kubeconfig(str(admin_cfg))
        try:
            await self._install_kwok_resources(kube)
            if self.gateway_api:
                await self._install_gateway_api(kube)
            kwok = self._component(
                "kwok",
                [
                    b.path("kwok"),
                    f"--kubeconfig={admin_cfg}",
                    "--manage-all-nodes=false",
                    f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
                    "--node-ip=127.0.0.1",
                    f"--node-port={self.kwok_port}",
                    f"--server-address=127.0.0.1:{self.kwok_port}",
                    f"--tls-cert-file={pki.serving.cert}",
                    f"--tls-private-key-file={pki.serving.key}",
                    "--node-lease-duration-seconds=40",
                    "--cidr=10.244.0.0/16",
                    "--enable-crds=Stage,Logs,ClusterLogs",
                    "--v=WARN",
                ],
            )
            await kwok.start()
            watch = list(self.components)
            await self._create_nodes(kube)

            async def nodes_ready() -> bool:
                items, _ = await kube.list(NODES)
                ready = [
                    n
                    for n in items
                    if any(
                        c.get("type") == "Ready" and c.get("status") == "True"
                        for c in (n.get("status") or {}).get("conditions") or []
                    )
                ]
                return len(ready) >= self.nodes

            await _until(
                nodes_ready, timeout=START_TIMEOUT, what=f"{self.nodes} kwok nodes Ready", watch=watch
            )

            async def default_sa() -> bool:
                return await kube.get(R.SERVICEACCOUNTS, "default", "default") is not None

            # Pods cannot be created in a namespace before its default ServiceAccount exists.
            await _until(default_sa, timeout=START_TIMEOUT, what="the default ServiceAccount", watch=watch)
        finally:
            await kube.close()

    async def _install_kwok_resources(self, kube: KubeClient) -> None:
        for path in sorted(self.binaries.kwok_crds.glob("*.yaml")):
            await apply(kube, R.CRDS, yaml.safe_load(path.read_text()))

        async def served() -> bool:
            await kube.list(STAGES)
            return True

        await _until(served, timeout=60, what="kwok CRDs to be served", watch=self.components)
        for path in sorted(self.binaries.kwok_stages.glob("*.yaml")):
            await apply(kube, STAGES, kubelet_like(yaml.safe_load(path.read_text())))

    async def _install_gateway_api(self, kube: KubeClient) -> None:
        directory = self.binaries.gateway_api_crds
        for path in sorted(directory.glob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if doc and doc.get("kind") == "CustomResourceDefinition":
                    await apply(kube, R.CRDS, doc)

        async def served() -> bool:
            await kube.request("GET", "/apis/gateway.networking.k8s.io/v1/httproutes")
            await kube.request("GET", "/apis/gateway.networking.k8s.io/v1/gateways")
            return True

        await _until(served, timeout=60, what="Gateway API CRDs to be served", watch=self.components)

    async def _create_nodes(self, kube: KubeClient) -> None:
        for i in range(self.nodes):
            name = f"kwok-node-{i}"
            node = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
                    "labels": {
                        "kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                        "type": "kwok",
                    },
                },
            }
            await apply(kube, NODES, node)

    # ----- supervise and stop -------------------------------------------------------------
    def first_exited(self) -> Component | None:
        return next((c for c in self.components if not c.running), None)

    async def stop(self) -> None:
        # Reverse order: nodes and controllers first, the store last, so nothing logs a
        # storm of connection errors against an etcd that is already gone.
        for c in reversed(self.components):
            try:
                await c.stop()
            except Exception:  # one stuck child must not keep the others running
                log.exception("stopping %s", c.name)
        self.components.clear()
        if self._own_dir and not self.keep_data:
            await asyncio.to_thread(shutil.rmtree, self.dir, True)


# A kubelet reports the digest the runtime resolved (``imageID``); kwok reports none.  A digest
# derived from the reference keeps "what runs" answerable, stable per image, and a pinned
# reference (already ``@sha256:``) is reported as itself.
_IMAGE_ID = (
    '  imageID: {{ if contains "@" .image }}{{ .image | Quote }}{{ else }}'
    '{{ printf "%s@sha256:%s" (regexReplaceAll ":[^:/]*$" .image "") (sha256sum .image) | Quote }}{{ end }}\n'
)
_CONTAINER_LINE = "- image: {{ .image | Quote }}\n"


def kubelet_like(stage: dict[str, Any]) -> dict[str, Any]:
    """kwok's default Stages, amended where a kubelet behaves differently.

    ``pod-ready`` would turn a pod stuck pulling its image Ready on the next event; a kubelet
    keeps it waiting until the pull succeeds, so the rule must not fire on it.  It also reports
    an ``imageID`` for every running container, as a kubelet does.
    """
    if stage["metadata"]["name"] == "pod-ready":
        nxt = stage["spec"]["next"]
        nxt["statusTemplate"] = nxt["statusTemplate"].replace(_CONTAINER_LINE, _CONTAINER_LINE + _IMAGE_ID)
        stage["spec"]["selector"]["matchExpressions"].append(
            {
                "key": ".status.containerStatuses.[].state.waiting.reason",
                "operator": "NotIn",
                "values": ["ImagePullBackOff", "ErrImagePull"],
            }
        )
    return stage


async def apply(kube: KubeClient, res: Resource, body: dict[str, Any]) -> dict[str, Any]:
    """Server-side apply of an object whose kind the product's client does not know (kwok's)."""
    meta = body["metadata"]
    result: dict[str, Any] = await kube.request(
        "PATCH",
        res.path(meta.get("namespace"), meta["name"]),
        params={"fieldManager": FIELD_MANAGER, "force": "true"},
        body=body,
        content_type="application/apply-patch+yaml",
    )
    return result


async def serve_forever(port: int, kubeconfig: str | os.PathLike[str], nodes: int) -> int:
    """The ``choreo-dp sandbox cluster`` main loop: serve until SIGINT/SIGTERM, exit 0."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    cluster = RealCluster(port, kubeconfig, nodes=nodes)
    start = asyncio.create_task(cluster.start())
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({start, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not start.done():  # stopped while starting
            start.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await start
            return 0
        start.result()
        sys.stdout.write(f"listening on {cluster.url}\n")
        sys.stdout.flush()
        while not stop.is_set():
            dead = cluster.first_exited()
            if dead is not None:
                sys.stderr.write(f"choreo-dp: {dead.failure('stopped unexpectedly')}\n")
                return 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
        return 0
    finally:
        stopper.cancel()
        await cluster.stop()
