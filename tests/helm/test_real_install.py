"""The chart in a real Kubernetes control plane (kube-apiserver with the RBAC authorizer, kwok nodes).

What the emulator cannot show: ``helm install --wait`` of the chart is accepted and deployed (the
CRDs' structural schemas and CEL rules compiled by the real apiserver, every rendered object
admitted), and the operator and the agent, running in this process but authenticated with tokens
of the chart's own ServiceAccounts (TokenRequest API), carry the demo from the control plane to
Ready apps without a single request the chart's RBAC refuses, and every request they make is one
tests/helm/test_rbac_vs_code.py predicts. ``kubectl auth can-i`` as each ServiceAccount then shows
the real authorizer grants what the code needs and no more, and the chart's admission policy keeps
the operator off objects it did not create (an existing namespace named by an Environment above all).

The real cluster is shared by the whole session: everything here is named ``helmreal*`` and removed
at teardown. CRDs are cluster-wide and may already be there (other modules install ``crds/``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import re
import ssl
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
import yaml

from choreo_cp.server import ControlPlaneServer
from choreo_dp.agent.agent import Agent, AgentConfig
from choreo_dp.api.vocabulary import AGENT_OBSERVE_ROLE
from choreo_dp.kube import ApiError, KubeClient
from choreo_dp.kube import resources as R
from choreo_dp.operator import OperatorConfig, run_operator
from choreo_dp.render.environment import AGENT_OBSERVE_RULES
from choreo_dp.secrets import SecretSyncer
from choreo_sandbox.cluster import find_binaries
from tests.controlplane.conftest import make_server
from tests.controlplane.helpers import ADMIN_TOKEN
from tests.fakes_azure import FakeEntra, FakeKeyVault, FakePki, loopback_localhost_names
from tests.fixtures.kube import RealClusterProcess, kubectl_runner
from tests.helm.chart import CHART, helm_binary, render
from tests.helm.test_rbac_vs_code import Needs, code_needs
from tests.polling import eventually, eventually_blocking

pytestmark = pytest.mark.timeout(240)

RELEASE = "helmreal"
NAMESPACE = "helmreal-system"
FULLNAME = f"{RELEASE}-choreo-dp"
OTHER_RELEASE, OTHER_NAMESPACE = "helmreal-b", "helmreal-b-system"
SA = {c: f"{FULLNAME}-{c}" for c in ("operator", "agent")}
DP, ENV = "helmreal", "helmreal-dev"
ENV_NS = f"choreo-{ENV}"
# An Environment naming a namespace that exists already (someone else's): it must not be adopted.
ADOPTER, VICTIM = "helmreal-adopt", "helmreal-victim"
PULL_SECRET = f"{FULLNAME}-registry"
CRD_NAMES = ("choreoapps.choreo.dev", "dataplanes.choreo.dev", "environments.choreo.dev")
HELM_OWNER = ("meta.helm.sh/release-name", "meta.helm.sh/release-namespace")
DOCKER_CONFIG = json.dumps({"auths": {"ghcr.io": {"auth": base64.b64encode(b"robot:pw").decode()}}})

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


def values(release_dp: str) -> dict[str, Any]:
    return {
        # The chart's own pods are simulated by kwok (nothing runs them); the operator and agent
        # under test run in this process with the ServiceAccounts' tokens instead.
        "controlPlane": {"url": "wss://cp.helmreal.invalid:443"},
        "dataPlane": {"id": release_dp, "token": {"value": "not-used-by-simulated-pods"}},
        "registryPullSecret": {"create": True, "dockerConfigJson": DOCKER_CONFIG},
    }


@dataclass
class Helm:
    kubeconfig: Path
    home: Path

    def __call__(
        self, *args: str, values: dict[str, Any] | None = None, timeout: float = 120, check: bool = True
    ) -> str:
        cmd = [helm_binary(), *args, "--kubeconfig", str(self.kubeconfig)]
        self.home.mkdir(parents=True, exist_ok=True)
        if values is not None:
            path = self.home / f"values-{uuid.uuid4().hex[:6]}.yaml"
            path.write_text(yaml.safe_dump(values))
            cmd += ["-f", str(path)]
        env = {
            **os.environ,
            "HELM_CACHE_HOME": str(self.home / "cache"),
            "HELM_CONFIG_HOME": str(self.home / "config"),
            "HELM_DATA_HOME": str(self.home / "data"),
        }
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc.stdout


CrdOwner = tuple[str, str] | str | None


@dataclass
class Installed:
    cluster: RealClusterProcess
    kubectl: Kubectl
    helm: Helm
    notes: str
    crd_owners_before: dict[str, CrdOwner]
    tmp: Path


def crd_owners(kubectl: Kubectl) -> dict[str, CrdOwner]:
    """Per CRD: absent (None), Helm owner (release, namespace), or "unowned"."""
    out: dict[str, CrdOwner] = {}
    for name in CRD_NAMES:
        got = kubectl("get", "crd", name, "-o", "json", "--ignore-not-found")
        if not got.stdout.strip():
            out[name] = None
            continue
        ann = json.loads(got.stdout)["metadata"].get("annotations") or {}
        owner = tuple(ann.get(k) for k in HELM_OWNER)
        out[name] = (str(owner[0]), str(owner[1])) if all(owner) else "unowned"
    return out


def wait_gone(kubectl: Kubectl, *what: str, timeout: float = 90) -> None:
    kubectl("wait", "--for=delete", *what, f"--timeout={int(timeout)}s", check=False, timeout=timeout + 10)


POLICY_TELL = "changes only what it created"


def wait_for_admission_policy(kubectl: Kubectl, timeout: float = 30) -> None:
    """The apiserver enforces a new ValidatingAdmissionPolicy once its policy cache has loaded it,
    shortly after the create (a real apiserver behaviour: for a moment after `helm install` the
    policy is not in effect). Probe with a server-side dry run as the operator until it refuses."""

    def refused() -> str | None:
        got = kubectl(
            "annotate", "namespace", "kube-public", "helmreal/probe=1", "--dry-run=server",
            f"--as=system:serviceaccount:{NAMESPACE}:{SA['operator']}", check=False,
        )  # fmt: skip
        return got.stderr if POLICY_TELL in got.stderr else None

    eventually_blocking(refused, "the admission policy in effect", timeout=timeout, interval=0.2)


def install_gateway_api(kubectl: Kubectl) -> None:
    """The Gateway API standard channel tools/kube/build.py pinned, as `kubectl apply` of its release
    does (what tests/operator installs too; left installed: other modules' routes live in it). The
    real cluster then serves what the operator prefers (HTTPRoutes), whichever module runs first."""
    directory = find_binaries().gateway_api_crds
    files = sorted(directory.glob("*.yaml"))
    assert files, f"no Gateway API CRDs in {directory}: run `python3 tools/kube/build.py`"
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(directory))
    names = [
        d["metadata"]["name"]
        for f in files
        for d in yaml.safe_load_all(f.read_text())
        if d and d["kind"] == "CustomResourceDefinition"
    ]
    kubectl("wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{n}" for n in names))


@pytest.fixture(scope="module")
def installed(
    real_cluster: RealClusterProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Installed]:
    tmp = tmp_path_factory.mktemp("helm-real")
    kubectl = kubectl_runner(real_cluster.kubeconfig, tmp / "kubectl-cache")
    helm = Helm(real_cluster.kubeconfig, tmp / "helm-home")
    install_gateway_api(kubectl)
    before = crd_owners(kubectl)
    try:
        # --wait: kwok runs the chart's pods (simulated), so its Deployments really become Available.
        notes = helm(
            "install", RELEASE, str(CHART), "-n", NAMESPACE, "--create-namespace", "--wait", "--timeout", "90s",
            values=values(DP),
        )  # fmt: skip
        wait_for_admission_policy(kubectl)
        yield Installed(real_cluster, kubectl, helm, notes, before, tmp)
    finally:
        kubectl("delete", "environment", ENV, ADOPTER, "--ignore-not-found", "--wait=false", check=False)
        kubectl("delete", "dataplane", DP, "--ignore-not-found", check=False)
        helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "60s", check=False)
        namespaces = (NAMESPACE, ENV_NS, VICTIM)
        kubectl("delete", "namespace", *namespaces, "--ignore-not-found", "--wait=false", check=False)
        wait_gone(kubectl, *(f"namespace/{ns}" for ns in namespaces))


# --- 1. the chart is accepted and deployed ---------------------------------------------------------


def test_crds_are_accepted_by_the_real_apiserver_as_new_definitions(installed: Installed) -> None:
    """Structural schemas, CEL rules compiled and costed by kube-apiserver: created, not just stored.

    The choreo.dev CRDs may exist already (shared cluster), and an update ratchets unchanged CEL
    rules; so each CRD is also created under a fresh group with a server-side dry run, which runs
    every validation a first install runs.
    """
    group = f"helmreal{uuid.uuid4().hex[:6]}.test"
    crds = [d for d in render(values(DP)) if d["kind"] == "CustomResourceDefinition"]
    assert sorted(c["metadata"]["name"] for c in crds) == sorted(CRD_NAMES)
    for crd in crds:
        crd["spec"]["group"] = group
        crd["metadata"]["name"] = f"{crd['spec']['names']['plural']}.{group}"
        created = installed.kubectl(
            "create", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(crd)
        )
        assert created.stderr == "", f"{crd['metadata']['name']}: apiserver warnings:\n{created.stderr}"
        rules = json.dumps(json.loads(created.stdout)["spec"]).count("x-kubernetes-validations")
        assert rules == json.dumps(crd["spec"]).count("x-kubernetes-validations")

    # The live ones serve and are Established.
    got = json.loads(installed.kubectl("get", "crd", *CRD_NAMES, "-o", "json").stdout)["items"]
    for crd in got:
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions.get("Established") == "True", crd["metadata"]["name"]
        assert conditions.get("NamesAccepted") == "True", crd["metadata"]["name"]


def test_install_is_deployed_and_every_rendered_object_is_live(installed: Installed) -> None:
    status = json.loads(installed.helm("status", RELEASE, "-n", NAMESPACE, "-o", "json"))
    assert status["info"]["status"] == "deployed"
    manifest = installed.helm("get", "manifest", RELEASE, "-n", NAMESPACE)
    docs = [d for d in yaml.safe_load_all(manifest) if d]
    live = json.loads(installed.kubectl("get", "-f", "-", "-o", "json", input=manifest).stdout)["items"]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in docs) == sorted(
        (i["kind"], i["metadata"]["name"]) for i in live
    )
    for dep in (i for i in live if i["kind"] == "Deployment"):
        available = {c["type"]: c["status"] for c in dep["status"]["conditions"]}["Available"]
        assert available == "True", dep["metadata"]["name"]

    # CRDs: created and owned by this release when absent, left as they were when already there.
    after = crd_owners(installed.kubectl)
    rendered_crds = {d["metadata"]["name"] for d in docs if d["kind"] == "CustomResourceDefinition"}
    for name, before in installed.crd_owners_before.items():
        if before is None or before == (RELEASE, NAMESPACE):  # absent, or kept from an earlier run
            assert after[name] == (RELEASE, NAMESPACE), name
            assert name in rendered_crds
        else:
            assert after[name] == before, name
            assert name not in rendered_crds
            assert name in installed.notes, "NOTES must say which CRDs were left alone"


def test_a_second_release_installs_over_crds_it_does_not_own(installed: Installed) -> None:
    """What a real user hits: the CRDs exist (another release, `kubectl apply -f crds/`, GitOps).

    Helm refuses to adopt a resource another owner holds ("invalid ownership metadata"); the chart
    leaves such CRDs alone, like Helm's crds/ directory does, and says so.
    """
    before = crd_owners(installed.kubectl)
    assert all(owner is not None for owner in before.values())
    try:
        notes = installed.helm(
            "install", OTHER_RELEASE, str(CHART), "-n", OTHER_NAMESPACE, "--create-namespace",
            values=values("helmreal-b"),
        )  # fmt: skip
        manifest = installed.helm("get", "manifest", OTHER_RELEASE, "-n", OTHER_NAMESPACE)
        assert "kind: CustomResourceDefinition" not in manifest
        for name in CRD_NAMES:
            assert name in notes
        status = json.loads(installed.helm("status", OTHER_RELEASE, "-n", OTHER_NAMESPACE, "-o", "json"))
        assert status["info"]["status"] == "deployed"
        # An upgrade of that release still leaves them alone; the owner's upgrade keeps them.
        installed.helm(
            "upgrade", OTHER_RELEASE, str(CHART), "-n", OTHER_NAMESPACE, values=values("helmreal-b")
        )
        assert crd_owners(installed.kubectl) == before
    finally:
        installed.helm("uninstall", OTHER_RELEASE, "-n", OTHER_NAMESPACE, "--wait", "--timeout", "60s")
        installed.kubectl("delete", "namespace", OTHER_NAMESPACE, "--ignore-not-found", "--wait=false")
    assert crd_owners(installed.kubectl) == before  # still there, still the same owner


def test_upgrade_with_reused_values_stays_deployed(installed: Installed) -> None:
    before = crd_owners(installed.kubectl)
    installed.helm(
        "upgrade", RELEASE, str(CHART), "-n", NAMESPACE, "--reuse-values", "--wait", "--timeout", "90s"
    )  # fmt: skip
    status = json.loads(installed.helm("status", RELEASE, "-n", NAMESPACE, "-o", "json"))
    assert status["info"]["status"] == "deployed" and status["version"] == 2
    assert crd_owners(installed.kubectl) == before  # upgraded in place when ours, left alone if not


# --- 2. the operator and the agent as the chart's ServiceAccounts --------------------------------


def sa_kubeconfig(admin_kubeconfig: Path, token: str, namespace: str, path: Path) -> Path:
    """A kubeconfig with the admin kubeconfig's server and CA, authenticating with a bearer token."""
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    ctx = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
    cluster = next(c for c in admin["clusters"] if c["name"] == ctx["cluster"])["cluster"]
    server = {k: v for k, v in cluster.items() if k in ("server", "certificate-authority-data")}
    assert "certificate-authority-data" in server, "the admin kubeconfig should embed the cluster CA"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "real", "cluster": server}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "real", "user": "sa", "namespace": namespace}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


