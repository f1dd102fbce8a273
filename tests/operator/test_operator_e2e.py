"""End to end through real kopf, on the emulated API and on a real cluster: one operator per module."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from choreo_dp.kube import resources as R
from choreo_dp.operator.env_reconciler import RETAIN_FINALIZER
from choreo_dp.render.environment import DEFAULT_LIMITS, DEFAULT_REQUESTS
from choreo_dp.render.labels import ENVIRONMENT_LABEL, MANAGED_BY
from tests.operator.harness import (
    Cluster,
    choreoapp,
    environment,
    eventually,
    running_operator,
)

pytestmark = [pytest.mark.asyncio(loop_scope="module")]

GATEWAYS = {
    "internal": {"gatewayName": "internal", "gatewayNamespace": "gw", "hostname": "*.internal.example.com"},
    "external": {"gatewayName": "external", "gatewayNamespace": "gw", "hostname": "api.example.com"},
}
DOCKERCONFIG = base64.b64encode(b'{"auths":{}}').decode()


class Env:
    """The module's Environment ``dev`` (named per module: see harness) and helpers around it."""

    def __init__(self, cluster: Cluster) -> None:
        self.c = cluster
        self.kube = cluster.kube
        self.dev = cluster.env_name("dev")
        self.ns = f"choreo-{self.dev}"
        self.operator_ns = cluster.operator_namespace

    async def fail_pods(self, name: str, mode: str | None, namespace: str | None = None) -> None:
        """Make a Deployment's pods crash-loop / fail pulls (None: heal), as a kubelet would report."""
        await self.c.fail_pods(namespace or self.ns, name, mode)

    async def app(self, name: str, namespace: str | None = None) -> dict[str, Any]:
        app = await self.kube.get(R.CHOREOAPPS, name, namespace or self.ns)
        assert app is not None
        return app

    async def phase(
        self, name: str, want: str, namespace: str | None = None, timeout: float = 15.0
    ) -> dict[str, Any]:
        namespace = namespace or self.ns

        async def probe() -> dict[str, Any] | None:
            app = await self.app(name, namespace)
            status = app.get("status") or {}
            gen = app["metadata"].get("generation")
            return app if status.get("phase") == want and status.get("observedGeneration") == gen else None

        try:
            return await eventually(probe, timeout=timeout, what=f"{namespace}/{name} phase {want}")
        except AssertionError as exc:
            app = await self.app(name, namespace)
            dep = await self.kube.get(R.DEPLOYMENTS, name, namespace)
            raise AssertionError(
                f"{exc}; status: {app.get('status')}; deployment: {dep and (dep['metadata'].get('generation'), dep.get('status'))}"
            ) from None

    async def gone(self, res: Any, name: str, namespace: str | None = "") -> bool:
        """Wait until the object is deleted (``namespace=""``: the module's env namespace)."""
        ns = self.ns if namespace == "" else namespace

        async def probe() -> bool:
            return await self.kube.get(res, name, ns) is None

        return await eventually(probe, what=f"{res.kind} {name} deleted")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def env(operator_cluster: Cluster) -> AsyncIterator[Env]:
    cluster = operator_cluster
    kube = cluster.kube
    e = Env(cluster)
    pull = {
        "apiVersion": "v1",
        "kind": "Secret",
        # Opted in: only labelled dockerconfigjson Secrets are ever copied.
        "metadata": {
            "name": "regcred",
            "namespace": e.operator_ns,
            "labels": {"choreo.dev/pull-secret": "true"},
        },
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": DOCKERCONFIG},
    }
    await kube.apply(pull, "test")
    async with running_operator(cluster):
        spec = {
            "registry": {"allowedPrefixes": ["registry.example.com/"], "pullSecretName": "regcred"},
            "gateways": GATEWAYS,
            # Sized for every pod this module runs at once (LimitRange defaults: 500m, 512Mi each):
            # a real ResourceQuota refuses the pod that would exceed it.
            "quota": {"cpu": "16", "memory": "16Gi", "pods": 40},
        }
        await kube.apply(environment(e.dev, **spec), "test")
        await eventually(lambda: kube.get(R.NAMESPACES, e.ns), what=f"namespace {e.ns}")
        yield e


