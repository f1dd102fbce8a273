"""Issue 12, namespaces: what an Environment may take, and what it may not.

The operator creates the namespaces it manages and marks them with the Environment's uid; it never
adopts, writes into or gets garbage-collected a namespace it did not create, refuses protected
namespaces, lets one Environment own a namespace (and only its apps run there), refuses to move an
Environment to another namespace, and copies only opted-in registry Secrets.

The pure rules first (namespace names, protection, the mark, the setting); then, on the emulator and
on the real cluster (``operator_cluster``), one test per finding of the issue and the adoption
attempts on kube-system, default, the operator's namespace, a labelled and an arbitrary namespace.
"""

from __future__ import annotations

import argparse
import base64
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from choreo_dp.api.environment import default_namespace
from choreo_dp.cli.common import namespace_patterns
from choreo_dp.kube import KubeClient
from choreo_dp.kube import resources as R
from choreo_dp.operator.config import OperatorConfig
from choreo_dp.render.environment import (
    DEFAULT_PROTECTED_NAMESPACES,
    namespace_owner,
    parse_protected_namespaces,
    protected_reason,
)
from choreo_dp.render.labels import ENVIRONMENT_UID_KEY, MANAGED_SELECTOR
from tests.operator.harness import Cluster, choreoapp, environment, eventually, running_operator

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Every env here names its registry: the image rule is not what these tests are about.
REGISTRY = {"allowedPrefixes": ["registry.example.com/"]}
DOCKERCONFIG = base64.b64encode(b'{"auths":{}}').decode()
e2e = pytest.mark.asyncio(loop_scope="module")


# --- pure rules ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("dev", "choreo-dev"),
        ("a" * 55, "choreo-" + "a" * 55),  # 62 characters: still the plain name
    ],
)
def test_default_namespace_is_plain_while_it_fits(name: str, expected: str) -> None:
    assert default_namespace(name) == expected


@pytest.mark.parametrize("name", ["a" * 56, "b" * 63, "x" * 253, "team.eu-west.prod", "a.b"])
def test_default_namespace_of_long_or_dotted_names_is_a_hashed_label(name: str) -> None:
    ns = default_namespace(name)
    assert len(ns) == 63 and DNS_LABEL.match(ns), ns
    assert ns.startswith("choreo-") and ns == default_namespace(name)  # stable


def test_names_sharing_their_first_56_characters_get_distinct_namespaces() -> None:
    """Finding 2 (last part): cutting ``choreo-<name>`` at 63 gave both the same namespace."""
    stem = "payments-eu-west-1-production-blue-green-canary-shadow-x"  # 56 characters
    assert len(stem) == 56
    one, two = default_namespace(stem + "-1"), default_namespace(stem + "-2")
    assert one != two, one


def test_a_plain_name_never_takes_a_hashed_namespace() -> None:
    """A name crafted to spell another name's hashed namespace does not get it: plain namespaces
    are at most 62 characters, hashed ones exactly 63."""
    long = "l" * 70
    crafted = default_namespace(long)[len("choreo-") :]  # a valid 56-character name
    assert DNS_LABEL.match(crafted) and len(crafted) == 56
    assert default_namespace(crafted) != default_namespace(long)


def test_default_namespaces_are_distinct_over_many_names() -> None:
    names = {f"{'n' * k}-{i}" for k in range(50, 62) for i in range(300)} | {"n" * k for k in range(1, 64)}
    spaces = [default_namespace(n) for n in names]
    assert len(set(spaces)) == len(names)
    assert all(len(s) <= 63 and DNS_LABEL.match(s) for s in spaces)


PATTERNS = (*DEFAULT_PROTECTED_NAMESPACES, "choreo-system")


