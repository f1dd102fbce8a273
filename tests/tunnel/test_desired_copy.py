"""The agent's desired copy: chunk format, bucketing, bounds, and its ConfigMaps on both API servers."""

from __future__ import annotations

import base64
import gzip
import json
from typing import Any

import pytest

from choreo_dp.agent.desired_copy import DesiredCopy, decode_chunk, encode_chunk, make
from choreo_dp.agent.semantic import semantic_hash
from choreo_dp.api import vocabulary as V
from choreo_dp.kube import KubeClient
from choreo_dp.kube import resources as R
from choreo_wire import protocol as P
from tests.tunnel.conftest import Names

pytestmark = pytest.mark.timeout(60)

REGISTRY = {"allowedPrefixes": ["registry.example.com/"]}


def app(env: str, name: str, image: str = "registry.example.com/app:1") -> Any:
    spec = {"environment": env, "project": "p", "type": "service", "image": image}
    return make(P.app_key(env, name), "ChoreoApp", spec, 3, P.spec_hash(spec), "ep1", env)


def env_entry(name: str) -> Any:
    spec = {"displayName": name, "registry": REGISTRY}
    return make(P.environment_key(name), "Environment", spec, 2, P.spec_hash(spec), "ep1", name)


class States:
    def __init__(self) -> None:
        self.seen: list[tuple[bool, str]] = []

    async def __call__(self, ok: bool, reason: str, message: str) -> None:
        self.seen.append((ok, reason))


# --- pure ------------------------------------------------------------------------------------


def test_chunk_round_trip_and_damaged_entries_are_dropped() -> None:
    entries = {e.key: e for e in (app("dev", "a"), app("dev", "b"), env_entry("dev"))}
    data = encode_chunk(entries, 16)
    assert decode_chunk(data) == entries
    # an entry whose spec no longer matches its hash (hand-edited ConfigMap) is never restored
    doc = json.loads(gzip.decompress(base64.b64decode(data)))
    doc["entries"][P.app_key("dev", "a")]["spec"]["image"] = "evil.example.com/x:1"
    tampered = base64.b64encode(gzip.compress(json.dumps(doc).encode())).decode()
    assert set(decode_chunk(tampered)) == {P.app_key("dev", "b"), P.environment_key("dev")}


def test_semantic_hash_ignores_defaults_and_the_implied_environment() -> None:
    spec = {"project": "p", "type": "service", "image": "registry.example.com/app:1"}
    with_defaults = {**spec, "environment": "dev", "replicas": 1, "suspend": False, "env": []}
    assert semantic_hash("ChoreoApp", spec, "dev") == semantic_hash("ChoreoApp", with_defaults, "dev")
    assert semantic_hash("ChoreoApp", {**spec, "replicas": 2}, "dev") != semantic_hash(
        "ChoreoApp", spec, "dev"
    )
    assert semantic_hash("ChoreoApp", {"image": 5}, "dev") is None


def test_record_and_forget_dirty_only_their_bucket() -> None:
    copy = DesiredCopy(None, "dp", None, buckets=8)
    a = app("dev", "a")
    copy.record(a)
    assert copy.dirty == {P.bucket_of(a.key, 8)}
    copy.dirty.clear()
    copy.record(a)  # unchanged: nothing to write
    assert not copy.dirty
    copy.forget(a.key)
    assert copy.dirty == {P.bucket_of(a.key, 8)} and a.key not in copy
    copy.dirty.clear()
    copy.forget(a.key)
    assert not copy.dirty


async def test_memory_only_copy_never_writes() -> None:
    copy = DesiredCopy(None, "dp", None)
    copy.record(app("dev", "a"))
    assert await copy.flush() == 0 and await copy.load() == 0 and len(copy) == 1


# --- against the API servers ---------------------------------------------------------------------


