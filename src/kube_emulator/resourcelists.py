"""Resource quantities as kube-apiserver decodes, stores and sums them.

Built-in objects are Go structs on the real server: every ``resource.Quantity`` in them is parsed
when the request is decoded (a bad one fails the whole request with 400) and serialised back in
canonical form (``1000m`` -> ``1``, ``2048Mi`` -> ``2Gi``).  ``canonicalize`` does that for the
kinds that carry quantities.  ``Q`` and the ``ResourceList`` helpers are the arithmetic of
``k8s.io/apimachinery/pkg/api/resource`` and ``k8s.io/apiserver/pkg/quota/v1`` that the quota
and LimitRange admission need (a sum keeps the suffix family of its first non-zero term);
``pod_requests`` / ``pod_limits`` / ``qos_class`` follow ``component-helpers/resource`` and
``ComputePodQOS``.  The parsing itself is ``choreo_dp.api.quantity``.
"""

from __future__ import annotations

import decimal
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from choreo_dp.api.quantity import (
    MILLI,
    Format,
    InvalidQuantity,
    format_quantity,
    parse_quantity,
    quantity_format,
)
from kube_emulator.errors import ApiFailure
from kube_emulator.resources import ResourceType

JSON = dict[str, Any]
# resource.MaxMilliValue: above it Go compares whole units instead of milli-units.
MAX_MILLI_VALUE = (2**63 - 1) // 1000
# The text of resource.ErrFormatWrong, which the decoder reports for any malformed quantity.
FORMAT_WRONG = "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
POD_LEVEL_RESOURCES = ("cpu", "memory")


@dataclass(frozen=True)
class Q:
    """A ``resource.Quantity``: its value and the suffix family it is printed in."""

    value: Decimal
    fmt: Format = "DecimalSI"

    @classmethod
    def parse(cls, s: Any) -> Q:
        if isinstance(s, Q):
            return s
        return cls(parse_quantity(s), quantity_format(s))

    def __add__(self, other: Q) -> Q:
        # Quantity.Add: a zero receiver takes the other's format.
        return Q(self.value + other.value, other.fmt if self.value == 0 else self.fmt)

    def __sub__(self, other: Q) -> Q:
        return Q(self.value - other.value, other.fmt if self.value == 0 else self.fmt)

    def __str__(self) -> str:
        return format_quantity(self.value, self.fmt)

    def cmp(self, other: Q) -> int:
        return (self.value > other.value) - (self.value < other.value)

    def scaled(self, scale: int) -> int:
        """``Quantity.ScaledValue``: ceil(value / 10^scale); ``Value()`` is 0, ``MilliValue()`` -3."""
        return int(self.value.scaleb(-scale).to_integral_value(rounding=decimal.ROUND_CEILING))


ZERO = Q(Decimal(0))
ONE = Q(Decimal(1))
ResourceList = dict[str, Q]


def parse_list(raw: Any) -> ResourceList:
    """A ``ResourceList`` from JSON; entries that are not quantities are skipped (the objects this
    reads were canonicalised on the way in, so only controller-written oddities can be)."""
    out: ResourceList = {}
    if isinstance(raw, Mapping):
        for k, v in raw.items():
            try:
                out[str(k)] = Q.parse(v)
            except InvalidQuantity:
                continue
    return out


def to_json(rl: Mapping[str, Q]) -> dict[str, str]:
    return {k: str(v) for k, v in sorted(rl.items())}


def add(a: Mapping[str, Q], b: Mapping[str, Q]) -> ResourceList:
    """``quota.Add``."""
    out = dict(a)
    for k, v in b.items():
        out[k] = out[k] + v if k in out else v
    return out


def add_into(target: ResourceList, b: Mapping[str, Q]) -> None:
    for k, v in b.items():
        target[k] = target[k] + v if k in target else v


def max_into(target: ResourceList, b: Mapping[str, Q]) -> None:
    for k, v in b.items():
        if k not in target or v.cmp(target[k]) > 0:
            target[k] = v


def mask(rl: Mapping[str, Q], names: Iterable[str]) -> ResourceList:
    keep = set(names)
    return {k: v for k, v in rl.items() if k in keep}


def remove_zeros(rl: Mapping[str, Q]) -> ResourceList:
    return {k: v for k, v in rl.items() if v.value != 0}


def pretty(rl: Mapping[str, Q]) -> str:
    """The admission plugin's ``prettyPrint``: ``k=v`` sorted by name, joined by commas."""
    return ",".join(f"{k}={rl[k]}" for k in sorted(rl))


# ----- pods ---------------------------------------------------------------------------------
def containers(spec: JSON, group: str) -> list[JSON]:
    return [c for c in spec.get(group) or [] if isinstance(c, dict)]


def container_list(c: JSON, which: str) -> ResourceList:
    return parse_list((c.get("resources") or {}).get(which))


