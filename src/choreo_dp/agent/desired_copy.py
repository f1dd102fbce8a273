"""The agent's own copy of the control plane's desired specs, kept in ConfigMaps in its namespace.

The custom resources cannot be their own backup: a hand-deleted ChoreoApp takes its spec with it,
and while the control plane is unreachable nothing else has it. So the agent keeps, for every key
the control plane desires, the last spec it applied (with revision, hash, epoch): in memory for
the restorer and the inventory, and in ConfigMaps so an agent restart does not lose it.

Layout: keys are spread over ``buckets`` chunks by :func:`choreo_wire.protocol.bucket_of`; a chunk is
one ConfigMap ``choreo-dp-desired-<dataplane>-<bucket>`` whose binaryData holds the gzip of the
canonical JSON of its entries (specs compress well: ~10x). A chunk is refused beyond
``chunk_limit`` bytes, far under the 1 MiB object limit, so the total is bounded by
``buckets * chunk_limit``; a refused chunk keeps its previous content and says so (log, condition).

Only changed chunks are written (:meth:`flush`), by the acker before the revision is persisted,
so an acknowledged spec always has its copy. The copy is best effort against the cluster's
refusals: with no such namespace or no RBAC for ConfigMaps the agent works on without it, warns
once and says so on the DataPlane (``DesiredCopy`` False); a retryable error (5xx, 429, network)
propagates so the caller's retry loop tries again.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import logging
import os
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from choreo_dp.agent.guards import SERVICE_ACCOUNT_NAMESPACE
from choreo_dp.agent.semantic import semantic_hash
from choreo_dp.api import vocabulary as V
from choreo_dp.kube import ApiError, KubeClient
from choreo_dp.kube import resources as R
from choreo_dp.kube.backoff import is_retryable
from choreo_wire import protocol as P

log = logging.getLogger(__name__)

DEFAULT_STATE_NAMESPACE = "choreo-system"
DEFAULT_BUCKETS = 16
# Well under the 1 MiB object limit, leaving room for metadata and the base64 the API stores.
CHUNK_LIMIT = 512 * 1024
FORMAT_VERSION = 1
# After the cluster refused the copy (RBAC, no namespace), try again this often: a fixed Role or a
# created namespace heals the copy without a restart.
RETRY_UNAVAILABLE = 60.0

StateCallback = Callable[[bool, str, str], Awaitable[None]]


def default_state_namespace() -> str:
    """Where the copy lives: ``CHOREO_DP_STATE_NAMESPACE``, the pod's own namespace, else choreo-system."""
    for value in (os.environ.get("CHOREO_DP_STATE_NAMESPACE"), os.environ.get("POD_NAMESPACE")):
        if value:
            return value
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or DEFAULT_STATE_NAMESPACE
    except OSError:
        return DEFAULT_STATE_NAMESPACE


@dataclass(frozen=True)
class Desired:
    """The last desired spec of one key, as the control plane sent it."""

    key: str
    kind: P.Kind
    spec: dict[str, Any]
    revision: int
    spec_hash: str
    epoch: str
    # the spec's semantic hash (:mod:`choreo_dp.agent.semantic`): what the cluster's must equal
    normal: str | None

    def to_json(self) -> dict[str, Any]:
        return {"spec": self.spec, "revision": self.revision, "specHash": self.spec_hash, "epoch": self.epoch}

    @classmethod
    def from_json(cls, key: str, raw: Any) -> Desired | None:
        try:
            parsed = P.parse_key(key)
            spec, revision = raw["spec"], int(raw["revision"])
            spec_hash, epoch = str(raw["specHash"]), str(raw.get("epoch", ""))
        except (ValueError, KeyError, TypeError):
            return None
        if not isinstance(spec, dict) or P.spec_hash(spec) != spec_hash:
            return None  # damaged or hand-edited: a wrong spec must never be restored
        return make(key, parsed.kind, spec, revision, spec_hash, epoch, parsed.environment)


def make(
    key: str, kind: P.Kind, spec: dict[str, Any], revision: int, spec_hash: str, epoch: str, env: str
) -> Desired:
    environment = env if kind == "ChoreoApp" else None
    return Desired(key, kind, spec, revision, spec_hash, epoch, semantic_hash(kind, spec, environment))