@pytest.mark.parametrize(
    ("name", "labels", "protected"),
    [
        ("kube-system", None, True),
        ("kube-public", None, True),
        ("kube-node-lease", None, True),
        ("kube-anything-new", None, True),  # a glob: refused even before it exists
        ("default", None, True),
        ("choreo-system", None, True),  # the operator's own namespace
        ("kube", None, False),
        ("defaults", None, False),
        ("my-default", None, False),
        ("choreo-system-2", None, False),
        ("monitoring", {"choreo.dev/protected": "true"}, True),
        ("monitoring", {"choreo.dev/protected": ""}, True),  # the label protects, whatever its value
        ("monitoring", {"other": "x"}, False),
        ("choreo-dev", None, False),
    ],
)
def test_protected_namespaces(name: str, labels: dict[str, str] | None, protected: bool) -> None:
    live = None if labels is None else {"metadata": {"name": name, "labels": labels}}
    reason = protected_reason(name, live, PATTERNS)
    assert (reason is not None) is protected, reason
    if reason:
        assert name in reason


def test_the_operator_namespace_is_protected_whatever_the_setting_says() -> None:
    config = OperatorConfig(operator_namespace="ops", protected_namespaces=())
    assert protected_reason("ops", None, config.protected_patterns) is not None
    assert protected_reason("kube-system", None, config.protected_patterns) is None
    assert OperatorConfig(operator_namespace="ops").protected_patterns == ("kube-*", "default", "ops")


def test_protected_namespaces_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_protected_namespaces("kube-*, default,monitoring") == ("kube-*", "default", "monitoring")
    assert parse_protected_namespaces("") == ()
    for bad in ("Kube-*", "a b", "x" * 64, "ns/other"):
        with pytest.raises(ValueError, match="invalid namespace pattern"):
            parse_protected_namespaces(bad)
        with pytest.raises(argparse.ArgumentTypeError):
            namespace_patterns(bad)
    monkeypatch.setenv("CHOREO_DP_PROTECTED_NAMESPACES", "team-*")
    assert OperatorConfig().protected_namespaces == ("team-*",)
    monkeypatch.setenv("CHOREO_DP_PROTECTED_NAMESPACES", "BAD")
    with pytest.raises(ValueError):
        OperatorConfig()


@pytest.mark.parametrize(
    ("labels", "annotations", "owner"),
    [
        ({ENVIRONMENT_UID_KEY: "u1"}, {ENVIRONMENT_UID_KEY: "u1"}, "u1"),
        ({ENVIRONMENT_UID_KEY: "u1"}, {}, None),  # half a mark is no mark
        ({}, {ENVIRONMENT_UID_KEY: "u1"}, None),
        ({ENVIRONMENT_UID_KEY: "u1"}, {ENVIRONMENT_UID_KEY: "u2"}, None),
        ({"app.kubernetes.io/managed-by": "choreo-dp", "choreo.dev/environment": "dev"}, {}, None),
    ],
)
def test_namespace_mark(labels: dict[str, str], annotations: dict[str, str], owner: str | None) -> None:
    assert namespace_owner({"metadata": {"labels": labels, "annotations": annotations}}) == owner
    assert namespace_owner(None) is None


# --- end to end --------------------------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def cluster(operator_cluster: Cluster) -> AsyncIterator[Cluster]:
    async with running_operator(operator_cluster):
        yield operator_cluster


async def env_settled(
    kube: KubeClient, name: str, phase: str, reason: str, timeout: float = 20.0
) -> dict[str, Any]:
    """The Environment once its status describes its current generation with this phase and reason."""

    async def probe() -> dict[str, Any] | None:
        env = await kube.get(R.ENVIRONMENTS, name)
        status = (env or {}).get("status") or {}
        ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
        settled = env is not None and status.get("observedGeneration") == env["metadata"].get("generation")
        return env if settled and status.get("phase") == phase and ready.get("reason") == reason else None

    try:
        return await eventually(probe, timeout=timeout, what=f"environment {name} {phase}/{reason}")
    except AssertionError:
        env = await kube.get(R.ENVIRONMENTS, name)
        raise AssertionError(f"environment {name}: {(env or {}).get('status')}") from None


