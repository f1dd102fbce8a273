"""Anti-entropy: what another writer deletes or changes among the agent's objects is put back.

Against the in-test control plane peer and both API servers (``apiserver`` in conftest.py). A
"barrier" (another object deleted by hand and awaited back) replaces any wait-and-see: once the
restorer has put the barrier back, it has seen the earlier deletion too, and left it alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from choreo_dp.agent.agent import AgentConfig
from choreo_dp.agent.cluster import ClusterStore, _Conflict
from choreo_dp.agent.desired_copy import DesiredCopy
from choreo_dp.agent.semantic import semantic_hash
from choreo_dp.api import vocabulary as V
from choreo_dp.kube import KubeClient
from choreo_dp.kube import resources as R
from choreo_wire import protocol as P
from tests.tunnel.conftest import Names, TunnelApi, eventually
from tests.tunnel.fakecp import FakeControlPlane, Store
from tests.tunnel.test_agent import app_spec, apps, config, converged, env_spec, running, seed

pytestmark = pytest.mark.timeout(90)

RESTORED = 20.0  # seconds: "within seconds" with room for a slow shared real apiserver


async def state_ns(kube: KubeClient, names: Names) -> str:
    ns = names("state")
    await kube.create(R.NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    return ns


def agent_config(
    cp: FakeControlPlane, token_file: Path, tls: dict[str, Any], names: Names, ns: str
) -> AgentConfig:
    return config(cp, token_file, tls, names, state_namespace=ns)


async def app_is(kube: KubeClient, names: Names, name: str, spec: dict[str, Any]) -> bool:
    """The app exists with a spec equivalent to ``spec``."""
    obj = await kube.get(R.CHOREOAPPS, name, names.ns)
    if obj is None:
        return False
    want = semantic_hash("ChoreoApp", spec, names.env)
    return want is not None and semantic_hash("ChoreoApp", obj["spec"], names.env) == want


async def delete_app(kube: KubeClient, names: Names, name: str) -> None:
    assert await kube.delete(R.CHOREOAPPS, name, names.ns)


def missing_reports(cp: FakeControlPlane) -> set[str]:
    return {
        item.key
        for frame in cp.received
        if isinstance(frame.body, P.StatusBatch)
        for item in frame.body.items
        if item.missing
    }


# --------------------------------------------------------------------------------------------


async def test_deleted_while_connected_is_restored_and_reported_missing(
    fake_cp: FakeControlPlane, kube: KubeClient, token_file: Path, tls: dict[str, Any], names: Names
) -> None:
    ns = await state_ns(kube, names)
    await seed(fake_cp, 2, names)
    async with running(agent_config(fake_cp, token_file, tls, names, ns), kube) as r:
        await eventually(lambda: converged(fake_cp, kube, names), what="initial sync")
        await delete_app(kube, names, "app-0")
        await eventually(
            lambda: app_is(kube, names, "app-0", app_spec(names.env)), timeout=RESTORED, what="app restored"
        )
        # the control plane heard it was missing (not its last status) before it came back
        await eventually(lambda: names.app_key("app-0") in missing_reports(fake_cp), what="missing reported")
        assert await kube.delete(R.ENVIRONMENTS, names.env)
        await eventually(lambda: kube.get(R.ENVIRONMENTS, names.env), timeout=RESTORED, what="env restored")
        await eventually(lambda: r.agent.restorer.restored >= 2, what="both restores counted")
        # nothing to redeliver: the control plane's revision is what the cluster holds again
        await eventually(lambda: converged(fake_cp, kube, names), what="still converged")


async def test_a_hand_edited_spec_is_put_back(
    fake_cp: FakeControlPlane, kube: KubeClient, token_file: Path, tls: dict[str, Any], names: Names
) -> None:
    ns = await state_ns(kube, names)
    await seed(fake_cp, 1, names)
    async with running(agent_config(fake_cp, token_file, tls, names, ns), kube) as r:
        await eventually(lambda: converged(fake_cp, kube, names), what="initial sync")
        # what `kubectl edit` does: the spec changes, the agent's annotations stay as they were
        await kube.patch(
            R.CHOREOAPPS,
            "app-0",
            {"spec": {"image": "registry.example.com/other:9", "replicas": 3}},
            namespace=names.ns,
        )
        await eventually(
            lambda: app_is(kube, names, "app-0", app_spec(names.env)), timeout=RESTORED, what="spec put back"
        )
        await kube.patch(R.ENVIRONMENTS, names.env, {"spec": {"displayName": "Hacked"}})

        async def env_back() -> bool:
            obj = await kube.get(R.ENVIRONMENTS, names.env)
            return obj is not None and obj["spec"]["displayName"] == "Dev"

        await eventually(env_back, timeout=RESTORED, what="environment spec put back")
        await eventually(lambda: r.agent.restorer.restored >= 2, what="both restores counted")


async def test_control_plane_down_then_delete_is_restored_from_the_copy(
    fake_cp: FakeControlPlane, kube: KubeClient, token_file: Path, tls: dict[str, Any], names: Names
) -> None:
    ns = await state_ns(kube, names)
    await seed(fake_cp, 2, names)
    async with running(agent_config(fake_cp, token_file, tls, names, ns), kube) as r:
        await eventually(lambda: converged(fake_cp, kube, names), what="initial sync")
        items, _ = await kube.list(R.CONFIGMAPS, ns, label_selector={V.DESIRED_COPY_LABEL: names.dp})
        assert items, "the acknowledged specs have their copy"
        await fake_cp.stop()
        await eventually(lambda: not r.agent.connected.is_set(), what="disconnected")
        await delete_app(kube, names, "app-1")
        await eventually(
            lambda: app_is(kube, names, "app-1", app_spec(names.env)),
            timeout=RESTORED,
            what="restored offline",
        )


async def test_agent_restarted_while_control_plane_down_restores_from_the_copy(
    fake_cp: FakeControlPlane, kube: KubeClient, token_file: Path, tls: dict[str, Any], names: Names
) -> None:
    ns = await state_ns(kube, names)
    await seed(fake_cp, 2, names)
    cfg = agent_config(fake_cp, token_file, tls, names, ns)
    async with running(cfg, kube):
        await eventually(lambda: converged(fake_cp, kube, names), what="initial sync")
    await fake_cp.stop()
    await delete_app(kube, names, "app-0")
    await kube.patch(R.CHOREOAPPS, "app-1", {"spec": {"replicas": 4}}, namespace=names.ns)
    async with running(cfg, kube) as r:
        await eventually(
            lambda: app_is(kube, names, "app-0", app_spec(names.env)),
            timeout=RESTORED,
            what="deleted one back",
        )
        await eventually(
            lambda: app_is(kube, names, "app-1", app_spec(names.env)),
            timeout=RESTORED,
            what="edited one back",
        )
        assert len(r.agent.desired) == 3 and r.agent.sessions == 0


async def test_a_desired_delete_stays_deleted(
    fake_cp: FakeControlPlane, kube: KubeClient, token_file: Path, tls: dict[str, Any], names: Names
) -> None:
    ns = await state_ns(kube, names)
    await seed(fake_cp, 2, names)
    async with running(agent_config(fake_cp, token_file, tls, names, ns), kube) as r:
        await eventually(lambda: converged(fake_cp, kube, names), what="initial sync")
        await fake_cp.delete(names.app_key("app-0"))
        await eventually(lambda: converged(fake_cp, kube, names), what="deleted")
        assert names.app_key("app-0") not in r.agent.desired
        # barrier: the restorer is awake and restoring; app-0 is not among what it restores
        await delete_app(kube, names, "app-1")
        await eventually(
            lambda: app_is(kube, names, "app-1", app_spec(names.env)),
            timeout=RESTORED,
            what="barrier restored",
        )
        assert "app-0" not in await apps(kube, names.ns)
        assert names.app_key("app-0") not in missing_reports(fake_cp)
    # nor after a restart from the copy (it was forgotten before the object was deleted)
    fresh = DesiredCopy(kube, names.dp, ns)
    await fresh.load()
    assert names.app_key("app-0") not in fresh and names.app_key("app-1") in fresh


async def test_an_orphan_deleted_by_hand_is_not_restored(
    fake_cp: FakeControlPlane, kube: KubeClient, token_file: Path, tls: dict[str, Any], names: Names
) -> None:
    ns = await state_ns(kube, names)
    await seed(fake_cp, 2, names)
    cfg = agent_config(fake_cp, token_file, tls, names, ns)
    async with running(cfg, kube):
        await eventually(lambda: converged(fake_cp, kube, names), what="initial sync")
    # the control plane comes back empty in a new epoch: everything is held as an orphan
    fake_cp.restore(Store(), new_epoch=True)
    async with running(cfg, kube) as r:
        await eventually(lambda: bool(fake_cp.orphan_reports) and fake_cp.orphan_reports[-1].count == 3)
        assert names.app_key("app-0") not in r.agent.desired
        await fake_cp.put(names.env_key, env_spec())
        await fake_cp.put(names.app_key("barrier"), app_spec(names.env))
        await eventually(lambda: converged(fake_cp, kube, names), what="barrier applied")
        await delete_app(kube, names, "app-0")
        await delete_app(kube, names, "barrier")
        await eventually(
            lambda: app_is(kube, names, "barrier", app_spec(names.env)), timeout=RESTORED, what="barrier back"
        )
        assert "app-0" not in await apps(kube, names.ns)


async def test_inventory_digest_is_the_control_planes_for_untouched_objects(
    fake_cp: FakeControlPlane,
    kube: KubeClient,
    token_file: Path,
    tls: dict[str, Any],
    names: Names,
    apiserver: TunnelApi,
) -> None:
    ns = await state_ns(kube, names)
    await seed(fake_cp, 3, names)
    fake_cp.heartbeat_interval = 1.0  # the agent's own heartbeats every second

    def desired_digest() -> str:
        return P.inventory_digest({k: P.spec_hash(spec) for k, (spec, _) in fake_cp.store.desired.items()})

    def summaries() -> list[P.InventorySummary]:
        return [
            f.body.inventory
            for f in fake_cp.received
            if isinstance(f.body, P.Heartbeat) and f.envelope.corr is None and f.body.inventory is not None
        ]

    async with running(agent_config(fake_cp, token_file, tls, names, ns), kube) as r:
        await eventually(lambda: converged(fake_cp, kube, names), what="initial sync")
        await eventually(
            lambda: any(
                s.digest == desired_digest() and s.revision == fake_cp.store.revision for s in summaries()
            ),
            what="a heartbeat whose inventory digest is the control plane's",
        )
        assert summaries()[-1].count == 4
        store = r.agent.store
        if not apiserver.emulated:
            # the real apiserver filled in the CRDs' defaults: the raw specs hash differently, and
            # only the semantic comparison makes them count as the desired ones
            assert any(m.cluster_hash != store.hash_of(m) for m in store.index.values())


async def test_redelivery_reapplies_a_spec_edited_under_unchanged_annotations(
    kube: KubeClient, names: Names
) -> None:
    store = ClusterStore(kube, names.dp)
    env = env_spec()
    await store.put(
        P.DesiredPut(key=names.env_key, kind="Environment", revision=1, spec=env, spec_hash=P.spec_hash(env)),
        "e1",
    )
    spec = app_spec(names.env)
    put = P.DesiredPut(
        key=names.app_key("a"), kind="ChoreoApp", revision=2, spec=spec, spec_hash=P.spec_hash(spec)
    )
    assert await store.put(put, "e1") is True
    await store.refresh()
    assert await store.put(put, "e1") is False  # untouched: redelivery writes nothing
    await kube.patch(R.CHOREOAPPS, "a", {"spec": {"replicas": 5}}, namespace=names.ns)
    await store.refresh()
    assert store.inventory()[names.app_key("a")] != put.spec_hash
    assert await store.put(put, "e1") is True
    assert await app_is(kube, names, "a", spec)
    assert store.inventory()[names.app_key("a")] == put.spec_hash


# --- what a forced server-side apply cannot take back ----------------------------------------

HAND = "kubectl-edit"  # the field manager a human's edit has
AUTOSCALING = {"minReplicas": 1, "maxReplicas": 4}


def app_with_env(env: str) -> dict[str, Any]:
    return {**app_spec(env), "env": [{"name": "WANTED", "value": "1"}]}


def foreign_owned(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """The managedFields entries of writers other than the agent that still own part of the spec."""
    return [
        e
        for e in obj["metadata"].get("managedFields") or []
        if e.get("manager") != V.AGENT_FIELD_MANAGER and "f:spec" in (e.get("fieldsV1") or {})
    ]


async def app_exactly(
    kube: KubeClient, names: Names, name: str, spec: dict[str, Any]
) -> dict[str, Any] | None:
    """The app, once its spec is equivalent to ``spec`` (else None)."""
    obj = await kube.get(R.CHOREOAPPS, name, names.ns)
    want = semantic_hash("ChoreoApp", spec, names.env)
    if obj is None or semantic_hash("ChoreoApp", obj["spec"], names.env) != want:
        return None
    return obj


async def add_by_merge_patch(kube: KubeClient, names: Names, name: str) -> None:
    """`kubectl edit`: a merge patch replaces the env list and adds an autoscaling block."""
    await kube.patch(
        R.CHOREOAPPS,
        name,
        {"spec": {"env": [{"name": "EDITED", "value": "by hand"}], "autoscaling": AUTOSCALING}},
        namespace=names.ns,
        field_manager=HAND,
    )


async def add_by_apply(kube: KubeClient, names: Names, name: str) -> None:
    """Another applier (a GitOps tool): its env entry joins the map-list beside the agent's."""
    body = {
        "apiVersion": V.API_VERSION,
        "kind": "ChoreoApp",
        "metadata": {"name": name, "namespace": names.ns},
        "spec": {"env": [{"name": "EXTRA", "value": "x"}], "autoscaling": AUTOSCALING, "command": ["/x"]},
    }
    await kube.apply(body, "gitops", force=False)


