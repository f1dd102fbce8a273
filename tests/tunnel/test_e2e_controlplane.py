"""End to end: REST push to the reference control plane -> tunnel (TLS) -> agent -> cluster (the
emulated API and the real kube-apiserver) -> status back in the control plane's REST view."""

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

from choreo_cp.context import TunnelSettings
from choreo_cp.server import ControlPlaneServer, ServerConfig
from choreo_dp.agent.agent import Agent, AgentConfig
from choreo_dp.agent.cluster import ANN_ORPHANED
from choreo_dp.kube import KubeClient
from choreo_dp.kube import resources as R
from tests.tunnel.conftest import Names, eventually

pytestmark = pytest.mark.timeout(90)

ADMIN = "admin-token-e2e-0123456789abcdef"
ENV_SPEC: dict[str, Any] = {"displayName": "Dev", "registry": {"allowedPrefixes": ["ghcr.io/acme/"]}}


def app_spec(names: Names) -> dict[str, Any]:
    return {
        "environment": names.env,
        "project": "shop",
        "type": "service",
        "image": "ghcr.io/acme/shop:1",
        "replicas": 1,
    }


@pytest.fixture
def cp_tls(ca: trustme.CA, tmp_path: Path) -> dict[str, str]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cp.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "cp.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "cp-ca.pem"))
    return {
        "cert": str(tmp_path / "cp.pem"),
        "key": str(tmp_path / "cp.key"),
        "ca": str(tmp_path / "cp-ca.pem"),
    }


def make_cp(db: Path, tls: dict[str, str], port: int = 0) -> ControlPlaneServer:
    return ControlPlaneServer(
        ServerConfig(
            host="127.0.0.1",
            port=port,
            db=db,
            admin_token=ADMIN,
            tls_cert=tls["cert"],
            tls_key=tls["key"],
            tunnel=TunnelSettings(heartbeat_interval=5.0, idle_timeout=30.0, status_flush_interval=0.05),
            synchronous="NORMAL",
        )
    )


@contextlib.asynccontextmanager
async def rest(cp: ControlPlaneServer, tls: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=cp.url,
        headers={"Authorization": f"Bearer {ADMIN}"},
        verify=ssl.create_default_context(cafile=tls["ca"]),
        timeout=10,
    ) as client:
        yield client


async def register(http: httpx.AsyncClient, token_file: Path, names: Names) -> None:
    r = await http.put(f"/api/v1/dataplanes/{names.dp}")
    assert r.status_code in (200, 201), r.text
    await asyncio.to_thread(token_file.write_text, r.json()["token"] + "\n")


@contextlib.asynccontextmanager
async def agent_running(
    cp: ControlPlaneServer, kube: KubeClient, token: Path, ca: str, names: Names
) -> AsyncIterator[Agent]:
    cfg = AgentConfig(
        control_plane=f"wss://127.0.0.1:{cp.port}",
        dataplane_id=names.dp,
        token_file=str(token),
        ca_file=ca,
        backoff_base=0.05,
        backoff_cap=0.3,
        unauthorized_backoff=1.0,
        proxy=None,
    )
    agent = Agent(cfg, kube)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        yield agent
    finally:
        stop.set()
        # the agent's own shutdown steps are each bounded (session close 2 s, the closing handshake
        # 2 s, the Stopped write 5 s, ...); on a loaded machine they may add up past 10 s
        await asyncio.wait_for(task, 30)


