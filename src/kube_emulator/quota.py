"""ResourceQuota: validation, the quota admission plugin and the quota controller.

As kube-apiserver v1.36 (``k8s.io/apiserver/pkg/admission/plugin/resourcequota``) and
kube-controller-manager's resourcequota controller do it:

* Usage is measured by evaluators: pods (``pods``, ``count/pods``, ``cpu``/``requests.cpu``,
  ``limits.cpu``, the same for memory and ephemeral-storage, hugepages, extended resources as
  ``requests.<name>``; terminal pods count only in ``count/pods``; scopes ``Terminating``,
  ``NotTerminating``, ``BestEffort``, ``NotBestEffort``, ``PriorityClass``,
  ``CrossNamespacePodAffinity``), services (``services``, ``services.loadbalancers``,
  ``services.nodeports``), persistent volume claims (``persistentvolumeclaims``,
  ``requests.storage``, per storage class), and an object counter for every other resource
  (``count/<resource>[.<group>]``, plus the legacy ``configmaps``, ``secrets``,
  ``resourcequotas``, ``replicationcontrollers``).
* Admission (creates; service updates too) only considers what a quota's ``status.hard`` lists,
  so a quota the controller has not synced yet limits nothing.  A pod that leaves out a request
  or limit its quota tracks is refused (``failed quota: q: must specify limits.cpu for: app``);
  an object whose usage would exceed ``status.hard`` is refused
  (``exceeded quota: q, requested: pods=1, used: pods=1, limited: pods=1``); an admitted one
  is charged to ``status.used`` at once, before it is stored.
* The controller copies ``spec.hard`` to ``status.hard`` and recomputes ``status.used`` from the
  stored objects when a quota's spec changes and when counted objects change (upstream
  replenishes on deletions and resyncs every 5 minutes; recomputing on every change is faster,
  which is allowed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from kube_emulator.errors import ApiFailure, cause
from kube_emulator.patch import clone
from kube_emulator.resourcelists import (
    ONE,
    ZERO,
    Q,
    ResourceList,
    add,
    add_into,
    container_list,
    containers,
    mask,
    parse_list,
    pod_limits,
    pod_requests,
    pretty,
    qos_class,
    remove_zeros,
    to_json,
)
from kube_emulator.resources import ResourceType

if TYPE_CHECKING:
    from kube_emulator.store import Store

JSON = dict[str, Any]
log = logging.getLogger(__name__)
MANAGER = "kube-controller-manager"

POD_RESOURCES = frozenset(
    {
        "count/pods",
        "cpu",
        "memory",
        "ephemeral-storage",
        "requests.cpu",
        "requests.memory",
        "requests.ephemeral-storage",
        "limits.cpu",
        "limits.memory",
        "limits.ephemeral-storage",
        "pods",
    }
)
# Quota on these makes every container name them (the "backward compatibility requirement").
CONTAINER_REQUIRED = frozenset(
    {"cpu", "memory", "requests.cpu", "requests.memory", "limits.cpu", "limits.memory"}
)
SERVICE_RESOURCES = frozenset({"services", "services.loadbalancers", "services.nodeports", "count/services"})
PVC_RESOURCES = frozenset({"persistentvolumeclaims", "requests.storage"})
STORAGE_CLASS = ".storageclass.storage.k8s.io/"
LEGACY_ALIASES = {
    ("", "configmaps"): "configmaps",
    ("", "resourcequotas"): "resourcequotas",
    ("", "replicationcontrollers"): "replicationcontrollers",
    ("", "secrets"): "secrets",
}
INTEGER_RESOURCES = frozenset(
    {
        "pods",
        "resourcequotas",
        "services",
        "replicationcontrollers",
        "secrets",
        "configmaps",
        "persistentvolumeclaims",
        "services.nodeports",
        "services.loadbalancers",
    }
)
# Usage changes that make the controller recount a namespace: creations and deletions of
# anything, plus these edits.
_POD_PHASES_DONE = ("Succeeded", "Failed")


def count_name(rt: ResourceType) -> str:
    """``ObjectCountQuotaResourceNameFor``."""
    return f"count/{rt.plural}" if not rt.group else f"count/{rt.plural}.{rt.group}"


def _native(name: str) -> bool:
    return "/" not in name or "kubernetes.io/" in name


def _extended(name: str) -> bool:
    """``helper.IsExtendedResourceName`` (qualified-name check simplified to "has a slash")."""
    return not _native(name) and not name.startswith("requests.")


def integer_resource(name: str) -> bool:
    return name in INTEGER_RESOURCES or _extended(name)


# ----- evaluators ---------------------------------------------------------------------------
class Evaluator:
    """Usage of one resource (``quota.Evaluator``)."""

    def __init__(self, rt: ResourceType) -> None:
        self.rt = rt
        alias = LEGACY_ALIASES.get((rt.group, rt.plural))
        self.names = frozenset({count_name(rt), alias} if alias else {count_name(rt)})

    def handles(self, operation: str) -> bool:
        return operation == "CREATE"

    def matching(self, names: list[str]) -> list[str]:
        return [n for n in names if n in self.names]

    def matches_scope(self, scope: JSON, obj: JSON) -> bool:
        return False

    def usage(self, obj: JSON) -> ResourceList:
        return {n: ONE for n in sorted(self.names)}

    def constraints(self, required: list[str], obj: JSON) -> str | None:
        return None


class PodEvaluator(Evaluator):
    def __init__(self, rt: ResourceType) -> None:
        super().__init__(rt)
        self.names = POD_RESOURCES

    def matching(self, names: list[str]) -> list[str]:
        out = [n for n in names if n in POD_RESOURCES]
        for n in names:
            if n.startswith(("hugepages-", "requests.hugepages-")) or (
                n.startswith("requests.") and _extended(n[len("requests.") :])
            ):
                out.append(n)
        return out

    def matches_scope(self, scope: JSON, obj: JSON) -> bool:
        spec = obj.get("spec") or {}
        name = scope.get("scopeName")
        if name == "Terminating":
            return _terminating(spec)
        if name == "NotTerminating":
            return not _terminating(spec)
        if name == "BestEffort":
            return qos_class(spec) == "BestEffort"
        if name == "NotBestEffort":
            return qos_class(spec) != "BestEffort"
        if name == "PriorityClass":
            value = spec.get("priorityClassName") or ""
            op, values = scope.get("operator"), scope.get("values") or []
            if op == "Exists":
                return bool(value)
            if op == "DoesNotExist":
                return not value
            if op == "In":
                return bool(value) and value in values
            if op == "NotIn":
                return not value or value not in values
            return False
        if name == "CrossNamespacePodAffinity":
            return _cross_namespace_affinity(spec)
        return False

    def usage(self, obj: JSON) -> ResourceList:
        result: ResourceList = {"count/pods": ONE}
        if not counts_as_live(obj):
            return result
        spec = obj.get("spec") or {}
        return add(result, _compute_usage(pod_requests(spec), pod_limits(spec)))

    def constraints(self, required: list[str], obj: JSON) -> str | None:
        spec = obj.get("spec") or {}
        pod_level = spec.get("resources") or {}
        if any(
            k in ("cpu", "memory") or k.startswith("hugepages-")
            for k in (*(pod_level.get("requests") or {}), *(pod_level.get("limits") or {}))
        ):
            return None
        need = set(required) & CONTAINER_REQUIRED
        missing: dict[str, set[str]] = {}
        for c in (*containers(spec, "containers"), *containers(spec, "initContainers")):
            have = set(_compute_usage(container_list(c, "requests"), container_list(c, "limits")))
            for name in need - have:
                missing.setdefault(name, set()).add(str(c.get("name", "")))
        if not missing:
            return None
        return "must specify " + "; ".join(
            f"{r} for: {','.join(sorted(missing[r]))}" for r in sorted(missing)
        )


def _compute_usage(requests: ResourceList, limits: ResourceList) -> ResourceList:
    """``podComputeUsageHelper``."""
    out: ResourceList = {"pods": ONE}
    for res in ("cpu", "memory", "ephemeral-storage"):
        if res in requests:
            out[res] = requests[res]
            out[f"requests.{res}"] = requests[res]
        if res in limits:
            out[f"limits.{res}"] = limits[res]
    for name, q in requests.items():
        if name.startswith("hugepages-"):
            out[name] = q
            out[f"requests.{name}"] = q
        if _extended(name):
            out[f"requests.{name}"] = q
    return out


def _terminating(spec: JSON) -> bool:
    deadline = spec.get("activeDeadlineSeconds")
    return isinstance(deadline, int) and not isinstance(deadline, bool) and deadline >= 0


def _cross_namespace_affinity(spec: JSON) -> bool:
    affinity = spec.get("affinity") or {}
    for kind in ("podAffinity", "podAntiAffinity"):
        a = affinity.get(kind) or {}
        terms = list(a.get("requiredDuringSchedulingIgnoredDuringExecution") or [])
        terms += [
            t.get("podAffinityTerm") or {}
            for t in a.get("preferredDuringSchedulingIgnoredDuringExecution") or []
        ]
        if any(
            t.get("namespaces") or t.get("namespaceSelector") is not None
            for t in terms
            if isinstance(t, dict)
        ):
            return True
    return False


def counts_as_live(pod: JSON) -> bool:
    """``QuotaV1Pod``: terminal pods, and pods past their deletion grace period, use nothing."""
    if (pod.get("status") or {}).get("phase") in _POD_PHASES_DONE:
        return False
    meta = pod.get("metadata") or {}
    deleted, grace = meta.get("deletionTimestamp"), meta.get("deletionGracePeriodSeconds")
    if deleted and grace is not None:
        try:
            at = datetime.fromisoformat(str(deleted).replace("Z", "+00:00")).timestamp()
        except ValueError:
            return True
        if time.time() > at + float(grace):
            return False
    return True


class ServiceEvaluator(Evaluator):
    def __init__(self, rt: ResourceType) -> None:
        super().__init__(rt)
        self.names = SERVICE_RESOURCES

    def handles(self, operation: str) -> bool:
        return operation in ("CREATE", "UPDATE")

    def usage(self, obj: JSON) -> ResourceList:
        spec = obj.get("spec") or {}
        ports = [p for p in spec.get("ports") or [] if isinstance(p, dict)]
        out: ResourceList = {
            "count/services": ONE,
            "services": ONE,
            "services.loadbalancers": ZERO,
            "services.nodeports": ZERO,
        }
        typ = spec.get("type")
        if typ == "NodePort":
            out["services.nodeports"] = Q.parse(len(ports))
        elif typ == "LoadBalancer":
            if spec.get("allocateLoadBalancerNodePorts") is False:
                out["services.nodeports"] = Q.parse(sum(1 for p in ports if p.get("nodePort")))
            else:
                out["services.nodeports"] = Q.parse(len(ports))
            out["services.loadbalancers"] = ONE
        return out


class ClaimEvaluator(Evaluator):
    def __init__(self, rt: ResourceType) -> None:
        super().__init__(rt)
        self.names = PVC_RESOURCES | {"count/persistentvolumeclaims"}

    def matching(self, names: list[str]) -> list[str]:
        return [
            n for n in names if n in self.names or any(n.endswith(STORAGE_CLASS + r) for r in PVC_RESOURCES)
        ]

    def usage(self, obj: JSON) -> ResourceList:
        spec = obj.get("spec") or {}
        out: ResourceList = {"persistentvolumeclaims": ONE, "count/persistentvolumeclaims": ONE}
        sc = spec.get("storageClassName") or (obj.get("metadata", {}).get("annotations") or {}).get(
            "volume.beta.kubernetes.io/storage-class"
        )
        if sc:
            out[f"{sc}{STORAGE_CLASS}persistentvolumeclaims"] = ONE
        storage = parse_list((spec.get("resources") or {}).get("requests")).get("storage")
        if storage is not None:
            out["requests.storage"] = storage
            if sc:
                out[f"{sc}{STORAGE_CLASS}requests.storage"] = storage
        return out


def evaluator_for(rt: ResourceType) -> Evaluator:
    if rt.group == "" and rt.plural == "pods":
        return PodEvaluator(rt)
    if rt.group == "" and rt.plural == "services":
        return ServiceEvaluator(rt)
    if rt.group == "" and rt.plural == "persistentvolumeclaims":
        return ClaimEvaluator(rt)
    return Evaluator(rt)


def _selectors(rq: JSON) -> list[JSON]:
    """``getScopeSelectorsFromQuota``: each scope as an Exists requirement, then the selector."""
    spec = rq.get("spec") or {}
    out: list[JSON] = [{"scopeName": s, "operator": "Exists"} for s in spec.get("scopes") or []]
    out += [e for e in (spec.get("scopeSelector") or {}).get("matchExpressions") or [] if isinstance(e, dict)]
    return out


def _applies(ev: Evaluator, rq: JSON, obj: JSON, hard: ResourceList) -> bool:
    """``generic.Matches``: the quota tracks something this evaluator measures and every scope
    of it matches the object."""
    if not ev.matching(list(hard)):
        return False
    return all(ev.matches_scope(s, obj) for s in _selectors(rq))


# ----- validation ---------------------------------------------------------------------------
def validate(rq: JSON, status_write: bool) -> list[JSON]:
    """The quantity rules of ``ValidateResourceQuota``: non-negative, integer resources whole.
    (Resource-name and scope checks are left out.)"""
    errors: list[JSON] = []
    fields = ("status.hard", "status.used") if status_write else ("spec.hard",)
    for field in fields:
        part, key = field.split(".")
        for name, q in sorted(parse_list((rq.get(part) or {}).get(key)).items()):
            at = f"{field}[{name}]"
            if q.value < 0:
                errors.append(cause(at, f'Invalid value: "{q}": must be greater than or equal to 0'))
            if integer_resource(name) and q.scaled(-3) % 1000 != 0:
                errors.append(cause(at, f'Invalid value: "{q}": must be an integer'))
    return errors


def warnings_on_create(rq: JSON) -> list[str]:
    """``WarningsOnCreate``: a request quota above its limit quota."""
    hard = parse_list((rq.get("spec") or {}).get("hard"))
    out = []
    for res in ("cpu", "memory", "storage", "ephemeral-storage"):
        req_name = f"requests.{res}"
        req = hard.get(req_name)
        if req is None and res in ("cpu", "memory") and res in hard:
            req_name, req = res, hard[res]
        lim = hard.get(f"limits.{res}")
        if req is not None and lim is not None and req.cmp(lim) > 0:
            out.append(f"ResourceQuota {req_name} ({req}) should be less than limits.{res} ({lim})")
    return out


# ----- admission ----------------------------------------------------------------------------
def forbidden(rt: ResourceType, name: str, text: str) -> ApiFailure:
    """``admission.NewForbidden``: ``<resource>[.<group>] "<name>" is forbidden: <text>``."""
    qualified = f"{rt.plural}.{rt.group}" if rt.group else rt.plural
    return ApiFailure(
        403,
        f'{qualified} "{name}" is forbidden: {text}',
        "Forbidden",
        name=name,
        group=rt.group,
        kind=rt.plural,
    )


def check(
    store: Store, rt: ResourceType, obj: JSON, old: JSON | None, subresource: str = ""
) -> Callable[[], None] | None:
    """``CheckRequest``: raise the 403 the quota plugin would, or return what charges the
    admitted object to the quotas (run it when the object is stored), or None."""
    if not rt.namespaced or subresource:
        return None
    ev = evaluator_for(rt)
    if not ev.handles("CREATE" if old is None else "UPDATE"):
        return None
    namespace = obj["metadata"].get("namespace", "")
    name = obj["metadata"].get("name", "")
    quotas = store.list(_rq_type(store), namespace)
    interesting: list[tuple[JSON, ResourceList, ResourceList]] = []
    for rq in quotas:
        status = rq.get("status") or {}
        hard = parse_list(status.get("hard"))
        if not _applies(ev, rq, obj, hard):
            continue
        restricted = ev.matching(list(hard))
        problem = ev.constraints(restricted, obj)
        if problem:
            raise forbidden(rt, name, f"failed quota: {rq['metadata']['name']}: {problem}")
        used = parse_list(status.get("used"))
        if any(r in hard and r not in used for r in restricted):
            raise forbidden(
                rt,
                name,
                f"status unknown for quota: {rq['metadata']['name']}, resources: {','.join(sorted(restricted))}",
            )
        interesting.append((rq, hard, used))
    if not interesting:
        return None
    usage = ev.usage(obj)
    negative = sorted(k for k, v in usage.items() if v.value < 0)
    if negative:
        raise forbidden(rt, name, f"quota usage is negative for resource(s): {','.join(negative)}")
    deltas: dict[str, ResourceList] = {}
    for rq, _hard, _used in interesting:
        delta = usage
        if old is not None and old["metadata"].get("resourceVersion"):
            delta = _subtract_floor(usage, ev.usage(old)) if _applies(ev, rq, old, _hard) else usage
        delta = remove_zeros(delta)
        if delta:
            deltas[rq["metadata"]["name"]] = delta
    if not deltas:
        return None
    updates: list[tuple[JSON, ResourceList]] = []
    for rq, hard, used in interesting:
        if rq["metadata"]["name"] not in deltas:
            continue
        requested = mask(deltas[rq["metadata"]["name"]], hard)
        new_used = add(used, requested)
        exceeded = sorted(k for k in requested if new_used[k].cmp(hard[k]) > 0)
        if exceeded:
            raise forbidden(
                rt,
                name,
                f"exceeded quota: {rq['metadata']['name']}, requested: {pretty(mask(requested, exceeded))}, "
                f"used: {pretty(mask(used, exceeded))}, limited: {pretty(mask(hard, exceeded))}",
            )
        updates.append((rq, new_used))

    def charge() -> None:
        for rq, new_used in updates:
            _write_used(store, rq, new_used)

    return charge


def _subtract_floor(a: ResourceList, b: ResourceList) -> ResourceList:
    """``quota.SubtractWithNonNegativeResult``."""
    out: ResourceList = {}
    for k, v in a.items():
        d = v - b[k] if k in b else v
        out[k] = d if d.value > 0 else ZERO
    return out


def _rq_type(store: Store) -> ResourceType:
    rt = store.registry.get("", "v1", "resourcequotas")
    assert rt is not None
    return rt


def _write_used(store: Store, rq: JSON, used: ResourceList) -> None:
    # The plugin updates the quota it read; a newer version would make it retry, and the
    # emulator has no concurrent writer between the check and this write.
    current = store.get(_rq_type(store), rq["metadata"]["namespace"], rq["metadata"]["name"])
    if current is None:
        return
    new = clone(current)
    status = new.setdefault("status", {})
    status["used"] = {**(status.get("used") or {}), **to_json(used)}
    store.write_internal(_rq_type(store), new, current, "kube-apiserver")


# ----- the controller -----------------------------------------------------------------------
def usage_in(store: Store, rq: JSON) -> JSON:
    """The status the quota controller would write now (``syncResourceQuota``)."""
    spec_hard = parse_list((rq.get("spec") or {}).get("hard"))
    namespace = rq["metadata"]["namespace"]
    names = list(spec_hard)
    used: ResourceList = {}
    for rt in _countable(store):
        ev = evaluator_for(rt)
        wanted = ev.matching(names)
        if not wanted:
            continue
        total: ResourceList = {n: ZERO for n in wanted}
        selectors = _selectors(rq)
        for obj in store.list(rt, namespace):
            if all(ev.matches_scope(s, obj) for s in selectors):
                total = add(total, ev.usage(obj))
        add_into(used, mask(total, wanted))
    # Usage the controller cannot measure keeps its last value, as upstream.
    merged = {**parse_list((rq.get("status") or {}).get("used")), **used}
    return {"hard": to_json(spec_hard), "used": to_json(mask(merged, names))}


def _countable(store: Store) -> list[ResourceType]:
    """One ResourceType per stored namespaced resource (its storage version)."""
    seen: set[tuple[str, str]] = set()
    out = []
    for rt in store.registry:
        if not rt.namespaced or rt.version != rt.storage_version or rt.storage_key in seen:
            continue
        seen.add(rt.storage_key)
        out.append(rt)
    return out


class QuotaController:
    """Keeps every ResourceQuota's status current; listens to the store's change feed."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.dirty: set[str] = set()
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.rq_rt = _rq_type(store)
        # namespace -> how many quotas it has: most writes land where there is none.
        self.quotas: dict[str, int] = {}
        for rq in store.list(self.rq_rt, None):
            ns = rq["metadata"]["namespace"]
            self.quotas[ns] = self.quotas.get(ns, 0) + 1
        store.listeners.append(self.on_change)

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name="apiserver-quota")
        for rq in self.store.list(self.rq_rt, None):
            self.dirty.add(rq["metadata"]["namespace"])
        self.wake.set()

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    def on_change(self, type_: str, rt: ResourceType, obj: JSON, old: JSON | None) -> None:
        if not rt.namespaced:
            return
        namespace = obj["metadata"].get("namespace", "")
        if rt.storage_key == self.rq_rt.storage_key:
            if type_ == "ADDED":
                self.quotas[namespace] = self.quotas.get(namespace, 0) + 1
            elif type_ == "DELETED":
                left = self.quotas.get(namespace, 1) - 1
                if left > 0:
                    self.quotas[namespace] = left
                else:
                    self.quotas.pop(namespace, None)
            # Status writes are this controller's or the admission's; only spec changes matter.
            if type_ == "ADDED" or (
                type_ == "MODIFIED" and old is not None and old.get("spec") != obj.get("spec")
            ):
                self._mark(namespace)
            return
        if namespace in self.dirty or namespace not in self.quotas:
            return
        if type_ != "MODIFIED" or old is None or self._usage_may_change(rt, obj, old):
            self._mark(namespace)

    @staticmethod
    def _usage_may_change(rt: ResourceType, obj: JSON, old: JSON) -> bool:
        if rt.group != "":
            return False
        if rt.plural == "pods":
            return counts_as_live(obj) != counts_as_live(old) or obj["metadata"].get(
                "deletionTimestamp"
            ) != old["metadata"].get("deletionTimestamp")
        if rt.plural in ("services", "persistentvolumeclaims"):
            return obj.get("spec") != old.get("spec")
        return False

    def _mark(self, namespace: str) -> None:
        self.dirty.add(namespace)
        self.wake.set()

    async def _run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            # Yield once so a burst of writes is counted once, like a controller's queue.
            await asyncio.sleep(0)
            namespaces, self.dirty = self.dirty, set()
            for ns in sorted(namespaces):
                try:
                    self.sync(ns)
                except Exception:  # one odd object must not stop the controller
                    log.exception("quota controller failed on namespace %s", ns)

    def sync(self, namespace: str) -> None:
        for rq in self.store.list(self.rq_rt, namespace):
            if rq["metadata"].get("deletionTimestamp"):
                continue
            status = usage_in(self.store, rq)
            if status == rq.get("status"):
                continue
            new = dict(rq)
            new["status"] = status
            self.store.write_internal(self.rq_rt, new, rq, MANAGER)
