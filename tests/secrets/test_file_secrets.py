"""Key Vault secrets mounted as files (spec.files[].keyVaultSecret): the same sync as env secrets.

Real SDK clients against the HTTPS fakes; Secrets in the emulated API and the real cluster.
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import asdict
from typing import Any

import pytest

from choreo_dp.api import Environment
from choreo_dp.api.files import file_key
from choreo_dp.kube import resources as R
from choreo_dp.secrets import SecretSyncer
from choreo_dp.secrets.manifest import APP_HASH_ANNOTATION
from tests.fakes_azure.keyvault import random_secret_value
from tests.secrets.cluster import app_body, decoded, ensure_namespace, eventually
from tests.secrets.conftest import Azure, Names

TLS = "/secrets/tls.key"
CA = "/config/ca.pem"


def syncer(kube: Any, azure: Azure) -> SecretSyncer:
    return SecretSyncer(kube, transport=azure.settings(), failure_backoff=(0.2, 1.0))


async def create_app(
    kube: Any, env: Environment, name: str, secrets: list[dict[str, str]], files: list[dict[str, str]]
) -> dict[str, Any]:
    await ensure_namespace(kube, env.target_namespace)
    body = app_body(env, name, secrets)
    body["spec"]["files"] = files
    created: dict[str, Any] = await kube.create(R.CHOREOAPPS, body, env.target_namespace)
    return created


async def secret_of(kube: Any, app: dict[str, Any]) -> dict[str, Any] | None:
    meta = app["metadata"]
    found: dict[str, Any] | None = await kube.get(R.SECRETS, f"{meta['name']}-secrets", meta["namespace"])
    return found


async def test_file_secrets_land_in_the_app_secret_beside_env_secrets(
    kube: Any, azure: Azure, names: Names
) -> None:
    vault = azure.kv.vaults["kv-dev"]
    vault.set_secret("db-password", db := random_secret_value())
    pinned = vault.set_secret("ca", ca := random_secret_value())
    vault.set_secret("ca", random_secret_value())  # a newer latest: the pin must hold
    vault.set_secret("tls-key", tls := random_secret_value())
    env = names.environment("dev", azure.kv.url("kv-dev"))
    app = await create_app(
        kube,
        env,
        "orders",
        [{"name": "DB_PASSWORD", "keyVaultSecret": "db-password"}],
        [
            {"mountPath": TLS, "keyVaultSecret": "tls-key"},
            {"mountPath": CA, "keyVaultSecret": "ca", "version": pinned},
            {"mountPath": "/config/app.yaml", "content": "plain: true\n"},
        ],
    )
    s = syncer(kube, azure)
    try:
        result = await s.sync_app(app, env)
        assert result.ready and result.values_hash and result.condition.reason == "Synced"
        assert result.condition.message.startswith("3 secret(s) synced")  # the plain file is no secret
        secret = await secret_of(kube, app)
        assert secret is not None
        assert decoded(secret) == {"DB_PASSWORD": db, file_key(TLS): tls, file_key(CA): ca}
    finally:
        await s.close()


async def test_a_rotated_file_secret_rewrites_the_secret_and_wakes_the_operator(
    kube: Any, azure: Azure, names: Names
) -> None:
    vault = azure.kv.vaults["kv-dev"]
    vault.set_secret("tls-key", first := random_secret_value())
    env = names.environment("dev", azure.kv.url("kv-dev"), refresh="1s")
    app = await create_app(kube, env, "edge", [], [{"mountPath": TLS, "keyVaultSecret": "tls-key"}])
    s = syncer(kube, azure)
    try:
        await s.start()
        before = await s.sync_app(app, env)
        assert before.ready and before.values_hash
        assert decoded(await secret_of(kube, app) or {}) == {file_key(TLS): first}
        vault.set_secret("tls-key", rotated := random_secret_value())

        async def annotated() -> str | None:
            obj = await kube.get(R.CHOREOAPPS, "edge", env.target_namespace)
            value = ((obj or {}).get("metadata", {}).get("annotations") or {}).get(APP_HASH_ANNOTATION)
            return value if value and value != before.values_hash else None

        new_hash = await eventually(annotated, what="the ChoreoApp annotated with a new secrets hash")
        assert decoded(await secret_of(kube, app) or {}) == {file_key(TLS): rotated}
        after = await s.sync_app(app, env)
        assert after.values_hash == new_hash
    finally:
        await s.close()


async def test_pinning_another_version_changes_the_hash(kube: Any, azure: Azure, names: Names) -> None:
    vault = azure.kv.vaults["kv-dev"]
    v1 = vault.set_secret("ca", one := random_secret_value())
    v2 = vault.set_secret("ca", two := random_secret_value())
    env = names.environment("dev", azure.kv.url("kv-dev"))
    app = await create_app(
        kube, env, "pinned", [], [{"mountPath": CA, "keyVaultSecret": "ca", "version": v1}]
    )
    s = syncer(kube, azure)
    try:
        first = await s.sync_app(app, env)
        assert decoded(await secret_of(kube, app) or {}) == {file_key(CA): one}
        app["spec"]["files"][0]["version"] = v2
        second = await s.sync_app(app, env)
        assert second.ready and first.values_hash != second.values_hash
        assert decoded(await secret_of(kube, app) or {}) == {file_key(CA): two}
    finally:
        await s.close()


async def test_a_missing_file_secret_writes_nothing_and_removing_it_deletes_the_secret(
    kube: Any, azure: Azure, names: Names
) -> None:
    env = names.environment("dev", azure.kv.url("kv-dev"))
    app = await create_app(kube, env, "lost", [], [{"mountPath": TLS, "keyVaultSecret": "nowhere"}])
    s = syncer(kube, azure)
    try:
        result = await s.sync_app(app, env)
        assert not result.ready and result.values_hash is None
        assert result.condition.reason == "SecretNotFound" and "nowhere" in result.condition.message
        assert await secret_of(kube, app) is None

        azure.kv.vaults["kv-dev"].set_secret("nowhere", random_secret_value())
        # Past the failure's backoff, a reconcile reads it again.
        ok = await eventually(
            lambda: _ready(s, app, env), timeout=10, what="the file secret to sync once it exists"
        )
        assert ok.values_hash and await secret_of(kube, app) is not None
        # Files turned into plain content: no Key Vault value is left, nor the Secret.
        app["spec"]["files"] = [{"mountPath": TLS, "content": "not secret"}]
        gone = await s.sync_app(app, env)
        assert gone.ready and gone.values_hash is None
        assert await secret_of(kube, app) is None
    finally:
        await s.close()


async def _ready(s: SecretSyncer, app: dict[str, Any], env: Environment) -> Any:
    result = await s.sync_app(app, env)
    return result if result.ready else None


async def test_file_secret_values_appear_only_in_secret_data(
    kube: Any,
    azure: Azure,
    names: Names,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    vault = azure.kv.vaults["kv-dev"]
    vault.set_secret("tls-key", tls := random_secret_value())
    env = names.environment("dev", azure.kv.url("kv-dev"), refresh="1s")
    app = await create_app(kube, env, "quiet", [], [{"mountPath": TLS, "keyVaultSecret": "tls-key"}])
    s = syncer(kube, azure)
    values = [tls]
    results = []
    try:
        await s.start()
        results.append(await s.sync_app(app, env))
        vault.set_secret("tls-key", rotated := random_secret_value())
        values.append(rotated)

        async def rotated_in() -> bool:
            return decoded(await secret_of(kube, app) or {}).get(file_key(TLS)) == rotated

        await eventually(rotated_in, what="the rotated file secret in the Secret")
        vault.outage = "503"

        async def outage_seen() -> bool:
            items, _ = await kube.list(R.EVENTS, namespace=env.target_namespace)
            return any(e["reason"] == "KeyVaultUnavailable" for e in items)

        await eventually(outage_seen, what="a refresh to fail during the outage")
        results.append(await s.sync_app(app, env))
        vault.outage = None
        reprs = repr(s.fetcher.states) + repr([vars(a) for a in s._apps.values()])
    finally:
        await s.close()
    out = capsys.readouterr()
    events, _ = await kube.list(R.EVENTS, namespace=env.target_namespace)
    apps, _ = await kube.list(R.CHOREOAPPS, namespace=env.target_namespace)
    secret = await secret_of(kube, app)
    assert secret is not None and decoded(secret)[file_key(TLS)] == rotated  # not vacuous
    haystack = {
        "logs": caplog.text + "\n".join(str(r.__dict__) for r in caplog.records),
        "stdout/stderr": out.out + out.err,
        "events": json.dumps(events),
        "choreoapps (spec, status, annotations)": json.dumps(apps),
        "results": json.dumps([{**asdict(r), "condition": r.condition.to_k8s()} for r in results]),
        "secret metadata": json.dumps({k: v for k, v in secret.items() if k != "data"}),
        "in-memory reprs": reprs,
    }
    assert events and haystack["logs"]
    for value in values:
        encoded = base64.b64encode(value.encode()).decode()
        for where, text in haystack.items():
            assert value not in text, f"a file secret value leaked into {where}"
            assert encoded not in text, f"a base64 file secret value leaked into {where}"