def encode_chunk(entries: dict[str, Desired], buckets: int) -> str:
    doc = {
        "v": FORMAT_VERSION,
        "buckets": buckets,
        "entries": {k: e.to_json() for k, e in sorted(entries.items())},
    }
    return base64.b64encode(gzip.compress(P.canonical_json(doc), mtime=0)).decode()


def decode_chunk(data: str) -> dict[str, Desired]:
    doc = json.loads(gzip.decompress(base64.b64decode(data)))
    out: dict[str, Desired] = {}
    for key, raw in (doc.get("entries") or {}).items():
        entry = Desired.from_json(key, raw)
        if entry is not None:
            out[key] = entry
    return out


class ChunkTooLarge(Exception):
    pass


class DesiredCopy:
    def __init__(
        self,
        kube: KubeClient | None,
        dataplane_id: str,
        namespace: str | None,
        *,
        buckets: int = DEFAULT_BUCKETS,
        chunk_limit: int = CHUNK_LIMIT,
        on_state: StateCallback | None = None,
    ) -> None:
        # kube or namespace None: memory only (unit tests, a store without an agent)
        self.kube = kube
        self.dataplane_id = dataplane_id
        self.namespace = namespace
        self.buckets = buckets
        self.chunk_limit = chunk_limit
        self.on_state = on_state
        self.entries: dict[str, Desired] = {}
        self.dirty: set[int] = set()
        self.stale_chunks: set[str] = set()  # chunks of another bucket count, deleted on flush
        self.available: bool | None = None  # None: not tried yet
        self.reason = ""
        self.refused_chunks: set[int] = set()
        self.writes = 0
        self._retry_at = 0.0

    # --- memory ------------------------------------------------------------------------------

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.entries))

    def get(self, key: str) -> Desired | None:
        return self.entries.get(key)

    def record(self, entry: Desired) -> None:
        if self.entries.get(entry.key) == entry:
            return
        self.entries[entry.key] = entry
        self.dirty.add(P.bucket_of(entry.key, self.buckets))

    def forget(self, key: str) -> None:
        if self.entries.pop(key, None) is not None:
            self.dirty.add(P.bucket_of(key, self.buckets))

    def bucket(self, index: int) -> dict[str, Desired]:
        return {k: e for k, e in self.entries.items() if P.bucket_of(k, self.buckets) == index}

    @property
    def persistent(self) -> bool:
        return self.kube is not None and self.namespace is not None

    def chunk_name(self, index: int) -> str:
        return f"{V.DESIRED_COPY_PREFIX}-{self.dataplane_id}-{index}"

    # --- the cluster ---------------------------------------------------------------------------

    async def load(self) -> int:
        """Read the copy back (at agent start). Returns the number of keys loaded."""
        if self.kube is None or self.namespace is None:
            return 0
        try:
            items, _ = await self.kube.list(
                R.CONFIGMAPS, self.namespace, label_selector={V.DESIRED_COPY_LABEL: self.dataplane_id}
            )
        except ApiError as exc:
            if is_retryable(exc):
                raise
            await self._unavailable(exc)
            return 0
        loaded: dict[str, Desired] = {}
        rebucket = False
        ours = {self.chunk_name(i) for i in range(self.buckets)}
        for cm in items:
            meta = cm.get("metadata") or {}
            name = str(meta.get("name", ""))
            written_with = (meta.get("annotations") or {}).get(V.DESIRED_COPY_BUCKETS_ANNOTATION)
            if written_with != str(self.buckets):
                # written with another bucket count: its keys belong elsewhere now
                rebucket = True
                if name not in ours:
                    self.stale_chunks.add(name)
            data = (cm.get("binaryData") or {}).get(V.DESIRED_COPY_DATA_KEY)
            if not isinstance(data, str):
                continue
            try:
                loaded.update(decode_chunk(data))
            except (ValueError, OSError, EOFError, AttributeError) as exc:
                log.warning("desired copy: chunk %s/%s is unreadable, ignored: %s", self.namespace, name, exc)
        # what the session recorded meanwhile is newer than the copy
        self.entries = {**loaded, **self.entries}
        if rebucket:
            self.dirty = set(range(self.buckets))
        await self._available()
        log.info(
            "desired copy: loaded %d key(s) from %d chunk(s) in %s", len(loaded), len(items), self.namespace
        )
        return len(loaded)

    async def flush(self) -> int:
        """Write the chunks changed since the last flush; returns how many were written."""
        if self.kube is None or self.namespace is None or not (self.dirty or self.stale_chunks):
            return 0
        now = asyncio.get_running_loop().time()
        if self.available is False and now < self._retry_at:
            return 0
        written = 0
        for index in sorted(self.dirty):
            try:
                await self._write_chunk(index)
            except ChunkTooLarge as exc:
                self.dirty.discard(index)
                if index not in self.refused_chunks:
                    self.refused_chunks.add(index)
                    log.error("desired copy: %s", exc)
                    await self._report(False, "ChunkTooLarge", str(exc))
                continue
            except ApiError as exc:
                if is_retryable(exc):
                    raise
                self._retry_at = now + RETRY_UNAVAILABLE
                await self._unavailable(exc)
                return written
            self.dirty.discard(index)
            written += 1
            if index in self.refused_chunks:
                self.refused_chunks.discard(index)
                if not self.refused_chunks:
                    await self._report(True, "Kept", self._kept_message())
        for name in sorted(self.stale_chunks):
            try:
                await self.kube.delete(R.CONFIGMAPS, name, self.namespace)
            except ApiError as exc:
                if is_retryable(exc):
                    raise
            self.stale_chunks.discard(name)
        if written and self.available is not True:
            await self._available()
        return written

    async def _write_chunk(self, index: int) -> None:
        assert self.kube is not None and self.namespace is not None
        entries = self.bucket(index)
        data = encode_chunk(entries, self.buckets)
        if len(data) > self.chunk_limit:
            raise ChunkTooLarge(
                f"chunk {self.chunk_name(index)} would hold {len(entries)} key(s) in {len(data)} bytes, over "
                f"the {self.chunk_limit}-byte limit; it keeps its previous content, so the offline copy of "
                "those keys may be out of date (too many or too large specs for this data plane)"
            )
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": self.chunk_name(index),
                "namespace": self.namespace,
                "labels": {
                    V.DESIRED_COPY_LABEL: self.dataplane_id,
                    V.MANAGED_BY: V.MANAGED_BY_VALUE,
                },
                "annotations": {V.DESIRED_COPY_BUCKETS_ANNOTATION: str(self.buckets)},
            },
            "binaryData": {V.DESIRED_COPY_DATA_KEY: data},
        }
        await self.kube.apply(body, V.AGENT_FIELD_MANAGER, force=True)
        self.writes += 1

    def _kept_message(self) -> str:
        return f"{len(self.entries)} desired spec(s) kept in {self.buckets} ConfigMap(s) in {self.namespace}"

    async def _available(self) -> None:
        if self.available is True:
            return
        if self.available is False:
            log.info("desired copy: ConfigMaps in %s are writable again", self.namespace)
        self.available = True
        self.reason = ""
        await self._report(True, "Kept", self._kept_message())

    async def _unavailable(self, exc: ApiError) -> None:
        if exc.status == 403:
            reason, why = "Forbidden", "the agent may not read or write ConfigMaps there (RBAC)"
        elif exc.not_found:
            reason, why = "NamespaceMissing", "the namespace does not exist"
        else:
            reason, why = "Refused", "the API refused it"
        message = (
            f"no offline copy of the desired specs in namespace {self.namespace!r}: {why} ({exc.status} "
            f"{exc.reason}); hand-deleted objects are restored only while connected"
        )
        changed = self.available is not False or self.reason != reason
        self.available = False
        self.reason = reason
        if changed:  # once per change of state, not per flush
            log.warning("desired copy: %s", message)
            await self._report(False, reason, message)

    async def _report(self, ok: bool, reason: str, message: str) -> None:
        if self.on_state is None:
            return
        try:
            await self.on_state(ok, reason, message)
        except Exception as exc:  # best effort: the DataPlane may itself be unwritable
            log.warning("cannot record the desired copy's state on the DataPlane: %s", exc)
