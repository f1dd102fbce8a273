"""HorizontalPodAutoscaler emulation: what kube-controller-manager's HPA controller
(``pkg/controller/podautoscaler``, ``reconcileAutoscaler``) does for autoscaling/v2 HPAs that
target a Deployment, in a cluster without a metrics API (no metrics-server).

Each sync reads the target's scale (``AbleToScale`` True ``SucceededGetScale``, or False
``FailedGetScale`` when the target is missing).  A replica count outside
``[minReplicas, maxReplicas]`` is clamped without consulting metrics: the write goes through
the ``scale`` subresource (managedFields ``subresource: scale``, manager
``kube-controller-manager``), ``AbleToScale`` becomes ``SucceededRescale`` and
``lastScaleTime`` is set.  In range, the controller asks the resource metrics API, which is
not there: ``ScalingActive`` False ``FailedGetResourceMetric`` with the upstream message,
``currentMetrics`` one empty entry per metric, ``desiredReplicas`` left as it was.  A target at
0 replicas disables scaling (``ScalingActive`` False ``ScalingDisabled``).  The status is
rebuilt on every sync as upstream's ``setStatus`` does (``currentReplicas``,
``desiredReplicas``, ``currentMetrics``, ``lastScaleTime``, ``conditions``; no
``observedGeneration``), and a rescale posts a ``SuccessfulRescale`` Event.

Timing differs on purpose: the real controller syncs each HPA every 15 s (an event only
queues the next sync); the emulation reacts at once.  Clients must not rely on either.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from kube_emulator.errors import ApiFailure
from kube_emulator.patch import clone
from kube_emulator.resources import ResourceType
from kube_emulator.store import Store, WriteOptions, now_iso

JSON = dict[str, Any]
log = logging.getLogger(__name__)
MANAGER = "kube-controller-manager"


def _is_hpa(rt: ResourceType) -> bool:
    return rt.group == "autoscaling" and rt.plural == "horizontalpodautoscalers"


def _targets_deployment(hpa: JSON) -> str | None:
    ref = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
    api_version = str(ref.get("apiVersion") or "")
    if ref.get("kind") == "Deployment" and api_version.split("/", 1)[0] in ("apps", "extensions"):
        return str(ref.get("name") or "") or None
    return None


class HpaEmulator:
    """Kept by the workload simulator; ``dirty`` holds (namespace, hpa name) to reconcile."""

    def __init__(self, store: Store, deploy_rt: ResourceType) -> None:
        self.store = store
        self.deploy_rt = deploy_rt
        rt = store.registry.get("autoscaling", "v2", "horizontalpodautoscalers")
        assert rt is not None
        self.hpa_rt = rt
        self.dirty: set[tuple[str, str]] = set()

    def mark_all(self) -> None:
        for h in self.store.list(self.hpa_rt, None):
            self.dirty.add((h["metadata"]["namespace"], h["metadata"]["name"]))

    def on_change(self, type_: str, rt: ResourceType, obj: JSON, old: JSON | None) -> bool:
        """Note HPAs to revisit after this change; True if any were noted."""
        meta = obj["metadata"]
        if _is_hpa(rt):
            if type_ != "DELETED" and (old is None or old.get("spec") != obj.get("spec")):
                self.dirty.add((meta["namespace"], meta["name"]))
                return True
            return False
        if rt.group == "apps" and rt.plural == "deployments" and type_ != "DELETED":
            # The real controller re-reads the scale every 15 s; here a change of the
            # target's replicas (e.g. an apply that set it) is what can need a new clamp.
            if old is not None and (old.get("spec") or {}).get("replicas") == (obj.get("spec") or {}).get(
                "replicas"
            ):
                return False
            found = False
            for h in self.store.list(self.hpa_rt, meta["namespace"]):
                if _targets_deployment(h) == meta["name"]:
                    self.dirty.add((meta["namespace"], h["metadata"]["name"]))
                    found = True
            return found
        return False

    def run_dirty(self) -> None:
        keys, self.dirty = self.dirty, set()
        for key in keys:
            try:
                self.reconcile(*key)
            except Exception:  # one odd object must not stop the simulation
                log.exception("HPA emulation failed on %s/%s", *key)

    def reconcile(self, namespace: str, name: str) -> None:
        hpa = self.store.get(self.hpa_rt, namespace, name)
        if hpa is None or hpa["metadata"].get("deletionTimestamp"):
            return
        target = _targets_deployment(hpa)
        if target is None:
            return  # only Deployments are emulated; others are left as a cluster without them would
        spec = hpa.get("spec") or {}
        old: JSON = hpa.get("status") or {}
        conds: list[JSON] = [dict(c) for c in old.get("conditions") or []]
        d = self.store.get(self.deploy_rt, namespace, target)
        if d is None:
            _set(
                conds,
                "AbleToScale",
                False,
                "FailedGetScale",
                "the HPA controller was unable to get the target's current scale: "
                f'deployments.apps "{target}" not found',
            )
            # Only the condition changes; the rest is whatever the status held (Go zero values).
            self._write_status(hpa, {**_zero_status(old), "conditions": conds})
            self._event(hpa, "Warning", "FailedGetScale", f'deployments.apps "{target}" not found')
            return
        _set(
            conds,
            "AbleToScale",
            True,
            "SucceededGetScale",
            "the HPA controller was able to get the target's current scale",
        )
        current = (d.get("spec") or {}).get("replicas")
        current = 1 if current is None else int(current)
        lo = int(spec.get("minReplicas") or 1)
        hi = int(spec.get("maxReplicas") or lo)
        desired = 0
        rescale = True
        reason = ""
        if current == 0:
            rescale = False
            _set(
                conds,
                "ScalingActive",
                False,
                "ScalingDisabled",
                "scaling is disabled since the replica count of the target is zero",
            )
        elif current > hi:
            desired, reason = hi, "Current number of replicas above Spec.MaxReplicas"
        elif current < lo:
            desired, reason = lo, "Current number of replicas below Spec.MinReplicas"
        else:
            # In range: upstream computes from metrics, and the metrics API is not there.
            metrics = spec.get("metrics") or []
            reason, error, wrapped = _metric_failure(metrics[0] if metrics else {})
            _set(
                conds,
                "ScalingActive",
                False,
                reason,
                f"the HPA was unable to compute the replica count: {error}",
            )
            self._event(hpa, "Warning", reason, error)
            n = len(metrics)
            self._event(
                hpa,
                "Warning",
                "FailedComputeMetricsReplicas",
                f"invalid metrics ({n} invalid out of {n}), first error is: {wrapped}",
            )
            status = {
                **_zero_status(old),
                "currentReplicas": current,
                "currentMetrics": [{"type": ""} for _ in metrics],
                "conditions": conds,
            }
            self._write_status(hpa, status)
            return
        if rescale:
            if not self._scale(d, desired):
                return  # the Deployment changed under us; its change event brings us back
            _set(
                conds,
                "AbleToScale",
                True,
                "SucceededRescale",
                f"the HPA controller was able to update the target scale to {desired}",
            )
            self._event(hpa, "Normal", "SuccessfulRescale", f"New size: {desired}; reason: {reason}")
        else:
            desired = current
        status = {"currentReplicas": current, "desiredReplicas": desired, "currentMetrics": None}
        last = now_iso() if rescale else old.get("lastScaleTime")
        if last:
            status["lastScaleTime"] = last
        status["conditions"] = conds
        self._write_status(hpa, status)

    def _scale(self, d: JSON, replicas: int) -> bool:
        """Write spec.replicas through the ``scale`` subresource (optimistic concurrency)."""
        updated = clone(d)
        updated.setdefault("spec", {})["replicas"] = replicas
        meta = d["metadata"]
        try:
            self.store.update(
                self.deploy_rt,
                meta["namespace"],
                meta["name"],
                updated,
                WriteOptions(manager=MANAGER, subresource="scale"),
            )
        except ApiFailure as exc:
            log.info("HPA could not scale %s/%s: %s", meta["namespace"], meta["name"], exc)
            return False
        return True

    def _write_status(self, hpa: JSON, status: JSON) -> None:
        if not status.get("currentReplicas"):
            status.pop("currentReplicas", None)  # int32 omitempty
        if status == hpa.get("status"):
            return
        new = dict(hpa)
        new["status"] = status
        self.store.write_internal(self.hpa_rt, new, hpa, MANAGER)

    def _event(self, hpa: JSON, type_: str, reason: str, message: str) -> None:
        """An Event on the HPA, as the controller's event recorder posts it (core/v1, named
        ``<hpa>.<hex nanoseconds>``).  Upstream repeats warnings every sync, counting them on
        one Event; the emulation syncs on changes only, so each is posted once per sync."""
        rt = self.store.registry.get("", "v1", "events")
        if rt is None:
            return
        meta = hpa["metadata"]
        now = now_iso()
        event = {
            "metadata": {"name": f"{meta['name']}.{time.time_ns():x}", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": "autoscaling/v2",
                "kind": "HorizontalPodAutoscaler",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
                "resourceVersion": meta.get("resourceVersion", ""),
            },
            "reason": reason,
            "message": message,
            "source": {"component": "horizontal-pod-autoscaler"},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "type": type_,
            "eventTime": None,
            "reportingComponent": "horizontal-pod-autoscaler",
            "reportingInstance": "",
        }
        self.store.write_internal(rt, event, None, MANAGER)


def _zero_status(old: JSON) -> JSON:
    """The Go zero values the controller's status always serializes, then what ``old`` held."""
    out: JSON = {"currentMetrics": None, "desiredReplicas": 0}
    out.update({k: v for k, v in old.items() if k != "observedGeneration"})
    return out


