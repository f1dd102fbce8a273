"""The agent's side of the cluster: the objects it manages, written with server-side apply.

Only objects labelled ``choreo.dev/dataplane: <id>`` belong to the agent; everything else
(hand-made Environments or ChoreoApps) is invisible to it and never touched. An in-memory index
key -> :class:`Managed` makes redelivery checks free; it is rebuilt from a list on each connect and
kept current by the status watcher.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from choreo_dp.api import API_VERSION, ChoreoAppSpec, EnvironmentSpec
from choreo_dp.api.environment import default_namespace
from choreo_dp.kube import ApiError, KubeClient, Resource
from choreo_dp.kube import resources as R
from choreo_dp.tunnel import metrics as M
from choreo_dp.tunnel import protocol as P

log = logging.getLogger(__name__)

FIELD_MANAGER = "choreo-dp-agent"
LABEL_DATAPLANE = "choreo.dev/dataplane"
LABEL_ENVIRONMENT = "choreo.dev/environment"
ANN_REVISION = "choreo.dev/revision"
ANN_SPEC_HASH = "choreo.dev/spec-hash"
ANN_EPOCH = "choreo.dev/epoch"
ANN_ORPHANED = "choreo.dev/orphaned"


@dataclass
class Managed:
    key: str
    kind: P.Kind
    name: str
    namespace: str | None
    revision: int
    spec_hash: str
    orphaned: bool

    def local_item(self) -> P.LocalItem:
        return P.LocalItem(self.kind, self.spec_hash, self.orphaned)


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
            "GET", res.path(None), params={"labelSelector": label, "limit": page, "continue": token}
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
    return Managed(
        key=key,
        kind=kind,
        name=meta["name"],
        namespace=meta.get("namespace"),
        revision=revision,
        spec_hash=str(ann.get(ANN_SPEC_HASH, "")),
        orphaned=bool(ann.get(ANN_ORPHANED)),
    )


class ClusterStore:
    def __init__(
        self,
        kube: KubeClient,
        dataplane_id: str,
        *,
        namespace_wait: float = 10.0,
        environment_wait: float = 3.0,
    ) -> None:
        self.kube = kube
        self.dataplane_id = dataplane_id
        self.selector = {LABEL_DATAPLANE: dataplane_id}
        self.namespace_wait = namespace_wait
        self.environment_wait = environment_wait
        self.index: dict[str, Managed] = {}
        self.writes = 0  # object writes (apply/delete/patch), for tests and metrics

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

    def replace_kind(self, kind: str, objects: list[Managed]) -> None:
        """A fresh list of one kind (the status watcher's (re)list) replaces that part of the index."""
        self.index = {k: m for k, m in self.index.items() if m.kind != kind}
        for m in objects:
            self.index[m.key] = m

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
        return {k: m.spec_hash for k, m in self.index.items() if not m.orphaned}

    def orphans(self) -> list[str]:
        return sorted(k for k, m in self.index.items() if m.orphaned)

    # --- writes ------------------------------------------------------------------------------

    async def _env_namespace(self, env: str) -> str | None:
        obj = await self.kube.get(R.ENVIRONMENTS, env)
        if obj is None:
            return None
        ns = (obj.get("spec") or {}).get("namespace")
        return ns if isinstance(ns, str) and ns else default_namespace(env)

    async def _environment_namespace(self, env: str) -> str:
        """The namespace apps of ``env`` go into. A missing Environment is waited for briefly (its own
        put may be in flight), then refused."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.environment_wait
        delay = 0.05
        while True:
            ns = await self._env_namespace(env)
            if ns is not None:
                return ns
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise ApplyRefused("environment_missing", f"Environment {env!r} does not exist")
            await asyncio.sleep(min(remaining, random.uniform(delay / 2, delay)))
            delay = min(delay * 2, 1.0)

    async def _apply_in_namespace(self, body: dict[str, Any], namespace: str | None) -> dict[str, Any]:
        """Server-side apply; while the namespace does not exist yet (404: the operator creates it
        from the Environment) retry for ``namespace_wait``, then report not-yet-applicable. Probing
        the namespace by the 404 keeps the agent's RBAC to choreo.dev resources only."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.namespace_wait
        delay = 0.05
        while True:
            try:
                return await self.kube.apply(body, FIELD_MANAGER, force=True)
            except ApiError as exc:
                if not (exc.not_found and namespace is not None):
                    raise
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise NotYetApplicable("namespace_missing", f"namespace {namespace!r} does not exist yet")
            await asyncio.sleep(min(remaining, random.uniform(delay / 2, delay)))
            delay = min(delay * 2, 1.0)

    async def put(self, put: P.DesiredPut, epoch: str) -> bool:
        """Apply one desired object. Returns False when nothing had to be written."""
        try:
            key = P.parse_key(put.key)
        except ValueError as exc:
            raise ApplyRefused("bad_key", str(exc)) from None
        if key.kind != put.kind:
            raise ApplyRefused("bad_key", f"key {put.key} is not a {put.kind}")
        if P.spec_hash(put.spec) != put.spec_hash:
            raise ApplyRefused("hash_mismatch", "specHash does not match the spec")
        spec = dict(put.spec)
        try:
            if key.kind == "Environment":
                EnvironmentSpec.model_validate(spec)
            else:
                if spec.setdefault("environment", key.environment) != key.environment:
                    raise ApplyRefused("bad_key", "spec.environment differs from the key's environment")
                ChoreoAppSpec.model_validate(spec)
        except ValidationError as exc:
            raise ApplyRefused("invalid_spec", str(exc)[:2000]) from None
        current = self.index.get(put.key)
        if (
            current is not None
            and current.revision == put.revision
            and current.spec_hash == put.spec_hash
            and not current.orphaned
        ):
            return False
        namespace: str | None = None
        if key.kind == "ChoreoApp":
            namespace = await self._environment_namespace(key.environment)
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
        body = {"apiVersion": API_VERSION, "kind": key.kind, "metadata": meta, "spec": spec}
        try:
            obj = await self._apply_in_namespace(body, namespace)
        except ApiError as exc:
            if exc.status in (400, 403, 422) or (
                400 <= exc.status < 500 and exc.status not in (404, 409, 429)
            ):
                raise ApplyRefused("rejected", f"{exc.status} {exc.reason}: {exc.message}"[:2000]) from None
            raise
        self.writes += 1
        M.WRITES.labels("apply").inc()
        if ANN_ORPHANED in ((obj.get("metadata") or {}).get("annotations") or {}):
            # adopted again: the hold is over (merge patch, whatever SSA did with the annotation)
            res = R.CHOREOAPPS if key.kind == "ChoreoApp" else R.ENVIRONMENTS
            obj = await self.kube.patch(
                res, key.name, {"metadata": {"annotations": {ANN_ORPHANED: None}}}, namespace=namespace
            )
            self.writes += 1
        m = managed_from(obj)
        if m is not None:
            m.orphaned = False
            self.index[m.key] = m
        return True

    async def delete(self, key_text: str) -> bool:
        """Delete a managed object; never anything without our label (unknown keys are no-ops)."""
        current = self.index.get(key_text)
        if current is None:
            return False
        res = R.CHOREOAPPS if current.kind == "ChoreoApp" else R.ENVIRONMENTS
        obj = await self.kube.get(res, current.name, current.namespace)
        if (
            obj is None
            or (obj.get("metadata", {}).get("labels") or {}).get(LABEL_DATAPLANE) != self.dataplane_id
        ):
            self.index.pop(key_text, None)
            return False
        uid = obj.get("metadata", {}).get("uid")
        deleted = await self.kube.delete(res, current.name, current.namespace, precondition_uid=uid)
        self.writes += 1
        M.WRITES.labels("delete").inc()
        self.index.pop(key_text, None)
        return deleted

    async def mark_orphan(self, key_text: str, reason: str) -> None:
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
