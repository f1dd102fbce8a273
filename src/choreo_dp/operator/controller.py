"""The level-triggered core: watch events feed a work queue; workers reconcile one key at a time.

kopf delivers the events (see :mod:`choreo_dp.operator.handlers`); this class keeps the cache,
decides what to enqueue, and runs the workers. Reconcilers live in ``app_reconciler`` and
``env_reconciler``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from choreo_dp.kube import ApiError, KubeClient
from choreo_dp.observability.health import Liveness
from choreo_dp.operator import app_reconciler, env_reconciler
from choreo_dp.operator.config import OperatorConfig, SecretsPort
from choreo_dp.operator.drift import contains
from choreo_dp.operator.keys import AppKey, ChildKey, EnvKey, ObjKey
from choreo_dp.operator.metrics import RECONCILE_ERRORS, RECONCILE_TIME, RECONCILE_TOTAL
from choreo_dp.operator.state import (
    State,
    TrackedChild,
    controller_owner_uid,
    owner_key_of_child,
    sync_basis,
    trigger_fingerprint,
    trim,
)
from choreo_dp.operator.summaries import CronJobSummary, DeploymentSummary, PodSummary
from choreo_dp.operator.workqueue import WorkQueue
from choreo_dp.render import ClusterCapabilities

log = logging.getLogger("choreo_dp.operator")

COMPONENT = "choreo-dp-operator"


class Controller:
    def __init__(
        self,
        kube: KubeClient,
        config: OperatorConfig,
        caps: ClusterCapabilities,
        secrets: SecretsPort | None,
    ) -> None:
        self.kube = kube
        self.config = config
        self.caps = caps
        self.secrets = secrets
        self.state = State()
        self.queue: WorkQueue[ObjKey] = WorkQueue("choreo")
        self.liveness = Liveness("operator", max_silence=config.liveness_max_silence)
        self._workers: list[asyncio.Task[None]] = []
        self._env_full_apply: dict[str, float] = {}
        self._warned: dict[ObjKey, str] = {}

    # --- events (called from kopf handlers; must be quick and never raise) -------------------------

    def on_app_event(self, etype: str | None, body: dict[str, Any]) -> None:
        meta = body.get("metadata") or {}
        key = AppKey(meta.get("namespace", ""), meta.get("name", ""))
        old = self.state.apps.get(key)
        if etype == "DELETED":
            self.state.apps.pop(key, None)
            self.queue.add(key)
            self._touch_env((old or body).get("spec", {}).get("environment"))
            return
        self.state.apps[key] = trim(body)
        fp = trigger_fingerprint(body)
        if self.state.fingerprints.get(key) != fp:
            self.state.fingerprints[key] = fp
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

    def _touch_env(self, name: Any) -> None:
        if isinstance(name, str) and name:
            # Debounced: a burst of app creations costs one environment reconcile.
            self.queue.add_after(EnvKey(name), 0.5)

    def on_env_event(self, etype: str | None, body: dict[str, Any]) -> None:
        name = (body.get("metadata") or {}).get("name", "")
        key = EnvKey(name)
        if etype == "DELETED":
            self.state.envs.pop(name, None)
            self.queue.add(key)
            for app in self.state.apps_of_env(name):
                self.queue.add(app)
            return
        self.state.envs[name] = trim(body)
        fp = trigger_fingerprint(body)
        if self.state.fingerprints.get(key) != fp:
            self.state.fingerprints[key] = fp
            self.queue.add(key)
            # Apps render from their environment (gateways, registry rules, namespace).
            for app in self.state.apps_of_env(name):
                self.queue.add(app)

    def on_child_event(self, etype: str | None, body: dict[str, Any]) -> None:
        owner = owner_key_of_child(body)
        if owner is None:
            return
        key = ChildKey.of(body)
        kind = key.kind
        if etype == "DELETED":
            self.state.live.get(owner, {}).pop(key, None)
        else:
            self.state.live[owner][key] = self._track(owner, key, body)
        tracked = self.state.live.get(owner, {}).get(key)
        if isinstance(owner, AppKey):
            if kind == "Deployment":
                if etype == "DELETED":
                    changed = self.state.deployments.pop(owner, None) is not None
                else:
                    summary = DeploymentSummary.from_body(body)
                    changed = self.state.deployments.get(owner) != summary
                    self.state.deployments[owner] = summary
                # Status follows the rollout; an event that moved nothing the status reads (and
                # left the Deployment in sync) is not worth a reconcile.
                if changed or tracked is None or not tracked.in_sync:
                    self.queue.add(owner, urgent=True)
                return
            if kind == "CronJob":
                if etype == "DELETED":
                    self.state.cronjobs.pop(owner, None)
                else:
                    self.state.cronjobs[owner] = CronJobSummary.from_body(body)
                self.queue.add(owner, urgent=True)
                return
        if tracked is None or not tracked.in_sync:
            # Deleted, edited by hand, or not (or no longer) desired: repair or prune.
            self.queue.add(owner)

    def _track(self, owner: ObjKey, key: ChildKey, body: dict[str, Any]) -> TrackedChild:
        desired = self.state.desired.get(key)
        if desired is None:
            return TrackedChild(controller_owner_uid(body), False)
        basis = sync_basis(key.kind, desired, body)
        previous = self.state.live.get(owner, {}).get(key)
        if basis is not None and previous is not None and previous.basis == basis:
            return previous
        return TrackedChild(controller_owner_uid(body), contains(body, json.loads(desired)), basis)

    def on_pod_event(self, etype: str | None, body: dict[str, Any]) -> None:
        meta = body.get("metadata") or {}
        app = (meta.get("labels") or {}).get("choreo.dev/app")
        if not app or not meta.get("namespace"):
            return
        key = AppKey(meta["namespace"], app)
        pods = self.state.pods[key]
        name = meta.get("name", "")
        if etype == "DELETED":
            old = pods.pop(name, None)
            changed = old is not None
        else:
            summary = PodSummary.from_body(body)
            old = pods.get(name)
            pods[name] = summary
            changed = old != summary
        if changed and key in self.state.apps:
            self.queue.add(key, urgent=True)

    # --- workers --------------------------------------------------------------------------------

    async def start(self) -> None:
        for i in range(self.config.workers):
            self._workers.append(asyncio.create_task(self._worker(), name=f"choreo-worker-{i}"))
        self._workers.append(asyncio.create_task(self._resync_loop(), name="choreo-resync"))

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
            # Beat on idle too: liveness fails only when this loop (or the event loop) is stuck.
            self.liveness.beat()
            await asyncio.sleep(min(5.0, self.config.env_resync_seconds))
            for name in list(self.state.envs):
                if time.monotonic() - self._env_full_apply.get(name, 0.0) >= self.config.env_resync_seconds:
                    self.queue.add(EnvKey(name))
            if time.monotonic() - last_app_resync >= self.config.app_resync_seconds:
                last_app_resync = time.monotonic()
                for key in list(self.state.apps):
                    self.queue.add(key)

    async def _worker(self) -> None:
        while True:
            key = await self.queue.get()
            try:
                await self._process(key)
            finally:
                self.queue.done(key)
                self.liveness.beat()

    async def _process(self, key: ObjKey) -> None:
        controller = "choreoapp" if isinstance(key, AppKey) else "environment"
        started = time.perf_counter()
        try:
            if isinstance(key, AppKey):
                requeue = await app_reconciler.reconcile(self, key)
            else:
                requeue = await env_reconciler.reconcile(self, key)
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
        if requeue is not None:
            RECONCILE_TOTAL.labels(controller, "requeue_after").inc()
            self.queue.add_after(key, requeue)
        else:
            RECONCILE_TOTAL.labels(controller, "success").inc()

    # --- helpers for reconcilers ------------------------------------------------------------------

    def mark_env_full_apply(self, name: str) -> None:
        self._env_full_apply[name] = time.monotonic()

    def env_full_apply_due(self, name: str) -> bool:
        return time.monotonic() - self._env_full_apply.get(name, 0.0) >= self.config.env_resync_seconds

    async def warn_once(self, key: ObjKey, involved: dict[str, Any], reason: str, message: str) -> None:
        """A Warning Event when the problem is new for this object (not on every reconcile)."""
        if self._warned.get(key) == f"{reason}:{message}":
            return
        self._warned[key] = f"{reason}:{message}"
        await self.kube.post_event(involved, "Warning", reason, message, COMPONENT)

    def clear_warning(self, key: ObjKey) -> None:
        self._warned.pop(key, None)
