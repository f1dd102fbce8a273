"""``choreo-dp cp history`` and ``cp rollback`` against a live control plane."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
import yaml

from choreo_cp.server import ControlPlaneServer
from choreo_dp.cli.main import main
from choreo_wire import protocol as p
from tests.controlplane.helpers import ADMIN_TOKEN, app_spec, put_app, put_env, register

DIGEST = "sha256:" + "0123456789abcdef" * 4
TARGET = ["shop", "--environment", "dev", "--dataplane", "dp1"]


async def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def conn(server: ControlPlaneServer, tmp_path: Path) -> list[str]:
    token = tmp_path / "admin-token"
    token.write_text(ADMIN_TOKEN + "\n")
    return ["--url", server.url, "--token-file", str(token)]


@pytest.fixture
async def revisions(server: ControlPlaneServer, http: httpx.AsyncClient) -> list[int]:
    await register(http, "dp1")
    await put_env(http, "dp1", "dev")
    revs = [await put_app(http, "dp1", "dev", "shop", app_spec(f"ghcr.io/acme/shop:1.{i}")) for i in range(2)]
    status = {"phase": "Ready", "revision": revs[0], "image": f"ghcr.io/acme/shop:1.0@{DIGEST}"}
    server.store.queue_status("dp1", p.app_key("dev", "shop"), status)
    await server.store.flush()
    return revs


async def test_cp_history_prints_a_table_newest_first_and_structured_output(
    conn: list[str], revisions: list[int], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await run_cli(["cp", "history", *TARGET, *conn], capsys)
    assert code == 0, err
    header, newest, oldest = out.splitlines()
    assert header.split() == ["REVISION", "AGE", "AUTHOR", "DIGEST", "IMAGE"]
    assert newest.split()[0] == str(revisions[1]) and newest.split()[-1] == "ghcr.io/acme/shop:1.1"
    assert "<none>" in newest  # no digest reported for it
    assert oldest.split()[0] == str(revisions[0]) and "sha256:0123456789ab " in oldest
    assert oldest.split()[2] == "admin"

    code, out, _ = await run_cli(["cp", "history", *TARGET, "-o", "json", *conn], capsys)
    assert code == 0
    assert [i["digest"] for i in json.loads(out)["items"]] == [None, DIGEST]
    code, out, _ = await run_cli(["cp", "history", *TARGET, "-o", "yaml", *conn], capsys)
    assert code == 0 and yaml.safe_load(out)["items"][0]["revision"] == revisions[1]


async def test_cp_rollback_defaults_to_one_step_and_pins_the_digest(
    conn: list[str], revisions: list[int], http: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await run_cli(["cp", "rollback", *TARGET, *conn], capsys)
    assert code == 0, err
    assert out.startswith(f"choreoapp/dev/shop rolled back to revision {revisions[0]}'s spec as revision ")
    assert f"image ghcr.io/acme/shop@{DIGEST} (pinned to the digest that ran it)" in out
    app = (await http.get("/api/v1/dataplanes/dp1/environments/dev/apps/shop")).json()
    assert app["spec"]["image"] == f"ghcr.io/acme/shop@{DIGEST}" and app["revision"] > revisions[1]

    code, out, err = await run_cli(
        ["cp", "rollback", *TARGET, "--to-revision", str(revisions[1]), *conn], capsys
    )
    assert code == 0, err
    assert "image ghcr.io/acme/shop:1.1" in out and "pinned" not in out
    code, out, _ = await run_cli(
        ["cp", "rollback", *TARGET, "--to-revision", str(revisions[1]), *conn], capsys
    )
    assert code == 0 and "unchanged" in out

    history = (await http.get("/api/v1/dataplanes/dp1/environments/dev/apps/shop/history")).json()["items"]
    assert [i["cause"] for i in history] == ["rollback", "rollback", "apply", "apply"]


async def test_cp_rollback_errors_are_one_line(
    conn: list[str], revisions: list[int], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await run_cli(["cp", "rollback", *TARGET, "--to-revision", "999", *conn], capsys)
    assert (code, out) == (1, "")
    assert err == (
        "choreo-dp cp: 404: revision 999 is not in the history of app 'shop' in environment 'dev' "
        "(GET .../history lists the 50 newest revisions kept)\n"
    )
    code, _, err = await run_cli(["cp", "rollback", *TARGET, "--steps", "5", *conn], capsys)
    assert (
        code == 1 and err.startswith("choreo-dp cp: 409: cannot go 5 step(s) back") and err.count("\n") == 1
    )
    code, _, err = await run_cli(
        ["cp", "history", "nope", "--environment", "dev", "--dataplane", "dp1", *conn], capsys
    )
    assert code == 1 and err.startswith("choreo-dp cp: 404: app 'nope'") and err.count("\n") == 1
    # flags the parser refuses: nothing is sent, exit 2
    for bad in (["--to-revision", "0"], ["--to-revision", "2", "--steps", "1"], ["--steps", "x"]):
        with pytest.raises(SystemExit) as info:
            main(["cp", "rollback", *TARGET, *bad, *conn])
        assert info.value.code == 2, bad
        assert capsys.readouterr().err.count("\n") == 1
