"""The reconcilers against an in-memory fake client: what they write, what they refuse, what they return.

Objects reach the cache the way they do in production, through the controller's watch handlers
(``Rig.observe``); the reconcilers get only their context. No API server.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from choreo_dp.kube import ApiError
from choreo_dp.kube import resources as R
from choreo_dp.operator import app_reconciler, env_reconciler
from choreo_dp.operator.config import OperatorConfig
from choreo_dp.operator.controller import Controller
from choreo_dp.operator.keys import AppKey, EnvKey
from choreo_dp.operator.manager import new_controller
from choreo_dp.operator.reconcile import DONE, ReconcileContext, Result, TerminalError
from choreo_dp.render import ClusterCapabilities
from choreo_dp.render.labels import ENVIRONMENT_UID_KEY
from tests.operator.fake_kube import FakeKube
from tests.operator.harness import choreoapp, environment

CAPS = ClusterCapabilities(gateway_api=False)


class Rig:
    def __init__(self) -> None:
        self.kube = FakeKube()
        self.config = OperatorConfig(secrets_factory=None, progressing_requeue_seconds=7.0)
        self.ctl = new_controller(self.kube, self.config, CAPS, None)

    @property
    def ctx(self) -> ReconcileContext:
        return self.ctl.context

    def observe(self) -> None:
        """Deliver every stored object as a watch event, the way kopf would."""
        for (plural, _, _), obj in list(self.kube.objects.items()):
            body = copy.deepcopy(obj)
            if plural == "environments":
                self.ctl.on_env_event("MODIFIED", body)
            elif plural == "choreoapps":
                self.ctl.on_app_event("MODIFIED", body)
            elif plural == "pods":
                self.ctl.on_pod_event("MODIFIED", body)
            elif plural == "dataplanes":
                self.ctl.on_dataplane_event("MODIFIED", body)
            else:
                self.ctl.on_child_event("MODIFIED", body)

    async def env(self, name: str, **spec: Any) -> EnvKey:
        self.kube.put(R.ENVIRONMENTS, environment(name, **spec))
        self.observe()
        return EnvKey(name)

    async def ready_env(self, name: str = "dev") -> EnvKey:
        key = await self.env(name)
        assert await env_reconciler.reconcile(self.ctx, key) == DONE
        self.observe()
        return key

    def app(self, name: str, env: str = "dev", **spec: Any) -> AppKey:
        body = choreoapp(name, env, **spec)
        self.kube.put(R.CHOREOAPPS, body)
        self.observe()
        return AppKey(body["metadata"]["namespace"], name)

    def status(self, res: R.Resource, name: str, namespace: str | None = None) -> dict[str, Any]:
        obj = self.kube.stored(res, name, namespace)
        assert obj is not None
        return dict(obj.get("status") or {})


# --- Environment ------------------------------------------------------------------------------


async def test_env_creates_and_marks_its_namespace_and_is_ready() -> None:
    rig = Rig()
    key = await rig.env("dev")
    uid = rig.kube.stored(R.ENVIRONMENTS, "dev")["metadata"]["uid"]  # type: ignore[index]

    assert await env_reconciler.reconcile(rig.ctx, key) == DONE

    ns = rig.kube.stored(R.NAMESPACES, "choreo-dev")
    assert ns is not None and ns["metadata"]["annotations"][ENVIRONMENT_UID_KEY] == uid
    assert [c.verb for c in rig.kube.calls if c.plural == "namespaces" and c.verb != "get"][:2] == [
        "list",
        "create",
    ]
    applied = {c.plural for c in rig.kube.writes if c.verb == "apply"}
    assert {"networkpolicies", "serviceaccounts"} <= applied
    status = rig.status(R.ENVIRONMENTS, "dev")
    assert status["phase"] == "Ready" and status["namespace"] == "choreo-dev"


async def test_env_refuses_a_namespace_it_did_not_create_and_writes_nothing_there() -> None:
    rig = Rig()
    rig.kube.put(R.NAMESPACES, {"metadata": {"name": "choreo-dev", "labels": {"team": "x"}}})
    key = await rig.env("dev")
    before = copy.deepcopy(rig.kube.stored(R.NAMESPACES, "choreo-dev"))

    assert await env_reconciler.reconcile(rig.ctx, key) == DONE

    assert rig.kube.stored(R.NAMESPACES, "choreo-dev") == before
    assert [(c.verb, c.plural, c.subresource) for c in rig.kube.writes] == [
        ("patch", "environments", "status")
    ]
    status = rig.status(R.ENVIRONMENTS, "dev")
    assert status["phase"] == "Failed"
    assert status["conditions"][0]["reason"] == "NamespaceNotOwned"
    assert [e[2] for e in rig.kube.events] == ["NamespaceNotOwned"]


async def test_env_refuses_a_protected_namespace_without_creating_it() -> None:
    rig = Rig()
    key = await rig.env("sys", namespace="kube-system")

    assert await env_reconciler.reconcile(rig.ctx, key) == DONE

    assert rig.kube.stored(R.NAMESPACES, "kube-system") is None
    assert [c.plural for c in rig.kube.writes] == ["environments"]
    assert rig.status(R.ENVIRONMENTS, "sys")["conditions"][0]["reason"] == "NamespaceProtected"


async def test_env_naming_another_environments_namespace_is_a_conflict() -> None:
    rig = Rig()
    await rig.ready_env("dev")
    key = await rig.env("other", namespace="choreo-dev")
    rig.kube.calls.clear()

    assert await env_reconciler.reconcile(rig.ctx, key) == DONE

    assert [c.plural for c in rig.kube.writes] == ["environments"]
    ready = rig.status(R.ENVIRONMENTS, "other")["conditions"][0]
    assert ready["reason"] == "NamespaceConflict" and "'dev'" in ready["message"]


async def test_env_cannot_move_to_another_namespace_and_keeps_the_one_it_owns() -> None:
    rig = Rig()
    key = await rig.ready_env("dev")
    env = rig.kube.stored(R.ENVIRONMENTS, "dev")
    assert env is not None
    env["spec"]["namespace"] = "elsewhere"
    env["metadata"]["generation"] += 1
    rig.observe()

    assert await env_reconciler.reconcile(rig.ctx, key) == DONE

    assert rig.kube.stored(R.NAMESPACES, "elsewhere") is None
    status = rig.status(R.ENVIRONMENTS, "dev")
    assert status["phase"] == "Failed" and status["namespace"] == "choreo-dev"
    assert status["conditions"][0]["reason"] == "NamespaceImmutable"


async def test_env_that_loses_its_namespace_mark_asks_its_apps_to_check_again() -> None:
    rig = Rig()
    key = await rig.ready_env("dev")
    web = rig.app("web")
    # Someone strips the mark: the namespace is no longer this Environment's.
    ns = rig.kube.stored(R.NAMESPACES, "choreo-dev")
    assert ns is not None
    ns["metadata"]["annotations"].pop(ENVIRONMENT_UID_KEY)
    ns["metadata"]["labels"].pop(ENVIRONMENT_UID_KEY, None)
    rig.observe()

    result = await env_reconciler.reconcile(rig.ctx, key)

    assert result == Result(enqueue=(web,))
    assert rig.status(R.ENVIRONMENTS, "dev")["conditions"][0]["reason"] == "NamespaceNotOwned"


# --- ChoreoApp --------------------------------------------------------------------------------


async def test_app_renders_and_applies_its_children_then_requeues_while_progressing() -> None:
    rig = Rig()
    await rig.ready_env()
    key = rig.app("web")
    rig.kube.calls.clear()

    result = await app_reconciler.reconcile(rig.ctx, key)

    # The Deployment has no ready replica yet: look again without waiting for an event.
    assert result == Result(requeue_after=7.0)
    applied = {(c.plural, c.namespace, c.name) for c in rig.kube.writes if c.verb == "apply"}
    assert ("deployments", "choreo-dev", "web") in applied
    status = rig.status(R.CHOREOAPPS, "web", "choreo-dev")
    assert status["phase"] == "Progressing" and status["observedGeneration"] == 1


async def test_app_in_sync_is_not_applied_again() -> None:
    rig = Rig()
    await rig.ready_env()
    key = rig.app("web")
    await app_reconciler.reconcile(rig.ctx, key)
    rig.observe()  # the watch delivers the children we applied and our status write
    rig.kube.calls.clear()

    await app_reconciler.reconcile(rig.ctx, key)

    assert rig.kube.writes == []


async def test_app_reads_its_own_writes_before_the_watch_delivers_them() -> None:
    rig = Rig()
    await rig.ready_env()
    key = rig.app("web")
    await app_reconciler.reconcile(rig.ctx, key)
    rig.kube.calls.clear()

    # No watch event yet for the children or the status: the API's answers stand for them.
    await app_reconciler.reconcile(rig.ctx, key)

    assert rig.kube.writes == []


async def test_app_child_edited_by_hand_is_put_back() -> None:
    rig = Rig()
    await rig.ready_env()
    key = rig.app("web")
    await app_reconciler.reconcile(rig.ctx, key)
    rig.observe()
    deployment = rig.kube.stored(R.DEPLOYMENTS, "web", "choreo-dev")
    assert deployment is not None
    deployment["spec"]["replicas"] = 9
    deployment["metadata"]["generation"] += 1
    rig.observe()  # the watch shows the edit; our earlier answer no longer stands
    rig.kube.calls.clear()

    await app_reconciler.reconcile(rig.ctx, key)

    assert [(c.verb, c.plural) for c in rig.kube.writes if c.verb == "apply"] == [("apply", "deployments")]
    assert rig.kube.stored(R.DEPLOYMENTS, "web", "choreo-dev")["spec"]["replicas"] == 1  # type: ignore[index]


async def test_app_policy_violation_is_failed_with_no_writes_but_its_status() -> None:
    rig = Rig()
    await rig.ready_env()
    key = rig.app("web", image="evil.example.org/x:1")
    rig.kube.calls.clear()

    result = await app_reconciler.reconcile(rig.ctx, key)

    assert result == DONE  # retrying cannot help; the next spec change brings it back
    assert [(c.verb, c.plural, c.subresource) for c in rig.kube.writes] == [("patch", "choreoapps", "status")]
    status = rig.status(R.CHOREOAPPS, "web", "choreo-dev")
    assert status["phase"] == "Failed"
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "ImageNotAllowed"
    assert [e[2] for e in rig.kube.events] == ["ImageNotAllowed"]


async def test_app_in_a_namespace_its_environment_does_not_own_writes_nothing() -> None:
    rig = Rig()
    rig.kube.put(R.NAMESPACES, {"metadata": {"name": "choreo-dev"}})
    await rig.env("dev")
    await env_reconciler.reconcile(rig.ctx, EnvKey("dev"))
    rig.observe()
    key = rig.app("web")
    rig.kube.calls.clear()

    await app_reconciler.reconcile(rig.ctx, key)

    assert [c.plural for c in rig.kube.writes] == ["choreoapps"]
    ready = next(
        c for c in rig.status(R.CHOREOAPPS, "web", "choreo-dev")["conditions"] if c["type"] == "Ready"
    )
    assert ready["reason"] == "NamespaceNotOwned"


async def test_app_without_its_environment_is_pending_and_writes_only_status() -> None:
    rig = Rig()
    key = rig.app("web", env="nowhere")

    result = await app_reconciler.reconcile(rig.ctx, key)

    assert result == Result(requeue_after=7.0)
    assert [c.plural for c in rig.kube.writes] == ["choreoapps"]
    assert rig.status(R.CHOREOAPPS, "web", "choreo-nowhere")["phase"] == "Pending"


async def test_reconcilers_never_write_the_cache() -> None:
    rig = Rig()
    env = await rig.env("dev", deletionPolicy="Retain")
    key = rig.app("web")
    before = copy.deepcopy(rig.ctl.cache)

    # The Environment's finalizer and status, the app's children and status: all written, none
    # of it in the cache until the watch delivers it.
    await env_reconciler.reconcile(rig.ctx, env)
    await app_reconciler.reconcile(rig.ctx, key)
    assert rig.ctl.cache == before
    # The reconcilers read their own writes meanwhile.
    assert rig.ctx.cache.env("dev")["metadata"]["finalizers"] == [env_reconciler.RETAIN_FINALIZER]  # type: ignore[index]
    assert rig.ctx.cache.app(key)["status"]["phase"] == "Progressing"  # type: ignore[index]

    rig.observe()
    assert rig.ctl.cache.envs["dev"]["metadata"]["finalizers"] == [env_reconciler.RETAIN_FINALIZER]


async def test_gone_app_is_done() -> None:
    rig = Rig()
    assert await app_reconciler.reconcile(rig.ctx, AppKey("ns", "gone")) == DONE
    assert rig.kube.calls == []


# --- the controller's handling of results -----------------------------------------------------


async def _run_once(ctl: Controller, key: EnvKey, ran: asyncio.Event) -> None:
    ctl.cache_synced.set()  # the test feeds the queue itself: no listing to wait for
    await ctl.start()
    try:
        ctl.queue.add(key)
        await asyncio.wait_for(ran.wait(), 5)
        # The worker handles the result after the reconciler returns or raises.
        for _ in range(10):
            await asyncio.sleep(0)
    finally:
        await ctl.stop()


async def test_errors_are_retried_with_backoff_but_terminal_errors_are_not() -> None:
    for error, retried in ((ApiError(500, "InternalError"), True), (TerminalError("bad"), False)):
        ctl = Controller(FakeKube(), OperatorConfig(secrets_factory=None), CAPS, None)
        ran = asyncio.Event()

        async def failing(
            ctx: ReconcileContext, key: EnvKey, error: Exception = error, ran: asyncio.Event = ran
        ) -> Result:
            ran.set()
            raise error

        ctl.register(EnvKey, failing)
        await _run_once(ctl, EnvKey("dev"), ran)
        assert (ctl.queue.failures(EnvKey("dev")) == 1) is retried, error


async def test_requeue_after_and_enqueue_from_a_result_reach_the_queue() -> None:
    ctl = Controller(FakeKube(), OperatorConfig(secrets_factory=None), CAPS, None)
    seen: list[AppKey | EnvKey] = []
    done = asyncio.Event()
    web = AppKey("ns", "web")

    def saw(key: AppKey | EnvKey) -> None:
        seen.append(key)
        if seen.count(EnvKey("dev")) == 2 and web in seen:
            done.set()

    async def env(ctx: ReconcileContext, key: EnvKey) -> Result:
        saw(key)
        # The first time: look again shortly, and have the app checked.
        return Result(requeue_after=0.01, enqueue=(web,)) if seen.count(key) == 1 else DONE

    async def app(ctx: ReconcileContext, key: AppKey) -> Result:
        saw(key)
        return DONE

    ctl.register(EnvKey, env)
    ctl.register(AppKey, app)
    ctl.on_env_event("ADDED", {"metadata": {"name": "dev", "uid": "u1"}})
    await _run_once(ctl, EnvKey("dev"), done)
    assert sorted(seen) == sorted([EnvKey("dev"), EnvKey("dev"), web])


async def test_a_gone_object_is_forgotten_and_not_requeued() -> None:
    rig = Rig()
    await rig.ready_env()
    key = rig.app("web")
    await app_reconciler.reconcile(rig.ctx, key)
    assert rig.ctl.record.desired_by_owner.get(key)
    body = rig.kube.stored(R.CHOREOAPPS, "web", "choreo-dev")
    rig.ctl.on_app_event("DELETED", copy.deepcopy(body))  # type: ignore[arg-type]
    ran = asyncio.Event()
    calls: list[AppKey] = []

    async def reconcile(ctx: ReconcileContext, request: AppKey) -> Result:
        calls.append(request)
        ran.set()
        # Asks for an immediate requeue, which a gone object does not get. (Were it requeued, the
        # worker would run this again before the test resumes: nothing here awaits.)
        return Result(requeue_after=0.0) if len(calls) == 1 else DONE

    rig.ctl.register(AppKey, reconcile)
    rig.ctl.queue.add(key)
    rig.ctl.cache_synced.set()  # the test feeds the queue itself: no listing to wait for
    await rig.ctl.start()
    try:
        await asyncio.wait_for(ran.wait(), 5)
    finally:
        await rig.ctl.stop()
    assert calls == [key]
    assert key not in rig.ctl.record.desired_by_owner
    assert len(rig.ctl.queue) == 0
