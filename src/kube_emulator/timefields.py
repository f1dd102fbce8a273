"""``metav1.Time`` and ``metav1.MicroTime`` fields of built-in kinds: decoded and re-encoded as Go does.

kube-apiserver decodes a built-in object into Go structs, so a timestamp must parse with
``time.RFC3339`` (``Time``) or ``"2006-01-02T15:04:05.000000Z07:00"`` (``MicroTime``: exactly
six fractional digits), or the whole request fails with 400 ``... cannot be handled as a
<Kind>: parsing time ...``.  What is stored and returned is the re-encoded value: UTC,
whole seconds for ``Time``, microseconds for ``MicroTime``.  Custom resources are
unstructured and keep their strings as sent; this module is for built-ins only.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from kube_emulator.errors import ApiFailure
from kube_emulator.resources import ResourceType

JSON = dict[str, Any]
RFC3339 = "2006-01-02T15:04:05Z07:00"
RFC3339_MICRO = "2006-01-02T15:04:05.000000Z07:00"

# Paths of Time / MicroTime fields; "[]" walks a list, every other step a map key.
_COMMON_TIME = (
    ("metadata", "creationTimestamp"),
    ("metadata", "deletionTimestamp"),
    ("metadata", "managedFields", "[]", "time"),
    *(
        ("status", "conditions", "[]", f)
        for f in ("lastTransitionTime", "lastProbeTime", "lastUpdateTime", "lastHeartbeatTime")
    ),
)
_CONTAINER_STATES = tuple(
    ("status", lst, "[]", state, *rest)
    for lst in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses")
    for state in ("state", "lastState")
    for rest in (("running", "startedAt"), ("terminated", "startedAt"), ("terminated", "finishedAt"))
)
_TIME: dict[tuple[str, str], tuple[tuple[str, ...], ...]] = {
    ("", "Event"): (("firstTimestamp",), ("lastTimestamp",)),
    ("events.k8s.io", "Event"): (("deprecatedFirstTimestamp",), ("deprecatedLastTimestamp",)),
    ("", "Pod"): (("status", "startTime"), *_CONTAINER_STATES),
    ("batch", "Job"): (("status", "startTime"), ("status", "completionTime")),
    ("batch", "CronJob"): (("status", "lastScheduleTime"), ("status", "lastSuccessfulTime")),
    ("autoscaling", "HorizontalPodAutoscaler"): (("status", "lastScaleTime"),),
}
_MICRO: dict[tuple[str, str], tuple[tuple[str, ...], ...]] = {
    ("", "Event"): (("eventTime",), ("series", "lastObservedTime")),
    ("events.k8s.io", "Event"): (("eventTime",), ("series", "lastObservedTime")),
    ("coordination.k8s.io", "Lease"): (("spec", "acquireTime"), ("spec", "renewTime")),
}


class TimeParseError(ValueError):
    """The text Go's ``time.Parse`` would give, e.g. ``parsing time "x" as "...": cannot parse ...``."""


def _digits(s: str, n: int) -> bool:
    return len(s) >= n and s[:n].isdigit() and s[:n].isascii()


