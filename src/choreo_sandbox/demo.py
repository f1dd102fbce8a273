"""``choreo-dp sandbox``: the whole data plane on one machine, driven like a customer would.

Every part runs as its own process with its log in ``DIR/<part>.log``: the Kubernetes API, the
reference control plane over TLS (its CA generated in DIR), the operator and the agent. The
Kubernetes API is, with ``--kube emulated`` (the default), the emulated API with its workload
simulator (``sandbox apiserver``); with ``--kube real``, a real control plane with kwok nodes
(``sandbox cluster``: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, from the
binaries ``tools/kube/build.py`` caches), whose data directory lives in ``DIR/cluster.tmp`` while
it runs. A local Key Vault (``sandbox keyvault serve``: TLS, the secrets REST surface and an Entra
ID token endpoint for workload identity) holds a few demo secrets, and the operator is configured
to read it as AKS workload identity would let it. The demo then goes through the control plane's
REST API only, exactly as a platform would, and waits for the cluster to report the app Ready.
Once up, the sandbox supervises its parts: one that dies is reported with the end of its log and
started again, with backoff if it keeps dying.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from choreo_dp.api.crdgen import all_crds
from choreo_dp.kube import ApiError, KubeClient
from choreo_dp.kube import resources as R
from choreo_sandbox.children import Children, DirInUse, DirLock, StepFailed, free_port
from choreo_sandbox.cluster import BinariesMissing, KubeBinaries, find_binaries
from choreo_sandbox.keyvault import service as keyvault
from choreo_sandbox.tls import ensure_tls

T = TypeVar("T")
KUBE_MODES = ("emulated", "real")
CLUSTER_NODES = 2
# ``sandbox cluster`` gives each of its stages (etcd, apiserver, nodes) up to 120 s on its own.
CLUSTER_START_TIMEOUT = 300.0
CLUSTER_STOP_TIMEOUT = 90.0  # it stops five processes in turn, each given 10 s before SIGKILL
FIELD_MANAGER = "choreo-dp-sandbox"
EXIT_DIR_IN_USE = 2  # the CLI's exit code for bad flags or configuration
TABLE_ACCEPT = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
# A part that dies again this soon after it was restarted waits before its next restart.
RESTART_WINDOW = 30.0
RESTART_BACKOFF_CAP = 30.0
LOG_TAIL_LINES = 5
REPO_EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

DATAPLANE = "sandbox"
ENVIRONMENT = "dev"
APP = "hello"
# Both ways to expose an endpoint are named: a cluster that serves the Gateway API gets HTTPRoutes
# to these Gateways, one that does not (a real cluster without the Gateway API CRDs) Ingresses of
# this class; the operator discovers which. Either way the app's URL is the same.
ENV_SPEC: dict[str, Any] = {
    "displayName": "Development (sandbox)",
    "registry": {"allowedPrefixes": ["ghcr.io/acme/"]},
    "gateways": {
        "internal": {
            "gatewayName": "internal",
            "gatewayNamespace": "choreo-gateways",
            "hostname": "internal.dev.sandbox.local",
            "ingressClassName": "nginx",
        },
        "external": {
            "gatewayName": "external",
            "gatewayNamespace": "choreo-gateways",
            "hostname": "dev.sandbox.local",
            "ingressClassName": "nginx",
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


def built_binaries() -> KubeBinaries | None:
    """The binaries ``tools/kube/build.py`` cached, if this machine built them."""
    try:
        return find_binaries()
    except BinariesMissing:
        return None


def _gateway_api_dir(binaries: KubeBinaries) -> Path | None:
    """The Gateway API standard-channel manifests cached beside the binaries, if built."""
    directory = getattr(binaries, "gateway_api_crds", None)
    if isinstance(directory, Path) and any(directory.glob("*.yaml")):
        return directory
    return None


@dataclass
class Sandbox:
    directory: Path
    say: Callable[[str], None] = print
    ready_timeout: float = 90.0
    kube_mode: str = "emulated"
    children: Children = field(init=False)
    api_url: str = ""
    cp_url: str = ""
    kube: KubeClient | None = None
    vault_port: int = 0
    entra_port: int = 0
    _lock: DirLock = field(init=False)
    _restarts: dict[str, tuple[int, float]] = field(init=False, default_factory=dict)
    _restart_counts: dict[str, int] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        if self.kube_mode not in KUBE_MODES:
            raise ValueError(f"kube_mode must be one of {KUBE_MODES}, not {self.kube_mode!r}")
        self.directory = self.directory.resolve()
        self.children = Children(self.directory)
        self._lock = DirLock(self.directory)

    @property
    def real(self) -> bool:
        return self.kube_mode == "real"

    @property
    def api_child(self) -> str:
        """The child serving the Kubernetes API."""
        return "cluster" if self.real else "apiserver"

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
        """Bring everything up and deploy the demo app; returns seconds until it was Ready.

        ``DirInUse`` when another sandbox runs in the directory (nothing is touched then)."""
        self._lock.acquire()
        reused = self._reused()
        leftovers = await self.children.stop_leftovers()
        if leftovers:
            self.say(f"stopped {len(leftovers)} process(es) left over by a previous run in {self.directory}")
        if reused:
            self.say(f"reusing {self.directory} from an earlier run: {', '.join(reused)}")
        if self.real:
            await self._start_real_cluster()
        else:
            await self._start_apiserver()
        await self._prepare_cluster()
        await self._start_control_plane()
        await self._say_replayed()
        token = await self._register_dataplane()
        self.dataplane_token_file.write_text(token + "\n")
        self.dataplane_token_file.chmod(0o600)
        await self._start_keyvault()
        await self._start_operator()
        await self._start_agent()
        return await self._deploy_demo()

    def _reused(self) -> list[str]:
        """What an earlier run left in the directory that this one keeps using."""
        found = []
        if (self.directory / "choreo-cp.db").exists():
            found.append("the control plane's database (choreo-cp.db)")
        if (self.directory / "ca.pem").exists():
            found.append("the CA and TLS certificate (ca.pem, server.pem; new ones if expiring)")
        if self.admin_token_file.exists():
            found.append(f"the admin token ({self.admin_token_file.name})")
        if keyvault.KeyVaultFiles(self.directory).state.exists():
            found.append("the Key Vault's secrets and their versions (keyvault.json)")
        return found

    async def _say_replayed(self) -> None:
        """A control plane store from an earlier run holds apps: say they go to the new cluster."""
        try:
            envs = (await self._cp("GET", f"/api/v1/dataplanes/{DATAPLANE}/environments")).get("items") or []
        except StepFailed:
            return  # no such dataplane yet: a fresh store
        apps = []
        for env in envs:
            name = (env.get("metadata") or {}).get("name") or env.get("name")
            if not isinstance(name, str):
                continue
            listed = await self._cp("GET", f"/api/v1/dataplanes/{DATAPLANE}/environments/{name}/apps")
            apps += [
                f"{name}/{(a.get('metadata') or {}).get('name') or a.get('name')}"
                for a in listed.get("items") or []
            ]
        if envs:
            self.say(
                f"the control plane's store from the earlier run holds {len(envs)} environment(s) and "
                f"{len(apps)} app(s) for dataplane {DATAPLANE!r} ({', '.join(apps) or 'no apps'}); "
                "the agent applies them to the new, empty Kubernetes API"
            )

    async def _start_apiserver(self) -> None:
        step = "emulated Kubernetes API"
        self.kubeconfig.unlink(missing_ok=True)
        # A fixed port, so a restarted API is where the kubeconfig says.
        await self.children.start(
            "apiserver",
            [
                "sandbox", "apiserver", "--port", str(free_port()),
                "--kubeconfig", str(self.kubeconfig), "--simulate-workloads",
            ],
        )  # fmt: skip
        await self._wait_api(step, 30)
        self.say(f"started Kubernetes API on {self.api_url} (kubeconfig {self.kubeconfig})")

    async def _start_real_cluster(self) -> None:
        step = "real Kubernetes cluster"
        try:
            find_binaries()
        except BinariesMissing as exc:
            raise StepFailed(step, str(exc)) from None
        self.kubeconfig.unlink(missing_ok=True)
        # ``sandbox cluster`` keeps its data in a temporary directory it removes when stopped;
        # its TMPDIR is DIR/cluster.tmp so that directory is the sandbox's, and whatever a hard
        # kill leaves there is found and removed (see Children).
        await self.children.start(
            "cluster",
            [
                "sandbox", "cluster", "--port", str(free_port()),
                "--kubeconfig", str(self.kubeconfig), "--nodes", str(CLUSTER_NODES),
            ],
            stop_timeout=CLUSTER_STOP_TIMEOUT,
            scratch=True,
        )  # fmt: skip
        await self._wait_api(step, CLUSTER_START_TIMEOUT)
        self.say(
            f"started Kubernetes API on {self.api_url}: a real cluster (etcd, kube-apiserver, "
            f"kube-controller-manager, kube-scheduler, {CLUSTER_NODES} kwok nodes; "
            f"kubeconfig {self.kubeconfig})"
        )

    async def _wait_api(self, step: str, timeout: float) -> None:
        match = await self.children.wait_for_log(
            self.api_child, r"listening on (https?://\S+)", timeout, step
        )
        self.api_url = match.group(1)
        if self.kube is not None:
            await self.kube.close()
        self.kube = await KubeClient.from_kubeconfig(self.kubeconfig)

    async def _prepare_cluster(self) -> None:
        """Install the CRDs (and, on a real cluster, the Gateway API when built) and namespaces."""
        step = "CRD installation"
        assert self.kube is not None
        for crd in all_crds().values():
            await self.kube.apply(crd, FIELD_MANAGER)
        for ns in ("choreo-system", "choreo-gateways"):
            await self.kube.apply(
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}, FIELD_MANAGER
            )

        async def served() -> bool:
            assert self.kube is not None
            for res in (R.ENVIRONMENTS, R.CHOREOAPPS, R.DATAPLANES):
                try:
                    await self.kube.list(res)
                except ApiError as exc:
                    if exc.status == 404:
                        return False
                    raise
            return True

        # A real apiserver serves a new CRD a moment after accepting it; the operator and the
        # agent must not start before.
        await self._poll(served, 60, self.api_child, step, watch=(self.api_child,))
        if self.real:
            await self._install_gateway_api()

    async def _install_gateway_api(self) -> None:
        """The Gateway API CRDs ``tools/kube/build.py`` cached, as ``kubectl apply`` installs them.

        Without them the operator exposes apps through Ingress (it discovers which is served)."""
        binaries = built_binaries()
        manifests = _gateway_api_dir(binaries) if binaries is not None else None
        if binaries is None or manifests is None:
            self.say("no Gateway API CRDs are cached: the operator exposes apps through Ingress")
            return
        step = "Gateway API installation"
        out = await self._kubectl(
            binaries.path("kubectl"), "apply", "--server-side", "--force-conflicts",
            f"--field-manager={FIELD_MANAGER}", "-f", str(manifests),
        )  # fmt: skip
        if out.returncode != 0:
            raise StepFailed(step, f"kubectl apply -f {manifests}: {out.text.strip()[-500:]}")

        async def served() -> bool:
            assert self.kube is not None
            try:
                body = await self.kube.request("GET", "/apis/gateway.networking.k8s.io/v1")
            except ApiError as exc:
                if exc.status == 404:
                    return False
                raise
            return any(r.get("name") == "httproutes" for r in body.get("resources") or [])

        await self._poll(served, 60, self.api_child, step, watch=(self.api_child,))
        self.say(f"installed the Gateway API CRDs from {manifests}")

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

    async def _start_keyvault(self) -> None:
        step = "Key Vault"
        # Fixed ports, so a restarted vault is where the operator's environment says.
        self.vault_port, self.entra_port = free_port(), free_port()
        await self.children.start(
            "keyvault",
            [
                "sandbox", "keyvault", "serve", "--dir", str(self.directory),
                "--vault-port", str(self.vault_port), "--entra-port", str(self.entra_port),
            ],
        )  # fmt: skip
        await self.children.wait_for_log("keyvault", r"listening on (https://\S+)", 30, step)
        self.say(
            f"started Key Vault {keyvault.VAULT!r} on {keyvault.vault_url(self.vault_port)} with "
            f"{len(keyvault.DEMO_SECRETS)} demo secrets (Entra ID token endpoint "
            f"{keyvault.authority(self.entra_port)})"
        )

    def operator_env(self) -> dict[str, str]:
        env = {"CHOREO_DP_OPERATOR_NAMESPACE": "choreo-system"}
        if self.vault_port:
            env |= keyvault.operator_env(self.directory, self.vault_port, self.entra_port)
        return env

    async def _start_operator(self) -> None:
        step = "operator"
        health = free_port()
        await self.children.start(
            "operator",
            [
                "operator", "--kubeconfig", str(self.kubeconfig),
                "--health-port", str(health), "--metrics-port", str(free_port()),
            ],
            env=self.operator_env(),
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

    async def _poll(
        self,
        check: Callable[[], Any],
        timeout: float,
        child: str,
        step: str,
        watch: tuple[str, ...] | None = None,
    ) -> None:
        """Poll ``check`` until true; fail naming ``child``'s log, or any of ``watch`` (default:
        every part) that exits meanwhile."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last_error = ""
        while loop.time() < deadline:
            for name in self.children.pids if watch is None else watch:
                self.children.check_alive(name, step)
            try:
                if await check():
                    return
            except ApiError as exc:
                last_error = str(exc)
            await asyncio.sleep(0.2)
        detail = f"not done after {timeout:.0f}s" + (f" (last error: {last_error})" if last_error else "")
        raise StepFailed(step, detail, self.children.log_path(child))

    def kubectl_binary(self) -> str | None:
        """The kubectl built from k8s.io/kubernetes by ``tools/kube/build.py``, if cached."""
        binaries = built_binaries()
        return binaries.path("kubectl") if binaries is not None else None

    async def _kubectl(self, kubectl: str, *args: str) -> _Output:
        # A discovery cache of the sandbox's own: a cluster started anew on a port an earlier one
        # used must not be described by that one's cached discovery.
        proc = await asyncio.create_subprocess_exec(
            kubectl, "--kubeconfig", str(self.kubeconfig),
            "--cache-dir", str(self.directory / "kubectl-cache"), *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return _Output(-1, "kubectl timed out after 60 s")
        return _Output(proc.returncode or 0, out.decode(errors="replace"))

    async def kubectl_table(self) -> str:
        """``kubectl get choreoapps -A`` as the kubectl built here prints it; without one (a
        machine that never built the binaries), the same table rendered from the server's
        ``Table`` response as kubectl renders it. A system kubectl is never used."""
        kubectl = self.kubectl_binary()
        if kubectl is None:
            return await self.server_table()
        return (await self._kubectl(kubectl, "get", "choreoapps", "-A")).text.rstrip()

    async def server_table(self) -> str:
        """``kubectl get choreoapps -A`` without kubectl: the apiserver's ``meta.k8s.io/v1 Table``
        (server-side printing from the CRD's printer columns), laid out like kubectl does."""
        assert self.kube is not None
        cfg = self.kube.config
        headers = {"Accept": TABLE_ACCEPT}
        token = cfg.current_token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        url = cfg.server + R.CHOREOAPPS.path(None)
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
            session.get(
                url, params={"includeObject": "Metadata"}, headers=headers, ssl=cfg.ssl_context()
            ) as resp,
        ):
            table: dict[str, Any] = await resp.json(content_type=None)
            if resp.status >= 400:
                return f"(could not list choreoapps: {resp.status} {table.get('message', '')})"
        return render_table(table, with_namespace=True)

    def choreo_dp(self) -> str:
        """``choreo-dp`` as a command that works without the venv activated (its absolute path)."""
        script = Path(sys.executable).parent / "choreo-dp"
        return str(script) if script.exists() else f"{sys.executable} -m choreo_dp.cli.main"

    def examples(self) -> str:
        """The examples directory: absolute in a checkout (pasted commands work from anywhere)."""
        return str(REPO_EXAMPLES) if REPO_EXAMPLES.is_dir() else "examples"

    def next_steps(self) -> str:
        d = self.directory
        kubectl = self.kubectl_binary() or "kubectl"
        cli = self.choreo_dp()
        examples = self.examples()
        return "\n".join(
            [
                "",
                "Next (paste into a shell; no venv needed):",
                f"  export KUBECONFIG={self.kubeconfig}",
                f"  export CHOREO_DP_CP_URL={self.cp_url} CHOREO_DP_CP_TOKEN=$(cat {self.admin_token_file}) "
                f"CHOREO_DP_CA_FILE={d / 'ca.pem'}",
                f"  {kubectl} get choreoapps -A",
                f"  {kubectl} get environments,dataplanes",
                f"  {cli} cp apply -f {examples}/ --dataplane {DATAPLANE} --wait",
                f"  {cli} cp get apps --dataplane {DATAPLANE}",
                f"  {cli} sandbox --dir {d} keyvault set payments-db-password rotated-1",
                f"Watch: {kubectl} get choreoapps -A -w",
                f"Control plane {self.cp_url} (admin token {self.admin_token_file}, dataplane token "
                f"{self.dataplane_token_file})",
                f"Key Vault {keyvault.vault_url(self.vault_port)} (secrets: "
                f"{', '.join(keyvault.DEMO_SECRETS)})"
                if self.vault_port
                else "",
                f"Logs: {d}/*.log",
            ]
        ).rstrip()

    # --- supervision ------------------------------------------------------------------------

    async def supervise(self, stop: asyncio.Event, interval: float = 0.5) -> None:
        """Until ``stop``: a part that exits is reported and started again.

        The Kubernetes API comes back empty (the emulated one keeps everything in memory; a real
        cluster starts with a new store and a new CA), so the CRDs are installed again and the
        operator and the agent restarted with it: the agent then receives the desired state anew
        from the control plane (whose store is on disk) and the operator reconciles it.
        """
        while not stop.is_set():
            for name in list(self.children.pids):
                code = self.children.returncode(name)
                if code is None or stop.is_set():
                    continue
                try:
                    await self._restart(name, code, stop)
                except _Stopping:
                    return
                except (StepFailed, ApiError, OSError, aiohttp.ClientError) as exc:
                    self.say(f"could not restart {name}: {exc}; trying again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    async def _restart(self, name: str, code: int, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        count, last = self._restarts.get(name, (0, -RESTART_WINDOW))
        count = count + 1 if loop.time() - last < RESTART_WINDOW else 1
        self._restarts[name] = (count, loop.time())
        delay = 0.0 if count == 1 else min(RESTART_BACKOFF_CAP, 2.0 ** (count - 1))
        self._restart_counts[name] = self._restart_counts.get(name, 0) + 1
        self.say(
            f"{name} exited with code {code}; restarting it"
            + (f" in {delay:.0f} s" if delay else "")
            + f" (log: {self.children.log_path(name)})"
            + "".join(f"\n  | {line}" for line in self.children.log_tail(name, LOG_TAIL_LINES))
        )
        self.say(self.status_line(down=name))
        if delay:
            await _unless_stopped(stop, asyncio.sleep(delay))
        await self.children.restart(name)
        if name != self.api_child:
            self.say(f"restarted {name}")
            self.say(self.status_line())
            return
        try:
            timeout = CLUSTER_START_TIMEOUT if self.real else 30
            await _unless_stopped(stop, self._wait_api(f"restart of {name}", timeout))
            await _unless_stopped(stop, self._prepare_cluster())
        except Exception:
            await self.children.stop(name)  # the next round starts it again, from the beginning
            raise
        # The control plane and the Key Vault keep their state on disk and know nothing of the API.
        dependents = [n for n in self.children.pids if n not in (self.api_child, "control-plane", "keyvault")]
        for dependent in dependents:
            await self.children.restart(dependent)
        also = f", and {', '.join(dependents)} with it" if dependents else ""
        self.say(f"restarted {name} on {self.api_url}{also}")
        self.say(self.status_line())

    def status_line(self, down: str | None = None) -> str:
        """One line: what runs, what is down, how often each part was restarted."""
        parts = [n for n in self.children.pids if n != down]
        restarts = ", ".join(f"{n} {c}x" for n, c in self._restart_counts.items())
        head = f"Degraded: {down} is down, being restarted" if down else "Running"
        return (
            f"{head}; up: {', '.join(parts)}"
            + (f"; restarts: {restarts}" if restarts else "")
            + "; Ctrl-C stops everything."
        )

    async def stop(self) -> None:
        if self.kube is not None:
            await self.kube.close()
            self.kube = None
        if not self._lock.held:
            return  # refused (or never started): the directory and its processes are another's
        await self.children.stop_all()
        self._lock.release()


class _Stopping(Exception):
    """The sandbox is stopping: an unfinished restart is abandoned."""


async def _unless_stopped(stop: asyncio.Event, aw: Awaitable[T]) -> T:
    """``await aw``, abandoned (cancelled, ``_Stopping``) as soon as ``stop`` is set."""
    task = asyncio.ensure_future(aw)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise _Stopping
    return task.result()


@dataclass
class _Output:
    returncode: int
    text: str


def render_table(table: dict[str, Any], *, with_namespace: bool) -> str:
    """A ``meta.k8s.io/v1 Table`` the way kubectl prints it (priority-0 columns, upper-case
    headers, ``-A``'s NAMESPACE first, cells separated like Go's tabwriter with padding 3)."""
    columns = [
        (i, c) for i, c in enumerate(table.get("columnDefinitions") or []) if c.get("priority", 0) == 0
    ]
    header = [str(c.get("name", "")).upper() for _, c in columns]
    rows: list[list[str]] = []
    for row in table.get("rows") or []:
        cells = row.get("cells") or []
        line = ["" if i >= len(cells) or cells[i] is None else str(cells[i]) for i, _ in columns]
        if with_namespace:
            meta = (row.get("object") or {}).get("metadata") or {}
            line.insert(0, str(meta.get("namespace", "")))
        rows.append(line)
    if with_namespace:
        header.insert(0, "NAMESPACE")
    if not rows:
        return "No resources found"
    lines = [header, *rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "".join(cell.ljust(widths[i] + 3) for i, cell in enumerate(line[:-1])) + line[-1] for line in lines
    )


def check_kube_mode(mode: str) -> None:
    """``--kube real`` needs the cached binaries: ``BinariesMissing`` (how to build them) if absent."""
    if mode == "real":
        find_binaries()


async def run_sandbox(directory: Path, once: bool, kube: str = "emulated") -> int:
    sandbox = Sandbox(directory, kube_mode=kube)
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
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await main
            print("interrupted; stopping")
            return 0
        try:
            main.result()
        except DirInUse as exc:
            sys.stderr.write(f"choreo-dp: error: {exc}\n")
            return EXIT_DIR_IN_USE
        except StepFailed as exc:
            print(f"sandbox: {exc}")
            return 1
        except (ApiError, aiohttp.ClientError, OSError) as exc:
            print(f"sandbox: start-up failed: {type(exc).__name__}: {exc} (logs: {sandbox.directory}/*.log)")
            return 1
        print()
        print(await sandbox.kubectl_table())
        print(sandbox.next_steps())
        if once:
            return 0
        print("\n" + sandbox.status_line(), flush=True)
        await sandbox.supervise(stop)
        return 0
    finally:
        stopper.cancel()
        # The handlers stay while the parts stop: a second Ctrl-C must not kill the sandbox
        # half-way and leave the rest (a real cluster, say) running without anyone to stop it.
        try:
            await sandbox.stop()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        if os.environ.get("CHOREO_DP_SANDBOX_QUIET") is None and not isinstance(_exception(main), DirInUse):
            print("stopped everything the sandbox started")


def _exception(task: asyncio.Task[Any]) -> BaseException | None:
    if not task.done() or task.cancelled():
        return None
    return task.exception()
