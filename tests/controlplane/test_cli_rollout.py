"""``choreo-dp cp promote-rollout`` / ``cp abort-rollout`` against a live control plane, and the
rollout's step as ``cp get apps`` shows it from the status the operator writes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from choreo_cp.server import ControlPlaneServer
from choreo_dp.api.choreoapp import ChoreoAppSpec
from choreo_dp.api.rollout import RolloutStatus
from choreo_dp.cli.main import main
from choreo_dp.operator.app_status import AppObservation, compute_app_status
from choreo_dp.operator.summaries import DeploymentSummary
from choreo_wire import protocol as p
from tests.controlplane.helpers import ADMIN_TOKEN, app_spec, put_app, put_env, register

TARGET = ["shop", "--environment", "dev", "--dataplane", "dp1"]
CANARY = {
    "strategy": "Canary",
    "steps": [{"weight": 25, "pause": "manual"}, {"weight": 50, "pause": "manual"}, {"weight": 75}],
}
APP = "/api/v1/dataplanes/dp1/environments/dev/apps/shop"


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
async def canary_app(server: ControlPlaneServer, http: httpx.AsyncClient) -> int:
    await register(http, "dp1")
    await put_env(http, "dp1", "dev")
    return await put_app(http, "dp1", "dev", "shop", app_spec("ghcr.io/acme/shop:2", rollout=CANARY))


async def _desired(http: httpx.AsyncClient) -> dict[str, Any]:
    body: dict[str, Any] = (await http.get(APP)).json()
    return body


async def _report(server: ControlPlaneServer, status: dict[str, Any]) -> None:
    server.store.queue_status("dp1", p.app_key("dev", "shop"), status)
    await server.store.flush()


def _operator_status(rollout: RolloutStatus, revision: int) -> dict[str, Any]:
    """The status the operator writes for a healthy stable side and this rollout state."""
    spec = ChoreoAppSpec.model_validate(app_spec("ghcr.io/acme/shop:2", rollout=CANARY, environment="dev"))
    dep = DeploymentSummary(
        uid="u",
        generation=1,
        observed_generation=1,
        spec_replicas=1,
        replicas=1,
        updated_replicas=1,
        ready_replicas=1,
        available_replicas=1,
        image="ghcr.io/acme/shop:1",
        progress_deadline_exceeded=False,
        progressing_message=None,
    )
    obs = AppObservation(
        name="shop", generation=1, revision=revision, spec=spec, deployment=dep, rollout=rollout
    )
    return compute_app_status(obs)


async def test_promote_rollout_sets_the_reported_step_once_and_never_lowers_it(
    conn: list[str],
    canary_app: int,
    server: ControlPlaneServer,
    http: httpx.AsyncClient,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = await run_cli(["cp", "promote-rollout", *TARGET, *conn], capsys)
    assert code == 1 and "reported no rollout step" in err and "--step N" in err

    paused = RolloutStatus(phase="Paused", step=2, weight=50, summary="Canary 50% paused")
    await _report(server, _operator_status(paused, canary_app))
    code, out, err = await run_cli(["cp", "promote-rollout", *TARGET, *conn], capsys)
    assert code == 0, err
    desired = await _desired(http)
    assert desired["spec"]["rollout"]["promote"] == 2 and desired["revision"] > canary_app
    assert (
        out.strip() == f"choreoapp/dev/shop: spec.rollout.promote set to 2 (revision {desired['revision']})"
    )

    # Again, or for an earlier step: the same spec, no new revision.
    for extra in ([], ["--step", "1"]):
        code, out, err = await run_cli(["cp", "promote-rollout", *TARGET, *extra, *conn], capsys)
        assert code == 0, err
        assert "unchanged" in out
    assert (await _desired(http))["revision"] == desired["revision"]

    code, _, err = await run_cli(["cp", "promote-rollout", *TARGET, "--step", "9", *conn], capsys)
    assert code == 0, err
    after = (await _desired(http))["spec"]["rollout"]
    assert after["promote"] == 3  # no further than the last step
    assert after["steps"][0] == {"weight": 25, "pause": "manual"} and not after.get("abort")


async def test_abort_rollout_is_a_new_revision_once(
    conn: list[str], canary_app: int, http: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await run_cli(["cp", "abort-rollout", *TARGET, *conn], capsys)
    assert code == 0, err
    desired = await _desired(http)
    assert desired["spec"]["rollout"]["abort"] is True and desired["revision"] > canary_app
    assert desired["spec"]["image"] == "ghcr.io/acme/shop:2"
    code, out, err = await run_cli(["cp", "abort-rollout", *TARGET, *conn], capsys)
    assert code == 0 and "unchanged" in out
    assert (await _desired(http))["revision"] == desired["revision"]


async def test_rollout_verbs_refuse_an_app_without_a_canary(
    conn: list[str], server: ControlPlaneServer, http: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    await register(http, "dp1")
    await put_env(http, "dp1", "dev")
    revision = await put_app(http, "dp1", "dev", "shop", app_spec())
    for verb in ("promote-rollout", "abort-rollout"):
        code, _, err = await run_cli(["cp", verb, *TARGET, *conn], capsys)
        assert code == 1 and "has no canary rollout" in err, err
    assert (await _desired(http))["revision"] == revision


async def test_get_apps_shows_the_rollout_step_and_an_abort(
    conn: list[str], canary_app: int, server: ControlPlaneServer, capsys: pytest.CaptureFixture[str]
) -> None:
    step = RolloutStatus(phase="Progressing", step=1, weight=25, summary="Canary 25%")
    await _report(server, _operator_status(step, canary_app))
    code, out, err = await run_cli(["cp", "get", "apps", "--dataplane", "dp1", *conn], capsys)
    assert code == 0, err
    row = out.splitlines()[1]
    assert "Progressing" in row and "Canary 25%, step 1/3" in row

    aborted = RolloutStatus(
        phase="Aborted",
        step=1,
        summary="Aborted",
        message="canary failed 3 consecutive checks; last: canary readiness: 0/1 pods ready",
    )
    await _report(server, _operator_status(aborted, canary_app))
    code, out, err = await run_cli(["cp", "get", "apps", "--dataplane", "dp1", "-o", "wide", *conn], capsys)
    assert code == 0, err
    row = out.splitlines()[1]
    assert "Degraded" in row and "RolloutAborted: canary failed 3 consecutive checks" in row