async def state_namespace(kube: KubeClient, names: Names) -> str:
    ns = names("state")
    await kube.create(R.NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    return ns


async def chunks(kube: KubeClient, ns: str, dp: str) -> dict[str, dict[str, Any]]:
    items, _ = await kube.list(R.CONFIGMAPS, ns, label_selector={V.DESIRED_COPY_LABEL: dp})
    return {i["metadata"]["name"]: i for i in items}


async def test_flush_writes_changed_chunks_and_load_reads_them_back(kube: KubeClient, names: Names) -> None:
    ns = await state_namespace(kube, names)
    states = States()
    copy = DesiredCopy(kube, names.dp, ns, buckets=4, on_state=states)
    entries = [env_entry("dev"), *(app("dev", f"a{i}") for i in range(20))]
    for e in entries:
        copy.record(e)
    assert await copy.flush() == len({P.bucket_of(e.key, 4) for e in entries})
    assert await copy.flush() == 0  # nothing changed since
    found = await chunks(kube, ns, names.dp)
    assert set(found) <= {copy.chunk_name(i) for i in range(4)} and found
    for cm in found.values():
        assert len(cm["binaryData"][V.DESIRED_COPY_DATA_KEY]) < 1024 * 1024
        assert cm["metadata"]["labels"][V.MANAGED_BY] == V.MANAGED_BY_VALUE
    assert states.seen == [(True, "Kept")]
    # one change rewrites one chunk
    copy.forget(entries[3].key)
    assert await copy.flush() == 1
    fresh = DesiredCopy(kube, names.dp, ns, buckets=4)
    assert await fresh.load() == len(entries) - 1
    assert fresh.entries == {e.key: e for e in entries if e.key != entries[3].key}
    # another bucket count: everything is re-bucketed, the chunks beyond the new count go
    regrown = DesiredCopy(kube, names.dp, ns, buckets=2)
    await regrown.load()
    assert regrown.dirty == {0, 1}
    await regrown.flush()
    assert set(await chunks(kube, ns, names.dp)) == {regrown.chunk_name(0), regrown.chunk_name(1)}
    again = DesiredCopy(kube, names.dp, ns, buckets=2)
    assert await again.load() == len(entries) - 1 and not again.dirty


async def test_a_chunk_over_its_bound_is_refused_and_said(kube: KubeClient, names: Names) -> None:
    ns = await state_namespace(kube, names)
    states = States()
    copy = DesiredCopy(kube, names.dp, ns, buckets=2, chunk_limit=600, on_state=states)
    small = env_entry("dev")
    copy.record(small)
    await copy.flush()
    big = [app("dev", f"big{i}", image=f"registry.example.com/app-{i}:{'x' * 200}") for i in range(30)]
    for e in big:
        copy.record(e)
    await copy.flush()  # does not raise: the copy is best effort, the agent works on
    assert copy.refused_chunks and (False, "ChunkTooLarge") in states.seen
    assert not copy.dirty  # refused, not retried in a loop; the next change tries again
    # what was refused keeps its previous content: the small entry is still readable
    fresh = DesiredCopy(kube, names.dp, ns, buckets=2)
    await fresh.load()
    assert small.key in fresh.entries


async def test_missing_namespace_means_no_copy_warned_once(
    kube: KubeClient, names: Names, caplog: pytest.LogCaptureFixture
) -> None:
    states = States()
    copy = DesiredCopy(kube, names.dp, names("nowhere"), on_state=states)
    assert await copy.load() == 0  # an empty list: a missing namespace shows only on write
    copy.record(app("dev", "a"))
    assert await copy.flush() == 0
    copy.record(app("dev", "b"))
    assert await copy.flush() == 0  # not tried again within RETRY_UNAVAILABLE
    assert copy.available is False and copy.reason == "NamespaceMissing"
    assert [s for s in states.seen if not s[0]] == [(False, "NamespaceMissing")]
    assert sum("no offline copy" in r.getMessage() for r in caplog.records) == 1
