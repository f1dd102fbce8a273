"""A restarted operator never renders a caller without its target (real kopf, emulator and real cluster).

After a restart the operator lists every ChoreoApp; a caller reconciled while its target was not yet
in the cache would lose its connection's variables and label (a rollout of every caller on every
restart) and its ingress NetworkPolicy (deleted, then created again: traffic cut meanwhile). The
cache-sync gate (``Controller._wait_for_cache_sync``) holds the workers until the listing is done.

The proof: with both apps Ready and the connection resolved, stop the operator, start a new one, and
wait until the new operator has *finished a reconcile* of the caller and of the target (observed by
wrapping the reconciler the new controller registers: a reconcile that writes nothing leaves no
trace in the cluster, so no cluster-side signal could tell it ran). Then the caller's ChoreoApp
(resourceVersion and status: no status write, not even one undone later), its Deployment generation,
pod-template annotations, labels and variables, the target's Deployment generation and the policy's
uid are what they were. With the gate removed this fails on both API servers: the new operator
reconciles the caller before its cache is filled and rewrites its status.

The caller's name sorts before the target's, and filler apps sort between them, so the listing
(in key order, on both API servers) hands the caller to the operator well before its target: the
order in which a missing gate does harm.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from choreo_dp.kube import resources as R
from choreo_dp.operator import runner
from choreo_dp.operator.config import OperatorConfig
from choreo_dp.operator.controller import Controller
from choreo_dp.operator.keys import AppKey
from choreo_dp.operator.reconcile import ReconcileContext, Result
from choreo_dp.render.labels import APP_LABEL
from tests.operator.harness import Cluster, choreoapp, environment, eventually, running_operator

pytestmark = [pytest.mark.asyncio(loop_scope="module")]

CALLER = "a-front"  # sorts first
TARGET = "z-api"  # sorts last
FILLERS = [f"m-filler-{i}" for i in range(6)]
POLICY = f"choreo-conn-{CALLER}.api"
CONNECTION = {"name": "api", "app": TARGET, "endpoint": "http"}


@contextlib.asynccontextmanager
async def operator_until_stopped(cluster: Cluster) -> AsyncIterator[None]:
    """An operator that is stopped at the end of the block and leaves everything it made in place
    (``running_operator`` deletes the module's Environments when it ends on the shared cluster)."""
    config = OperatorConfig(
        kubeconfig=str(cluster.kubeconfig),
        operator_namespace=cluster.operator_namespace,
        secrets_factory=None,
        env_resync_seconds=5.0,
        progressing_requeue_seconds=5.0,
    )
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(runner.run_operator(config, stop, ready), name="operator-before-restart")
    try:
        done, _ = await asyncio.wait(
            {task, asyncio.create_task(ready.wait())}, timeout=30, return_when="FIRST_COMPLETED"
        )
        if task in done:
            task.result()
        yield
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, timeout=20)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class Reconciles:
    """The app keys the next controller built has finished reconciling (without an error)."""

    def __init__(self) -> None:
        self.done: list[AppKey] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real_new_controller = runner.new_controller

        def spying_new_controller(*args: Any) -> Controller:
            ctl = real_new_controller(*args)
            reconcile = ctl._reconcilers[AppKey]

            async def recorded(ctx: ReconcileContext, key: AppKey) -> Result:
                result = await reconcile(ctx, key)
                self.done.append(key)
                return result

            ctl.register(AppKey, recorded)
            return ctl

        monkeypatch.setattr(runner, "new_controller", spying_new_controller)


def ready_and_resolved(app: dict[str, Any]) -> bool:
    status = app.get("status") or {}
    current = status.get("observedGeneration") == app["metadata"].get("generation")
    conns = status.get("connections") or []
    return current and status.get("phase") == "Ready" and all(c.get("resolved") for c in conns)


