"""Keys for the work queue and for tracked children."""

from __future__ import annotations

from typing import Any, NamedTuple


class AppKey(NamedTuple):
    namespace: str
    name: str


class EnvKey(NamedTuple):
    name: str


ObjKey = AppKey | EnvKey


class ChildKey(NamedTuple):
    api_version: str
    kind: str
    namespace: str
    name: str

    @classmethod
    def of(cls, manifest: dict[str, Any]) -> ChildKey:
        meta = manifest["metadata"]
        return cls(manifest["apiVersion"], manifest["kind"], meta.get("namespace") or "", meta["name"])
