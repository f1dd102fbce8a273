"""Canary rollouts end to end through real kopf, on the emulated API and on a real cluster (issue 17).

No control plane runs in this module: every rollout here (the steps, the gate, the abort, the
resume after an operator restart) is the operator's alone, as it is when the tunnel is down.
Pauses are 1-2 s and the gate is checked every second, so each test takes seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from choreo_dp.kube import resources as R
from choreo_dp.operator import OperatorConfig, run_operator
from tests.operator.harness import Cluster, choreoapp, environment, eventually

pytestmark = [pytest.mark.asyncio(loop_scope="module")]

V1 = "registry.example.com/shop/web:1"
V2 = "registry.example.com/shop/web:2"
GATEWAYS = {"external": {"gatewayName": "external", "gatewayNamespace": "gw", "hostname": "api.example.com"}}
ENDPOINTS = [{"name": "api", "port": 8080, "visibility": "Public"}]
GATE = {"interval": "1s", "failureThreshold": 3}


class Operator:
    """The module's operator, which a test may stop and start again (a restart mid-rollout)."""

    def __init__(self, cluster: Cluster) -> None:
        self.config = OperatorConfig(
            kubeconfig=str(cluster.kubeconfig),
            operator_namespace=cluster.operator_namespace,
            secrets_factory=None,
            env_resync_seconds=5.0,
            progressing_requeue_seconds=5.0,
        )
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._stop = asyncio.Event()
        ready = asyncio.Event()
        self._task = asyncio.create_task(
            run_operator(self.config, self._stop, ready), name="rollout-operator"
        )
        waiter = asyncio.create_task(ready.wait())
        done, _ = await asyncio.wait({self._task, waiter}, timeout=30, return_when="FIRST_COMPLETED")
        waiter.cancel()
        if self._task in done:
            self._task.result()
        assert ready.is_set(), "operator not ready in 30 s"

    async def stop(self) -> None:
        if self._task is None:
            return
        self._stop.set()
        try:
            await asyncio.wait_for(self._task, timeout=20)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None


class Rollouts:
    def __init__(self, cluster: Cluster, operator: Operator) -> None:
        self.c, self.kube, self.operator = cluster, cluster.kube, operator
        self.env = cluster.env_name("canary")
        self.ns = f"choreo-{self.env}"

    async def apply(self, name: str, image: str, rollout: dict[str, Any]) -> None:
        app = choreoapp(name, self.env, image=image, endpoints=ENDPOINTS, replicas=2, rollout=rollout)
        await self.kube.apply(app, "test")

    async def app(self, name: str) -> dict[str, Any]:
        app = await self.kube.get(R.CHOREOAPPS, name, self.ns)
        assert app is not None
        return app

    async def rollout_in(self, name: str, phase: str, timeout: float = 30.0) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            app = await self.app(name)
            status = app.get("status") or {}
            fresh = status.get("observedGeneration") == app["metadata"]["generation"]
            return app if fresh and (status.get("rollout") or {}).get("phase") == phase else None

        try:
            return await eventually(probe, timeout=timeout, what=f"{name} rollout {phase}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; status: {(await self.app(name)).get('status')}") from None

    async def weights(self, name: str) -> dict[str, int | None]:
        route = await self.kube.get(R.HTTPROUTES, f"{name}-api", self.ns)
        assert route is not None
        # Gateway API defaults a backendRef's weight to 1 (a real apiserver writes it; the emulator
        # does not default it): absent means 1.
        return {r["name"]: r.get("weight", 1) for r in route["spec"]["rules"][0]["backendRefs"]}

    async def weights_become(self, name: str, want: dict[str, int | None], timeout: float = 30.0) -> None:
        async def probe() -> bool:
            return await self.weights(name) == want

        await eventually(probe, timeout=timeout, what=f"{name} route weights {want}")

    async def image(self, name: str) -> str | None:
        dep = await self.kube.get(R.DEPLOYMENTS, name, self.ns)
        return None if dep is None else str(dep["spec"]["template"]["spec"]["containers"][0]["image"])

    async def reasons(self, name: str) -> list[tuple[str, str]]:
        events, _ = await self.kube.list(R.EVENTS, self.ns)
        ours = [e for e in events if (e.get("involvedObject") or {}).get("name") == name]
        ours.sort(key=lambda e: (e.get("firstTimestamp") or e.get("eventTime") or "", e["metadata"]["name"]))
        return [(str(e.get("type")), str(e.get("reason"))) for e in ours]

    async def idle_at_v1(self, name: str, rollout: dict[str, Any]) -> None:
        await self.apply(name, V1, rollout)
        app = await self.rollout_in(name, "Idle")

        async def ready() -> bool:
            return (await self.app(name)).get("status", {}).get("phase") == "Ready"

        await eventually(ready, timeout=30, what=f"{name} Ready")
        assert app["status"]["rollout"]["stableRevision"]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def rollouts(operator_cluster: Cluster) -> AsyncIterator[Rollouts]:
    cluster = operator_cluster
    operator = Operator(cluster)
    await operator.start()
    r = Rollouts(cluster, operator)
    try:
        spec = {"gateways": GATEWAYS, "quota": {"cpu": "16", "memory": "16Gi", "pods": 40}}
        await cluster.kube.apply(environment(r.env, **spec), "test")
        await eventually(lambda: cluster.kube.get(R.NAMESPACES, r.ns), what=f"namespace {r.ns}")
        yield r
    finally:
        if operator._task is None:
            await operator.start()  # a failed test may have left it stopped: finalizers need it
        try:
            if cluster.shared:
                await cluster.delete_environments()
        finally:
            await operator.stop()


