"""Keys for the work queue and for tracked children."""

from __future__ import annotations

from typing import Any, NamedTuple


class AppKey(NamedTuple):
    namespace: str
    name: str


class EnvKey(NamedTuple):
    name: str


class DataPlaneKey(NamedTuple):
    """A DataPlane (cluster-scoped, written by the agent): the operator only judges its heartbeat."""

    name: str


# Owners of children. A DataPlane owns none, so it is a key of the queue but not an ObjKey.
ObjKey = AppKey | EnvKey
QueueKey = AppKey | EnvKey | DataPlaneKey


class ChildKey(NamedTuple):
    api_version: str
    kind: str
    namespace: str
    name: str

    @classmethod
    def of(cls, manifest: dict[str, Any]) -> ChildKey:
        meta = manifest["metadata"]
        return cls(manifest["apiVersion"], manifest["kind"], meta.get("namespace") or "", meta["name"])