async def test_fields_another_writer_adds_are_removed_while_connected(
    fake_cp: FakeControlPlane, kube: KubeClient, token_file: Path, tls: dict[str, Any], names: Names
) -> None:
    ns = await state_ns(kube, names)
    await fake_cp.put(names.env_key, env_spec())
    spec = app_with_env(names.env)
    await fake_cp.put(names.app_key("app-0"), spec)
    async with running(agent_config(fake_cp, token_file, tls, names, ns), kube) as r:
        await eventually(lambda: converged(fake_cp, kube, names), what="initial sync")
        for edit in (add_by_merge_patch, add_by_apply):
            await edit(kube, names, "app-0")
            edited = await kube.get(R.CHOREOAPPS, "app-0", names.ns)
            assert edited is not None and "autoscaling" in edited["spec"]
            obj = await eventually(
                lambda: app_exactly(kube, names, "app-0", spec),
                timeout=RESTORED,
                what=f"{edit.__name__}: the added env entry and autoscaling removed",
            )
            assert [e["name"] for e in obj["spec"]["env"]] == ["WANTED"]
            assert "autoscaling" not in obj["spec"] and "command" not in obj["spec"]
            assert foreign_owned(obj) == [], "nothing of the spec is left to the other writer"
        await eventually(lambda: r.agent.restorer.restored >= 2, what="both restores counted")
        await eventually(lambda: converged(fake_cp, kube, names), what="still converged")


