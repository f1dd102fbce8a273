"""End to end: a rollback through the real TLS tunnel, agent and operator, on the emulator and the
real cluster. Two images run Ready (the runtime's digests come back as status.image), the rollback
pushes the first spec again as a new revision pinned to the digest that ran it, and that spec
reaches the cluster and runs Ready again, reported upstream at the new revision."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from choreo_dp.agent.agent import Agent, AgentConfig
from choreo_dp.agent.cluster import ANN_REVISION
from choreo_dp.api.environment import default_namespace
from choreo_dp.kube import resources as R
from tests import polling
from tests.controlplane.helpers import ADMIN_TOKEN
from tests.e2e.test_tunnel_e2e import ENV_SPEC, dataplane_removed, target_cluster, tls_server
from tests.fixtures.kube import RealClusterProcess
from tests.operator.harness import Cluster, running_operator

pytestmark = pytest.mark.timeout(240)

# the cluster side takes seconds: poll gently on a machine shared with other suites
eventually = partial(polling.eventually, interval=0.2)

APP = "orders"
SPEC: dict[str, Any] = {
    "project": "shop",
    "type": "service",
    "image": "ghcr.io/acme/orders:1.0",
    "replicas": 1,
}


async def test_rollback_reaches_the_cluster_as_a_new_revision_pinned_to_the_digest(
    kube_faulty_target: RealClusterProcess | None, tmp_path: Path
) -> None:
    async with target_cluster(kube_faulty_target, tmp_path) as cluster:
        dp, env = cluster.env_name("hist"), cluster.env_name("dev")
        async with dataplane_removed(cluster, dp), running_operator(cluster):
            await roll_back(cluster, dp, env, tmp_path)


async def roll_back(cluster: Cluster, dp: str, env: str, tmp_path: Path) -> None:
    async with tls_server(tmp_path) as cp:
        http = httpx.AsyncClient(
            base_url=cp.url,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            verify=ssl.create_default_context(cafile=str(tmp_path / "ca.pem")),
            timeout=10,
        )
        agent_stop = asyncio.Event()
        agent_task: asyncio.Task[None] | None = None
        app_url = f"/api/v1/dataplanes/{dp}/environments/{env}/apps/{APP}"
        try:
            token = (await http.put(f"/api/v1/dataplanes/{dp}")).json()["token"]
            (tmp_path / "dp-token").write_text(token + "\n")
            agent = Agent(
                AgentConfig(
                    control_plane=f"wss://127.0.0.1:{cp.port}",
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
            r = await http.put(f"/api/v1/dataplanes/{dp}/environments/{env}", json={"spec": ENV_SPEC})
            assert r.status_code == 202, r.text

            async def ready_at(revision: int) -> dict[str, Any] | None:
                view = (await http.get(app_url)).json()
                status = view.get("status") or {}
                ok = status.get("phase") == "Ready" and status.get("revision") == revision
                return status if ok and "@sha256:" in str(status.get("image")) else None

            revs = []
            for tag in ("1.0", "1.1"):
                r = await http.put(app_url, json={"spec": {**SPEC, "image": f"ghcr.io/acme/orders:{tag}"}})
                assert r.status_code == 202, r.text
                revs.append(r.json()["objectRevision"])
                await eventually(lambda: ready_at(revs[-1]), timeout=60, what=f"{tag} Ready upstream")

            items = (await http.get(f"{app_url}/history")).json()["items"]
            assert [i["revision"] for i in items] == revs[::-1]
            digest = items[1]["digest"]
            assert isinstance(digest, str) and digest.startswith("sha256:"), items[1]
            assert items[0]["digest"] != digest  # each image ran with its own digest

            r = await http.post(f"{app_url}/rollback", json={"steps": 1})
            assert r.status_code == 202, r.text
            body = r.json()
            pinned = f"ghcr.io/acme/orders@{digest}"
            assert (body["rolledBackTo"], body["image"], body["pinned"]) == (revs[0], pinned, True)
            new_revision = body["objectRevision"]
            assert new_revision > revs[1]

            async def in_cluster() -> bool:
                obj = await cluster.kube.get(R.CHOREOAPPS, APP, default_namespace(env))
                return bool(
                    obj
                    and obj["spec"]["image"] == pinned
                    and obj["metadata"]["annotations"].get(ANN_REVISION) == str(new_revision)
                )

            await eventually(in_cluster, timeout=30, what="the rollback's spec in the cluster")
            status = await eventually(
                lambda: ready_at(new_revision), timeout=60, what="rollback Ready upstream"
            )
            assert status is not None and status["image"].endswith(f"@{digest}")
            newest = (await http.get(f"{app_url}/history")).json()["items"][0]
            assert (newest["revision"], newest["cause"], newest["rollbackOf"]) == (
                new_revision,
                "rollback",
                revs[0],
            )
            assert newest["digest"] == digest
        finally:
            agent_stop.set()
            if agent_task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(agent_task, 10)
            await http.aclose()
