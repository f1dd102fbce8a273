"""Key Vault secret sync at scale, against the HTTPS fakes and the emulated Kubernetes API.

N apps x 5 secrets (quick: 200 apps, --full: 1,000). Each app references 1 secret shared by everyone,
2 shared within its project (20 projects), 1 of its own and 1 of its own pinned to a version, so the
distinct secret versions are ``1 + 2*20 + 2*N`` while the references are ``5*N``.

Figures:
- baseline: the same references read the naive way (one bare ``SecretClient.get_secret`` per app per
  reference, same concurrency limit), measured in this run;
- time until every app's Secret is written (``sync_app`` for all apps at once), peak concurrent
  requests at the fake vault, Key Vault reads issued;
- one refresh cycle: reads issued (must equal the distinct versions) and its duration.
The fake vault adds 10 ms to every request to stand in for the network.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from azure.identity.aio import WorkloadIdentityCredential
from azure.keyvault.secrets.aio import SecretClient

from choreo_dp.api import Environment
from choreo_dp.api.crdgen import all_crds
from choreo_dp.kube import KubeClient
from choreo_dp.kube import resources as R
from choreo_dp.secrets import SecretSyncer, TransportSettings
from kube_emulator import ApiServer
from tests.fakes_azure import FakeEntra, FakeKeyVault, FakePki, loopback_localhost_names
from tests.fakes_azure.keyvault import random_secret_value

TENANT = str(uuid.UUID(int=0xA))
CLIENT = str(uuid.UUID(int=0xA1))
PROJECTS = 20
CONCURRENCY = 16
LATENCY = 0.01


def _refs(i: int, pinned: str) -> list[dict[str, str]]:
    project = i % PROJECTS
    return [
        {"name": "GLOBAL", "keyVaultSecret": "global"},
        {"name": "PROJECT_DB", "keyVaultSecret": f"p{project}-db"},
        {"name": "PROJECT_API", "keyVaultSecret": f"p{project}-api"},
        {"name": "OWN", "keyVaultSecret": f"app{i}-own"},
        {"name": "OWN_PINNED", "keyVaultSecret": f"app{i}-pinned", "version": pinned},
    ]


async def _baseline(
    kv: FakeKeyVault, url: str, ca: str, refs: list[list[dict[str, str]]]
) -> tuple[float, int]:
    """Every reference read with a bare SecretClient, 16 at a time (no cache, no dedupe)."""
    credential = WorkloadIdentityCredential(connection_verify=ca)
    client = SecretClient(url, credential, connection_verify=ca)
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(ref: dict[str, str]) -> None:
        async with sem:
            await client.get_secret(ref["keyVaultSecret"], ref.get("version"))

    try:
        await one(refs[0][0])  # challenge + token outside the timing, as for the syncer's warm-up
        kv.reset_stats()
        t0 = time.perf_counter()
        await asyncio.gather(*(one(r) for app in refs for r in app))
        return time.perf_counter() - t0, kv.authorized_reads
    finally:
        await client.close()
        await credential.close()


async def run(quick: bool) -> dict[str, Any]:
    apps_n = 200 if quick else 1000
    saved = {
        k: os.environ.get(k)
        for k in ("AZURE_FEDERATED_TOKEN_FILE", "AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_AUTHORITY_HOST")
    }
    with tempfile.TemporaryDirectory() as tmp, loopback_localhost_names():
        pki = FakePki(Path(tmp), ["kv-bench.localhost"])
        entra = await FakeEntra(pki.server_context()).start()
        kv = await FakeKeyVault(entra, pki.server_context()).start()
        srv = await ApiServer(port=0).__aenter__()
        kube = await KubeClient.from_kubeconfig(srv.write_kubeconfig(Path(tmp) / "kubeconfig"))
        syncer: SecretSyncer | None = None
        try:
            token = "bench-sa-token-" + uuid.uuid4().hex
            (Path(tmp) / "token").write_text(token)
            entra.trust(TENANT, CLIENT, token)
            os.environ.update(
                AZURE_FEDERATED_TOKEN_FILE=str(Path(tmp) / "token"),
                AZURE_CLIENT_ID=CLIENT,
                AZURE_TENANT_ID=TENANT,
                AZURE_AUTHORITY_HOST=entra.authority,
            )
            vault = kv.add_vault("kv-bench", TENANT, {CLIENT})
            vault.set_secret("global", random_secret_value())
            for p in range(PROJECTS):
                vault.set_secret(f"p{p}-db", random_secret_value())
                vault.set_secret(f"p{p}-api", random_secret_value())
            refs = []
            for i in range(apps_n):
                vault.set_secret(f"app{i}-own", random_secret_value())
                pinned = vault.set_secret(f"app{i}-pinned", random_secret_value())
                vault.set_secret(f"app{i}-pinned", random_secret_value())  # a newer latest
                refs.append(_refs(i, pinned))
            distinct = len({(r["keyVaultSecret"], r.get("version", "")) for app in refs for r in app})
            kv.delay = LATENCY
            url = kv.url("kv-bench")
            ca = str(pki.ca_path)

            baseline_s, baseline_reads = await _baseline(kv, url, ca, refs)

            for crd in all_crds().values():
                await kube.create(R.CRDS, crd)
            env = Environment.model_validate(
                {
                    "apiVersion": "choreo.dev/v1alpha1",
                    "kind": "Environment",
                    "metadata": {"name": "bench"},
                    "spec": {"keyVault": {"url": url}},
                }
            )
            ns = env.target_namespace
            await kube.create(
                R.NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
            )
            sem = asyncio.Semaphore(32)

            async def create(i: int) -> dict[str, Any]:
                body = {
                    "apiVersion": "choreo.dev/v1alpha1",
                    "kind": "ChoreoApp",
                    "metadata": {"name": f"app{i}", "namespace": ns},
                    "spec": {
                        "environment": "bench",
                        "project": f"p{i % PROJECTS}",
                        "type": "worker",
                        "image": "registry.example/bench:1",
                        "secrets": refs[i],
                    },
                }
                async with sem:
                    created: dict[str, Any] = await kube.create(R.CHOREOAPPS, body, ns)
                    return created

            app_objs = await asyncio.gather(*(create(i) for i in range(apps_n)))

            syncer = SecretSyncer(
                kube, max_concurrency=CONCURRENCY, transport=TransportSettings(connection_verify=ca)
            )
            kv.reset_stats()
            tokens_before = len(entra.requests)
            t0 = time.perf_counter()
            results = await asyncio.gather(*(syncer.sync_app(a, env) for a in app_objs))
            sync_s = time.perf_counter() - t0
            if not all(r.ready for r in results):
                raise RuntimeError("not every app synced")
            sync_reads, peak = kv.authorized_reads, kv.peak_in_flight
            challenges, tokens = kv.challenges, len(entra.requests) - tokens_before

            kv.reset_stats()
            t0 = time.perf_counter()
            await syncer.refresh()
            cycle_s = time.perf_counter() - t0
            cycle_reads = kv.authorized_reads
            if cycle_reads != distinct:
                raise RuntimeError(f"refresh cycle made {cycle_reads} reads for {distinct} distinct versions")

            return {
                "apps": apps_n,
                "secret_refs": apps_n * 5,
                "distinct_secret_versions": distinct,
                "fake_latency_ms": LATENCY * 1000,
                "baseline_naive_reads": baseline_reads,
                "baseline_naive_seconds": round(baseline_s, 3),
                "time_to_all_synced_seconds": round(sync_s, 3),
                "time_to_all_synced_vs_baseline": round(sync_s / baseline_s, 3),
                "sync_keyvault_reads": sync_reads,
                "sync_reads_vs_baseline": round(sync_reads / baseline_reads, 3),
                "peak_concurrent_requests_at_vault": peak,
                # the SDK caches the vault's challenge per process, so the baseline already paid it
                "sync_challenges_401": challenges,
                "sync_token_requests": tokens,
                "refresh_cycle_reads": cycle_reads,
                "refresh_cycle_seconds": round(cycle_s, 3),
                "refresh_cycle_reads_per_distinct_version": round(cycle_reads / distinct, 3),
            }
        finally:
            if syncer is not None:
                await syncer.close()
            await kube.close()
            await srv.__aexit__(None, None, None)
            await kv.stop()
            await entra.stop()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