async def mint_token(admin: KubeClient, namespace: str, sa: str) -> str:
    """TokenRequest API: a bound token for the ServiceAccount, as the kubelet mints for its pods."""
    body = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"expirationSeconds": 3600},
    }
    got = await admin.request("POST", R.SERVICEACCOUNTS.path(namespace, sa, "token"), body=body, retry=False)
    token = got["status"]["token"]
    assert isinstance(token, str) and token
    return token


@dataclass(frozen=True)
class Call:
    """One API request, as the RBAC authorizer sees it."""

    who: str
    verb: str
    group: str
    resource: str  # plural, or plural/subresource
    namespace: str | None
    name: str | None
    status: int
    message: str = ""


def authz_attributes(
    method: str, path: str, params: dict[str, Any] | None, content_type: str
) -> tuple[str, str, str, str | None, str | None] | None:
    """(verb, group, resource[/sub], namespace, name) of a resource request; None for discovery."""
    parts = [p for p in path.split("?")[0].split("/") if p]
    if parts[:2] == ["api", "v1"]:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, rest = parts[1], parts[3:]
    else:
        return None
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not rest:
        return None
    resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
    named = len(rest) > 1
    verb = {
        "GET": "get" if named else ("watch" if (params or {}).get("watch") else "list"),
        "POST": "create",
        "PUT": "update",
        "PATCH": "apply" if "apply-patch" in content_type else "patch",
        "DELETE": "delete" if named else "deletecollection",
    }[method]
    return verb, group, resource, namespace, rest[1] if named else None


