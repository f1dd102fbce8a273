"""Fixtures for the reference control plane: a live server on loopback and a raw tunnel client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from choreo_cp.context import TunnelSettings
from choreo_cp.server import ControlPlaneServer, ServerConfig
from tests.controlplane.helpers import ADMIN_TOKEN


def make_server(db: Path, **overrides: object) -> ControlPlaneServer:
    config = ServerConfig(
        host="127.0.0.1",
        port=0,
        db=db,
        admin_token=ADMIN_TOKEN,
        tunnel=TunnelSettings(heartbeat_interval=5.0, idle_timeout=30.0, status_flush_interval=0.05),
        synchronous="NORMAL",
    )
    for key, value in overrides.items():
        setattr(config, key, value)
    return ControlPlaneServer(config)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ControlPlaneServer]:
    srv = make_server(tmp_path / "cp.db")
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
async def http(server: ControlPlaneServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10
    ) as client:
        yield client
