"""spec.rollout and status.rollout: validation, durations, defaults, the wire form."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from choreo_dp.api import ChoreoAppSpec
from choreo_dp.api.rollout import Rollout, RolloutStatus, parse_duration

BASE: dict[str, Any] = {
    "environment": "dev",
    "project": "shop",
    "type": "service",
    "image": "registry.example.com/shop/orders:1.2.3",
}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h30m", 5400), ("1.5s", 1.5), ("250ms", 0.25), ("2h0m1s", 7201)],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "30", "5 m", "1d", "-1s", "1h-5m", "s", "manual"])
def test_not_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_default_is_a_rolling_update_with_default_gate() -> None:
    rollout = Rollout()
    assert rollout.strategy == "RollingUpdate" and not rollout.canary and rollout.steps == []
    assert rollout.gate.failure_threshold == 3 and rollout.gate.interval_delta == timedelta(seconds=10)
    assert ChoreoAppSpec.model_validate(BASE).rollout is None


def test_a_full_canary_round_trips_through_its_wire_form() -> None:
    wire = {
        "strategy": "Canary",
        "steps": [
            {"weight": 10, "pause": "30s"},
            {"weight": 50, "pause": "manual"},
            {"weight": 100, "pause": "5m"},
        ],
        "analysis": {"httpGet": {"path": "/healthz", "port": 8080}, "failureThreshold": 2, "interval": "15s"},
        "promote": 2,
        "abort": False,
    }
    spec = ChoreoAppSpec.model_validate({**BASE, "rollout": wire})
    assert spec.rollout is not None and spec.rollout.to_k8s() == wire
    assert [s.manual for s in spec.rollout.steps] == [False, True, False]
    assert spec.rollout.steps[0].duration == timedelta(seconds=30)


@pytest.mark.parametrize(
    ("rollout", "words"),
    [
        ({"strategy": "Canary"}, "at least one step"),
        ({"strategy": "Canary", "steps": [{"weight": 50}, {"weight": 20}]}, "must not decrease"),
        ({"strategy": "Canary", "steps": [{"weight": 100}, {"weight": 100}]}, "only the last"),
        ({"strategy": "Canary", "steps": [{"weight": 0}]}, "greater than or equal to 1"),
        ({"strategy": "Canary", "steps": [{"weight": 101}]}, "less than or equal to 100"),
        ({"strategy": "Canary", "steps": [{"weight": 10, "pause": "0s"}]}, "between 1s"),
        ({"strategy": "Canary", "steps": [{"weight": 10, "pause": "200h"}]}, "between 1s"),
        ({"strategy": "Canary", "steps": [{"weight": 10, "pause": "soon"}]}, "pattern"),
        ({"strategy": "Canary", "steps": [{"weight": 10}], "analysis": {"interval": "500ms"}}, "between 1s"),
        (
            {"strategy": "Canary", "steps": [{"weight": 10}], "analysis": {"failureThreshold": 0}},
            "greater than",
        ),
        ({"strategy": "Canary", "steps": [{"weight": 10}] * 21}, "at most 20"),
        ({"strategy": "RollingUpdate", "steps": [{"weight": 10}]}, "only apply to strategy Canary"),
        ({"strategy": "BlueGreen"}, "Canary"),
        ({"strategy": "Canary", "steps": [{"weight": 10}], "promote": 0}, "greater than or equal to 1"),
    ],
)
def test_invalid_rollouts_name_the_problem(rollout: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError) as err:
        ChoreoAppSpec.model_validate({**BASE, "rollout": rollout})
    assert words in str(err.value)


def test_canary_needs_a_long_running_type() -> None:
    rollout = {"strategy": "Canary", "steps": [{"weight": 10}]}
    with pytest.raises(ValidationError, match="long-running"):
        ChoreoAppSpec.model_validate(
            {**BASE, "type": "scheduledTask", "schedule": "0 3 * * *", "rollout": rollout}
        )
    assert ChoreoAppSpec.model_validate({**BASE, "type": "worker", "rollout": rollout}).rollout is not None


def test_status_round_trips_and_defaults_to_idle() -> None:
    status = RolloutStatus(
        phase="Paused",
        step=2,
        weight=50,
        stable_revision="a" * 16,
        canary_revision="b" * 16,
        started_at="2026-01-01T12:00:00Z",
        step_started_at="2026-01-01T12:01:00Z",
        failures=1,
        promote_requested=True,
        summary="Canary 50% paused",
    )
    assert RolloutStatus.model_validate(status.to_k8s()) == status
    assert status.to_k8s()["stableRevision"] == "a" * 16
    assert RolloutStatus().phase == "Idle"


def test_crd_has_the_rollout_column_and_schema() -> None:
    from choreo_dp.api.choreoapp import ChoreoApp
    from choreo_dp.api.crdgen import crd_for

    crd = crd_for(ChoreoApp)
    version = crd["spec"]["versions"][0]
    assert {"name": "Rollout", "type": "string", "jsonPath": ".status.rollout.summary"} in version[
        "additionalPrinterColumns"
    ]
    props = version["schema"]["openAPIV3Schema"]["properties"]
    steps = props["spec"]["properties"]["rollout"]["properties"]["steps"]
    assert steps["items"]["properties"]["weight"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 100,
        "description": steps["items"]["properties"]["weight"]["description"],
    }
    assert "rollout" in props["status"]["properties"]
