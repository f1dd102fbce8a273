"""End to end through real kopf against the emulated API: one operator shared by the module."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from choreo_dp.kube import resources as R
from choreo_dp.operator.env_reconciler import RETAIN_FINALIZER
from choreo_dp.render.labels import ENVIRONMENT_LABEL, MANAGED_BY
from tests.operator.harness import (
    OPERATOR_NS,
    Cluster,
    choreoapp,
    emulated_cluster,
    environment,
    eventually,
    running_operator,
)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.emulator_only]

GATEWAYS = {
    "internal": {"gatewayName": "internal", "gatewayNamespace": "gw", "hostname": "*.internal.example.com"},
    "external": {"gatewayName": "external", "gatewayNamespace": "gw", "hostname": "api.example.com"},
}
DOCKERCONFIG = base64.b64encode(b'{"auths":{}}').decode()


class Env:
    def __init__(self, cluster: Cluster) -> None:
        self.c = cluster
        self.kube = cluster.kube

    def fail_pods(self, name: str, mode: str | None, namespace: str = "choreo-dev") -> None:
        """Switch the emulator's workload simulator to crash-loop / fail pulls for a Deployment."""
        self.c.server.simulator.set_pod_failure(namespace, name, mode)

    async def app(self, name: str, namespace: str = "choreo-dev") -> dict[str, Any]:
        app = await self.kube.get(R.CHOREOAPPS, name, namespace)
        assert app is not None
        return app

    async def phase(
        self, name: str, want: str, namespace: str = "choreo-dev", timeout: float = 15.0
    ) -> dict[str, Any]:
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

    async def gone(self, res: Any, name: str, namespace: str | None = "choreo-dev") -> bool:
        async def probe() -> bool:
            return await self.kube.get(res, name, namespace) is None

        return await eventually(probe, what=f"{res.kind} {name} deleted")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    tmp: Path = tmp_path_factory.mktemp("operator")
    async with emulated_cluster(tmp) as cluster:
        kube = cluster.kube
        pull = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "regcred", "namespace": OPERATOR_NS},
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": DOCKERCONFIG},
        }
        await kube.apply(pull, "test")
        async with running_operator(cluster):
            spec = {
                "registry": {"allowedPrefixes": ["registry.example.com/"], "pullSecretName": "regcred"},
                "gateways": GATEWAYS,
                "quota": {"cpu": "4", "memory": "8Gi", "pods": 40},
            }
            await kube.apply(environment("dev", **spec), "test")
            await eventually(lambda: kube.get(R.NAMESPACES, "choreo-dev"), what="namespace choreo-dev")
            yield Env(cluster)


async def test_environment_children_and_status(env: Env) -> None:
    kube = env.kube
    await kube.apply(choreoapp("counted", "dev", type="worker"), "test")

    async def ready() -> dict[str, Any] | None:
        e = await kube.get(R.ENVIRONMENTS, "dev")
        s = (e or {}).get("status") or {}
        return e if s.get("phase") == "Ready" and (s.get("apps") or 0) >= 1 else None

    e = await eventually(ready, what="environment Ready with apps")
    assert e["status"]["namespace"] == "choreo-dev"
    ns = await kube.get(R.NAMESPACES, "choreo-dev")
    assert ns is not None
    assert ns["metadata"]["labels"][MANAGED_BY] == "choreo-dp"
    assert ns["metadata"]["ownerReferences"][0]["uid"] == e["metadata"]["uid"]
    assert RETAIN_FINALIZER not in (e["metadata"].get("finalizers") or [])
    quota = await kube.get(R.RESOURCEQUOTAS, "choreo-quota", "choreo-dev")
    assert quota is not None and quota["spec"]["hard"]["pods"] == "40"
    assert await kube.get(R.LIMITRANGES, "choreo-defaults", "choreo-dev") is not None
    policies, _ = await kube.list(R.NETWORKPOLICIES, "choreo-dev")
    names = {p["metadata"]["name"] for p in policies}
    assert {"choreo-default-deny-ingress", "choreo-project-shop", "choreo-allow-external-gateway"} <= names
    sa = await kube.get(R.SERVICEACCOUNTS, "choreo-app", "choreo-dev")
    assert sa is not None and sa["automountServiceAccountToken"] is False
    assert sa["imagePullSecrets"] == [{"name": "regcred"}]
    copy = await kube.get(R.SECRETS, "regcred", "choreo-dev")
    assert copy is not None and copy["data"][".dockerconfigjson"] == DOCKERCONFIG


