"""The asyncio client against the emulated API: verbs, retries, watch semantics."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from choreo_dp.kube import ApiError, Backoff, KubeClient
from choreo_dp.kube import resources as R

pytestmark = pytest.mark.emulator_only


def _cm(name: str, **data: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default"},
        "data": data,
    }


async def _client(srv: Any, **kwargs: Any) -> KubeClient:
    return await KubeClient.from_kubeconfig(
        srv.kubeconfig_path, backoff=Backoff(base=0.01, cap=0.05), **kwargs
    )


async def test_verbs_round_trip(kube_emulator: Any) -> None:
    async with await _client(kube_emulator) as kube:
        created = await kube.create(R.CONFIGMAPS, _cm("a", x="1"))
        assert created["metadata"]["uid"]
        applied = await kube.apply(_cm("a", x="2", y="3"), "tester")
        assert applied["data"] == {"x": "2", "y": "3"}
        patched = await kube.patch(R.CONFIGMAPS, "a", {"data": {"y": None}}, "default")
        assert patched["data"] == {"x": "2"}
        items, rv = await kube.list(R.CONFIGMAPS, "default", label_selector={"missing": "label"})
        assert items == [] and rv
        assert await kube.delete(R.CONFIGMAPS, "a", "default") is True
        assert await kube.delete(R.CONFIGMAPS, "a", "default") is False
        assert await kube.get(R.CONFIGMAPS, "a", "default") is None
        assert await kube.served("gateway.networking.k8s.io/v1") is True
        assert await kube.served("example.com/v1") is False


async def test_429_is_retried_after_retry_after(kube_emulator: Any) -> None:
    kube_emulator.faults.add(verb="create", resource="configmaps", status=429, count=2, retry_after=0)
    async with await _client(kube_emulator) as kube:
        await kube.create(R.CONFIGMAPS, _cm("throttled"))
        assert await kube.get(R.CONFIGMAPS, "throttled", "default") is not None


async def test_5xx_retries_only_idempotent_verbs(kube_emulator: Any) -> None:
    kube_emulator.faults.add(verb="get", resource="configmaps", status=500, count=2)
    kube_emulator.faults.add(verb="create", resource="configmaps", status=500, count=1)
    async with await _client(kube_emulator) as kube:
        with pytest.raises(ApiError) as info:
            await kube.create(R.CONFIGMAPS, _cm("once"))
        assert info.value.status == 500
        await kube.create(R.CONFIGMAPS, _cm("once"))
        assert await kube.get(R.CONFIGMAPS, "once", "default") is not None


async def test_retries_are_bounded(kube_emulator: Any) -> None:
    kube_emulator.faults.add(verb="get", resource="configmaps", status=503, count=10)
    async with await _client(kube_emulator, max_retries=2) as kube:
        with pytest.raises(ApiError) as info:
            await kube.get(R.CONFIGMAPS, "any", "default")
        assert info.value.retryable


async def test_watch_streams_changes_and_reports_gone(kube_emulator: Any) -> None:
    async with await _client(kube_emulator) as kube:
        _, rv = await kube.list(R.CONFIGMAPS, "default")
        seen: list[tuple[str, str]] = []

        async def consume() -> None:
            async for etype, obj in kube.watch(
                R.CONFIGMAPS, "default", resource_version=rv, timeout_seconds=5
            ):
                if etype != "BOOKMARK":
                    seen.append((etype, obj["metadata"]["name"]))
                if len(seen) == 2:
                    return

        task = asyncio.create_task(consume())
        await kube.create(R.CONFIGMAPS, _cm("w"))
        await kube.delete(R.CONFIGMAPS, "w", "default")
        await asyncio.wait_for(task, 10)
        assert seen == [("ADDED", "w"), ("DELETED", "w")]


async def test_watch_from_a_compacted_version_is_gone(tmp_path: Path) -> None:
    from choreo_dp.sandbox.apiserver import ApiServer

    async with ApiServer(history_size=5) as srv:
        kube = await KubeClient.from_kubeconfig(srv.write_kubeconfig(tmp_path / "kc"))
        async with kube:
            _, rv = await kube.list(R.CONFIGMAPS, "default")
            for i in range(10):
                await kube.create(R.CONFIGMAPS, _cm(f"c{i}"))
            with pytest.raises(ApiError) as info:
                async for _ in kube.watch(R.CONFIGMAPS, "default", resource_version=rv, timeout_seconds=2):
                    pass
            assert info.value.gone
