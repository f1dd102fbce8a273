"""HorizontalPodAutoscaler emulation: what kube-controller-manager's HPA controller does
for autoscaling/v2 HPAs that target a Deployment, when no metrics are available.

The real controller first reads the target's scale; a replica count outside
``[minReplicas, maxReplicas]`` is clamped without consulting metrics (that is the only
scaling done here: the emulator serves no metrics API, so nothing ever scales above what
the clamp needs).  In range, the real controller asks the resource metrics API; in a
cluster without metrics-server that fails, and so it does here: ``ScalingActive`` is
``False`` with reason ``FailedGetResourceMetric``, exactly what ``kubectl describe hpa``
shows on such a cluster.  A target at 0 replicas means "scaling disabled"
(``ScalingActive`` ``False``, ``ScalingDisabled``), as upstream.

The write goes where the real controller's does: ``spec.replicas`` of the Deployment,
via the same path the emulator's ``scale`` subresource uses (an update of the main
object), by manager ``kube-controller-manager``.  HPA status (``currentReplicas``,
``desiredReplicas``, ``lastScaleTime``, ``observedGeneration``, conditions
``AbleToScale``/``ScalingActive``) goes through the status path.
"""

from __future__ import annotations

import logging
from typing import Any

from choreo_dp.sandbox.apiserver.errors import ApiFailure
from choreo_dp.sandbox.apiserver.patch import clone
from choreo_dp.sandbox.apiserver.resources import ResourceType
from choreo_dp.sandbox.apiserver.store import Store, WriteOptions, now_iso

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
        status: JSON = dict(hpa.get("status") or {})
        conds: list[JSON] = list(status.get("conditions") or [])
        status["observedGeneration"] = hpa["metadata"].get("generation", 1)
        d = self.store.get(self.deploy_rt, namespace, target)
        if d is None:
            _set(
                conds,
                "AbleToScale",
                False,
                "FailedGetScale",
                f'the HPA controller was unable to get the target\'s current scale: deployments/scale.apps "{target}" not found',
            )
            status["conditions"] = conds
            status.setdefault("desiredReplicas", 0)
            self._write_status(hpa, status)
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
        desired = current
        if current == 0 and lo != 0:
            _set(
                conds,
                "ScalingActive",
                False,
                "ScalingDisabled",
                "scaling is disabled since the replica count of the target is zero",
            )
        elif current > hi or current < lo:
            desired = hi if current > hi else lo
        else:
            # In range: the real controller would compute from metrics, and there are none.
            _set(
                conds,
                "ScalingActive",
                False,
                "FailedGetResourceMetric",
                "the HPA was unable to compute the replica count: failed to get cpu utilization: "
                "unable to get metrics for resource cpu: no metrics returned from resource metrics API",
            )
        if desired != current:
            if not self._scale(d, desired):
                return  # the Deployment changed under us; its change event brings us back
            status["lastScaleTime"] = now_iso()
            _set(
                conds,
                "AbleToScale",
                True,
                "SucceededRescale",
                f"the HPA controller was able to update the target scale to {desired}",
            )
        status["currentReplicas"] = current
        status["desiredReplicas"] = desired
        status["conditions"] = conds
        self._write_status(hpa, status)

    def _scale(self, d: JSON, replicas: int) -> bool:
        """Write spec.replicas the way the ``scale`` subresource does (optimistic concurrency)."""
        updated = clone(d)
        updated.setdefault("spec", {})["replicas"] = replicas
        meta = d["metadata"]
        try:
            self.store.update(
                self.deploy_rt, meta["namespace"], meta["name"], updated, WriteOptions(manager=MANAGER)
            )
        except ApiFailure as exc:
            log.info("HPA could not scale %s/%s: %s", meta["namespace"], meta["name"], exc)
            return False
        return True

    def _write_status(self, hpa: JSON, status: JSON) -> None:
        if status == hpa.get("status"):
            return
        new = dict(hpa)
        new["status"] = status
        self.store.write_internal(self.hpa_rt, new, hpa, MANAGER)


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
