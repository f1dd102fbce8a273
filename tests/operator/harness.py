"""A Kubernetes API with our CRDs and one operator running against it, plus polling helpers.

The same tests run on two targets (``tests/operator/conftest.py`` parametrizes them):

``emulator``
    A fresh emulated API server for the module, workload simulator on (pods Ready after 50 ms),
    Gateway API served built in.
``real``
    The session's real cluster (``real_cluster``: kube-apiserver, kube-controller-manager,
    kube-scheduler, kwok nodes) with our CRDs and the Gateway API standard channel installed.
    The operator's traffic goes through a ``FaultProxy`` so ``cluster.faults`` acts on it as
    on the emulator; the test's own client talks to the apiserver directly.

The real cluster is shared by every module of the session and the operator watches cluster-wide,
so every name a module creates carries the module's ``suffix`` (``Cluster.env_name``); at the end
the module deletes its Environments while its operator still runs (a Retain finalizer needs it),
then every namespace with its suffix, and waits until all of them are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from choreo_dp.kube import KubeClient
from choreo_dp.kube import resources as R
from choreo_dp.kube.resources import Resource
from choreo_dp.operator import OperatorConfig, run_operator
from choreo_dp.operator.config import SecretsFactory
from choreo_sandbox.cluster import find_binaries
from choreo_sandbox.cluster.fault_proxy import FaultProxy
from choreo_sandbox.cluster.workload_faults import set_pod_failure
from kube_emulator.faults import Faults
from kube_emulator.server import ApiServer
from tests import polling

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"
TEST_MANAGER = "choreo-dp-tests"
GATEWAY_GROUP = "gateway.networking.k8s.io"
# How long a module waits for its objects to be gone at the end.  Namespace deletion on a real
# cluster runs through the namespace controller (discovery of every namespaced kind, a delete of
# each, pods terminating through kwok): seconds, not the emulator's microseconds.
CLEANUP_TIMEOUT = 180.0
log = logging.getLogger("tests.operator")

VALIDATING_ADMISSION_POLICIES = Resource(
    "admissionregistration.k8s.io", "v1", "validatingadmissionpolicies", "ValidatingAdmissionPolicy", False
)
VALIDATING_ADMISSION_POLICY_BINDINGS = Resource(
    "admissionregistration.k8s.io",
    "v1",
    "validatingadmissionpolicybindings",
    "ValidatingAdmissionPolicyBinding",
    False,
)
_CLUSTER_RESOURCES = {
    "CustomResourceDefinition": R.CRDS,
    "ValidatingAdmissionPolicy": VALIDATING_ADMISSION_POLICIES,
    "ValidatingAdmissionPolicyBinding": VALIDATING_ADMISSION_POLICY_BINDINGS,
}


# the suite's one polling helper, with the patience a real cluster needs
eventually = partial(polling.eventually, timeout=20.0, interval=0.1)


# --- installing things, idempotently (the real cluster is shared) -----------------------------


async def apply_cluster_object(kube: KubeClient, body: dict[str, Any]) -> dict[str, Any]:
    """Server-side apply (forced, one test field manager) of a cluster-scoped object."""
    res = _CLUSTER_RESOURCES[body["kind"]]
    result: dict[str, Any] = await kube.request(
        "PATCH",
        res.path(None, body["metadata"]["name"]),
        params={"fieldManager": TEST_MANAGER, "force": "true"},
        body=body,
        content_type="application/apply-patch+yaml",
    )
    return result


async def wait_established(kube: KubeClient, names: list[str], timeout: float = 60.0) -> None:
    """A CRD is usable once it is Established (a real apiserver takes a moment; so may others)."""

    async def established() -> bool:
        for name in names:
            crd = await kube.get(R.CRDS, name)
            conds = {
                c.get("type"): c.get("status")
                for c in ((crd or {}).get("status") or {}).get("conditions") or []
            }
            if conds.get("Established") != "True":
                return False
        return True

    await eventually(established, timeout=timeout, interval=0.2, what=f"CRDs Established: {names}")


async def install_crds(kube: KubeClient) -> None:
    """Our CRDs from crds/, applied (the same manifests every module applies: a no-op when present)."""
    names = []
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        await apply_cluster_object(kube, crd)
        names.append(crd["metadata"]["name"])
    await wait_established(kube, names)


def gateway_api_documents() -> list[dict[str, Any]]:
    """The Gateway API standard channel ``tools/kube/build.py`` copied from the pinned release."""
    directory = find_binaries().gateway_api_crds
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise RuntimeError(f"no Gateway API CRDs in {directory}; run `python3 tools/kube/build.py`")
    return [d for f in files for d in yaml.safe_load_all(f.read_text()) if d]


async def install_gateway_api(kube: KubeClient) -> None:
    """``kubectl apply -f standard-install.yaml`` of the pinned release: CRDs and its admission policy.

    Left installed at the end: a cluster serving Gateway API is the cluster the emulator models,
    and removing the CRDs would delete every other module's routes with them.
    """
    names = []
    for doc in gateway_api_documents():
        await apply_cluster_object(kube, doc)
        if doc["kind"] == "CustomResourceDefinition":
            names.append(doc["metadata"]["name"])
    await wait_established(kube, names)


async def wait_for_garbage_collector(kube: KubeClient, suffix: str, timeout: float = 120.0) -> None:
    """Wait until the garbage collector collects children of our kinds.

    kube-controller-manager's garbage collector starts watching a new custom resource only at
    its next discovery sync (every 30 s); until then a child owned by a just-created ChoreoApp
    or Environment outlives its owner for up to that long (longer, with the retry backoff).  An
    owned ConfigMap per kind, owners deleted, children gone: the GC knows both kinds.
    """
    ns = f"gc-probe-{suffix}"
    await kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}, TEST_MANAGER)
    owners = [
        (
            R.ENVIRONMENTS,
            {
                "apiVersion": "choreo.dev/v1alpha1",
                "kind": "Environment",
                "metadata": {"name": f"gc-probe-{suffix}", "labels": {"choreo.dev/test-probe": "gc"}},
                "spec": {"namespace": f"gc-probe-env-{suffix}"},
            },
        ),
        (
            R.CHOREOAPPS,
            {
                "apiVersion": "choreo.dev/v1alpha1",
                "kind": "ChoreoApp",
                "metadata": {"name": "gc-probe", "namespace": ns},
                "spec": {
                    "environment": f"gc-probe-{suffix}",
                    "project": "probe",
                    "type": "worker",
                    "image": "registry.example.com/probe:1",
                },
            },
        ),
    ]
    try:
        children = []
        for res, body in owners:
            owner = await kube.create(res, body)
            child = f"owned-by-{owner['kind'].lower()}"
            ref = {
                "apiVersion": owner["apiVersion"],
                "kind": owner["kind"],
                "name": owner["metadata"]["name"],
                "uid": owner["metadata"]["uid"],
            }
            await kube.create(
                R.CONFIGMAPS, {"metadata": {"name": child, "namespace": ns, "ownerReferences": [ref]}}
            )
            children.append(child)
            await kube.delete(res, owner["metadata"]["name"], owner["metadata"].get("namespace"))

        async def collected() -> bool:
            return all([await kube.get(R.CONFIGMAPS, c, ns) is None for c in children])

        await eventually(
            collected, timeout=timeout, interval=0.5, what="the GC to collect children of our kinds"
        )
    finally:
        await kube.delete(R.NAMESPACES, ns)


# --- the cluster a module runs against ------------------------------------------------------------


@dataclass
class Cluster:
    """One target: ``kube`` is the test's client, ``kubeconfig`` what the operator uses."""

    target: str  # "emulator" | "real"
    kube: KubeClient
    kubeconfig: Path
    faults: Faults  # act on clients of ``kubeconfig`` (the operator), not on ``kube`` (the test)
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    server: ApiServer | None = None
    # The session's real cluster, which other modules use too: clean up after the module.
    shared: bool = False

    @property
    def emulated(self) -> bool:
        return self.server is not None

    @property
    def operator_namespace(self) -> str:
        return f"choreo-system-{self.suffix}"

    def env_name(self, base: str) -> str:
        """The module's name for an Environment (its namespace is ``choreo-<that>``)."""
        return f"{base}-{self.suffix}"

    def namespace(self, base: str) -> str:
        """The module's name for a namespace (``namespace("choreo-dev")`` is dev's namespace)."""
        return f"{base}-{self.suffix}"

    async def fail_pods(self, namespace: str, deployment: str, mode: str | None) -> None:
        """Make a Deployment's pods crash-loop / fail their pulls (None: healthy again).

        The emulator switches its workload simulator; the real cluster gets a kwok Stage and its
        pods rolled until every current one shows the mode (``set_pod_failure``).  Both need the
        Deployment to exist, so this waits for it.
        """
        await eventually(
            lambda: self.kube.get(R.DEPLOYMENTS, deployment, namespace), what=f"deployment {deployment}"
        )
        if self.server is not None:
            self.server.simulator.set_pod_failure(namespace, deployment, mode)
        else:
            await set_pod_failure(self.kube, namespace, deployment, mode)

    async def delete_environments(self) -> None:
        """Delete this module's Environments and wait for them and their namespaces to be gone."""
        envs, _ = await self.kube.list(R.ENVIRONMENTS)
        ours = [e for e in envs if e["metadata"]["name"].endswith(f"-{self.suffix}")]
        for e in ours:
            await self.kube.delete(R.ENVIRONMENTS, e["metadata"]["name"])

        async def gone() -> bool:
            left, _ = await self.kube.list(R.ENVIRONMENTS)
            return not any(e["metadata"]["name"].endswith(f"-{self.suffix}") for e in left)

        await eventually(gone, timeout=CLEANUP_TIMEOUT, interval=0.5, what="this module's Environments gone")

    async def delete_namespaces(self) -> None:
        """Delete every namespace carrying this module's suffix and wait until they are gone."""

        async def ours() -> list[str]:
            items, _ = await self.kube.list(R.NAMESPACES)
            return [n["metadata"]["name"] for n in items if n["metadata"]["name"].endswith(f"-{self.suffix}")]

        for name in await ours():
            await self.kube.delete(R.NAMESPACES, name)

        async def gone() -> bool:
            return not await ours()

        await eventually(gone, timeout=CLEANUP_TIMEOUT, interval=0.5, what="this module's namespaces gone")