async def test_environment_children_and_status(env: Env) -> None:
    kube = env.kube
    await kube.apply(choreoapp("counted", env.dev, type="worker"), "test")

    async def ready() -> dict[str, Any] | None:
        e = await kube.get(R.ENVIRONMENTS, env.dev)
        s = (e or {}).get("status") or {}
        return e if s.get("phase") == "Ready" and (s.get("apps") or 0) >= 1 else None

    e = await eventually(ready, what="environment Ready with apps")
    assert e["status"]["namespace"] == env.ns
    ns = await kube.get(R.NAMESPACES, env.ns)
    assert ns is not None
    assert ns["metadata"]["labels"][MANAGED_BY] == "choreo-dp"
    assert ns["metadata"]["ownerReferences"][0]["uid"] == e["metadata"]["uid"]
    assert RETAIN_FINALIZER not in (e["metadata"].get("finalizers") or [])
    quota = await kube.get(R.RESOURCEQUOTAS, "choreo-quota", env.ns)
    assert quota is not None and quota["spec"]["hard"]["pods"] == "40"
    assert await kube.get(R.LIMITRANGES, "choreo-defaults", env.ns) is not None
    policies, _ = await kube.list(R.NETWORKPOLICIES, env.ns)
    names = {p["metadata"]["name"] for p in policies}
    assert {"choreo-default-deny-ingress", "choreo-project-shop", "choreo-allow-external-gateway"} <= names
    sa = await kube.get(R.SERVICEACCOUNTS, "choreo-app", env.ns)
    assert sa is not None and sa["automountServiceAccountToken"] is False
    assert sa["imagePullSecrets"] == [{"name": "regcred"}]
    copy = await kube.get(R.SECRETS, "regcred", env.ns)
    assert copy is not None and copy["data"][".dockerconfigjson"] == DOCKERCONFIG


async def test_pull_secret_copy_follows_source(env: Env) -> None:
    new = base64.b64encode(b'{"auths":{"r":{}}}').decode()
    await env.kube.patch(R.SECRETS, "regcred", {"data": {".dockerconfigjson": new}}, env.operator_ns)

    async def synced() -> bool:
        copy = await env.kube.get(R.SECRETS, "regcred", env.ns)
        return copy is not None and copy["data"][".dockerconfigjson"] == new

    await eventually(synced, timeout=20, what="pull secret copy updated")


async def test_service_public_and_organization_endpoints_become_ready(env: Env) -> None:
    eps = [
        {"name": "api", "port": 8080, "visibility": "Public", "basePath": "/v1"},
        {"name": "admin", "port": 9090, "visibility": "Organization"},
        {"name": "metrics", "port": 9100, "visibility": "Project"},
    ]
    await env.kube.apply(choreoapp("web", env.dev, endpoints=eps, replicas=2), "test")
    app = await env.phase("web", "Ready")
    status = app["status"]
    assert status["ready"] == "2/2"
    urls = {e["name"]: e["url"] for e in status["endpoints"]}
    assert urls == {
        "api": "https://api.example.com/shop/web/api",
        "admin": "https://web-admin.internal.example.com/",
        "metrics": f"http://web.{env.ns}.svc.cluster.local:9100/",
    }
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["Ready"]["status"] == "True" and conds["Exposed"]["status"] == "True"
    assert conds["SecretsSynced"]["status"] == "True"
    assert all(c["observedGeneration"] == app["metadata"]["generation"] for c in conds.values())
    dep = await env.kube.get(R.DEPLOYMENTS, "web", env.ns)
    assert dep is not None and dep["spec"]["replicas"] == 2
    assert dep["metadata"]["ownerReferences"][0]["uid"] == app["metadata"]["uid"]
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    for route in ("web-api", "web-admin"):
        assert await env.kube.get(R.HTTPROUTES, route, env.ns) is not None
    assert await env.kube.get(R.HTTPROUTES, "web-metrics", env.ns) is None
    assert await env.kube.get(R.PDBS, "web", env.ns) is not None
    svc = await env.kube.get(R.SERVICES, "web", env.ns)
    assert svc is not None and len(svc["spec"]["ports"]) == 3


