"""A hostile (compromised or broken) control plane, scripted, against the real agent.

Every attack travels through the real tunnel (TLS, the protocol codec) to the real agent, which
writes to the emulated API and to the real kube-apiserver (``kube`` is parametrized by the
``apiserver`` fixture). The agent must refuse what is not the control plane's to ask for, say why
(a ``nack`` with a code and a message), write nothing for it, and keep working for everything else.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from choreo_dp.agent import metrics as M
from choreo_dp.agent.cluster import ANN_ORPHANED, LABEL_DATAPLANE, LABEL_ENVIRONMENT
from choreo_dp.kube import KubeClient
from choreo_dp.kube import resources as R
from choreo_wire import protocol as P
from tests.tunnel.conftest import Names, eventually
from tests.tunnel.fakecp import FakeControlPlane, Store
from tests.tunnel.test_agent import app_spec, apps, config, converged, env_spec, running, seed

pytestmark = pytest.mark.timeout(90)

API = "choreo.dev/v1alpha1"


def processed(cp: FakeControlPlane) -> bool:
    """Every change the cp sent is acknowledged (applied or refused for good)."""
    return cp.applied == cp.store.revision


def nack_for(cp: FakeControlPlane, key: str) -> P.Nack | None:
    found = [n for n in cp.nacks if n.key == key]
    return found[-1] if found else None


def codes(cp: FakeControlPlane) -> dict[str, str]:
    return {n.key: n.code for n in cp.nacks}


def env_object(name: str, spec: dict[str, Any], labels: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if labels:
        meta["labels"] = labels
    return {"apiVersion": API, "kind": "Environment", "metadata": meta, "spec": spec}


def app_object(
    name: str, ns: str, spec: dict[str, Any], labels: dict[str, str] | None = None
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns}
    if labels:
        meta["labels"] = labels
    return {"apiVersion": API, "kind": "ChoreoApp", "metadata": meta, "spec": spec}


def rv(obj: dict[str, Any] | None) -> str:
    assert obj is not None
    return str(obj["metadata"]["resourceVersion"])


def managers(obj: dict[str, Any]) -> set[str]:
    return {m.get("manager", "") for m in obj["metadata"].get("managedFields") or []}


async def create_namespace(kube: KubeClient, name: str) -> None:
    await kube.create(R.NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


def frames_in(msg_type: str) -> float:
    """The counter read through its public ``collect()`` (a type never received counts 0)."""
    return sum(
        sample.value
        for metric in M.FRAMES_IN.collect()
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.labels == {"type": msg_type}
    )


# --------------------------------------------------------------------------------------------
# finding 5: hand-made objects


async def test_puts_and_deletes_for_hand_made_or_foreign_objects_are_refused_and_untouched(
    fake_cp: FakeControlPlane, kube: KubeClient, token_file: Path, tls: dict[str, Any], names: Names
) -> None:
    await seed(fake_cp, 0, names)
    hand_env, foreign_env = names("hand"), names("foreign")
    await kube.create(R.ENVIRONMENTS, env_object(hand_env, {"namespace": names("ns-hand")}))
    await kube.create(
        R.ENVIRONMENTS,
        env_object(foreign_env, {"namespace": names("ns-foreign")}, {LABEL_DATAPLANE: "other-dp"}),
    )
    await kube.create(R.CHOREOAPPS, app_object("manual", names.ns, app_spec(names.env)))
    await kube.create(
        R.CHOREOAPPS,
        app_object("foreign", names.ns, app_spec(names.env), {LABEL_DATAPLANE: "other-dp"}),
    )
    targets = {
        P.environment_key(hand_env): (R.ENVIRONMENTS, hand_env, None),
        P.environment_key(foreign_env): (R.ENVIRONMENTS, foreign_env, None),
        names.app_key("manual"): (R.CHOREOAPPS, "manual", names.ns),
        names.app_key("foreign"): (R.CHOREOAPPS, "foreign", names.ns),
    }
    before = {k: rv(await kube.get(res, n, ns)) for k, (res, n, ns) in targets.items()}
    async with running(config(fake_cp, token_file, tls, names), kube) as r:
        await eventually(lambda: converged(fake_cp, kube, names), what="initial sync")
        # the hand-made objects are not the agent's inventory
        assert set(r.agent.store.index) == {names.env_key}
        await fake_cp.put(P.environment_key(hand_env), env_spec(namespace=names.ns))
        await fake_cp.put(P.environment_key(foreign_env), env_spec())
        await fake_cp.put(names.app_key("manual"), app_spec(names.env, image="registry.example.com/evil:1"))
        await fake_cp.put(names.app_key("foreign"), app_spec(names.env, image="registry.example.com/evil:1"))
        await eventually(lambda: processed(fake_cp), what="puts processed")
        await fake_cp.delete(names.app_key("manual"))
        await fake_cp.delete(P.environment_key(hand_env))
        await eventually(lambda: processed(fake_cp), what="deletes processed")
        # the agent keeps working for its own objects
        await fake_cp.put(names.app_key("mine"), app_spec(names.env))
        await eventually(lambda: processed(fake_cp), what="a put of the agent's own")
    assert len(fake_cp.nacks) == 6
    assert all(n.code == "not_managed" and not n.retryable for n in fake_cp.nacks), fake_cp.nacks
    hand_nack = nack_for(fake_cp, names.app_key("manual"))
    foreign_nack = nack_for(fake_cp, names.app_key("foreign"))
    assert hand_nack is not None and "hand-made" in hand_nack.message
    assert foreign_nack is not None and "'other-dp'" in foreign_nack.message
    for key, (res, name, ns) in targets.items():
        obj = await kube.get(res, name, ns)
        assert obj is not None, f"{key} was deleted"
        assert rv(obj) == before[key], f"{key} was written"
        assert "choreo-dp-agent" not in managers(obj)
    assert "mine" in await apps(kube, names.ns)


async def test_an_object_taken_over_between_check_and_write_is_not_written(
    fake_cp: FakeControlPlane,
    kube: KubeClient,
    token_file: Path,
    tls: dict[str, Any],
    names: Names,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The write is conditional on what the agent knows to be its own: someone removing the agent's
    label from its ChoreoApp just before the agent writes it makes the write fail, and the object
    is left alone."""
    await seed(fake_cp, 1, names)
    raced: list[str] = []
    plain_apply = kube.apply

    async def racing_apply(body: dict[str, Any], field_manager: str, **kw: Any) -> Any:
        if body["kind"] == "ChoreoApp" and body["metadata"]["name"] == "app-0" and not raced:
            raced.append(body["metadata"]["name"])
            patch = {"metadata": {"labels": {LABEL_DATAPLANE: None}}}
            await kube.patch(R.CHOREOAPPS, "app-0", patch, body["metadata"]["namespace"])
        return await plain_apply(body, field_manager, **kw)

    async with running(config(fake_cp, token_file, tls, names), kube):
        await eventually(lambda: converged(fake_cp, kube, names), what="initial sync")
        monkeypatch.setattr(kube, "apply", racing_apply)
        await fake_cp.put(names.app_key("app-0"), app_spec(names.env, image="registry.example.com/app:2"))
        await eventually(lambda: processed(fake_cp), what="the put processed")
    monkeypatch.undo()
    assert raced
    assert codes(fake_cp) == {names.app_key("app-0"): "not_managed"}
    obj = (await apps(kube, names.ns))["app-0"]
    assert LABEL_DATAPLANE not in obj["metadata"].get("labels", {})
    assert obj["spec"]["image"] == "registry.example.com/app:1"


