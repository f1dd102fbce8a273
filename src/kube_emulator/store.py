"""In-memory object storage with the API server's write semantics.

Objects are plain dicts that are never mutated once stored (every write builds a new
dict), so reads, lists and watch events share them without copying.  One global
``resourceVersion`` counter orders all writes; each (group, plural) bucket keeps a
bounded event history for watch resumes and the set of its live watchers.
"""

from __future__ import annotations

import asyncio
import builtins
import random
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kube_emulator import crd as crdmod
from kube_emulator.admission import Admission
from kube_emulator.apply import record_update, server_side_apply
from kube_emulator.defaults import apply_builtin_defaults
from kube_emulator.errors import (
    ApiFailure,
    already_exists,
    cause,
    check_resource_version,
    conflict,
    invalid,
    not_found,
)
from kube_emulator.patch import clone, json_patch, merge_patch, strategic_merge
from kube_emulator.resourcelists import canonicalize
from kube_emulator.resources import Registry, ResourceType
from kube_emulator.schema import apply_defaults, prune, validate
from kube_emulator.timefields import normalize_times
from kube_emulator.watch import Event, History, Predicate, Watcher

JSON = dict[str, Any]
Key = tuple[str, str]  # (group, plural)
ObjKey = tuple[str, str]  # (namespace, name)
Listener = Callable[[str, ResourceType, JSON, JSON | None], None]

_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
PATCH_TYPES = {
    "application/merge-patch+json": "merge",
    "application/json-patch+json": "json",
    "application/strategic-merge-patch+json": "strategic",
    "application/apply-patch+yaml": "apply",
    "application/apply-patch+json": "apply",
}


def _without_times(entries: Any) -> list[JSON]:
    return [{k: v for k, v in e.items() if k != "time"} for e in entries or [] if isinstance(e, dict)]


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def random_suffix(n: int = 5) -> str:
    return "".join(random.choices(_SUFFIX_ALPHABET, k=n))


@dataclass
class Bucket:
    rt: ResourceType
    history: History
    objects: dict[ObjKey, JSON] = field(default_factory=dict)
    watchers: set[Watcher] = field(default_factory=set)


@dataclass
class WriteOptions:
    manager: str = "unknown"
    dry_run: bool = False
    subresource: str = ""
    force: bool = False
    field_validation: str = "Warn"  # Ignore | Warn | Strict, as the fieldValidation parameter
    warnings: list[str] = field(default_factory=list)
    # What admission charges to ResourceQuotas once the object is stored (never on a dry run).
    charges: list[Callable[[], None]] = field(default_factory=list)

    def charge(self) -> None:
        charges, self.charges = self.charges, []
        for c in charges:
            c()


