"""Fixtures for the tunnel tests: a Kubernetes API with the choreo CRDs, TLS material, a fake CP.

``apiserver`` runs every test that uses it twice (through the shared ``kube_faulty_target``
parameter): against a fresh emulated API, and against the session's real kube-apiserver
(``real_cluster``).  The real cluster is shared with every other module, so each test takes its
cluster-scoped names (dataplane, Environments, namespaces) from ``names``, unique per test, and
the fixture deletes everything carrying the test's token at teardown.
"""

from __future__ import annotations

import contextlib
import ssl
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from choreo_dp.api.environment import default_namespace
from choreo_dp.kube import ApiError, KubeClient
from choreo_dp.kube import resources as R
from choreo_dp.kube.backoff import Backoff
from choreo_dp.kube.config import ConnectionConfig
from choreo_sandbox.cluster.fault_proxy import FaultProxy
from choreo_wire import protocol as P
from kube_emulator.faults import Faults
from tests import polling
from tests.fixtures.kube import RealClusterProcess
from tests.tunnel.fakecp import FakeControlPlane

ROOT = Path(__file__).resolve().parents[2]
CRD_MANAGER = "choreo-dp-tests"


# the suite's one polling helper (probes here are mostly sync reads of the fake control plane)
eventually = partial(polling.eventually, timeout=10.0, interval=0.02)


@dataclass(frozen=True)
class Names:
    """Cluster-scoped names for one test: unique, so tests sharing the real cluster never meet."""

    token: str

    def __call__(self, base: str) -> str:
        """``base`` made unique to this test (Environment, dataplane or namespace name)."""
        return f"{base}-{self.token}"

    @property
    def dp(self) -> str:
        return self("dp1")

    @property
    def env(self) -> str:
        return self("dev")

    @property
    def ns(self) -> str:
        """The namespace of ``env`` (the default ``choreo-<env>``)."""
        return default_namespace(self.env)

    def app_key(self, app: str, env: str | None = None) -> str:
        return P.app_key(env or self.env, app)

    @property
    def env_key(self) -> str:
        return P.environment_key(self.env)


@pytest.fixture
def names() -> Names:
    return Names(uuid.uuid4().hex[:8])


async def install_crds(kube: KubeClient) -> None:
    """Apply the product's CRDs (idempotent: the real cluster is shared) and wait until served."""
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        await kube.apply(yaml.safe_load(path.read_text()), CRD_MANAGER)

    async def served() -> bool:
        try:
            for res in (R.ENVIRONMENTS, R.CHOREOAPPS, R.DATAPLANES):
                await kube.list(res)
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    await eventually(served, timeout=30, what="choreo.dev CRDs served")


@dataclass
class TunnelApi:
    """The API a tunnel test runs against: ``emulator`` (fresh per test) or ``real`` (shared)."""

    name: str
    kubeconfig: Path
    server: Any = None  # the ApiServer on ``emulator``

    @property
    def emulated(self) -> bool:
        return self.server is not None


async def delete_test_objects(kube: KubeClient, names: Names) -> None:
    """Remove what one test left on the shared cluster: everything named with its token."""
    for res in (R.ENVIRONMENTS, R.DATAPLANES):
        items, _ = await kube.list(res)
        for obj in items:
            if names.token in obj["metadata"]["name"]:
                await kube.delete(res, obj["metadata"]["name"])
    items, _ = await kube.list(R.NAMESPACES)
    for obj in items:
        if names.token in obj["metadata"]["name"]:
            await kube.delete(R.NAMESPACES, obj["metadata"]["name"])


@pytest.fixture
async def apiserver(
    kube_faulty_target: RealClusterProcess | None, names: Names, tmp_path: Path
) -> AsyncIterator[TunnelApi]:
    """The test's Kubernetes API with the CRDs and the namespace of ``names.env`` in place."""
    async with contextlib.AsyncExitStack() as stack:
        if kube_faulty_target is None:
            from kube_emulator import ApiServer

            srv = await stack.enter_async_context(ApiServer(port=0))
            api = TunnelApi("emulator", srv.write_kubeconfig(tmp_path / "kubeconfig"), srv)
        else:
            api = TunnelApi("real", kube_faulty_target.kubeconfig)
        admin = await stack.enter_async_context(await KubeClient.from_kubeconfig(api.kubeconfig))
        await install_crds(admin)
        if not api.emulated:
            stack.push_async_callback(delete_test_objects, admin, names)
        await admin.create(
            R.NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": names.ns}}
        )
        yield api


def client_for(cfg: ConnectionConfig) -> KubeClient:
    """The tests' client: quick retries, few of them."""
    return KubeClient(cfg, backoff=Backoff(base=0.02, cap=0.2), max_retries=3)


@pytest.fixture
async def kube(apiserver: TunnelApi) -> AsyncIterator[KubeClient]:
    cfg = (await KubeClient.from_kubeconfig(apiserver.kubeconfig)).config
    async with client_for(cfg) as client:
        yield client


@dataclass
class Faulty:
    """Fault injection for a tunnel test: rules in ``faults`` act on requests made by ``kube``."""

    faults: Faults
    kube: KubeClient


@pytest.fixture
async def faulty(apiserver: TunnelApi, tmp_path: Path) -> AsyncIterator[Faulty]:
    """On ``emulator`` the emulator's own ``Faults``; on ``real`` a ``FaultProxy`` in front of the
    real kube-apiserver (its rules act only on clients of the proxy, so ``kube`` goes through it)."""
    async with contextlib.AsyncExitStack() as stack:
        if apiserver.emulated:
            faults: Faults = apiserver.server.faults
            kubeconfig = apiserver.kubeconfig
        else:
            proxy = await stack.enter_async_context(
                FaultProxy(apiserver.kubeconfig, directory=tmp_path / "fault-proxy")
            )
            assert proxy.kubeconfig_path is not None
            faults, kubeconfig = proxy.faults, proxy.kubeconfig_path
        cfg = (await KubeClient.from_kubeconfig(kubeconfig)).config
        client = await stack.enter_async_context(client_for(cfg))
        yield Faulty(faults, client)


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls(ca: trustme.CA, tmp_path: Path) -> dict[str, Any]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return {"server": server_ctx, "ca_file": str(ca_file), "ca": ca}


@pytest.fixture
async def fake_cp(tls: dict[str, Any]) -> AsyncIterator[FakeControlPlane]:
    cp = FakeControlPlane(ssl_context=tls["server"])
    await cp.start()
    yield cp
    await cp.stop()


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("tok\n")
    return path


@pytest.fixture(autouse=True)
def _state_namespace(monkeypatch: pytest.MonkeyPatch, names: Names) -> None:
    """Agents keep their desired copy in the test's namespace (it exists on both targets), so an
    agent restarted within a test finds it, as one restarted in its pod would."""
    monkeypatch.setenv("CHOREO_DP_STATE_NAMESPACE", names.ns)


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
