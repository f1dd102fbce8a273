"""SecretSyncer end to end: real SDK clients against the HTTPS fakes, Secrets in a Kubernetes API."""

from __future__ import annotations

from typing import Any

from choreo_dp.api import Environment
from choreo_dp.kube import resources as R
from choreo_dp.secrets import SecretSyncer
from choreo_dp.secrets.manifest import APP_HASH_ANNOTATION, APP_STATE_ANNOTATION, VALUES_HASH_ANNOTATION
from tests.fakes_azure.keyvault import random_secret_value
from tests.secrets.cluster import app_body, decoded, ensure_namespace, eventually
from tests.secrets.conftest import CLIENT_B, TENANT_B, Azure, Names


def syncer(kube: Any, azure: Azure, **kwargs: Any) -> SecretSyncer:
    kwargs.setdefault("failure_backoff", (0.2, 1.0))
    return SecretSyncer(kube, transport=azure.settings(), **kwargs)


async def create_app(kube: Any, env: Environment, name: str, secrets: list[dict[str, str]]) -> dict[str, Any]:
    await ensure_namespace(kube, env.target_namespace)
    created: dict[str, Any] = await kube.create(
        R.CHOREOAPPS, app_body(env, name, secrets), env.target_namespace
    )
    return created


async def get_secret(kube: Any, app: dict[str, Any]) -> dict[str, Any] | None:
    meta = app["metadata"]
    result: dict[str, Any] | None = await kube.get(R.SECRETS, f"{meta['name']}-secrets", meta["namespace"])
    return result


async def events_of(kube: Any, app: dict[str, Any]) -> list[dict[str, Any]]:
    items, _ = await kube.list(R.EVENTS, namespace=app["metadata"]["namespace"])
    return [e for e in items if e["involvedObject"]["name"] == app["metadata"]["name"]]


async def test_first_sync_writes_owned_secret_and_is_cached(kube: Any, azure: Azure, names: Names) -> None:
    vault = azure.kv.vaults["kv-dev"]
    pinned = vault.set_secret("api-key", old_key := random_secret_value())
    vault.set_secret("api-key", random_secret_value())
    vault.set_secret("db-password", db := random_secret_value())
    env = names.environment("dev", azure.kv.url("kv-dev"))
    app = await create_app(
        kube,
        env,
        "orders",
        [
            {"name": "DB_PASSWORD", "keyVaultSecret": "db-password"},
            {"name": "API_KEY", "keyVaultSecret": "api-key", "version": pinned},
        ],
    )
    s = syncer(kube, azure)
    try:
        result = await s.sync_app(app, env)
        assert result.ready and result.secret_name == "orders-secrets"
        assert result.condition.type == "SecretsSynced" and result.condition.status == "True"
        assert result.condition.reason == "Synced"
        assert result.values_hash
        secret = await get_secret(kube, app)
        assert secret is not None
        assert decoded(secret) == {"DB_PASSWORD": db, "API_KEY": old_key}  # the pinned version, not latest
        labels = secret["metadata"]["labels"]
        assert labels == {
            "app.kubernetes.io/managed-by": "choreo-dp",
            "choreo.dev/environment": "dev",
            "choreo.dev/app": "orders",
            "choreo.dev/project": "shop",
        }
        [owner] = secret["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
            "ChoreoApp",
            "orders",
            app["metadata"]["uid"],
            True,
        )
        assert secret["metadata"]["annotations"][VALUES_HASH_ANNOTATION] == result.values_hash

        # Reconciling again does not go to Key Vault, and gives the same hash.
        reads = azure.kv.authorized_reads
        again = await s.sync_app(app, env)
        assert again.values_hash == result.values_hash and again.ready
        assert azure.kv.authorized_reads == reads
    finally:
        await s.close()


async def test_rotation_rewrites_secret_and_wakes_operator(kube: Any, azure: Azure, names: Names) -> None:
    vault = azure.kv.vaults["kv-dev"]
    vault.set_secret("token", first := random_secret_value())
    pinned = vault.set_secret("cert", cert := random_secret_value())
    env = names.environment("dev", azure.kv.url("kv-dev"), refresh="1s")
    app = await create_app(
        kube,
        env,
        "billing",
        [
            {"name": "TOKEN", "keyVaultSecret": "token"},
            {"name": "CERT", "keyVaultSecret": "cert", "version": pinned},
        ],
    )
    s = syncer(kube, azure)
    try:
        await s.start()
        before = await s.sync_app(app, env)
        assert decoded(await get_secret(kube, app) or {}) == {"TOKEN": first, "CERT": cert}
        vault.set_secret("token", rotated := random_secret_value())
        vault.set_secret("cert", random_secret_value())  # a new latest; the pinned one must not move

        async def annotated() -> str | None:
            obj = await kube.get(R.CHOREOAPPS, "billing", env.target_namespace)
            value = ((obj or {}).get("metadata", {}).get("annotations") or {}).get(APP_HASH_ANNOTATION)
            return value if value and value != before.values_hash else None

        new_hash = await eventually(annotated, what="the ChoreoApp to be annotated with a new hash")
        secret = await get_secret(kube, app)
        assert secret is not None and decoded(secret) == {"TOKEN": rotated, "CERT": cert}
        after = await s.sync_app(app, env)
        assert after.values_hash == new_hash != before.values_hash
        assert after.ready and after.condition.status == "True"
    finally:
        await s.close()


