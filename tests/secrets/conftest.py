"""Fixtures: the Entra and Key Vault HTTPS fakes, wired so the real azure SDK clients use them."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from choreo_dp.api.crdgen import all_crds
from choreo_dp.kube import KubeClient
from choreo_dp.kube import resources as R
from choreo_dp.secrets import TransportSettings
from tests.fakes_azure import FakeEntra, FakeKeyVault, FakePki, loopback_localhost_names

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


@pytest.fixture
async def kube(tmp_path: Path) -> AsyncIterator[KubeClient]:
    """The real KubeClient against the emulated API server (issue 3), which garbage-collects by owner."""
    from choreo_dp.sandbox.apiserver import ApiServer

    async with ApiServer(port=0) as srv:
        client = await KubeClient.from_kubeconfig(srv.write_kubeconfig(tmp_path / "kubeconfig"))
        for crd in all_crds().values():
            await client.create(R.CRDS, crd)
        try:
            yield client
        finally:
            await client.close()