async def dp_view(http: httpx.AsyncClient, names: Names) -> dict[str, Any]:
    r = await http.get(f"/api/v1/dataplanes/{names.dp}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def in_sync(http: httpx.AsyncClient, names: Names) -> bool:
    return bool((await dp_view(http, names))["inSync"])


async def test_push_to_cluster_and_ready_status_back(
    kube: KubeClient, tmp_path: Path, cp_tls: dict[str, str], names: Names
) -> None:
    token = tmp_path / "dp-token"
    cp = make_cp(tmp_path / "cp.db", cp_tls)
    await cp.start()
    try:
        async with rest(cp, cp_tls) as http:
            await register(http, token, names)
            r = await http.put(
                f"/api/v1/dataplanes/{names.dp}/environments/{names.env}",
                json={"spec": ENV_SPEC},
            )
            assert r.status_code == 202, r.text
            r = await http.put(
                f"/api/v1/dataplanes/{names.dp}/environments/{names.env}/apps/shop",
                json={"spec": app_spec(names)},
            )
            assert r.status_code == 202, r.text
            async with agent_running(cp, kube, token, cp_tls["ca"], names):
                await eventually(lambda: in_sync(http, names), what="control plane sees the agent in sync")
                app = await kube.get(R.CHOREOAPPS, "shop", names.ns)
                assert app is not None and app["spec"]["image"] == "ghcr.io/acme/shop:1"
                # the operator's part, done by hand: the app becomes Ready
                await kube.patch(
                    R.CHOREOAPPS,
                    "shop",
                    {"status": {"phase": "Ready", "ready": "1/1", "revision": 2}},
                    names.ns,
                    subresource="status",
                )

                async def ready_upstream() -> bool:
                    r = await http.get(f"/api/v1/dataplanes/{names.dp}/environments/{names.env}/apps/shop")
                    return bool((r.json().get("status") or {}).get("phase") == "Ready")

                await eventually(ready_upstream, what="Ready status in GET .../apps/shop")
                view = await dp_view(http, names)
                assert view["connected"] is True and view["appliedRevision"] == view["revision"]
                dp = await kube.get(R.DATAPLANES, names.dp)
                assert dp is not None and dp["status"]["connected"] is True
                assert dp["status"]["appliedRevision"] == view["revision"]

                # delete through REST reaches the cluster
                r = await http.delete(f"/api/v1/dataplanes/{names.dp}/environments/{names.env}/apps/shop")
                assert r.status_code in (200, 202), r.text

                async def gone() -> bool:
                    return await kube.get(R.CHOREOAPPS, "shop", names.ns) is None

                await eventually(gone, what="app deleted in the cluster")
    finally:
        await cp.stop()


async def test_control_plane_restart_and_restore_empty(
    kube: KubeClient, tmp_path: Path, cp_tls: dict[str, str], names: Names
) -> None:
    token = tmp_path / "dp-token"
    cp = make_cp(tmp_path / "cp.db", cp_tls)
    await cp.start()
    port = cp.port
    async with agent_running(cp, kube, token, cp_tls["ca"], names) as agent:
        try:
            async with rest(cp, cp_tls) as http:
                await register(http, token, names)
                await http.put(
                    f"/api/v1/dataplanes/{names.dp}/environments/{names.env}",
                    json={"spec": ENV_SPEC},
                )
                for i in range(3):
                    await http.put(
                        f"/api/v1/dataplanes/{names.dp}/environments/{names.env}/apps/a{i}",
                        json={"spec": app_spec(names)},
                    )
                await eventually(lambda: in_sync(http, names), timeout=15, what="initial sync")
        finally:
            await cp.stop()
        # restart on the same store: the agent resumes; a change made right after flows through
        cp = make_cp(tmp_path / "cp.db", cp_tls, port=port)
        await cp.start()
        try:
            async with rest(cp, cp_tls) as http:
                await http.put(
                    f"/api/v1/dataplanes/{names.dp}/environments/{names.env}/apps/a9",
                    json={"spec": app_spec(names)},
                )
                await eventually(lambda: in_sync(http, names), timeout=15, what="sync after restart")
                assert await kube.get(R.CHOREOAPPS, "a9", names.ns) is not None
        finally:
            await cp.stop()
        # restored empty (a new database): re-registered, nothing pushed -> nothing deleted
        cp = make_cp(tmp_path / "cp-new.db", cp_tls, port=port)
        await cp.start()
        try:
            async with rest(cp, cp_tls) as http:
                await register(http, token, names)  # the agent picks up the new token from the file

                async def orphans_reported() -> bool:
                    return (await dp_view(http, names)).get("orphans") == 5

                await eventually(orphans_reported, timeout=20, what="orphans reported upstream")
            items, _ = await kube.list(R.CHOREOAPPS, names.ns)
            assert len(items) == 4 and all(ANN_ORPHANED in i["metadata"]["annotations"] for i in items)
            dp = await kube.get(R.DATAPLANES, names.dp)
            assert dp is not None and dp["status"]["orphans"] == 5
            assert agent.sessions >= 2
        finally:
            await cp.stop()