def _sidecar(c: JSON) -> bool:
    return c.get("restartPolicy") == "Always"


def _aggregate(spec: JSON, which: str) -> ResourceList:
    """``AggregateContainerRequests`` / ``...Limits``: app containers summed, then the init
    containers' peak (each with the restartable ones before it), sidecars counted in full."""
    total: ResourceList = {}
    for c in containers(spec, "containers"):
        add_into(total, container_list(c, which))
    sidecars: ResourceList = {}
    init_peak: ResourceList = {}
    for c in containers(spec, "initContainers"):
        own = container_list(c, which)
        if _sidecar(c):
            add_into(total, own)
            add_into(sidecars, own)
            during = dict(sidecars)
        else:
            during = add(own, sidecars)
        max_into(init_peak, during)
    max_into(total, init_peak)
    return total


def _pod_level(spec: JSON, which: str) -> ResourceList:
    own = parse_list((spec.get("resources") or {}).get(which))
    return {k: v for k, v in own.items() if k in POD_LEVEL_RESOURCES or k.startswith("hugepages-")}


def pod_requests(spec: JSON, overhead: bool = True) -> ResourceList:
    """``resourcehelper.PodRequests`` (pod-level requests win; overhead added)."""
    reqs = _aggregate(spec, "requests")
    reqs.update(_pod_level(spec, "requests"))
    if overhead:
        add_into(reqs, parse_list(spec.get("overhead")))
    return reqs


def pod_limits(spec: JSON, overhead: bool = True) -> ResourceList:
    """``resourcehelper.PodLimits`` (pod-level limits win; overhead added to non-zero limits)."""
    lims = _aggregate(spec, "limits")
    lims.update(_pod_level(spec, "limits"))
    if overhead:
        for k, v in parse_list(spec.get("overhead")).items():
            if k in lims and lims[k].value != 0:
                lims[k] = lims[k] + v
    return lims


def qos_class(spec: JSON) -> str:
    """``ComputePodQOS``: BestEffort, Guaranteed or Burstable."""
    requests: ResourceList = {}
    limits: ResourceList = {}
    guaranteed = True
    pod_level = spec.get("resources")
    if isinstance(pod_level, dict) and (pod_level.get("requests") or pod_level.get("limits")):
        for name, q in parse_list(pod_level.get("requests")).items():
            if name in POD_LEVEL_RESOURCES and q.value > 0:
                requests[name] = q
        pod_limits_found = parse_list(pod_level.get("limits"))
        if pod_level.get("limits"):
            for name, q in pod_limits_found.items():
                if name in POD_LEVEL_RESOURCES and q.value > 0:
                    limits[name] = q
            if not {"cpu", "memory"} <= set(pod_limits_found):
                guaranteed = False
    else:
        for c in (*containers(spec, "containers"), *containers(spec, "initContainers")):
            for name, q in container_list(c, "requests").items():
                if name in POD_LEVEL_RESOURCES and q.value > 0:
                    requests[name] = requests[name] + q if name in requests else q
            found = set()
            for name, q in container_list(c, "limits").items():
                if name in POD_LEVEL_RESOURCES and q.value > 0:
                    found.add(name)
                    limits[name] = limits[name] + q if name in limits else q
            if not {"cpu", "memory"} <= found:
                guaranteed = False
    if not requests and not limits:
        return "BestEffort"
    if guaranteed:
        for name, req in requests.items():
            if name not in limits or limits[name].cmp(req) != 0:
                guaranteed = False
                break
    if guaranteed and len(requests) == len(limits):
        return "Guaranteed"
    return "Burstable"


def default_requests_from_limits(spec: JSON) -> None:
    """``SetDefaults_Pod``: a container's limits stand in for the requests it leaves out (pods
    only, not pod templates), and partly given pod-level resources are completed."""
    for c in (*containers(spec, "containers"), *containers(spec, "initContainers")):
        res = c.get("resources")
        if not isinstance(res, dict) or not isinstance(res.get("limits"), dict):
            continue
        reqs = res.setdefault("requests", {})
        if not isinstance(reqs, dict):
            continue
        for k, v in res["limits"].items():
            reqs.setdefault(k, v)
        if not reqs:
            del res["requests"]
    pod_level = spec.get("resources")
    if not isinstance(pod_level, dict) or not pod_level.get("limits"):
        return
    reqs = dict(pod_level.get("requests") or {})
    for k, v in _aggregate(spec, "requests").items():
        if k in POD_LEVEL_RESOURCES:
            reqs.setdefault(k, str(v))
    for k, v in pod_level["limits"].items():
        if k in POD_LEVEL_RESOURCES or k.startswith("hugepages-"):
            reqs.setdefault(k, v)
    if reqs:
        pod_level["requests"] = reqs


