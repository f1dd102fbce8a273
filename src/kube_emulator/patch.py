"""The three non-apply patch flavours: JSON merge (RFC 7386), JSON patch (RFC 6902), strategic merge."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jsonpatch

from kube_emulator.errors import ApiFailure
from kube_emulator.listtypes import list_info
from kube_emulator.resources import ResourceType

JSON = dict[str, Any]


def clone(v: Any) -> Any:
    """Deep copy of plain JSON data; much faster than copy.deepcopy."""
    if isinstance(v, dict):
        return {k: clone(x) for k, x in v.items()}
    if isinstance(v, list):
        return [clone(x) for x in v]
    return v


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return clone(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def json_patch(target: JSON, ops: Any) -> JSON:
    if not isinstance(ops, list):
        raise ApiFailure(400, "json patch must be a list of operations")
    try:
        result = jsonpatch.JsonPatch(ops).apply(target, in_place=False)
    except jsonpatch.JsonPatchTestFailed as exc:
        raise ApiFailure(
            422, f"the server rejected our request due to an error in our request: {exc}"
        ) from None
    except (
        jsonpatch.JsonPatchException,
        jsonpatch.JsonPointerException,
        KeyError,
        IndexError,
        TypeError,
    ) as exc:
        raise ApiFailure(
            422, f"the server rejected our request due to an error in our request: {exc}"
        ) from None
    if not isinstance(result, dict):
        raise ApiFailure(422, "json patch must leave an object")
    return result


def _key_of(item: Any, keys: tuple[str, ...]) -> tuple[Any, ...] | None:
    if not isinstance(item, dict):
        return None
    return tuple(item.get(k) for k in keys)


def strategic_merge(target: Any, patch: Any, rt: ResourceType | None, path: tuple[str, ...] = ()) -> Any:
    """Strategic merge patch for the directives kubectl emits.

    Handles ``$patch: replace|delete`` on maps and list items, ``$retainKeys``,
    ``$deleteFromPrimitiveList/<f>`` and ``$setElementOrder/<f>``.  Merged lists are
    ordered as apimachinery's ``normalizeElementOrder`` orders them: the patch's items in
    the patch's (or ``$setElementOrder``'s) order, the live object's other items in their
    live order, interleaved where the live order relates them (so an item new to the list
    comes *before* the live items, not after).  Lists without a known merge key are
    replaced, as the real server does for lists without patchStrategy=merge.
    """
    if not isinstance(patch, dict):
        return clone(patch)
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: clone(v) for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return None
    out: JSON = dict(target) if isinstance(target, dict) else {}
    retain = patch.get("$retainKeys")
    ordered: set[str] = set()
    for key, value in patch.items():
        if key.startswith("$setElementOrder/") and isinstance(value, list):
            field = key.split("/", 1)[1]
            if _set_element_order(out, field, value, patch.get(field), rt, (*path, field)):
                ordered.add(field)
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/") or key in ordered:
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(out.get(field), list) and isinstance(value, list):
                out[field] = [x for x in out[field] if x not in value]
            continue
        if value is None:
            out.pop(key, None)
            continue
        sub_path = (*path, key)
        if isinstance(value, list):
            out[key] = _merge_list(out.get(key), value, rt, sub_path)
        elif isinstance(value, dict):
            merged = strategic_merge(out.get(key), value, rt, sub_path)
            if merged is None:
                out.pop(key, None)
            else:
                out[key] = merged
        else:
            out[key] = value
    if isinstance(retain, list):
        out = {k: v for k, v in out.items() if k in retain}
    return out


def _merge_list(live: Any, patch: list[Any], rt: ResourceType | None, path: tuple[str, ...]) -> list[Any]:
    kind, keys = list_info(rt, path)
    if not isinstance(live, list):
        live = []
    if len(patch) == 1 and isinstance(patch[0], dict) and patch[0].get("$patch") == "replace":
        return []
    if kind == "set":
        merged: list[Any] = []
        for v in [*live, *patch]:
            if v not in merged:
                merged.append(clone(v))
        return _normalize_order(
            [v for v in merged if v in patch], [v for v in merged if v not in patch], patch, live, _same
        )
    if kind != "map" or not keys:
        return [clone(v) for v in patch if not (isinstance(v, dict) and v.get("$patch") == "delete")]
    ident = _keyed(keys)
    # Deletions first (``mergeSliceWithSpecialElements``), then the merge proper.
    result = list(live)
    plain = []
    for item in patch:
        if isinstance(item, dict) and item.get("$patch") == "delete":
            result = [cur for cur in result if ident(cur) != ident(item)]
        else:
            plain.append(item)
    server_order = list(result)
    for item in plain:
        idx = next((i for i, cur in enumerate(result) if ident(cur) == ident(item)), None)
        if idx is None:
            result.append(strategic_merge({}, item, rt, path))
        else:
            result[idx] = strategic_merge(result[idx], item, rt, path)
    in_patch = {repr(ident(i)) for i in plain}
    return _normalize_order(
        [v for v in result if repr(ident(v)) in in_patch],
        [v for v in result if repr(ident(v)) not in in_patch],
        plain,
        server_order,
        ident,
    )


def _same(v: Any) -> Any:
    return v


def _keyed(keys: tuple[str, ...]) -> Callable[[Any], Any]:
    return lambda item: _key_of(item, keys)


def _index(items: list[Any], item: Any, ident: Callable[[Any], Any]) -> int:
    want = ident(item)
    return next((i for i, cur in enumerate(items) if ident(cur) == want), -1)


def _normalize_order(
    patch_items: list[Any],
    server_only: list[Any],
    patch_order: list[Any],
    server_order: list[Any],
    ident: Callable[[Any], Any],
) -> list[Any]:
    """apimachinery's ``normalizeElementOrder``: sort both parts, then ``mergeSortedSlice``.

    Patch items keep the patch's order, server-only items the live order; a server-only
    item goes before a patch item only when the live order says so for both of them.
    """
    patch_items = sorted(patch_items, key=lambda v: _index(patch_order, v, ident))
    server_only = sorted(server_only, key=lambda v: _index(server_order, v, ident))
    out: list[Any] = []
    i = j = 0
    while i < len(server_only) or j < len(patch_items):
        if i >= len(server_only):
            out.append(patch_items[j])
            j += 1
        elif j >= len(patch_items):
            out.append(server_only[i])
            i += 1
        else:
            li = _index(server_order, server_only[i], ident)
            ri = _index(server_order, patch_items[j], ident)
            if li >= 0 and ri >= 0 and li < ri:
                out.append(server_only[i])
                i += 1
            else:
                out.append(patch_items[j])
                j += 1
    return out


def _set_element_order(
    out: JSON, field: str, order: list[Any], patch_list: Any, rt: ResourceType | None, path: tuple[str, ...]
) -> bool:
    """``$setElementOrder/<field>`` (``mergePatchIntoOriginal``): merge the list, then order it
    by the directive's list; True when ``field`` is done (the caller must not merge it again)."""
    kind, keys = list_info(rt, path)
    live = out.get(field)
    if isinstance(live, list) and isinstance(patch_list, list):
        merged = _merge_list(live, patch_list, rt, path)
    elif isinstance(patch_list, list):
        merged = [
            strategic_merge({}, v, rt, path) if isinstance(v, dict) else clone(v)
            for v in patch_list
            if not (isinstance(v, dict) and v.get("$patch") == "delete")
        ]
    elif isinstance(live, list):
        merged = list(live)
    else:
        return False
    ident = _keyed(keys) if kind == "map" and keys else _same
    wanted = {repr(ident(v)) for v in order}
    out[field] = _normalize_order(
        [v for v in merged if repr(ident(v)) in wanted],
        [v for v in merged if repr(ident(v)) not in wanted],
        order,
        live if isinstance(live, list) else [],
        ident,
    )
    return True