async def test_resync_that_omits_hand_made_objects_never_deletes_them(
    fake_cp: FakeControlPlane, kube: KubeClient, token_file: Path, tls: dict[str, Any], names: Names
) -> None:
    hand_env = names("hand")
    await kube.create(R.ENVIRONMENTS, env_object(hand_env, {"namespace": names("ns-hand")}))
    await kube.create(R.CHOREOAPPS, app_object("manual", names.ns, app_spec(names.env)))
    await seed(fake_cp, 6, names)
    async with running(config(fake_cp, token_file, tls, names), kube):
        await eventually(lambda: converged(fake_cp, kube, names))
    await fake_cp.delete(names.app_key("app-0"))  # a small, legitimate deletion ...
    fake_cp.compact()  # ... that only a resync can carry
    async with running(config(fake_cp, token_file, tls, names), kube):
        await eventually(lambda: converged(fake_cp, kube, names))
        assert fake_cp.modes[-1] == "resync"
        assert fake_cp.hellos[-1].inventory_count == 7  # the env and 6 apps: nothing hand-made
    current = await apps(kube, names.ns)
    assert "app-0" not in current and "manual" in current
    assert await kube.get(R.ENVIRONMENTS, hand_env) is not None


# --------------------------------------------------------------------------------------------
# one owner per namespace


