"""The agent's side of the cluster: the objects it manages, written with server-side apply.

After every write the spec in the cluster is the desired spec (semantically, :mod:`semantic`): what
a forced apply cannot take back (fields another writer added) is removed by a conditional JSON patch
that replaces the whole spec (:meth:`ClusterStore._replace_spec`).

Only objects labelled ``choreo.dev/dataplane: <id>`` belong to the agent; everything else
(hand-made Environments or ChoreoApps, another dataplane's) is never changed: a put or delete the
control plane sends for such a key is refused (:mod:`choreo_dp.agent.guards`), and a write is
conditional on the resourceVersion the agent saw carrying its label, so an object that changes
hands between the check and the write is not taken over either. An in-memory index
key -> :class:`Managed` makes redelivery checks free; it is rebuilt from a list on each connect and
kept current by the status watcher.

What the agent claims to have (its inventory) is judged from the specs in the cluster, never from
the ``choreo.dev/spec-hash`` annotation: a spec equivalent to the desired one the agent holds
(:mod:`choreo_dp.agent.semantic`, :mod:`choreo_dp.agent.desired_copy`) counts as the desired hash,
any other as the hash of what is there, so an edit by another writer shows as a difference.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from choreo_dp.agent import guards as G
from choreo_dp.agent import metrics as M
from choreo_dp.agent import resync
from choreo_dp.agent.desired_copy import DesiredCopy, make
from choreo_dp.agent.semantic import semantic_hash
from choreo_dp.api import API_VERSION, ChoreoAppSpec, EnvironmentSpec
from choreo_dp.api import vocabulary as V
from choreo_dp.api.environment import default_namespace
from choreo_dp.kube import ApiError, KubeClient, Resource
from choreo_dp.kube import resources as R
from choreo_dp.kube.backoff import Backoff
from choreo_wire import protocol as P

log = logging.getLogger(__name__)

FIELD_MANAGER = V.AGENT_FIELD_MANAGER
LABEL_DATAPLANE = V.DATAPLANE_LABEL
LABEL_ENVIRONMENT = V.ENVIRONMENT_LABEL
ANN_REVISION = V.REVISION_ANNOTATION
ANN_SPEC_HASH = V.SPEC_HASH_ANNOTATION
ANN_EPOCH = V.EPOCH_ANNOTATION
ANN_ORPHANED = V.ORPHANED_ANNOTATION

# How long the namespace claims of all Environments (for apps' one-owner check) may be reused; the
# agent's own Environment writes update them at once, so only hand-made changes wait this long.
CLAIMS_TTL = 5.0
# A conditional write that keeps losing to other writers (the operator's status updates bump the
# resourceVersion) is re-read and tried again this many times before the error goes to the retry loop.
CONFLICT_ATTEMPTS = 5
# Polling for an Environment or a namespace that is about to appear (bounded by the waits above).
WAIT_BACKOFF = Backoff(base=0.05, cap=1.0)


@dataclass
class Managed:
    key: str
    kind: P.Kind
    name: str
    namespace: str | None
    revision: int
    # sha256 of the spec as it is in the cluster, and of its normalised form (None: invalid)
    cluster_hash: str
    normal: str | None
    orphaned: bool
    resource_version: str = ""


class ApplyRefused(Exception):
    """A change that can never be applied as sent (nack, not retryable)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class NotYetApplicable(Exception):
    """A change that may become applicable (the environment namespace does not exist yet)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class _Conflict(Exception):
    """The object changed between the ownership check and the conditional write: check again."""


def _refusal(exc: ApiError) -> Exception:
    """What a failed write becomes: a refusal (nack) for a 4xx that will not pass unchanged, else
    the error itself (retried). A namespace being deleted (its Environment was deleted by hand and
    is being put back) refuses with 403 for a while: that waits, like a namespace not yet created."""
    if exc.namespace_terminating:
        return NotYetApplicable("namespace_terminating", f"{exc.status} {exc.reason}: {exc.message}"[:2000])
    if exc.status in (400, 403, 422) or (400 <= exc.status < 500 and exc.status not in (404, 409, 429)):
        return ApplyRefused("rejected", f"{exc.status} {exc.reason}: {exc.message}"[:2000])
    return exc


def key_of(obj: dict[str, Any]) -> str | None:
    """The tunnel key of a managed object, or None for something that is not one."""
    kind = obj.get("kind")
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not isinstance(name, str):
        return None
    if kind == "Environment":
        return P.environment_key(name)
    if kind == "ChoreoApp":
        env = (obj.get("spec") or {}).get("environment") or (meta.get("labels") or {}).get(LABEL_ENVIRONMENT)
        return P.app_key(env, name) if isinstance(env, str) else None
    return None


def env_namespace(obj: dict[str, Any]) -> str:
    """The namespace an Environment's apps live in (what the operator computes too)."""
    name = str((obj.get("metadata") or {}).get("name", ""))
    ns = (obj.get("spec") or {}).get("namespace")
    return ns if isinstance(ns, str) and ns else default_namespace(name)