async def test_status_image_is_the_digest_that_runs(env: Env) -> None:
    """``status.image`` is what runs: the digest the kubelet resolved (``imageID``), not the tag."""
    await env.kube.apply(choreoapp("pinned", env.dev, type="worker"), "test")
    app = await env.phase("pinned", "Ready")
    assert app["status"]["image"].startswith("registry.example.com/shop/x@sha256:"), app["status"]


async def test_every_type(env: Env) -> None:
    kube = env.kube
    await kube.apply(
        choreoapp(
            "hook", env.dev, type="webhook", endpoints=[{"name": "in", "port": 8080, "visibility": "Public"}]
        ),
        "test",
    )
    await kube.apply(choreoapp("consumer", env.dev, type="worker"), "test")
    await kube.apply(choreoapp("nightly", env.dev, type="scheduledTask", schedule="0 3 * * *"), "test")
    await kube.apply(choreoapp("migrate", env.dev, type="manualTask"), "test")
    await env.phase("hook", "Ready")
    consumer = await env.phase("consumer", "Ready")
    assert consumer["status"]["ready"] == "1/1"
    assert await kube.get(R.SERVICES, "consumer", env.ns) is None
    await env.phase("nightly", "Ready")
    cj = await kube.get(R.CRONJOBS, "nightly", env.ns)
    assert (
        cj is not None
        and cj["spec"]["schedule"] == "0 3 * * *"
        and cj["spec"]["concurrencyPolicy"] == "Forbid"
    )
    await env.phase("migrate", "Ready")
    manual = await kube.get(R.CRONJOBS, "migrate", env.ns)
    assert manual is not None and manual["spec"]["suspend"] is True


async def test_suspend_any_type(env: Env) -> None:
    kube = env.kube
    await kube.apply(choreoapp("pausable", env.dev, type="worker", replicas=2), "test")
    await env.phase("pausable", "Ready")
    await kube.apply(choreoapp("pausable", env.dev, type="worker", replicas=2, suspend=True), "test")
    app = await env.phase("pausable", "Suspended")
    assert app["status"]["ready"] == "0/0"
    dep = await kube.get(R.DEPLOYMENTS, "pausable", env.ns)
    assert dep is not None and dep["spec"]["replicas"] == 0
    await env.gone(R.PDBS, "pausable")
    await kube.apply(
        choreoapp("nightly", env.dev, type="scheduledTask", schedule="0 3 * * *", suspend=True), "test"
    )
    await env.phase("nightly", "Suspended")
    cj = await kube.get(R.CRONJOBS, "nightly", env.ns)
    assert cj is not None and cj["spec"]["suspend"] is True


async def test_autoscaling_then_pruned(env: Env) -> None:
    kube = env.kube
    await kube.apply(choreoapp("scaled", env.dev, autoscaling={"minReplicas": 2, "maxReplicas": 5}), "test")
    await env.phase("scaled", "Ready")
    assert await kube.get(R.HPAS, "scaled", env.ns) is not None
    dep = await kube.get(R.DEPLOYMENTS, "scaled", env.ns)
    assert dep is not None
    ours = [m for m in dep["metadata"].get("managedFields", []) if m.get("manager") == "choreo-dp-operator"]
    assert ours and "f:replicas" not in str(ours[0].get("fieldsV1", {}).get("f:spec", {}))
    # The applier simply stops sending autoscaling (the API drops the struct with its defaults).
    await kube.apply(choreoapp("scaled", env.dev, replicas=1), "test")
    assert "autoscaling" not in (await env.app("scaled"))["spec"]
    await env.gone(R.HPAS, "scaled")
    await env.gone(R.PDBS, "scaled")
    await env.phase("scaled", "Ready")


async def test_endpoint_removal_prunes_route_and_service(env: Env) -> None:
    kube = env.kube
    ep = {"name": "api", "port": 8080, "visibility": "Public"}
    await kube.apply(choreoapp("shrink", env.dev, endpoints=[ep]), "test")
    await env.phase("shrink", "Ready")
    assert await kube.get(R.HTTPROUTES, "shrink-api", env.ns) is not None
    await kube.apply(choreoapp("shrink", env.dev), "test")
    await env.gone(R.HTTPROUTES, "shrink-api")
    await env.gone(R.SERVICES, "shrink")
    app = await env.phase("shrink", "Ready")
    assert app["status"].get("endpoints", []) == []