# ----- decoding -----------------------------------------------------------------------------
_RESOURCES = ("resources", "limits"), ("resources", "requests")
_POD_SPEC: tuple[tuple[str, ...], ...] = (
    *(("containers", "[]", *p) for p in _RESOURCES),
    *(("initContainers", "[]", *p) for p in _RESOURCES),
    *(("ephemeralContainers", "[]", *p) for p in _RESOURCES),
    ("overhead",),
    ("resources", "limits"),
    ("resources", "requests"),
    ("volumes", "[]", "emptyDir", "sizeLimit"),
)
_TEMPLATE_SPEC = {
    ("", "Pod"): ("spec",),
    ("", "PodTemplate"): ("template", "spec"),
    ("", "ReplicationController"): ("spec", "template", "spec"),
    ("apps", "Deployment"): ("spec", "template", "spec"),
    ("apps", "ReplicaSet"): ("spec", "template", "spec"),
    ("apps", "StatefulSet"): ("spec", "template", "spec"),
    ("apps", "DaemonSet"): ("spec", "template", "spec"),
    ("batch", "Job"): ("spec", "template", "spec"),
    ("batch", "CronJob"): ("spec", "jobTemplate", "spec", "template", "spec"),
}
_LIMIT_ITEM = ("max", "min", "default", "defaultRequest", "maxLimitRequestRatio")
# Paths of ResourceList maps (whole map) or single quantities (last step a field name).
_OTHER: dict[tuple[str, str], tuple[tuple[str, ...], ...]] = {
    ("", "ResourceQuota"): (("spec", "hard"), ("status", "hard"), ("status", "used")),
    ("", "LimitRange"): tuple(("spec", "limits", "[]", f) for f in _LIMIT_ITEM),
    ("", "PersistentVolumeClaim"): (
        ("spec", "resources", "limits"),
        ("spec", "resources", "requests"),
        ("status", "capacity"),
        ("status", "allocatedResources"),
    ),
}
_SINGLE = {"sizeLimit"}


def _walk(node: Any, path: tuple[str, ...]) -> Iterator[tuple[Any, Any]]:
    """(container, key) of every value at ``path``; "[]" walks a list."""
    if not path:
        return
    head, rest = path[0], path[1:]
    if head == "[]":
        if isinstance(node, list):
            for item in node:
                yield from _walk(item, rest)
        return
    if not isinstance(node, dict) or head not in node:
        return
    if not rest:
        yield node, head
    else:
        yield from _walk(node[head], rest)


def _paths(rt: ResourceType) -> list[tuple[str, ...]]:
    key = (rt.group, rt.kind)
    out = list(_OTHER.get(key, ()))
    prefix = _TEMPLATE_SPEC.get(key)
    if prefix is not None:
        out += [(*prefix, *p) for p in _POD_SPEC]
    return out


def canonicalize(rt: ResourceType, obj: JSON) -> None:
    """Decode every quantity of a built-in object and store its canonical text, in place; a
    malformed one fails the request with the decoder's 400, as on the real server."""
    if rt.crd is not None:
        return
    for path in _paths(rt):
        for parent, key in _walk(obj, path):
            value = parent[key]
            if value is None:
                continue
            if key in _SINGLE:
                parent[key] = str(_decode(rt, value))
            elif isinstance(value, dict):
                parent[key] = {k: str(_in_milli_units(_decode(rt, v))) for k, v in value.items()}
            else:
                raise _decode_error(
                    rt, f"json: cannot unmarshal {_go_type(value)} into Go value of type v1.ResourceList"
                )


def _decode(rt: ResourceType, value: Any) -> Q:
    # Quantity.UnmarshalJSON parses whatever raw JSON it is given, so a bool or an object fails
    # like a malformed string.
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _decode_error(rt, FORMAT_WRONG)
    try:
        return Q.parse(value)
    except InvalidQuantity:
        raise _decode_error(rt, FORMAT_WRONG) from None


def _in_milli_units(q: Q) -> Q:
    """``SetDefaults_ResourceList``: every entry of a ResourceList is rounded up to milli-units
    (``100u`` is stored as ``1m``); a lone quantity (``emptyDir.sizeLimit``) is not."""
    if q.value == q.value.quantize(MILLI, rounding=decimal.ROUND_UP):
        return q
    return Q(q.value.quantize(MILLI, rounding=decimal.ROUND_UP), q.fmt)


def _decode_error(rt: ResourceType, text: str) -> ApiFailure:
    return ApiFailure(
        400, f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: {text}', "BadRequest"
    )


def _go_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    return "object"


def pod_spec_path(rt: ResourceType) -> tuple[str, ...] | None:
    """Where the pod spec sits in an object of this kind (None: it has none)."""
    return _TEMPLATE_SPEC.get((rt.group, rt.kind)) if rt.crd is None else None
