"""Field ownership sets in the ``fieldsV1`` vocabulary (``f:name``, ``k:{...}``, ``v:...``).

A field set is a Python ``set`` of paths; a path is a tuple of fieldsV1 elements.
A path is in the set when the manager owns that node (a leaf, or a list item).
Conversion to and from the nested ``fieldsV1`` JSON is lossless.
"""

from __future__ import annotations

import json
from typing import Any

from kube_emulator.listtypes import list_info
from kube_emulator.resources import ResourceType

JSON = dict[str, Any]
Path = tuple[str, ...]
FieldSet = set[Path]
MISSING: Any = object()
TRACKED_METADATA = ("labels", "annotations", "finalizers", "ownerReferences")


def _dumps(v: Any) -> str:
    return json.dumps(v, separators=(",", ":"), sort_keys=True)


def item_key(item: Any, keys: tuple[str, ...]) -> str:
    if not isinstance(item, dict):
        return "v:" + _dumps(item)
    return "k:" + _dumps({k: item[k] for k in keys if k in item})


def top_level_fields(obj: JSON, rt: ResourceType | None, subresource: str | None) -> JSON:
    """The part of an object whose fields are tracked for the given (sub)resource."""
    if subresource == "status":
        return {"status": obj["status"]} if "status" in obj else {}
    out: JSON = {}
    for key, value in obj.items():
        if key in ("apiVersion", "kind"):
            continue
        if key == "status" and rt is not None and rt.has_status:
            continue
        if key == "metadata":
            meta = {k: value[k] for k in TRACKED_METADATA if isinstance(value, dict) and value.get(k)}
            if meta:
                out["metadata"] = meta
            continue
        out[key] = value
    return out


def field_set(obj: JSON, rt: ResourceType | None, subresource: str | None = None) -> FieldSet:
    out: FieldSet = set()
    _walk(top_level_fields(obj, rt, subresource), (), (), rt, out)
    return out


def _walk(value: Any, path: Path, names: tuple[str, ...], rt: ResourceType | None, out: FieldSet) -> None:
    if isinstance(value, dict):
        if not value and path:
            out.add(path)
            return
        # Maps with free-form keys (labels, data) and structs are walked alike.
        for key, child in value.items():
            _walk(child, (*path, "f:" + key), (*names, key), rt, out)
        return
    if isinstance(value, list):
        kind, keys = list_info(rt, names)
        if kind == "map" and keys and all(isinstance(i, dict) for i in value):
            if not value:
                out.add(path)
            for item in value:
                ipath = (*path, item_key(item, keys))
                out.add(ipath)
                for key, child in item.items():
                    _walk(child, (*ipath, "f:" + key), (*names, key), rt, out)
            return
        if kind == "set":
            if not value:
                out.add(path)
            for item in value:
                out.add((*path, "v:" + _dumps(item)))
            return
    out.add(path)


def to_fields_v1(fs: FieldSet) -> JSON:
    tree: JSON = {}
    members: list[JSON] = []
    for path in fs:
        node = tree
        for elem in path:
            node = node.setdefault(elem, {})
        members.append(node)
    for node in members:
        if node:
            node["."] = {}
    return tree


def from_fields_v1(tree: JSON) -> FieldSet:
    out: FieldSet = set()
    _decode(tree, (), out)
    return out


def _decode(node: JSON, path: Path, out: FieldSet) -> None:
    for key, sub in node.items():
        if key == ".":
            out.add(path)
        elif not sub:
            out.add((*path, key))
        else:
            _decode(sub, (*path, key), out)


def _find_item(lst: list[Any], elem: str) -> int | None:
    if elem.startswith("v:"):
        want = json.loads(elem[2:])
        for i, v in enumerate(lst):
            if v == want:
                return i
        return None
    if elem.startswith("k:"):
        want = json.loads(elem[2:])
        for i, v in enumerate(lst):
            if isinstance(v, dict) and all(v.get(k) == w for k, w in want.items()):
                return i
        return None
    if elem.startswith("i:"):
        idx = int(elem[2:])
        return idx if idx < len(lst) else None
    return None


