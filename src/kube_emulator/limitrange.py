"""LimitRange: its defaulting and validation, and the LimitRanger admission plugin.

As in ``plugin/pkg/admission/limitranger`` (v1.36): on pod creation every LimitRange of the
namespace (in name order) fills in the ``default`` limits and ``defaultRequest`` requests of
``Container`` items that a container or init container leaves out, and records what it set in
the ``kubernetes.io/limit-ranger`` annotation; then ``min`` / ``max`` /
``maxLimitRequestRatio`` of ``Container`` and ``Pod`` items are checked (and ``min`` / ``max``
of ``PersistentVolumeClaim`` items against claims), every violation collected into one 403.
A LimitRange itself is defaulted on the way in (``SetDefaults_LimitRangeItem``: a missing
default limit is the max, a missing default request the default limit, else the min) and
validated like ``ValidateLimitRange`` (min <= default request <= default <= max, ...).
"""

from __future__ import annotations

from typing import Any

from kube_emulator.errors import cause
from kube_emulator.resourcelists import (
    MAX_MILLI_VALUE,
    ONE,
    Q,
    ResourceList,
    add_into,
    container_list,
    containers,
    max_into,
    parse_list,
)

JSON = dict[str, Any]
ANNOTATION = "kubernetes.io/limit-ranger"
STANDARD_TYPES = ("Pod", "Container", "PersistentVolumeClaim")
# helper.IsOvercommitAllowed is false for hugepages and extended resources.
_NATIVE_PREFIX = "kubernetes.io/"


def overcommit_allowed(name: str) -> bool:
    native = "/" not in name or _NATIVE_PREFIX in name
    return native and not name.startswith("hugepages-")


def _map(value: Any) -> JSON:
    return value if isinstance(value, dict) else {}


def _items(lr: JSON) -> list[JSON]:
    return [i for i in (lr.get("spec") or {}).get("limits") or [] if isinstance(i, dict)]


# ----- the LimitRange object ----------------------------------------------------------------
def set_defaults(lr: JSON) -> None:
    """``SetDefaults_LimitRangeItem`` on every ``Container`` item, in place."""
    for item in _items(lr):
        if item.get("type") != "Container":
            continue
        default = _map(item.get("default"))
        request = _map(item.get("defaultRequest"))
        for k, v in (item.get("max") or {}).items():
            default.setdefault(k, v)
        for k, v in default.items():
            request.setdefault(k, v)
        for k, v in (item.get("min") or {}).items():
            request.setdefault(k, v)
        # Empty maps are omitted when Go serialises them.
        for key, value in (("default", default), ("defaultRequest", request)):
            if value:
                item[key] = value
            else:
                item.pop(key, None)


def validate(lr: JSON) -> list[JSON]:
    """The causes ``ValidateLimitRange`` would give (resource-name checks left out)."""
    errors: list[JSON] = []
    seen: set[str] = set()
    for i, item in enumerate(_items(lr)):
        at = f"spec.limits[{i}]"
        typ = str(item.get("type") or "")
        if "/" not in typ and typ not in STANDARD_TYPES:
            errors.append(
                cause(
                    f"{at}.type", f'Invalid value: "{typ}": must be a standard limit type or fully qualified'
                )
            )
        if typ in seen:
            errors.append(cause(f"{at}.type", f'Duplicate value: "{typ}"', "FieldValueDuplicate"))
        seen.add(typ)
        lists = {
            k: parse_list(item.get(k))
            for k in ("min", "max", "default", "defaultRequest", "maxLimitRequestRatio")
        }
        if typ == "Pod":
            for k in ("default", "defaultRequest"):
                if item.get(k):
                    errors.append(
                        cause(
                            f"{at}.{k}",
                            "Forbidden: may not be specified when `type` is 'Pod'",
                            "FieldValueForbidden",
                        )
                    )
                    lists[k] = {}
        if typ == "PersistentVolumeClaim" and "storage" not in lists["min"] and "storage" not in lists["max"]:
            errors.append(
                cause(
                    f"{at}.limits",
                    "Required value: either minimum or maximum storage value is required, but neither was provided",
                    "FieldValueRequired",
                )
            )
        keys = sorted(set().union(*(set(v) for v in lists.values())))
        for k in keys:
            errors.extend(_check_key(at, k, lists))
    return errors


