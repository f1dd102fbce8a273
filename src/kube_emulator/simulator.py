"""Workload simulator: what kube-controller-manager and a kubelet would do for Deployments.

For each Deployment the simulator keeps one ReplicaSet per pod template (named
``<deployment>-<template hash>``, labelled ``pod-template-hash``, owned by the
Deployment) scaled to ``spec.replicas``, older ReplicaSets scaled to 0, and Pods owned
by the ReplicaSet (so deleting a Deployment cascades through the garbage collector).
New pods start ``Pending``; ``delay`` seconds later they are ``Running`` and Ready,
unless a failure mode was set for the Deployment with ``set_pod_failure``:

* ``"CrashLoopBackOff"`` — phase Running, container waiting with reason CrashLoopBackOff,
  restartCount > 0, not ready;
* ``"ImagePullBackOff"`` — phase Pending, container waiting with reason ImagePullBackOff,
  not ready.

Pods are created through the API's admission, as the ReplicaSet controller's are: a
namespace's LimitRange fills in their resources, and a ResourceQuota (or validation) can refuse
them.  A refused create stops that round (upstream's slow start stops at the first failing
batch), gives the ReplicaSet a ``ReplicaFailure`` condition (reason ``FailedCreate``, the
refusal as message; removed once a round creates without error), which the Deployment copies,
and posts a ``FailedCreate`` warning Event ("Error creating: ..."; after ten, one "(combined
from similar events)" Event counts the rest, as the event recorder does).  The Deployment is
retried with a growing delay, and at once when a quota or LimitRange of its namespace changes
or a pod there goes away (upstream only backs off, up to 1000 s; faster is allowed).

Deployment status follows (replicas, updatedReplicas, readyReplicas,
availableReplicas, unavailableReplicas, observedGeneration, Available/Progressing
conditions, ``terminatingReplicas``; the ``deployment.kubernetes.io/revision`` annotations).
Like the real API, counters that are zero are omitted, except ReplicaSet ``status.replicas``
and ``terminatingReplicas``, which upstream always sends.  Off by default.
HorizontalPodAutoscalers targeting Deployments are clamped into their replica range by
``hpa.HpaEmulator`` (see there), driven from the same loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import time
from typing import Any

from kube_emulator.errors import ApiFailure
from kube_emulator.hpa import HpaEmulator
from kube_emulator.patch import clone
from kube_emulator.resources import ResourceType
from kube_emulator.store import Store, WriteOptions, now_iso

JSON = dict[str, Any]
log = logging.getLogger(__name__)
FAILURE_MODES = ("CrashLoopBackOff", "ImagePullBackOff")
MANAGER = "kube-controller-manager"
RS_CONTROLLER = "replicaset-controller"
MAX_RETRY_DELAY = 10.0
# The event recorder's aggregator: ten similar events, then one combined event counts the rest.
SIMILAR_EVENTS = 10


def _rt(store: Store, group: str, plural: str) -> ResourceType:
    rt = store.registry.get(group, "v1", plural)
    assert rt is not None
    return rt


def template_hash(template: Any) -> str:
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()
    # k8s uses a short, DNS-safe hash; keep the flavour without claiming its algorithm.
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    n = int(digest[:16], 16)
    out = ""
    for _ in range(10):
        n, r = divmod(n, len(alphabet))
        out += alphabet[r]
    return out


def image_id(image: str) -> str:
    """What containerd reports as imageID: the repository (tag dropped) at a content digest.

    The digest is derived from the image reference, so the same image always "resolves" to
    the same digest and a new tag to a new one (clients read the running digest from it).
    """
    if "@" in image:
        return image
    repo, last = image.rsplit("/", 1) if "/" in image else ("", image)
    name = f"{repo}/{last.split(':', 1)[0]}" if repo else last.split(":", 1)[0]
    first = name.split("/", 1)[0]
    if "/" not in name:
        name = f"docker.io/library/{name}"
    elif "." not in first and ":" not in first and first != "localhost":
        name = f"docker.io/{name}"
    return f"{name}@sha256:{hashlib.sha256(image.encode()).hexdigest()}"


def _revision(rs: JSON | None) -> int:
    if rs is None:
        return 0
    try:
        return int((rs["metadata"].get("annotations") or {}).get("deployment.kubernetes.io/revision", 0))
    except ValueError:
        return 0


def _max_surge(spec: JSON, replicas: int) -> int:
    """``maxSurge`` resolved against ``replicas`` (percentages round up, as upstream)."""
    if (spec.get("strategy") or {}).get("type") == "Recreate":
        return 0
    ru = ((spec.get("strategy") or {}).get("rollingUpdate") or {}).get("maxSurge", "25%")
    if isinstance(ru, str) and ru.endswith("%"):
        try:
            return math.ceil(replicas * int(ru[:-1]) / 100)
        except ValueError:
            return 0
    try:
        return int(ru)
    except (TypeError, ValueError):
        return 0


def _max_unavailable(spec: JSON, replicas: int) -> int:
    ru = ((spec.get("strategy") or {}).get("rollingUpdate") or {}).get("maxUnavailable", "25%")
    if isinstance(ru, str) and ru.endswith("%"):
        try:
            return math.floor(replicas * int(ru[:-1]) / 100)
        except ValueError:
            return 0
    try:
        return int(ru)
    except (TypeError, ValueError):
        return 0


class WorkloadSimulator:
    def __init__(self, store: Store, delay: float = 0.2, enabled: bool = False) -> None:
        self.store = store
        self.delay = delay
        self.enabled = enabled
        self.failures: dict[tuple[str, str], str] = {}
        self.dirty: set[tuple[str, str]] = set()
        self.timers: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.pod_created: dict[str, float] = {}  # pod uid -> monotonic creation time
        # Deployments whose pods could not be created: the delay before the next try, its timer.
        self.retry_delay: dict[tuple[str, str], float] = {}
        self.retry_timers: dict[tuple[str, str], asyncio.TimerHandle] = {}
        # (namespace, ReplicaSet) -> FailedCreate events posted, and the combined event's name.
        self.failed_creates: dict[tuple[str, str], tuple[int, str | None]] = {}
        self._ip = 1
        self.deploy_rt = _rt(store, "apps", "deployments")
        self.rs_rt = _rt(store, "apps", "replicasets")
        self.pod_rt = _rt(store, "", "pods")
        self.hpa = HpaEmulator(store, self.deploy_rt)  # the HPA controller's part (hpa.py)
        store.listeners.append(self.on_change)

    # ----- public knobs -------------------------------------------------------------------
    def set_pod_failure(self, namespace: str, deployment: str, mode: str | None) -> None:
        """Put the Deployment's pods into a failure mode (or back to healthy with None)."""
        if mode is not None and mode not in FAILURE_MODES:
            raise ValueError(f"failure mode must be one of {FAILURE_MODES} or None")
        key = (namespace, deployment)
        if mode is None:
            self.failures.pop(key, None)
        else:
            self.failures[key] = mode
        self._mark(key)

    def start(self) -> None:
        if self.enabled:
            self.task = asyncio.create_task(self._run(), name="apiserver-simulator")
            for d in self.store.list(self.deploy_rt, None):
                self._mark((d["metadata"]["namespace"], d["metadata"]["name"]))
            self.hpa.mark_all()
            self.wake.set()

    async def stop(self) -> None:
        for t in (*self.timers.values(), *self.retry_timers.values()):
            t.cancel()
        self.timers.clear()
        self.retry_timers.clear()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    # ----- change feed --------------------------------------------------------------------
    def _mark(self, key: tuple[str, str]) -> None:
        if not self.enabled:
            return
        self.dirty.add(key)
        self.wake.set()

    def on_change(self, type_: str, rt: ResourceType, obj: JSON, old: JSON | None) -> None:
        if not self.enabled:
            return
        meta = obj["metadata"]
        if self.hpa.on_change(type_, rt, obj, old):
            self.wake.set()
        if rt is self.deploy_rt or (rt.group == "apps" and rt.plural == "deployments"):
            if type_ == "DELETED":
                key = (meta["namespace"], meta["name"])
                self.failures.pop(key, None)
                self.retry_delay.pop(key, None)
                timer = self.retry_timers.pop(key, None)
                if timer is not None:
                    timer.cancel()
                return
            if (
                old is None
                or old.get("spec") != obj.get("spec")
                or old["metadata"].get("deletionTimestamp") != meta.get("deletionTimestamp")
            ):
                self._mark((meta["namespace"], meta["name"]))
        elif rt.group == "" and rt.plural == "pods" and type_ == "DELETED":
            self.pod_created.pop(meta["uid"], None)
            owner = self._owner_deployment(obj)
            if owner:
                self._mark((meta["namespace"], owner))
            self._retry_blocked(meta["namespace"])
        elif rt.group == "" and rt.plural in ("resourcequotas", "limitranges"):
            # What refused a pod may admit it now (a quota raised, or its usage recounted lower).
            self._retry_blocked(meta["namespace"])
        elif rt.group == "apps" and rt.plural == "replicasets" and type_ == "DELETED":
            self.failed_creates.pop((meta["namespace"], meta["name"]), None)

    def _retry_blocked(self, namespace: str) -> None:
        for key in [k for k in self.retry_delay if k[0] == namespace]:
            self._mark(key)

    def _owner_deployment(self, pod: JSON) -> str | None:
        for ref in pod["metadata"].get("ownerReferences") or []:
            if ref.get("kind") == "ReplicaSet":
                rs = self.store.get(self.rs_rt, pod["metadata"]["namespace"], ref.get("name", ""))
                if rs is None:
                    return None
                for r2 in rs["metadata"].get("ownerReferences") or []:
                    if r2.get("kind") == "Deployment":
                        return str(r2.get("name"))
        return None

    async def _run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            await asyncio.sleep(0)
            keys, self.dirty = self.dirty, set()
            for key in keys:
                try:
                    self.reconcile(*key)
                except Exception:  # one odd object must not stop the simulation
                    log.exception("simulator failed on deployment %s/%s", *key)
            self.hpa.run_dirty()

    # ----- reconciliation -----------------------------------------------------------------
    def reconcile(self, namespace: str, name: str) -> None:
        d = self.store.get(self.deploy_rt, namespace, name)
        if d is None or d["metadata"].get("deletionTimestamp"):
            return
        spec = d.get("spec") or {}
        desired = int(spec.get("replicas", 1) if spec.get("replicas") is not None else 1)
        template = spec.get("template") or {}
        h = template_hash(template)
        rs_name = f"{name}-{h}"
        owned_rs = [rs for rs in self.store.list(self.rs_rt, namespace) if self._owned_by(rs, d)]
        current = next((rs for rs in owned_rs if rs["metadata"]["name"] == rs_name), None)
        others = [rs for rs in owned_rs if rs is not current]
        newest = max((_revision(rs) for rs in others), default=0)
        # The new (or rolled-back-to) ReplicaSet's revision is one above every other's.
        revision = _revision(current) if current is not None and _revision(current) > newest else newest + 1
        notes = {
            "deployment.kubernetes.io/revision": str(revision),
            "deployment.kubernetes.io/desired-replicas": str(desired),
            "deployment.kubernetes.io/max-replicas": str(desired + _max_surge(spec, desired)),
        }
        if current is None:
            current = self._create_rs(d, rs_name, h, template, desired, notes)
        elif (current.get("spec") or {}).get("replicas") != desired or any(
            (current["metadata"].get("annotations") or {}).get(k) != v for k, v in notes.items()
        ):
            new = clone(current)
            new["spec"]["replicas"] = desired
            new["metadata"]["annotations"] = {**(new["metadata"].get("annotations") or {}), **notes}
            current = self.store.write_internal(self.rs_rt, new, current, MANAGER)
        if (d["metadata"].get("annotations") or {}).get("deployment.kubernetes.io/revision") != str(revision):
            new_d = clone(d)
            new_d["metadata"]["annotations"] = {
                **(new_d["metadata"].get("annotations") or {}),
                "deployment.kubernetes.io/revision": str(revision),
            }
            d = self.store.write_internal(self.deploy_rt, new_d, d, MANAGER)
        total = updated = ready = 0
        pending_soon = False
        refused = False
        failure: JSON | None = None
        for rs in (
            owned_rs if any(r["metadata"]["name"] == rs_name for r in owned_rs) else [*owned_rs, current]
        ):
            want = desired if rs["metadata"]["name"] == rs_name else 0
            if rs["metadata"]["name"] != rs_name and (rs.get("spec") or {}).get("replicas") != 0:
                new = clone(rs)
                new["spec"]["replicas"] = 0
                rs = self.store.write_internal(self.rs_rt, new, rs, MANAGER)
            pods, error = self._sync_pods(d, rs, want)
            refused = refused or error is not None
            n_ready = 0
            for pod in pods:
                pod, became_ready_later = self._advance_pod(d, pod)
                pending_soon = pending_soon or became_ready_later
                if _pod_ready(pod):
                    n_ready += 1
            cond = self._rs_status(rs["metadata"]["name"], namespace, len(pods), n_ready, error, want)
            # The new ReplicaSet's failure wins over an old one's.
            if cond is not None and (failure is None or rs["metadata"]["name"] == rs_name):
                failure = cond
            total += len(pods)
            ready += n_ready
            if rs["metadata"]["name"] == rs_name:
                updated = len(pods)
        self._deployment_status(d, desired, total, updated, ready, failure)
        key = (namespace, name)
        if pending_soon and key not in self.timers:
            loop = asyncio.get_running_loop()
            self.timers[key] = loop.call_later(self.delay, self._timer_fired, key)
        if refused:
            self._retry_later(key)
        else:
            self.retry_delay.pop(key, None)

    def _retry_later(self, key: tuple[str, str]) -> None:
        """The ReplicaSet controller requeues a failed sync with exponential backoff."""
        delay = self.retry_delay.get(key)
        delay = self.delay if delay is None else min(delay * 2, MAX_RETRY_DELAY)
        self.retry_delay[key] = delay
        old = self.retry_timers.pop(key, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self.retry_timers[key] = loop.call_later(delay, self._retry_fired, key)

    def _retry_fired(self, key: tuple[str, str]) -> None:
        self.retry_timers.pop(key, None)
        self._mark(key)

    def _timer_fired(self, key: tuple[str, str]) -> None:
        self.timers.pop(key, None)
        self._mark(key)

    @staticmethod
    def _owned_by(obj: JSON, owner: JSON) -> bool:
        uid = owner["metadata"]["uid"]
        return any(r.get("uid") == uid for r in obj["metadata"].get("ownerReferences") or [])

    @staticmethod
    def _owner_ref(owner: JSON) -> JSON:
        return {
            "apiVersion": owner["apiVersion"],
            "kind": owner["kind"],
            "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }

    def _create_rs(
        self, d: JSON, rs_name: str, h: str, template: JSON, desired: int, annotations: dict[str, str]
    ) -> JSON:
        labels = dict((template.get("metadata") or {}).get("labels") or {}, **{"pod-template-hash": h})
        tmpl = clone(template)
        tmpl.setdefault("metadata", {})["labels"] = labels
        selector = clone((d.get("spec") or {}).get("selector") or {"matchLabels": {}})
        selector.setdefault("matchLabels", {})["pod-template-hash"] = h
        rs = {
            "metadata": {
                "name": rs_name,
                "namespace": d["metadata"]["namespace"],
                "labels": labels,
                "annotations": dict(annotations),
                "ownerReferences": [self._owner_ref(d)],
            },
            "spec": {"replicas": desired, "selector": selector, "template": tmpl},
        }
        return self.store.write_internal(self.rs_rt, rs, None, MANAGER)

    def _sync_pods(self, d: JSON, rs: JSON, want: int) -> tuple[list[JSON], str | None]:
        """Scale the ReplicaSet's pods to ``want``; the first refused create's message, if any."""
        ns = rs["metadata"]["namespace"]
        pods = [
            p
            for p in self.store.list(self.pod_rt, ns)
            if self._owned_by(p, rs) and not p["metadata"].get("deletionTimestamp")
        ]
        while len(pods) > want:
            victim = pods.pop()
            self.store.delete(self.pod_rt, ns, victim["metadata"]["name"], "Background")
        while len(pods) < want:
            try:
                pods.append(self._create_pod(rs))
            except ApiFailure as exc:
                if self.store.namespace_phase(ns) != "Active":
                    # Upstream ignores NamespaceTerminating refusals: nothing can be created.
                    return pods, None
                self._failed_create_event(rs, exc.message)
                return pods, exc.message
        return pods, None

    def _create_pod(self, rs: JSON) -> JSON:
        """POST the pod as the ReplicaSet controller does: through admission, name generated."""
        tmpl = (rs.get("spec") or {}).get("template") or {}
        ns = rs["metadata"]["namespace"]
        spec = clone(tmpl.get("spec") or {})
        spec["nodeName"] = "emulated-node"
        pod = {
            "metadata": {
                "generateName": f"{rs['metadata']['name']}-",
                "namespace": ns,
                "labels": clone((tmpl.get("metadata") or {}).get("labels") or {}),
                "annotations": clone((tmpl.get("metadata") or {}).get("annotations") or {}),
                "ownerReferences": [self._owner_ref(rs)],
            },
            "spec": spec,
            "status": {
                "phase": "Pending",
                "qosClass": "BestEffort",
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "True",
                        "lastProbeTime": None,
                        "lastTransitionTime": now_iso(),
                    }
                ],
            },
        }
        if not pod["metadata"]["annotations"]:
            del pod["metadata"]["annotations"]
        stored = self.store.create(self.pod_rt, ns, pod, WriteOptions(manager=MANAGER))
        self.pod_created[stored["metadata"]["uid"]] = time.monotonic()
        return stored

    def _failed_create_event(self, rs: JSON, message: str) -> None:
        """``Warning FailedCreate "Error creating: <refusal>"`` on the ReplicaSet."""
        rt = self.store.registry.get("", "v1", "events")
        if rt is None:
            return
        meta = rs["metadata"]
        key = (meta["namespace"], meta["name"])
        posted, combined = self.failed_creates.get(key, (0, None))
        text = f"Error creating: {message}"
        now = now_iso()
        if posted >= SIMILAR_EVENTS:
            text = f"(combined from similar events): {text}"
            old = self.store.get(rt, meta["namespace"], combined) if combined else None
            if old is not None:
                new = dict(old, message=text, lastTimestamp=now, count=int(old.get("count") or 1) + 1)
                self.store.write_internal(rt, new, old, MANAGER)
                self.failed_creates[key] = (posted + 1, combined)
                return
        name = f"{meta['name']}.{time.time_ns():x}"
        event = {
            "metadata": {"name": name, "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
                "resourceVersion": meta.get("resourceVersion", ""),
            },
            "reason": "FailedCreate",
            "message": text,
            "source": {"component": RS_CONTROLLER},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "type": "Warning",
            "eventTime": None,
            "reportingComponent": RS_CONTROLLER,
            "reportingInstance": "",
        }
        self.store.write_internal(rt, event, None, MANAGER)
        self.failed_creates[key] = (posted + 1, name if posted >= SIMILAR_EVENTS else None)

    def _advance_pod(self, d: JSON, pod: JSON) -> tuple[JSON, bool]:
        """Move a pod to the state it should have now; True if it will change later by itself."""
        uid = pod["metadata"]["uid"]
        born = self.pod_created.setdefault(uid, time.monotonic())
        if time.monotonic() - born < self.delay:
            return pod, True
        mode = self.failures.get((d["metadata"]["namespace"], d["metadata"]["name"]))
        status = self._pod_status(pod, mode)
        if status == pod.get("status"):
            return pod, False
        new = dict(pod)
        new["status"] = status
        return self.store.write_internal(self.pod_rt, new, pod, "kubelet"), False

    def _pod_status(self, pod: JSON, mode: str | None) -> JSON:
        old = pod.get("status") or {}
        now = now_iso()
        ip = old.get("podIP")
        if not ip:
            self._ip += 1
            ip = f"10.244.{(self._ip // 250) % 250}.{self._ip % 250 + 2}"
        ready = mode is None
        containers = (pod.get("spec") or {}).get("containers") or []
        statuses = []
        old_cs = {c.get("name"): c for c in old.get("containerStatuses") or []}
        for c in containers:
            prev = old_cs.get(c.get("name")) or {}
            cs: JSON = {
                "name": c.get("name"),
                "image": c.get("image"),
                "imageID": "",
                "ready": ready,
                "started": ready,
            }
            cs["lastState"] = {}
            if mode is None:
                started = ((prev.get("state") or {}).get("running") or {}).get("startedAt") or now
                cs["state"] = {"running": {"startedAt": started}}
                cs["restartCount"] = int(prev.get("restartCount") or 0)
                cs["imageID"] = image_id(str(c.get("image") or ""))
                cs["containerID"] = f"containerd://{pod['metadata']['uid'].replace('-', '')}"
            elif mode == "CrashLoopBackOff":
                cs["state"] = {
                    "waiting": {
                        "reason": "CrashLoopBackOff",
                        "message": f"back-off 5m0s restarting failed container={c.get('name')} pod={pod['metadata']['name']}",
                    }
                }
                cs["lastState"] = {
                    "terminated": {"exitCode": 1, "reason": "Error", "startedAt": now, "finishedAt": now}
                }
                cs["restartCount"] = max(int(prev.get("restartCount") or 0), 3)
            else:
                cs["state"] = {
                    "waiting": {
                        "reason": "ImagePullBackOff",
                        "message": f'Back-off pulling image "{c.get("image")}"',
                    }
                }
                cs["restartCount"] = 0
            statuses.append(cs)
        phase = "Pending" if mode == "ImagePullBackOff" else "Running"

        def cond(type_: str, ok: bool) -> JSON:
            prev = next((x for x in old.get("conditions") or [] if x.get("type") == type_), None)
            status = "True" if ok else "False"
            ts = prev["lastTransitionTime"] if prev and prev.get("status") == status else now
            out: JSON = {"type": type_, "status": status, "lastProbeTime": None, "lastTransitionTime": ts}
            if not ok:
                out["reason"] = "ContainersNotReady"
                out["message"] = (
                    "containers with unready status: ["
                    + " ".join(str(c.get("name")) for c in containers)
                    + "]"
                )
            return out

        return {
            "phase": phase,
            "conditions": [
                cond("Initialized", True),
                cond("Ready", ready),
                cond("ContainersReady", ready),
                cond("PodScheduled", True),
            ],
            "hostIP": "10.0.0.10",
            "hostIPs": [{"ip": "10.0.0.10"}],
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": old.get("startTime") or now,
            "containerStatuses": statuses,
            "qosClass": old.get("qosClass", "BestEffort"),
        }

    def _rs_status(
        self, name: str, namespace: str, replicas: int, ready: int, error: str | None, want: int
    ) -> JSON | None:
        """Write the ReplicaSet's status; return its ReplicaFailure condition, if it has one."""
        rs = self.store.get(self.rs_rt, namespace, name)
        if rs is None:
            return None
        # ReplicaSetStatus.replicas has no omitempty (0 is sent); the other counters do.
        # terminatingReplicas is always set (feature DeploymentReplicaSetTerminatingReplicas,
        # on by default); simulated pods vanish when deleted, so none are ever terminating.
        status: JSON = {"observedGeneration": rs["metadata"].get("generation", 1), "replicas": replicas}
        for k, v in (
            ("fullyLabeledReplicas", replicas),
            ("readyReplicas", ready),
            ("availableReplicas", ready),
        ):
            if v:
                status[k] = v
        status["terminatingReplicas"] = 0
        # calculateStatus: the condition is set on the first failure (its message kept while
        # failures go on) and removed after a sync without one.
        conditions = [c for c in (rs.get("status") or {}).get("conditions") or [] if isinstance(c, dict)]
        failure = next((c for c in conditions if c.get("type") == "ReplicaFailure"), None)
        if error is not None and failure is None:
            failure = {
                "type": "ReplicaFailure",
                "status": "True",
                "lastTransitionTime": now_iso(),
                "reason": "FailedCreate" if replicas < want else "FailedDelete",
                "message": error,
            }
            conditions.append(failure)
        elif error is None and failure is not None:
            conditions = [c for c in conditions if c.get("type") != "ReplicaFailure"]
            failure = None
        if conditions:
            status["conditions"] = conditions
        if status != rs.get("status"):
            new = dict(rs)
            new["status"] = status
            self.store.write_internal(self.rs_rt, new, rs, MANAGER)
        return failure

    def _deployment_status(
        self, d: JSON, desired: int, total: int, updated: int, ready: int, failure: JSON | None = None
    ) -> None:
        d = self.store.get(self.deploy_rt, d["metadata"]["namespace"], d["metadata"]["name"]) or d
        old = d.get("status") or {}
        now = now_iso()
        spec = d.get("spec") or {}
        available_ok = ready >= desired - _max_unavailable(spec, desired)
        complete = updated == desired and ready == desired and total == desired
        old_conds = {c.get("type"): c for c in old.get("conditions") or []}

        def cond(type_: str, ok: bool, reason: str, message: str) -> JSON:
            prev = old_conds.get(type_)
            status = "True" if ok else "False"
            ts = prev["lastTransitionTime"] if prev and prev.get("status") == status else now
            upd = (
                prev["lastUpdateTime"]
                if prev and prev.get("status") == status and prev.get("reason") == reason
                else now
            )
            return {
                "type": type_,
                "status": status,
                "lastUpdateTime": upd,
                "lastTransitionTime": ts,
                "reason": reason,
                "message": message,
            }

        name = d["metadata"]["name"]
        rs_name = f"{name}-{template_hash(spec.get('template') or {})}"
        # Progressing is set first (at the ReplicaSet's creation), Available after, as upstream.
        conditions = [
            cond(
                "Progressing",
                True,
                "NewReplicaSetAvailable" if complete else "ReplicaSetUpdated",
                f'ReplicaSet "{rs_name}" has successfully progressed.'
                if complete
                else f'ReplicaSet "{rs_name}" is progressing.',
            ),
            cond(
                "Available",
                available_ok,
                "MinimumReplicasAvailable" if available_ok else "MinimumReplicasUnavailable",
                "Deployment has minimum availability."
                if available_ok
                else "Deployment does not have minimum availability.",
            ),
        ]
        status: JSON = {"observedGeneration": d["metadata"].get("generation", 1)}
        for k, v in (
            ("replicas", total),
            ("updatedReplicas", updated),
            ("readyReplicas", ready),
            ("availableReplicas", ready),
            ("unavailableReplicas", max(desired - ready, 0)),
        ):
            if v:
                status[k] = v
        status["terminatingReplicas"] = 0
        if failure is not None:
            # ReplicaSetToDeploymentCondition; an unchanged status and reason keep the old one.
            prev = old_conds.get("ReplicaFailure")
            if prev and prev.get("status") == failure["status"] and prev.get("reason") == failure["reason"]:
                copied = prev
            else:
                at = failure["lastTransitionTime"]
                copied = {
                    "type": "ReplicaFailure",
                    "status": failure["status"],
                    "lastUpdateTime": at,
                    "lastTransitionTime": at,
                    "reason": failure["reason"],
                    "message": failure["message"],
                }
            # Progressing is re-set (so moved last) at every sync that sees progress.
            conditions = [conditions[1], copied, conditions[0]]
        status["conditions"] = conditions
        if status != old:
            new = dict(d)
            new["status"] = status
            self.store.write_internal(self.deploy_rt, new, d, MANAGER)


def _pod_ready(pod: JSON) -> bool:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return bool(c.get("status") == "True")
    return False