class CallRecorder:
    """Every request the operator's and the agent's KubeClients make, by whose token, and its answer."""

    def __init__(self, tokens: dict[str, str]) -> None:
        self.who = {token: name for name, token in tokens.items()}
        self.calls: list[Call] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        original_request = KubeClient.request
        original_watch = KubeClient.watch
        recorder = self

        async def request(self: KubeClient, method: str, path: str, **kw: Any) -> Any:
            status, message = 200, ""
            try:
                return await original_request(self, method, path, **kw)
            except ApiError as exc:
                status, message = exc.status, exc.message
                raise
            finally:
                recorder.record(
                    self, method, path, kw.get("params"), kw.get("content_type", ""), status, message
                )

        async def watch(self: KubeClient, res: Any, *args: Any, **kw: Any) -> AsyncIterator[Any]:
            path = res.path(kw.get("namespace"))
            recorder.record(self, "GET", path, {"watch": "1"}, "", 200)  # the attempt
            try:
                async for item in original_watch(self, res, *args, **kw):
                    yield item
            except ApiError as exc:
                recorder.record(self, "GET", path, {"watch": "1"}, "", exc.status, exc.message)
                raise

        monkeypatch.setattr(KubeClient, "request", request)
        monkeypatch.setattr(KubeClient, "watch", watch)

    def record(
        self,
        client: KubeClient,
        method: str,
        path: str,
        params: Any,
        ctype: str,
        status: int,
        message: str = "",
    ) -> None:
        who = self.who.get(client.config.token or "")
        attrs = authz_attributes(method, path, params, ctype)
        if who is not None and attrs is not None:
            self.calls.append(Call(who, *attrs, status, message))

    def forbidden(self) -> list[Call]:
        # Not the authorizer: a write into a namespace being deleted is refused with 403 too (the
        # product waits for it, see ApiError.namespace_terminating), e.g. an Environment's child
        # applied while the demo deletes that Environment.
        return [c for c in self.calls if c.status == 403 and TERMINATING_TELL not in (c.message or "")]


TERMINATING_TELL = "because it is being terminated"