def _check_key(at: str, k: str, lists: dict[str, ResourceList]) -> list[JSON]:
    lo, hi = lists["min"].get(k), lists["max"].get(k)
    default, request = lists["default"].get(k), lists["defaultRequest"].get(k)
    ratio = lists["maxLimitRequestRatio"].get(k)
    out: list[JSON] = []

    def bad(field: str, value: Q, text: str) -> None:
        out.append(cause(f"{at}.{field}[{k}]", f'Invalid value: "{value}": {text}'))

    if lo is not None and hi is not None and lo.cmp(hi) > 0:
        bad("min", lo, f"min value {lo} is greater than max value {hi}")
    if request is not None and lo is not None and lo.cmp(request) > 0:
        bad("defaultRequest", request, f"min value {lo} is greater than default request value {request}")
    if request is not None and hi is not None and request.cmp(hi) > 0:
        bad("defaultRequest", request, f"default request value {request} is greater than max value {hi}")
    if request is not None and default is not None and request.cmp(default) > 0:
        bad(
            "defaultRequest",
            request,
            f"default request value {request} is greater than default limit value {default}",
        )
    if default is not None and lo is not None and lo.cmp(default) > 0:
        bad("default", lo, f"min value {lo} is greater than default value {default}")
    if default is not None and hi is not None and default.cmp(hi) > 0:
        # Upstream reports the max as the invalid value here; kept, so the texts match.
        bad("default", hi, f"default value {default} is greater than max value {hi}")
    if ratio is not None and ratio.cmp(ONE) < 0:
        bad("maxLimitRequestRatio", ratio, f"ratio {ratio} is less than 1")
    if ratio is not None and lo is not None and hi is not None:
        r, lo_v, hi_v = float(ratio.scaled(0)), lo.scaled(0), hi.scaled(0)
        if ratio.scaled(0) < MAX_MILLI_VALUE and lo_v < MAX_MILLI_VALUE and hi_v < MAX_MILLI_VALUE:
            r, lo_v, hi_v = ratio.scaled(-3) / 1000, lo.scaled(-3), hi.scaled(-3)
        bound = hi_v / lo_v if lo_v else float("inf")
        if r > bound:
            bad("maxLimitRequestRatio", ratio, f"ratio {ratio} is greater than max/min = {bound:f}")
    if (
        not overcommit_allowed(k)
        and default is not None
        and request is not None
        and default.cmp(request) != 0
    ):
        bad(
            "defaultRequest",
            request,
            f"default value {default} must equal to defaultRequest value {request} in {k}",
        )
    return out


# ----- admission: mutation ------------------------------------------------------------------
def default_pod(pod: JSON, limit_ranges: list[JSON]) -> None:
    """``PodMutateLimitFunc`` for each LimitRange: fill in defaults, annotate what was set."""
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        return
    for lr in limit_ranges:
        limits: JSON = {}
        requests: JSON = {}
        for item in _items(lr):
            if item.get("type") == "Container":
                requests.update(item.get("defaultRequest") or {})
                limits.update(item.get("default") or {})
        notes: list[str] = []
        for group, prefix in (("containers", "container"), ("initContainers", "init container")):
            for c in containers(spec, group):
                notes.extend(_merge(c, limits, requests, prefix))
        if notes:
            meta = pod.setdefault("metadata", {})
            annotations = meta.get("annotations")
            if not isinstance(annotations, dict):
                annotations = meta["annotations"] = {}
            annotations[ANNOTATION] = "LimitRanger plugin set: " + "; ".join(notes)


def _merge(c: JSON, limits: JSON, requests: JSON, prefix: str) -> list[str]:
    res = c.get("resources")
    if not isinstance(res, dict):
        res = c["resources"] = {}
    have_limits = _map(res.get("limits"))
    have_requests = _map(res.get("requests"))
    set_limits = sorted(k for k in limits if k not in have_limits)
    set_requests = sorted(k for k in requests if k not in have_requests)
    for k in set_limits:
        have_limits[k] = limits[k]
    for k in set_requests:
        have_requests[k] = requests[k]
    for key, value in (("limits", have_limits), ("requests", have_requests)):
        if value:
            res[key] = value
    notes = []
    name = c.get("name", "")
    if set_requests:
        notes.append(f"{', '.join(set_requests)} request for {prefix} {name}")
    if set_limits:
        notes.append(f"{', '.join(set_limits)} limit for {prefix} {name}")
    return notes


# ----- admission: validation ----------------------------------------------------------------
def _enforced_values(req: Q | None, lim: Q | None, enforced: Q) -> tuple[int, int, int]:
    """``requestLimitEnforcedValues``: milli-units unless that would overflow."""
    r, lv, e = (req or Q.parse(0)).scaled(0), (lim or Q.parse(0)).scaled(0), enforced.scaled(0)
    if r <= MAX_MILLI_VALUE and lv <= MAX_MILLI_VALUE and e <= MAX_MILLI_VALUE:
        r, lv, e = (req or Q.parse(0)).scaled(-3), (lim or Q.parse(0)).scaled(-3), enforced.scaled(-3)
    return r, lv, e


def _min(kind: str, name: str, enforced: Q, requests: ResourceList, limits: ResourceList) -> str | None:
    req, lim = requests.get(name), limits.get(name)
    r, lv, e = _enforced_values(req, lim, enforced)
    if req is None:
        return f"minimum {name} usage per {kind} is {enforced}.  No request is specified"
    if r < e:
        return f"minimum {name} usage per {kind} is {enforced}, but request is {req}"
    if lim is not None and lv < e:
        return f"minimum {name} usage per {kind} is {enforced}, but limit is {lim}"
    return None