async def test_pull_secret_copy_follows_source(env: Env) -> None:
    new = base64.b64encode(b'{"auths":{"r":{}}}').decode()
    await env.kube.patch(R.SECRETS, "regcred", {"data": {".dockerconfigjson": new}}, OPERATOR_NS)

    async def synced() -> bool:
        copy = await env.kube.get(R.SECRETS, "regcred", "choreo-dev")
        return copy is not None and copy["data"][".dockerconfigjson"] == new

    await eventually(synced, timeout=20, what="pull secret copy updated")


async def test_service_public_and_organization_endpoints_become_ready(env: Env) -> None:
    eps = [
        {"name": "api", "port": 8080, "visibility": "Public", "basePath": "/v1"},
        {"name": "admin", "port": 9090, "visibility": "Organization"},
        {"name": "metrics", "port": 9100, "visibility": "Project"},
    ]
    await env.kube.apply(choreoapp("web", "dev", endpoints=eps, replicas=2), "test")
    app = await env.phase("web", "Ready")
    status = app["status"]
    assert status["ready"] == "2/2"
    assert status["image"].startswith("registry.example.com/shop/x@sha256:")
    urls = {e["name"]: e["url"] for e in status["endpoints"]}
    assert urls == {
        "api": "https://api.example.com/shop/web/api",
        "admin": "https://web-admin.internal.example.com/",
        "metrics": "http://web.choreo-dev.svc.cluster.local:9100/",
    }
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["Ready"]["status"] == "True" and conds["Exposed"]["status"] == "True"
    assert conds["SecretsSynced"]["status"] == "True"
    assert all(c["observedGeneration"] == app["metadata"]["generation"] for c in conds.values())
    dep = await env.kube.get(R.DEPLOYMENTS, "web", "choreo-dev")
    assert dep is not None and dep["spec"]["replicas"] == 2
    assert dep["metadata"]["ownerReferences"][0]["uid"] == app["metadata"]["uid"]
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    for route in ("web-api", "web-admin"):
        assert await env.kube.get(R.HTTPROUTES, route, "choreo-dev") is not None
    assert await env.kube.get(R.HTTPROUTES, "web-metrics", "choreo-dev") is None
    assert await env.kube.get(R.PDBS, "web", "choreo-dev") is not None
    svc = await env.kube.get(R.SERVICES, "web", "choreo-dev")
    assert svc is not None and len(svc["spec"]["ports"]) == 3


async def test_every_type(env: Env) -> None:
    kube = env.kube
    await kube.apply(
        choreoapp(
            "hook", "dev", type="webhook", endpoints=[{"name": "in", "port": 8080, "visibility": "Public"}]
        ),
        "test",
    )
    await kube.apply(choreoapp("consumer", "dev", type="worker"), "test")
    await kube.apply(choreoapp("nightly", "dev", type="scheduledTask", schedule="0 3 * * *"), "test")
    await kube.apply(choreoapp("migrate", "dev", type="manualTask"), "test")
    await env.phase("hook", "Ready")
    consumer = await env.phase("consumer", "Ready")
    assert consumer["status"]["ready"] == "1/1"
    assert await kube.get(R.SERVICES, "consumer", "choreo-dev") is None
    await env.phase("nightly", "Ready")
    cj = await kube.get(R.CRONJOBS, "nightly", "choreo-dev")
    assert (
        cj is not None
        and cj["spec"]["schedule"] == "0 3 * * *"
        and cj["spec"]["concurrencyPolicy"] == "Forbid"
    )
    await env.phase("migrate", "Ready")
    manual = await kube.get(R.CRONJOBS, "migrate", "choreo-dev")
    assert manual is not None and manual["spec"]["suspend"] is True


async def test_suspend_any_type(env: Env) -> None:
    kube = env.kube
    await kube.apply(choreoapp("pausable", "dev", type="worker", replicas=2), "test")
    await env.phase("pausable", "Ready")
    await kube.apply(choreoapp("pausable", "dev", type="worker", replicas=2, suspend=True), "test")
    app = await env.phase("pausable", "Suspended")
    assert app["status"]["ready"] == "0/0"
    dep = await kube.get(R.DEPLOYMENTS, "pausable", "choreo-dev")
    assert dep is not None and dep["spec"]["replicas"] == 0
    await env.gone(R.PDBS, "pausable")
    await kube.apply(
        choreoapp("nightly", "dev", type="scheduledTask", schedule="0 3 * * *", suspend=True), "test"
    )
    await env.phase("nightly", "Suspended")
    cj = await kube.get(R.CRONJOBS, "nightly", "choreo-dev")
    assert cj is not None and cj["spec"]["suspend"] is True