async def snapshot(kube: Any, ns: str) -> dict[str, Any]:
    """What a restart must not touch: the caller's Deployment and pod template, and its policy."""
    caller = await kube.get(R.CHOREOAPPS, CALLER, ns)
    dep = await kube.get(R.DEPLOYMENTS, CALLER, ns)
    target_dep = await kube.get(R.DEPLOYMENTS, TARGET, ns)
    assert caller is not None and dep is not None and target_dep is not None
    policies, _ = await kube.list(R.NETWORKPOLICIES, ns, label_selector=f"{APP_LABEL}={CALLER}")
    template = dep["spec"]["template"]["metadata"]
    return {
        # The caller whole, resourceVersion and managedFields included: a status write, even one
        # undone by the next reconcile (a Ready condition's new lastTransitionTime, the control
        # plane told Pending meanwhile), moves its resourceVersion; a failure prints the diff.
        "caller": caller,
        "generation": dep["metadata"]["generation"],
        "annotations": template.get("annotations") or {},
        "labels": template.get("labels") or {},
        "env": {
            e["name"]: e.get("value")
            for e in dep["spec"]["template"]["spec"]["containers"][0].get("env") or []
        },
        "target generation": target_dep["metadata"]["generation"],
        "policies": {p["metadata"]["name"]: p["metadata"]["uid"] for p in policies},
    }


def changed(before: dict[str, Any], after: dict[str, Any]) -> str:
    """A unified diff of two bodies: which write moved the resourceVersion (a field manager, a
    timestamp in managedFields, an annotation) is the question a failure has to answer."""
    a = json.dumps(before, indent=1, sort_keys=True).splitlines()
    b = json.dumps(after, indent=1, sort_keys=True).splitlines()
    return "\n".join(difflib.unified_diff(a, b, "before", "after", lineterm=""))


async def test_a_restart_never_renders_the_caller_without_its_target(
    operator_cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = operator_cluster
    kube = cluster.kube
    env = cluster.env_name("restart")
    ns = f"choreo-{env}"

    async def app(name: str) -> dict[str, Any] | None:
        return await kube.get(R.CHOREOAPPS, name, ns)

    async def all_ready() -> bool:
        apps = [await app(n) for n in (CALLER, TARGET, *FILLERS)]
        return all(a is not None and ready_and_resolved(a) for a in apps)

    async with operator_until_stopped(cluster):
        await kube.apply(environment(env, quota={"cpu": "16", "memory": "16Gi", "pods": 40}), "test")
        await eventually(lambda: kube.get(R.NAMESPACES, ns), what=f"namespace {ns}")
        await kube.apply(
            choreoapp(TARGET, env, endpoints=[{"name": "http", "port": 8080, "visibility": "Project"}]),
            "test",
        )
        for name in FILLERS:
            await kube.apply(choreoapp(name, env), "test")
        await kube.apply(choreoapp(CALLER, env, connections=[CONNECTION]), "test")
        await eventually(all_ready, timeout=60, what="every app Ready, the connection resolved")
    # Taken once the first operator has stopped: a write it still had in flight when the apps got
    # Ready (a status it computed from a cache one event behind) is its own, not the restart's.
    before = await snapshot(kube, ns)
    assert set(before["policies"]) == {POLICY} and "API_URL" in before["env"], before

    reconciles = Reconciles()
    reconciles.install(monkeypatch)
    async with running_operator(cluster):
        # Done, not started: every write of the new operator's reconcile has been answered.
        wanted = {AppKey(ns, CALLER), AppKey(ns, TARGET)}
        await eventually(
            lambda: wanted <= set(reconciles.done), timeout=30, what="the new operator reconciled both apps"
        )
        after = await snapshot(kube, ns)
        assert after == before, (
            "the restarted operator changed the caller's workload or its opening:\n"
            + changed(before["caller"], after["caller"])
        )
        caller = await app(CALLER)
        assert caller is not None and ready_and_resolved(caller), caller.get("status") if caller else None