async def test_environments_and_apps_never_enter_another_environments_namespace(
    fake_cp: FakeControlPlane, kube: KubeClient, token_file: Path, tls: dict[str, Any], names: Names
) -> None:
    await seed(fake_cp, 1, names)
    intruder, hand, legacy = names("intruder"), names("hand"), names("legacy")
    async with running(config(fake_cp, token_file, tls, names), kube) as r:
        await eventually(lambda: converged(fake_cp, kube, names), what="initial sync")
        r.agent.store.environment_wait = 0.2
        open_registry = {"registry": {"allowedPrefixes": ["*"]}}
        # an Environment naming the namespace another Environment owns: refused, never written ...
        await fake_cp.put(P.environment_key(intruder), env_spec(namespace=names.ns, **open_registry))
        # ... so its apps have no Environment to go into
        await fake_cp.put(
            names.app_key("miner", intruder), app_spec(intruder, image="docker.io/evil/miner:1")
        )
        # an app for an Environment the agent does not manage
        await kube.create(R.ENVIRONMENTS, env_object(hand, {"namespace": names.ns, **open_registry}))
        await fake_cp.put(names.app_key("miner", hand), app_spec(hand, image="docker.io/evil/miner:1"))
        # state from before the rule: a second Environment of this dataplane on the same namespace
        await kube.create(
            R.ENVIRONMENTS,
            env_object(legacy, {"namespace": names.ns, **open_registry}, {LABEL_DATAPLANE: names.dp}),
        )
        await fake_cp.put(names.app_key("miner", legacy), app_spec(legacy, image="docker.io/evil/miner:1"))
        # an app of the same name in the shared namespace belongs to the other Environment
        theirs = app_object(
            "shared",
            names.ns,
            app_spec(legacy),
            {LABEL_DATAPLANE: names.dp, LABEL_ENVIRONMENT: legacy},
        )
        await kube.create(R.CHOREOAPPS, theirs)
        shared_rv = rv(await kube.get(R.CHOREOAPPS, "shared", names.ns))
        await fake_cp.put(names.app_key("shared"), app_spec(names.env, image="registry.example.com/x:9"))
        await eventually(lambda: processed(fake_cp), what="all processed")
    assert codes(fake_cp) == {
        P.environment_key(intruder): "namespace_conflict",
        names.app_key("miner", intruder): "environment_missing",
        names.app_key("miner", hand): "environment_not_managed",
        names.app_key("miner", legacy): "namespace_conflict",
        names.app_key("shared"): "name_conflict",
    }
    assert await kube.get(R.ENVIRONMENTS, intruder) is None
    current = await apps(kube, names.ns)
    assert "miner" not in current
    assert rv(current["shared"]) == shared_rv and current["shared"]["spec"]["environment"] == legacy
    conflict = nack_for(fake_cp, P.environment_key(intruder))
    assert conflict is not None and names.env in conflict.message and names.ns in conflict.message


