"""Fixtures: the Entra and Key Vault HTTPS fakes, wired so the real azure SDK clients use them, and
the Kubernetes API the Secrets land in: the emulated one and the session's real cluster (``kube``
is parametrized ``emulator`` / ``real``; ``names`` gives each test its own namespaces)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from choreo_dp.api import Environment
from choreo_dp.kube import KubeClient
from choreo_dp.kube import resources as R
from choreo_dp.secrets import TransportSettings
from tests.fakes_azure import FakeEntra, FakeKeyVault, FakePki, loopback_localhost_names
from tests.fixtures.kube import RealClusterProcess
from tests.operator.harness import (
    CLEANUP_TIMEOUT,
    declare_real_cluster,
    eventually,
    install_crds,
    wait_for_garbage_collector,
)
from tests.secrets.cluster import environment

TENANT_A = str(uuid.UUID(int=0xA))
TENANT_B = str(uuid.UUID(int=0xB))
CLIENT_A = str(uuid.UUID(int=0xA1))  # the operator pod's own identity (AZURE_CLIENT_ID)
CLIENT_B = str(uuid.UUID(int=0xB1))  # the identity the "prod" Environment names in keyVault.clientId
VAULTS = ["kv-dev", "kv-prod", "kv-shared"]


@dataclass
class Azure:
    entra: FakeEntra
    kv: FakeKeyVault
    ca_path: Path
    sa_token: str

    def settings(self, **overrides: object) -> TransportSettings:
        options: dict[str, object] = {
            "connection_verify": str(self.ca_path),
            "connection_timeout": 2.0,
            "read_timeout": 3.0,
            "retry_total": 2,
            "retry_backoff_factor": 0.05,
            "retry_backoff_max": 0.2,
            "max_retry_after": 2.0,
        }
        options.update(overrides)
        return TransportSettings(**options)  # type: ignore[arg-type]


@pytest.fixture
def _loopback_names() -> Iterator[None]:
    with loopback_localhost_names():
        yield


@pytest.fixture
async def azure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _loopback_names: None
) -> AsyncIterator[Azure]:
    pki = FakePki(tmp_path, [f"{v}.localhost" for v in VAULTS])
    entra = await FakeEntra(pki.server_context()).start()
    kv = await FakeKeyVault(entra, pki.server_context()).start()
    kv.add_vault("kv-dev", TENANT_A, {CLIENT_A})
    kv.add_vault("kv-prod", TENANT_B, {CLIENT_B})
    kv.add_vault("kv-shared", TENANT_A, {CLIENT_A})
    # The projected service account token AKS mounts; both app registrations trust it.
    sa_token = "eyJhbGciOiJSUzI1NiJ9.fake-service-account-token." + uuid.uuid4().hex
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text(sa_token)
    entra.trust(TENANT_A, CLIENT_A, sa_token)
    entra.trust(TENANT_B, CLIENT_B, sa_token)
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("AZURE_CLIENT_ID", CLIENT_A)
    monkeypatch.setenv("AZURE_TENANT_ID", TENANT_A)
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", entra.authority)
    try:
        yield Azure(entra, kv, pki.ca_path, sa_token)
    finally:
        await kv.stop()
        await entra.stop()


TARGETS = ("emulator", "real")
# Real clusters (by kubeconfig) whose garbage collector is known to collect our kinds' children.
_GC_READY: set[str] = set()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    declare_real_cluster(items, "secrets_kube_target")


@pytest.fixture(params=TARGETS)
def secrets_kube_target(request: pytest.FixtureRequest) -> RealClusterProcess | None:
    """``kube``'s parameter: None for a fresh emulator, else the session's real cluster."""
    if request.param == "real":
        cluster: RealClusterProcess = request.getfixturevalue("real_cluster")
        return cluster
    return None


@pytest.fixture
async def kube(secrets_kube_target: RealClusterProcess | None, tmp_path: Path) -> AsyncIterator[KubeClient]:
    """The real KubeClient against a Kubernetes API with our CRDs: a fresh emulated API server
    (which garbage-collects by owner at once), or the session's real cluster (whose garbage
    collector is kube-controller-manager's: asynchronous, and blind to a new kind until its
    next discovery sync, hence the wait on first use)."""
    from kube_emulator import ApiServer

    real = secrets_kube_target
    if real is None:
        async with ApiServer(port=0) as srv:
            path = srv.write_kubeconfig(tmp_path / "kubeconfig")
            async with await KubeClient.from_kubeconfig(path) as client:
                await install_crds(client)
                yield client
        return
    async with await KubeClient.from_kubeconfig(real.kubeconfig) as client:
        await install_crds(client)
        if str(real.kubeconfig) not in _GC_READY:
            await wait_for_garbage_collector(client, uuid.uuid4().hex[:6])
            _GC_READY.add(str(real.kubeconfig))
        yield client


@dataclass
class Names:
    """A test's namespaces: ``choreo-<env>-<suffix>``, unique in the session's shared real cluster.

    Environment names stay as the tests write them (``dev``, ``prod``): the syncer reads them
    from the model it is handed, and no Environment object is created in the cluster.
    """

    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    namespaces: list[str] = field(default_factory=list)

    def environment(self, name: str, vault_url: str | None, **kwargs: Any) -> Environment:
        namespace = f"choreo-{name}-{self.suffix}"
        if namespace not in self.namespaces:
            self.namespaces.append(namespace)
        return environment(name, vault_url, namespace=namespace, **kwargs)


class _Janitor:
    """Waits, once per module, for the namespaces its tests deleted to be gone from the real cluster
    (namespace deletion runs through the namespace controller and takes seconds; waiting per test
    would add them up)."""

    def __init__(self) -> None:
        self.pending: dict[str, list[str]] = {}  # kubeconfig -> namespaces

    def wait(self) -> None:
        for kubeconfig, namespaces in self.pending.items():
            asyncio.run(_wait_gone(kubeconfig, namespaces))
        self.pending.clear()


async def _wait_gone(kubeconfig: str, namespaces: list[str]) -> None:
    async with await KubeClient.from_kubeconfig(kubeconfig) as kube:

        async def gone() -> bool:
            return all([await kube.get(R.NAMESPACES, ns) is None for ns in namespaces])

        await eventually(gone, timeout=CLEANUP_TIMEOUT, interval=0.5, what=f"namespaces {namespaces} gone")


@pytest.fixture(scope="module")
def _janitor() -> Iterator[_Janitor]:
    janitor = _Janitor()
    yield janitor
    janitor.wait()


@pytest.fixture
async def names(
    kube: KubeClient, secrets_kube_target: RealClusterProcess | None, _janitor: _Janitor
) -> AsyncIterator[Names]:
    n = Names()
    yield n
    if secrets_kube_target is not None:
        for ns in n.namespaces:
            await kube.delete(R.NAMESPACES, ns)
        _janitor.pending.setdefault(str(secrets_kube_target.kubeconfig), []).extend(n.namespaces)
