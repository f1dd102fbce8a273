"""Garbage collection, as kube-controller-manager does it: owner references and namespaces.

New namespaces also get what the real controllers put in every namespace: the ``default``
ServiceAccount and the ``kube-root-ca.crt`` ConfigMap.

Listens to the store's change feed and keeps only *sets* of pending work (uids,
namespaces, foreground-deleting objects), so pending work is bounded by the number
of stored objects however fast deletions arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from kube_emulator.resources import ResourceType
from kube_emulator.store import Key, Store

JSON = dict[str, Any]
log = logging.getLogger(__name__)


class GarbageCollector:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.gone_uids: set[str] = set()
        self.check_refs: set[tuple[Key, str, str]] = set()
        self.namespaces: set[str] = set()
        self.foreground: set[tuple[Key, str, str]] = set()
        self.new_namespaces: set[str] = set()
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        store.listeners.append(self.on_change)

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name="apiserver-gc")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    def on_change(self, type_: str, rt: ResourceType, obj: JSON, old: JSON | None) -> None:
        meta = obj["metadata"]
        ref = (rt.storage_key, meta.get("namespace", ""), meta["name"])
        if type_ == "DELETED":
            self.gone_uids.add(meta["uid"])
            if rt.namespaced and self.store.namespace_phase(meta.get("namespace", "")) == "Terminating":
                self.namespaces.add(meta.get("namespace", ""))
        else:
            if meta.get("ownerReferences") and (
                old is None or old["metadata"].get("ownerReferences") != meta["ownerReferences"]
            ):
                self.check_refs.add(ref)
            if meta.get("deletionTimestamp") and "foregroundDeletion" in (meta.get("finalizers") or []):
                self.foreground.add(ref)
            if rt.plural == "namespaces" and rt.group == "" and meta.get("deletionTimestamp"):
                self.namespaces.add(meta["name"])
            elif rt.plural == "namespaces" and rt.group == "" and type_ == "ADDED":
                self.new_namespaces.add(meta["name"])
        if self.gone_uids or self.check_refs or self.namespaces or self.foreground or self.new_namespaces:
            self.wake.set()

    async def _run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            # Yield once so a burst of writes is collected before we act, like a controller's queue.
            await asyncio.sleep(0)
            try:
                self.sweep()
            except Exception:  # keep collecting even if one object is odd
                log.exception("garbage collector sweep failed")

    def sweep(self) -> None:
        for _ in range(100):  # each pass may create more work; bounded so one sweep cannot spin
            if not (
                self.gone_uids or self.check_refs or self.namespaces or self.foreground or self.new_namespaces
            ):
                return
            fresh, self.new_namespaces = self.new_namespaces, set()
            for ns in fresh:
                self._bootstrap_namespace(ns)
            gone, self.gone_uids = self.gone_uids, set()
            for uid in gone:
                for ref in list(self.store.dependents.get(uid, ())):
                    self.check_refs.add(ref)
            refs, self.check_refs = self.check_refs, set()
            for ref in refs:
                self._collect_if_orphaned(ref)
            fg, self.foreground = self.foreground, set()
            for ref in fg:
                self._foreground(ref)
            nss, self.namespaces = self.namespaces, set()
            for ns in nss:
                self._drain_namespace(ns)

    def _bootstrap_namespace(self, ns: str) -> None:
        if self.store.namespace_phase(ns) != "Active":
            return
        reg = self.store.registry
        sa_rt = reg.get("", "v1", "serviceaccounts")
        cm_rt = reg.get("", "v1", "configmaps")
        assert sa_rt is not None and cm_rt is not None
        if self.store.get(sa_rt, ns, "default") is None:
            self.store.write_internal(
                sa_rt, {"metadata": {"name": "default", "namespace": ns}}, None, "kube-controller-manager"
            )
        if self.store.get(cm_rt, ns, "kube-root-ca.crt") is None:
            cm = {
                "metadata": {
                    "name": "kube-root-ca.crt",
                    "namespace": ns,
                    "annotations": {"kubernetes.io/description": "emulated cluster: no real CA"},
                },
                "data": {
                    "ca.crt": "# the emulated API server serves plain HTTP on loopback; there is no CA\n"
                },
            }
            self.store.write_internal(cm_rt, cm, None, "kube-controller-manager")

    def _lookup(self, ref: tuple[Key, str, str]) -> tuple[ResourceType, JSON] | None:
        rt = self.store.registry.storage_type(ref[0])
        if rt is None:
            return None
        obj = self.store.get(rt, ref[1], ref[2])
        return (rt, obj) if obj is not None else None

    def _collect_if_orphaned(self, ref: tuple[Key, str, str]) -> None:
        found = self._lookup(ref)
        if found is None:
            return
        rt, obj = found
        owners = obj["metadata"].get("ownerReferences") or []
        if not owners:
            return
        if any(o.get("uid") in self.store.by_uid for o in owners):
            return
        if obj["metadata"].get("deletionTimestamp"):
            return
        self.store.delete(rt, ref[1], ref[2], "Background")

    def _foreground(self, ref: tuple[Key, str, str]) -> None:
        found = self._lookup(ref)
        if found is None:
            return
        rt, obj = found
        uid = obj["metadata"]["uid"]
        deps = list(self.store.dependents.get(uid, ()))
        for dep in deps:
            d = self._lookup(dep)
            if d is not None and not d[1]["metadata"].get("deletionTimestamp"):
                self.store.delete(d[0], dep[1], dep[2], "Foreground")
        if not self.store.dependents.get(uid):
            self.store.remove_finalizer(rt, obj, "foregroundDeletion")
        else:
            # Re-check when a dependent goes away (its DELETED event wakes us through gone_uids).
            self._waiting_foreground(ref)

    def _waiting_foreground(self, ref: tuple[Key, str, str]) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, self._requeue_foreground, ref)

    def _requeue_foreground(self, ref: tuple[Key, str, str]) -> None:
        self.foreground.add(ref)
        self.wake.set()

    def _drain_namespace(self, ns: str) -> None:
        if self.store.namespace_phase(ns) != "Terminating":
            return
        remaining = 0
        for rt in list(self.store.registry):
            if not rt.namespaced or rt.version != rt.storage_version:
                continue
            b = self.store.buckets.get(rt.storage_key)
            if b is None:
                continue
            for key in [k for k in b.objects if k[0] == ns]:
                obj = b.objects.get(key)
                if obj is None:
                    continue
                remaining += 1
                if not obj["metadata"].get("deletionTimestamp"):
                    self.store.delete(rt, ns, key[1], "Background")
        if remaining == 0 or not any(
            k[0] == ns for b in self.store.buckets.values() if b.rt.namespaced for k in b.objects
        ):
            self.store.finish_namespace(ns)