async def test_autoscaling_then_pruned(env: Env) -> None:
    kube = env.kube
    await kube.apply(choreoapp("scaled", "dev", autoscaling={"minReplicas": 2, "maxReplicas": 5}), "test")
    await env.phase("scaled", "Ready")
    assert await kube.get(R.HPAS, "scaled", "choreo-dev") is not None
    dep = await kube.get(R.DEPLOYMENTS, "scaled", "choreo-dev")
    assert dep is not None
    ours = [m for m in dep["metadata"].get("managedFields", []) if m.get("manager") == "choreo-dp-operator"]
    assert ours and "f:replicas" not in str(ours[0].get("fieldsV1", {}).get("f:spec", {}))
    # The applier simply stops sending autoscaling (the API drops the struct with its defaults).
    await kube.apply(choreoapp("scaled", "dev", replicas=1), "test")
    assert "autoscaling" not in (await env.app("scaled"))["spec"]
    await env.gone(R.HPAS, "scaled")
    await env.gone(R.PDBS, "scaled")
    await env.phase("scaled", "Ready")


async def test_endpoint_removal_prunes_route_and_service(env: Env) -> None:
    kube = env.kube
    ep = {"name": "api", "port": 8080, "visibility": "Public"}
    await kube.apply(choreoapp("shrink", "dev", endpoints=[ep]), "test")
    await env.phase("shrink", "Ready")
    assert await kube.get(R.HTTPROUTES, "shrink-api", "choreo-dev") is not None
    await kube.apply(choreoapp("shrink", "dev"), "test")
    await env.gone(R.HTTPROUTES, "shrink-api")
    await env.gone(R.SERVICES, "shrink")
    app = await env.phase("shrink", "Ready")
    assert app["status"].get("endpoints", []) == []


