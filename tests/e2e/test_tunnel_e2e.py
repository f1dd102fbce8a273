"""End to end: REST -> control plane -> TLS tunnel -> agent -> cluster -> operator -> Ready -> back.

The reference control plane (TLS from trustme), the agent and the operator, on loopback, against
each cluster target (``kube_faulty_target``): the emulated API with its workload simulator, and the
session's real cluster (kube-apiserver, kube-controller-manager, kube-scheduler, kwok nodes), where
the operator harness (``tests/operator/harness.py``) names the Environment and the operator's
namespace for this test and removes them afterwards; the dataplane is this test's too.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from choreo_cp.server import ControlPlaneServer
from choreo_dp.agent.agent import Agent, AgentConfig
from choreo_dp.agent.cluster import ANN_REVISION
from choreo_dp.api.environment import default_namespace
from choreo_dp.kube import resources as R
from tests.controlplane.conftest import make_server
from tests.controlplane.helpers import ADMIN_TOKEN, eventually
from tests.fixtures.kube import RealClusterProcess
from tests.operator.harness import Cluster, emulated_cluster, real_cluster_at, running_operator

# The real target's first use in a session waits for kube-controller-manager's garbage collector
# to learn the choreo.dev kinds (its discovery resync is 30 s); see harness.wait_for_garbage_collector.
pytestmark = pytest.mark.timeout(240)

APP = "orders"
ENV_SPEC: dict[str, Any] = {"displayName": "Dev", "registry": {"allowedPrefixes": ["ghcr.io/acme/"]}}
APP_SPEC: dict[str, Any] = {
    "project": "shop",
    "type": "service",
    "image": "ghcr.io/acme/orders:1.0",
    "replicas": 2,
    "endpoints": [{"name": "http", "port": 8080, "visibility": "Organization"}],
}


@contextlib.asynccontextmanager
async def tls_server(tmp_path: Path, port: int = 0) -> AsyncIterator[ControlPlaneServer]:
    ca_path = tmp_path / "ca.pem"
    if not ca_path.exists():
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1")
        ca.cert_pem.write_to_path(str(ca_path))
        cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
        cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    server = make_server(
        tmp_path / "cp.db", port=port, tls_cert=str(tmp_path / "cert.pem"), tls_key=str(tmp_path / "key.pem")
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def target_cluster(target: RealClusterProcess | None, tmp_path: Path) -> AsyncIterator[Cluster]:
    if target is None:
        async with emulated_cluster(tmp_path) as cluster:
            yield cluster
    else:
        async with real_cluster_at(target.kubeconfig, tmp_path) as cluster:
            yield cluster


@contextlib.asynccontextmanager
async def dataplane_removed(cluster: Cluster, dp: str) -> AsyncIterator[None]:
    """The DataPlane object the agent writes is cluster-scoped: delete it when the test ends."""
    try:
        yield
    finally:
        await cluster.kube.delete(R.DATAPLANES, dp)


async def test_push_to_ready_and_back_across_a_control_plane_restart(
    kube_faulty_target: RealClusterProcess | None, tmp_path: Path
) -> None:
    async with target_cluster(kube_faulty_target, tmp_path) as cluster:
        dp, env = cluster.env_name("edge"), cluster.env_name("dev")  # unique on the shared cluster
        async with dataplane_removed(cluster, dp), running_operator(cluster):
            await push_to_ready_and_back(cluster, dp, env, tmp_path)


async def push_to_ready_and_back(cluster: Cluster, dp: str, env: str, tmp_path: Path) -> None:
    cp_cm = tls_server(tmp_path)
    cp = await cp_cm.__aenter__()
    port = cp.port
    http = httpx.AsyncClient(
        base_url=cp.url,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        verify=ssl.create_default_context(cafile=str(tmp_path / "ca.pem")),
        timeout=10,
    )
    agent_stop = asyncio.Event()
    agent_task: asyncio.Task[None] | None = None
    try:
        token = (await http.put(f"/api/v1/dataplanes/{dp}")).json()["token"]
        (tmp_path / "dp-token").write_text(token + "\n")
        agent = Agent(
            AgentConfig(
                control_plane=f"wss://127.0.0.1:{port}",
                dataplane_id=dp,
                token_file=str(tmp_path / "dp-token"),
                ca_file=str(tmp_path / "ca.pem"),
                backoff_base=0.05,
                backoff_cap=0.5,
                proxy=None,
            ),
            cluster.kube,
        )
        agent_task = asyncio.create_task(agent.run(agent_stop))
        assert (
            await http.put(f"/api/v1/dataplanes/{dp}/environments/{env}", json={"spec": ENV_SPEC})
        ).status_code == 202
        r = await http.put(f"/api/v1/dataplanes/{dp}/environments/{env}/apps/{APP}", json={"spec": APP_SPEC})
        assert r.status_code == 202
        revision = r.json()["revision"]

        async def ready_upstream() -> bool:
            body = (await http.get(f"/api/v1/dataplanes/{dp}/environments/{env}/apps/{APP}")).json()
            status = body.get("status") or {}
            return status.get("phase") == "Ready" and status.get("ready") == "2/2"

        await eventually(ready_upstream, timeout=60, what="app Ready reported to the control plane")
        in_cluster = await cluster.kube.get(R.CHOREOAPPS, APP, default_namespace(env))
        assert in_cluster is not None and in_cluster["spec"]["image"] == APP_SPEC["image"]
        assert in_cluster["metadata"]["annotations"][ANN_REVISION] == str(revision)
        view = (await http.get(f"/api/v1/dataplanes/{dp}")).json()
        assert view["connected"] and view["appliedRevision"] == revision and view["inSync"]

        # restart the control plane on the same port and database: the agent comes back
        # incrementally and a change pushed afterwards still reaches the cluster
        await http.aclose()
        await cp_cm.__aexit__(None, None, None)
        cp_cm = tls_server(tmp_path, port=port)
        cp = await cp_cm.__aenter__()
        http = httpx.AsyncClient(
            base_url=cp.url,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            verify=ssl.create_default_context(cafile=str(tmp_path / "ca.pem")),
            timeout=10,
        )

        async def reconnected() -> bool:
            return bool((await http.get(f"/api/v1/dataplanes/{dp}")).json()["connected"])

        await eventually(reconnected, timeout=20, what="agent reconnected")
        starts = cp.cp.metrics.registry.get_sample_value(
            "choreo_cp_tunnel_session_starts_total", {"mode": "incremental"}
        )
        assert starts == 1.0
        r = await http.put(
            f"/api/v1/dataplanes/{dp}/environments/{env}/apps/{APP}",
            json={"spec": {**APP_SPEC, "image": "ghcr.io/acme/orders:1.1"}},
        )
        newer = r.json()["revision"]

        async def updated() -> bool:
            obj = await cluster.kube.get(R.CHOREOAPPS, APP, default_namespace(env))
            return bool(obj and obj["spec"]["image"].endswith(":1.1"))

        await eventually(updated, timeout=20, what="update applied in the cluster")

        async def acked() -> bool:
            return (await http.get(f"/api/v1/dataplanes/{dp}")).json()["appliedRevision"] == newer

        await eventually(acked, timeout=20, what="update acknowledged")

        r = await http.delete(f"/api/v1/dataplanes/{dp}/environments/{env}/apps/{APP}")
        assert r.status_code == 202

        async def gone() -> bool:
            return await cluster.kube.get(R.CHOREOAPPS, APP, default_namespace(env)) is None

        await eventually(gone, timeout=20, what="app deleted in the cluster")
    finally:
        agent_stop.set()
        if agent_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(agent_task, 10)
        await http.aclose()
        await cp_cm.__aexit__(None, None, None)
