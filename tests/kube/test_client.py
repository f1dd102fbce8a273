"""The asyncio client against the emulated API and the real kube-apiserver: verbs, retries, watch.

``kube_faulty`` runs each test twice: on a fresh emulator (which injects faults itself) and on
the real cluster behind a ``FaultProxy`` (which injects the same rules in front of it).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from choreo_dp.kube import ApiError, Backoff, KubeClient
from choreo_dp.kube import resources as R
from tests.fixtures.kube import FaultyApi


def _cm(name: str, namespace: str, **data: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": data,
    }


async def _client(api: FaultyApi, **kwargs: Any) -> KubeClient:
    return await KubeClient.from_kubeconfig(
        api.kubeconfig_path, backoff=Backoff(base=0.01, cap=0.05), **kwargs
    )


async def test_verbs_round_trip(kube_faulty: FaultyApi) -> None:
    ns = kube_faulty.namespace
    async with await _client(kube_faulty) as kube:
        created = await kube.create(R.CONFIGMAPS, _cm("a", ns, x="1"))
        assert created["metadata"]["uid"]
        applied = await kube.apply(_cm("a", ns, x="2", y="3"), "tester")
        assert applied["data"] == {"x": "2", "y": "3"}
        patched = await kube.patch(R.CONFIGMAPS, "a", {"data": {"y": None}}, ns)
        assert patched["data"] == {"x": "2"}
        items, rv = await kube.list(R.CONFIGMAPS, ns, label_selector={"missing": "label"})
        assert items == [] and rv
        assert await kube.delete(R.CONFIGMAPS, "a", ns) is True
        assert await kube.delete(R.CONFIGMAPS, "a", ns) is False
        assert await kube.get(R.CONFIGMAPS, "a", ns) is None
        # A group every API server serves (the real cluster has no Gateway API CRDs installed).
        assert await kube.served("apps/v1") is True
        assert await kube.served("example.com/v1") is False


async def test_429_is_retried_after_retry_after(kube_faulty: FaultyApi) -> None:
    ns = kube_faulty.namespace
    fault = kube_faulty.faults.add(verb="create", resource="configmaps", status=429, count=2, retry_after=0)
    async with await _client(kube_faulty) as kube:
        await kube.create(R.CONFIGMAPS, _cm("throttled", ns))
        assert fault.hits == 2
        assert await kube.get(R.CONFIGMAPS, "throttled", ns) is not None


async def test_5xx_retries_only_idempotent_verbs(kube_faulty: FaultyApi) -> None:
    ns = kube_faulty.namespace
    get_fault = kube_faulty.faults.add(verb="get", resource="configmaps", status=500, count=2)
    kube_faulty.faults.add(verb="create", resource="configmaps", status=500, count=1)
    async with await _client(kube_faulty) as kube:
        with pytest.raises(ApiError) as info:
            await kube.create(R.CONFIGMAPS, _cm("once", ns))
        assert info.value.status == 500
        await kube.create(R.CONFIGMAPS, _cm("once", ns))
        assert await kube.get(R.CONFIGMAPS, "once", ns) is not None
        assert get_fault.hits == 2


async def test_retries_are_bounded(kube_faulty: FaultyApi) -> None:
    fault = kube_faulty.faults.add(verb="get", resource="configmaps", status=503, count=10)
    async with await _client(kube_faulty, max_retries=2) as kube:
        with pytest.raises(ApiError) as info:
            await kube.get(R.CONFIGMAPS, "any", kube_faulty.namespace)
        assert info.value.retryable and info.value.status == 503
        assert fault.hits == 3  # the first try and two retries


async def test_watch_streams_changes_and_reports_gone(kube_faulty: FaultyApi) -> None:
    ns = kube_faulty.namespace
    async with await _client(kube_faulty) as kube:
        _, rv = await kube.list(R.CONFIGMAPS, ns)
        seen: list[tuple[str, str]] = []

        async def consume() -> None:
            async for etype, obj in kube.watch(R.CONFIGMAPS, ns, resource_version=rv, timeout_seconds=5):
                if etype != "BOOKMARK":
                    seen.append((etype, obj["metadata"]["name"]))
                if len(seen) == 2:
                    return

        task = asyncio.create_task(consume())
        await kube.create(R.CONFIGMAPS, _cm("w", ns))
        await kube.delete(R.CONFIGMAPS, "w", ns)
        await asyncio.wait_for(task, 10)
        assert seen == [("ADDED", "w"), ("DELETED", "w")]


# Emulator only: compaction is forced with a 5-event history.  A real kube-apiserver's watch cache
# keeps events for a time window (and grows to hold them), and where its window starts depends on
# when it was filled: no fast test makes a version expire there deterministically.
@pytest.mark.emulator_only
async def test_watch_from_a_compacted_version_is_gone(tmp_path: Path) -> None:
    from kube_emulator import ApiServer

    async with ApiServer(history_size=5) as srv:
        kube = await KubeClient.from_kubeconfig(srv.write_kubeconfig(tmp_path / "kc"))
        async with kube:
            _, rv = await kube.list(R.CONFIGMAPS, "default")
            for i in range(10):
                await kube.create(R.CONFIGMAPS, _cm(f"c{i}", "default"))
            with pytest.raises(ApiError) as info:
                async for _ in kube.watch(R.CONFIGMAPS, "default", resource_version=rv, timeout_seconds=2):
                    pass
            assert info.value.gone and info.value.reason == "Expired"
            assert info.value.message.startswith(f"too old resource version: {rv} (")