async def test_moving_an_environment_with_apps_is_refused_and_apps_never_get_a_second_copy(
    fake_cp: FakeControlPlane, kube: KubeClient, token_file: Path, tls: dict[str, Any], names: Names
) -> None:
    await seed(fake_cp, 1, names)
    moved = names("moved")
    await create_namespace(kube, moved)
    async with running(config(fake_cp, token_file, tls, names), kube):
        await eventually(lambda: converged(fake_cp, kube, names), what="initial sync")
        env_rv = rv(await kube.get(R.ENVIRONMENTS, names.env))
        await fake_cp.put(names.env_key, env_spec(namespace=moved))
        await eventually(lambda: processed(fake_cp))
        assert codes(fake_cp) == {names.env_key: "namespace_immutable"}
        assert rv(await kube.get(R.ENVIRONMENTS, names.env)) == env_rv
        # its apps still update where they are
        await fake_cp.put(names.app_key("app-0"), app_spec(names.env, image="registry.example.com/app:2"))
        await eventually(lambda: processed(fake_cp))
        assert (await apps(kube, names.ns))["app-0"]["spec"]["image"].endswith(":2")
        # another writer moved the Environment anyway: an app is not copied to the new namespace
        await kube.patch(R.ENVIRONMENTS, names.env, {"spec": {"namespace": moved}})
        await fake_cp.put(names.app_key("app-0"), app_spec(names.env, image="registry.example.com/app:3"))
        await eventually(lambda: processed(fake_cp))
    assert nack_for(fake_cp, names.app_key("app-0")) is not None
    assert codes(fake_cp)[names.app_key("app-0")] == "namespace_mismatch"
    assert await apps(kube, moved) == {}
    assert (await apps(kube, names.ns))["app-0"]["spec"]["image"].endswith(":2")