async def app_settled(kube: KubeClient, name: str, namespace: str, phase: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        app = await kube.get(R.CHOREOAPPS, name, namespace)
        status = (app or {}).get("status") or {}
        current = app is not None and status.get("observedGeneration") == app["metadata"].get("generation")
        return app if current and status.get("phase") == phase else None

    try:
        return await eventually(probe, what=f"{namespace}/{name} {phase}")
    except AssertionError:
        app = await kube.get(R.CHOREOAPPS, name, namespace)
        raise AssertionError(f"app {namespace}/{name}: {(app or {}).get('status')}") from None


async def warned(kube: KubeClient, env: str, reason: str) -> bool:
    """A Warning Event on the (cluster-scoped) Environment: those live in ``default``."""

    async def probe() -> bool:
        events, _ = await kube.list(R.EVENTS, "default")
        return any(
            e.get("type") == "Warning"
            and e.get("reason") == reason
            and e["involvedObject"].get("name") == env
            for e in events
        )

    return await eventually(probe, what=f"Warning {reason} on environment {env}")


async def ours_in(kube: KubeClient, namespace: str) -> list[str]:
    """Anything the operator could have put in ``namespace``."""
    found = []
    for res in (
        R.RESOURCEQUOTAS,
        R.LIMITRANGES,
        R.NETWORKPOLICIES,
        R.SERVICEACCOUNTS,
        R.SECRETS,
        R.DEPLOYMENTS,
        R.CRONJOBS,
        R.SERVICES,
    ):
        items, _ = await kube.list(res, namespace, label_selector=MANAGED_SELECTOR)
        found += [f"{res.kind}/{i['metadata']['name']}" for i in items]
    if await kube.get(R.SERVICEACCOUNTS, "choreo-app", namespace) is not None:
        found.append("ServiceAccount/choreo-app")
    return found


async def create_namespace(
    kube: KubeClient, name: str, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}}
    created: dict[str, Any] = await kube.create(R.NAMESPACES, body)
    return created


async def delete_environment(kube: KubeClient, name: str) -> None:
    await kube.delete(R.ENVIRONMENTS, name)

    async def gone() -> bool:
        return await kube.get(R.ENVIRONMENTS, name) is None

    await eventually(gone, what=f"environment {name} deleted")


def untouched(before: dict[str, Any], after: dict[str, Any] | None) -> None:
    assert after is not None, f"namespace {before['metadata']['name']} is gone"
    meta = after["metadata"]
    assert meta["resourceVersion"] == before["metadata"]["resourceVersion"], meta
    assert "deletionTimestamp" not in meta and not meta.get("ownerReferences"), meta


@e2e
async def test_an_existing_namespace_is_never_adopted_nor_deleted(cluster: Cluster) -> None:
    """Finding 1: an Environment naming an existing namespace used to get it (labels, an
    ownerReference, a default-deny policy, ``pods: 0``), and its deletion took the namespace and
    everything in it with it."""
    kube = cluster.kube
    victim = cluster.namespace("victim")
    before = await create_namespace(kube, victim)
    await kube.create(
        R.CONFIGMAPS, {"metadata": {"name": "precious", "namespace": victim}, "data": {"keep": "me"}}
    )
    adopter = cluster.env_name("adopter")
    await kube.apply(environment(adopter, namespace=victim, registry=REGISTRY, quota={"pods": 0}), "test")
    env = await env_settled(kube, adopter, "Failed", "NamespaceNotOwned")
    assert "never adopts" in env["status"]["conditions"][0]["message"]
    await warned(kube, adopter, "NamespaceNotOwned")
    # Its apps go nowhere either.
    await kube.apply(choreoapp("squatter", adopter, namespace=victim, type="worker"), "test")
    app = await app_settled(kube, "squatter", victim, "Failed")
    assert "NamespaceNotOwned" in str(app["status"]["conditions"]), app["status"]
    assert await ours_in(kube, victim) == []
    untouched(before, await kube.get(R.NAMESPACES, victim))

    await delete_environment(kube, adopter)
    assert await kube.get(R.CONFIGMAPS, "precious", victim) is not None
    untouched(before, await kube.get(R.NAMESPACES, victim))


