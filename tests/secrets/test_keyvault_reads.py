"""The Key Vault side alone: the real WorkloadIdentityCredential and SecretClient against the fakes."""

from __future__ import annotations

import asyncio

from azure.identity.aio import DefaultAzureCredential, WorkloadIdentityCredential

from choreo_dp.secrets.clients import ClientPool
from choreo_dp.secrets.errors import SecretFetchError
from choreo_dp.secrets.fetcher import SecretFetcher, SecretKey
from choreo_dp.secrets.identity import Identity, build_credential
from tests.fakes_azure.keyvault import random_secret_value
from tests.secrets.conftest import CLIENT_A, CLIENT_B, TENANT_A, TENANT_B, Azure


async def _read(fetcher: SecretFetcher, key: SecretKey) -> str:
    st = fetcher.state(key, 3600)
    return (await fetcher.read(st)).value


async def test_workload_identity_reads_latest_and_pinned_versions(azure: Azure) -> None:
    vault = azure.kv.vaults["kv-dev"]
    v1 = vault.set_secret("db-password", value1 := random_secret_value())
    vault.set_secret("db-password", value2 := random_secret_value())
    pool = ClientPool(azure.settings())
    fetcher = SecretFetcher(pool)
    try:
        url = azure.kv.url("kv-dev")
        latest = SecretKey.make(url, Identity(), "db-password", None)
        pinned = SecretKey.make(url, Identity(), "db-password", v1)
        assert await _read(fetcher, latest) == value2
        assert await _read(fetcher, pinned) == value1
        assert fetcher.states[pinned].fetched is not None
        assert fetcher.states[pinned].fetched.version == v1  # type: ignore[union-attr]
        assert isinstance(pool.credential(Identity()), WorkloadIdentityCredential)
        # The SDK went through the challenge and got its token with the federated assertion.
        assert azure.kv.challenges >= 1
        assert [(r.tenant_id, r.client_id, r.granted) for r in azure.entra.requests] == [
            (TENANT_A, CLIENT_A, True)
        ]
        assert azure.kv.reads[("kv-dev", "db-password", "")] == 1
        assert azure.kv.reads[("kv-dev", "db-password", v1)] == 1
    finally:
        await pool.close()


async def test_concurrent_reads_of_one_secret_are_one_request(azure: Azure) -> None:
    azure.kv.vaults["kv-dev"].set_secret("shared", random_secret_value())
    azure.kv.delay = 0.05
    pool = ClientPool(azure.settings())
    fetcher = SecretFetcher(pool)
    try:
        key = SecretKey.make(azure.kv.url("kv-dev"), Identity(), "shared", None)
        st = fetcher.state(key, 3600)
        values = await asyncio.gather(*(fetcher.read(st) for _ in range(50)))
        assert len({v.value for v in values}) == 1
        assert azure.kv.reads[("kv-dev", "shared", "")] == 1
    finally:
        await pool.close()


async def test_missing_forbidden_and_unreachable_map_to_reasons(azure: Azure) -> None:
    pool = ClientPool(azure.settings())
    fetcher = SecretFetcher(pool)
    try:
        missing = SecretKey.make(azure.kv.url("kv-dev"), Identity(), "nope", None)
        # The default identity (client A) has no access to the prod vault (tenant B, reader B) ...
        azure.kv.vaults["kv-prod"].set_secret("x", random_secret_value())
        forbidden_identity = Identity(tenant_id=TENANT_B, client_id=CLIENT_A)
        azure.entra.trust(TENANT_B, CLIENT_A, azure.sa_token)
        forbidden = SecretKey.make(azure.kv.url("kv-prod"), forbidden_identity, "x", None)
        reasons = {}
        for key in (missing, forbidden):
            try:
                await _read(fetcher, key)
            except SecretFetchError as exc:
                reasons[key.name] = exc.reason
        assert reasons == {"nope": "SecretNotFound", "x": "Forbidden"}

        azure.kv.vaults["kv-shared"].set_secret("y", random_secret_value())
        await azure.kv.stop()
        down = SecretKey.make(azure.kv.url("kv-shared"), Identity(), "y", None)
        try:
            await _read(fetcher, down)
            raise AssertionError("read from a stopped vault succeeded")
        except SecretFetchError as exc:
            assert exc.reason == "KeyVaultUnavailable"
        await azure.kv.start()
        assert await _read(fetcher, down)
    finally:
        await pool.close()


