"""What kube-apiserver does to a built-in object between decoding and storing it.

The order is the real server's: mutating admission (LimitRanger's defaults on new pods), the
kind's validation (422: container requests within limits and quantities valid, ResourceQuota
and LimitRange specs), status the strategy fills in (a new pod's ``qosClass``), validating
admission (403: LimitRanger's min/max/ratio, then ResourceQuota).  ``Store`` runs ``admit`` on
every create and update; the quota charge it returns is applied when the object is stored, so
a dry run charges nothing.  Objects the emulated controllers write directly (ReplicaSets,
Events, a namespace's default ServiceAccount) skip admission; pods of the workload simulator
go through it, as the ReplicaSet controller's pods do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kube_emulator import limitrange, quota
from kube_emulator.errors import cause, invalid
from kube_emulator.resourcelists import Q, containers, parse_list, pod_spec_path, qos_class
from kube_emulator.resources import ResourceType

if TYPE_CHECKING:
    from kube_emulator.store import Store

JSON = dict[str, Any]


class Admission:
    def __init__(self, store: Store) -> None:
        self.store = store

    def admit(
        self, rt: ResourceType, obj: JSON, old: JSON | None, subresource: str = ""
    ) -> Callable[[], None] | None:
        """Mutate and check ``obj`` (``old`` is None on create); raise the 422/403 the real
        server would; return the quota charge to apply when it is stored."""
        if rt.crd is not None:
            return quota.check(self.store, rt, obj, old, subresource)
        is_pod = rt.group == "" and rt.plural == "pods"
        creating = old is None
        namespace = obj["metadata"].get("namespace", "")
        if is_pod and creating and not subresource:
            limitrange.default_pod(obj, self._limit_ranges(namespace))
        self._validate(rt, obj, subresource)
        if is_pod and creating and isinstance(obj.get("spec"), dict):
            status = obj.get("status")
            if not isinstance(status, dict):
                status = obj["status"] = {}
            status["qosClass"] = qos_class(obj["spec"])
        if not subresource:
            violations: list[str] = []
            if is_pod and creating:
                violations = limitrange.check_pod(obj, self._limit_ranges(namespace))
            elif rt.group == "" and rt.plural == "persistentvolumeclaims":
                violations = limitrange.check_claim(obj, self._limit_ranges(namespace))
            if violations:
                raise quota.forbidden(rt, obj["metadata"].get("name", ""), limitrange.aggregate(violations))
        return quota.check(self.store, rt, obj, old, subresource)

    def warnings(self, rt: ResourceType, obj: JSON) -> list[str]:
        """What the kind's strategy warns about on create."""
        if rt.group == "" and rt.plural == "resourcequotas":
            return quota.warnings_on_create(obj)
        return []

    def _limit_ranges(self, namespace: str) -> list[JSON]:
        lr_rt = self.store.registry.get("", "v1", "limitranges")
        assert lr_rt is not None
        return self.store.list(lr_rt, namespace)

    def _validate(self, rt: ResourceType, obj: JSON, subresource: str) -> None:
        errors: list[JSON] = []
        if rt.group == "" and rt.plural == "resourcequotas":
            errors = quota.validate(obj, status_write=subresource == "status")
        elif rt.group == "" and rt.plural == "limitranges":
            errors = limitrange.validate(obj)
        elif subresource != "status":
            path = pod_spec_path(rt)
            if path is not None:
                spec: Any = obj
                for step in path:
                    spec = spec.get(step) if isinstance(spec, dict) else None
                if isinstance(spec, dict):
                    errors = validate_pod_resources(spec, ".".join(path))
        if errors:
            raise invalid(rt.kind, rt.group, obj["metadata"].get("name", ""), errors)


def validate_pod_resources(spec: JSON, at: str) -> list[JSON]:
    """The resource rules of ``validateResourceRequirements`` for every container: quantities
    non-negative (whole for integer resources), requests within limits, equal to them for
    resources that cannot be overcommitted."""
    errors: list[JSON] = []
    for group in ("containers", "initContainers"):
        for i, c in enumerate(containers(spec, group)):
            base = f"{at}.{group}[{i}].resources"
            limits = parse_list((c.get("resources") or {}).get("limits"))
            requests = parse_list((c.get("resources") or {}).get("requests"))
            for name, q in sorted(limits.items()):
                errors += _quantity_value(name, q, f"{base}.limits[{name}]")
            for name, q in sorted(requests.items()):
                errors += _quantity_value(name, q, f"{base}.requests[{name}]")
                lim = limits.get(name)
                overcommit = limitrange.overcommit_allowed(name)
                if lim is not None:
                    if q.cmp(lim) != 0 and not overcommit:
                        errors.append(
                            cause(
                                f"{base}.requests",
                                f'Invalid value: "{q}": must be equal to {name} limit of {lim}',
                            )
                        )
                    elif q.cmp(lim) > 0:
                        errors.append(
                            cause(
                                f"{base}.requests",
                                f'Invalid value: "{q}": must be less than or equal to {name} limit of {lim}',
                            )
                        )
                elif not overcommit:
                    errors.append(
                        cause(
                            f"{base}.limits",
                            "Required value: Limit must be set for non overcommitable resources",
                            "FieldValueRequired",
                        )
                    )
    return errors


def _quantity_value(name: str, q: Q, at: str) -> list[JSON]:
    """``ValidateResourceQuantityValue``."""
    out = []
    if q.value < 0:
        out.append(cause(at, f'Invalid value: "{q}": must be greater than or equal to 0'))
    if quota.integer_resource(name) and q.scaled(-3) % 1000 != 0:
        out.append(cause(at, f'Invalid value: "{q}": must be an integer'))
    return out