@contextlib.asynccontextmanager
async def _prepared(cluster: Cluster, *, gateway_api: bool) -> AsyncIterator[Cluster]:
    kube = cluster.kube
    await install_crds(kube)
    if gateway_api and not cluster.emulated:  # the emulator serves it built in
        await install_gateway_api(kube)
    if cluster.shared:
        await wait_for_garbage_collector(kube, cluster.suffix)
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": cluster.operator_namespace}}
    await kube.apply(ns, TEST_MANAGER)
    try:
        yield cluster
    finally:
        if cluster.shared:
            await cluster.delete_environments()
            await cluster.delete_namespaces()


@contextlib.asynccontextmanager
async def emulated_cluster(tmp: Path, *, gateway_api: bool = True) -> AsyncIterator[Cluster]:
    """A fresh emulator whose workload simulator makes Deployments available (pods Ready after 50 ms).

    ``gateway_api=False``: the emulator stops serving gateway.networking.k8s.io, like a cluster
    without the Gateway API CRDs.
    """
    async with ApiServer(port=0, simulate_workloads=True, simulator_delay=0.05) as srv:
        if not gateway_api:
            stop_serving_group(srv, GATEWAY_GROUP)
        path = srv.write_kubeconfig(tmp / "kubeconfig")
        async with (
            await KubeClient.from_kubeconfig(str(path)) as kube,
            _prepared(Cluster("emulator", kube, path, srv.faults, server=srv), gateway_api=gateway_api) as c,
        ):
            yield c