async def test_throttling_honours_retry_after_and_holds_other_reads(azure: Azure) -> None:
    vault = azure.kv.vaults["kv-dev"]
    for i in range(8):
        vault.set_secret(f"s{i}", random_secret_value())
    pool = ClientPool(azure.settings(max_retry_after=2.0))
    fetcher = SecretFetcher(pool, max_concurrency=4)
    try:
        keys = [SecretKey.make(azure.kv.url("kv-dev"), Identity(), f"s{i}", None) for i in range(8)]
        await _read(fetcher, keys[0])  # warm: challenge + token done
        vault.throttle_next, vault.throttle_retry_after = 1, 1.0
        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await asyncio.gather(*(_read(fetcher, k) for k in keys[1:]))
        assert len(results) == 7
        assert azure.kv.statuses[429] == 1
        assert azure.kv.throttle_violations == 0  # nobody came back before Retry-After
        assert loop.time() - started >= 0.9

        # A Retry-After longer than we are willing to wait fails fast and keeps the gate closed.
        vault.throttle_next, vault.throttle_retry_after = 1, 30.0
        stale = fetcher.states[keys[1]]
        try:
            await fetcher.read(stale)
            raise AssertionError("throttled read succeeded")
        except SecretFetchError as exc:
            assert exc.reason == "KeyVaultUnavailable"
            assert exc.retry_after is not None and exc.retry_after >= 29
        requests_before = sum(azure.kv.statuses.values())
        try:
            await fetcher.read(fetcher.states[keys[2]])
            raise AssertionError("read during the throttle window succeeded")
        except SecretFetchError as exc:
            assert "throttling" in str(exc)
        assert sum(azure.kv.statuses.values()) == requests_before  # held back locally, not sent
        assert azure.kv.throttle_violations == 0
    finally:
        await pool.close()


async def test_environment_identity_override_gets_its_own_credential(azure: Azure) -> None:
    azure.kv.vaults["kv-prod"].set_secret("p", value := random_secret_value())
    azure.kv.vaults["kv-dev"].set_secret("d", random_secret_value())
    pool = ClientPool(azure.settings())
    fetcher = SecretFetcher(pool)
    try:
        prod = Identity(tenant_id=TENANT_B, client_id=CLIENT_B)
        assert await _read(fetcher, SecretKey.make(azure.kv.url("kv-prod"), prod, "p", None)) == value
        await _read(fetcher, SecretKey.make(azure.kv.url("kv-dev"), Identity(), "d", None))
        assert pool.credential_count == 2
        assert pool.client_count == 2
        granted = {(r.tenant_id, r.client_id) for r in azure.entra.requests if r.granted}
        assert granted == {(TENANT_A, CLIENT_A), (TENANT_B, CLIENT_B)}
    finally:
        await pool.close()


async def test_without_token_file_default_credential_excludes_developer_logins(azure: Azure) -> None:
    cred = build_credential(Identity(), environ={})
    try:
        assert isinstance(cred, DefaultAzureCredential)
        names = {type(c).__name__ for c in cred.credentials}
        assert "AzureCliCredential" not in names
        assert "AzurePowerShellCredential" not in names
        assert "AzureDeveloperCliCredential" not in names
        assert "VisualStudioCodeCredential" not in names
        assert "SharedTokenCacheCredential" not in names
        assert "ManagedIdentityCredential" in names
    finally:
        await cred.close()