async def test_two_timed_steps_shift_the_route_weights_and_complete(rollouts: Rollouts) -> None:
    r = rollouts
    steps = [{"weight": 25, "pause": "2s"}, {"weight": 50, "pause": "2s"}]
    rollout = {"strategy": "Canary", "steps": steps, "analysis": GATE}
    await r.idle_at_v1("timed", rollout)
    assert await r.weights("timed") == {"timed": 1}

    await r.apply("timed", V2, rollout)
    await r.weights_become("timed", {"timed-stable": 75, "timed-canary": 25})
    assert await r.image("timed") == V1 and await r.image("timed-canary") == V2

    # The status is written after the children in the same reconcile: the route can show the step
    # a moment before the status does.
    async def at_25() -> bool:
        summary = (((await r.app("timed")).get("status") or {}).get("rollout") or {}).get("summary")
        return str(summary).startswith("Canary 25%")

    await eventually(at_25, what="status.rollout.summary Canary 25%")
    await r.weights_become("timed", {"timed-stable": 50, "timed-canary": 50})
    assert await r.image("timed") == V1

    app = await r.rollout_in("timed", "Completed")
    assert app["status"]["rollout"]["stableRevision"] == app["status"]["rollout"]["canaryRevision"]
    assert await r.image("timed") == V2
    await r.weights_become("timed", {"timed": 1})

    async def canary_gone() -> bool:
        return await r.kube.get(R.DEPLOYMENTS, "timed-canary", r.ns) is None

    await eventually(canary_gone, what="canary Deployment removed")

    async def ready_on_v2() -> bool:
        status = (await r.app("timed")).get("status") or {}
        return status.get("phase") == "Ready" and str(status.get("image", "")).startswith(V2.split(":")[0])

    await eventually(ready_on_v2, timeout=30, what="timed Ready on v2")
    reasons = [reason for _, reason in await r.reasons("timed")]
    for want in ("RolloutStarted", "RolloutStepAdvanced", "RolloutPromoting", "RolloutCompleted"):
        assert want in reasons, reasons


async def test_a_canary_failing_readiness_aborts_by_itself(rollouts: Rollouts) -> None:
    """No control plane in this module: the operator alone aborts."""
    r = rollouts
    rollout = {"strategy": "Canary", "steps": [{"weight": 50, "pause": "5m"}], "analysis": GATE}
    await r.idle_at_v1("crashy", rollout)
    await r.apply("crashy", V2, rollout)
    await r.weights_become("crashy", {"crashy-stable": 50, "crashy-canary": 50})
    await r.c.fail_pods(r.ns, "crashy-canary", "CrashLoopBackOff")

    app = await r.rollout_in("crashy", "Aborted")
    rollout_status = app["status"]["rollout"]
    assert rollout_status["weight"] == 0 and rollout_status["summary"] == "Aborted"
    assert "canary readiness" in rollout_status["message"]
    await r.weights_become("crashy", {"crashy-stable": 100, "crashy-canary": 0})
    canary = await r.kube.get(R.DEPLOYMENTS, "crashy-canary", r.ns)
    assert canary is not None and canary["spec"]["replicas"] == 0
    assert await r.image("crashy") == V1

    async def degraded() -> dict[str, Any] | None:
        status = (await r.app("crashy")).get("status") or {}
        return status if status.get("phase") == "Degraded" else None

    status = await eventually(degraded, what="crashy Degraded")
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "RolloutAborted" and "canary readiness" in status["message"]

    async def warned() -> bool:
        return ("Warning", "RolloutAborted") in await r.reasons("crashy")

    await eventually(warned, what="a Warning RolloutAborted Event")
    assert [x for x in await r.reasons("crashy") if x == ("Warning", "RolloutAborted")] == [
        ("Warning", "RolloutAborted")
    ]


async def test_manual_pause_survives_an_operator_restart_and_a_promote_completes_it(
    rollouts: Rollouts,
) -> None:
    r = rollouts
    steps = [{"weight": 25, "pause": "manual"}, {"weight": 50, "pause": "1s"}]
    rollout = {"strategy": "Canary", "steps": steps, "analysis": GATE}
    await r.idle_at_v1("manual", rollout)
    await r.apply("manual", V2, rollout)
    paused = (await r.rollout_in("manual", "Paused"))["status"]["rollout"]
    assert paused["summary"] == "Canary 25% paused" and "spec.rollout.promote to 1" in paused["message"]

    await r.operator.stop()
    await r.operator.start()
    # A new process resumes from status.rollout: the same rollout, still paused, stable untouched.
    await r.weights_become("manual", {"manual-stable": 75, "manual-canary": 25})
    assert await r.image("manual") == V1

    await r.apply("manual", V2, {**rollout, "promote": 1})
    await r.weights_become("manual", {"manual-stable": 50, "manual-canary": 50})
    done = (await r.rollout_in("manual", "Completed"))["status"]["rollout"]
    assert done["startedAt"] == paused["startedAt"]  # resumed, never restarted
    assert await r.image("manual") == V2
    reasons = [reason for _, reason in await r.reasons("manual")]
    assert reasons.count("RolloutStarted") == 1, reasons