class Store:
    def __init__(self, registry: Registry, history_size: int = 10_000, watch_queue_size: int = 4096) -> None:
        self.registry = registry
        self.history_size = history_size
        self.watch_queue_size = watch_queue_size
        self.rv = 0
        self.buckets: dict[Key, Bucket] = {}
        self.by_uid: dict[str, tuple[Key, str, str]] = {}
        self.dependents: dict[str, set[tuple[Key, str, str]]] = {}
        self.listeners: list[Listener] = []
        self.overflowed_watchers = 0
        self.dropped_floors: dict[Key, int] = {}
        self.admission = Admission(self)

    # ----- lookup -------------------------------------------------------------------------
    def bucket(self, rt: ResourceType) -> Bucket:
        b = self.buckets.get(rt.storage_key)
        if b is None:
            b = Bucket(rt, History(self.history_size))
            # Every event of this resource is still in the (empty) history, unless an earlier
            # incarnation (a deleted CRD) had events we no longer keep.
            b.history.floor = self.dropped_floors.get(rt.storage_key, 0)
            self.buckets[rt.storage_key] = b
        return b

    def get(self, rt: ResourceType, namespace: str, name: str) -> JSON | None:
        b = self.buckets.get(rt.storage_key)
        if b is None:
            return None
        return b.objects.get((namespace if rt.namespaced else "", name))

    def must_get(self, rt: ResourceType, namespace: str, name: str) -> JSON:
        obj = self.get(rt, namespace, name)
        if obj is None:
            raise not_found(rt.plural, rt.group, name)
        return obj

    def list(
        self,
        rt: ResourceType,
        namespace: str | None,
        label_pred: Predicate | None = None,
        field_pred: Predicate | None = None,
    ) -> list[JSON]:
        b = self.buckets.get(rt.storage_key)
        if b is None:
            return []
        if namespace and rt.namespaced:
            keys = sorted(k for k in b.objects if k[0] == namespace)
        else:
            keys = sorted(b.objects)
        out = []
        for k in keys:
            obj = b.objects[k]
            if label_pred is not None and not label_pred(obj):
                continue
            if field_pred is not None and not field_pred(obj):
                continue
            out.append(obj)
        return out

    def namespace_phase(self, name: str) -> str | None:
        ns_rt = self.registry.get("", "v1", "namespaces")
        assert ns_rt is not None
        obj = self.get(ns_rt, "", name)
        if obj is None:
            return None
        return str((obj.get("status") or {}).get("phase") or "Active")

    # ----- internal write path ------------------------------------------------------------
    def _emit(self, b: Bucket, type_: str, obj: JSON, old: JSON | None) -> None:
        ev = Event(type_, obj, self.rv, old)
        b.history.append(ev)
        dead = [w for w in b.watchers if not w.offer(ev)]
        for w in dead:
            b.watchers.discard(w)
            self.overflowed_watchers += 1
        for listener in self.listeners:
            listener(type_, b.rt, obj, old)

    def _index(self, key: Key, obj: JSON, old: JSON | None) -> None:
        meta = obj["metadata"]
        ref = (key, meta.get("namespace", ""), meta["name"])
        self.by_uid[meta["uid"]] = ref
        old_owners = {o.get("uid") for o in (old or {}).get("metadata", {}).get("ownerReferences") or []}
        new_owners = {o.get("uid") for o in meta.get("ownerReferences") or []}
        for uid in old_owners - new_owners:
            deps = self.dependents.get(str(uid))
            if deps is not None:
                deps.discard(ref)
                if not deps:
                    del self.dependents[str(uid)]
        for uid in new_owners - old_owners:
            self.dependents.setdefault(str(uid), set()).add(ref)

    def _unindex(self, key: Key, obj: JSON) -> None:
        meta = obj["metadata"]
        ref = (key, meta.get("namespace", ""), meta["name"])
        self.by_uid.pop(meta["uid"], None)
        for o in meta.get("ownerReferences") or []:
            deps = self.dependents.get(str(o.get("uid")))
            if deps is not None:
                deps.discard(ref)
                if not deps:
                    del self.dependents[str(o.get("uid"))]

    def _put(self, rt: ResourceType, obj: JSON, old: JSON | None) -> JSON:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        b = self.bucket(rt)
        meta = obj["metadata"]
        b.objects[(meta.get("namespace", ""), meta["name"])] = obj
        self._index(rt.storage_key, obj, old)
        self._emit(b, "ADDED" if old is None else "MODIFIED", obj, old)
        return obj

    def _remove(self, rt: ResourceType, obj: JSON) -> JSON:
        self.rv += 1
        b = self.bucket(rt)
        meta = obj["metadata"]
        b.objects.pop((meta.get("namespace", ""), meta["name"]), None)
        final = dict(obj)
        final["metadata"] = dict(meta, resourceVersion=str(self.rv))
        self._unindex(rt.storage_key, obj)
        self._emit(b, "DELETED", final, obj)
        if rt.plural == "customresourcedefinitions" and rt.group == "apiextensions.k8s.io":
            self.unregister_crd(final)
        return final

    # ----- validation ---------------------------------------------------------------------
    def _prepare(
        self, rt: ResourceType, obj: JSON, old: JSON | None, name: str, opts: WriteOptions | None = None
    ) -> None:
        """Defaults, pruning and validation shared by every write."""
        obj["apiVersion"] = rt.api_version
        obj["kind"] = rt.kind
        if rt.crd is not None and rt.crd.schema is not None:
            schema = rt.crd.schema
            if rt.has_status and "status" in obj and old is None:
                pass
            unknown: list[str] = []
            prune(obj, schema, root=True, unknown=unknown)
            if unknown and opts is not None:
                self._unknown_fields(rt, unknown, opts)
            apply_defaults(obj, schema)
            # metadata is ObjectMeta, checked elsewhere (a schema may still list it as required,
            # as kwok's do: every object has one)
            envelope = ("apiVersion", "kind", "metadata")
            if any(k in envelope for k in schema.get("required") or ()):
                schema = {**schema, "required": [k for k in schema["required"] if k not in envelope]}
            errors = validate({k: v for k, v in obj.items() if k not in envelope}, schema)
            if errors:
                raise invalid(rt.kind, rt.group, name, errors)
        else:
            normalize_times(rt, obj)
            canonicalize(rt, obj)
            apply_builtin_defaults(rt, obj, creating=old is None)
            if rt.kind == "Service" and old is not None and isinstance(obj.get("spec"), dict):
                old_spec = old.get("spec") or {}
                for k in ("clusterIP", "clusterIPs"):
                    if k in old_spec and not obj["spec"].get(k):
                        obj["spec"][k] = old_spec[k]
        if rt.plural == "customresourcedefinitions" and rt.group == "apiextensions.k8s.io":
            crdmod.check_crd(obj)

    @staticmethod
    def _unknown_fields(rt: ResourceType, unknown: builtins.list[str], opts: WriteOptions) -> None:
        if opts.field_validation == "Strict":
            listed = ", ".join(f'unknown field "{u}"' for u in unknown)
            raise ApiFailure(
                400,
                f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: strict decoding error: {listed}',
            )
        if opts.field_validation != "Ignore":
            opts.warnings.extend(f'unknown field "{u}"' for u in unknown)

    def _check_name(self, rt: ResourceType, name: str) -> None:
        pattern, limit = (_LABEL, 63) if rt.plural == "namespaces" else (_SUBDOMAIN, 253)
        if not name or len(name) > limit or not pattern.match(name):
            what = (
                "a lowercase RFC 1123 label"
                if rt.plural == "namespaces"
                else "a lowercase RFC 1123 subdomain"
            )
            raise invalid(
                rt.kind,
                rt.group,
                name,
                [
                    cause(
                        "metadata.name",
                        f'Invalid value: "{name}": must be {what} and at most {limit} characters',
                    )
                ],
            )

    def _check_namespace(self, rt: ResourceType, namespace: str, creating: bool) -> None:
        if not rt.namespaced:
            return
        phase = self.namespace_phase(namespace)
        if phase is None:
            raise not_found("namespaces", "", namespace)
        if creating and phase == "Terminating":
            raise ApiFailure(
                403,
                f'{rt.kind.lower()}s "" is forbidden: unable to create new content in namespace {namespace} because it is being terminated',
                "Forbidden",
            )

    # ----- verbs --------------------------------------------------------------------------
    def create(self, rt: ResourceType, namespace: str, body: Any, opts: WriteOptions) -> JSON:
        if not isinstance(body, dict):
            raise ApiFailure(400, "the body of the request was in an unknown format")
        obj: JSON = clone(body)
        meta = obj.get("metadata")
        if not isinstance(meta, dict):
            meta = obj["metadata"] = {}
        if rt.namespaced:
            body_ns = meta.get("namespace")
            if body_ns and namespace and body_ns != namespace:
                raise ApiFailure(
                    400,
                    "the namespace of the provided object does not match the namespace sent on the request",
                )
            namespace = namespace or body_ns or "default"
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        self._check_kind(rt, obj)
        name = meta.get("name")
        if not name:
            prefix = meta.get("generateName")
            if not prefix:
                raise invalid(
                    rt.kind,
                    rt.group,
                    "",
                    [
                        cause(
                            "metadata.name",
                            "Required value: name or generateName is required",
                            "FieldValueRequired",
                        )
                    ],
                )
            name = prefix + random_suffix()
            while self.get(rt, namespace, name) is not None:
                name = prefix + random_suffix()
            meta["name"] = name
        self._check_name(rt, name)
        self._check_namespace(rt, namespace, creating=True)
        if self.get(rt, namespace, name) is not None:
            raise already_exists(rt.plural, rt.group, name)
        if (rt.has_status and not rt.crd and rt.kind not in ("Pod", "Namespace", "Service")) or (
            rt.has_status and rt.crd
        ):
            obj.pop("status", None)
        self._prepare(rt, obj, None, name, opts)
        now = now_iso()
        for k in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"):
            meta.pop(k, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now
        if rt.has_generation:
            meta["generation"] = 1
        else:
            meta.pop("generation", None)
        if rt.plural == "customresourcedefinitions" and rt.group == "apiextensions.k8s.io":
            obj["status"] = crdmod.established_status(obj, now)
        meta.pop("managedFields", None)
        # Field ownership is recorded before admission mutates the object, as upstream.
        record_update(None, obj, opts.manager, rt, "", now)
        charge = self.admission.admit(rt, obj, None)
        if charge is not None:
            opts.charges.append(charge)
        opts.warnings.extend(self.admission.warnings(rt, obj))
        if opts.dry_run:
            return obj
        opts.charge()
        stored: JSON = self._put(rt, obj, None)
        if rt.plural == "customresourcedefinitions" and rt.group == "apiextensions.k8s.io":
            self._register_crd(stored)
        return stored

    def _check_kind(self, rt: ResourceType, obj: JSON) -> None:
        kind = obj.get("kind")
        api_version = obj.get("apiVersion")
        if kind and kind != rt.kind:
            raise ApiFailure(
                400,
                f"the API version in the data ({api_version}) does not match the expected API version ({rt.api_version}) or kind {kind} != {rt.kind}",
            )
        if api_version and api_version.split("/")[0] != (rt.group or api_version.split("/")[0]) and rt.group:
            raise ApiFailure(
                400,
                f"the API version in the data ({api_version}) does not match the expected API version ({rt.api_version})",
            )

    def update(self, rt: ResourceType, namespace: str, name: str, body: Any, opts: WriteOptions) -> JSON:
        if not isinstance(body, dict):
            raise ApiFailure(400, "the body of the request was in an unknown format")
        old = self.must_get(rt, namespace, name)
        meta_in = body.get("metadata") or {}
        if meta_in.get("name") and meta_in["name"] != name:
            raise ApiFailure(400, "the name of the object does not match the name on the URL")
        check_resource_version(
            rt.plural, rt.group, name, meta_in.get("resourceVersion"), old["metadata"]["resourceVersion"]
        )
        return self._replace(rt, old, clone(body), opts)

    def _replace(self, rt: ResourceType, old: JSON, obj: JSON, opts: WriteOptions) -> JSON:
        """Turn the client's desired object into the stored one (shared by update, patch, apply)."""
        self._check_kind(rt, obj)
        old_meta = old["metadata"]
        name = old_meta["name"]
        if opts.subresource == "status":
            new = {k: v for k, v in old.items()}
            if "status" in obj:
                new["status"] = obj["status"]
            else:
                new.pop("status", None)
            new["metadata"] = dict(old_meta)
            if "managedFields" in (obj.get("metadata") or {}):
                new["metadata"]["managedFields"] = obj["metadata"]["managedFields"]
            obj = new
        else:
            # The main resource, or ``scale``: its writers (the scale endpoint, the HPA
            # emulation) hand over the whole object with only spec.replicas changed; the
            # subresource only tells whose managedFields entry records the change.
            if rt.has_status:
                if "status" in old:
                    obj["status"] = old["status"]
                else:
                    obj.pop("status", None)
        meta = obj.get("metadata")
        if not isinstance(meta, dict):
            meta = obj["metadata"] = {}
        for k in (
            "uid",
            "creationTimestamp",
            "name",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ):
            if k in old_meta:
                meta[k] = old_meta[k]
            else:
                meta.pop(k, None)
        if rt.namespaced:
            meta["namespace"] = old_meta["namespace"]
        if old_meta.get("deletionTimestamp"):
            added = set(meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
            if added:
                raise invalid(
                    rt.kind,
                    rt.group,
                    name,
                    [
                        cause(
                            "metadata.finalizers",
                            "Forbidden: no new finalizers can be added if the object is being deleted",
                            "FieldValueForbidden",
                        )
                    ],
                )
        if not meta.get("finalizers"):
            meta.pop("finalizers", None)
        for k in ("labels", "annotations", "ownerReferences"):
            if k in meta and not meta[k]:
                del meta[k]
        self._prepare(rt, obj, old, name, opts)
        if (
            rt.plural == "customresourcedefinitions"
            and rt.group == "apiextensions.k8s.io"
            and opts.subresource != "status"
        ):
            obj["status"] = crdmod.established_status(obj, now_iso())
        if rt.has_generation and self._spec_changed(rt, old, obj):
            meta["generation"] = int(old_meta.get("generation") or 1) + 1
        now = now_iso()
        if "managedFields" in meta and meta["managedFields"] != old_meta.get("managedFields"):
            pass  # the writer set managedFields explicitly (apply computed them, or a client reset them)
        else:
            meta["managedFields"] = old_meta.get("managedFields") or []
            if not meta["managedFields"]:
                meta.pop("managedFields")
            record_update(old, obj, opts.manager, rt, opts.subresource, now)
        charge = self.admission.admit(rt, obj, old, opts.subresource)
        if self._same(old, obj):
            return old
        if opts.dry_run:
            meta["resourceVersion"] = old_meta["resourceVersion"]
            return obj
        if charge is not None:
            charge()
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            return self._remove(rt, obj)
        stored = self._put(rt, obj, old)
        if rt.plural == "customresourcedefinitions" and rt.group == "apiextensions.k8s.io":
            self._register_crd(stored)
        return stored

    @staticmethod
    def _spec_changed(rt: ResourceType, old: JSON, new: JSON) -> bool:
        skip = ("metadata", "status", "apiVersion", "kind")
        old_body = {k: v for k, v in old.items() if k not in skip}
        new_body = {k: v for k, v in new.items() if k not in skip}
        return old_body != new_body

    @staticmethod
    def _same(old: JSON, new: JSON) -> bool:
        """A no-op write changes nothing, not even resourceVersion (kopf relies on this)."""
        if old.keys() != new.keys():
            return False
        for k, v in old.items():
            if k == "metadata":
                continue
            if new[k] != v:
                return False
        om, nm = old["metadata"], new["metadata"]
        skip = {"resourceVersion", "managedFields"}
        if {k for k in om if k not in skip} != {k for k in nm if k not in skip}:
            return False
        if any(om[k] != nm[k] for k in om if k not in skip):
            return False
        # managedFields differ only in timestamps? then it is still a no-op.
        return _without_times(om.get("managedFields")) == _without_times(nm.get("managedFields"))

    def patch(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        patch_type: str,
        patch: Any,
        opts: WriteOptions,
    ) -> tuple[JSON, bool]:
        """Returns (object, created): only apply creates."""
        old = self.get(rt, namespace, name)
        if patch_type == "apply":
            return self._apply(rt, namespace, name, old, patch, opts)
        if old is None:
            raise not_found(rt.plural, rt.group, name)
        base = clone(old)
        if patch_type == "merge":
            if not isinstance(patch, dict):
                raise ApiFailure(400, "merge patch must be a JSON object")
            new = merge_patch(base, patch)
        elif patch_type == "json":
            new = json_patch(base, patch)
        elif patch_type == "strategic":
            if rt.crd is not None:
                raise ApiFailure(
                    415, "strategic merge patch is not supported for custom resources", "UnsupportedMediaType"
                )
            if not isinstance(patch, dict):
                raise ApiFailure(400, "strategic merge patch must be a JSON object")
            new = strategic_merge(base, patch, rt)
        else:
            raise ApiFailure(415, f"unsupported patch type {patch_type}", "UnsupportedMediaType")
        check_resource_version(
            rt.plural,
            rt.group,
            name,
            (new.get("metadata") or {}).get("resourceVersion"),
            old["metadata"]["resourceVersion"],
        )
        return self._replace(rt, old, new, opts), False

    def _apply(
        self, rt: ResourceType, namespace: str, name: str, old: JSON | None, applied: Any, opts: WriteOptions
    ) -> tuple[JSON, bool]:
        if not isinstance(applied, dict):
            raise ApiFailure(400, "apply patch must be an object")
        meta = applied.get("metadata") or {}
        if meta.get("name") and meta["name"] != name:
            raise ApiFailure(400, "the name of the object does not match the name on the URL")
        if not applied.get("apiVersion") or not applied.get("kind"):
            raise ApiFailure(400, "apiVersion and kind must be set in the applied configuration")
        if applied.get("kind") != rt.kind:
            raise ApiFailure(
                400, f"the kind in the applied configuration ({applied.get('kind')}) does not match {rt.kind}"
            )
        if opts.manager in ("", "unknown"):
            raise ApiFailure(400, "PATCH requests with apply-patch content type require fieldManager")
        applied = clone(applied)
        # The apiserver decodes the applied configuration into its Go type first, so its
        # quantities are compared and merged in canonical form: "0.5" over a stored "500m" is
        # neither a conflict nor a change.
        canonicalize(rt, applied)
        if rt.crd is not None and rt.crd.schema is not None:
            unknown: list[str] = []
            prune(applied, rt.crd.schema, root=True, unknown=unknown)
            if unknown:
                self._unknown_fields(rt, unknown, opts)
        now = now_iso()
        if old is None:
            if opts.subresource:
                raise not_found(rt.plural, rt.group, name)
            body = clone(applied)
            body.setdefault("metadata", {})["name"] = name
            trial = WriteOptions(manager=opts.manager, dry_run=True)
            created = self.create(rt, namespace, body, trial)
            opts.warnings.extend(trial.warnings)
            created["metadata"].pop("managedFields", None)
            result = server_side_apply(created, applied, opts.manager, True, rt, "", now)
            result["metadata"].pop("resourceVersion", None)
            if opts.dry_run:
                return result, True
            trial.charge()
            stored = self._put(rt, result, None)
            if rt.plural == "customresourcedefinitions" and rt.group == "apiextensions.k8s.io":
                self._register_crd(stored)
            return stored, True
        check_resource_version(
            rt.plural, rt.group, name, meta.get("resourceVersion"), old["metadata"]["resourceVersion"]
        )
        result = server_side_apply(old, applied, opts.manager, opts.force, rt, opts.subresource, now)
        return self._replace(rt, old, result, opts), False

    def delete(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        propagation: str | None = None,
        preconditions: JSON | None = None,
        dry_run: bool = False,
    ) -> JSON:
        old = self.must_get(rt, namespace, name)
        meta = old["metadata"]
        pre = preconditions or {}
        if pre.get("uid") and pre["uid"] != meta["uid"]:
            raise conflict(
                rt.plural,
                rt.group,
                name,
                f"Precondition failed: UID in precondition: {pre['uid']}, UID in object meta: {meta['uid']}",
            )
        check_resource_version(rt.plural, rt.group, name, pre.get("resourceVersion"), meta["resourceVersion"])
        if dry_run:
            return old
        if rt.plural == "namespaces" and rt.group == "":
            return self._terminate_namespace(rt, old)
        finalizers = list(meta.get("finalizers") or [])
        if propagation == "Orphan":
            self._orphan_dependents(meta["uid"])
        elif (
            propagation == "Foreground"
            and self.dependents.get(meta["uid"])
            and "foregroundDeletion" not in finalizers
        ):
            finalizers.append("foregroundDeletion")
        if finalizers:
            if meta.get("deletionTimestamp") and finalizers == list(meta.get("finalizers") or []):
                return old
            new = dict(old)
            new["metadata"] = dict(meta, finalizers=finalizers)
            new["metadata"].setdefault("deletionTimestamp", now_iso())
            new["metadata"].setdefault("deletionGracePeriodSeconds", 0)
            if rt.has_generation:
                new["metadata"]["generation"] = int(meta.get("generation") or 1) + 1
            return self._put(rt, new, old)
        return self._remove(rt, old)

    def _orphan_dependents(self, uid: str) -> None:
        for key, ns, name in list(self.dependents.get(uid, ())):
            rt = self.registry.storage_type(key)
            if rt is None:
                continue
            dep = self.get(rt, ns, name)
            if dep is None:
                continue
            new = clone(dep)
            refs = [r for r in new["metadata"].get("ownerReferences") or [] if r.get("uid") != uid]
            if refs:
                new["metadata"]["ownerReferences"] = refs
            else:
                new["metadata"].pop("ownerReferences", None)
            self._put(rt, new, dep)

    def _terminate_namespace(self, rt: ResourceType, old: JSON) -> JSON:
        if old["metadata"].get("deletionTimestamp"):
            return old
        new = dict(old)
        new["metadata"] = dict(old["metadata"], deletionTimestamp=now_iso(), deletionGracePeriodSeconds=0)
        new["status"] = dict(old.get("status") or {}, phase="Terminating")
        return self._put(rt, new, old)

    def finish_namespace(self, name: str) -> None:
        """Called by the garbage collector once a terminating namespace is empty."""
        ns_rt = self.registry.get("", "v1", "namespaces")
        assert ns_rt is not None
        obj = self.get(ns_rt, "", name)
        if obj is not None and obj["metadata"].get("deletionTimestamp"):
            self._remove(ns_rt, obj)

    def remove_finalizer(self, rt: ResourceType, obj: JSON, finalizer: str) -> None:
        new = clone(obj)
        fins = [f for f in new["metadata"].get("finalizers") or [] if f != finalizer]
        if fins:
            new["metadata"]["finalizers"] = fins
        else:
            new["metadata"].pop("finalizers", None)
        if new["metadata"].get("deletionTimestamp") and not fins:
            self._remove(rt, obj)
        else:
            self._put(rt, new, obj)

    def write_internal(self, rt: ResourceType, new: JSON, old: JSON | None, manager: str) -> JSON:
        """Controller-style write (simulator, GC) that bypasses client-facing checks."""
        now = now_iso()
        if old is None:
            meta = new.setdefault("metadata", {})
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", now)
            if rt.has_generation:
                meta.setdefault("generation", 1)
            new["apiVersion"] = rt.api_version
            new["kind"] = rt.kind
            apply_builtin_defaults(rt, new, creating=True)
            record_update(None, new, manager, rt, "", now)
            return self._put(rt, new, None)
        if self._same(old, new):
            return old
        return self._put(rt, new, old)

    # ----- CRDs ---------------------------------------------------------------------------
    def _register_crd(self, obj: JSON) -> None:
        name = obj["metadata"]["name"]
        if obj["metadata"].get("deletionTimestamp"):
            return
        self.registry.remove_crd(name)
        for rt in crdmod.resource_types(obj):
            self.registry.add(rt)
            b = self.buckets.get(rt.storage_key)
            if b is not None and rt.version == rt.storage_version:
                b.rt = rt

    def unregister_crd(self, obj: JSON) -> None:
        """Stop serving a deleted CRD's resource and drop its objects (DELETED events first)."""
        gone = self.registry.remove_crd(obj["metadata"]["name"])
        for key in {rt.storage_key for rt in gone}:
            b = self.buckets.get(key)
            if b is None:
                continue
            for o in list(b.objects.values()):
                self._remove(b.rt, o)
            for w in list(b.watchers):
                w.close("the resource type was removed")
            self.buckets.pop(key, None)
            self.dropped_floors[key] = self.rv

    # ----- watch --------------------------------------------------------------------------
    def watch(
        self,
        rt: ResourceType,
        namespace: str | None,
        resource_version: str | None,
        label_pred: Predicate | None,
        field_pred: Predicate | None,
    ) -> tuple[Watcher, builtins.list[Event]]:
        """Register a watcher; returns it plus the backlog to send first.

        No resourceVersion (or "0"): synthetic ADDED events for every matching object.
        Otherwise: the history after that version, or 410 when it is no longer kept.
        """
        b = self.bucket(rt)
        queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=self.watch_queue_size)
        w = Watcher(namespace if rt.namespaced else None, label_pred, field_pred, queue)
        backlog: list[Event]
        if not resource_version or resource_version == "0":
            backlog = [Event("ADDED", o, self.rv) for o in self.list(rt, w.namespace, label_pred, field_pred)]
        else:
            try:
                start = int(resource_version)
            except ValueError:
                raise ApiFailure(400, f"invalid resourceVersion {resource_version!r}") from None
            events = b.history.since(start)
            if events is None:
                raise ApiFailure(410, f"too old resource version: {start} ({b.history.floor + 1})", "Expired")
            backlog = []
            for ev in events:
                if w.namespace and ev.namespace != w.namespace:
                    continue
                if (
                    (label_pred or field_pred)
                    and not w.matches(ev.obj)
                    and not (ev.old is not None and w.matches(ev.old))
                ):
                    continue
                backlog.append(ev)
        b.watchers.add(w)
        return w, backlog

    def unwatch(self, rt: ResourceType, w: Watcher) -> None:
        b = self.buckets.get(rt.storage_key)
        if b is not None:
            b.watchers.discard(w)
