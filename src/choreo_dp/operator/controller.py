"""The level-triggered core: watch events feed a work queue; workers reconcile one key at a time.

kopf delivers the events (see :mod:`choreo_dp.operator.handlers`); this class keeps the cache (only
watch events write it), decides with the named :mod:`~choreo_dp.operator.predicates` what to
enqueue, and runs the workers. The reconcilers are registered by whoever builds the controller
(:func:`choreo_dp.operator.manager.new_controller`); each gets a :class:`ReconcileContext`, never
this object, and answers with a :class:`Result`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from choreo_dp.api.vocabulary import APP_LABEL
from choreo_dp.kube import ApiError
from choreo_dp.observability.health import Liveness
from choreo_dp.observability.supervise import supervise
from choreo_dp.operator import heartbeat
from choreo_dp.operator.config import OperatorConfig, SecretsPort
from choreo_dp.operator.connections import CallerIndex
from choreo_dp.operator.drift import contains
from choreo_dp.operator.keys import AppKey, ChildKey, DataPlaneKey, EnvKey, ObjKey, QueueKey
from choreo_dp.operator.metrics import RECONCILE_ERRORS, RECONCILE_TIME, RECONCILE_TOTAL
from choreo_dp.operator.predicates import (
    child_needs_repair,
    connection_target_changed,
    deployment_status_changed,
    generation_or_metadata_changed,
    pod_changed,
)
from choreo_dp.operator.reconcile import (
    EventRecorder,
    K,
    KubeApi,
    ReconcileContext,
    Reconciler,
    Result,
    TerminalError,
)
from choreo_dp.operator.state import (
    Cache,
    CacheView,
    Record,
    TrackedChild,
    controller_owner_uid,
    owner_key_of_child,
    sync_basis,
    trim,
)
from choreo_dp.operator.summaries import CronJobSummary, DeploymentSummary, PodSummary
from choreo_dp.operator.workqueue import WorkQueue
from choreo_dp.render import ClusterCapabilities

log = logging.getLogger("choreo_dp.operator")


class Controller:
    def __init__(
        self,
        kube: KubeApi,
        config: OperatorConfig,
        caps: ClusterCapabilities,
        secrets: SecretsPort | None,
    ) -> None:
        self.config = config
        self.caps = caps
        self.cache = Cache()
        self.callers = CallerIndex()
        self.record = Record()
        self.queue: WorkQueue[QueueKey] = WorkQueue("choreo")
        self.liveness = Liveness("operator", max_silence=config.liveness_max_silence)
        self.recorder = EventRecorder(kube)
        self.context = ReconcileContext(
            kube=kube,
            cache=CacheView(self.cache, self.record),
            record=self.record,
            config=config,
            caps=caps,
            secrets=secrets,
            recorder=self.recorder,
        )
        self._reconcilers: dict[type, Callable[[ReconcileContext, Any], Awaitable[Result]]] = {}
        self._workers: list[asyncio.Task[None]] = []
        # Set once the ChoreoApps, Environments, Deployments, CronJobs and pods are listed; workers
        # start reconciling only then.
        self.cache_synced = asyncio.Event()

    def register(self, kind: type[K], reconciler: Reconciler[K]) -> None:
        """Reconcile keys of type ``kind`` (AppKey, EnvKey) with ``reconciler``."""
        self._reconcilers[kind] = reconciler

    # --- events (called from kopf handlers; must be quick and never raise) -------------------------

    def on_app_listed(self, body: dict[str, Any]) -> None:
        """An app seen by the initial listing, before kopf lets any other handler run.

        ChoreoApps and Environments are indexed (handlers.py): an app reconciled before its
        Environment is known would write a false EnvironmentNotFound status upstream."""
        if not self.cache_synced.is_set():
            self._on_app(None, body)

    def on_app_event(self, etype: str | None, body: dict[str, Any]) -> None:
        # kopf runs event handlers only once every indexed kind is listed (see handlers.py).
        self.cache_synced.set()
        self._on_app(etype, body)

    def _on_app(self, etype: str | None, body: dict[str, Any]) -> None:
        meta = body.get("metadata") or {}
        key = AppKey(meta.get("namespace", ""), meta.get("name", ""))
        old = self.cache.apps.get(key)
        self.record.observed_primary(key)
        if etype == "DELETED":
            self.cache.apps.pop(key, None)
            self.cache.forget_owner(key)
            self.queue.add(key)
            self._touch_env((old or body).get("spec", {}).get("environment"))
            self._touch_callers(key, old, None)
            return
        self.cache.apps[key] = trim(body)
        self._touch_callers(key, old, body)
        if generation_or_metadata_changed(old, body):
            self.queue.add(key)
        old_spec = (old or {}).get("spec") or {}
        new_spec = body.get("spec") or {}
        if old is None or (old_spec.get("environment"), old_spec.get("project")) != (
            new_spec.get("environment"),
            new_spec.get("project"),
        ):
            # The environment counts its apps and renders one NetworkPolicy per project.
            self._touch_env(new_spec.get("environment"))
            if old is not None:
                self._touch_env(old_spec.get("environment"))

    def _touch_callers(self, key: AppKey, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        self.callers.update(key, new)
        if connection_target_changed(old, new):
            for caller in self.callers.callers_of(key):
                self.queue.add(caller)

    def _touch_env(self, name: Any) -> None:
        if isinstance(name, str) and name:
            # Debounced: a burst of app creations costs one environment reconcile.
            self.queue.add_after(EnvKey(name), 0.5)

    def on_env_listed(self, body: dict[str, Any]) -> None:
        """An Environment seen by the initial listing (see on_app_listed)."""
        if not self.cache_synced.is_set():
            self._on_env(None, body)

    def on_env_event(self, etype: str | None, body: dict[str, Any]) -> None:
        self.cache_synced.set()  # see on_app_event
        self._on_env(etype, body)

    def _on_env(self, etype: str | None, body: dict[str, Any]) -> None:
        name = (body.get("metadata") or {}).get("name", "")
        key = EnvKey(name)
        old = self.cache.envs.get(name)
        self.record.observed_primary(key)
        if etype == "DELETED":
            self.cache.envs.pop(name, None)
            self.cache.forget_owner(key)
            self.queue.add(key)
            for app in self.cache.apps_of_env(name):
                self.queue.add(app)
            return
        self.cache.envs[name] = trim(body)
        if generation_or_metadata_changed(old, body):
            self.queue.add(key)
            # Apps render from their environment (gateways, registry rules, namespace).
            for app in self.cache.apps_of_env(name):
                self.queue.add(app)

    def on_dataplane_event(self, etype: str | None, body: dict[str, Any]) -> None:
        self.cache_synced.set()  # see on_app_event
        name = (body.get("metadata") or {}).get("name", "")
        key = DataPlaneKey(name)
        if etype == "DELETED":
            self.cache.dataplanes.pop(name, None)
            self.cache.heartbeats.pop(name, None)
            self.queue.add(key)
            return
        self.cache.dataplanes[name] = trim(body)
        status = body.get("status") or {}
        self.cache.heartbeats[name] = heartbeat.observe(
            self.cache.heartbeats.get(name), status, time.monotonic(), time.time()
        )
        # Every event: a renewal is status-only, and it is what moves the verdict.
        self.queue.add(key)

    def on_child_listed(self, body: dict[str, Any]) -> None:
        """A Deployment or CronJob seen by the initial listing (see on_app_listed): an app's status
        is computed from its workload, which must be known before the app is reconciled."""
        if not self.cache_synced.is_set():
            self._on_child(None, body)

    def on_child_event(self, etype: str | None, body: dict[str, Any]) -> None:
        self.cache_synced.set()  # see on_app_event
        self._on_child(etype, body)

    def _on_child(self, etype: str | None, body: dict[str, Any]) -> None:
        owner = owner_key_of_child(body)
        if owner is None:
            return
        key = ChildKey.of(body)
        kind = key.kind
        self.record.observed_child(key)
        if etype == "DELETED":
            self.cache.live.get(owner, {}).pop(key, None)
        else:
            self.cache.live[owner][key] = self._track(owner, key, body)
        tracked = self.cache.live.get(owner, {}).get(key)
        if isinstance(owner, AppKey):
            # Only the Deployment named after the app is its workload; a canary's (``<app>-canary``)
            # is an ordinary child here: the rollout reads its pods, never its summary.
            if kind == "Deployment" and key.name == owner.name:
                # Against what the reconciler last saw: its apply's answer, until this event.
                before = self.record.deployment_answers.pop(owner, None) or self.cache.deployments.get(owner)
                summary = None if etype == "DELETED" else DeploymentSummary.from_body(body)
                if summary is None:
                    self.cache.deployments.pop(owner, None)
                else:
                    self.cache.deployments[owner] = summary
                if deployment_status_changed(before, summary, tracked):
                    self.queue.add(owner, urgent=True)
                return
            if kind == "CronJob":
                self.record.cronjob_answers.pop(owner, None)
                if etype == "DELETED":
                    self.cache.cronjobs.pop(owner, None)
                else:
                    self.cache.cronjobs[owner] = CronJobSummary.from_body(body)
                self.queue.add(owner, urgent=True)
                return
        if child_needs_repair(tracked):
            self.queue.add(owner)

    def _track(self, owner: ObjKey, key: ChildKey, body: dict[str, Any]) -> TrackedChild:
        desired = self.record.desired.get(key)
        if desired is None:
            return TrackedChild(controller_owner_uid(body), False)
        basis = sync_basis(key.kind, desired, body)
        previous = self.cache.live.get(owner, {}).get(key)
        if basis is not None and previous is not None and previous.basis == basis:
            return previous
        return TrackedChild(controller_owner_uid(body), contains(body, json.loads(desired)), basis)

    def on_pod_listed(self, body: dict[str, Any]) -> None:
        """A pod seen by the initial listing (see on_child_listed): without its pods a Deployment
        reads as running its tag, not the digest its pods report, and the status would flip."""
        if not self.cache_synced.is_set():
            self._on_pod(None, body)

    def on_pod_event(self, etype: str | None, body: dict[str, Any]) -> None:
        self.cache_synced.set()  # see on_app_event
        self._on_pod(etype, body)

    def _on_pod(self, etype: str | None, body: dict[str, Any]) -> None:
        meta = body.get("metadata") or {}
        app = (meta.get("labels") or {}).get(APP_LABEL)
        if not app or not meta.get("namespace"):
            return
        key = AppKey(meta["namespace"], app)
        pods = self.cache.pods[key]
        name = meta.get("name", "")
        if etype == "DELETED":
            old, summary = pods.pop(name, None), None
        else:
            old, summary = pods.get(name), PodSummary.from_body(body)
            pods[name] = summary
        if pod_changed(old, summary) and key in self.cache.apps:
            self.queue.add(key, urgent=True)

    # --- workers --------------------------------------------------------------------------------

    async def start(self) -> None:
        # Supervised: a worker or the resync loop that raises is logged with its traceback,
        # restarted with backoff and shown failed on /healthz meanwhile, never silently gone.
        loops = [(f"worker-{i}", self._worker) for i in range(self.config.workers)]
        loops.append(("resync", self._resync_loop))
        for name, loop in loops:
            probe = self.liveness.child(name)
            self._workers.append(
                asyncio.create_task(
                    supervise(f"operator/{name}", loop, liveness=probe, logger=log), name=f"choreo-{name}"
                )
            )

    async def stop(self) -> None:
        self.queue.shut_down()
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers.clear()

    async def _resync_loop(self) -> None:
        last_app_resync = time.monotonic()
        while True:
            # Idle counts as progress; with work waiting, only finished reconciles (the workers
            # beat) do, so /healthz fails when every worker is stuck rather than staying green.
            if len(self.queue) == 0 and self.queue.in_flight == 0:
                self.liveness.beat()
            await asyncio.sleep(min(5.0, self.config.env_resync_seconds))
            for name in list(self.cache.envs):
                if (
                    time.monotonic() - self.record.env_full_apply.get(name, 0.0)
                    >= self.config.env_resync_seconds
                ):
                    self.queue.add(EnvKey(name))
            if time.monotonic() - last_app_resync >= self.config.app_resync_seconds:
                last_app_resync = time.monotonic()
                for key in list(self.cache.apps):
                    self.queue.add(key)
                for name in list(self.cache.dataplanes):
                    self.queue.add(DataPlaneKey(name))

    async def _worker(self) -> None:
        await self._wait_for_cache_sync()
        while True:
            key = await self.queue.get()
            try:
                await self._process(key)
            finally:
                self.queue.done(key)
                self.liveness.beat()

    async def _wait_for_cache_sync(self) -> None:
        try:
            await asyncio.wait_for(self.cache_synced.wait(), self.config.cache_sync_timeout)
        except TimeoutError:
            # Without a single event there is nothing queued that a full cache would change;
            # never hang the workers on it.
            log.warning(
                "no ChoreoApp listing after %.0f s; reconciling anyway", self.config.cache_sync_timeout
            )
            self.cache_synced.set()

    async def _process(self, key: QueueKey) -> None:
        controller = CONTROLLER_NAMES.get(type(key), type(key).__name__)
        reconcile = self._reconcilers.get(type(key))
        if reconcile is None:
            log.error("no reconciler registered for %s keys; dropping %s", type(key).__name__, "/".join(key))
            return
        started = time.perf_counter()
        try:
            result = await reconcile(self.context, key)
        except TerminalError as exc:
            RECONCILE_ERRORS.labels(controller).inc()
            RECONCILE_TOTAL.labels(controller, "error").inc()
            self.queue.forget(key)
            log.error("reconcile %s %s failed for good: %s", controller, "/".join(key), exc)
            return
        except ApiError as exc:
            RECONCILE_ERRORS.labels(controller).inc()
            RECONCILE_TOTAL.labels(controller, "error").inc()
            delay = self.queue.add_rate_limited(key, exc.retry_after)
            log.warning(
                "reconcile %s %s failed: %s; retrying in %.1fs", controller, "/".join(key), exc, delay
            )
            return
        except Exception:
            RECONCILE_ERRORS.labels(controller).inc()
            RECONCILE_TOTAL.labels(controller, "error").inc()
            delay = self.queue.add_rate_limited(key)
            log.exception("reconcile %s %s crashed; retrying in %.1fs", controller, "/".join(key), delay)
            return
        finally:
            RECONCILE_TIME.labels(controller).observe(time.perf_counter() - started)
        self.queue.forget(key)
        if not self._exists(key):
            # Gone: its children go with it through ownerReferences; only our memory needs cleaning.
            if not isinstance(key, DataPlaneKey):
                self.record.forget_owner(key)
            self.recorder.clear(key)
            self.queue.discard(key)
            RECONCILE_TOTAL.labels(controller, "success").inc()
            return
        for other in result.enqueue:
            self.queue.add(other)
        if result.requeue_after is not None:
            RECONCILE_TOTAL.labels(controller, "requeue_after").inc()
            self.queue.add_after(key, result.requeue_after)
        else:
            RECONCILE_TOTAL.labels(controller, "success").inc()

    def _exists(self, key: QueueKey) -> bool:
        if isinstance(key, EnvKey):
            return key.name in self.cache.envs
        if isinstance(key, DataPlaneKey):
            return key.name in self.cache.dataplanes
        return key in self.cache.apps


CONTROLLER_NAMES: dict[type, str] = {AppKey: "choreoapp", EnvKey: "environment", DataPlaneKey: "dataplane"}