@contextlib.asynccontextmanager
async def real_cluster_at(
    kubeconfig: Path, tmp: Path, *, shared: bool = True, gateway_api: bool = True
) -> AsyncIterator[Cluster]:
    """A real cluster, with the operator's traffic through a fault proxy of this module.

    ``shared``: the session's cluster (names kept apart, everything deleted at the end) rather
    than one the caller started for itself.  ``gateway_api``: install the Gateway API CRDs.
    """
    async with (
        FaultProxy(kubeconfig, directory=tmp / "fault-proxy") as proxy,
        await KubeClient.from_kubeconfig(str(kubeconfig)) as kube,
    ):
        assert proxy.kubeconfig_path is not None
        cluster = Cluster("real", kube, proxy.kubeconfig_path, proxy.faults, shared=shared)
        async with _prepared(cluster, gateway_api=gateway_api) as c:
            yield c


def stop_serving_group(srv: ApiServer, group: str) -> None:
    """Make the emulator behave like a cluster without ``group`` (e.g. no Gateway API CRDs).

    ApiServer has no switch for this; its registry is what discovery and routing serve from,
    and discovery caches are keyed on the registry generation, so bump it.
    """
    for key in [k for k in srv.registry.by_gvr if k[0] == group]:
        del srv.registry.by_gvr[key]
    srv.registry.generation += 1


