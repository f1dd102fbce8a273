"""``choreo-dp cp`` against a live server, and ``choreo-dp control-plane serve`` as a process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sqlite3
import sys
from pathlib import Path

import httpx
import pytest

from choreo_cp.server import ControlPlaneServer
from choreo_cp.store import SCHEMA_VERSION, Store
from choreo_dp.cli.main import main
from tests.controlplane.helpers import ADMIN_TOKEN, eventually

MANIFESTS = """\
apiVersion: choreo.dev/v1alpha1
kind: ChoreoApp
metadata: {name: orders}
spec:
  environment: dev
  project: shop
  type: service
  image: ghcr.io/acme/orders:1.0
---
apiVersion: choreo.dev/v1alpha1
kind: Environment
metadata: {name: dev}
spec:
  displayName: Development
  registry: {allowedPrefixes: ["ghcr.io/acme/"]}
"""


async def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """The CLI is synchronous: run it off the event loop that serves it."""
    code = await asyncio.to_thread(main, argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "admin-token"
    path.write_text(ADMIN_TOKEN + "\n")
    return path


async def test_cp_apply_get_delete(
    server: ControlPlaneServer, token_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conn = ["--url", server.url, "--token-file", str(token_file)]
    code, out, _ = await run_cli(["cp", "register", "dp1", *conn], capsys)
    assert code == 0 and "token (shown once): cpdp_" in out
    manifest = tmp_path / "m.yaml"
    manifest.write_text(MANIFESTS)
    code, out, err = await run_cli(["cp", "apply", "-f", str(manifest), "--dataplane", "dp1", *conn], capsys)
    assert code == 0, err
    # the Environment goes first although it comes second in the file
    assert out.splitlines() == [
        "environment/dev configured (revision 1)",
        "choreoapp/orders (environment dev) configured (revision 2)",
    ]
    code, out, _ = await run_cli(["cp", "apply", "-f", str(manifest), "--dataplane", "dp1", *conn], capsys)
    assert code == 0 and out.count("unchanged") == 2
    code, out, _ = await run_cli(
        ["cp", "get", "app", "orders", "--dataplane", "dp1", "--environment", "dev", *conn], capsys
    )
    assert code == 0
    header, row = out.splitlines()
    assert header.split()[:4] == ["NAME", "ENVIRONMENT", "REVISION", "APPLIED"]
    assert row.split()[:4] == ["orders", "dev", "2", "False"]
    code, out, _ = await run_cli(["cp", "get", "dataplane", "dp1", "-o", "json", *conn], capsys)
    assert code == 0 and json.loads(out)["revision"] == 2
    code, out, _ = await run_cli(["cp", "delete", "environment", "dev", "--dataplane", "dp1", *conn], capsys)
    assert code == 0 and out.strip() == "environment/dev deleted, with 1 app(s) (revision 4)"


async def test_cp_errors(
    server: ControlPlaneServer,
    token_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conn = ["--url", server.url, "--token-file", str(token_file)]
    code, _, err = await run_cli(["cp", "get", "dataplane", "ghost", *conn], capsys)
    assert code == 1 and err.strip() == "choreo-dp cp: 404: dataplane 'ghost' is not registered"
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    code, _, err = await run_cli(["cp", "apply", "-f", str(bad), "--dataplane", "dp1", *conn], capsys)
    assert code == 2 and "apiVersion must be choreo.dev/v1alpha1" in err and len(err.splitlines()) == 1
    await run_cli(["cp", "register", "dp1", *conn], capsys)
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text(MANIFESTS.replace("type: service", "type: spaceship"))
    code, out, err = await run_cli(["cp", "apply", "-f", str(invalid), "--dataplane", "dp1", *conn], capsys)
    assert code == 1 and "environment/dev configured" in out
    assert "422: spec.type" in err or "422: body.spec.type" in err
    # env-var configuration, and a wrong token
    monkeypatch.setenv("CHOREO_DP_CP_URL", server.url)
    monkeypatch.setenv("CHOREO_DP_CP_TOKEN", "wrong")
    code, _, err = await run_cli(["cp", "get", "dataplane", "dp1"], capsys)
    assert code == 1 and "401" in err
    monkeypatch.setenv("CHOREO_DP_CP_TOKEN", ADMIN_TOKEN)
    code, out, _ = await run_cli(["cp", "get", "dataplane", "dp1"], capsys)
    assert code == 0 and out.startswith("DATAPLANE")
    monkeypatch.delenv("CHOREO_DP_CP_URL")
    code, _, err = await run_cli(["cp", "get", "dataplane", "dp1"], capsys)
    assert code == 2 and "CHOREO_DP_CP_URL" in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _serve(*args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "choreo_dp.cli.main", "control-plane", "serve", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


async def test_serve_process_lifecycle(tmp_path: Path, token_file: Path) -> None:
    port = _free_port()
    proc = await _serve(
        "--listen", f"127.0.0.1:{port}", "--db", str(tmp_path / "cp.db"), "--admin-token-file", str(token_file),
        "--log-format", "json",
    )  # fmt: skip
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:

            async def up() -> bool:
                try:
                    return (await http.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(up, timeout=20, what="control plane serving")
            r = await http.put("/api/v1/dataplanes/dp1", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
            assert r.status_code == 201
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 20)
        assert code == 0
        assert proc.stderr is not None
        log_lines = (await proc.stderr.read()).decode().splitlines()
        assert any("TLS is off" in json.loads(line)["message"] for line in log_lines if line.startswith("{"))
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ([], {}, "admin token is required"),
        (["--admin-token-file", "/nonexistent/token"], {}, "--admin-token-file /nonexistent/token"),
        (["--listen", "0.0.0.0:8443"], {"CHOREO_DP_ADMIN_TOKEN": "t"}, "only loopback"),
        (["--tls-cert", "/etc/hostname"], {"CHOREO_DP_ADMIN_TOKEN": "t"}, "go together"),
        (["--listen", "nonsense"], {"CHOREO_DP_ADMIN_TOKEN": "t"}, "HOST:PORT"),
    ],
)
async def test_serve_bad_config_is_one_line_exit_2(
    args: list[str], env: dict[str, str], message: str
) -> None:
    clean = {k: "" for k in ("CHOREO_DP_ADMIN_TOKEN",) if k not in env}
    proc = await _serve(*args, env={**clean, **env})
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


async def test_serve_refuses_a_database_from_a_newer_control_plane(tmp_path: Path, token_file: Path) -> None:
    db = tmp_path / "cp.db"
    async with Store(db) as store:
        await store.register_dataplane("dp1")
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    proc = await _serve(
        "--listen", f"127.0.0.1:{_free_port()}", "--db", str(db), "--admin-token-file", str(token_file)
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2
    last = err.decode().strip().splitlines()[-1]
    assert last.startswith(f"choreo-dp: error: --db {db}: schema version {SCHEMA_VERSION + 1} is newer"), last
