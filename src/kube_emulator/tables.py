"""Server-side printing: ``meta.k8s.io/v1 Table`` responses for ``kubectl get``.

Custom resources use their CRD's ``additionalPrinterColumns`` (JSONPath subset:
``.a.b``, ``.a[0].b``, ``.a['x.y']``); built-ins get the columns kubectl users know.
``date`` columns are rendered server-side as ages ("5m"), as the real server does.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kube_emulator.resources import ResourceType

JSON = dict[str, Any]
_TOKEN = re.compile(r"\.([A-Za-z0-9_$-]+)|\[(\d+)\]|\['([^']*)'\]|\[\"([^\"]*)\"\]")


def jsonpath(obj: Any, path: str) -> Any:
    """Evaluate the JSONPath subset CRD printer columns use; None when absent."""
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    if path.startswith("$"):
        path = path[1:]
    cur = obj
    pos = 0
    while pos < len(path):
        m = _TOKEN.match(path, pos)
        if m is None:
            return None
        pos = m.end()
        name, index, quoted, dquoted = m.groups()
        key = name if name is not None else (quoted if quoted is not None else dquoted)
        if key is not None:
            if not isinstance(cur, dict) or key not in cur:
                return None
            cur = cur[key]
        else:
            if not isinstance(cur, list) or int(index) >= len(cur):
                return None
            cur = cur[int(index)]
    return cur


def human_duration(seconds: float) -> str:
    """k8s.io/apimachinery/pkg/util/duration.HumanDuration."""
    if seconds < -1:
        return "<invalid>"
    s = int(max(seconds, 0))
    if s < 60 * 2:
        return f"{s}s"
    m = s // 60
    if m < 10:
        rem = s % 60
        return f"{m}m{rem}s" if rem else f"{m}m"
    if m < 60 * 3:
        return f"{m}m"
    h = m // 60
    if h < 8:
        rem = m % 60
        return f"{h}h{rem}m" if rem else f"{h}h"
    if h < 48:
        return f"{h}h"
    if h < 24 * 8:
        rem = h % 24
        return f"{h // 24}d{rem}h" if rem else f"{h // 24}d"
    if h < 24 * 365 * 2:
        return f"{h // 24}d"
    if h < 24 * 365 * 8:
        y = h // (24 * 365)
        d = (h % (24 * 365)) // 24
        return f"{y}y{d}d" if d else f"{y}y"
    return f"{h // (24 * 365)}y"


def age(ts: Any) -> str:
    if not isinstance(ts, str) or not ts:
        return "<unknown>"
    try:
        then = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return "<invalid>"
    return human_duration((datetime.now(UTC) - then).total_seconds())


def _col(name: str, type_: str = "string", priority: int = 0, fmt: str = "", desc: str = "") -> JSON:
    return {"name": name, "type": type_, "format": fmt, "description": desc or name, "priority": priority}


Column = tuple[JSON, Callable[[JSON], Any]]


def _meta_age(o: JSON) -> str:
    return age(o.get("metadata", {}).get("creationTimestamp"))


def _pod_ready(o: JSON) -> str:
    statuses = (o.get("status") or {}).get("containerStatuses") or []
    total = len((o.get("spec") or {}).get("containers") or [])
    ready = sum(1 for s in statuses if s.get("ready"))
    return f"{ready}/{total}"


def _pod_status(o: JSON) -> str:
    if o.get("metadata", {}).get("deletionTimestamp"):
        return "Terminating"
    status = o.get("status") or {}
    for s in status.get("containerStatuses") or []:
        waiting = (s.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason"):
            return str(waiting["reason"])
    return str(status.get("reason") or status.get("phase") or "Pending")


def _restarts(o: JSON) -> int:
    return sum(
        int(s.get("restartCount") or 0) for s in (o.get("status") or {}).get("containerStatuses") or []
    )


def _ports(o: JSON) -> str:
    ports = (o.get("spec") or {}).get("ports") or []
    if not ports:
        return "<none>"
    return ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in ports)


def _containers(o: JSON) -> list[JSON]:
    spec = o.get("spec") or {}
    tmpl = (spec.get("template") or {}).get("spec") or {}
    return list(tmpl.get("containers") or [])


def _involved(o: JSON) -> str:
    ref = o.get("involvedObject") or o.get("regarding") or {}
    return f"{str(ref.get('kind', '')).lower()}/{ref.get('name', '')}"


_NAME: Column = (
    _col("Name", fmt="name", desc="Name must be unique within a namespace."),
    lambda o: o["metadata"]["name"],
)
_AGE: Column = (_col("Age", desc="CreationTimestamp"), _meta_age)


def _s(path: str, default: Any = "<none>") -> Callable[[JSON], Any]:
    def get(o: JSON) -> Any:
        v = jsonpath(o, path)
        return default if v is None else v

    return get


BUILTIN_COLUMNS: dict[tuple[str, str], list[Column]] = {
    ("", "pods"): [
        _NAME,
        (_col("Ready"), _pod_ready),
        (_col("Status"), _pod_status),
        (_col("Restarts", "string"), _restarts),
        _AGE,
        (_col("IP", priority=1), _s(".status.podIP")),
        (_col("Node", priority=1), _s(".spec.nodeName")),
    ],
    ("apps", "deployments"): [
        _NAME,
        (
            _col("Ready"),
            lambda o: (
                f"{(o.get('status') or {}).get('readyReplicas', 0)}/{(o.get('spec') or {}).get('replicas', 1)}"
            ),
        ),
        (_col("Up-to-date", "integer"), _s(".status.updatedReplicas", 0)),
        (_col("Available", "integer"), _s(".status.availableReplicas", 0)),
        _AGE,
        (_col("Containers", priority=1), lambda o: ",".join(str(c.get("name")) for c in _containers(o))),
        (_col("Images", priority=1), lambda o: ",".join(str(c.get("image")) for c in _containers(o))),
    ],
    ("apps", "replicasets"): [
        _NAME,
        (_col("Desired", "integer"), _s(".spec.replicas", 0)),
        (_col("Current", "integer"), _s(".status.replicas", 0)),
        (_col("Ready", "integer"), _s(".status.readyReplicas", 0)),
        _AGE,
    ],
    ("", "services"): [
        _NAME,
        (_col("Type"), _s(".spec.type", "ClusterIP")),
        (_col("Cluster-IP"), _s(".spec.clusterIP")),
        (_col("External-IP"), lambda o: "<none>"),
        (_col("Port(s)"), _ports),
        _AGE,
    ],
    ("", "namespaces"): [_NAME, (_col("Status"), _s(".status.phase", "Active")), _AGE],
    ("", "configmaps"): [
        _NAME,
        (_col("Data", "integer"), lambda o: len(o.get("data") or {}) + len(o.get("binaryData") or {})),
        _AGE,
    ],
    ("", "secrets"): [
        _NAME,
        (_col("Type"), _s(".type", "Opaque")),
        (_col("Data", "integer"), lambda o: len(o.get("data") or {})),
        _AGE,
    ],
    ("", "events"): [
        (
            _col("Last Seen"),
            lambda o: age(
                o.get("lastTimestamp") or o.get("eventTime") or o["metadata"].get("creationTimestamp")
            ),
        ),
        (_col("Type"), _s(".type", "")),
        (_col("Reason"), _s(".reason", "")),
        (_col("Object"), _involved),
        (_col("Message"), _s(".message", "")),
        (_col("Name", fmt="name", priority=1), lambda o: o["metadata"]["name"]),
    ],
    ("batch", "jobs"): [
        _NAME,
        (
            _col("Completions"),
            lambda o: (
                f"{(o.get('status') or {}).get('succeeded', 0)}/{(o.get('spec') or {}).get('completions', 1)}"
            ),
        ),
        _AGE,
    ],
    ("batch", "cronjobs"): [
        _NAME,
        (_col("Schedule"), _s(".spec.schedule", "")),
        (_col("Suspend", "boolean"), _s(".spec.suspend", False)),
        (_col("Active", "integer"), lambda o: len((o.get("status") or {}).get("active") or [])),
        (
            _col("Last Schedule"),
            lambda o: (
                age((o.get("status") or {}).get("lastScheduleTime"))
                if (o.get("status") or {}).get("lastScheduleTime")
                else "<none>"
            ),
        ),
        _AGE,
    ],
    ("autoscaling", "horizontalpodautoscalers"): [
        _NAME,
        (
            _col("Reference"),
            lambda o: (
                f"{jsonpath(o, '.spec.scaleTargetRef.kind')}/{jsonpath(o, '.spec.scaleTargetRef.name')}"
            ),
        ),
        (_col("MinPods", "integer"), _s(".spec.minReplicas", 1)),
        (_col("MaxPods", "integer"), _s(".spec.maxReplicas", 0)),
        (_col("Replicas", "integer"), _s(".status.currentReplicas", 0)),
        _AGE,
    ],
    ("apiextensions.k8s.io", "customresourcedefinitions"): [
        _NAME,
        (_col("Created At", "date"), lambda o: o["metadata"].get("creationTimestamp")),
    ],
}


def _crd_columns(rt: ResourceType) -> list[Column]:
    assert rt.crd is not None
    specs = rt.crd.printer_columns
    cols: list[Column] = [_NAME]
    if not specs:
        return [_NAME, _AGE]
    for spec in specs:
        typ = str(spec.get("type", "string"))
        path = str(spec.get("jsonPath", ""))
        definition = _col(
            str(spec["name"]),
            typ,
            int(spec.get("priority", 0)),
            str(spec.get("format", "")),
            str(spec.get("description", "")),
        )

        def cell(o: JSON, path: str = path, typ: str = typ) -> Any:
            v = jsonpath(o, path)
            if v is None:
                return None
            if typ == "date":
                return age(v)
            if isinstance(v, dict | list):
                import json

                return json.dumps(v, separators=(",", ":"))
            return v

        cols.append((definition, cell))
    return cols


def columns_for(rt: ResourceType) -> list[Column]:
    if rt.crd is not None:
        return _crd_columns(rt)
    return BUILTIN_COLUMNS.get((rt.group, rt.plural), [_NAME, _AGE])


def partial_metadata(obj: JSON) -> JSON:
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata", {}),
    }


def to_table(
    rt: ResourceType,
    objs: list[JSON],
    include_object: str = "Metadata",
    resource_version: str = "",
    with_columns: bool = True,
    continue_token: str = "",
) -> JSON:
    cols = columns_for(rt)
    rows = []
    for o in objs:
        row: JSON = {"cells": [fn(o) for _, fn in cols]}
        if include_object == "Object":
            row["object"] = o
        elif include_object != "None":
            row["object"] = partial_metadata(o)
        rows.append(row)
    meta: JSON = {"resourceVersion": resource_version}
    if continue_token:
        meta["continue"] = continue_token
    table: JSON = {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "rows": rows}
    table["columnDefinitions"] = [c for c, _ in cols] if with_columns else []
    return table
