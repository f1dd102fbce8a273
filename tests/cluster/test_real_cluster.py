"""The real control plane `choreo-dp sandbox cluster` starts is what the issue promises: the
release built here, RBAC and admission on, real controllers, kwok nodes, kubelet-like failures."""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import pytest
import pytest_asyncio

from choreo_dp.kube import ApiError, KubeClient
from choreo_dp.kube import resources as R
from choreo_dp.kube.config import load as load_kubeconfig
from choreo_sandbox.cluster.control_plane import KWOK_NODE_ANNOTATION, NODES
from choreo_sandbox.cluster.workload_faults import pod_verdict, set_pod_failure
from tests.conformance.helpers import deployment, unique
from tests.fixtures.kube import RealClusterProcess
from tests.polling import eventually

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(180)]


_until = partial(eventually, timeout=60.0, interval=0.2)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def kube(real_cluster: RealClusterProcess) -> AsyncIterator[KubeClient]:
    async with await KubeClient.from_kubeconfig(str(real_cluster.kubeconfig)) as k:
        yield k


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def ns(kube: KubeClient) -> AsyncIterator[str]:
    name = unique("realc")
    await kube.create(R.NAMESPACES, {"metadata": {"name": name}})
    await _until(lambda: kube.get(R.SERVICEACCOUNTS, "default", name), "the namespace's default SA")
    yield name
    await kube.delete(R.NAMESPACES, name)


async def test_serves_the_release_built_here_with_kwok_nodes(kube: KubeClient) -> None:
    version = await kube.request("GET", "/version")
    assert version["gitVersion"] == "v1.36.3" and version["major"] == "1" and version["minor"] == "36"
    # the emulator serves the Gateway API built in; the real cluster gets the pinned CRDs
    assert await kube.served("gateway.networking.k8s.io/v1")
    nodes, _ = await kube.list(NODES)
    assert len(nodes) >= 2
    for node in nodes:
        assert node["metadata"]["annotations"][KWOK_NODE_ANNOTATION] == "fake"
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}
        assert ready["Ready"] == "True"


async def test_rbac_is_enforced_for_service_accounts(kube: KubeClient, ns: str) -> None:
    """A token from the TokenRequest API for a ServiceAccount without bindings is refused."""
    await kube.create(R.SERVICEACCOUNTS, {"metadata": {"name": "nobody"}}, ns)
    req = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"expirationSeconds": 600},
    }
    token = (await kube.request("POST", f"/api/v1/namespaces/{ns}/serviceaccounts/nobody/token", body=req))[
        "status"
    ]["token"]
    cfg = dataclasses.replace(kube.config, token=token, client_cert_file=None, client_key_file=None)
    async with KubeClient(cfg, max_retries=0) as nobody:
        with pytest.raises(ApiError) as exc:
            await nobody.list(R.SECRETS, ns)
        assert exc.value.status == 403
        review = await nobody.request(
            "POST",
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        )
        assert review["status"]["userInfo"]["username"] == f"system:serviceaccount:{ns}:nobody"


async def test_deployment_pods_are_scheduled_onto_kwok_nodes_and_become_ready(
    kube: KubeClient, ns: str
) -> None:
    name = unique("web")
    await kube.create(R.DEPLOYMENTS, deployment(name, replicas=3), ns)

    async def available() -> dict[str, Any] | None:
        d = await kube.get(R.DEPLOYMENTS, name, ns)
        return d if (d or {}).get("status", {}).get("availableReplicas") == 3 else None

    await _until(available, "3 available replicas")
    pods, _ = await kube.list(R.PODS, ns, label_selector={"app": name})
    assert len(pods) == 3
    assert all(p["spec"]["nodeName"].startswith("kwok-node-") for p in pods)
    assert all(pod_verdict(p) == "healthy" and p["status"]["podIP"] for p in pods)
    # like a kubelet, the status names the digest that runs
    ids = {cs["imageID"] for p in pods for cs in p["status"]["containerStatuses"]}
    assert len(ids) == 1 and ids.pop().startswith("nginx@sha256:")


async def test_jobs_complete_and_garbage_collection_is_real(kube: KubeClient, ns: str) -> None:
    name = unique("job")
    job = {
        "metadata": {"name": name},
        "spec": {
            "template": {
                "spec": {"restartPolicy": "Never", "containers": [{"name": "run", "image": "busybox"}]}
            }
        },
    }
    await kube.create(R.JOBS, job, ns)

    async def complete() -> bool:
        j = await kube.get(R.JOBS, name, ns) or {}
        return any(
            c["type"] == "Complete" and c["status"] == "True"
            for c in j.get("status", {}).get("conditions", [])
        )

    await _until(complete, "the Job to complete")
    pods, _ = await kube.list(R.PODS, ns, label_selector={"job-name": name})
    assert [p["status"]["phase"] for p in pods] == ["Succeeded"]
    await kube.delete(R.JOBS, name, ns, propagation="Background")

    async def pods_collected() -> bool:
        left, _ = await kube.list(R.PODS, ns, label_selector={"job-name": name})
        return not left

    await _until(pods_collected, "the garbage collector to delete the Job's pods")


@pytest.mark.parametrize("mode", ["CrashLoopBackOff", "ImagePullBackOff"])
async def test_kubelet_like_failures_come_from_kwok_stages(kube: KubeClient, ns: str, mode: str) -> None:
    name = unique("fail")
    await kube.create(R.DEPLOYMENTS, deployment(name, replicas=2), ns)
    await set_pod_failure(kube, ns, name, mode)
    pods, _ = await kube.list(R.PODS, ns, label_selector={"app": name})
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    assert len(live) == 2 and {pod_verdict(p) for p in live} == {mode}
    expected_phase = "Pending" if mode == "ImagePullBackOff" else "Running"
    assert {p["status"]["phase"] for p in live} == {expected_phase}
    dep = await kube.get(R.DEPLOYMENTS, name, ns)
    assert dep is not None and not dep["status"].get("availableReplicas")

    await set_pod_failure(kube, ns, name, None)

    async def healed() -> bool:
        d = await kube.get(R.DEPLOYMENTS, name, ns) or {}
        return d.get("status", {}).get("availableReplicas") == 2

    await _until(healed, "the Deployment to become available again")


async def test_admin_kubeconfig_is_self_contained(real_cluster: RealClusterProcess) -> None:
    """The kubeconfig handed out embeds its certificates, so it works copied anywhere."""
    cfg = load_kubeconfig(str(real_cluster.kubeconfig))
    assert cfg.server.startswith("https://127.0.0.1:")
    text = real_cluster.kubeconfig.read_text()
    assert "certificate-authority-data" in text and "client-key-data" in text
    assert base64.b64decode(text.split("client-certificate-data: ")[1].split()[0]).startswith(b"-----BEGIN")