@e2e
@pytest.mark.parametrize("which", ["kube-system", "default", "operator", "labelled", "absent-glob"])
async def test_protected_namespaces_are_refused(cluster: Cluster, which: str) -> None:
    """kube-*, default, the operator's own namespace and any namespace labelled choreo.dev/protected:
    refused, written nothing, whether they exist or not (a kube-* one is not created)."""
    kube = cluster.kube
    target = {
        "kube-system": "kube-system",
        "default": "default",
        "operator": cluster.operator_namespace,
        "labelled": cluster.namespace("guarded"),
        "absent-glob": f"kube-choreo-{cluster.suffix}",
    }[which]
    if which == "labelled":
        await create_namespace(kube, target, {"choreo.dev/protected": "true"})
    before = await kube.get(R.NAMESPACES, target)
    assert (before is None) == (which == "absent-glob")
    name = cluster.env_name(f"grab-{which}")
    await kube.apply(environment(name, namespace=target, registry=REGISTRY, quota={"pods": 0}), "test")
    env = await env_settled(kube, name, "Failed", "NamespaceProtected")
    assert target in env["status"]["conditions"][0]["message"]
    await warned(kube, name, "NamespaceProtected")
    await delete_environment(kube, name)
    if before is None:
        assert await kube.get(R.NAMESPACES, target) is None
        return
    assert await ours_in(kube, target) == []
    untouched(before, await kube.get(R.NAMESPACES, target))


@e2e
async def test_one_owner_per_namespace(cluster: Cluster) -> None:
    """Finding 2: a second Environment naming the owner's namespace was marked NamespaceConflict,
    but its apps still ran there under its own registry rules (``docker.io/evil/miner`` in an
    environment that allows only ``registry.example.com/``), and its app of the same name replaced
    the owner's."""
    kube = cluster.kube
    owner, intruder = cluster.env_name("owner"), cluster.env_name("intruder")
    ns = f"choreo-{owner}"
    await kube.apply(environment(owner, registry=REGISTRY), "test")
    await env_settled(kube, owner, "Ready", "Ready")
    await kube.apply(choreoapp("web", owner, type="worker"), "test")
    await app_settled(kube, "web", ns, "Ready")

    await kube.apply(
        environment(intruder, namespace=ns, registry={"allowedPrefixes": ["docker.io/"]}), "test"
    )
    env = await env_settled(kube, intruder, "Failed", "NamespaceConflict")
    assert owner in env["status"]["conditions"][0]["message"]
    await warned(kube, intruder, "NamespaceConflict")

    miner = choreoapp("miner", intruder, namespace=ns, type="worker", image="docker.io/evil/miner:1")
    await kube.apply(miner, "test")
    app = await app_settled(kube, "miner", ns, "Failed")
    assert "NamespaceNotOwned" in str(app["status"]["conditions"]) and owner in app["status"]["message"]
    # The owner's app, re-pointed at the intruder with the intruder's image: refused, untouched.
    takeover = choreoapp("web", intruder, namespace=ns, type="worker", image="docker.io/evil/miner:2")
    await kube.apply(takeover, "test")
    await app_settled(kube, "web", ns, "Failed")
    assert await kube.get(R.DEPLOYMENTS, "miner", ns) is None
    dep = await kube.get(R.DEPLOYMENTS, "web", ns)
    assert dep is not None
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example.com/shop/x:1"
    await env_settled(kube, owner, "Ready", "Ready")

    await delete_environment(kube, intruder)
    assert await kube.get(R.NAMESPACES, ns) is not None
    await kube.apply(choreoapp("web", owner, type="worker"), "test")
    await app_settled(kube, "web", ns, "Ready")


