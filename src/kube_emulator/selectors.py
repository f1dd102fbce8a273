"""Label selectors (equality- and set-based) and field selectors, parsed once per request."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from kube_emulator.errors import ApiFailure

JSON = dict[str, Any]
Predicate = Callable[[JSON], bool]

_SET_RE = re.compile(r"^\s*(!?)\s*([A-Za-z0-9./_-]+)\s*(?:(notin|in)\s*\(([^)]*)\))?\s*$")
_EQ_RE = re.compile(r"^\s*([A-Za-z0-9./_-]+)\s*(==|=|!=)\s*([A-Za-z0-9._-]*)\s*$")


def _split_requirements(text: str) -> list[str]:
    """Split on commas that are not inside ``in (a,b)`` parentheses."""
    parts: list[str] = []
    depth = 0
    cur: list[str] = []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p for p in (s.strip() for s in parts) if p]


LabelCheck = Callable[[dict[str, str]], bool]


def _label_eq(key: str, value: str, negate: bool) -> LabelCheck:
    def check(labels: dict[str, str]) -> bool:
        return (labels.get(key) == value) != negate

    return check


def _label_in(key: str, allowed: set[str], negate: bool) -> LabelCheck:
    def check(labels: dict[str, str]) -> bool:
        # "notin" also matches objects without the label, as in Kubernetes.
        return (labels.get(key) in allowed) != negate

    return check


def _label_exists(key: str, negate: bool) -> LabelCheck:
    def check(labels: dict[str, str]) -> bool:
        return (key in labels) != negate

    return check


def _field_eq(path: str, value: str, negate: bool) -> Predicate:
    def check(obj: JSON) -> bool:
        return (_field_value(obj, path) == value) != negate

    return check


def parse_label_selector(text: str | None) -> Predicate | None:
    if not text or not text.strip():
        return None
    checks: list[LabelCheck] = []
    for req in _split_requirements(text):
        m = _EQ_RE.match(req)
        if m:
            key, op, value = m.groups()
            checks.append(_label_eq(key, value, negate=op == "!="))
            continue
        m = _SET_RE.match(req)
        if not m:
            raise ApiFailure(400, f"unable to parse requirement: {req!r}")
        neg, key, op, values = m.groups()
        if op:
            if neg:
                raise ApiFailure(400, f"unable to parse requirement: {req!r}")
            allowed = {v.strip() for v in values.split(",") if v.strip()}
            checks.append(_label_in(key, allowed, negate=op == "notin"))
        else:
            checks.append(_label_exists(key, negate=bool(neg)))

    def predicate(obj: JSON) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(check(labels) for check in checks)

    return predicate


def _field_value(obj: JSON, path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, dict):
            return ""
        cur = cur.get(part)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


def parse_field_selector(text: str | None) -> Predicate | None:
    """``metadata.name``, ``metadata.namespace`` and any other dotted path, with =, == and !=."""
    if not text or not text.strip():
        return None
    checks: list[Callable[[JSON], bool]] = []
    for req in _split_requirements(text):
        if "!=" in req:
            path, value = req.split("!=", 1)
            checks.append(_field_eq(path.strip(), value.strip(), negate=True))
        elif "=" in req:
            path, value = req.replace("==", "=").split("=", 1)
            checks.append(_field_eq(path.strip(), value.strip(), negate=False))
        else:
            raise ApiFailure(400, f"invalid field selector: {req!r}")

    def predicate(obj: JSON) -> bool:
        return all(check(obj) for check in checks)

    return predicate


def field_selector_name(text: str | None) -> str | None:
    """``metadata.name=x`` alone (kubectl get NAME -w): lets list/watch use a direct lookup."""
    if not text:
        return None
    reqs = _split_requirements(text)
    for req in reqs:
        if "!=" not in req and "=" in req:
            path, value = req.replace("==", "=").split("=", 1)
            if path.strip() == "metadata.name":
                return value.strip()
    return None