def parse_go_time(value: str, micro: bool = False) -> datetime:
    """``time.Parse(time.RFC3339 | RFC3339Micro, value)`` with Go's error texts."""
    layout = RFC3339_MICRO if micro else RFC3339
    rest = value

    def bad(elem: str) -> TimeParseError:
        return TimeParseError(f'parsing time "{value}" as "{layout}": cannot parse "{rest}" as "{elem}"')

    def take_num(elem: str, width: int) -> int:
        nonlocal rest
        if not _digits(rest, width):
            raise bad(elem)
        n = int(rest[:width])
        rest = rest[width:]
        return n

    def take_lit(lit: str) -> None:
        nonlocal rest
        if not rest.startswith(lit):
            raise bad(lit)
        rest = rest[len(lit) :]

    year = take_num("2006", 4)
    take_lit("-")
    month = take_num("01", 2)
    if not 1 <= month <= 12:
        raise TimeParseError(f'parsing time "{value}": month out of range')
    take_lit("-")
    day = take_num("02", 2)
    take_lit("T")
    hour = take_num("15", 2)
    if hour > 23:
        raise TimeParseError(f'parsing time "{value}": hour out of range')
    take_lit(":")
    minute = take_num("04", 2)
    if minute > 59:
        raise TimeParseError(f'parsing time "{value}": minute out of range')
    take_lit(":")
    second = take_num("05", 2)
    if second > 59:
        raise TimeParseError(f'parsing time "{value}": second out of range')
    nanos = 0
    if micro:
        # ".000000": exactly six digits after the point.
        if len(rest) < 7 or rest[0] != "." or not _digits(rest[1:], 6):
            raise bad(".000000")
        nanos = int(rest[1:7]) * 1000
        rest = rest[7:]
    elif rest.startswith(".") and _digits(rest[1:], 1):
        # A fractional second the layout does not mention is accepted when parsing.
        n = 1
        while n < len(rest) and rest[n].isdigit():
            n += 1
        frac = rest[1:n]
        nanos = int((frac + "000000000")[:9])
        rest = rest[n:]
    if rest.startswith("Z"):
        offset = 0
        rest = rest[1:]
    elif (
        len(rest) >= 6
        and rest[0] in "+-"
        and _digits(rest[1:], 2)
        and rest[3] == ":"
        and _digits(rest[4:], 2)
    ):
        hh, mm = int(rest[1:3]), int(rest[4:6])
        if hh > 24 or mm > 60:
            raise TimeParseError(f'parsing time "{value}": time zone offset out of range')
        offset = (hh * 60 + mm) * (-1 if rest[0] == "-" else 1)
        rest = rest[6:]
    else:
        raise bad("Z07:00")
    if rest:
        raise TimeParseError(f'parsing time "{value}": extra text: "{rest}"')
    # Year 0 exists for Go (proleptic Gregorian, a leap year like 2000), not for datetime.
    if not 1 <= day <= calendar.monthrange(year or 2000, month)[1]:
        raise TimeParseError(f'parsing time "{value}": day out of range')
    if year < 1:
        raise TimeParseError(f'parsing time "{value}": year out of range')
    base = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    return base - timedelta(minutes=offset) + timedelta(microseconds=nanos // 1000)


def format_go_time(t: datetime, micro: bool = False) -> str:
    """``metav1.Time`` / ``MicroTime`` MarshalJSON: UTC, seconds or microseconds."""
    t = t.astimezone(UTC)
    if micro:
        return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond:06d}Z"
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _walk(node: Any, path: tuple[str, ...]) -> Iterator[tuple[JSON, str]]:
    """(parent map, key) of every value at ``path`` under ``node``."""
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


def normalize_times(rt: ResourceType, obj: JSON) -> None:
    """Decode and re-encode the timestamps of a built-in object in place; 400 like Go if one is bad."""
    key = (rt.group, rt.kind)
    fields = [(p, False) for p in (*_COMMON_TIME, *_TIME.get(key, ()))]
    fields += [(p, True) for p in _MICRO.get(key, ())]
    for path, micro in fields:
        for parent, name in _walk(obj, path):
            value = parent[name]
            if value is None:
                continue
            if not isinstance(value, str):
                raise ApiFailure(
                    400,
                    f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: '
                    f"json: cannot unmarshal {_go_type(value)} into Go value of type string",
                    "BadRequest",
                )
            try:
                parent[name] = format_go_time(parse_go_time(value, micro), micro)
            except TimeParseError as exc:
                raise ApiFailure(
                    400,
                    f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: {exc}',
                    "BadRequest",
                ) from None


def _go_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, list):
        return "array"
    return "object"