@e2e
async def test_a_namespace_change_is_refused_and_the_old_namespace_kept(cluster: Cluster) -> None:
    """Finding 6: changing spec.namespace left the apps Failed in the old namespace with their
    Deployments running, a second copy in the new one, and the environment Ready. Now the move is
    refused: nothing is created in the new namespace, the old one is still reconciled, the status
    says Failed until spec.namespace is set back, and deleting the Environment leaves nothing."""
    kube = cluster.kube
    name = cluster.env_name("mover")
    old, new = cluster.namespace("mover-old"), cluster.namespace("mover-new")
    await kube.apply(environment(name, namespace=old, registry=REGISTRY), "test")
    await env_settled(kube, name, "Ready", "Ready")
    await kube.apply(choreoapp("w", name, namespace=old, type="worker"), "test")
    await app_settled(kube, "w", old, "Ready")

    await kube.apply(environment(name, namespace=new, registry=REGISTRY), "test")
    env = await env_settled(kube, name, "Failed", "NamespaceImmutable")
    assert env["status"]["namespace"] == old and env["status"]["apps"] == 1
    await warned(kube, name, "NamespaceImmutable")
    # The old namespace is still the environment's: its apps follow their specs.
    await kube.apply(choreoapp("w", name, namespace=old, type="worker", replicas=2), "test")
    app = await app_settled(kube, "w", old, "Ready")
    assert app["status"]["ready"] == "2/2"
    assert await kube.get(R.NAMESPACES, new) is None

    await kube.apply(environment(name, namespace=old, registry=REGISTRY), "test")
    await env_settled(kube, name, "Ready", "Ready")
    assert await kube.get(R.NAMESPACES, new) is None

    await delete_environment(kube, name)

    async def collected() -> bool:
        return await kube.get(R.NAMESPACES, old) is None

    # The garbage collector takes the namespace it owned, and the app's Deployment with it.
    await eventually(collected, timeout=120, interval=0.5, what=f"namespace {old} collected")
    assert await kube.get(R.NAMESPACES, new) is None


@e2e
async def test_only_opted_in_registry_secrets_are_copied(cluster: Cluster) -> None:
    """Finding 7: ``registry.pullSecretName`` copied any Secret of the operator's namespace (an
    Opaque credentials Secret was copied). Only kubernetes.io/dockerconfigjson Secrets labelled
    choreo.dev/pull-secret=true are."""
    kube = cluster.kube
    source = cluster.operator_namespace
    opt_in = {"choreo.dev/pull-secret": "true"}
    secrets = {
        "creds": ("Opaque", opt_in, {"password": base64.b64encode(b"hunter2").decode()}),
        "plain-reg": ("kubernetes.io/dockerconfigjson", {}, {".dockerconfigjson": DOCKERCONFIG}),
        "good-reg": ("kubernetes.io/dockerconfigjson", opt_in, {".dockerconfigjson": DOCKERCONFIG}),
    }
    for secret, (kind, labels, data) in secrets.items():
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": secret, "namespace": source, "labels": labels},
            "type": kind,
            "data": data,
        }
        await kube.apply(body, "test")
    name = cluster.env_name("puller")
    ns = f"choreo-{name}"

    async def pulls(secret: str) -> None:
        registry = {**REGISTRY, "pullSecretName": secret}
        await kube.apply(environment(name, registry=registry), "test")

    for refused in ("creds", "plain-reg"):
        await pulls(refused)
        env = await env_settled(kube, name, "Pending", "PullSecretNotAllowed")
        assert refused in env["status"]["conditions"][0]["message"]
        await warned(kube, name, "PullSecretNotAllowed")
        assert await kube.get(R.SECRETS, refused, ns) is None
        sa = await kube.get(R.SERVICEACCOUNTS, "choreo-app", ns)
        assert sa is not None and not sa.get("imagePullSecrets"), sa

    await pulls("good-reg")
    await env_settled(kube, name, "Ready", "Ready")
    copy = await kube.get(R.SECRETS, "good-reg", ns)
    assert copy is not None and copy["type"] == "kubernetes.io/dockerconfigjson"
    assert copy["data"] == {".dockerconfigjson": DOCKERCONFIG}

    # Opting out takes the copy away at the next look.
    await kube.patch(
        R.SECRETS, "good-reg", {"metadata": {"labels": {"choreo.dev/pull-secret": None}}}, source
    )
    await env_settled(kube, name, "Pending", "PullSecretNotAllowed")

    async def pruned() -> bool:
        return await kube.get(R.SECRETS, "good-reg", ns) is None

    await eventually(pruned, what="the pull secret copy pruned")