LIST_PAGE = 500


async def list_pages(
    kube: KubeClient, res: Resource, selector: dict[str, str], page: int = LIST_PAGE
) -> AsyncIterator[tuple[list[dict[str, Any]], str]]:
    """List in pages (limit/continue) so a large inventory is never decoded all at once; yields
    (items, resourceVersion) per page."""
    token: str | None = None
    label = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
    while True:
        body = await kube.request(
            "GET", res.path(None), params={"labelSelector": label or None, "limit": page, "continue": token}
        )
        items: list[dict[str, Any]] = body.get("items") or []
        for item in items:
            item.setdefault("apiVersion", res.api_version)
            item.setdefault("kind", res.kind)
        meta = body.get("metadata") or {}
        yield items, str(meta.get("resourceVersion", ""))
        token = meta.get("continue") or None
        if not token:
            return


def managed_from(obj: dict[str, Any]) -> Managed | None:
    key = key_of(obj)
    if key is None:
        return None
    meta = obj.get("metadata") or {}
    ann = meta.get("annotations") or {}
    try:
        revision = int(ann.get(ANN_REVISION, "0"))
    except ValueError:
        revision = 0
    kind: P.Kind = "Environment" if obj.get("kind") == "Environment" else "ChoreoApp"
    spec = obj.get("spec")
    environment = P.parse_key(key).environment if kind == "ChoreoApp" else None
    return Managed(
        key=key,
        kind=kind,
        name=meta["name"],
        namespace=meta.get("namespace"),
        revision=revision,
        cluster_hash=P.spec_hash(spec if isinstance(spec, dict) else {}),
        normal=semantic_hash(kind, spec, environment),
        orphaned=bool(ann.get(ANN_ORPHANED)),
        resource_version=str(meta.get("resourceVersion") or ""),
    )


def _describe(kind: str, name: str, namespace: str | None) -> str:
    return f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"


