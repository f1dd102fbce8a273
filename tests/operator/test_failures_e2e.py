"""The operator never lies, end to end through real kopf, on the emulated API and a real cluster.

The module's operator logs in through an exec-only kubeconfig (kopf's own login included), so
every test here also proves that path. A child refused by a ResourceQuota degrades its app with the
API's message; a status field this operator does not know leaves a Ready app Ready; a DataPlane
whose agent stops renewing its heartbeat turns not connected within its bound, and a renewing one
never does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from choreo_dp.kube import resources as R
from tests.operator.exec_login import exec_only_kubeconfig, plugin_runs
from tests.operator.harness import Cluster, choreoapp, environment, eventually, running_operator

pytestmark = [pytest.mark.asyncio(loop_scope="module")]

BOUND = 3  # seconds: the heartbeat bound the test's "agent" publishes
RENEW_EVERY = 1.0


@dataclasses.dataclass
class Module:
    cluster: Cluster
    exec_dir: Path
    dev: str

    @property
    def kube(self) -> Any:
        return self.cluster.kube

    @property
    def ns(self) -> str:
        return f"choreo-{self.dev}"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def module(
    operator_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Module]:
    exec_dir = tmp_path_factory.mktemp("exec-login")
    kubeconfig = exec_only_kubeconfig(operator_cluster.kubeconfig, exec_dir)
    cluster = dataclasses.replace(operator_cluster, kubeconfig=kubeconfig)
    m = Module(operator_cluster, exec_dir, operator_cluster.env_name("dev"))
    async with running_operator(cluster):
        await m.kube.create(R.ENVIRONMENTS, environment(m.dev))
        yield m


async def app_status(m: Module, name: str) -> dict[str, Any]:
    app = await m.kube.get(R.CHOREOAPPS, name, m.ns)
    return dict((app or {}).get("status") or {})


async def wait_phase(m: Module, name: str, phase: str, timeout: float = 30.0) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        app = await m.kube.get(R.CHOREOAPPS, name, m.ns)
        status = (app or {}).get("status") or {}
        ok = (
            status.get("phase") == phase and status.get("observedGeneration") == app["metadata"]["generation"]
        )  # type: ignore[index]
        return status if ok else None

    return await eventually(probe, timeout=timeout, what=f"{name} {phase}")


async def test_the_operator_logs_in_through_an_exec_plugin(module: Module) -> None:
    async def ready() -> bool:
        env = await module.kube.get(R.ENVIRONMENTS, module.dev)
        return ((env or {}).get("status") or {}).get("phase") == "Ready"

    await eventually(ready, timeout=60, what="environment Ready")
    # Our client and kopf's login both ran it (kopf's watches carry its credential).
    assert plugin_runs(module.exec_dir) >= 1


async def test_a_child_refused_by_a_quota_degrades_the_app_until_its_spec_changes(module: Module) -> None:
    m = module
    await eventually(lambda: m.kube.get(R.NAMESPACES, m.ns), timeout=60, what="namespace")
    quota = {
        "metadata": {"name": "no-deployments", "namespace": m.ns},
        "spec": {"hard": {"count/deployments.apps": "0"}},
    }
    await m.kube.create(R.RESOURCEQUOTAS, quota)

    async def enforced() -> bool:
        rq = await m.kube.get(R.RESOURCEQUOTAS, "no-deployments", m.ns)
        return bool(((rq or {}).get("status") or {}).get("hard"))

    await eventually(enforced, timeout=30, what="quota status computed")
    await m.kube.create(R.CHOREOAPPS, choreoapp("refused", m.dev, type="worker"))

    status = await wait_phase(m, "refused", "Degraded")
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "ApplyFailed"
    assert "exceeded quota: no-deployments" in status["message"], status["message"]
    assert "Deployment" in status["message"] and ready["message"] == status["message"]

    async def warned() -> bool:
        events, _ = await m.kube.list(R.EVENTS, m.ns)
        return any(
            e.get("reason") == "ApplyFailed"
            and e.get("type") == "Warning"
            and e["involvedObject"]["name"] == "refused"
            for e in events
        )

    await eventually(warned, timeout=15, what="ApplyFailed Warning Event")

    # The quota goes; the refusal is terminal, so the app waits for its spec to change.
    await m.kube.delete(R.RESOURCEQUOTAS, "no-deployments", m.ns)
    await m.kube.patch(R.CHOREOAPPS, "refused", {"spec": {"image": "registry.example.com/shop/x:2"}}, m.ns)
    await wait_phase(m, "refused", "Ready", timeout=60)


async def test_an_unknown_status_field_leaves_a_ready_app_ready(module: Module) -> None:
    m = module
    await m.kube.create(R.CHOREOAPPS, choreoapp("tolerant", m.dev, type="worker"))
    await wait_phase(m, "tolerant", "Ready", timeout=60)
    await m.kube.patch(
        R.CHOREOAPPS,
        "tolerant",
        {"status": {"rolloutStep": {"weight": 20}}},
        m.ns,
        subresource="status",
    )
    kept = "rolloutStep" in await app_status(m, "tolerant")
    # A spec change: the reconcile that must follow reads the object with the unknown field.
    await m.kube.patch(R.CHOREOAPPS, "tolerant", {"spec": {"env": [{"name": "POKE", "value": "1"}]}}, m.ns)

    status = await wait_phase(m, "tolerant", "Ready", timeout=60)
    assert next(c for c in status["conditions"] if c["type"] == "Ready")["reason"] != "InvalidSpec"
    # Both API servers prune a status field the installed CRD lacks, so through the API the field
    # reaches the operator only when the CRD is newer than the operator (which the chart allows):
    # test_failures_unit.py feeds it such an object directly.
    assert not kept


def now_stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_a_dead_agents_dataplane_turns_not_connected_within_its_bound(module: Module) -> None:
    m = module
    name = f"dp-{m.cluster.suffix}"
    await m.kube.create(
        R.DATAPLANES,
        {
            "apiVersion": "choreo.dev/v1alpha1",
            "kind": "DataPlane",
            "metadata": {"name": name},
            "spec": {"controlPlaneURL": "wss://cp.example.com/tunnel", "dataplaneId": name},
        },
    )

    async def renew() -> dict[str, Any]:
        # What the agent writes while connected (a merge patch of status, as the agent does).
        patch = {
            "status": {"connected": True, "lastHeartbeatTime": now_stamp(), "heartbeatBoundSeconds": BOUND}
        }
        live = await m.kube.patch(R.DATAPLANES, name, patch, subresource="status")
        return dict(live.get("status") or {})

    try:
        # A live agent: renewals keep it connected for twice the bound and more.
        for _ in range(int(3 * BOUND / RENEW_EVERY)):
            await renew()
            await asyncio.sleep(RENEW_EVERY)
            dp = await m.kube.get(R.DATAPLANES, name)
            assert dp["status"]["connected"] is True, dp["status"]  # type: ignore[index]
        # The agent dies: no more renewals.
        last = await renew()
        died = time.monotonic()

        async def disconnected() -> dict[str, Any] | None:
            dp = await m.kube.get(R.DATAPLANES, name)
            status = (dp or {}).get("status") or {}
            return status if status.get("connected") is False else None

        status = await eventually(disconnected, timeout=BOUND + 10, interval=0.1, what="connected false")
        took = time.monotonic() - died
        print(f"[{m.cluster.target}] connected false {took:.2f}s after the last renewal (bound {BOUND}s)")
        assert BOUND - 0.5 <= took <= BOUND + 2.5, took
        conds = {c["type"]: c for c in status["conditions"]}
        assert (conds["Connected"]["status"], conds["Connected"]["reason"]) == ("False", "HeartbeatExpired")
        assert (
            last["lastHeartbeatTime"] in conds["Connected"]["message"]
            and f"{BOUND}s" in conds["Connected"]["message"]
        )
        assert conds["Ready"]["status"] == "Unknown"

        # The agent comes back: connected again, and left so while it renews (no flapping).
        for _ in range(int(2 * BOUND / RENEW_EVERY)):
            await renew()
            await asyncio.sleep(RENEW_EVERY)
            dp = await m.kube.get(R.DATAPLANES, name)
            assert dp["status"]["connected"] is True, dp["status"]  # type: ignore[index]
    finally:
        await m.kube.delete(R.DATAPLANES, name)
