"""``choreo-dp cp`` against a live server, and ``choreo-dp control-plane serve`` as a process."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import socket
import sqlite3
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from choreo_cp.cli import manifests
from choreo_cp.cli.waiting import duration, judge
from choreo_cp.server import ControlPlaneServer
from choreo_cp.store import SCHEMA_VERSION, Store
from choreo_dp.cli.main import main
from choreo_wire import protocol as p
from tests.controlplane.helpers import ADMIN_TOKEN, RawAgent, eventually

ENVIRONMENT = """\
apiVersion: choreo.dev/v1alpha1
kind: Environment
metadata: {name: dev}
spec:
  displayName: Development
  registry: {allowedPrefixes: ["ghcr.io/acme/"]}
"""


def app_doc(
    name: str = "orders", image: str = "ghcr.io/acme/orders:1.0", env: str = "dev", **meta: Any
) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "choreo.dev/v1alpha1",
            "kind": "ChoreoApp",
            "metadata": {"name": name, **meta},
            "spec": {"environment": env, "project": "shop", "type": "service", "image": image},
        },
        sort_keys=False,
    )


MANIFESTS = app_doc() + "---\n" + ENVIRONMENT


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


@pytest.fixture
def conn(server: ControlPlaneServer, token_file: Path) -> list[str]:
    return ["--url", server.url, "--token-file", str(token_file)]


@pytest.fixture
async def dp1(conn: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code, _, err = await run_cli(["cp", "register", "dp1", *conn], capsys)
    assert code == 0, err
    return "dp1"


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- apply ---------------------------------------------------------------------------------------
async def test_cp_apply_get_delete(
    dp1: str, conn: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(MANIFESTS)
    apply = ["cp", "apply", "-f", str(manifest), "--dataplane", dp1, *conn]
    code, out, err = await run_cli(apply, capsys)
    assert code == 0, err
    # the Environment goes first although it comes second in the file
    assert out.splitlines() == ["environment/dev created", "choreoapp/dev/orders created"]
    code, out, _ = await run_cli(apply, capsys)
    assert code == 0 and out.splitlines() == ["environment/dev unchanged", "choreoapp/dev/orders unchanged"]
    manifest.write_text(MANIFESTS.replace("orders:1.0", "orders:1.1"))
    code, out, _ = await run_cli(apply, capsys)
    assert code == 0 and out.splitlines() == ["environment/dev unchanged", "choreoapp/dev/orders configured"]
    code, out, _ = await run_cli(
        ["cp", "get", "app", "orders", "--dataplane", dp1, "--environment", "dev", *conn], capsys
    )
    assert code == 0
    header, row = out.splitlines()
    assert header.split()[:5] == ["ENVIRONMENT", "NAME", "STATUS", "READY", "REVISION"]
    assert row.split()[:5] == ["dev", "orders", "<none>", "<none>", "3"]
    code, out, _ = await run_cli(["cp", "get", "dataplane", dp1, "-o", "json", *conn], capsys)
    assert code == 0 and json.loads(out)["revision"] == 3
    code, out, err = await run_cli(["cp", "delete", "environment", "dev", "--dataplane", dp1, *conn], capsys)
    assert code == 1 and out == ""
    assert err.strip() == (
        "choreo-dp cp: environment/dev has 1 app(s) (orders); deleting it deletes them too: "
        "add --cascade (or --yes) to confirm"
    )
    code, out, _ = await run_cli(["cp", "get", "apps", "--dataplane", dp1, *conn], capsys)
    assert code == 0 and "orders" in out  # nothing was deleted
    code, out, _ = await run_cli(["cp", "delete", "env", "dev", "--dataplane", dp1, "--yes", *conn], capsys)
    assert code == 0 and out.splitlines() == ["choreoapp/dev/orders deleted", "environment/dev deleted"]
    # an environment without apps needs no confirmation
    await run_cli(["cp", "apply", "-f", str(manifest), "--dataplane", dp1, *conn], capsys)
    code, out, _ = await run_cli(
        ["cp", "delete", "app", "orders", "--environment", "dev", "--dataplane", dp1, *conn], capsys
    )
    assert code == 0 and out.strip() == "choreoapp/dev/orders deleted"
    code, out, _ = await run_cli(["cp", "delete", "environment", "dev", "--dataplane", dp1, *conn], capsys)
    assert code == 0 and out.strip() == "environment/dev deleted"


async def test_apply_reads_directories_stdin_json_and_lists(
    dp1: str,
    conn: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    d = tmp_path / "manifests"
    (d / "nested").mkdir(parents=True)
    (d / "b-apps.yaml").write_text(app_doc("b1") + "---\n" + app_doc("b2"))
    (d / "a-env.yml").write_text(ENVIRONMENT)
    (d / "c.json").write_text(json.dumps([yaml.safe_load(app_doc("c1")), yaml.safe_load(app_doc("c2"))]))
    (d / "notes.txt").write_text("not a manifest")
    (d / "nested" / "deep.yaml").write_text(app_doc("deep"))
    apply = ["cp", "apply", "--dataplane", dp1, *conn]
    code, out, err = await run_cli([*apply, "-f", str(d)], capsys)
    assert code == 0, err
    assert out.splitlines() == [
        "environment/dev created",
        *(f"choreoapp/dev/{n} created" for n in ("b1", "b2", "c1", "c2")),
    ]
    code, out, err = await run_cli([*apply, "-f", str(d), "-R"], capsys)
    assert code == 0 and "choreoapp/dev/deep created" in out.splitlines() and out.count("unchanged") == 5
    # stdin and a file in one call; a `kind: List` as JSON
    listing = {"apiVersion": "v1", "kind": "List", "items": [yaml.safe_load(app_doc("s1"))]}
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(listing)))
    extra = tmp_path / "x.yaml"
    extra.write_text(app_doc("x1"))
    code, out, err = await run_cli([*apply, "-f", "-", "-f", str(extra)], capsys)
    assert code == 0, err
    assert out.splitlines() == ["choreoapp/dev/s1 created", "choreoapp/dev/x1 created"]
    # an empty directory says what it looked for
    (tmp_path / "empty").mkdir()
    code, _, err = await run_cli([*apply, "-f", str(tmp_path / "empty")], capsys)
    assert code == 2 and "no *.yaml, *.yml, *.json files" in err and "-R" in err


async def test_objects_run_together_are_refused_and_nothing_is_sent(
    dp1: str,
    conn: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`cat a.yaml b.yaml | cp apply -f -`: YAML would keep only the last object; refused instead."""
    together = ENVIRONMENT + app_doc("one") + app_doc("two")
    monkeypatch.setattr(sys, "stdin", io.StringIO(together))
    code, out, err = await run_cli(["cp", "apply", "-f", "-", "--dataplane", dp1, *conn], capsys)
    assert code == 2 and out == ""
    (line,) = err.splitlines()
    assert "stdin: line 7: a second 'apiVersion' in one document" in line and "'---'" in line
    code, out, err = await run_cli(["cp", "get", "environments", "--dataplane", dp1, *conn], capsys)
    assert code == 0 and out == "" and err.strip() == "No environments found."