def _metric_failure(metric: JSON) -> tuple[str, str, str]:
    """(reason, error, wrapped error) when a metric cannot be read: no metrics API is served."""
    kind = metric.get("type") or "Resource"
    if kind in ("Resource", "ContainerResource"):
        source = metric.get("resource") or metric.get("containerResource") or {}
        res = source.get("name") or "cpu"
        target = (source.get("target") or {}).get("type") or "Utilization"
        what = f"{res} utilization" if target == "Utilization" else f"{res} usage"
        error = (
            f"failed to get {what}: unable to get metrics for resource {res}: unable to fetch metrics "
            "from resource metrics API: the server could not find the requested resource "
            "(get pods.metrics.k8s.io)"
        )
        if kind == "Resource":
            return "FailedGetResourceMetric", error, f"failed to get {res} resource metric value: {error}"
        return (
            "FailedGetContainerResourceMetric",
            error,
            f"failed to get {res} container metric value: {error}",
        )
    api = "custom.metrics.k8s.io" if kind in ("Pods", "Object") else "external.metrics.k8s.io"
    error = f"unable to get {kind.lower()} metric: the server could not find the metrics API {api}"
    return f"FailedGet{kind}Metric", error, error


def _set(conds: list[JSON], type_: str, ok: bool, reason: str, message: str) -> None:
    """Set a condition in place, keeping lastTransitionTime while its status is unchanged."""
    status = "True" if ok else "False"
    for i, c in enumerate(conds):
        if c.get("type") == type_:
            ts = c.get("lastTransitionTime") if c.get("status") == status else now_iso()
            conds[i] = {
                "type": type_,
                "status": status,
                "lastTransitionTime": ts,
                "reason": reason,
                "message": message,
            }
            return
    conds.append(
        {
            "type": type_,
            "status": status,
            "lastTransitionTime": now_iso(),
            "reason": reason,
            "message": message,
        }
    )