async def test_environments_in_protected_namespaces_are_refused(
    fake_cp: FakeControlPlane,
    kube: KubeClient,
    token_file: Path,
    tls: dict[str, Any],
    names: Names,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the operator's namespace as the agent learns it from the chart's environment
    operator_ns = f"choreo-{names('sys')}"
    monkeypatch.setenv("CHOREO_DP_OPERATOR_NAMESPACE", operator_ns)
    monkeypatch.delenv("CHOREO_DP_PROTECTED_NAMESPACES", raising=False)
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    await seed(fake_cp, 0, names)
    attempts = {
        names("k1"): {"namespace": "kube-system"},
        names("k2"): {"namespace": "kube-public"},
        names("k3"): {"namespace": "kube-node-lease"},
        names("d"): {"namespace": "default"},
        names("op"): {"namespace": operator_ns},
        names("sys"): {},  # no namespace: the default choreo-<name> is the operator's
    }
    async with running(config(fake_cp, token_file, tls, names), kube):
        await eventually(lambda: converged(fake_cp, kube, names), what="initial sync")
        for env, extra in attempts.items():
            await fake_cp.put(P.environment_key(env), env_spec(**extra))
        await eventually(lambda: processed(fake_cp))
    assert codes(fake_cp) == {P.environment_key(env): "protected_namespace" for env in attempts}
    for env in attempts:
        assert await kube.get(R.ENVIRONMENTS, env) is None
    sys_nack = nack_for(fake_cp, P.environment_key(names("sys")))
    assert sys_nack is not None and operator_ns in sys_nack.message


# --------------------------------------------------------------------------------------------
# what the pushed objects may contain


async def test_images_outside_the_environments_allowlist_are_refused(
    fake_cp: FakeControlPlane, kube: KubeClient, token_file: Path, tls: dict[str, Any], names: Names
) -> None:
    await fake_cp.put(names.env_key, {"registry": {"allowedPrefixes": ["ghcr.io/acme/"]}})
    bare, star = names("bare"), names("star")
    await create_namespace(kube, names("ns-star"))
    await fake_cp.put(P.environment_key(bare), {"namespace": names("ns-bare")})
    await fake_cp.put(
        P.environment_key(star), {"namespace": names("ns-star"), "registry": {"allowedPrefixes": ["*"]}}
    )
    async with running(config(fake_cp, token_file, tls, names), kube):
        await eventually(lambda: converged(fake_cp, kube, names), what="initial sync")
        refused = {
            "miner": "docker.io/evil/miner:1",
            "lookalike": "ghcr.io/acmeevil/x:1",
            "official": "nginx:1",
        }
        for app, image in refused.items():
            await fake_cp.put(names.app_key(app), app_spec(names.env, image=image))
        # not an image at all (refused by the schema or by the allowlist, never written)
        await fake_cp.put(names.app_key("dotdot"), app_spec(names.env, image="ghcr.io/acme/../evil/x:1"))
        await fake_cp.put(names.app_key("shop"), app_spec(names.env, image="ghcr.io/acme/shop:1"))
        # no allowlist admits nothing; ["*"] admits any valid image
        await fake_cp.put(names.app_key("any", bare), app_spec(bare, image="ghcr.io/acme/shop:1"))
        await fake_cp.put(names.app_key("any", star), app_spec(star, image="docker.io/evil/miner:1"))
        await eventually(lambda: processed(fake_cp))
    expected = {names.app_key(app): "image_not_allowed" for app in refused}
    expected[names.app_key("any", bare)] = "image_not_allowed"
    dotdot = codes(fake_cp).pop(names.app_key("dotdot"), None)
    assert dotdot in ("invalid_spec", "image_not_allowed")
    assert {k: c for k, c in codes(fake_cp).items() if k != names.app_key("dotdot")} == expected
    assert set(await apps(kube, names.ns)) == {"shop"}
    assert set(await apps(kube, names("ns-star"))) == {"any"}
    miner = nack_for(fake_cp, names.app_key("miner"))
    assert miner is not None and "ghcr.io/acme/" in miner.message


async def test_specs_failing_validation_or_too_large_are_refused_with_the_reason(
    fake_cp: FakeControlPlane, kube: KubeClient, token_file: Path, tls: dict[str, Any], names: Names
) -> None:
    await seed(fake_cp, 0, names)
    async with running(config(fake_cp, token_file, tls, names), kube):
        await eventually(lambda: converged(fake_cp, kube, names), what="initial sync")
        await fake_cp.put(names.app_key("negative"), {**app_spec(names.env), "replicas": -1})
        await fake_cp.put(names.app_key("extra"), {**app_spec(names.env), "hostNetwork": True})
        await fake_cp.put(P.environment_key(names("odd")), {"deletionPolicy": "Sometimes"})
        # ~820 KB of plain config: valid field by field, fits a frame, too big for the data plane
        env = [{"name": f"V{i}", "value": "x" * 3200} for i in range(256)]
        await fake_cp.put(names.app_key("huge"), {**app_spec(names.env), "env": env})
        await fake_cp.put(names.app_key("fine"), app_spec(names.env))
        await eventually(lambda: processed(fake_cp))
    assert codes(fake_cp) == {
        names.app_key("negative"): "invalid_spec",
        names.app_key("extra"): "invalid_spec",
        P.environment_key(names("odd")): "invalid_spec",
        names.app_key("huge"): "too_large",
    }
    negative = nack_for(fake_cp, names.app_key("negative"))
    extra = nack_for(fake_cp, names.app_key("extra"))
    huge = nack_for(fake_cp, names.app_key("huge"))
    assert negative is not None and "replicas" in negative.message
    assert extra is not None and "hostNetwork" in extra.message
    assert huge is not None and "exceeds" in huge.message
    assert set(await apps(kube, names.ns)) == {"fine"}
    assert await kube.get(R.ENVIRONMENTS, names("odd")) is None


# --------------------------------------------------------------------------------------------
# the no-destruction rules


async def test_an_empty_or_incomplete_snapshot_deletes_nothing(
    fake_cp: FakeControlPlane, kube: KubeClient, token_file: Path, tls: dict[str, Any], names: Names
) -> None:
    n_apps = 20
    # two apps share a resync bucket that nothing else uses (buckets as the cp will compute them
    # once one of them is deleted): the victim is deleted, its neighbour must survive
    buckets = P.bucket_count(n_apps, n_apps + 1)
    env_bucket = P.bucket_of(names.env_key, buckets)
    candidates = [f"app-{i}" for i in range(400)]
    bucket_of = {a: P.bucket_of(names.app_key(a), buckets) for a in candidates}
    victim, bystander = next(
        (a, b)
        for i, a in enumerate(candidates)
        for b in candidates[i + 1 :]
        if bucket_of[a] == bucket_of[b] != env_bucket
    )
    others = [a for a in candidates if bucket_of[a] not in (bucket_of[victim], env_bucket)][: n_apps - 2]
    chosen = [victim, bystander, *others]
    await fake_cp.put(names.env_key, env_spec())
    for a in chosen:
        await fake_cp.put(names.app_key(a), app_spec(names.env))
    async with running(config(fake_cp, token_file, tls, names), kube):
        await eventually(lambda: converged(fake_cp, kube, names), what="initial sync")
    # 1) a broken cp comes back empty in the same epoch, not behind the agent: nothing is deleted
    good = fake_cp.snapshot_store()
    empty = Store(epoch=good.epoch, revision=good.revision + 1, log_floor=good.revision + 1)
    fake_cp.restore(empty, new_epoch=False)
    async with running(config(fake_cp, token_file, tls, names), kube):
        await eventually(lambda: bool(fake_cp.orphan_reports), what="orphans reported")
        assert fake_cp.orphan_reports[-1].reason == "control_plane_empty"
        assert fake_cp.orphan_reports[-1].count == n_apps + 1
    assert len(await apps(kube, names.ns)) == n_apps
    # 2) back to the good store (a resync puts everything back); then one app is really deleted,
    # but the cp "forgets" to name the keys it still has in the differing bucket: the snapshot does
    # not add up, and nothing is deleted (deleting 2 of 20 apps is within the 20 % rule)
    fake_cp.restore(good, new_epoch=False)
    async with running(config(fake_cp, token_file, tls, names), kube):
        await eventually(lambda: converged(fake_cp, kube, names), what="re-adopted")
    await fake_cp.delete(names.app_key(victim))
    fake_cp.compact()
    fake_cp.snapshot_omit_keys = True
    reports = len(fake_cp.orphan_reports)
    async with running(config(fake_cp, token_file, tls, names), kube):
        await eventually(lambda: len(fake_cp.orphan_reports) > reports, what="orphans reported")
        assert fake_cp.modes[-1] == "resync"
        assert fake_cp.orphan_reports[-1].reason == "snapshot_inconsistent"
    current = await apps(kube, names.ns)
    for name in (victim, bystander):
        assert name in current, f"{name} was deleted by an incomplete snapshot"
        assert current[name]["metadata"]["annotations"][ANN_ORPHANED] == "snapshot_inconsistent"


# --------------------------------------------------------------------------------------------
# floods and frames that could poison the agent's state


async def test_a_flood_of_puts_behind_a_stuck_change_keeps_memory_bounded(
    fake_cp: FakeControlPlane, kube: KubeClient, token_file: Path, tls: dict[str, Any], names: Names
) -> None:
    late, late_ns = names("late"), names("ns-late")
    await seed(fake_cp, 0, names)
    await fake_cp.put(P.environment_key(late), env_spec(namespace=late_ns))
    limit, window, flood = 24, 4, 150
    cfg = config(fake_cp, token_file, tls, names, unacked_limit=limit, window=window)
    async with running(cfg, kube) as r:
        await eventually(lambda: converged(fake_cp, kube, names), what="initial sync")
        r.agent.store.namespace_wait = 0.2
        # the head of the stream cannot be written (its namespace does not exist yet) ...
        await fake_cp.put(names.app_key("first", late), app_spec(late))
        peak = {"open": 0, "tasks": 0, "outq": 0, "early": 0}

        def sample() -> None:
            s = r.agent.session
            if s is not None:
                peak["open"] = max(peak["open"], s.stream.in_flight)
                peak["tasks"] = max(peak["tasks"], len(s.tasks))
                peak["outq"] = max(peak["outq"], s.outq.qsize())
                peak["early"] = max(peak["early"], s.stream.buffered)

        async def pusher() -> None:
            # ... and a flood follows it: these can be written, but not acknowledged
            for i in range(flood):
                await fake_cp.put(names.app_key(f"f-{i}"), app_spec(names.env))

        push = asyncio.create_task(pusher())

        async def saturated() -> bool:
            sample()
            return peak["open"] >= limit

        await eventually(saturated, timeout=60, what="the unacknowledged window filled")
        await asyncio.sleep(0.5)  # the flood keeps coming; the agent must stop reading it
        sample()
        assert peak["open"] == limit
        await create_namespace(kube, late_ns)

        async def done() -> bool:
            sample()
            return push.done() and processed(fake_cp)

        await eventually(done, timeout=60, what="the flood processed once the head is written")
    assert peak["open"] <= limit
    assert peak["tasks"] <= window and peak["early"] == 0
    from choreo_dp.agent.session import OUTQ_FRAMES

    assert peak["outq"] <= OUTQ_FRAMES
    assert len(await apps(kube, names.ns)) == flood


async def test_floods_of_snapshot_keys_and_refused_snapshot_puts_cost_no_memory(
    fake_cp: FakeControlPlane, kube: KubeClient, token_file: Path, tls: dict[str, Any], names: Names
) -> None:
    await seed(fake_cp, 2, names)
    fake_cp.snapshot_end_gate = asyncio.Event()
    async with running(config(fake_cp, token_file, tls, names), kube) as r:

        def snapshot() -> Any:
            s = r.agent.session
            return None if s is None else s.snapshot

        await eventually(lambda: snapshot() is not None and fake_cp.active is not None, what="in a resync")
        seq = P.Sequencer()
        keys_before, puts_before = frames_in("snapshot.keys"), frames_in("desired.put")
        for f in range(5):
            keys = [P.app_key(names.env, f"ghost-{f}-{i}") for i in range(P.SNAPSHOT_KEYS_CHUNK)]
            await fake_cp.send_raw(seq.encode(P.SnapshotKeys(keys=keys)))
        bad = {"environment": names.env, "type": "nope"}
        for i in range(1000):
            put = P.DesiredPut(
                key=names.app_key(f"junk-{i}"),
                kind="ChoreoApp",
                revision=1,
                prev=None,
                spec_hash=P.spec_hash(bad),
                spec=bad,
            )
            await fake_cp.send_raw(seq.encode(put))
        await eventually(
            lambda: (
                frames_in("snapshot.keys") >= keys_before + 5
                and frames_in("desired.put") >= puts_before + 1000
            ),
            timeout=30,
            what="the flood read",
        )
        snap = snapshot()
        await eventually(lambda: all(t.done() for t in snap.tasks), timeout=30, what="junk refused")
        # only keys the agent has can be deletion candidates; nothing else is kept
        assert len(snap.remote) <= len(r.agent.store.index)
        assert len(snap.tasks) <= 16
        fake_cp.snapshot_end_gate.set()
        await eventually(lambda: converged(fake_cp, kube, names), what="resync completes")
    assert sum(1 for n in fake_cp.nacks if n.code == "invalid_spec") == 1000


async def test_revisions_beyond_int64_are_refused_and_do_not_poison_the_stream(
    fake_cp: FakeControlPlane, kube: KubeClient, token_file: Path, tls: dict[str, Any], names: Names
) -> None:
    await seed(fake_cp, 1, names)
    async with running(config(fake_cp, token_file, tls, names), kube) as r:
        await eventually(lambda: converged(fake_cp, kube, names), what="initial sync")
        spec = app_spec(names.env, image="registry.example.com/poison:1")
        poison = P.DesiredPut(
            key=names.app_key("poison"),
            kind="ChoreoApp",
            revision=10**30,
            prev=fake_cp.store.revision,
            spec_hash=P.spec_hash(spec),
            spec=spec,
        )
        errors = len(fake_cp.errors)
        await fake_cp.send_raw(P.Sequencer().encode(poison))
        await eventually(lambda: len(fake_cp.errors) > errors, what="the frame refused")
        assert fake_cp.errors[-1].code == "bad_body"
        await fake_cp.put(names.app_key("after"), app_spec(names.env))
        await eventually(lambda: converged(fake_cp, kube, names), what="later changes still applied")
        assert "poison" not in await apps(kube, names.ns)
        assert r.agent.dp.applied_revision == fake_cp.store.revision


async def test_a_welcome_asking_for_constant_heartbeats_is_clamped(
    fake_cp: FakeControlPlane, kube: KubeClient, token_file: Path, tls: dict[str, Any], names: Names
) -> None:
    await seed(fake_cp, 0, names)
    fake_cp.heartbeat_interval = 0.0001
    async with running(config(fake_cp, token_file, tls, names), kube):
        await eventually(lambda: converged(fake_cp, kube, names), what="initial sync")

        def heartbeats() -> int:
            return sum(1 for f in fake_cp.received if f.type == "heartbeat" and f.envelope.corr is None)

        start = heartbeats()
        await asyncio.sleep(2.0)
        assert heartbeats() - start <= 3
