"""The canary rollout step of the app reconciler against the in-memory fake client, with a driven clock.

A tiny kubelet and Deployment controller (``Rig.kubelet``) give every Deployment its pods and
status, so the reconciler sees what it would see on a cluster; the clock and the canary's HTTP
check are the context's ``rollout_probe``. The HTTP GET itself is tested on loopback.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from choreo_dp.api.vocabulary import TEMPLATE_HASH_ANNOTATION, TRACK_LABEL
from choreo_dp.kube import resources as R
from choreo_dp.operator import app_reconciler, env_reconciler
from choreo_dp.operator.config import OperatorConfig
from choreo_dp.operator.keys import AppKey, EnvKey
from choreo_dp.operator.manager import new_controller
from choreo_dp.operator.reconcile import ReconcileContext, Result
from choreo_dp.operator.rollout_probe import RolloutProbe, aiohttp_get
from choreo_dp.render import ClusterCapabilities
from choreo_dp.render.rollout_plan import HttpCheckResult
from tests.operator.fake_kube import FakeKube
from tests.operator.harness import choreoapp, environment

GATEWAY = ClusterCapabilities(gateway_api=True)
NS = "choreo-dev"
V1 = "registry.example.com/shop/web:1"
V2 = "registry.example.com/shop/web:2"
GATEWAYS = {"external": {"gatewayName": "external", "gatewayNamespace": "gw", "hostname": "api.example.com"}}
ENDPOINTS = [{"name": "api", "port": 8080, "visibility": "Public"}]
TWO_TIMED = {
    "strategy": "Canary",
    "steps": [{"weight": 25, "pause": "2s"}, {"weight": 50, "pause": "2s"}],
    "analysis": {"interval": "1s", "failureThreshold": 2},
}


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Http:
    """The canary Service as the HTTP check sees it."""

    def __init__(self) -> None:
        self.status = 200
        self.urls: list[str] = []

    async def __call__(self, url: str) -> HttpCheckResult:
        self.urls.append(url)
        return HttpCheckResult(200 <= self.status < 300, f"GET {url}: {self.status}")


class Rig:
    def __init__(
        self, kube: FakeKube | None = None, clock: Clock | None = None, caps: ClusterCapabilities = GATEWAY
    ) -> None:
        self.kube = kube or FakeKube()
        self.clock = clock or Clock()
        self.http = Http()
        self.ctl = new_controller(self.kube, OperatorConfig(secrets_factory=None), caps, None)
        self.ctx: ReconcileContext = dataclasses.replace(
            self.ctl.context, rollout_probe=RolloutProbe(get=self.http, now=self.clock)
        )
        self.key = AppKey(NS, "web")
        self.crashing: set[str] = set()  # Deployments whose pods crash-loop
        self.restarts: dict[str, int] = {}  # Deployment -> restartCount of its pods

    def observe(self, *, skip: tuple[str, ...] = ()) -> None:
        for (plural, _, _), obj in list(self.kube.objects.items()):
            if plural in skip:
                continue
            body = copy.deepcopy(obj)
            if plural == "environments":
                self.ctl.on_env_event("MODIFIED", body)
            elif plural == "choreoapps":
                self.ctl.on_app_event("MODIFIED", body)
            elif plural == "pods":
                self.ctl.on_pod_event("MODIFIED", body)
            else:
                self.ctl.on_child_event("MODIFIED", body)

    async def start(self, **spec: Any) -> None:
        self.kube.put(R.ENVIRONMENTS, environment("dev", gateways=GATEWAYS))
        self.observe()
        await env_reconciler.reconcile(self.ctx, EnvKey("dev"))
        self.observe()
        spec = {"image": V1, "endpoints": ENDPOINTS, "replicas": 2, "rollout": TWO_TIMED, **spec}
        self.kube.put(R.CHOREOAPPS, choreoapp("web", "dev", **spec))
        self.observe()

    def edit(self, **spec: Any) -> None:
        """A new desired spec (the agent's write): the generation moves."""
        app = copy.deepcopy(self.kube.stored(R.CHOREOAPPS, "web", NS))
        assert app is not None
        app["spec"].update(spec)
        app["metadata"]["generation"] += 1
        self.kube.objects[("choreoapps", NS, "web")] = app
        self.observe()

    async def reconcile(self) -> Result:
        result = await app_reconciler.reconcile(self.ctx, self.key)
        self.kubelet()
        self.observe()
        return result

    def kubelet(self) -> None:
        """Every Deployment gets its replicas as pods (Ready unless crash-looping) and a status."""
        deployments = [o for (p, _, _), o in self.kube.objects.items() if p == "deployments"]
        wanted: set[str] = set()
        for dep in deployments:
            name, template = dep["metadata"]["name"], dep["spec"]["template"]
            replicas = int(dep["spec"].get("replicas", 1))
            crashing = name in self.crashing
            for i in range(replicas):
                pod_name = f"{name}-g{dep['metadata']['generation']}-{i}"
                wanted.add(pod_name)
                image = template["spec"]["containers"][0]["image"]
                state = {"waiting": {"reason": "CrashLoopBackOff"}} if crashing else {"running": {}}
                pod = {
                    "metadata": {"name": pod_name, "namespace": NS, "labels": template["metadata"]["labels"]},
                    "spec": {"containers": [{"name": "app", "image": image}]},
                    "status": {
                        "containerStatuses": [
                            {
                                "name": "app",
                                "ready": not crashing,
                                "restartCount": 3 if crashing else self.restarts.get(name, 0),
                                "imageID": f"{image.split(':')[0]}@sha256:{'a' * 64}",
                                "state": state,
                            }
                        ]
                    },
                }
                self.kube.objects[("pods", NS, pod_name)] = pod
            ready = 0 if crashing else replicas
            dep["status"] = {
                "observedGeneration": dep["metadata"]["generation"],
                "replicas": replicas,
                "updatedReplicas": replicas,
                "readyReplicas": ready,
                "availableReplicas": ready,
            }
        for key in [k for k in self.kube.objects if k[0] == "pods" and k[2] not in wanted]:
            del self.kube.objects[key]
            self.ctl.on_pod_event("DELETED", {"metadata": {"name": key[2], "namespace": NS, "labels": {}}})
            self.ctl.cache.pods[self.key].pop(key[2], None)

    # --- reading what was written ------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        app = self.kube.stored(R.CHOREOAPPS, "web", NS)
        assert app is not None
        return dict(app.get("status") or {})

    def rollout(self) -> dict[str, Any]:
        return dict(self.status().get("rollout") or {})

    def deployment(self, name: str) -> dict[str, Any] | None:
        return self.kube.stored(R.DEPLOYMENTS, name, NS)

    def image(self, name: str) -> str:
        dep = self.deployment(name)
        assert dep is not None
        return str(dep["spec"]["template"]["spec"]["containers"][0]["image"])

    def weights(self) -> dict[str, int | None]:
        route = self.kube.stored(R.HTTPROUTES, "web-api", NS)
        assert route is not None
        refs = route["spec"]["rules"][0]["backendRefs"]
        return {r["name"]: r.get("weight") for r in refs}

    def events(self, type_: str | None = None) -> list[str]:
        return [reason for _, t, reason, _ in self.kube.events if type_ is None or t == type_]


async def _idle_at_v1(rig: Rig, **spec: Any) -> None:
    await rig.start(**spec)
    await rig.reconcile()
    await rig.reconcile()
    assert rig.rollout()["phase"] == "Idle"
    assert rig.status()["phase"] == "Ready"


async def _tick(rig: Rig, seconds: float = 1.0) -> Result:
    rig.clock.advance(seconds)
    return await rig.reconcile()


async def test_two_timed_steps_shift_the_weights_then_promote_and_complete() -> None:
    rig = Rig()
    await _idle_at_v1(rig)
    stable = rig.deployment("web")
    assert stable is not None and stable["metadata"]["labels"][TRACK_LABEL] == "stable"
    v1_hash = stable["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION]
    assert rig.weights() == {"web": None}

    rig.edit(image=V2)
    result = await rig.reconcile()
    rollout = rig.rollout()
    assert (rollout["phase"], rollout["step"], rollout["weight"], rollout["summary"]) == (
        "Progressing",
        1,
        25,
        "Canary 25%",
    )
    assert rollout["stableRevision"] == v1_hash and rollout["canaryRevision"] != v1_hash
    assert rig.image("web") == V1 and rig.image("web-canary") == V2
    assert rig.deployment("web-canary")["spec"]["replicas"] == 1  # type: ignore[index]
    assert rig.weights() == {"web-stable": 75, "web-canary": 25}
    assert result.requeue_after == pytest.approx(1.0)
    status = rig.status()
    assert status["phase"] == "Progressing" and "Canary 25%, step 1/2" in status["message"]
    assert rig.events() == ["RolloutStarted"]

    await _tick(rig)  # the first check passes
    assert rig.rollout()["step"] == 1 and rig.rollout()["lastCheckAt"]
    await _tick(rig)  # the 2 s pause is over and the step's checks held
    assert (rig.rollout()["step"], rig.weights()) == (2, {"web-stable": 50, "web-canary": 50})
    assert "lastCheckAt" not in rig.rollout()  # a new step is judged by its own checks
    assert rig.events()[-1] == "RolloutStepAdvanced"
    await _tick(rig)
    await _tick(rig)
    assert rig.rollout()["phase"] == "Promoting"
    assert rig.image("web") == V2  # the stable Deployment takes the new version
    assert rig.weights() == {"web-stable": 50, "web-canary": 50}  # until it runs everywhere
    await rig.reconcile()  # the kubelet rolled it: complete

    rollout = rig.rollout()
    assert (rollout["phase"], rollout["stableRevision"]) == ("Completed", rollout["canaryRevision"])
    assert "message" not in rollout  # "promoting: ..." is over
    assert rig.deployment("web-canary") is None
    assert rig.weights() == {"web": None}
    assert rig.image("web") == V2 and rig.status()["phase"] == "Ready"
    assert rig.events() == [
        "RolloutStarted",
        "RolloutStepAdvanced",
        "RolloutPromoting",
        "RolloutCompleted",
    ]
    assert rig.events("Warning") == []


async def test_failing_http_check_aborts_with_the_failing_check_and_one_warning() -> None:
    rig = Rig()
    http_rollout = {**TWO_TIMED, "analysis": {**TWO_TIMED["analysis"], "httpGet": {"path": "/healthz"}}}
    await _idle_at_v1(rig, rollout=http_rollout)
    rig.edit(image=V2)
    await rig.reconcile()
    rig.http.status = 503
    await _tick(rig)
    assert rig.rollout()["failures"] == 1 and rig.rollout()["phase"] == "Progressing"
    await _tick(rig)

    rollout = rig.rollout()
    url = "http://web-canary.choreo-dev.svc.cluster.local:8080/healthz"
    assert rig.http.urls and set(rig.http.urls) == {url}
    assert (rollout["phase"], rollout["weight"], rollout["summary"]) == ("Aborted", 0, "Aborted")
    assert f"canary HTTP check: GET {url}: 503" in rollout["message"]
    assert rig.weights() == {"web-stable": 100, "web-canary": 0}
    assert rig.deployment("web-canary")["spec"]["replicas"] == 0  # type: ignore[index]
    assert rig.image("web") == V1
    status = rig.status()
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert status["phase"] == "Degraded" and status["message"] == rollout["message"]
    assert (ready["status"], ready["reason"]) == ("False", "RolloutAborted")
    await _tick(rig)
    await _tick(rig)
    assert rig.events("Warning") == ["RolloutAborted"]  # not repeated, not doubled as "Degraded"
    assert rig.rollout()["phase"] == "Aborted"


async def test_canary_container_restarts_abort() -> None:
    rig = Rig()
    await _idle_at_v1(rig)
    rig.edit(image=V2)
    await rig.reconcile()
    await _tick(rig)
    for restarts in (1, 2):  # restarting again by the next check: two failures in a row
        rig.restarts["web-canary"] = restarts
        rig.kubelet()
        rig.observe()
        await _tick(rig)
    rollout = rig.rollout()
    assert rollout["phase"] == "Aborted" and "canary restarts" in rollout["message"]


async def test_crash_looping_canary_aborts_and_the_stable_side_stays_ready_meanwhile() -> None:
    rig = Rig()
    await _idle_at_v1(rig)
    rig.crashing.add("web-canary")
    rig.edit(image=V2)
    await rig.reconcile()
    # The canary's broken pods are the gate's business, not the stable app's status.
    assert rig.status()["phase"] == "Progressing"
    await _tick(rig)
    await _tick(rig)
    rollout = rig.rollout()
    assert rollout["phase"] == "Aborted"
    assert "canary readiness: 0/1 pods ready" in rollout["message"]
    assert rig.status()["phase"] == "Degraded"


async def test_manual_pause_waits_for_promote_which_is_not_a_new_rollout() -> None:
    rig = Rig()
    manual = {
        "strategy": "Canary",
        "steps": [{"weight": 25, "pause": "manual"}],
        "analysis": {"interval": "1s"},
    }
    await _idle_at_v1(rig, rollout=manual)
    rig.edit(image=V2)
    await rig.reconcile()
    for _ in range(3):
        await _tick(rig, 5)
    rollout = rig.rollout()
    assert (rollout["phase"], rollout["summary"]) == ("Paused", "Canary 25% paused")
    assert "set spec.rollout.promote to 1" in rollout["message"]
    started = rollout["startedAt"]

    rig.edit(rollout={**manual, "promote": 1})
    await _tick(rig)
    assert rig.rollout()["phase"] == "Promoting" and rig.rollout()["startedAt"] == started
    await rig.reconcile()
    assert rig.rollout()["phase"] == "Completed" and rig.image("web") == V2


async def test_abort_in_the_spec_aborts_at_once() -> None:
    rig = Rig()
    await _idle_at_v1(rig)
    rig.edit(image=V2)
    await rig.reconcile()
    rig.edit(rollout={**TWO_TIMED, "abort": True})
    await rig.reconcile()
    rollout = rig.rollout()
    assert rollout["phase"] == "Aborted" and rollout["message"] == "aborted by spec.rollout.abort"
    assert rig.weights() == {"web-stable": 100, "web-canary": 0}


async def test_a_restarted_operator_resumes_from_the_status_without_its_cache() -> None:
    rig = Rig()
    await _idle_at_v1(rig)
    rig.edit(image=V2)
    await rig.reconcile()
    await _tick(rig)
    before = rig.rollout()
    events = len(rig.kube.events)

    # A new process: empty cache and memory; the Deployment watch has not delivered yet.
    fresh = Rig(rig.kube, rig.clock)
    fresh.observe(skip=("deployments",))
    assert fresh.ctl.cache.deployments == {}
    fresh.clock.advance(1)
    calls = len(rig.kube.calls)
    await app_reconciler.reconcile(fresh.ctx, fresh.key)
    assert ("get", "deployments", "web") in [(c.verb, c.plural, c.name) for c in rig.kube.calls[calls:]]

    after = fresh.rollout()
    assert after["startedAt"] == before["startedAt"] and after["stableRevision"] == before["stableRevision"]
    assert after["step"] == 2  # went on from step 1, not from scratch
    assert fresh.image("web") == V1  # the stable side kept (read back from the cluster)
    assert "RolloutStarted" not in [r for _, _, r, _ in rig.kube.events[events:]]


async def test_ingress_only_splits_by_replicas_and_says_it_is_approximate() -> None:
    rig = Rig(caps=ClusterCapabilities(gateway_api=False))
    await _idle_at_v1(rig, replicas=4)
    rig.edit(image=V2)
    await rig.reconcile()
    await _tick(rig)
    rollout = rig.rollout()
    assert rollout["phase"] == "Progressing" and rollout["weight"] == 25
    assert rollout["message"].startswith("approximate split (Ingress cannot weight traffic): 1 canary and 3")
    assert rig.deployment("web")["spec"]["replicas"] == 3  # type: ignore[index]
    assert rig.deployment("web-canary")["spec"]["replicas"] == 1  # type: ignore[index]
    await _tick(rig)
    assert rig.rollout()["message"].count("approximate split") == 1  # not appended again and again


async def test_back_to_rolling_update_clears_the_rollout_status() -> None:
    rig = Rig()
    await _idle_at_v1(rig)
    rig.edit(rollout=None)
    await rig.reconcile()
    assert "rollout" not in rig.status()
    dep = rig.deployment("web")
    assert dep is not None


# --- the probe ------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def canary_server() -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """A loopback HTTP server standing in for the canary Service."""
    state: dict[str, Any] = {"status": 200, "delay": 0.0, "hits": 0}

    async def health(_: web.Request) -> web.Response:
        state["hits"] += 1
        await asyncio.sleep(state["delay"])
        return web.Response(status=state["status"], text="x")

    app = web.Application()
    app.router.add_get("/healthz", health)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/healthz", state
    finally:
        await runner.cleanup()


async def test_http_get_is_ok_on_2xx_and_says_what_failed_otherwise(
    canary_server: tuple[str, dict[str, Any]],
) -> None:
    url, state = canary_server
    assert await aiohttp_get(url) == HttpCheckResult(True, f"GET {url}: 200")
    state["status"] = 503
    assert await aiohttp_get(url) == HttpCheckResult(False, f"GET {url}: 503")
    state["status"], state["delay"] = 200, 1.0
    slow = await aiohttp_get(url, timeout=0.2)
    assert not slow.ok and slow.detail == f"GET {url}: no answer within 0.2s"
    closed = url.replace(url.split(":")[2].split("/")[0], "1")  # port 1: nothing listens
    refused = await aiohttp_get(closed, timeout=1.0)
    assert not refused.ok and refused.detail.startswith(f"GET {closed}: Client")


async def test_probe_asks_again_only_after_half_an_interval_or_for_a_new_revision(
    canary_server: tuple[str, dict[str, Any]],
) -> None:
    url, state = canary_server
    clock = Clock()
    probe = RolloutProbe(now=clock)
    key = AppKey(NS, "web")
    interval = timedelta(seconds=2)
    assert (await probe.check(key, url, "r1", interval)).ok
    state["status"] = 500
    assert (await probe.check(key, url, "r1", interval)).ok  # the remembered answer
    assert state["hits"] == 1
    assert not (await probe.check(key, url, "r2", interval)).ok  # another canary: asked
    clock.advance(1)
    state["status"] = 200
    assert (await probe.check(key, url, "r2", interval)).ok
    assert state["hits"] == 3
