"""Apps with Key Vault secrets: no workload until the secret is synced, rollout on new values.

On the emulator and on a real cluster (``operator_cluster``), with a stand-in for the Key Vault sync."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio

from choreo_dp.api import Condition, Environment
from choreo_dp.kube import KubeClient
from choreo_dp.kube import resources as R
from tests.operator.harness import (
    Cluster,
    choreoapp,
    environment,
    eventually,
    running_operator,
)

pytestmark = [pytest.mark.asyncio(loop_scope="module")]


@dataclass
class Result:
    secret_name: str
    values_hash: str | None
    ready: bool
    condition: Condition


class FakeSecrets:
    """Stands in for choreo_dp.secrets.SecretSyncer with switchable outcomes."""

    def __init__(self) -> None:
        self.hash: str | None = None
        self.calls = 0
        self.forgotten: list[tuple[str, str]] = []

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def sync_app(self, app_obj: Any, env: Environment) -> Result:
        self.calls += 1
        name = f"{app_obj['metadata']['name']}-secrets"
        if self.hash is None:
            cond = Condition(
                type="SecretsSynced",
                status="False",
                reason="KeyVaultUnavailable",
                message="vault unreachable",
            )
            return Result(name, None, False, cond)
        cond = Condition(type="SecretsSynced", status="True", reason="Synced", message="2 secrets")
        return Result(name, self.hash, True, cond)

    async def forget_app(self, namespace: str, name: str) -> None:
        self.forgotten.append((namespace, name))


@dataclass
class Setup:
    cluster: Cluster
    fake: FakeSecrets
    dev: str  # the module's Environment (named per module: see harness)
    ns: str


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def setup(operator_cluster: Cluster) -> AsyncIterator[Setup]:
    fake = FakeSecrets()
    cluster = operator_cluster
    dev = cluster.env_name("dev")
    ns = f"choreo-{dev}"

    def factory(_: KubeClient) -> FakeSecrets:
        return fake

    async with running_operator(cluster, secrets_factory=factory):
        kv = {"url": "https://vault.example.net/"}
        await cluster.kube.apply(environment(dev, keyVault=kv), "test")
        await eventually(lambda: cluster.kube.get(R.NAMESPACES, ns), what="namespace")
        yield Setup(cluster, fake, dev, ns)


async def _status(kube: KubeClient, name: str, ns: str) -> dict[str, Any]:
    app = await kube.get(R.CHOREOAPPS, name, ns)
    assert app is not None
    return app.get("status") or {}


async def test_secrets_gate_the_workload_and_roll_it(setup: Setup) -> None:
    fake, ns = setup.fake, setup.ns
    kube = setup.cluster.kube
    secrets = [{"name": "DB_PASSWORD", "keyVaultSecret": "db-password"}]
    await kube.apply(choreoapp("vaulted", setup.dev, type="worker", secrets=secrets), "test")

    async def degraded() -> bool:
        s = await _status(kube, "vaulted", ns)
        return s.get("phase") == "Degraded" and "vault unreachable" in (s.get("message") or "")

    await eventually(degraded, what="Degraded while secrets cannot sync")
    assert await kube.get(R.DEPLOYMENTS, "vaulted", ns) is None
    conds = {c["type"]: c for c in (await _status(kube, "vaulted", ns))["conditions"]}
    assert (
        conds["SecretsSynced"]["status"] == "False"
        and conds["SecretsSynced"]["reason"] == "KeyVaultUnavailable"
    )

    fake.hash = "h1"
    # The syncer announces new values by annotating the app, which wakes the operator.
    await kube.patch(
        R.CHOREOAPPS,
        "vaulted",
        {"metadata": {"annotations": {"choreo.dev/secrets-hash": "h1"}}},
        ns,
    )

    async def ready() -> bool:
        return (await _status(kube, "vaulted", ns)).get("phase") == "Ready"

    await eventually(ready, what="Ready once synced")
    # The reconcile that saw the failure has finished by now (reconciles of one key are serial).
    # The secrets sync posts the Warning for it; the operator must not post a duplicate.
    events, _ = await kube.list(R.EVENTS, ns)
    duplicates = [
        e for e in events if e["involvedObject"]["name"] == "vaulted" and e["reason"] == "KeyVaultUnavailable"
    ]
    assert duplicates == []
    dep = await kube.get(R.DEPLOYMENTS, "vaulted", ns)
    assert dep is not None
    template = dep["spec"]["template"]
    assert template["metadata"]["annotations"]["choreo.dev/secrets-hash"] == "h1"
    ref = template["spec"]["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "vaulted-secrets", "key": "DB_PASSWORD"}

    fake.hash = "h2"
    await kube.patch(
        R.CHOREOAPPS,
        "vaulted",
        {"metadata": {"annotations": {"choreo.dev/secrets-hash": "h2"}}},
        ns,
    )

    async def rolled() -> bool:
        d = await kube.get(R.DEPLOYMENTS, "vaulted", ns)
        return (
            d is not None
            and d["spec"]["template"]["metadata"]["annotations"]["choreo.dev/secrets-hash"] == "h2"
        )

    await eventually(rolled, what="pod template carries the new hash")

    async def rolled_pods() -> bool:
        # The Deployment controller (or the emulator's simulator, its stand-in) replaces the pods.
        pods, _ = await kube.list(R.PODS, ns, label_selector="choreo.dev/app=vaulted")
        hashes = {(p["metadata"].get("annotations") or {}).get("choreo.dev/secrets-hash") for p in pods}
        return hashes == {"h2"} and (await _status(kube, "vaulted", ns)).get("phase") == "Ready"

    await eventually(rolled_pods, what="pods rolled to the new hash and app Ready")
    await kube.delete(R.CHOREOAPPS, "vaulted", ns)
    await eventually(lambda: _forgotten(fake, ns), what="syncer told to forget the app")


async def _forgotten(fake: FakeSecrets, ns: str) -> bool:
    return (ns, "vaulted") in fake.forgotten
