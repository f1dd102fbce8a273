"""Fixtures for the tunnel tests: the emulated API with the choreo CRDs, TLS material, a fake CP."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from choreo_dp.kube import KubeClient
from choreo_dp.kube import resources as R
from choreo_dp.kube.backoff import Backoff
from tests.tunnel.fakecp import FakeControlPlane

ROOT = Path(__file__).resolve().parents[2]


async def eventually(
    check: Callable[[], Awaitable[bool] | bool], timeout: float = 10.0, what: str = ""
) -> None:
    """Poll until ``check`` is true; fail with ``what`` at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def apiserver(tmp_path: Path) -> AsyncIterator[Any]:
    from choreo_dp.sandbox.apiserver import ApiServer

    async with ApiServer(port=0) as srv:
        srv.write_kubeconfig(tmp_path / "kubeconfig")
        async with KubeClient(
            (await KubeClient.from_kubeconfig(tmp_path / "kubeconfig")).config,
            backoff=Backoff(base=0.02, cap=0.2),
        ) as kube:
            for path in sorted((ROOT / "crds").glob("*.yaml")):
                await kube.create(R.CRDS, yaml.safe_load(path.read_text()))
            for ns in ("choreo-dev", "choreo-prod"):
                await kube.create(
                    R.NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
                )
        yield srv


@pytest.fixture
async def kube(apiserver: Any, tmp_path: Path) -> AsyncIterator[KubeClient]:
    cfg = (await KubeClient.from_kubeconfig(tmp_path / "kubeconfig")).config
    async with KubeClient(cfg, backoff=Backoff(base=0.02, cap=0.2), max_retries=3) as client:
        yield client


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls(ca: trustme.CA, tmp_path: Path) -> dict[str, Any]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return {"server": server_ctx, "ca_file": str(ca_file), "ca": ca}


@pytest.fixture
async def fake_cp(tls: dict[str, Any]) -> AsyncIterator[FakeControlPlane]:
    cp = FakeControlPlane(ssl_context=tls["server"])
    await cp.start()
    yield cp
    await cp.stop()


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("tok\n")
    return path


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
