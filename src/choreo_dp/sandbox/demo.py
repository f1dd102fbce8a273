"""``choreo-dp sandbox``: the whole data plane on one machine, driven like a customer would.

Every part runs as its own process with its log in ``DIR/<part>.log``: the emulated API (with the
workload simulator), the reference control plane over TLS (its CA generated in DIR), the operator
and the agent. The demo then goes through the control plane's REST API only, exactly as a
platform would, and waits for the cluster to report the app Ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from choreo_dp.api.crdgen import all_crds
from choreo_dp.kube import ApiError, KubeClient
from choreo_dp.kube import resources as R
from choreo_dp.sandbox.children import Children, StepFailed, free_port
from choreo_dp.sandbox.tls import ensure_tls

DATAPLANE = "sandbox"
ENVIRONMENT = "dev"
APP = "hello"
ENV_SPEC: dict[str, Any] = {
    "displayName": "Development (sandbox)",
    "registry": {"allowedPrefixes": ["ghcr.io/acme/"]},
    "gateways": {
        "internal": {
            "gatewayName": "internal",
            "gatewayNamespace": "choreo-gateways",
            "hostname": "internal.dev.sandbox.local",
        },
        "external": {
            "gatewayName": "external",
            "gatewayNamespace": "choreo-gateways",
            "hostname": "dev.sandbox.local",
        },
    },
    "quota": {"cpu": "4", "memory": "8Gi", "pods": 40},
}
APP_SPEC: dict[str, Any] = {
    "environment": ENVIRONMENT,
    "project": "demo",
    "type": "service",
    "image": "ghcr.io/acme/hello:1.0.0",
    "replicas": 2,
    "env": [{"name": "GREETING", "value": "hello from choreo-dp"}],
    "endpoints": [
        {"name": "http", "port": 8080, "protocol": "REST", "visibility": "Public", "basePath": "/hello"}
    ],
    "probes": {"readiness": {"httpGet": {"path": "/healthz", "port": 8080}}},
}


@dataclass
class Sandbox:
    directory: Path
    say: Callable[[str], None] = print
    ready_timeout: float = 90.0
    children: Children = field(init=False)
    api_url: str = ""
    cp_url: str = ""
    kube: KubeClient | None = None

    def __post_init__(self) -> None:
        self.directory = self.directory.resolve()
        self.children = Children(self.directory)

    @property
    def kubeconfig(self) -> Path:
        return self.directory / "kubeconfig"

    @property
    def admin_token_file(self) -> Path:
        return self.directory / "admin-token"

    @property
    def dataplane_token_file(self) -> Path:
        return self.directory / "dataplane-token"

    # --- steps ------------------------------------------------------------------------------

    async def start(self) -> float:
        """Bring everything up and deploy the demo app; returns seconds until it was Ready."""
        self.directory.mkdir(parents=True, exist_ok=True)
        leftovers = await self.children.stop_leftovers()
        if leftovers:
            self.say(f"stopped {len(leftovers)} process(es) left over by a previous run in {self.directory}")
        await self._start_apiserver()
        await self._start_control_plane()
        token = await self._register_dataplane()
        self.dataplane_token_file.write_text(token + "\n")
        self.dataplane_token_file.chmod(0o600)
        await self._start_operator()
        await self._start_agent()
        return await self._deploy_demo()

    async def _start_apiserver(self) -> None:
        step = "emulated Kubernetes API"
        self.kubeconfig.unlink(missing_ok=True)
        await self.children.start(
            "apiserver",
            [
                "sandbox",
                "apiserver",
                "--port",
                "0",
                "--kubeconfig",
                str(self.kubeconfig),
                "--simulate-workloads",
            ],
        )
        match = await self.children.wait_for_log("apiserver", r"listening on (http://\S+)", 30, step)
        self.api_url = match.group(1)
        self.kube = await KubeClient.from_kubeconfig(self.kubeconfig)
        for crd in all_crds().values():
            await self.kube.apply(crd, "choreo-dp-sandbox")
        for ns in ("choreo-system", "choreo-gateways"):
            await self.kube.apply(
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}, "choreo-dp-sandbox"
            )
        self.say(f"started Kubernetes API on {self.api_url} (kubeconfig {self.kubeconfig})")

    async def _start_control_plane(self) -> None:
        step = "control plane"
        tls = ensure_tls(self.directory)
        if not self.admin_token_file.exists():
            self.admin_token_file.write_text(secrets.token_urlsafe(32) + "\n")
            self.admin_token_file.chmod(0o600)
        port = free_port()
        await self.children.start(
            "control-plane",
            [
                "control-plane", "serve",
                "--listen", f"127.0.0.1:{port}",
                "--db", str(self.directory / "choreo-cp.db"),
                "--tls-cert", str(tls.server_cert),
                "--tls-key", str(tls.server_key),
                "--admin-token-file", str(self.admin_token_file),
            ],
        )  # fmt: skip
        self.cp_url = f"https://127.0.0.1:{port}"
        await self._wait_http(f"{self.cp_url}/healthz", "control-plane", step)
        self.say(f"started control plane on {self.cp_url} (CA {tls.ca_cert})")

    async def _start_operator(self) -> None:
        step = "operator"
        health = free_port()
        await self.children.start(
            "operator",
            [
                "operator", "--kubeconfig", str(self.kubeconfig),
                "--health-port", str(health), "--metrics-port", str(free_port()),
            ],
            env={"CHOREO_DP_OPERATOR_NAMESPACE": "choreo-system"},
        )  # fmt: skip
        await self._wait_http(f"http://127.0.0.1:{health}/healthz", "operator", step)
        self.say(f"started operator (health http://127.0.0.1:{health}/healthz)")

    def agent_argv(self) -> list[str]:
        """Flags shared by ``choreo-dp agent`` and ``choreo-dp run``."""
        port = int(self.cp_url.rsplit(":", 1)[1])
        return [
            "--control-plane", f"wss://127.0.0.1:{port}",
            "--dataplane", DATAPLANE,
            "--token-file", str(self.dataplane_token_file),
            "--ca-file", str(self.directory / "ca.pem"),
            "--kubeconfig", str(self.kubeconfig),
            "--health-port", str(free_port()), "--metrics-port", str(free_port()),
        ]  # fmt: skip

    async def _start_agent(self) -> None:
        await self.children.start("agent", ["agent", *self.agent_argv()])
        await self.wait_connected("agent")

    async def wait_connected(self, child: str) -> None:
        async def connected() -> bool:
            assert self.kube is not None
            dp = await self.kube.get(R.DATAPLANES, DATAPLANE)
            return bool(dp and dp.get("status", {}).get("connected"))

        await self._poll(connected, 30, child, "agent")
        self.say(f"agent connected to {self.cp_url.replace('https', 'wss')} as dataplane {DATAPLANE!r}")

    async def _deploy_demo(self) -> float:
        step = "demo deployment"
        started = time.monotonic()
        await self._cp(
            "PUT", f"/api/v1/dataplanes/{DATAPLANE}/environments/{ENVIRONMENT}", {"spec": ENV_SPEC}
        )
        await self._cp(
            "PUT", f"/api/v1/dataplanes/{DATAPLANE}/environments/{ENVIRONMENT}/apps/{APP}", {"spec": APP_SPEC}
        )
        self.say(
            f"pushed Environment {ENVIRONMENT!r} and ChoreoApp {APP!r} through the control plane's REST API"
        )

        async def ready_in_cluster() -> bool:
            assert self.kube is not None
            app = await self.kube.get(R.CHOREOAPPS, APP, f"choreo-{ENVIRONMENT}")
            return bool(app and app.get("status", {}).get("phase") == "Ready")

        await self._poll(ready_in_cluster, self.ready_timeout, "operator", step)
        elapsed = time.monotonic() - started

        async def ready_upstream() -> bool:
            body = await self._cp(
                "GET", f"/api/v1/dataplanes/{DATAPLANE}/environments/{ENVIRONMENT}/apps/{APP}"
            )
            return bool((body.get("status") or {}).get("phase") == "Ready")

        await self._poll(ready_upstream, 15, "agent", "status report to the control plane")
        self.say(f"app {APP!r} Ready in {elapsed:.1f} s (and reported Ready to the control plane)")
        return elapsed

    # --- helpers ----------------------------------------------------------------------------

    def _ssl(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.directory / "ca.pem"))

    async def _cp(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        token = self.admin_token_file.read_text().strip()
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session,
            session.request(
                method,
                self.cp_url + path,
                json=body,
                headers={"Authorization": f"Bearer {token}"},
                ssl=self._ssl(),
            ) as resp,
        ):
            payload: dict[str, Any] = await resp.json(content_type=None)
            if resp.status >= 400:
                raise StepFailed(
                    "control plane request",
                    f"{method} {path} -> {resp.status} {payload}",
                    self.children.log_path("control-plane"),
                )
            return payload

    async def _register_dataplane(self) -> str:
        body = await self._cp("PUT", f"/api/v1/dataplanes/{DATAPLANE}?rotateToken=true", {})
        token = body.get("token")
        if not isinstance(token, str) or not token:
            raise StepFailed("dataplane registration", f"no token in response {sorted(body)}")
        self.say(f"registered dataplane {DATAPLANE!r} (token in {self.dataplane_token_file})")
        return token

    async def _wait_http(self, url: str, child: str, step: str, timeout: float = 30) -> None:
        ssl_ctx: ssl.SSLContext | bool = self._ssl() if url.startswith("https") else False

        async def up() -> bool:
            try:
                async with (
                    aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session,
                    session.get(url, ssl=ssl_ctx) as resp,
                ):
                    return resp.status == 200
            except (aiohttp.ClientError, TimeoutError, OSError):
                return False

        await self._poll(up, timeout, child, step)

    async def _poll(self, check: Callable[[], Any], timeout: float, child: str, step: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last_error = ""
        while loop.time() < deadline:
            for name in self.children.pids:
                self.children.check_alive(name, step)
            try:
                if await check():
                    return
            except ApiError as exc:
                last_error = str(exc)
            await asyncio.sleep(0.2)
        detail = f"not done after {timeout:.0f}s" + (f" (last error: {last_error})" if last_error else "")
        raise StepFailed(step, detail, self.children.log_path(child))

    async def kubectl_table(self) -> str:
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            return "(kubectl is not installed; skipping the table)"
        proc = await asyncio.create_subprocess_exec(
            kubectl, "--kubeconfig", str(self.kubeconfig), "get", "choreoapps", "-A",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        return out.decode(errors="replace").rstrip()

    def next_steps(self) -> str:
        d = self.directory
        return "\n".join(
            [
                "",
                "Next:",
                f"  export KUBECONFIG={self.kubeconfig}",
                "  kubectl get choreoapps -A -w",
                "  kubectl get environments,dataplanes",
                f"  export CHOREO_DP_CP_URL={self.cp_url} CHOREO_DP_CP_TOKEN=$(cat {self.admin_token_file})",
                f"  choreo-dp cp apply -f examples/rest-api.yaml --dataplane {DATAPLANE} --ca-file {d / 'ca.pem'}",
                f"  choreo-dp cp get app {APP} --dataplane {DATAPLANE} --environment {ENVIRONMENT} --ca-file {d / 'ca.pem'}",
                f"Control plane {self.cp_url} (admin token {self.admin_token_file}, dataplane token {self.dataplane_token_file})",
                f"Logs: {d}/*.log",
            ]
        )

    async def stop(self) -> None:
        if self.kube is not None:
            await self.kube.close()
            self.kube = None
        await self.children.stop_all()


async def run_sandbox(directory: Path, once: bool) -> int:
    sandbox = Sandbox(directory)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    main = asyncio.create_task(sandbox.start())
    stopper = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait({main, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if main not in done:
            main.cancel()
            with contextlib.suppress(asyncio.CancelledError, StepFailed):
                await main
            print("interrupted; stopping")
            return 0
        try:
            main.result()
        except StepFailed as exc:
            print(f"sandbox: {exc}")
            return 1
        print()
        print(await sandbox.kubectl_table())
        print(sandbox.next_steps())
        if once:
            return 0
        print("\nRunning; Ctrl-C stops everything.", flush=True)
        await stop.wait()
        return 0
    finally:
        stopper.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await sandbox.stop()
        if os.environ.get("CHOREO_DP_SANDBOX_QUIET") is None:
            print("stopped everything the sandbox started")