async def test_vault_outage_keeps_last_known_good(kube: Any, azure: Azure, names: Names) -> None:
    vault = azure.kv.vaults["kv-dev"]
    vault.set_secret("db-password", db := random_secret_value())
    env = names.environment("dev", azure.kv.url("kv-dev"), refresh="1s")
    app = await create_app(kube, env, "orders", [{"name": "DB_PASSWORD", "keyVaultSecret": "db-password"}])
    s = syncer(kube, azure)
    try:
        await s.start()
        good = await s.sync_app(app, env)
        await azure.kv.stop()  # unreachable: connections refused

        async def warned() -> list[dict[str, Any]]:
            return [e for e in await events_of(kube, app) if e["reason"] == "KeyVaultUnavailable"]

        [event] = await eventually(warned, what="a KeyVaultUnavailable Warning Event")
        assert event["type"] == "Warning"
        obj = await kube.get(R.CHOREOAPPS, "orders", env.target_namespace)
        assert (
            obj is not None and obj["metadata"]["annotations"][APP_STATE_ANNOTATION] == "KeyVaultUnavailable"
        )
        secret = await get_secret(kube, app)
        assert secret is not None and decoded(secret) == {"DB_PASSWORD": db}

        during = await s.sync_app(app, env)
        assert during.ready and during.values_hash == good.values_hash
        assert (during.condition.status, during.condition.reason) == ("False", "KeyVaultUnavailable")
        assert "last known good" in during.condition.message

        await azure.kv.start()

        async def recovered() -> bool:
            obj = await kube.get(R.CHOREOAPPS, "orders", env.target_namespace)
            return bool(obj and obj["metadata"]["annotations"].get(APP_STATE_ANNOTATION) == "Synced")

        await eventually(recovered, what="the secrets state to return to Synced")
        back = await s.sync_app(app, env)
        assert back.condition.status == "True" and back.values_hash == good.values_hash
    finally:
        await s.close()


async def test_first_sync_failures_are_not_ready_and_write_nothing(
    kube: Any, azure: Azure, names: Names
) -> None:
    env = names.environment("dev", azure.kv.url("kv-dev"))
    missing = await create_app(kube, env, "lost", [{"name": "X", "keyVaultSecret": "does-not-exist"}])
    # prod's vault lives in tenant B and only CLIENT_B may read it; this env does not say so.
    azure.kv.vaults["kv-prod"].set_secret("p", random_secret_value())
    azure.entra.trust(TENANT_B, "00000000-0000-0000-0000-0000000000a1", azure.sa_token)
    wrong = names.environment("wrong", azure.kv.url("kv-prod"), tenant_id=TENANT_B)
    forbidden = await create_app(kube, wrong, "denied", [{"name": "P", "keyVaultSecret": "p"}])
    no_kv = names.environment("bare", None)
    bare = await create_app(kube, no_kv, "bare", [{"name": "P", "keyVaultSecret": "p"}])
    # A backoff far longer than the test, so "not re-read yet" cannot depend on the machine's speed.
    s = syncer(kube, azure, failure_backoff=(60.0, 120.0))
    try:
        for app, env_, reason in (
            (missing, env, "SecretNotFound"),
            (forbidden, wrong, "Forbidden"),
            (bare, no_kv, "NoKeyVault"),
        ):
            result = await s.sync_app(app, env_)
            assert not result.ready and result.values_hash is None
            assert (result.condition.status, result.condition.reason) == ("False", reason)
            assert await get_secret(kube, app) is None
            assert [e["reason"] for e in await events_of(kube, app)] == [reason]
        # A failed secret is not re-read on every reconcile: the retry is scheduled with backoff.
        reads = sum(azure.kv.statuses.values())
        await s.sync_app(missing, env)
        assert sum(azure.kv.statuses.values()) == reads
    finally:
        await s.close()