class ClusterStore:
    def __init__(
        self,
        kube: KubeClient,
        dataplane_id: str,
        *,
        namespace_wait: float = 10.0,
        environment_wait: float = 3.0,
        protected: G.ProtectedNamespaces | None = None,
        desired: DesiredCopy | None = None,
    ) -> None:
        self.kube = kube
        # the last desired spec of every key the control plane desires (memory only unless given)
        self.desired = desired if desired is not None else DesiredCopy(None, dataplane_id, None)
        # keys the agent itself is deleting: the restorer must not put them back meanwhile
        self.deleting: set[str] = set()
        # one writer per key at a time (changes, resync, restorer); entries vanish when unused
        self._key_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self.dataplane_id = dataplane_id
        self.selector = {LABEL_DATAPLANE: dataplane_id}
        self.namespace_wait = namespace_wait
        self.environment_wait = environment_wait
        self.protected = protected or G.ProtectedNamespaces(G.default_protected_namespaces())
        self.index: dict[str, Managed] = {}
        self.writes = 0  # object writes (apply/delete/patch), for tests and metrics
        # Environment writes are serialised: the one-owner-per-namespace check and the write that
        # claims the namespace must not interleave with another Environment's.
        self._env_lock = asyncio.Lock()
        self._claims: dict[str, dict[str, G.Claim]] | None = None  # namespace -> env -> claim
        self._claims_at = 0.0
        self._claims_lock = asyncio.Lock()

    # --- inventory ---------------------------------------------------------------------------

    async def refresh(self) -> dict[str, Managed]:
        index: dict[str, Managed] = {}
        for res in (R.ENVIRONMENTS, R.CHOREOAPPS):
            async for items, _ in list_pages(self.kube, res, self.selector):
                for obj in items:
                    m = managed_from(obj)
                    if m is not None:
                        index[m.key] = m
        self.index = index
        return index

    def replace_kind(self, kind: str, objects: list[Managed]) -> list[Managed]:
        """A fresh list of one kind (the status watcher's (re)list) replaces that part of the index;
        returns the objects that were there and are gone (deleted while unwatched)."""
        listed = {m.key for m in objects}
        gone = [m for k, m in self.index.items() if m.kind == kind and k not in listed]
        self.index = {k: m for k, m in self.index.items() if m.kind != kind}
        for m in objects:
            self.index[m.key] = m
        return gone

    def lock(self, key: str) -> asyncio.Lock:
        lock = self._key_locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._key_locks[key] = lock
        return lock

    def matches_desired(self, m: Managed) -> bool:
        """The object's spec in the cluster is the desired spec the agent holds for its key."""
        want = self.desired.get(m.key)
        return want is not None and want.normal is not None and want.normal == m.normal

    def hash_of(self, m: Managed) -> str:
        """The hash the agent claims for an object: the desired one if the cluster's spec is
        equivalent to it, else the hash of the cluster's spec (which then differs)."""
        if self.matches_desired(m):
            want = self.desired.get(m.key)
            assert want is not None
            return want.spec_hash
        return m.cluster_hash

    def local_items(self) -> dict[str, resync.LocalItem]:
        return {k: resync.LocalItem(m.kind, self.hash_of(m), m.orphaned) for k, m in self.index.items()}

    def observe(self, event_type: str, obj: dict[str, Any]) -> None:
        """Keep the index current from watch events."""
        m = managed_from(obj)
        if m is None:
            return
        if event_type == "DELETED":
            cur = self.index.get(m.key)
            if cur is not None and cur.namespace == m.namespace:
                del self.index[m.key]
        elif event_type in ("ADDED", "MODIFIED"):
            self.index[m.key] = m

    def inventory(self) -> dict[str, str]:
        """key -> spec hash of the non-orphaned objects: what the agent claims to have applied."""
        return {k: self.hash_of(m) for k, m in self.index.items() if not m.orphaned}

    def orphans(self) -> list[str]:
        return sorted(k for k, m in self.index.items() if m.orphaned)

    def _ours(self, obj: dict[str, Any]) -> bool:
        return ((obj.get("metadata") or {}).get("labels") or {}).get(LABEL_DATAPLANE) == self.dataplane_id

    def _check_owned(self, obj: dict[str, Any], key: str) -> None:
        """Refuse unless ``obj`` carries this dataplane's label and is the object of ``key``."""
        meta = obj.get("metadata") or {}
        what = _describe(str(obj.get("kind")), str(meta.get("name")), meta.get("namespace"))
        if not self._ours(obj):
            owner = ((meta.get("labels") or {}).get(LABEL_DATAPLANE)) or None
            whose = (
                f"belongs to dataplane {owner!r}" if owner else "is hand-made (no choreo.dev/dataplane label)"
            )
            raise ApplyRefused(
                G.NOT_MANAGED,
                f"{what} exists and {whose}; dataplane {self.dataplane_id!r} never changes objects "
                "it does not manage",
            )
        other = key_of(obj)
        if other != key:
            raise ApplyRefused(G.NAME_CONFLICT, f"{what} already exists as {other}, not {key}")

    # --- namespace claims --------------------------------------------------------------------

    async def _list_claims(self) -> dict[str, dict[str, G.Claim]]:
        claims: dict[str, dict[str, G.Claim]] = {}
        async for items, _ in list_pages(self.kube, R.ENVIRONMENTS, {}):
            for obj in items:
                meta = obj.get("metadata") or {}
                name = str(meta.get("name", ""))
                created = str(meta.get("creationTimestamp") or "")
                claims.setdefault(env_namespace(obj), {})[name] = G.Claim(created, name)
        return claims

    async def _claims_now(self, *, fresh: bool) -> dict[str, dict[str, G.Claim]]:
        async with self._claims_lock:
            loop = asyncio.get_running_loop()
            if fresh or self._claims is None or loop.time() - self._claims_at > CLAIMS_TTL:
                self._claims = await self._list_claims()
                self._claims_at = loop.time()
            return self._claims

    async def _namespace_owner(self, namespace: str, *, fresh: bool) -> str | None:
        return G.namespace_owner((await self._claims_now(fresh=fresh)).get(namespace, {}).values())

    def _note_claim(self, obj: dict[str, Any] | None, name: str) -> None:
        """Keep the cached claims current after the agent's own Environment write or delete."""
        if self._claims is None:
            return
        for per_ns in self._claims.values():
            per_ns.pop(name, None)
        if obj is not None:
            created = str((obj.get("metadata") or {}).get("creationTimestamp") or "")
            self._claims.setdefault(env_namespace(obj), {})[name] = G.Claim(created, name)

    # --- writes ------------------------------------------------------------------------------

    async def _environment(self, env: str) -> dict[str, Any]:
        """The Environment an app goes into. A missing one is waited for briefly (its own put may
        be in flight), then refused; one this dataplane does not manage is refused at once."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.environment_wait
        attempt = 0
        while True:
            obj = await self.kube.get(R.ENVIRONMENTS, env)
            if obj is not None:
                if not self._ours(obj):
                    raise ApplyRefused(
                        G.ENVIRONMENT_NOT_MANAGED,
                        f"Environment {env!r} is not managed by dataplane {self.dataplane_id!r}; "
                        "the agent places apps only in its own Environments",
                    )
                return obj
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise ApplyRefused("environment_missing", f"Environment {env!r} does not exist")
            await asyncio.sleep(min(remaining, WAIT_BACKOFF.delay(attempt)))
            attempt += 1

    async def _apply_in_namespace(self, body: dict[str, Any], namespace: str | None) -> dict[str, Any]:
        """Server-side apply; while the namespace does not exist yet (404: the operator creates it
        from the Environment) retry for ``namespace_wait``, then report not-yet-applicable. Probing
        the namespace by the 404 keeps the agent's RBAC to choreo.dev resources only. A 409 on a
        write conditional on a resourceVersion means the object changed since it was checked."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.namespace_wait
        attempt = 0
        conditional = bool(body["metadata"].get("resourceVersion"))
        while True:
            try:
                return await self.kube.apply(body, FIELD_MANAGER, force=True)
            except ApiError as exc:
                if exc.status == 409 and conditional:
                    raise _Conflict(str(exc)) from None
                if not (exc.not_found and namespace is not None):
                    raise
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise NotYetApplicable("namespace_missing", f"namespace {namespace!r} does not exist yet")
            await asyncio.sleep(min(remaining, WAIT_BACKOFF.delay(attempt)))
            attempt += 1

    def _validate(self, put: P.DesiredPut, key: P.Key) -> dict[str, Any]:
        """The checks that need nothing but the frame: key, hash, size, schema."""
        if key.kind != put.kind:
            raise ApplyRefused("bad_key", f"key {put.key} is not a {put.kind}")
        try:
            canonical = P.canonical_json(put.spec)
        except (ValueError, RecursionError):
            raise ApplyRefused("invalid_spec", "spec is not serialisable JSON") from None
        too_big = G.spec_size_refusal(canonical)
        if too_big:
            raise ApplyRefused(G.TOO_LARGE, too_big)
        if hashlib.sha256(canonical).hexdigest() != put.spec_hash:
            raise ApplyRefused("hash_mismatch", "specHash does not match the spec")
        spec = dict(put.spec)
        try:
            if key.kind == "Environment":
                EnvironmentSpec.model_validate(spec)
            else:
                if spec.setdefault("environment", key.environment) != key.environment:
                    raise ApplyRefused("bad_key", "spec.environment differs from the key's environment")
                ChoreoAppSpec.model_validate(spec)
        except (ValidationError, RecursionError) as exc:
            raise ApplyRefused("invalid_spec", str(exc)[:2000]) from None
        return spec

    async def put(self, put: P.DesiredPut, epoch: str) -> bool:
        """Apply one desired object. Returns False when nothing had to be written."""
        try:
            key = P.parse_key(put.key)
        except ValueError as exc:
            raise ApplyRefused("bad_key", str(exc)) from None
        spec = self._validate(put, key)
        async with self.lock(put.key):
            return await self._put_locked(put, key, spec, epoch)

    async def _put_locked(self, put: P.DesiredPut, key: P.Key, spec: dict[str, Any], epoch: str) -> bool:
        want = make(put.key, key.kind, put.spec, put.revision, put.spec_hash, epoch, key.environment)
        current = self.index.get(put.key)
        if (
            current is not None
            and current.revision == put.revision
            and want.normal is not None
            and current.normal == want.normal
            and not current.orphaned
        ):
            # judged by the spec in the cluster: an edit that left the annotations alone is re-applied
            self.desired.record(want)
            return False
        if key.kind == "Environment":
            async with self._env_lock:
                await self._put_environment(put, key, spec, epoch)
        else:
            await self._put_app(put, key, spec, epoch)
        self.desired.record(want)
        return True

    async def restore(self, key_text: str) -> str | None:
        """Put the desired spec of ``key_text`` back if the cluster lost or changed it. Returns what
        was wrong (for the log) when it wrote, None when nothing had to be done. Never for a key the
        control plane does not desire (not in the copy), an orphan, or a key being deleted."""
        async with self.lock(key_text):
            want = self.desired.get(key_text)
            if want is None or key_text in self.deleting:
                return None
            current = self.index.get(key_text)
            if current is not None:
                if current.orphaned or (want.normal is not None and current.normal == want.normal):
                    return None
                if current.revision > want.revision:
                    # the agent wrote a newer revision and died before its copy was flushed: the
                    # cluster is newer than the copy, and the control plane redelivers it anyway
                    return None
                what = "spec changed by another writer"
            else:
                what = "deleted by another writer"
            put = P.DesiredPut(
                key=want.key, kind=want.kind, revision=want.revision, spec=want.spec, spec_hash=want.spec_hash
            )
            key = P.parse_key(key_text)
            spec = self._validate(put, key)
            if key.kind == "Environment":
                async with self._env_lock:
                    changed = await self._put_environment(put, key, spec, want.epoch)
            else:
                changed = await self._put_app(put, key, spec, want.epoch)
            # the index may have lagged behind the cluster (a watch event older than the agent's
            # own last write): a write that changed nothing restored nothing
            return what if changed else None

    async def _put_environment(self, put: P.DesiredPut, key: P.Key, spec: dict[str, Any], epoch: str) -> bool:
        namespace = env_namespace({"metadata": {"name": key.name}, "spec": spec})
        refusal = self.protected.refusal(namespace)
        if refusal:
            raise ApplyRefused(G.PROTECTED_NAMESPACE, f"Environment {key.name!r}: {refusal}")
        if put.key not in self.index:
            # someone else's Environment is refused as such, whatever else is wrong with the put
            existing = await self.kube.get(R.ENVIRONMENTS, key.name)
            if existing is not None:
                self._check_owned(existing, put.key)
        stranded = self._apps_outside(key.environment, namespace)
        if stranded:
            raise ApplyRefused(
                G.NAMESPACE_IMMUTABLE,
                f"Environment {key.name!r} has {len(stranded)} app(s) outside namespace {namespace!r} "
                f"(e.g. {stranded[0]} in {self.index[stranded[0]].namespace!r}); moving it would strand "
                "them: delete its apps first",
            )
        claims = await self._claims_now(fresh=True)
        others = sorted(name for name in claims.get(namespace, {}) if name != key.name)
        if others:
            raise ApplyRefused(
                G.NAMESPACE_CONFLICT,
                f"namespace {namespace!r} belongs to Environment {others[0]!r}; a namespace has one "
                "Environment",
            )
        obj, changed = await self._owned_write(put, key, spec, epoch, None)
        self._note_claim(obj, key.name)
        return changed

    def _apps_outside(self, env: str, namespace: str) -> list[str]:
        prefix = f"ChoreoApp/{env}/"
        return sorted(k for k, m in self.index.items() if k.startswith(prefix) and m.namespace != namespace)

    async def _put_app(self, put: P.DesiredPut, key: P.Key, spec: dict[str, Any], epoch: str) -> bool:
        env_obj = await self._environment(key.environment)
        namespace = env_namespace(env_obj)
        refusal = self.protected.refusal(namespace)
        if refusal:
            raise ApplyRefused(G.PROTECTED_NAMESPACE, f"Environment {key.environment!r}: {refusal}")
        owner = await self._namespace_owner(namespace, fresh=False)
        if owner is not None and owner != key.environment:
            # the cache may be a few seconds old: refuse only on a fresh look
            owner = await self._namespace_owner(namespace, fresh=True)
        if owner is not None and owner != key.environment:
            raise ApplyRefused(
                G.NAMESPACE_CONFLICT,
                f"namespace {namespace!r} of Environment {key.environment!r} belongs to Environment "
                f"{owner!r}; apps are placed only in a namespace their Environment owns",
            )
        refusal = G.app_image_refusal(spec, env_obj)
        if refusal:
            raise ApplyRefused(G.IMAGE_NOT_ALLOWED, refusal)
        current = self.index.get(put.key)
        if current is not None and current.namespace != namespace:
            raise ApplyRefused(
                G.NAMESPACE_MISMATCH,
                f"{put.key} exists in namespace {current.namespace!r} but its Environment now names "
                f"{namespace!r}; delete it and put it again to move it",
            )
        _, changed = await self._owned_write(put, key, spec, epoch, namespace)
        return changed

    async def _owned_write(
        self, put: P.DesiredPut, key: P.Key, spec: dict[str, Any], epoch: str, namespace: str | None
    ) -> tuple[dict[str, Any], bool]:
        """Write ``put`` only over an object of ours (or none). The first attempt trusts the index
        (objects carrying our label, at the resourceVersion last seen): the write is conditional on
        that version, so it succeeds only if nothing changed since. On a conflict, or without an
        index entry, the object is read and checked, and the write is conditional on what was read.
        Returns the object written and whether the cluster changed (False: it already was so)."""
        res = R.CHOREOAPPS if key.kind == "ChoreoApp" else R.ENVIRONMENTS
        current = self.index.get(put.key)
        version: str | None = None
        if current is not None and current.namespace == namespace and current.resource_version:
            version = current.resource_version
        for _ in range(CONFLICT_ATTEMPTS):
            if version is None:
                existing = await self.kube.get(res, key.name, namespace)
                if existing is not None:
                    self._check_owned(existing, put.key)
                    version = str(existing["metadata"]["resourceVersion"])
            try:
                obj = await self._write(put, key, spec, epoch, namespace, version)
            except _Conflict:
                version = None
                continue
            changed = version is None or str((obj.get("metadata") or {}).get("resourceVersion")) != version
            return obj, changed
        raise ApiError(409, "Conflict", f"{put.key} kept changing while being written")

    async def _write(
        self,
        put: P.DesiredPut,
        key: P.Key,
        spec: dict[str, Any],
        epoch: str,
        namespace: str | None,
        version: str | None,
    ) -> dict[str, Any]:
        """Server-side apply, conditional on ``version`` (the object checked to be ours); without
        one the object was absent and is created. Then, if the spec in the cluster is still not the
        desired one, it is replaced whole (:meth:`_replace_spec`)."""
        meta: dict[str, Any] = {
            "name": key.name,
            "labels": {LABEL_DATAPLANE: self.dataplane_id, LABEL_ENVIRONMENT: key.environment},
            "annotations": {
                ANN_REVISION: str(put.revision),
                ANN_SPEC_HASH: put.spec_hash,
                ANN_EPOCH: epoch,
            },
        }
        if namespace is not None:
            meta["namespace"] = namespace
        if version is not None:
            meta["resourceVersion"] = version
        body = {"apiVersion": API_VERSION, "kind": key.kind, "metadata": meta, "spec": spec}
        try:
            obj = await self._apply_in_namespace(body, namespace)
        except ApiError as exc:
            if exc.status == 409 and version is None:
                # created by someone else between the check and the write: check it again
                raise _Conflict(str(exc)) from None
            raise _refusal(exc) from None
        self.writes += 1
        M.WRITES.labels("apply").inc()
        res = R.CHOREOAPPS if key.kind == "ChoreoApp" else R.ENVIRONMENTS
        if ANN_ORPHANED in ((obj.get("metadata") or {}).get("annotations") or {}):
            # adopted again: the hold is over (merge patch, whatever SSA did with the annotation)
            obj = await self.kube.patch(
                res, key.name, {"metadata": {"annotations": {ANN_ORPHANED: None}}}, namespace=namespace
            )
            self.writes += 1
        m = managed_from(obj)
        want = semantic_hash(key.kind, spec, key.environment if key.kind == "ChoreoApp" else None)
        if m is not None and want is not None and m.normal != want:
            obj = await self._replace_spec(res, obj, spec)
            m = managed_from(obj)
            if m is not None and m.normal != want:
                log.warning(
                    "%s: the API server keeps a spec that is not the desired one after a full "
                    "replace (a schema default or pruning the agent's spec model does not know?)",
                    put.key,
                )
        if m is not None:
            m.orphaned = False
            self.index[m.key] = m
        return obj

    async def _replace_spec(self, res: Resource, obj: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
        """Make the cluster's spec exactly ``spec``: a JSON patch that replaces ``/spec`` whole.

        A forced server-side apply takes back only the fields of the agent's own manifest: a field
        another writer added (an ``env`` entry under its own name in the map-list, an
        ``autoscaling`` block, a ``command``) stays, owned by that writer. Only replacing the whole
        spec drops what is not in the desired one. The patch also sets ``resourceVersion`` to that
        of the object just applied (ours, checked before the apply), which makes it conditional:
        the API server answers 409 if the object changed since, and the caller reads, checks
        ownership and writes again. A JSON patch rather than an update (PUT) because it needs only
        the ``patch`` verb the agent's role already has, and touches nothing but the spec (labels,
        finalizers, annotations of other writers stay). SSA stays the first write because it
        creates, costs no read, and keeps the common case (nothing foreign) at one request.
        """
        meta = obj.get("metadata") or {}
        patch = [
            {"op": "replace", "path": "/metadata/resourceVersion", "value": meta.get("resourceVersion")},
            {"op": "add", "path": "/spec", "value": spec},  # add replaces an existing member
        ]
        try:
            new = await self.kube.patch(
                res,
                meta["name"],
                patch,
                namespace=meta.get("namespace"),
                patch_type="json",
                field_manager=FIELD_MANAGER,
            )
        except ApiError as exc:
            if exc.status == 409:
                raise _Conflict(str(exc)) from None
            raise _refusal(exc) from None
        self.writes += 1
        M.WRITES.labels("replace_spec").inc()
        new.setdefault("apiVersion", res.api_version)
        new.setdefault("kind", res.kind)
        return new

    async def _locate(self, key: P.Key) -> tuple[Resource, dict[str, Any] | None]:
        """The object of ``key`` as it is in the cluster (apps: in their Environment's namespace)."""
        if key.kind == "Environment":
            return R.ENVIRONMENTS, await self.kube.get(R.ENVIRONMENTS, key.name)
        env = await self.kube.get(R.ENVIRONMENTS, key.environment)
        if env is None:
            return R.CHOREOAPPS, None
        return R.CHOREOAPPS, await self.kube.get(R.CHOREOAPPS, key.name, env_namespace(env))

    async def delete(self, key_text: str) -> bool:
        """Delete a managed object; a key whose object exists but is not this dataplane's is
        refused, one with no object is a no-op."""
        try:
            key = P.parse_key(key_text)
        except ValueError as exc:
            raise ApplyRefused("bad_key", str(exc)) from None
        async with self.lock(key_text):
            self.deleting.add(key_text)
            try:
                # the copy forgets first: a crash after the delete must not restore the object
                self.desired.forget(key_text)
                await self.desired.flush()
                return await self._delete_locked(key, key_text)
            finally:
                self.deleting.discard(key_text)

    async def _delete_locked(self, key: P.Key, key_text: str) -> bool:
        current = self.index.get(key_text)
        if current is not None:
            res = R.CHOREOAPPS if current.kind == "ChoreoApp" else R.ENVIRONMENTS
            obj = await self.kube.get(res, current.name, current.namespace)
        else:
            # not in the index: a hand-made object, or ours and the index has not caught up
            res, obj = await self._locate(key)
        if obj is None:
            self.index.pop(key_text, None)
            return False
        try:
            self._check_owned(obj, key_text)
        except ApplyRefused:
            if current is not None and not self._ours(obj):
                self.index.pop(key_text, None)  # it left our hands: no longer in our inventory
            raise
        meta = obj["metadata"]
        deleted = await self.kube.delete(
            res, meta["name"], meta.get("namespace"), precondition_uid=meta.get("uid")
        )
        self.writes += 1
        M.WRITES.labels("delete").inc()
        self.index.pop(key_text, None)
        if key.kind == "Environment":
            self._note_claim(None, key.name)
        return deleted

    async def mark_orphan(self, key_text: str, reason: str) -> None:
        # an orphan is not desired: never restored, also after a restart
        self.desired.forget(key_text)
        await self.desired.flush()
        current = self.index.get(key_text)
        if current is None or current.orphaned:
            return
        res = R.CHOREOAPPS if current.kind == "ChoreoApp" else R.ENVIRONMENTS
        try:
            await self.kube.patch(
                res,
                current.name,
                {"metadata": {"annotations": {ANN_ORPHANED: reason}}},
                namespace=current.namespace,
            )
        except ApiError as exc:
            if not exc.not_found:
                raise
            self.index.pop(key_text, None)
            return
        self.writes += 1
        current.orphaned = True


Outcome = Literal["written", "unchanged", "deleted", "absent"]