async def test_one_refused_object_does_not_stop_the_others(
    dp1: str, conn: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "m.yaml"
    docs = [
        ENVIRONMENT,
        app_doc("bad-image", image="docker.io/evil/miner:1"),
        app_doc("wrong-ns", namespace="default"),
        app_doc("right-ns", namespace="choreo-dev"),
        app_doc("good"),
    ]
    manifest.write_text("---\n".join(docs))
    code, out, err = await run_cli(["cp", "apply", "-f", str(manifest), "--dataplane", dp1, *conn], capsys)
    assert code == 1
    assert out.splitlines() == [
        "environment/dev created",
        "choreoapp/dev/right-ns created",
        "choreoapp/dev/good created",
    ]
    lines = err.splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith("choreo-dp cp: choreoapp/dev/bad-image: 422 refused: spec.image: ")
    assert "ghcr.io/acme/" in lines[0]
    assert lines[1] == (
        "choreo-dp cp: choreoapp/dev/wrong-ns: metadata.namespace 'default' is not the namespace of "
        "Environment 'dev' ('choreo-dev'), where the app runs: remove metadata.namespace or set it to "
        "'choreo-dev'"
    )
    # an Environment's own spec.namespace is the rule, also when it is already in the control plane
    manifest.write_text(ENVIRONMENT.replace("displayName", "namespace: team-dev\n  displayName"))
    assert (await run_cli(["cp", "apply", "-f", str(manifest), "--dataplane", dp1, *conn], capsys))[0] == 0
    manifest.write_text(app_doc("moved", namespace="team-dev"))
    code, out, err = await run_cli(["cp", "apply", "-f", str(manifest), "--dataplane", dp1, *conn], capsys)
    assert code == 0 and out.strip() == "choreoapp/dev/moved created", err
    # an Environment is cluster-scoped
    manifest.write_text(ENVIRONMENT.replace("{name: dev}", "{name: dev, namespace: x}"))
    code, _, err = await run_cli(["cp", "apply", "-f", str(manifest), "--dataplane", dp1, *conn], capsys)
    assert code == 2 and "an Environment is cluster-scoped" in err


def test_manifest_reading_rules(tmp_path: Path) -> None:
    def problems(text: str, name: str = "m.yaml") -> list[str]:
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(manifests.ManifestError) as info:
            manifests.load([str(path)])
        return info.value.problems

    assert problems("spec:\n  image: a\n  image: b\n") == [
        f"{tmp_path}/m.yaml: line 3: duplicate key 'image' (YAML would keep only the last value)"
    ]
    assert "not valid JSON: duplicate key 'kind'" in problems('{"kind": "A", "kind": "B"}', "m.json")[0]
    assert "not valid YAML" in problems("a: [1,\n")[0] and "line" in problems("a: [1,\n")[0]
    twice = problems(app_doc("a") + "---\n" + app_doc("a"))
    assert twice == [
        f"{tmp_path}/m.yaml document 2: choreoapp/dev/a is already defined in {tmp_path}/m.yaml document 1"
    ]
    # every problem of the input, one line each
    many = problems("kind: ChoreoApp\n---\n- 1\n")
    assert len(many) == 2 and "apiVersion must be" in many[0] and "expected an object" in many[1]


def test_wait_durations_and_verdicts() -> None:
    assert [duration(t) for t in ("90", "90s", "5m", "1h30m", "500ms")] == [90, 90, 300, 5400, 0.5]
    for bad in ("soon", "5x", "0", "-1", "48h"):
        with pytest.raises(Exception, match="duration"):
            duration(bad)

    def view(**status: Any) -> dict[str, Any]:
        return {"name": "a", "revision": 7, "applied": True, "status": status}

    assert judge(view(phase="Ready", ready="2/2", revision=7), 7) == ("ready", "Ready (2/2) at revision 7")
    # the Ready of an older revision, or a status the view calls stale, does not end the wait
    assert judge(view(phase="Ready", revision=6), 7)[0] == "waiting"
    assert judge({**view(phase="Ready", revision=7), "stale": True}, 7)[0] == "waiting"
    # an old failure neither
    assert judge(view(phase="Failed", revision=6), 7)[0] == "waiting"
    degraded = view(
        phase="Degraded",
        revision=7,
        conditions=[
            {"type": "Ready", "status": "False", "reason": "ImagePullBackOff", "message": "no such tag"}
        ],
    )
    assert judge(degraded, 7) == ("failed", "Degraded at revision 7: ImagePullBackOff: no such tag")
    assert (
        judge({"name": "a", "revision": 7, "applied": True, "phase": "Missing", "status": None}, 7)[0]
        == "failed"
    )
    nack = {**view(), "lastError": {"revision": 7, "code": "invalid", "message": "no", "retryable": False}}
    assert judge(nack, 7) == ("failed", "refused by the data plane: invalid: no")
    assert judge({**nack, "lastError": {**nack["lastError"], "retryable": True}}, 7)[0] == "waiting"
    # a data plane whose status says no revision: the agent's acknowledgement decides
    assert judge(view(phase="Ready"), 7)[0] == "ready"
    assert judge({**view(phase="Ready"), "applied": False}, 7)[0] == "waiting"


# -- --wait against a scripted agent ------------------------------------------------------------
async def test_apply_wait_follows_the_reported_status(
    server: ControlPlaneServer,
    dp1: str,
    conn: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(MANIFESTS)
    apply = ["cp", "apply", "-f", str(manifest), "--dataplane", dp1, *conn]
    assert (await run_cli(apply, capsys))[0] == 0
    http = httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    reg = (await http.put(f"/api/v1/dataplanes/{dp1}", params={"rotateToken": "true"})).json()
    agent = await RawAgent.connect(server.tunnel_url, reg["token"])
    try:
        await agent.hello(dp1, epoch=reg["epoch"], revision=2)

        async def report(revision: int, **status: Any) -> None:
            await agent.send(p.Applied(revision=revision, epoch=reg["epoch"]))
            await agent.send(
                p.StatusBatch(
                    items=[
                        p.StatusItem(
                            key="ChoreoApp/dev/orders",
                            status={**status, "revision": revision},
                            observed_at=now(),
                        )
                    ]
                )
            )

        async def pushed(revision: int) -> None:
            async def seen() -> bool:
                r = await http.get(f"/api/v1/dataplanes/{dp1}/environments/dev/apps/orders")
                return bool(r.json()["revision"] == revision)

            await eventually(seen, timeout=10, what=f"revision {revision} pushed")

        await report(2, phase="Ready", ready="1/1")
        # a new image: the Ready of revision 2 must not end the wait for revision 3
        manifest.write_text(MANIFESTS.replace("orders:1.0", "orders:2.0"))
        code, out, err = await run_cli([*apply, "--wait=1s"], capsys)
        assert code == 1 and "choreoapp/dev/orders configured" in out
        assert err.strip() == (
            "choreo-dp cp: choreoapp/dev/orders: timed out after 1s waiting for Ready at revision 3 "
            "(last: Ready at revision 2)"
        )
        # Ready at the pushed revision while the CLI waits
        manifest.write_text(MANIFESTS.replace("orders:1.0", "orders:3.0"))
        waiting = asyncio.create_task(run_cli([*apply, "--wait=20s"], capsys))
        await report(4, phase="Progressing", ready="0/1")
        await report(4, phase="Ready", ready="1/1")
        code, out, err = await asyncio.wait_for(waiting, 30)
        assert code == 0, err
        assert out.splitlines() == [
            "environment/dev unchanged",
            "choreoapp/dev/orders configured",
            "choreoapp/dev/orders Ready (1/1) at revision 4",
        ]
        # Degraded with its reason
        manifest.write_text(MANIFESTS.replace("orders:1.0", "orders:4.0"))
        waiting = asyncio.create_task(run_cli([*apply, "--wait=20s"], capsys))
        condition = {
            "type": "Ready",
            "status": "False",
            "reason": "ImagePullBackOff",
            "message": "manifest unknown",
        }
        await report(5, phase="Degraded", ready="0/1", conditions=[condition])
        code, out, err = await asyncio.wait_for(waiting, 30)
        assert code == 1
        assert err.strip() == (
            "choreo-dp cp: choreoapp/dev/orders Degraded at revision 5: ImagePullBackOff: manifest unknown"
        )
        # the table shows the reason too
        code, out, _ = await run_cli(["cp", "get", "apps", *conn], capsys)
        assert code == 0 and "Degraded" in out and "ImagePullBackOff: manifest unknown" in out
        # refused by the data plane for good
        manifest.write_text(MANIFESTS.replace("orders:1.0", "orders:5.0"))
        waiting = asyncio.create_task(run_cli([*apply, "--wait=20s"], capsys))
        await pushed(6)  # a refusal of an older spec is forgotten when a new one arrives
        await agent.send(
            p.Nack(revision=6, key="ChoreoApp/dev/orders", code="invalid", message="no way", retryable=False)
        )
        code, out, err = await asyncio.wait_for(waiting, 30)
        assert code == 1 and err.strip() == (
            "choreo-dp cp: choreoapp/dev/orders refused by the data plane: invalid: no way"
        )
    finally:
        await agent.close()
        await http.aclose()


# -- get -----------------------------------------------------------------------------------------
async def test_get_lists_every_kind(
    server: ControlPlaneServer, dp1: str, conn: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (await run_cli(["cp", "register", "dp2", *conn], capsys))[0] == 0
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        ENVIRONMENT
        + "---\n"
        + ENVIRONMENT.replace("{name: dev}", "{name: prod}")
        + "---\n"
        + app_doc("a")
        + "---\n"
        + app_doc("b", env="prod")
    )
    for dp in ("dp1", "dp2"):
        assert (await run_cli(["cp", "apply", "-f", str(manifest), "--dataplane", dp, *conn], capsys))[0] == 0
    code, out, _ = await run_cli(["cp", "get", "dataplanes", *conn], capsys)
    assert code == 0
    rows = [line.split() for line in out.splitlines()]
    assert rows[0][:3] == ["NAME", "CONNECTED", "IN-SYNC"] and [r[0] for r in rows[1:]] == ["dp1", "dp2"]
    code, out, _ = await run_cli(["cp", "get", "apps", *conn], capsys)
    rows = [line.split() for line in out.splitlines()]
    assert rows[0][:3] == ["DATAPLANE", "ENVIRONMENT", "NAME"]
    assert sorted((r[0], r[1], r[2]) for r in rows[1:]) == [
        ("dp1", "dev", "a"), ("dp1", "prod", "b"), ("dp2", "dev", "a"), ("dp2", "prod", "b"),
    ]  # fmt: skip
    code, out, _ = await run_cli(
        ["cp", "get", "apps", "--environment", "prod", "--dataplane", "dp2", *conn], capsys
    )
    rows = [line.split() for line in out.splitlines()]
    assert rows[0][:2] == ["ENVIRONMENT", "NAME"] and [r[:2] for r in rows[1:]] == [["prod", "b"]]
    code, out, _ = await run_cli(
        ["cp", "get", "environments", "--dataplane", "dp1", "-o", "wide", *conn], capsys
    )
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == [
        "NAME",
        "STATUS",
        "NAMESPACE",
        "APPS",
        "REVISION",
        "REPORTED",
        "MESSAGE",
        "PRODUCTION",
        "APPLIED",
    ]
    assert [r[:3] for r in rows[1:]] == [["dev", "<none>", "choreo-dev"], ["prod", "<none>", "choreo-prod"]]
    code, out, _ = await run_cli(["cp", "get", "apps", "a", "-o", "yaml", *conn], capsys)
    listed = yaml.safe_load(out)["items"]
    assert code == 0 and sorted(v["dataplane"] for v in listed) == ["dp1", "dp2"]
    code, out, _ = await run_cli(
        ["cp", "get", "app", "b", "--dataplane", "dp1", "--environment", "prod", "-o", "json", *conn], capsys
    )
    assert code == 0 and json.loads(out)["spec"]["environment"] == "prod"
    code, _, err = await run_cli(["cp", "get", "apps", "nope", *conn], capsys)
    assert code == 1 and err.strip() == "choreo-dp cp: app 'nope' not found"


async def test_cp_errors(
    server: ControlPlaneServer,
    conn: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, _, err = await run_cli(["cp", "get", "dataplane", "ghost", *conn], capsys)
    assert code == 1 and err.strip() == "choreo-dp cp: 404: dataplane 'ghost' is not registered"
    code, _, err = await run_cli(
        ["cp", "apply", "-f", str(tmp_path / "m.yaml"), "--dataplane", "ghost", *conn], capsys
    )
    assert code == 2 and err.strip().endswith("m.yaml: No such file or directory")
    (tmp_path / "m.yaml").write_text(MANIFESTS)
    code, _, err = await run_cli(
        ["cp", "apply", "-f", str(tmp_path / "m.yaml"), "--dataplane", "ghost", *conn], capsys
    )
    assert code == 1 and err.strip() == "choreo-dp cp: 404: dataplane 'ghost' is not registered"
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    code, _, err = await run_cli(["cp", "apply", "-f", str(bad), "--dataplane", "dp1", *conn], capsys)
    assert code == 2 and "apiVersion must be choreo.dev/v1alpha1" in err and len(err.splitlines()) == 1
    await run_cli(["cp", "register", "dp1", *conn], capsys)
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text(MANIFESTS.replace("type: service", "type: spaceship"))
    code, out, err = await run_cli(["cp", "apply", "-f", str(invalid), "--dataplane", "dp1", *conn], capsys)
    assert code == 1 and "environment/dev created" in out
    (line,) = err.splitlines()
    assert line.startswith("choreo-dp cp: choreoapp/dev/orders: 422 refused: spec.type: Input should be")
    # env-var configuration, and a wrong token
    monkeypatch.setenv("CHOREO_DP_CP_URL", server.url)
    monkeypatch.setenv("CHOREO_DP_CP_TOKEN", "wrong")
    code, _, err = await run_cli(["cp", "get", "dataplane", "dp1"], capsys)
    assert code == 1 and err.strip() == (
        "choreo-dp cp: 401 unauthorized: invalid admin token (the admin token: --token-file or env CHOREO_DP_CP_TOKEN)"
    )
    monkeypatch.setenv("CHOREO_DP_CP_TOKEN", ADMIN_TOKEN)
    code, out, _ = await run_cli(["cp", "get", "dataplane", "dp1"], capsys)
    assert code == 0 and out.startswith("NAME")
    monkeypatch.delenv("CHOREO_DP_CP_URL")
    code, _, err = await run_cli(["cp", "get", "dataplane", "dp1"], capsys)
    assert code == 2 and "CHOREO_DP_CP_URL" in err
    # nothing listening
    code, _, err = await run_cli(["cp", "get", "apps", "--url", f"http://127.0.0.1:{_free_port()}"], capsys)
    assert code == 1 and err.startswith("choreo-dp cp: cannot reach the control plane at http://127.0.0.1:")
    assert err.strip().endswith("connection refused")


async def test_a_closed_pipe_is_quiet(server: ControlPlaneServer, dp1: str, token_file: Path) -> None:
    """`cp get apps -o json | head -1`: the reader leaves early; no traceback, no error."""
    async with httpx.AsyncClient(
        base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ) as http:
        await http.put(
            f"/api/v1/dataplanes/{dp1}/environments/dev",
            json={"spec": {"registry": {"allowedPrefixes": ["ghcr.io/"]}}},
        )
        for i in range(60):
            spec = {
                "project": "shop",
                "type": "service",
                "image": "ghcr.io/acme/x:1",
                "env": [{"name": "PAD", "value": "x" * 2000}],
            }
            r = await http.put(f"/api/v1/dataplanes/{dp1}/environments/dev/apps/a{i}", json={"spec": spec})
            assert r.status_code == 202
    read, write = os.pipe()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "choreo_dp.cli.main", "cp", "get", "apps", "-o", "json",
        "--url", server.url, "--token-file", str(token_file),
        stdout=write, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    os.close(write)
    with os.fdopen(read, "rb") as reader:
        first = await asyncio.to_thread(reader.read, 10)  # like `head -c 10`: a little, then go away
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert first == b'{\n  "items', err
    assert proc.returncode == 0, err
    assert err == b""


# -- control-plane serve -------------------------------------------------------------------------
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
        (["--log-level", "verbose"], {"CHOREO_DP_ADMIN_TOKEN": "t"}, "invalid level 'verbose'"),
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