@e2e
async def test_long_environment_names_get_distinct_namespaces(cluster: Cluster) -> None:
    """Finding 2, last part: two 58-character names sharing their first 56 characters both got
    ``choreo-<first 56>``; the second was refused as a conflict."""
    kube = cluster.kube
    stem = f"{cluster.suffix}-" + "l" * (56 - len(cluster.suffix) - 1)
    names = [f"{stem}-1", f"{stem}-2"]
    try:
        for name in names:
            await kube.apply(environment(name, registry=REGISTRY), "test")
        namespaces = []
        for name in names:
            env = await env_settled(kube, name, "Ready", "Ready")
            namespaces.append(env["status"]["namespace"])
            await kube.apply(
                choreoapp("w", name, namespace=env["status"]["namespace"], type="worker"), "test"
            )
        assert len(set(namespaces)) == 2 and all(len(n) <= 63 for n in namespaces), namespaces
        for name, ns in zip(names, namespaces, strict=True):
            assert ns == default_namespace(name)
            await app_settled(kube, "w", ns, "Ready")
    finally:
        for name in names:
            await kube.delete(R.ENVIRONMENTS, name)

        async def gone() -> bool:
            left = [await kube.get(R.NAMESPACES, default_namespace(n)) for n in names]
            return all(n is None for n in left)

        await eventually(gone, timeout=120, interval=0.5, what="the long-named environments' namespaces gone")


@e2e
async def test_a_retained_namespace_is_released_and_not_taken_back(cluster: Cluster) -> None:
    """Retain hands the namespace to the cluster admin, mark and all: an Environment of the same
    name created again does not take it back."""
    kube = cluster.kube
    name = cluster.env_name("kept")
    ns = f"choreo-{name}"
    await kube.apply(environment(name, registry=REGISTRY, deletionPolicy="Retain"), "test")
    first = await env_settled(kube, name, "Ready", "Ready")
    live = await kube.get(R.NAMESPACES, ns)
    assert live is not None and namespace_owner(live) == first["metadata"]["uid"]
    await delete_environment(kube, name)
    released = await kube.get(R.NAMESPACES, ns)
    assert released is not None and namespace_owner(released) is None
    assert ENVIRONMENT_UID_KEY not in (released["metadata"].get("labels") or {})
    assert not released["metadata"].get("ownerReferences")

    await kube.apply(environment(name, registry=REGISTRY), "test")
    await env_settled(kube, name, "Failed", "NamespaceNotOwned")
    untouched(released, await kube.get(R.NAMESPACES, ns))


@e2e
async def test_the_mark_is_kept_and_the_owner_reference_follows_the_deletion_policy(cluster: Cluster) -> None:
    """On its own namespace the operator repairs its labels, and drops its ownerReference when the
    policy becomes Retain (else the garbage collector would take the namespace anyway)."""
    kube = cluster.kube
    name = cluster.env_name("policy")
    ns = f"choreo-{name}"
    await kube.apply(environment(name, registry=REGISTRY), "test")
    env = await env_settled(kube, name, "Ready", "Ready")
    uid = env["metadata"]["uid"]

    async def namespace_is(owned: bool) -> dict[str, Any] | None:
        live = await kube.get(R.NAMESPACES, ns)
        meta = (live or {}).get("metadata") or {}
        refs = [r.get("uid") for r in meta.get("ownerReferences") or []]
        labelled = (meta.get("labels") or {}).get("choreo.dev/environment") == name
        ok = (
            live is not None
            and namespace_owner(live) == uid
            and labelled
            and refs == ([uid] if owned else [])
        )
        return live if ok else None

    await eventually(lambda: namespace_is(owned=True), what="namespace marked and owned")
    await kube.patch(R.NAMESPACES, ns, {"metadata": {"labels": {"choreo.dev/environment": None}}})
    await eventually(lambda: namespace_is(owned=True), what="the environment label put back")

    await kube.apply(environment(name, registry=REGISTRY, deletionPolicy="Retain"), "test")
    await env_settled(kube, name, "Ready", "Ready")
    await eventually(lambda: namespace_is(owned=False), what="the ownerReference dropped for Retain")
    await kube.apply(environment(name, registry=REGISTRY, deletionPolicy="Delete"), "test")
    await eventually(lambda: namespace_is(owned=True), what="the ownerReference back for Delete")