def get_at(obj: Any, path: Path) -> Any:
    cur = obj
    for elem in path:
        if elem.startswith("f:"):
            if not isinstance(cur, dict) or elem[2:] not in cur:
                return MISSING
            cur = cur[elem[2:]]
        else:
            if not isinstance(cur, list):
                return MISSING
            idx = _find_item(cur, elem)
            if idx is None:
                return MISSING
            cur = cur[idx]
    return cur


def remove_at(obj: Any, path: Path) -> None:
    if not path:
        return
    parent = get_at(obj, path[:-1])
    last = path[-1]
    if last.startswith("f:"):
        if isinstance(parent, dict):
            parent.pop(last[2:], None)
    elif isinstance(parent, list):
        idx = _find_item(parent, last)
        if idx is not None:
            parent.pop(idx)


def describe(path: Path) -> str:
    """``.spec.containers[name="app"].image`` — how the real server names a field in conflicts."""
    out = ""
    for elem in path:
        if elem.startswith("f:"):
            out += "." + elem[2:]
        elif elem.startswith("k:"):
            keys = json.loads(elem[2:])
            out += "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in keys.items()) + "]"
        elif elem.startswith("v:"):
            out += f"[{elem[2:]}]"
        else:
            out += f"[{elem}]"
    return out


def diff(
    old: JSON, new: JSON, rt: ResourceType | None, subresource: str | None = None
) -> tuple[FieldSet, FieldSet]:
    """(changed-or-added, removed) field paths between two versions of an object.

    Walks only the subtrees that differ (``==`` on dicts is cheap C code), so a small
    patch of a large object costs little.
    """
    changed: FieldSet = set()
    removed: FieldSet = set()
    _diff(
        top_level_fields(old, rt, subresource),
        top_level_fields(new, rt, subresource),
        (),
        (),
        rt,
        changed,
        removed,
    )
    return changed, removed


def _subtree(value: Any, path: Path, names: tuple[str, ...], rt: ResourceType | None, out: FieldSet) -> None:
    _walk(value, path, names, rt, out)


def _diff(
    old: Any,
    new: Any,
    path: Path,
    names: tuple[str, ...],
    rt: ResourceType | None,
    changed: FieldSet,
    removed: FieldSet,
) -> None:
    if old == new:
        return
    if isinstance(old, dict) and isinstance(new, dict) and (old or not path) and (new or not path):
        for key, child in new.items():
            sub = (*path, "f:" + key)
            if key not in old:
                _subtree(child, sub, (*names, key), rt, changed)
            else:
                _diff(old[key], child, sub, (*names, key), rt, changed, removed)
        for key, child in old.items():
            if key not in new:
                _subtree(child, (*path, "f:" + key), (*names, key), rt, removed)
        return
    if isinstance(old, list) and isinstance(new, list):
        kind, keys = list_info(rt, names)
        if (
            kind == "map"
            and keys
            and all(isinstance(i, dict) for i in old)
            and all(isinstance(i, dict) for i in new)
            and old
            and new
        ):
            old_items = {item_key(i, keys): i for i in old}
            for item in new:
                k = item_key(item, keys)
                ipath = (*path, k)
                if k not in old_items:
                    changed.add(ipath)
                    for key, child in item.items():
                        _subtree(child, (*ipath, "f:" + key), (*names, key), rt, changed)
                else:
                    _diff(old_items.pop(k), item, ipath, names, rt, changed, removed)
            for k, item in old_items.items():
                ipath = (*path, k)
                removed.add(ipath)
                for key, child in item.items():
                    _subtree(child, (*ipath, "f:" + key), (*names, key), rt, removed)
            return
        if kind == "set" and old and new:
            old_set = {"v:" + _dumps(v) for v in old}
            new_set = {"v:" + _dumps(v) for v in new}
            changed.update((*path, v) for v in new_set - old_set)
            removed.update((*path, v) for v in old_set - new_set)
            return
    # Scalars, atomic lists, or a change of shape: the old subtree goes, the new one arrives.
    old_paths: FieldSet = set()
    new_paths: FieldSet = set()
    _subtree(old, path, names, rt, old_paths)
    _subtree(new, path, names, rt, new_paths)
    changed.update(new_paths)
    removed.update(old_paths - new_paths)
