"""Structural-schema handling for custom resources: prune, default, validate.

The order matches the real API server: unknown fields are pruned, nulls in non-nullable
fields dropped, defaults applied, then the result is validated.  CEL rules
(``x-kubernetes-validations``) are evaluated for a documented subset only (see ``cel.py``);
rules outside it are not enforced.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

from kube_emulator import cel
from kube_emulator.errors import cause

JSON = dict[str, Any]
ROOT_KEEP = ("apiVersion", "kind", "metadata")
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:?\d{2})$")


@lru_cache(maxsize=512)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _clone(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _clone(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clone(x) for x in v]
    return v


def prune(
    value: Any, schema: JSON, root: bool = False, path: str = "", unknown: list[str] | None = None
) -> Any:
    """Drop fields the schema does not know and nulls it does not allow; returns the value.

    Dropped unknown fields are reported in ``unknown`` (for fieldValidation Warn/Strict).
    """
    if isinstance(value, dict):
        props = schema.get("properties")
        addl = schema.get("additionalProperties")
        preserve = schema.get("x-kubernetes-preserve-unknown-fields", False)
        for key in list(value):
            if root and key in ROOT_KEEP:
                continue
            sub = props.get(key) if props else None
            if sub is None and isinstance(addl, dict):
                sub = addl
            here = f"{path}.{key}" if path else key
            if sub is None:
                if not preserve and addl is not True:
                    del value[key]
                    if unknown is not None:
                        unknown.append(here)
                continue
            child = value[key]
            if child is None and not sub.get("nullable", False):
                del value[key]
                continue
            prune(child, sub, False, here, unknown)
    elif isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(value):
                prune(item, items, False, f"{path}[{i}]", unknown)
    return value


def apply_defaults(value: Any, schema: JSON) -> Any:
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for key, sub in props.items():
            if key not in value and "default" in sub:
                value[key] = _clone(sub["default"])
            if key in value:
                apply_defaults(value[key], sub)
        addl = schema.get("additionalProperties")
        if isinstance(addl, dict):
            for key, child in value.items():
                if key not in props:
                    apply_defaults(child, addl)
    elif isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, dict):
            for item in value:
                apply_defaults(item, items)
    return value


def _shown(v: Any) -> str:
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict | list):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def _type_ok(value: Any, typ: str, schema: JSON) -> bool:
    if schema.get("x-kubernetes-int-or-string"):
        return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
    if typ == "string":
        return isinstance(value, str)
    if typ == "integer":
        if isinstance(value, bool):
            return False
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if typ == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if typ == "boolean":
        return isinstance(value, bool)
    if typ == "object":
        return isinstance(value, dict)
    if typ == "array":
        return isinstance(value, list)
    return True


def validate(value: Any, schema: JSON, path: str = "", root: bool = False) -> list[JSON]:
    """Every violation as a Status cause (field path, message)."""
    errors: list[JSON] = []
    _validate(value, schema, path, errors, root)
    return errors


def _validate(value: Any, schema: JSON, path: str, errors: list[JSON], root: bool = False) -> None:
    where = path or "<root>"
    if value is None:
        if not schema.get("nullable", False):
            errors.append(
                cause(
                    where,
                    f'Invalid value: "null": {where} in body must be of type {schema.get("type", "object")}: "null"',
                )
            )
        return
    typ = schema.get("type")
    if typ and not _type_ok(value, typ, schema):
        errors.append(
            cause(
                where,
                f"Invalid value: {_shown(value)}: {where} in body must be of type {typ}: {_shown(type_name(value))}",
                "FieldValueTypeInvalid",
            )
        )
        return
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(_shown(v) for v in schema["enum"])
        errors.append(
            cause(
                where,
                f"Unsupported value: {_shown(value)}: supported values: {allowed}",
                "FieldValueNotSupported",
            )
        )
    if isinstance(value, str):
        _validate_string(value, schema, where, errors)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        _validate_number(value, schema, where, errors)
    elif isinstance(value, dict):
        _validate_object(value, schema, path, errors, root)
    elif isinstance(value, list):
        _validate_array(value, schema, path, errors)
    for rule in schema.get("x-kubernetes-validations") or []:
        ok = cel.evaluate(str(rule.get("rule", "")), value)
        if ok is False:
            message = rule.get("message") or f"failed rule: {rule.get('rule')}"
            field = where if not rule.get("fieldPath") else f"{path}{rule['fieldPath']}"
            errors.append(cause(field, f'Invalid value: "{type_name(value)}": {message}'))
    for combinator in ("allOf",):
        for sub in schema.get(combinator) or []:
            _validate(value, sub, path, errors)
    if schema.get("anyOf") and not any(not validate(value, sub, path) for sub in schema["anyOf"]):
        errors.append(cause(where, f"Invalid value: {_shown(value)}: {where} in body must match anyOf"))
    if schema.get("oneOf"):
        matches = sum(1 for sub in schema["oneOf"] if not validate(value, sub, path))
        if matches != 1:
            errors.append(
                cause(
                    where,
                    f"Invalid value: {_shown(value)}: {where} in body must match exactly one schema in oneOf",
                )
            )


def type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _validate_string(value: str, schema: JSON, where: str, errors: list[JSON]) -> None:
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        errors.append(
            cause(where, f"Too long: may not be more than {schema['maxLength']} bytes", "FieldValueTooLong")
        )
    if "minLength" in schema and len(value) < schema["minLength"]:
        errors.append(
            cause(
                where,
                f"Invalid value: {_shown(value)}: {where} in body should be at least {schema['minLength']} chars long",
            )
        )
    if "pattern" in schema and not _regex(schema["pattern"]).search(value):
        errors.append(
            cause(
                where, f"Invalid value: {_shown(value)}: {where} in body should match '{schema['pattern']}'"
            )
        )
    if schema.get("format") == "date-time" and not _DATE_TIME.match(value):
        errors.append(
            cause(
                where,
                f"Invalid value: {_shown(value)}: {where} in body must be of type date-time: {_shown(value)}",
            )
        )


def _validate_number(value: float, schema: JSON, where: str, errors: list[JSON]) -> None:
    if "maximum" in schema:
        mx = schema["maximum"]
        if value > mx or (schema.get("exclusiveMaximum") and value == mx):
            op = "less than" if schema.get("exclusiveMaximum") else "less than or equal to"
            errors.append(
                cause(where, f"Invalid value: {_shown(value)}: {where} in body should be {op} {mx}")
            )
    if "minimum" in schema:
        mn = schema["minimum"]
        if value < mn or (schema.get("exclusiveMinimum") and value == mn):
            op = "greater than" if schema.get("exclusiveMinimum") else "greater than or equal to"
            errors.append(
                cause(where, f"Invalid value: {_shown(value)}: {where} in body should be {op} {mn}")
            )
    if "multipleOf" in schema and schema["multipleOf"] and value % schema["multipleOf"] != 0:
        errors.append(
            cause(
                where,
                f"Invalid value: {_shown(value)}: {where} in body should be a multiple of {schema['multipleOf']}",
            )
        )


def _validate_object(value: JSON, schema: JSON, path: str, errors: list[JSON], root: bool) -> None:
    props = schema.get("properties") or {}
    for req in schema.get("required") or []:
        if req not in value:
            field = f"{path}.{req}" if path else req
            errors.append(cause(field, "Required value", "FieldValueRequired"))
    if "maxProperties" in schema and len(value) > schema["maxProperties"]:
        errors.append(
            cause(
                path or "<root>",
                f"Too many: {len(value)}: must have at most {schema['maxProperties']} items",
                "FieldValueTooMany",
            )
        )
    if "minProperties" in schema and len(value) < schema["minProperties"]:
        errors.append(
            cause(
                path or "<root>",
                f"Invalid value: {len(value)}: must have at least {schema['minProperties']} properties",
            )
        )
    addl = schema.get("additionalProperties")
    for key, child in value.items():
        if root and key in ROOT_KEEP:
            continue
        sub = props.get(key)
        if sub is None and isinstance(addl, dict):
            sub = addl
        if sub is not None:
            _validate(child, sub, f"{path}.{key}" if path else key, errors)


def _validate_array(value: list[Any], schema: JSON, path: str, errors: list[JSON]) -> None:
    where = path or "<root>"
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        errors.append(
            cause(
                where,
                f"Too many: {len(value)}: must have at most {schema['maxItems']} items",
                "FieldValueTooMany",
            )
        )
    if "minItems" in schema and len(value) < schema["minItems"]:
        errors.append(
            cause(
                where,
                f"Invalid value: {len(value)}: {where} in body should have at least {schema['minItems']} items",
            )
        )
    items = schema.get("items")
    if isinstance(items, dict):
        for i, item in enumerate(value):
            _validate(item, items, f"{path}[{i}]", errors)
    list_type = schema.get("x-kubernetes-list-type")
    if list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys") or []
        seen: set[str] = set()
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                continue
            ident = json.dumps({k: item.get(k) for k in keys}, sort_keys=True)
            if ident in seen:
                shown = ", ".join(f"{k}={_shown(item.get(k))}" for k in keys)
                errors.append(cause(f"{path}[{i}]", f"Duplicate value: map[{shown}]", "FieldValueDuplicate"))
            seen.add(ident)
    elif list_type == "set" or schema.get("uniqueItems"):
        seen_items: set[str] = set()
        for i, item in enumerate(value):
            ident = json.dumps(item, sort_keys=True)
            if ident in seen_items:
                errors.append(
                    cause(f"{path}[{i}]", f"Duplicate value: {_shown(item)}", "FieldValueDuplicate")
                )
            seen_items.add(ident)


def list_type_at(schema: JSON | None, path: tuple[str, ...]) -> tuple[str, tuple[str, ...]] | None:
    """The list type of the array at a path of field names (list items are transparent)."""
    cur = schema
    for part in path:
        if cur is None:
            return None
        while cur.get("type") == "array" and isinstance(cur.get("items"), dict):
            cur = cur["items"]
        props = cur.get("properties") or {}
        nxt = props.get(part)
        if nxt is None and isinstance(cur.get("additionalProperties"), dict):
            nxt = cur["additionalProperties"]
        cur = nxt
    if cur is None or cur.get("type") != "array":
        return None
    lt = cur.get("x-kubernetes-list-type", "atomic")
    return lt, tuple(cur.get("x-kubernetes-list-map-keys") or ())
