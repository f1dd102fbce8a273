"""The operator never lies and never stalls, against the in-memory fake client (no API server).

A refused child is recorded on its owner (Degraded/Failed, ApplyFailed, the API's words, a Warning
Event) and retried with backoff only when retrying can help; a status written by another version
of the operator is tolerated; a DataPlane whose agent stopped renewing its heartbeat is marked not
connected; each reconcile that changed something says so in one log line.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from choreo_dp.kube import ApiError
from choreo_dp.kube import resources as R
from choreo_dp.observability.logging import JsonFormatter
from choreo_dp.operator import app_reconciler, dataplane_reconciler, env_reconciler, heartbeat
from choreo_dp.operator.config import OperatorConfig
from choreo_dp.operator.keys import AppKey, DataPlaneKey, EnvKey
from choreo_dp.operator.manager import new_controller
from choreo_dp.operator.reconcile import DONE, ReconcileContext, Result, TerminalError
from choreo_dp.operator.state import HeartbeatSeen
from tests import polling
from tests.operator.test_reconcilers_unit import CAPS, Rig

QUOTA_REFUSAL = ApiError(
    403,
    "Forbidden",
    'deployments.apps "web" is forbidden: exceeded quota: objects, requested: count/deployments.apps=1, '
    "used: count/deployments.apps=0, limited: count/deployments.apps=0",
)


def ready_condition(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Ready")


# --- a refused child is recorded ----------------------------------------------------------------


async def test_refused_child_makes_the_app_degraded_with_the_apis_message_and_is_terminal() -> None:
    rig = Rig()
    await rig.ready_env()
    key = rig.app("web")
    rig.kube.refuse["apply", "deployments"] = QUOTA_REFUSAL

    with pytest.raises(TerminalError):
        await app_reconciler.reconcile(rig.ctx, key)

    status = rig.status(R.CHOREOAPPS, "web", "choreo-dev")
    assert status["phase"] == "Degraded"
    assert "exceeded quota: objects" in status["message"] and "Deployment choreo-dev/web" in status["message"]
    ready = ready_condition(status)
    assert (ready["status"], ready["reason"]) == ("False", "ApplyFailed")
    assert ready["message"] == status["message"]
    assert [(e[1], e[2]) for e in rig.kube.events] == [("Warning", "ApplyFailed")]


async def test_a_ready_app_whose_child_is_later_refused_is_no_longer_ready() -> None:
    rig = Rig()
    await rig.ready_env()
    key = rig.app("web", type="worker")
    await app_reconciler.reconcile(rig.ctx, key)
    rig.observe()
    # Someone edits the Deployment; putting it back is refused by a webhook.
    dep = rig.kube.stored(R.DEPLOYMENTS, "web", "choreo-dev")
    assert dep is not None
    dep["spec"]["replicas"] = 5
    dep["metadata"]["generation"] += 1
    rig.observe()
    rig.kube.refuse["apply", "deployments"] = ApiError(
        400, "BadRequest", 'admission webhook "policy.example.com" denied the request: no'
    )

    with pytest.raises(TerminalError):
        await app_reconciler.reconcile(rig.ctx, key)

    status = rig.status(R.CHOREOAPPS, "web", "choreo-dev")
    assert status["phase"] == "Degraded" and "denied the request" in status["message"]


async def test_a_refused_prune_is_recorded_too() -> None:
    rig = Rig()
    await rig.ready_env()
    key = rig.app("web", endpoints=[{"name": "api", "port": 8080}])
    await app_reconciler.reconcile(rig.ctx, key)
    rig.observe()
    assert rig.kube.stored(R.SERVICES, "web", "choreo-dev") is not None
    app = rig.kube.stored(R.CHOREOAPPS, "web", "choreo-dev")
    assert app is not None
    app["spec"]["endpoints"] = []
    app["metadata"]["generation"] += 1
    rig.observe()
    rig.kube.refuse["delete", "services"] = ApiError(403, "Forbidden", "services is forbidden: RBAC says no")

    with pytest.raises(TerminalError):
        await app_reconciler.reconcile(rig.ctx, key)

    status = rig.status(R.CHOREOAPPS, "web", "choreo-dev")
    assert status["phase"] == "Degraded"
    assert status["message"].startswith("delete of Service choreo-dev/web refused: 403 Forbidden")


@pytest.mark.parametrize(
    "error",
    [
        ApiError(503, "ServiceUnavailable", "etcd is slow"),
        ApiError(429, "TooManyRequests", "slow down", retry_after=1.0),
        ApiError(
            403,
            "Forbidden",
            "unable to create new content in namespace choreo-dev because it is being terminated",
        ),
        ApiError(409, "Conflict", "the object has been modified"),
    ],
    ids=["503", "429", "namespace-terminating", "409"],
)
async def test_a_retryable_refusal_is_recorded_and_raised_for_backoff(error: ApiError) -> None:
    rig = Rig()
    await rig.ready_env()
    key = rig.app("web")
    rig.kube.refuse["apply", "deployments"] = error

    with pytest.raises(ApiError) as raised:
        await app_reconciler.reconcile(rig.ctx, key)

    assert not isinstance(raised.value, TerminalError) and raised.value.status == error.status
    assert raised.value.retry_after == error.retry_after  # the server's Retry-After reaches the queue
    assert rig.status(R.CHOREOAPPS, "web", "choreo-dev")["phase"] == "Degraded"


async def _controller_run(rig: Rig, key: AppKey, reconciled: asyncio.Event) -> None:
    rig.ctl.cache_synced.set()  # the test feeds the queue itself: no listing to wait for
    await rig.ctl.start()
    try:
        rig.ctl.queue.add(key)
        await asyncio.wait_for(reconciled.wait(), 5)
        await polling.eventually(lambda: rig.ctl.queue.in_flight == 0, timeout=5, what="worker done")
    finally:
        await rig.ctl.stop()


@pytest.mark.parametrize("status, backed_off", [(403, False), (503, True)])
async def test_terminal_refusals_are_not_retried_hot_and_retryable_ones_back_off(
    status: int, backed_off: bool
) -> None:
    rig = Rig()
    await rig.ready_env()
    key = rig.app("web")
    rig.kube.refuse["apply", "deployments"] = ApiError(status, "Refused", "no")
    reconciled = asyncio.Event()

    async def observed(ctx: ReconcileContext, request: AppKey) -> Result:
        try:
            return await app_reconciler.reconcile(ctx, request)
        finally:
            reconciled.set()

    rig.ctl.register(AppKey, observed)
    await _controller_run(rig, key, reconciled)

    assert (rig.ctl.queue.failures(key) == 1) is backed_off
    assert rig.status(R.CHOREOAPPS, "web", "choreo-dev")["phase"] == "Degraded"


async def test_after_a_terminal_refusal_a_spec_change_brings_the_app_back() -> None:
    rig = Rig()
    await rig.ready_env()
    key = rig.app("web")
    rig.kube.refuse["apply", "deployments"] = QUOTA_REFUSAL
    with pytest.raises(TerminalError):
        await app_reconciler.reconcile(rig.ctx, key)
    rig.observe()
    del rig.kube.refuse["apply", "deployments"]
    app = rig.kube.stored(R.CHOREOAPPS, "web", "choreo-dev")
    assert app is not None
    app["spec"]["image"] = "registry.example.com/shop/x:2"
    app["metadata"]["generation"] += 1
    rig.observe()

    assert await app_reconciler.reconcile(rig.ctx, key) == Result(requeue_after=7.0)

    status = rig.status(R.CHOREOAPPS, "web", "choreo-dev")
    assert status["phase"] == "Progressing" and ready_condition(status)["reason"] != "ApplyFailed"


async def test_refused_environment_child_fails_the_environment_with_the_apis_message() -> None:
    rig = Rig()
    key = await rig.env("dev")
    rig.kube.refuse["apply", "networkpolicies"] = ApiError(
        403, "Forbidden", "networkpolicies is forbidden: exceeded quota: objects"
    )

    with pytest.raises(TerminalError):
        await env_reconciler.reconcile(rig.ctx, key)

    status = rig.status(R.ENVIRONMENTS, "dev")
    assert status["phase"] == "Failed"
    ready = ready_condition(status)
    assert ready["reason"] == "ApplyFailed" and "exceeded quota: objects" in ready["message"]
    assert ("dev", "Warning", "ApplyFailed") in [e[:3] for e in rig.kube.events]


# --- spec only, never status -----------------------------------------------------------------


async def test_unknown_status_fields_from_another_operator_version_do_not_fail_the_app() -> None:
    rig = Rig()
    await rig.ready_env()
    key = rig.app("web", type="scheduledTask", schedule="*/5 * * * *")
    await app_reconciler.reconcile(rig.ctx, key)
    rig.observe()
    await app_reconciler.reconcile(rig.ctx, key)
    rig.observe()
    assert rig.status(R.CHOREOAPPS, "web", "choreo-dev")["phase"] == "Ready"
    app = rig.kube.stored(R.CHOREOAPPS, "web", "choreo-dev")
    assert app is not None
    app["status"]["rolloutStep"] = {"weight": 20}  # a field a newer operator writes
    app["status"]["conditions"].append(
        {"type": "Canary", "status": "True", "reason": "Paused", "someNewField": 1}
    )
    env = rig.kube.stored(R.ENVIRONMENTS, "dev")
    assert env is not None
    env["status"]["gatewaysReady"] = True
    rig.observe()

    await app_reconciler.reconcile(rig.ctx, key)
    assert await env_reconciler.reconcile(rig.ctx, EnvKey("dev")) == DONE

    assert rig.status(R.CHOREOAPPS, "web", "choreo-dev")["phase"] == "Ready"
    assert rig.status(R.ENVIRONMENTS, "dev")["phase"] == "Ready"


# --- say what happened -------------------------------------------------------------------------


async def test_a_reconcile_that_changed_something_logs_one_line_and_a_no_op_logs_none(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = Rig()
    await rig.ready_env()
    key = rig.app("web", endpoints=[{"name": "api", "port": 8080}])
    caplog.set_level(logging.INFO, logger="choreo_dp.operator")

    await app_reconciler.reconcile(rig.ctx, key)

    lines = [r for r in caplog.records if r.name == "choreo_dp.operator.app"]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    line = lines[0]
    assert "created Deployment/web, Service/web" in line.getMessage()
    assert "phase - -> Progressing" in line.getMessage()
    payload = JsonFormatter().format(line)
    assert (
        '"object":"choreo-dev/web"' in payload
        and '"children_created":"Deployment/web,Service/web"' in payload
    )
    assert '"phase":"Progressing"' in payload

    rig.observe()
    caplog.clear()
    await app_reconciler.reconcile(rig.ctx, key)
    assert [r.getMessage() for r in caplog.records if r.name == "choreo_dp.operator.app"] == []

    dep = rig.kube.stored(R.DEPLOYMENTS, "web", "choreo-dev")
    assert dep is not None
    dep["spec"]["replicas"] = 4
    dep["metadata"]["generation"] += 1
    rig.observe()
    await app_reconciler.reconcile(rig.ctx, key)
    messages = [r.getMessage() for r in caplog.records if r.name == "choreo_dp.operator.app"]
    assert messages == ["choreoapp choreo-dev/web: updated Deployment/web"]


# --- DataPlane heartbeat -----------------------------------------------------------------------


def stamp(seconds_ago: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize(
    "status, seen, now, expired, remaining",
    [
        ({"connected": False, "lastHeartbeatTime": "x"}, None, 100.0, None, None),
        ({"connected": True}, None, 100.0, None, None),
        # seen 10 s ago (local clock), default bound 45: alive for 35 s more
        ({"connected": True, "lastHeartbeatTime": "t1"}, HeartbeatSeen("t1", 90.0, 0.0), 100.0, False, 35.0),
        ({"connected": True, "lastHeartbeatTime": "t1"}, HeartbeatSeen("t1", 50.0, 0.0), 100.0, True, 0.0),
        # the agent's own bound wins over the default
        (
            {"connected": True, "lastHeartbeatTime": "t1", "heartbeatBoundSeconds": 5},
            HeartbeatSeen("t1", 90.0, 0.0),
            100.0,
            True,
            0.0,
        ),
        # the first heartbeat a process saw was already 40 s old by the wall clock
        ({"connected": True, "lastHeartbeatTime": "t1"}, HeartbeatSeen("t1", 95.0, 40.0), 100.0, True, 0.0),
        # a renewal newer than the watch showed (a reread after a conflict): just renewed
        ({"connected": True, "lastHeartbeatTime": "t2"}, HeartbeatSeen("t1", 0.0, 0.0), 100.0, False, 45.0),
    ],
)
def test_heartbeat_verdicts(
    status: dict[str, Any],
    seen: HeartbeatSeen | None,
    now: float,
    expired: bool | None,
    remaining: float | None,
) -> None:
    verdict = heartbeat.judge(status, seen, now, 0.0, 45.0)
    if expired is None:
        assert verdict is None
        return
    assert verdict is not None
    assert (verdict.expired, verdict.remaining) == (expired, remaining)


def test_clock_skew_never_makes_a_renewing_agent_look_dead() -> None:
    # The agent's clock is 10 minutes behind ours: every timestamp it writes looks old.
    first = heartbeat.observe(None, {"lastHeartbeatTime": stamp(600)}, 0.0, datetime.now(UTC).timestamp())
    assert first.age_when_seen >= 599  # trusted once, at start (one verdict, then the renewal wins)
    renewed = heartbeat.observe(first, {"lastHeartbeatTime": stamp(590)}, 10.0, datetime.now(UTC).timestamp())
    assert renewed.age_when_seen == 0.0
    verdict = heartbeat.judge(
        {"connected": True, "lastHeartbeatTime": renewed.value},
        renewed,
        20.0,
        datetime.now(UTC).timestamp(),
        45.0,
    )
    assert verdict is not None and not verdict.expired and verdict.remaining == pytest.approx(35.0)


def dataplane(name: str, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"controlPlaneURL": "wss://cp.example.com", "dataplaneId": name},
        "status": {
            "conditions": [
                {
                    "type": "Connected",
                    "status": "True",
                    "reason": "SessionUp",
                    "message": "",
                    "lastTransitionTime": stamp(900),
                },
                {
                    "type": "InSync",
                    "status": "True",
                    "reason": "DigestsEqual",
                    "message": "",
                    "lastTransitionTime": stamp(900),
                    "agentOnly": 1,
                },
            ],
            **status,
        },
    }


async def test_an_expired_heartbeat_marks_the_dataplane_not_connected() -> None:
    rig = Rig()
    rig.kube.put(R.DATAPLANES, dataplane("dp", connected=True, lastHeartbeatTime=stamp(60), epoch="e1"))
    rig.observe()
    rv = rig.kube.stored(R.DATAPLANES, "dp")["metadata"]["resourceVersion"]  # type: ignore[index]

    assert await dataplane_reconciler.reconcile(rig.ctx, DataPlaneKey("dp")) == DONE

    patch = next(c for c in rig.kube.writes if c.plural == "dataplanes")
    assert patch.subresource == "status" and patch.body["metadata"] == {"resourceVersion": rv}
    status = rig.status(R.DATAPLANES, "dp")
    assert status["connected"] is False and status["epoch"] == "e1"
    conds = {c["type"]: c for c in status["conditions"]}
    assert (conds["Connected"]["status"], conds["Connected"]["reason"]) == ("False", "HeartbeatExpired")
    assert (
        "45s" in conds["Connected"]["message"]
        and status["lastHeartbeatTime"] in conds["Connected"]["message"]
    )
    assert (conds["Ready"]["status"], conds["Ready"]["reason"]) == ("Unknown", "HeartbeatExpired")
    assert conds["InSync"]["agentOnly"] == 1  # the agent's own conditions are kept whole
    assert [(e[0], e[2]) for e in rig.kube.events] == [("dp", "HeartbeatExpired")]
    # Our write comes back through the watch: nothing more to do, nothing written.
    rig.observe()
    rig.kube.calls.clear()
    assert await dataplane_reconciler.reconcile(rig.ctx, DataPlaneKey("dp")) == DONE
    assert rig.kube.writes == []


async def test_a_live_heartbeat_is_looked_at_again_when_it_would_expire() -> None:
    rig = Rig()
    rig.kube.put(
        R.DATAPLANES, dataplane("dp", connected=True, lastHeartbeatTime=stamp(0), heartbeatBoundSeconds=20)
    )

    rig.observe()
    result = await dataplane_reconciler.reconcile(rig.ctx, DataPlaneKey("dp"))

    assert result.requeue_after is not None and 19.0 < result.requeue_after <= 20.5
    assert rig.kube.writes == []


async def test_a_renewal_racing_the_expiry_write_wins() -> None:
    rig = Rig()
    rig.kube.put(R.DATAPLANES, dataplane("dp", connected=True, lastHeartbeatTime=stamp(60)))
    rig.observe()
    # The agent renews after our read: our conditional write is a 409, the reread shows it alive.
    stored = rig.kube.stored(R.DATAPLANES, "dp")
    assert stored is not None
    await rig.kube.patch(
        R.DATAPLANES, "dp", {"status": {"lastHeartbeatTime": stamp(0)}}, subresource="status"
    )

    result = await dataplane_reconciler.reconcile(rig.ctx, DataPlaneKey("dp"))

    assert result.requeue_after is not None and result.requeue_after > 40
    assert rig.status(R.DATAPLANES, "dp")["connected"] is True
    assert [c.verb for c in rig.kube.calls if c.plural == "dataplanes"] == ["patch", "patch", "get"]


async def test_the_default_bound_comes_from_the_config() -> None:
    rig = Rig()
    rig.ctl = new_controller(
        rig.kube, OperatorConfig(secrets_factory=None, dataplane_heartbeat_bound_seconds=5.0), CAPS, None
    )
    rig.kube.put(R.DATAPLANES, dataplane("dp", connected=True, lastHeartbeatTime=stamp(10)))
    rig.observe()

    assert await dataplane_reconciler.reconcile(rig.ctx, DataPlaneKey("dp")) == DONE
    assert rig.status(R.DATAPLANES, "dp")["connected"] is False


# --- never stall -------------------------------------------------------------------------------


async def test_healthz_fails_when_every_worker_is_stuck_and_recovers_when_they_move() -> None:
    kube = Rig().kube
    config = OperatorConfig(
        secrets_factory=None, workers=2, liveness_max_silence=0.3, env_resync_seconds=0.05
    )
    ctl = new_controller(kube, config, CAPS, None)
    release = asyncio.Event()

    async def stuck(ctx: ReconcileContext, key: EnvKey) -> Result:
        await asyncio.wait_for(release.wait(), 10)
        return DONE

    ctl.register(EnvKey, stuck)
    ctl.cache_synced.set()  # the test feeds the queue itself: no listing to wait for
    await ctl.start()
    try:
        await polling.eventually(lambda: ctl.liveness.healthy, timeout=5, what="healthy while idle")
        for name in ("a", "b", "c"):
            ctl.queue.add(EnvKey(name))
        await polling.eventually(lambda: not ctl.liveness.healthy, timeout=5, what="unhealthy while stuck")
        assert any("no progress" in p for p in ctl.liveness.problems())
        release.set()
        await polling.eventually(lambda: ctl.liveness.healthy, timeout=5, what="healthy again")
    finally:
        await ctl.stop()
