"""``cp describe app`` shows an app's files (paths and sources, never contents) and its connections
with whether each resolves, as the data plane last reported it (status.connections, kept by the
control plane's report validation)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from choreo_cp.reports import InvalidReport, validated_status
from choreo_cp.server import ControlPlaneServer
from choreo_dp.cli.main import main
from choreo_wire import protocol as p
from tests.controlplane.helpers import ADMIN_TOKEN, RawAgent, app_spec, eventually, put_app, put_env, register

SECRET_CONTENT = "log-level: debug # the content must never reach the screen"
FILES = [
    {"mountPath": "/config/app.yaml", "content": SECRET_CONTENT},
    {"mountPath": "/keys/tls.key", "keyVaultSecret": "web-tls-key"},
    {"mountPath": "/keys/pinned.key", "keyVaultSecret": "web-pin", "version": "0" * 32},
]
CONNECTIONS = [
    {"name": "orders", "app": "orders", "endpoint": "api"},
    {"name": "ledger", "app": "ledger", "endpoint": "http", "project": "finance"},
    {"name": "later", "app": "orders", "endpoint": "api"},
]
ORDERS_URL = "http://orders.choreo-dev.svc.cluster.local:8080/orders"
REPORTED_CONNECTIONS = [
    {
        "name": "orders",
        "target": "shop/orders/api",
        "resolved": True,
        "reason": "Resolved",
        "message": f"connection orders: calls {ORDERS_URL}",
        "url": ORDERS_URL,
    },
    {
        "name": "ledger",
        "target": "finance/ledger/http",
        "resolved": False,
        "reason": "AppNotFound",
        "message": "connection ledger: no app ledger in environment dev",
    },
]


async def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, argv)
    out, err = capsys.readouterr()
    return code, out, err


def section(out: str, title: str) -> list[list[str]]:
    """The rows of one describe section, split on runs of spaces (header first)."""
    lines = out.splitlines()
    start = lines.index(f"{title}:") + 1
    rows = []
    for line in lines[start:]:
        if not line.startswith("  "):
            break
        rows.append([c for c in line.strip().split("   ") if c.strip()])
    return [[c.strip() for c in row] for row in rows]


async def test_describe_shows_files_and_whether_each_connection_resolves(
    server: ControlPlaneServer, http: httpx.AsyncClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = await register(http)
    await put_env(http, "dp1", "dev")
    await put_app(
        http,
        "dp1",
        "dev",
        "orders",
        app_spec(endpoints=[{"name": "api", "port": 8080, "visibility": "Project", "basePath": "/orders"}]),
    )
    revision = await put_app(http, "dp1", "dev", "web", app_spec(files=FILES, connections=CONNECTIONS))

    # What the operator writes and the agent carries upstream unchanged; "later" not judged yet.
    status = {
        "phase": "Degraded",
        "revision": revision,
        "message": "connection ledger: no app ledger in environment dev",
        "connections": REPORTED_CONNECTIONS,
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "reason": "ConnectionUnresolved",
                "message": "connection ledger: no app ledger in environment dev",
            }
        ],
    }
    agent = await RawAgent.connect(server.tunnel_url, token)
    try:
        await agent.hello("dp1")
        await agent.send(
            p.StatusBatch(
                items=[
                    p.StatusItem(key="ChoreoApp/dev/web", status=status, observed_at="2030-01-02T03:04:05Z")
                ]
            )
        )

        async def reported() -> dict[str, Any] | None:
            view: dict[str, Any] = (await http.get("/api/v1/dataplanes/dp1/environments/dev/apps/web")).json()
            return view if (view.get("status") or {}).get("connections") else None

        view = await eventually(reported, what="status.connections stored")
        assert view["status"]["connections"] == REPORTED_CONNECTIONS
    finally:
        # Disconnected, live state and events answer 503 at once instead of waiting on this agent.
        await agent.close()

    token_file = tmp_path / "token"
    token_file.write_text(ADMIN_TOKEN)
    argv = ["cp", "describe", "app", "web", "--environment", "dev", "--dataplane", "dp1"]
    code, out, err = await run_cli([*argv, "--url", server.url, "--token-file", str(token_file)], capsys)
    assert code == 0, err
    assert SECRET_CONTENT not in out and "log-level" not in out
    assert section(out, "Files") == [
        ["PATH", "SOURCE"],
        ["/config/app.yaml", "content"],
        ["/keys/tls.key", "keyVaultSecret web-tls-key"],
        ["/keys/pinned.key", f"keyVaultSecret web-pin (version {'0' * 32})"],
    ]
    assert section(out, "Connections") == [
        ["NAME", "TARGET", "RESOLVED", "REASON", "DETAIL"],
        ["orders", "shop/orders/api", "true", "Resolved", ORDERS_URL],
        [
            "ledger",
            "finance/ledger/http",
            "false",
            "AppNotFound",
            "connection ledger: no app ledger in environment dev",
        ],
        ["later", "shop/orders/api", "unknown", "<none>", "not reported by the data plane yet"],
    ]
    # The sections sit between the summary and the live state.
    lines = out.splitlines()
    assert lines.index("Files:") < lines.index("Connections:") < lines.index("Live:")


async def test_describe_of_an_app_without_files_or_connections_has_no_such_sections(
    server: ControlPlaneServer, http: httpx.AsyncClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await register(http)
    await put_env(http, "dp1", "dev")
    await put_app(http, "dp1", "dev", "plain")
    token_file = tmp_path / "token"
    token_file.write_text(ADMIN_TOKEN)
    argv = ["cp", "describe", "app", "plain", "--environment", "dev", "--dataplane", "dp1"]
    code, out, err = await run_cli([*argv, "--url", server.url, "--token-file", str(token_file)], capsys)
    assert code == 0, err
    assert "Files:" not in out and "Connections:" not in out and "Live:" in out


def test_reported_connections_are_kept_and_checked() -> None:
    kept = validated_status("ChoreoApp/dev/web", {"phase": "Ready", "connections": REPORTED_CONNECTIONS})
    assert kept["connections"] == REPORTED_CONNECTIONS
    bad_reason = {**REPORTED_CONNECTIONS[0], "reason": "not a reason; DROP TABLE"}
    with pytest.raises(InvalidReport, match="connections"):
        validated_status("ChoreoApp/dev/web", {"connections": [bad_reason]})
    with pytest.raises(InvalidReport, match="connections"):
        validated_status(
            "ChoreoApp/dev/web", {"connections": [{**REPORTED_CONNECTIONS[0], "resolved": "yes"}]}
        )
    too_many = [{**REPORTED_CONNECTIONS[0], "name": f"c{i}"} for i in range(65)]
    with pytest.raises(InvalidReport, match="connections"):
        validated_status("ChoreoApp/dev/web", {"connections": too_many})
