"""No secret value ever leaves the Kubernetes Secret's data: not in logs, output, Events, the ChoreoApp,
the sync results (what the operator writes to status), metrics, exception messages or object reprs."""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import asdict
from typing import Any

import pytest
from prometheus_client import REGISTRY, generate_latest

from choreo_dp.kube import resources as R
from choreo_dp.secrets import SecretSyncer, SecretSyncResult
from choreo_dp.secrets.manifest import APP_HASH_ANNOTATION
from tests.fakes_azure.keyvault import random_secret_value
from tests.secrets.cluster import app_body, decoded, ensure_namespace, eventually
from tests.secrets.conftest import Azure, Names


async def test_values_appear_only_in_secret_data(
    kube: Any,
    azure: Azure,
    names: Names,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, the azure SDK's included
    vault = azure.kv.vaults["kv-dev"]
    values = {name: random_secret_value() for name in ("db", "api", "pinned")}
    pinned = vault.set_secret("pinned", values["pinned"])
    vault.set_secret("db", values["db"])
    vault.set_secret("api", values["api"])
    env = names.environment("dev", azure.kv.url("kv-dev"), refresh="1s")
    await ensure_namespace(kube, env.target_namespace)
    refs = [
        {"name": "DB", "keyVaultSecret": "db"},
        {"name": "API", "keyVaultSecret": "api"},
        {"name": "PINNED", "keyVaultSecret": "pinned", "version": pinned},
    ]
    app = await kube.create(R.CHOREOAPPS, app_body(env, "leaky", refs), env.target_namespace)
    broken = await kube.create(
        R.CHOREOAPPS,
        app_body(env, "broken", [{"name": "X", "keyVaultSecret": "missing"}]),
        env.target_namespace,
    )
    results: list[SecretSyncResult] = []
    s = SecretSyncer(kube, transport=azure.settings(), failure_backoff=(0.2, 1.0))
    try:
        await s.start()
        results.append(await s.sync_app(app, env))
        results.append(await s.sync_app(broken, env))
        # rotation
        vault.set_secret("db", rotated := random_secret_value())
        values["rotated"] = rotated

        async def rotated_in() -> bool:
            secret = await kube.get(R.SECRETS, "leaky-secrets", env.target_namespace)
            return bool(secret and decoded(secret).get("DB") == rotated)

        await eventually(rotated_in, what="the rotated value in the Secret")
        # outage, then last-known-good
        vault.outage = "503"

        async def outage_seen() -> bool:
            items, _ = await kube.list(R.EVENTS, namespace=env.target_namespace)
            return any(
                e["reason"] == "KeyVaultUnavailable" and e["involvedObject"]["name"] == "leaky" for e in items
            )

        await eventually(outage_seen, what="a refresh to fail during the outage")
        results.append(await s.sync_app(app, env))
        vault.outage = None
        repr_state = repr(s.fetcher.states) + repr([vars(a) for a in s._apps.values()])
    finally:
        await s.close()

    assert any(r.condition.reason == "KeyVaultUnavailable" for r in results), results
    out = capsys.readouterr()
    events, _ = await kube.list(R.EVENTS, namespace=env.target_namespace)
    apps, _ = await kube.list(R.CHOREOAPPS, namespace=env.target_namespace)
    leaky = next(a for a in apps if a["metadata"]["name"] == "leaky")
    assert leaky["metadata"]["annotations"][APP_HASH_ANNOTATION]
    secret = await kube.get(R.SECRETS, "leaky-secrets", env.target_namespace)
    assert secret is not None
    secret_without_data = {k: v for k, v in secret.items() if k != "data"}
    haystack = {
        "logs": caplog.text + "\n".join(str(r.__dict__) for r in caplog.records),
        "stdout/stderr": out.out + out.err,
        "events": json.dumps(events),
        "choreoapps": json.dumps(apps),
        "results": json.dumps([{**asdict(r), "condition": r.condition.to_k8s()} for r in results]),
        "metrics": generate_latest(REGISTRY).decode(),
        "requests to the vault": "\n".join(azure.kv.seen_request_text),
        "token requests": repr(azure.entra.requests),
        "secret metadata": json.dumps(secret_without_data),
        "in-memory reprs": repr_state,
    }
    assert len(events) >= 2 and haystack["logs"]
    metrics = haystack["metrics"]
    assert 'choreo_dp_keyvault_requests_total{result="ok"}' in metrics
    assert 'choreo_dp_keyvault_requests_total{result="not_found"}' in metrics
    assert 'choreo_dp_secret_sync_last_success_timestamp_seconds{environment="dev"}' in metrics
    assert 'choreo_dp_secret_sync_duration_seconds_count{trigger="refresh"}' in metrics
    for value in values.values():
        encoded = base64.b64encode(value.encode()).decode()
        for where, text in haystack.items():
            assert value not in text, f"a secret value leaked into {where}"
            assert encoded not in text, f"a base64 secret value leaked into {where}"
    # ... and the Secret does hold them (the check above is not vacuous)
    assert decoded(secret)["DB"] == rotated and decoded(secret)["PINNED"] == values["pinned"]