def _max(kind: str, name: str, enforced: Q, requests: ResourceList, limits: ResourceList) -> str | None:
    req, lim = requests.get(name), limits.get(name)
    r, lv, e = _enforced_values(req, lim, enforced)
    if lim is None:
        return f"maximum {name} usage per {kind} is {enforced}.  No limit is specified"
    if lv > e:
        return f"maximum {name} usage per {kind} is {enforced}, but limit is {lim}"
    if req is not None and r > e:
        return f"maximum {name} usage per {kind} is {enforced}, but request is {req}"
    return None


def _max_request(kind: str, name: str, enforced: Q, requests: ResourceList) -> str | None:
    req = requests.get(name)
    r, _, e = _enforced_values(req, None, enforced)
    if req is None:
        return f"maximum {name} usage per {kind} is {enforced}.  No request is specified"
    if r > e:
        return f"maximum {name} usage per {kind} is {enforced}, but request is {req}"
    return None


def _ratio(kind: str, name: str, enforced: Q, requests: ResourceList, limits: ResourceList) -> str | None:
    req, lim = requests.get(name), limits.get(name)
    r, lv, _ = _enforced_values(req, lim, enforced)
    if req is None or r == 0:
        return f"{name} max limit to request ratio per {kind} is {enforced}, but no request is specified or request is 0"
    if lim is None or lv == 0:
        return f"{name} max limit to request ratio per {kind} is {enforced}, but no limit is specified or limit is 0"
    observed = lv / r
    shown = observed
    bound = float(enforced.scaled(0))
    if enforced.scaled(0) <= MAX_MILLI_VALUE:
        observed *= 1000
        bound = float(enforced.scaled(-3))
    if observed > bound:
        return f"{name} max limit to request ratio per {kind} is {enforced}, but provided ratio is {shown:f}"
    return None


def _check(kind: str, item: JSON, requests: ResourceList, limits: ResourceList) -> list[str]:
    out: list[str | None] = []
    for name, q in sorted(parse_list(item.get("min")).items()):
        out.append(_min(kind, name, q, requests, limits))
    for name, q in sorted(parse_list(item.get("max")).items()):
        out.append(_max(kind, name, q, requests, limits))
    for name, q in sorted(parse_list(item.get("maxLimitRequestRatio")).items()):
        out.append(_ratio(kind, name, q, requests, limits))
    return [m for m in out if m]


def _limiter_requests(spec: JSON, which: str) -> ResourceList:
    """The plugin's own ``podRequests`` / ``podLimits``: no overhead, pod-level values win."""
    total: ResourceList = {}
    for c in containers(spec, "containers"):
        add_into(total, container_list(c, which))
    sidecars: ResourceList = {}
    peak: ResourceList = {}
    for c in containers(spec, "initContainers"):
        own = container_list(c, which)
        if c.get("restartPolicy") == "Always":
            add_into(total, own)
            add_into(sidecars, own)
            during = dict(sidecars)
        else:
            during = dict(own)
            add_into(during, sidecars)
        max_into(peak, during)
    max_into(total, peak)
    pod_level = parse_list((spec.get("resources") or {}).get(which))
    total.update({k: v for k, v in pod_level.items() if k in ("cpu", "memory")})
    return total


def check_pod(pod: JSON, limit_ranges: list[JSON]) -> list[str]:
    """``PodValidateLimitFunc`` for each LimitRange; the first one that fails decides, as the
    plugin stops there.  Returns the violations (empty: admitted)."""
    spec = pod.get("spec") if isinstance(pod.get("spec"), dict) else {}
    assert isinstance(spec, dict)
    for lr in limit_ranges:
        errors: list[str] = []
        for item in _items(lr):
            if item.get("type") == "Container":
                for group in ("containers", "initContainers"):
                    for c in containers(spec, group):
                        errors += _check(
                            "Container", item, container_list(c, "requests"), container_list(c, "limits")
                        )
            if item.get("type") == "Pod":
                errors += _check(
                    "Pod", item, _limiter_requests(spec, "requests"), _limiter_requests(spec, "limits")
                )
        if errors:
            return errors
    return []


def check_claim(pvc: JSON, limit_ranges: list[JSON]) -> list[str]:
    """``PersistentVolumeClaimValidateLimitFunc``: min and max against the claim's requests."""
    requests = parse_list(((pvc.get("spec") or {}).get("resources") or {}).get("requests"))
    for lr in limit_ranges:
        errors: list[str] = []
        for item in _items(lr):
            if item.get("type") != "PersistentVolumeClaim":
                continue
            for name, q in sorted(parse_list(item.get("min")).items()):
                msg = _min("PersistentVolumeClaim", name, q, requests, {})
                if msg:
                    errors.append(msg)
            for name, q in sorted(parse_list(item.get("max")).items()):
                msg = _max_request("PersistentVolumeClaim", name, q, requests)
                if msg:
                    errors.append(msg)
        if errors:
            return errors
    return []


def aggregate(messages: list[str]) -> str:
    """``utilerrors.NewAggregate(...).Error()``: one message as is, several bracketed."""
    distinct: list[str] = []
    for m in messages:
        if m not in distinct:
            distinct.append(m)
    return distinct[0] if len(distinct) == 1 else "[" + ", ".join(distinct) + "]"