async def test_a_put_over_an_object_with_foreign_fields_removes_them(kube: KubeClient, names: Names) -> None:
    store = ClusterStore(kube, names.dp)
    env = env_spec()
    await store.put(
        P.DesiredPut(key=names.env_key, kind="Environment", revision=1, spec=env, spec_hash=P.spec_hash(env)),
        "e1",
    )
    spec = app_with_env(names.env)
    put = P.DesiredPut(
        key=names.app_key("a"), kind="ChoreoApp", revision=2, spec=spec, spec_hash=P.spec_hash(spec)
    )
    assert await store.put(put, "e1") is True
    for edit in (add_by_apply, add_by_merge_patch):
        await edit(kube, names, "a")
        await store.refresh()
        assert store.inventory()[put.key] != put.spec_hash, "the edit shows as a difference"
        assert await store.put(put, "e1") is True
        obj = await app_exactly(kube, names, "a", spec)
        assert obj is not None, f"{edit.__name__}: spec still differs after the put"
        assert foreign_owned(obj) == []
        assert store.inventory()[put.key] == put.spec_hash

    # a restore judged from a stale index (the cluster was put right meanwhile) writes nothing and
    # reports nothing: no "another writer keeps changing it" for the agent's own earlier write
    await add_by_merge_patch(kube, names, "a")
    await store.refresh()
    other = ClusterStore(kube, names.dp)
    await other.refresh()
    assert await other.put(put, "e1") is True
    writes = store.writes
    assert await store.restore(put.key) is None
    assert store.writes == writes + 1  # the conditional apply that found everything in place
    assert store.matches_desired(store.index[put.key])