async def test_drift_is_repaired(env: Env) -> None:
    kube = env.kube
    await kube.apply(choreoapp("steady", env.dev, endpoints=[{"name": "api", "port": 8080}]), "test")
    await env.phase("steady", "Ready")
    await kube.patch(
        R.DEPLOYMENTS,
        "steady",
        {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "evil/miner:1"}]}}}},
        env.ns,
        "strategic",
    )

    async def restored() -> bool:
        dep = await kube.get(R.DEPLOYMENTS, "steady", env.ns)
        return (
            dep is not None
            and dep["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example.com/shop/x:1"
        )

    await eventually(restored, timeout=10, what="deployment image restored")
    await kube.delete(R.SERVICES, "steady", env.ns)
    await eventually(lambda: kube.get(R.SERVICES, "steady", env.ns), timeout=10, what="service recreated")
    await kube.patch(
        R.NETWORKPOLICIES,
        "choreo-default-deny-ingress",
        {"spec": {"podSelector": {"matchLabels": {"x": "y"}}}},
        env.ns,
    )

    async def policy_restored() -> bool:
        np = await kube.get(R.NETWORKPOLICIES, "choreo-default-deny-ingress", env.ns)
        return np is not None and np["spec"]["policyTypes"] == ["Ingress"]

    await eventually(policy_restored, timeout=10, what="network policy restored")


async def test_policy_refusals_create_nothing(env: Env) -> None:
    kube = env.kube
    await kube.apply(choreoapp("miner", env.dev, image="docker.io/evil/miner:1"), "test")
    app = await env.phase("miner", "Failed")
    assert (
        "ImageNotAllowed" in str(app["status"]["conditions"])
        and "not under any of registry.allowedPrefixes" in app["status"]["message"]
    )
    assert await kube.get(R.DEPLOYMENTS, "miner", env.ns) is None
    elsewhere = env.c.namespace("elsewhere")
    await kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": elsewhere}}, "test")
    await kube.apply(choreoapp("stray", env.dev, namespace=elsewhere), "test")
    stray = await env.phase("stray", "Failed", namespace=elsewhere)
    assert "does not belong" in stray["status"]["message"]
    assert await kube.get(R.DEPLOYMENTS, "stray", elsewhere) is None
    # A running app whose new image is refused keeps running the old one, untouched.
    await kube.apply(
        choreoapp(
            "steady", env.dev, image="docker.io/evil/miner:2", endpoints=[{"name": "api", "port": 8080}]
        ),
        "test",
    )
    await env.phase("steady", "Failed")
    dep = await kube.get(R.DEPLOYMENTS, "steady", env.ns)
    assert (
        dep is not None
        and dep["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example.com/shop/x:1"
    )


async def test_invalid_app_does_not_block_others(env: Env) -> None:
    kube = env.kube
    bad = choreoapp(
        "broken", env.dev, type="service", schedule="0 3 * * *"
    )  # schedule only for scheduledTask
    try:
        await kube.create(R.CHOREOAPPS, bad)
    except Exception:  # the API may refuse it via the CRD's CEL rules; then use an unknown environment
        await kube.apply(choreoapp("broken", env.c.env_name("nowhere"), namespace=env.ns), "test")
    await kube.apply(choreoapp("neighbour", env.dev, type="worker"), "test")
    await env.phase("neighbour", "Ready")
    broken = await env.app("broken")
    assert broken["status"]["phase"] in ("Failed", "Pending"), broken["status"]


async def test_crash_loop_and_image_pull_are_degraded(env: Env) -> None:
    kube = env.kube
    await kube.apply(choreoapp("crashy", env.dev, type="worker"), "test")
    await kube.apply(choreoapp("pully", env.dev, type="worker"), "test")
    await env.fail_pods("crashy", "CrashLoopBackOff")
    await env.fail_pods("pully", "ImagePullBackOff")
    crashy = await env.phase("crashy", "Degraded")
    assert "CrashLoopBackOff" in crashy["status"]["message"] and "restarts" in crashy["status"]["message"]
    assert crashy["status"]["ready"] == "0/1"
    pully = await env.phase("pully", "Degraded")
    assert "ImagePullBackOff" in pully["status"]["message"]
    await env.fail_pods("crashy", None)
    await env.phase("crashy", "Ready")
    events, _ = await kube.list(R.EVENTS, env.ns)
    assert any(e.get("reason") == "Degraded" and e["involvedObject"]["name"] == "pully" for e in events)


async def test_pods_without_resources_get_the_environment_defaults(
    env: Env, request: pytest.FixtureRequest
) -> None:
    """The LimitRange the Environment installs fills in what a container leaves out, which is
    what lets a quota on requests and limits admit such pods at all."""
    await env.kube.apply(choreoapp("plain", env.dev, type="worker"), "test")
    await env.phase("plain", "Ready")
    pods, _ = await env.kube.list(R.PODS, env.ns, label_selector="choreo.dev/app=plain")
    assert pods
    for pod in pods:
        assert pod["spec"]["containers"][0].get("resources") == {
            "limits": DEFAULT_LIMITS,
            "requests": DEFAULT_REQUESTS,
        }


async def test_pods_the_quota_refuses_make_the_app_degraded(env: Env, request: pytest.FixtureRequest) -> None:
    kube = env.kube
    tight = env.c.env_name("tight")
    await kube.apply(environment(tight, quota={"pods": 1}), "test")
    await eventually(lambda: kube.get(R.RESOURCEQUOTAS, "choreo-quota", f"choreo-{tight}"), what="quota")
    await kube.apply(choreoapp("greedy", tight, type="worker", replicas=2), "test")

    async def settled() -> dict[str, Any] | None:
        app = await env.app("greedy", f"choreo-{tight}")
        status = app.get("status") or {}
        # Only the quota's refusal counts, not a Degraded for a passing reason (a ReplicaSet's
        # first pod can also be refused before the namespace's ServiceAccount exists).
        refused = status.get("phase") == "Degraded" and "exceeded quota" in status.get("message", "")
        # ... once the one pod the quota admits is Ready too (it is scheduled and started meanwhile).
        return app if (refused and status.get("ready") == "1/2") or status.get("phase") == "Ready" else None

    # The real ReplicaSet controller retries a refused pod with backoff, and the admitted pod has
    # to be scheduled and started: on a loaded machine that takes longer than the default wait.
    app = await eventually(
        settled, what="greedy refused by the quota, its one pod Ready (or all Ready)", timeout=60
    )
    status = app["status"]
    assert status["phase"] == "Degraded", status
    assert "exceeded quota" in status["message"] and status["ready"] == "1/2"


async def test_revision_annotation_is_reported(env: Env) -> None:
    body = choreoapp("revved", env.dev, type="worker")
    body["metadata"]["annotations"] = {"choreo.dev/revision": "42"}
    await env.kube.apply(body, "choreo-dp-agent")
    app = await env.phase("revved", "Ready")
    assert app["status"]["revision"] == 42


async def test_environment_deletion_retain_and_delete(env: Env) -> None:
    kube = env.kube
    keep, drop = env.c.env_name("keep"), env.c.env_name("drop")
    await kube.apply(environment(keep, deletionPolicy="Retain"), "test")
    await kube.apply(environment(drop), "test")

    async def finalized() -> bool:
        e = await kube.get(R.ENVIRONMENTS, keep)
        return e is not None and RETAIN_FINALIZER in (e["metadata"].get("finalizers") or [])

    await eventually(finalized, what="retain finalizer")
    await eventually(lambda: kube.get(R.SERVICEACCOUNTS, "choreo-app", f"choreo-{keep}"), what="keep SA")
    await eventually(lambda: kube.get(R.SERVICEACCOUNTS, "choreo-app", f"choreo-{drop}"), what="drop SA")
    await kube.delete(R.ENVIRONMENTS, keep)
    await kube.delete(R.ENVIRONMENTS, drop)
    await env.gone(R.ENVIRONMENTS, keep, None)
    await env.gone(R.NAMESPACES, f"choreo-{drop}", None)
    ns = await kube.get(R.NAMESPACES, f"choreo-{keep}")
    assert ns is not None and MANAGED_BY not in (ns["metadata"].get("labels") or {})
    sa = await kube.get(R.SERVICEACCOUNTS, "choreo-app", f"choreo-{keep}")
    assert sa is not None and not sa["metadata"].get("ownerReferences")
    assert ENVIRONMENT_LABEL not in (sa["metadata"].get("labels") or {})


async def test_environment_put_back_at_once_waits_for_its_old_namespace(env: Env) -> None:
    """Deleted, then put back before its namespace is gone (the agent restores what another writer
    deleted): the namespace controller needs seconds to empty the old namespace, and nothing can
    be created in it meanwhile.  The Environment says so, then gets a fresh namespace."""
    import time

    kube = env.kube
    name = env.c.env_name("again")
    ns = f"choreo-{name}"
    await kube.apply(environment(name, quota={"pods": 10}), "test")
    await eventually(lambda: kube.get(R.RESOURCEQUOTAS, "choreo-quota", ns), what="first namespace")
    await kube.apply(choreoapp("w", name, type="worker"), "test")
    await env.phase("w", "Ready", namespace=ns)
    old = await kube.get(R.ENVIRONMENTS, name)
    assert old is not None
    await kube.delete(R.ENVIRONMENTS, name)
    await env.gone(R.ENVIRONMENTS, name, None)
    await kube.apply(environment(name, quota={"pods": 10}), "test")

    # While the old namespace is terminating, whatever the operator says must be that; if that
    # lasts (it does on a real cluster), it must say it.
    terminating_since: float | None = None
    said: set[tuple[str | None, str | None]] = set()

    async def back() -> dict[str, Any] | None:
        nonlocal terminating_since
        e = await kube.get(R.ENVIRONMENTS, name)
        n = await kube.get(R.NAMESPACES, ns)
        assert e is not None and e["metadata"]["uid"] != old["metadata"]["uid"]
        status = e.get("status") or {}
        ready: dict[str, Any] = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})
        if n is not None and n["metadata"].get("deletionTimestamp"):
            terminating_since = terminating_since or time.monotonic()
            said.add((status.get("phase"), ready.get("reason")))
            if time.monotonic() - terminating_since > 3:
                assert ("Pending", "NamespaceTerminating") in said, said
            return None
        fresh = n is not None and [o["uid"] for o in n["metadata"].get("ownerReferences") or []] == [
            e["metadata"]["uid"]
        ]
        return e if fresh and status.get("phase") == "Ready" else None

    # The old namespace's pods end through kwok and its objects through the namespace controller.
    e = await eventually(back, timeout=60, interval=0.2, what="the Environment back with a fresh namespace")
    assert said <= {(None, None), ("Pending", "NamespaceTerminating")}, said
    assert e["status"]["namespace"] == ns
    assert await kube.get(R.RESOURCEQUOTAS, "choreo-quota", ns) is not None
    assert await kube.get(R.SERVICEACCOUNTS, "choreo-app", ns) is not None


async def test_api_faults_converge_without_hot_loops(env: Env) -> None:
    from prometheus_client import REGISTRY

    def errors() -> float:
        return (
            REGISTRY.get_sample_value(
                "controller_runtime_reconcile_errors_total", {"controller": "choreoapp"}
            )
            or 0.0
        )

    before = errors()
    # On the operator's traffic only: the emulator's own, or the fault proxy the real target's
    # operator talks through.
    faults = env.c.faults
    ns = env.ns
    rules = [
        faults.add(
            verb="patch",
            resource="deployments",
            status=429,
            count=3,
            retry_after=1,
            namespace=ns,
            name="faulty",
        ),
        faults.add(verb="patch", resource="services", status=500, count=3, namespace=ns, name="faulty"),
        faults.add(
            verb="patch", resource="choreoapps/status", status=409, count=2, namespace=ns, name="faulty"
        ),
    ]
    await env.kube.apply(choreoapp("faulty", env.dev, endpoints=[{"name": "api", "port": 8080}]), "test")
    await env.phase("faulty", "Ready", timeout=30)
    assert all(r.hits > 0 for r in rules), rules
    # The client retries 429/5xx itself; what reaches the queue is retried with backoff: a handful, not hundreds.
    assert errors() - before < 10
