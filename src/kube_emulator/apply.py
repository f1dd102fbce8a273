"""Server-side apply and ``metadata.managedFields`` bookkeeping.

Every write records which manager owns which fields: Apply requests replace the
manager's Apply set with exactly the fields in the applied configuration (removing
fields it owned before and no longer mentions, unless someone else also owns them);
every other write (create, update, patch) transfers the fields it changed to the
writing manager's Update entry.  Conflicts arise only for Apply, only when another
manager owns a field with a different value, and ``force=true`` takes ownership.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kube_emulator.errors import ApiFailure
from kube_emulator.fieldsets import (
    MISSING,
    FieldSet,
    Path,
    describe,
    diff,
    field_set,
    from_fields_v1,
    get_at,
    item_key,
    remove_at,
    to_fields_v1,
)
from kube_emulator.listtypes import list_info
from kube_emulator.patch import clone
from kube_emulator.resources import ResourceType

JSON = dict[str, Any]


@dataclass
class Entry:
    manager: str
    operation: str
    subresource: str
    api_version: str
    time: str
    fields: FieldSet

    def to_json(self) -> JSON:
        out: JSON = {
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": to_fields_v1(self.fields),
        }
        if self.subresource:
            out["subresource"] = self.subresource
        return out


def read_entries(obj: JSON) -> list[Entry]:
    out = []
    for raw in obj.get("metadata", {}).get("managedFields") or []:
        if not isinstance(raw, dict) or "manager" not in raw:
            continue
        out.append(
            Entry(
                manager=str(raw.get("manager", "")),
                operation=str(raw.get("operation", "Update")),
                subresource=str(raw.get("subresource", "")),
                api_version=str(raw.get("apiVersion", "")),
                time=str(raw.get("time", "")),
                fields=from_fields_v1(raw.get("fieldsV1") or {}),
            )
        )
    return out


def write_entries(obj: JSON, entries: list[Entry]) -> None:
    kept = [e.to_json() for e in entries if e.fields]
    if kept:
        obj.setdefault("metadata", {})["managedFields"] = kept
    else:
        obj.get("metadata", {}).pop("managedFields", None)


def _entry(
    entries: list[Entry], manager: str, operation: str, subresource: str, api_version: str, now: str
) -> Entry:
    for e in entries:
        if e.manager == manager and e.operation == operation and e.subresource == subresource:
            e.time = now
            e.api_version = api_version
            return e
    e = Entry(manager, operation, subresource, api_version, now, set())
    entries.append(e)
    return e


def same_part(a: str, b: str) -> bool:
    """Whether two managedFields subresources track the same fields: ``scale`` writes the main
    resource's spec.replicas, so its owners and the main resource's compete (as upstream)."""
    return a == b or {a, b} <= {"", "scale"}


def record_update(
    old: JSON | None,
    new: JSON,
    manager: str,
    rt: ResourceType,
    subresource: str,
    now: str,
) -> None:
    """Give the fields this non-apply write changed to ``manager`` (operation Update)."""
    sub = subresource or None
    if old is None:
        changed, gone = field_set(new, rt, sub), set[tuple[str, ...]]()
        entries: list[Entry] = []
    else:
        changed, gone = diff(old, new, rt, sub)
        if not changed and not gone:
            return  # nothing this manager could own changed; keep managedFields as they are
        entries = read_entries(old)
    for e in entries:
        if same_part(e.subresource, subresource):
            e.fields -= changed
            e.fields -= gone
    if changed or old is None:
        _entry(entries, manager, "Update", subresource, rt.api_version, now).fields |= changed
    write_entries(new, entries)


def _merge(live: Any, applied: Any, rt: ResourceType, names: tuple[str, ...]) -> Any:
    if isinstance(live, dict) and isinstance(applied, dict):
        out = dict(live)
        for key, value in applied.items():
            out[key] = (
                _merge(live.get(key, MISSING), value, rt, (*names, key)) if key in live else clone(value)
            )
        return out
    if isinstance(live, list) and isinstance(applied, list):
        kind, keys = list_info(rt, names)
        if kind == "map" and keys:
            result = list(live)
            index = {item_key(i, keys): n for n, i in enumerate(result)}
            for item in applied:
                k = item_key(item, keys)
                if k in index:
                    result[index[k]] = _merge(result[index[k]], item, rt, names)
                else:
                    index[k] = len(result)
                    result.append(clone(item))
            return result
        if kind == "set":
            result = list(live)
            for item in applied:
                if item not in result:
                    result.append(clone(item))
            return result
    return clone(applied)


def _is_item_key(path: Path) -> bool:
    if len(path) < 2 or not path[-2].startswith("k:") or not path[-1].startswith("f:"):
        return False
    return path[-1][2:] in json.loads(path[-2][2:])


def _owned_below(path: Path, sets: list[FieldSet]) -> bool:
    n = len(path)
    return any(len(p) > n and p[:n] == path for fs in sets for p in fs)


def _field_names(path: Path) -> tuple[str, ...]:
    """Schema field names along a path (list items are transparent)."""
    return tuple(seg[2:] for seg in path if seg.startswith("f:"))


def _is_free_form_map(rt: ResourceType, path: Path) -> bool:
    """A CRD object with additionalProperties and no properties: a map, not a struct."""
    if rt.crd is None:
        return False
    cur: Any = rt.crd.schema
    for part in _field_names(path):
        if not isinstance(cur, dict):
            return False
        while cur.get("type") == "array" and isinstance(cur.get("items"), dict):
            cur = cur["items"]
        props = cur.get("properties") or {}
        nxt = props.get(part)
        if nxt is None and isinstance(cur.get("additionalProperties"), dict):
            nxt = cur["additionalProperties"]
        cur = nxt
    return isinstance(cur, dict) and not cur.get("properties") and bool(cur.get("additionalProperties"))


def _dropped_structs(
    previous: FieldSet, applied_fs: FieldSet, other_sets: list[FieldSet], rt: ResourceType
) -> set[Path]:
    """Structs the applier owned fields in, no longer mentions, and nobody else owns anything in.

    Like structured-merge-diff (``EnsureNamedFieldsAreMembers``), such a struct is removed whole,
    so fields the schema defaulted inside it go too instead of leaving an invalid half-struct.
    Top-level fields and metadata are left to the leaf rules; free-form maps keep leaf semantics.
    """
    candidates = {
        path[:i]
        for path in previous
        for i in range(2, len(path))
        if path[0] != "f:metadata" and path[i - 1].startswith("f:")
    }
    if not candidates:
        return set()
    kept = {p[:i] for fs in [applied_fs, *other_sets] for p in fs for i in range(1, len(p) + 1)}
    return {p for p in candidates if p not in kept and not _is_free_form_map(rt, p)}


def server_side_apply(
    live: JSON,
    applied: JSON,
    manager: str,
    force: bool,
    rt: ResourceType,
    subresource: str,
    now: str,
) -> JSON:
    """The object after ``manager`` applies ``applied`` to ``live`` (neither is modified)."""
    sub = subresource or None
    entries = read_entries(live)
    applied_fs = field_set(applied, rt, sub)
    mine = _entry(entries, manager, "Apply", subresource, rt.api_version, now)
    others = [e for e in entries if e is not mine and same_part(e.subresource, subresource)]
    conflicts: list[tuple[Entry, Path]] = []
    for e in others:
        for path in applied_fs & e.fields:
            if path[-1].startswith(("k:", "v:")):
                continue
            if get_at(live, path) != get_at(applied, path):
                conflicts.append((e, path))
    if conflicts and not force:
        raise _conflict_error(conflicts)
    for e, path in conflicts:
        e.fields.discard(path)
    other_sets = [e.fields for e in others]
    to_remove = mine.fields - applied_fs
    result: JSON = clone(live)
    removable = {
        path
        for path in to_remove
        if not any(path in fs for fs in other_sets) and not _owned_below(path, [*other_sets, applied_fs])
    }
    removable |= _dropped_structs(mine.fields, applied_fs, other_sets, rt)
    for path in sorted(removable, key=len, reverse=True):
        if any(path[:i] in removable for i in range(1, len(path))):
            continue  # an ancestor (e.g. the whole list item) goes anyway
        if _is_item_key(path):
            continue  # a list item's key fields live and die with the item
        remove_at(result, path)
    if sub == "status":
        if "status" in applied:
            result["status"] = _merge(result.get("status", {}), applied["status"], rt, ("status",))
    else:
        body = {k: v for k, v in applied.items() if k not in ("apiVersion", "kind", "metadata")}
        if rt.has_status:
            body.pop("status", None)
        result = _merge(result, body, rt, ())
        meta_in = applied.get("metadata") or {}
        meta = result.setdefault("metadata", {})
        for key in ("labels", "annotations", "finalizers", "ownerReferences"):
            if key in meta_in and meta_in[key] is not None:
                meta[key] = (
                    _merge(meta.get(key, MISSING), meta_in[key], rt, ("metadata", key))
                    if key in meta
                    else clone(meta_in[key])
                )
        for key in ("labels", "annotations"):
            if key in meta and not meta[key]:
                del meta[key]
    mine.fields = applied_fs
    write_entries(result, entries)
    return result


def _conflict_error(conflicts: list[tuple[Entry, Path]]) -> ApiFailure:
    causes = []
    for e, path in sorted(conflicts, key=lambda c: (c[0].manager, c[1])):
        causes.append(
            {
                "reason": "FieldManagerConflict",
                "message": f'conflict with "{e.manager}"'
                + (f' with subresource "{e.subresource}"' if e.subresource else "")
                + (f" using {e.api_version}" if e.operation == "Update" else ""),
                "field": describe(path),
            }
        )
    lines = "\n".join(f"- {c['message']}: {c['field']}" for c in causes)
    n = len(causes)
    msg = f"Apply failed with {n} conflict{'s' if n != 1 else ''}: " + (
        f"{causes[0]['message']}: {causes[0]['field']}" if n == 1 else "\n" + lines
    )
    return ApiFailure(409, msg, "Conflict", causes=causes)


def applied_identity(applied: JSON) -> tuple[str, str, str]:
    meta = applied.get("metadata") or {}
    return str(applied.get("apiVersion", "")), str(applied.get("kind", "")), str(meta.get("name", ""))


def dumps_fields(fs: FieldSet) -> str:
    return json.dumps(to_fields_v1(fs), sort_keys=True)