class ForbiddenLog(logging.Handler):
    """Log records that say a request was refused: kopf's watchers and posters log these."""

    PATTERN = re.compile(
        r"\b403\b|forbidden|not enough (rbac )?permissions|cannot (list|watch|get|create|patch)", re.I
    )

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.hits: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # pragma: no cover - a broken log call is not our concern here
            return
        if record.exc_info and record.exc_info[1] is not None:
            text += f" ({record.exc_info[1]!r})"
        if self.PATTERN.search(text) and TERMINATING_TELL not in text:
            self.hits.append(f"{record.name}: {text}")


@contextlib.contextmanager
def forbidden_log() -> Iterator[ForbiddenLog]:
    handler = ForbiddenLog()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(min(old_level or logging.WARNING, logging.INFO))
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


# The demo: one Environment (pull secret copied from the release namespace, quota, Key Vault,
# gateways, served by the Gateway API the fixture installs) and apps covering every kind the
# operator makes: Deployment, CronJob, Service, HPA, PDB, HTTPRoute, NetworkPolicy,
# a Key Vault Secret.
TENANT, CLIENT = str(uuid.UUID(int=0xA)), str(uuid.UUID(int=0xA1))
ENV_SPEC: dict[str, Any] = {
    "displayName": "helm real install",
    "registry": {"allowedPrefixes": ["ghcr.io/acme/"], "pullSecretName": PULL_SECRET},
    "gateways": {
        "internal": {"gatewayName": "internal", "gatewayNamespace": "gw", "hostname": "internal.helmreal.test",
                     "ingressClassName": "internal"},
        "external": {"gatewayName": "external", "gatewayNamespace": "gw", "hostname": "*.apps.helmreal.test",
                     "ingressClassName": "public"},
    },
    "quota": {"cpu": "8", "memory": "16Gi", "pods": 20},
}  # fmt: skip
APPS: dict[str, dict[str, Any]] = {
    "web": {
        "project": "shop", "type": "service", "image": "ghcr.io/acme/web:1.0", "replicas": 2,
        "endpoints": [
            {"name": "http", "port": 8080, "visibility": "Public", "basePath": "/"},
            {"name": "admin", "port": 9090, "visibility": "Organization"},
        ],
        "secrets": [{"name": "DB_PASSWORD", "keyVaultSecret": "db-password"}],
        "probes": {"readiness": {"httpGet": {"path": "/healthz", "port": 8080}}},
    },
    "orders": {
        "project": "shop", "type": "service", "image": "ghcr.io/acme/orders:2.1",
        "autoscaling": {"minReplicas": 2, "maxReplicas": 4},
        "endpoints": [{"name": "http", "port": 8080, "visibility": "Project"}],
    },
    "mailer": {
        "project": "shop", "type": "worker", "image": "ghcr.io/acme/mailer:1.0", "replicas": 1,
    },
    "nightly": {
        "project": "ops", "type": "scheduledTask", "image": "ghcr.io/acme/report:1.0", "schedule": "0 3 * * *",
    },
}  # fmt: skip


@dataclass
class Azure:
    kv: FakeKeyVault
    ca_path: Path


@contextlib.asynccontextmanager
async def fake_azure(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Azure]:
    """Entra and Key Vault HTTPS fakes that the real azure SDK (and so the operator) talks to."""
    with loopback_localhost_names():
        pki = FakePki(tmp, ["kv-helmreal.localhost"])
        entra = await FakeEntra(pki.server_context()).start()
        kv = await FakeKeyVault(entra, pki.server_context()).start()
        try:
            kv.add_vault("kv-helmreal", TENANT, {CLIENT}).set_secret("db-password", uuid.uuid4().hex)
            sa_token = f"eyJhbGciOiJSUzI1NiJ9.fake-workload-identity.{uuid.uuid4().hex}"
            (tmp / "azure-token").write_text(sa_token)
            entra.trust(TENANT, CLIENT, sa_token)
            monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(tmp / "azure-token"))
            monkeypatch.setenv("AZURE_CLIENT_ID", CLIENT)
            monkeypatch.setenv("AZURE_TENANT_ID", TENANT)
            monkeypatch.setenv("AZURE_AUTHORITY_HOST", entra.authority)
            yield Azure(kv, pki.ca_path)
        finally:
            await kv.stop()
            await entra.stop()


@contextlib.asynccontextmanager
async def control_plane(tmp: Path) -> AsyncIterator[tuple[ControlPlaneServer, httpx.AsyncClient, Path]]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(str(tmp / "cp-ca.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp / "cp-cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp / "cp-key.pem"))
    server = make_server(tmp / "cp.db", tls_cert=str(tmp / "cp-cert.pem"), tls_key=str(tmp / "cp-key.pem"))
    await server.start()
    http = httpx.AsyncClient(
        base_url=server.url,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        verify=ssl.create_default_context(cafile=str(tmp / "cp-ca.pem")),
        timeout=10,
    )
    try:
        yield server, http, tmp / "cp-ca.pem"
    finally:
        await http.aclose()
        await server.stop()


def no_guard() -> None:
    pass


async def until(
    probe: Callable[[], Any], what: str, timeout: float = 60.0, guard: Callable[[], None] = no_guard
) -> Any:
    """The suite's polling helper; ``guard`` raises as soon as waiting is pointless (a request was refused)."""
    return await eventually(probe, what, timeout=timeout, interval=0.2, guard=guard)


@contextlib.asynccontextmanager
async def background(
    coro: Any, name: str, stop: asyncio.Event, ready: asyncio.Event | None = None
) -> AsyncIterator[asyncio.Task[Any]]:
    task = asyncio.create_task(coro, name=name)
    try:
        if ready is not None:
            waiter = asyncio.create_task(ready.wait())
            done, _ = await asyncio.wait({task, waiter}, timeout=60, return_when="FIRST_COMPLETED")
            waiter.cancel()
            if task in done:
                task.result()  # its startup error
            assert ready.is_set(), f"{name} did not start within 60s"
        yield task
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, timeout=20)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@dataclass
class DemoRun:
    calls: list[Call]


DEMO: dict[str, DemoRun] = {}