@contextlib.asynccontextmanager
async def running_operator(
    cluster: Cluster, *, secrets_factory: SecretsFactory | None = None, **overrides: Any
) -> AsyncIterator[OperatorConfig]:
    """The operator on ``cluster`` until the block ends.  On the shared cluster the module's
    Environments are deleted (and waited for) before it stops: their finalizers are handled,
    and no other module's operator ever sees them."""
    config = OperatorConfig(
        kubeconfig=str(cluster.kubeconfig),
        operator_namespace=cluster.operator_namespace,
        secrets_factory=secrets_factory,
        env_resync_seconds=overrides.pop("env_resync_seconds", 5.0),
        progressing_requeue_seconds=overrides.pop("progressing_requeue_seconds", 5.0),
        **overrides,
    )
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_operator(config, stop, ready), name="operator-under-test")
    try:
        done, _ = await asyncio.wait(
            {task, asyncio.create_task(ready.wait())}, timeout=30, return_when="FIRST_COMPLETED"
        )
        if task in done:
            task.result()  # surfaces the startup error
        try:
            yield config
        finally:
            if cluster.shared:
                await cluster.delete_environments()
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, timeout=20)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# The registry every test app's image comes from. An Environment without an allowlist admits no
# images (issue 12), so tests that do not care about the registry get this one.
TEST_REGISTRY = {"allowedPrefixes": ["registry.example.com/"]}


def environment(name: str, **spec: Any) -> dict[str, Any]:
    spec.setdefault("registry", TEST_REGISTRY)
    return {
        "apiVersion": "choreo.dev/v1alpha1",
        "kind": "Environment",
        "metadata": {"name": name},
        "spec": spec,
    }


def choreoapp(name: str, env: str, namespace: str | None = None, **spec: Any) -> dict[str, Any]:
    body = {
        "environment": env,
        "project": "shop",
        "type": "service",
        "image": "registry.example.com/shop/x:1",
    }
    body.update(spec)
    return {
        "apiVersion": "choreo.dev/v1alpha1",
        "kind": "ChoreoApp",
        "metadata": {"name": name, "namespace": namespace or f"choreo-{env}"},
        "spec": body,
    }


def declare_real_cluster(items: list[Any], param: str) -> None:
    """Tests whose ``param`` fixture is ``real`` run on the session's real cluster (they ask for
    ``real_cluster`` at setup): put it in their fixture closure, which the session's count of
    tests run against the real apiserver reads."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get(param) == "real":
            names = list(getattr(item, "fixturenames", ()))
            if "real_cluster" not in names:
                # A new list: parametrized items of one function share the closure list.
                item.fixturenames = [*names, "real_cluster"]