async def test_drift_is_repaired(env: Env) -> None:
    kube = env.kube
    await kube.apply(choreoapp("steady", "dev", endpoints=[{"name": "api", "port": 8080}]), "test")
    await env.phase("steady", "Ready")
    await kube.patch(
        R.DEPLOYMENTS,
        "steady",
        {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "evil/miner:1"}]}}}},
        "choreo-dev",
        "strategic",
    )

    async def restored() -> bool:
        dep = await kube.get(R.DEPLOYMENTS, "steady", "choreo-dev")
        return (
            dep is not None
            and dep["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example.com/shop/x:1"
        )

    await eventually(restored, timeout=10, what="deployment image restored")
    await kube.delete(R.SERVICES, "steady", "choreo-dev")
    await eventually(
        lambda: kube.get(R.SERVICES, "steady", "choreo-dev"), timeout=10, what="service recreated"
    )
    await kube.patch(
        R.NETWORKPOLICIES,
        "choreo-default-deny-ingress",
        {"spec": {"podSelector": {"matchLabels": {"x": "y"}}}},
        "choreo-dev",
    )

    async def policy_restored() -> bool:
        np = await kube.get(R.NETWORKPOLICIES, "choreo-default-deny-ingress", "choreo-dev")
        return np is not None and np["spec"]["policyTypes"] == ["Ingress"]

    await eventually(policy_restored, timeout=10, what="network policy restored")


async def test_policy_refusals_create_nothing(env: Env) -> None:
    kube = env.kube
    await kube.apply(choreoapp("miner", "dev", image="docker.io/evil/miner:1"), "test")
    app = await env.phase("miner", "Failed")
    assert (
        "ImageNotAllowed" in str(app["status"]["conditions"]) and "allowed prefix" in app["status"]["message"]
    )
    assert await kube.get(R.DEPLOYMENTS, "miner", "choreo-dev") is None
    await kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "elsewhere"}}, "test")
    await kube.apply(choreoapp("stray", "dev", namespace="elsewhere"), "test")
    stray = await env.phase("stray", "Failed", namespace="elsewhere")
    assert "does not belong" in stray["status"]["message"]
    assert await kube.get(R.DEPLOYMENTS, "stray", "elsewhere") is None
    # A running app whose new image is refused keeps running the old one, untouched.
    await kube.apply(
        choreoapp("steady", "dev", image="docker.io/evil/miner:2", endpoints=[{"name": "api", "port": 8080}]),
        "test",
    )
    await env.phase("steady", "Failed")
    dep = await kube.get(R.DEPLOYMENTS, "steady", "choreo-dev")
    assert (
        dep is not None
        and dep["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example.com/shop/x:1"
    )


async def test_invalid_app_does_not_block_others(env: Env) -> None:
    kube = env.kube
    bad = choreoapp("broken", "dev", type="service", schedule="0 3 * * *")  # schedule only for scheduledTask
    try:
        await kube.create(R.CHOREOAPPS, bad)
    except Exception:  # the API may refuse it via the CRD's CEL rules; then use an unknown environment
        await kube.apply(choreoapp("broken", "nowhere", namespace="choreo-dev"), "test")
    await kube.apply(choreoapp("neighbour", "dev", type="worker"), "test")
    await env.phase("neighbour", "Ready")
    broken = await env.app("broken")
    assert broken["status"]["phase"] in ("Failed", "Pending"), broken["status"]


async def test_crash_loop_and_image_pull_are_degraded(env: Env) -> None:
    kube = env.kube
    env.fail_pods("crashy", "CrashLoopBackOff")
    env.fail_pods("pully", "ImagePullBackOff")
    await kube.apply(choreoapp("crashy", "dev", type="worker"), "test")
    await kube.apply(choreoapp("pully", "dev", type="worker"), "test")
    crashy = await env.phase("crashy", "Degraded")
    assert "CrashLoopBackOff" in crashy["status"]["message"] and "restarts" in crashy["status"]["message"]
    assert crashy["status"]["ready"] == "0/1"
    pully = await env.phase("pully", "Degraded")
    assert "ImagePullBackOff" in pully["status"]["message"]
    env.fail_pods("crashy", None)
    await env.phase("crashy", "Ready")
    events, _ = await kube.list(R.EVENTS, "choreo-dev")
    assert any(e.get("reason") == "Degraded" and e["involvedObject"]["name"] == "pully" for e in events)


async def test_revision_annotation_is_reported(env: Env) -> None:
    body = choreoapp("revved", "dev", type="worker")
    body["metadata"]["annotations"] = {"choreo.dev/revision": "42"}
    await env.kube.apply(body, "choreo-dp-agent")
    app = await env.phase("revved", "Ready")
    assert app["status"]["revision"] == 42


async def test_environment_deletion_retain_and_delete(env: Env) -> None:
    kube = env.kube
    await kube.apply(environment("keep", deletionPolicy="Retain"), "test")
    await kube.apply(environment("drop"), "test")

    async def finalized() -> bool:
        e = await kube.get(R.ENVIRONMENTS, "keep")
        return e is not None and RETAIN_FINALIZER in (e["metadata"].get("finalizers") or [])

    await eventually(finalized, what="retain finalizer")
    await eventually(lambda: kube.get(R.SERVICEACCOUNTS, "choreo-app", "choreo-keep"), what="keep SA")
    await eventually(lambda: kube.get(R.SERVICEACCOUNTS, "choreo-app", "choreo-drop"), what="drop SA")
    await kube.delete(R.ENVIRONMENTS, "keep")
    await kube.delete(R.ENVIRONMENTS, "drop")
    await env.gone(R.ENVIRONMENTS, "keep", None)
    await env.gone(R.NAMESPACES, "choreo-drop", None)
    ns = await kube.get(R.NAMESPACES, "choreo-keep")
    assert ns is not None and MANAGED_BY not in (ns["metadata"].get("labels") or {})
    sa = await kube.get(R.SERVICEACCOUNTS, "choreo-app", "choreo-keep")
    assert sa is not None and not sa["metadata"].get("ownerReferences")
    assert ENVIRONMENT_LABEL not in (sa["metadata"].get("labels") or {})


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
    faults = env.c.server.faults
    faults.add(verb="patch", resource="deployments", status=429, count=3, retry_after=1)
    faults.add(verb="patch", resource="services", status=500, count=3)
    faults.add(verb="patch", resource="choreoapps/status", status=409, count=2)
    await env.kube.apply(choreoapp("faulty", "dev", endpoints=[{"name": "api", "port": 8080}]), "test")
    await env.phase("faulty", "Ready", timeout=30)
    # The client retries 429/5xx itself; what reaches the queue is retried with backoff: a handful, not hundreds.
    assert errors() - before < 10