async def test_demo_runs_as_the_charts_service_accounts_without_a_forbidden_request(
    installed: Installed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Control plane -> tunnel -> agent -> ChoreoApps -> operator -> workloads Ready, under real RBAC."""
    kubectl = installed.kubectl
    async with await KubeClient.from_kubeconfig(installed.cluster.kubeconfig) as admin:
        tokens = {c: await mint_token(admin, NAMESPACE, SA[c]) for c in SA}
    kubeconfigs = {
        c: sa_kubeconfig(installed.cluster.kubeconfig, t, NAMESPACE, tmp_path / f"{c}.kubeconfig")
        for c, t in tokens.items()
    }
    for component, path in kubeconfigs.items():
        me = json.loads(kubectl_runner(path, tmp_path / "kc")("auth", "whoami", "-o", "json").stdout)
        assert me["status"]["userInfo"]["username"] == f"system:serviceaccount:{NAMESPACE}:{SA[component]}"

    kubectl("create", "namespace", VICTIM)
    kubectl("create", "configmap", "precious", "-n", VICTIM, "--from-literal=keep=me")
    recorder = CallRecorder(tokens)
    recorder.install(monkeypatch)
    with forbidden_log() as logs:

        def policy_elsewhere(text: str) -> bool:
            """The admission policy refusing the operator an object it did not create, outside this
            module's namespaces: the victim below, or what other modules of the session left behind
            in the shared cluster (hand-made namespaces of Environments they did not delete)."""
            return POLICY_TELL in text and ENV_NS not in text and f" {NAMESPACE}/" not in text

        def no_refusal() -> None:
            # Any RBAC refusal fails; so does an admission refusal of this module's own objects.
            refused = [str(c) for c in recorder.forbidden() if not policy_elsewhere(c.message)]
            refused += [hit for hit in logs.hits if not policy_elsewhere(hit)]
            assert not refused, "refused by the real apiserver:\n" + "\n".join(refused[:10])

        async with fake_azure(tmp_path, monkeypatch) as azure, control_plane(tmp_path) as (cp, http, ca_file):
            env_spec = {**ENV_SPEC, "keyVault": {"url": azure.kv.url("kv-helmreal")}}
            r = await http.put(f"/api/v1/dataplanes/{DP}")
            assert r.status_code == 201, r.text
            (tmp_path / "dp-token").write_text(r.json()["token"] + "\n")

            def secrets_factory(kube: KubeClient) -> SecretSyncer:
                from choreo_dp.secrets import TransportSettings

                return SecretSyncer(
                    kube,
                    transport=TransportSettings(connection_verify=str(azure.ca_path)),
                    failure_backoff=(0.2, 1.0),
                )

            op_config = OperatorConfig(
                kubeconfig=str(kubeconfigs["operator"]),
                operator_namespace=NAMESPACE,
                secrets_factory=secrets_factory,
                env_resync_seconds=5.0,
                progressing_requeue_seconds=5.0,
                # as the chart sets CHOREO_DP_AGENT_SERVICE_ACCOUNT (observability.enabled, the default)
                agent_service_account=(NAMESPACE, SA["agent"]),
            )
            op_stop, op_ready, agent_stop = asyncio.Event(), asyncio.Event(), asyncio.Event()
            agent_kube = await KubeClient.from_kubeconfig(kubeconfigs["agent"])
            agent = Agent(
                AgentConfig(
                    control_plane=f"wss://127.0.0.1:{cp.port}", dataplane_id=DP,
                    token_file=str(tmp_path / "dp-token"), ca_file=str(ca_file),
                    backoff_base=0.05, backoff_cap=0.5, proxy=None,
                    state_namespace=NAMESPACE,  # the agent's pod namespace under the chart
                ),
                agent_kube,
            )  # fmt: skip
            try:
                async with (
                    background(run_operator(op_config, op_stop, op_ready), "operator", op_stop, op_ready),
                    background(agent.run(agent_stop), "agent", agent_stop),
                ):
                    await run_demo(http, env_spec, kubectl, no_refusal)
                    agent_reads_only_its_environments(kubectl)
                    await adoption_is_refused(http, kubectl, recorder, no_refusal)
                    await teardown_demo(http, kubectl, no_refusal)
                    DEMO["run"] = DemoRun(list(recorder.calls))
            finally:
                await agent_kube.close()

    no_refusal()  # over the whole run, after everything stopped
    # Both really worked through the API as themselves (the recorder is not blind).
    for component in SA:
        assert any(c.who == component for c in recorder.calls), component


async def run_demo(
    http: httpx.AsyncClient, env_spec: dict[str, Any], kubectl: Kubectl, guard: Callable[[], None]
) -> None:
    base = f"/api/v1/dataplanes/{DP}/environments/{ENV}"
    r = await http.put(base, json={"spec": env_spec})
    assert r.status_code == 202, r.text
    for name, spec in APPS.items():
        r = await http.put(f"{base}/apps/{name}", json={"spec": spec})
        assert r.status_code == 202, r.text

    async def all_ready() -> dict[str, Any] | None:
        views = {name: (await http.get(f"{base}/apps/{name}")).json() for name in APPS}
        phases = {name: (v.get("status") or {}).get("phase") for name, v in views.items()}
        # orders: the real HPA controller scales the Deployment (created without replicas, so 1) to
        # minReplicas on its next sync, up to 15 s later; until then the app is Ready at 1/1.
        scaled = (views["orders"].get("status") or {}).get("ready") == "2/2"
        return views if scaled and all(p == "Ready" for p in phases.values()) else None

    try:
        views = await until(all_ready, "every app Ready at the control plane", 90, guard)
    except AssertionError:
        print(kubectl("get", "environments,choreoapps,deploy,pods,events", "-A", check=False).stdout)
        raise
    assert views["web"]["status"]["ready"] == "2/2"

    env = json.loads(kubectl("get", "environment", ENV, "-o", "json").stdout)
    assert env["status"]["phase"] == "Ready", env["status"]
    # What the operator made, as a cluster admin sees it.
    secret = json.loads(kubectl("get", "secret", PULL_SECRET, "-n", ENV_NS, "-o", "json").stdout)
    assert secret["type"] == "kubernetes.io/dockerconfigjson"
    kv_secret = json.loads(kubectl("get", "secret", "web-secrets", "-n", ENV_NS, "-o", "json").stdout)
    assert set(kv_secret["data"]) == {"DB_PASSWORD"}
    kinds = kubectl(
        "get", "deploy,cronjob,svc,hpa,pdb,httproute,networkpolicy,resourcequota,limitrange,serviceaccount",
        "-n", ENV_NS, "-l", "app.kubernetes.io/managed-by=choreo-dp", "-o", "name",
    ).stdout.split()  # fmt: skip
    made = {k.split("/")[0] for k in kinds}
    for kind in ("deployment.apps", "cronjob.batch", "service", "horizontalpodautoscaler.autoscaling",
                 "poddisruptionbudget.policy", "httproute.gateway.networking.k8s.io", "networkpolicy.networking.k8s.io",
                 "resourcequota", "limitrange", "serviceaccount"):  # fmt: skip
        assert kind in made, f"no {kind} in {ENV_NS}: {sorted(made)}"

    listing = kubectl("get", "choreoapps", "-A").stdout
    rows = {line.split()[1]: line.split() for line in listing.splitlines()[1:]}
    for name in APPS:
        assert name in rows and "Ready" in rows[name], listing


def agent_reads_only_its_environments(kubectl: Kubectl) -> None:
    """The Role the operator (as its ServiceAccount, so past the apiserver's escalation check)
    rendered in the Environment's namespace lets the agent read pods, logs and Events there, as the
    real authorizer decides, and nowhere else: not kube-system, not a namespace made by hand."""
    role = json.loads(kubectl("get", "role", AGENT_OBSERVE_ROLE, "-n", ENV_NS, "-o", "json").stdout)
    owners = role["metadata"]["ownerReferences"]
    assert [(o["kind"], o["name"]) for o in owners] == [("Environment", ENV)], owners
    who = f"--as=system:serviceaccount:{NAMESPACE}:{SA['agent']}"

    def can(*what: str, namespace: str) -> bool:
        got = kubectl("auth", "can-i", *what, "-n", namespace, who, check=False)
        assert got.stdout.strip() in ("yes", "no"), (what, namespace, got.stdout, got.stderr)
        return got.stdout.strip() == "yes"

    for what in (
        ("get", "pods", "--subresource=log"),
        ("list", "pods"),
        ("watch", "events"),
        ("list", "jobs.batch"),
    ):
        assert can(*what, namespace=ENV_NS), f"the agent cannot {' '.join(what)} in {ENV_NS}"
        for elsewhere in ("kube-system", VICTIM, NAMESPACE):
            assert not can(*what, namespace=elsewhere), f"the agent can {' '.join(what)} in {elsewhere}"
    for what in (("get", "secrets"), ("list", "configmaps"), ("create", "pods"), ("delete", "pods")):
        assert not can(*what, namespace=ENV_NS), f"the agent can {' '.join(what)} in {ENV_NS}"


async def adoption_is_refused(
    http: httpx.AsyncClient,
    kubectl: Kubectl,
    recorder: CallRecorder,
    guard: Callable[[], None],
) -> None:
    """An Environment naming an existing namespace it did not create: the operator refuses it
    (Failed, NamespaceNotOwned) and never writes there, so deleting the Environment cannot get the
    namespace garbage-collected. The chart's admission policy stays behind it as defence in depth."""
    base = f"/api/v1/dataplanes/{DP}/environments/{ADOPTER}"
    assert (await http.put(base, json={"spec": {"namespace": VICTIM}})).status_code == 202

    async def refused() -> dict[str, Any] | None:
        got = kubectl("get", "environment", ADOPTER, "--ignore-not-found", "-o", "json", check=False)
        if got.returncode != 0 or not got.stdout.strip():
            return None
        status = json.loads(got.stdout).get("status") or {}
        reasons = {c.get("reason") for c in status.get("conditions") or []}
        return status if status.get("phase") == "Failed" and "NamespaceNotOwned" in reasons else None

    await until(refused, "the adopting Environment Failed with NamespaceNotOwned", 30, guard)
    victim = json.loads(kubectl("get", "namespace", VICTIM, "-o", "json").stdout)["metadata"]
    assert not victim.get("ownerReferences"), victim
    assert "app.kubernetes.io/managed-by" not in (victim.get("labels") or {}), victim
    leftovers = kubectl("get", "resourcequota,limitrange,networkpolicy", "-n", VICTIM, "-o", "name").stdout
    assert not leftovers.strip(), leftovers
    writes = [
        c
        for c in recorder.calls
        if c.verb not in ("get", "list", "watch") and (c.namespace == VICTIM or c.name == VICTIM)
    ]
    assert not writes, f"the operator or agent wrote into the victim namespace: {writes}"

    assert (await http.delete(base)).status_code == 202

    async def adopter_gone() -> bool:
        got = kubectl("get", "environment", ADOPTER, "--ignore-not-found", "-o", "name", check=False)
        return got.returncode == 0 and not got.stdout.strip()

    await until(adopter_gone, "the adopting Environment deleted", guard=guard)
    victim = json.loads(kubectl("get", "namespace", VICTIM, "-o", "json").stdout)
    assert "deletionTimestamp" not in victim["metadata"] and victim["status"]["phase"] == "Active"
    kubectl("get", "configmap", "precious", "-n", VICTIM)


async def teardown_demo(http: httpx.AsyncClient, kubectl: Kubectl, guard: Callable[[], None]) -> None:
    """Deletes through the control plane too: the agent deletes, the operator prunes, GC cleans up."""
    base = f"/api/v1/dataplanes/{DP}/environments/{ENV}"
    assert (await http.delete(f"{base}/apps/mailer")).status_code == 202

    async def mailer_gone() -> bool:
        got = kubectl(
            "get", "choreoapp,deploy", "mailer", "-n", ENV_NS, "--ignore-not-found", "-o", "name", check=False
        )
        return got.returncode == 0 and not got.stdout.strip()

    await until(mailer_gone, "mailer and its Deployment deleted", guard=guard)
    # A spec change that drops a child: the operator prunes the PDB and HPA of orders.
    r = await http.put(
        f"{base}/apps/orders", json={"spec": {**APPS["orders"], "autoscaling": None, "replicas": 1}}
    )
    assert r.status_code == 202, r.text

    async def pruned() -> bool:
        got = kubectl(
            "get", "hpa,pdb", "orders", "-n", ENV_NS, "--ignore-not-found", "-o", "name", check=False
        )
        return got.returncode == 0 and not got.stdout.strip()

    await until(pruned, "orders' HPA and PDB pruned", guard=guard)
    for name in ("web", "orders", "nightly"):
        assert (await http.delete(f"{base}/apps/{name}")).status_code == 202
    assert (await http.delete(base)).status_code == 202

    async def env_gone() -> bool:
        got = kubectl("get", "environment", ENV, "--ignore-not-found", "-o", "name", check=False)
        return got.returncode == 0 and not got.stdout.strip()

    await until(env_gone, "Environment deleted by the agent", guard=guard)


# --- 3. what the real authorizer grants, against what the code needs ------------------------------

# Every authenticated user may ask who it is and what it may do (system:basic-user).
SELF_REVIEWS = {
    ("authentication.k8s.io", "selfsubjectreviews"),
    ("authorization.k8s.io", "selfsubjectaccessreviews"),
    ("authorization.k8s.io", "selfsubjectrulesreviews"),
}
CAN_I_ROW = re.compile(r"^(\S*)\s+\[(.*?)\]\s+\[(.*?)\]\s+\[(.*?)\]\s*$")


Rules = dict[tuple[str, str, tuple[str, ...]], set[str]]  # (group, resource, resourceNames) -> verbs


def can_i_list(kubectl: Kubectl, component: str, namespace: str) -> Rules:
    """``kubectl auth can-i --list`` as the ServiceAccount (impersonated by the admin)."""
    who = f"--as=system:serviceaccount:{NAMESPACE}:{SA[component]}"
    out = kubectl("auth", "can-i", "--list", who, "-n", namespace).stdout
    granted: Rules = {}
    for line in out.splitlines()[1:]:
        match = CAN_I_ROW.match(line)
        assert match, f"unexpected can-i line: {line!r}"
        resource, _urls, names, verbs = match.groups()
        if not resource:
            continue  # non-resource URLs (discovery), the same for every user
        plural, _, sub = resource.partition("/")
        plural, _, group = plural.partition(".")
        if (group, plural) not in SELF_REVIEWS:
            for name in [(n,) for n in names.split()] or [()]:
                key = (group, plural + (f"/{sub}" if sub else ""), name)
                granted.setdefault(key, set()).update(verbs.split())
    return granted


def chart_rules(installed: Installed, component: str, namespace: str) -> Rules:
    """What the release grants ``component`` in ``namespace``: its ClusterRole, plus the Roles the
    release binds to it in that namespace (the agent's desired-copy ConfigMaps, release namespace
    only)."""
    manifest = installed.helm("get", "manifest", RELEASE, "-n", NAMESPACE)
    docs = [d for d in yaml.safe_load_all(manifest) if d]
    name = f"{FULLNAME}-{component}"
    roles = [d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] == name]
    roles += [
        d
        for d in docs
        if d["kind"] == "Role"
        and d["metadata"]["name"].startswith(f"{name}-")
        and d["metadata"].get("namespace", NAMESPACE) == namespace
    ]
    out: Rules = {}
    for role in roles:
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    # one key per resource name, the way `kubectl auth can-i --list` lists them
                    for names in [(n,) for n in rule.get("resourceNames", [])] or [()]:
                        out.setdefault((group, resource, names), set()).update(rule["verbs"])
    return out


# Needs the code has only in its own (the release's) namespace.
OWN_NAMESPACE_ONLY = {("", "configmaps")}
# The agent's reads (pods, logs, Events, the apps' children) only in its Environments' namespaces,
# through the Role the operator renders there (proven by agent_reads_only_its_environments).
ENVIRONMENT_NAMESPACES_ONLY = {
    (g, r) for rule in AGENT_OBSERVE_RULES for g in rule["apiGroups"] for r in rule["resources"]
}


@pytest.mark.parametrize("component", ["operator", "agent"])
@pytest.mark.parametrize("namespace", [NAMESPACE, "kube-system"])
def test_the_authorizer_grants_the_service_account_exactly_the_charts_role(
    installed: Installed, component: str, namespace: str
) -> None:
    granted = can_i_list(installed.kubectl, component, namespace)
    assert granted == chart_rules(installed, component, namespace), (
        "the real authorizer resolves other rules than the chart renders"
    )
    by_resource: Needs = {}
    for (group, resource, _names), verbs in granted.items():
        by_resource.setdefault((group, resource), set()).update(verbs)
    gaps = {
        k: sorted(v - by_resource.get(k, set()))
        for k, v in code_needs(component).items()
        if v - by_resource.get(k, set())
        and (namespace == NAMESPACE or k not in OWN_NAMESPACE_ONLY)
        and not (component == "agent" and k in ENVIRONMENT_NAMESPACES_ONLY)
    }
    assert not gaps, f"the {component}'s code needs what the authorizer refuses: {gaps}"


def test_what_the_demo_did_is_what_the_code_model_says(installed: Installed) -> None:
    """The static model (test_rbac_vs_code) against reality: every request the operator and the
    agent made in the demo is one the model predicts (so the chart, built from it, covers it)."""
    run = DEMO.get("run")
    if run is None:
        pytest.skip("the demo did not run (see its failure)")
    surprises = set()
    for call in run.calls:
        needs = code_needs(call.who).get((call.group, call.resource), set())
        verbs = {"patch"} if call.verb == "apply" else {call.verb}
        if not verbs <= needs:
            surprises.add(f"{call.who}: {call.verb} {call.group or 'core'}/{call.resource}")
    assert not surprises, "requests the static model did not predict:\n" + "\n".join(sorted(surprises))
    used = {(c.who, c.group, c.resource) for c in run.calls}
    assert ("operator", "apps", "deployments") in used and ("agent", "choreo.dev", "choreoapps") in used


NEVER: dict[str, list[tuple[str, ...]]] = {
    # (verb, resource[, -n namespace]) the ServiceAccount must not be able to do.
    "operator": [
        ("delete", "namespaces"),  # environment namespaces go with their Environment (garbage collector)
        ("delete", "namespace/kube-system"),
        ("create", "clusterroles.rbac.authorization.k8s.io"),
        # It writes the agent's Role + RoleBinding in Environment namespaces only by holding their
        # rules itself: never the right to grant what it does not hold, nor cluster-wide bindings.
        ("escalate", "roles.rbac.authorization.k8s.io", "-n", ENV_NS),
        ("bind", "roles.rbac.authorization.k8s.io", "-n", ENV_NS),
        ("bind", "clusterroles.rbac.authorization.k8s.io"),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
        # (ConfigMaps, like Secrets, it reads cluster-wide since spec.files: docs/helm.md "Known width")
        ("impersonate", "serviceaccounts"),
        ("create", "pods", "-n", ENV_NS),
        ("create", "pods", "--subresource=exec", "-n", ENV_NS),
        ("update", "customresourcedefinitions.apiextensions.k8s.io"),
        ("create", "environments.choreo.dev"),  # the agent writes them, the operator reconciles
        ("create", "choreoapps.choreo.dev", "-n", ENV_NS),
        ("delete", "choreoapps.choreo.dev", "-n", ENV_NS),
        ("patch", "dataplanes.choreo.dev"),
        ("list", "nodes"),
        ("update", "deployments.apps", "-n", ENV_NS),  # server-side apply is a patch
    ],
    "agent": [
        ("get", "secrets", "-n", NAMESPACE),
        ("list", "secrets", "-n", "kube-system"),
        ("create", "deployments.apps", "-n", ENV_NS),
        ("get", "pods", "-n", "kube-system"),  # in its Environments' namespaces only
        ("get", "pods", "--subresource=log", "-n", NAMESPACE),
        ("delete", "pods", "-n", ENV_NS),
        ("delete", "namespaces"),
        ("create", "namespaces"),
        ("patch", "choreoapps.choreo.dev", "--subresource=status", "-n", ENV_NS),  # the operator's
        ("patch", "environments.choreo.dev", "--subresource=status"),
        ("delete", "dataplanes.choreo.dev"),
        ("patch", "dataplanes.choreo.dev/another-dataplane"),  # only its own, by name
        ("create", "dataplanes.choreo.dev/another-dataplane"),
        ("get", "dataplanes.choreo.dev"),
        ("create", "events", "-n", ENV_NS),
        ("list", "nodes"),
    ],
}


@pytest.mark.parametrize("component", ["operator", "agent"])
def test_service_accounts_cannot_do_what_the_chart_does_not_intend(
    installed: Installed, component: str
) -> None:
    allowed = []
    for verb, resource, *ns in NEVER[component]:
        got = installed.kubectl(
            "auth",
            "can-i",
            verb,
            resource,
            f"--as=system:serviceaccount:{NAMESPACE}:{SA[component]}",
            *ns,
            check=False,
        )
        if got.stdout.strip() != "no":
            allowed.append(f"{verb} {resource} {' '.join(ns)}: {got.stdout.strip()} {got.stderr.strip()}")
    assert not allowed, f"the {component} may:\n" + "\n".join(allowed)


def test_the_operator_cannot_change_what_it_did_not_create(installed: Installed, tmp_path: Path) -> None:
    """RBAC lets the operator patch any namespace and delete any Secret (it cannot say "only mine");
    the chart's ValidatingAdmissionPolicy, enforced by the real apiserver, does. Server-side dry
    runs: admission runs, nothing is changed."""
    kubectl = installed.kubectl
    token = kubectl("create", "token", SA["operator"], "-n", NAMESPACE, "--duration=10m").stdout.strip()
    operator = kubectl_runner(
        sa_kubeconfig(installed.cluster.kubeconfig, token, NAMESPACE, tmp_path / "op.kubeconfig"),
        tmp_path / "c",
    )
    kubectl("create", "secret", "generic", "helmreal-foreign", "-n", NAMESPACE, "--from-literal=k=v")
    kubectl("create", "secret", "generic", "helmreal-owned", "-n", NAMESPACE, "--from-literal=k=v")
    kubectl("label", "secret", "helmreal-owned", "-n", NAMESPACE, "app.kubernetes.io/managed-by=choreo-dp")
    policy = POLICY_TELL
    refused = {
        # (what, the answer's tell): admission refuses what RBAC allows; RBAC refuses the rest.
        ("annotate", "namespace", "kube-public", "helmreal/probe=1"): policy,
        (
            "label",
            "namespace",
            "default",
            "app.kubernetes.io/managed-by=choreo-dp",
        ): policy,  # no self-labelling
        ("delete", "secret", "helmreal-foreign", "-n", NAMESPACE): policy,
        ("annotate", "secret", "helmreal-foreign", "-n", NAMESPACE, "helmreal/probe=1"): policy,
        ("delete", "namespace", "kube-public"): "cannot delete resource",
        ("delete", "namespace", NAMESPACE): "cannot delete resource",
    }
    for args, tell in refused.items():
        got = operator(*args, "--dry-run=server", check=False)
        assert got.returncode != 0 and tell in got.stderr, (args, got.stdout, got.stderr)
    # What it made stays its own to change and delete.
    operator("annotate", "secret", "helmreal-owned", "-n", NAMESPACE, "helmreal/probe=1", "--dry-run=server")
    operator("delete", "secret", "helmreal-owned", "-n", NAMESPACE, "--dry-run=server")
    kubectl("delete", "secret", "helmreal-foreign", "helmreal-owned", "-n", NAMESPACE)