async def test_environment_identity_override(kube: Any, azure: Azure, names: Names) -> None:
    azure.kv.vaults["kv-prod"].set_secret("p", prod_value := random_secret_value())
    azure.kv.vaults["kv-dev"].set_secret("d", dev_value := random_secret_value())
    prod = names.environment("prod", azure.kv.url("kv-prod"), client_id=CLIENT_B, tenant_id=TENANT_B)
    dev = names.environment("dev", azure.kv.url("kv-dev"))
    papp = await create_app(kube, prod, "api", [{"name": "P", "keyVaultSecret": "p"}])
    dapp = await create_app(kube, dev, "api", [{"name": "D", "keyVaultSecret": "d"}])
    s = syncer(kube, azure)
    try:
        assert (await s.sync_app(papp, prod)).ready
        assert (await s.sync_app(dapp, dev)).ready
        assert decoded(await get_secret(kube, papp) or {}) == {"P": prod_value}
        assert decoded(await get_secret(kube, dapp) or {}) == {"D": dev_value}
        assert s.pool.credential_count == 2
        assert {(r.tenant_id, r.client_id) for r in azure.entra.requests if r.granted} == {
            (TENANT_B, CLIENT_B),
            ("00000000-0000-0000-0000-00000000000a", "00000000-0000-0000-0000-0000000000a1"),
        }
    finally:
        await s.close()


async def test_removed_secret_disappears_and_shared_secrets_are_read_once(
    kube: Any, azure: Azure, names: Names
) -> None:
    vault = azure.kv.vaults["kv-dev"]
    for name in ("a", "b", "c"):
        vault.set_secret(name, random_secret_value())
    env = names.environment("dev", azure.kv.url("kv-dev"))
    refs = [{"name": n.upper(), "keyVaultSecret": n} for n in ("a", "b", "c")]
    apps = [await create_app(kube, env, f"app{i}", refs) for i in range(12)]
    s = syncer(kube, azure)
    try:
        import asyncio

        results = await asyncio.gather(*(s.sync_app(a, env) for a in apps))
        assert all(r.ready for r in results)
        assert azure.kv.authorized_reads == 3  # 12 apps x 3 refs, 3 distinct secrets
        await s.refresh()  # one refresh cycle
        assert azure.kv.authorized_reads == 6

        first = apps[0]
        first["spec"]["secrets"] = refs[:2]
        result = await s.sync_app(first, env)
        assert result.ready
        secret = await get_secret(kube, first)
        assert secret is not None and set(decoded(secret)) == {"A", "B"}

        first["spec"]["secrets"] = []
        result = await s.sync_app(first, env)
        assert result.ready and result.values_hash is None
        assert await get_secret(kube, first) is None
    finally:
        await s.close()


async def test_deleting_the_app_deletes_its_secret(kube: Any, azure: Azure, names: Names) -> None:
    azure.kv.vaults["kv-dev"].set_secret("d", random_secret_value())
    env = names.environment("dev", azure.kv.url("kv-dev"))
    app = await create_app(kube, env, "gone", [{"name": "D", "keyVaultSecret": "d"}])
    s = syncer(kube, azure)
    try:
        assert (await s.sync_app(app, env)).ready
        assert await get_secret(kube, app) is not None
        await kube.delete(R.CHOREOAPPS, "gone", env.target_namespace)
        await s.forget_app(env.target_namespace, "gone")

        async def collected() -> bool:
            return await get_secret(kube, app) is None

        await eventually(collected, what="the Secret to be garbage-collected with its ChoreoApp")
        assert not s.fetcher.states  # nothing left to refresh
    finally:
        await s.close()


async def test_after_restart_with_vault_down_the_existing_secret_is_last_known_good(
    kube: Any, azure: Azure, names: Names
) -> None:
    azure.kv.vaults["kv-dev"].set_secret("d", value := random_secret_value())
    env = names.environment("dev", azure.kv.url("kv-dev"))
    app = await create_app(kube, env, "sturdy", [{"name": "D", "keyVaultSecret": "d"}])
    first = syncer(kube, azure)
    try:
        good = await first.sync_app(app, env)
    finally:
        await first.close()
    await azure.kv.stop()
    restarted = syncer(kube, azure)
    try:
        result = await restarted.sync_app(app, env)
        assert result.ready and result.values_hash == good.values_hash
        assert (result.condition.status, result.condition.reason) == ("False", "KeyVaultUnavailable")
        assert decoded(await get_secret(kube, app) or {}) == {"D": value}
    finally:
        await restarted.close()