async def test_the_full_spec_replace_is_conditional_on_the_version_it_saw(
    kube: KubeClient, names: Names
) -> None:
    """The replace carries the resourceVersion of the object the agent just applied and checked: if
    anyone wrote in between (here: a foreign edit), the API server refuses it with 409 and nothing of
    the spec changes, so the caller reads and checks ownership again before writing."""
    store = ClusterStore(kube, names.dp)
    env = env_spec()
    await store.put(
        P.DesiredPut(key=names.env_key, kind="Environment", revision=1, spec=env, spec_hash=P.spec_hash(env)),
        "e1",
    )
    spec = app_with_env(names.env)
    put = P.DesiredPut(
        key=names.app_key("a"), kind="ChoreoApp", revision=2, spec=spec, spec_hash=P.spec_hash(spec)
    )
    await store.put(put, "e1")
    seen = await kube.get(R.CHOREOAPPS, "a", names.ns)
    assert seen is not None
    await add_by_merge_patch(kube, names, "a")
    with pytest.raises(_Conflict):
        await store._replace_spec(R.CHOREOAPPS, seen, spec)
    now = await kube.get(R.CHOREOAPPS, "a", names.ns)
    assert now is not None and "autoscaling" in now["spec"], "the refused replace changed nothing"
    # at the current version it goes through, and keeps the metadata other writers set
    await kube.patch(R.CHOREOAPPS, "a", {"metadata": {"labels": {"team": "x"}}}, namespace=names.ns)
    now = await kube.get(R.CHOREOAPPS, "a", names.ns)
    assert now is not None
    done = await store._replace_spec(R.CHOREOAPPS, now, spec)
    assert semantic_hash("ChoreoApp", done["spec"], names.env) == semantic_hash("ChoreoApp", spec, names.env)
    assert done["metadata"]["labels"]["team"] == "x"
    assert done["metadata"]["labels"][V.DATAPLANE_LABEL] == names.dp
