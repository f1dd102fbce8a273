"""Validation of the API models: what the contract allows and what it refuses."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from choreo_dp.api import (
    ChoreoApp,
    ChoreoAppSpec,
    Condition,
    DataPlane,
    Environment,
    EnvironmentSpec,
    set_condition,
)
from choreo_dp.api.environment import parse_duration

from .samples import DATAPLANE, app, example_objects

MODELS = {"Environment": Environment, "ChoreoApp": ChoreoApp, "DataPlane": DataPlane}


@pytest.mark.parametrize("obj", example_objects(), ids=lambda o: o["metadata"]["name"])
def test_examples_are_valid(obj: dict[str, Any]) -> None:
    model = MODELS[obj["kind"]].model_validate(obj)
    assert model.metadata.name == obj["metadata"]["name"]


def test_dataplane_sample_is_valid() -> None:
    dp = DataPlane.model_validate(DATAPLANE)
    assert dp.status is not None and dp.status.applied_revision == 42


def test_defaults_and_aliases_round_trip() -> None:
    spec = ChoreoAppSpec.model_validate(app(endpoints=[{"name": "http", "port": 8080}]))
    assert spec.replicas == 1 and spec.suspend is False
    assert spec.endpoints[0].visibility == "Project" and spec.endpoints[0].base_path == "/"
    wire = spec.to_k8s()
    assert wire["endpoints"][0]["basePath"] == "/"
    assert ChoreoAppSpec.model_validate(wire) == spec


def test_environment_namespace_defaults_to_choreo_name() -> None:
    env = Environment.model_validate({"metadata": {"name": "dev"}, "spec": {}})
    assert env.target_namespace == "choreo-dev"
    env = Environment.model_validate({"metadata": {"name": "dev"}, "spec": {"namespace": "team-a"}})
    assert env.target_namespace == "team-a"


INVALID_APPS: list[tuple[str, dict[str, Any], str]] = [
    ("bad type", app(type="daemon"), "type"),
    ("bad env name", app(environment="Dev_1"), "environment"),
    ("port zero", app(endpoints=[{"name": "h", "port": 0}]), "port"),
    ("port too high", app(endpoints=[{"name": "h", "port": 65536}]), "port"),
    ("bad protocol", app(endpoints=[{"name": "h", "port": 80, "protocol": "SOAP"}]), "protocol"),
    ("bad visibility", app(endpoints=[{"name": "h", "port": 80, "visibility": "World"}]), "visibility"),
    (
        "duplicate endpoint",
        app(endpoints=[{"name": "h", "port": 80}, {"name": "h", "port": 81}]),
        "endpoints names must be unique",
    ),
    ("min > max", app(autoscaling={"minReplicas": 5, "maxReplicas": 2}), "maxReplicas"),
    ("schedule missing", app(type="scheduledTask"), "schedule is required"),
    ("schedule on service", app(schedule="* * * * *"), "schedule is required"),
    ("bad cron", app(type="scheduledTask", schedule="61 * * * *"), "cron"),
    ("six-field cron", app(type="scheduledTask", schedule="0 * * * * *"), "five cron fields"),
    ("secret env name", app(secrets=[{"name": "1BAD", "keyVaultSecret": "x"}]), "name"),
    ("secret env dash", app(secrets=[{"name": "DB-PASS", "keyVaultSecret": "x"}]), "name"),
    ("secret name chars", app(secrets=[{"name": "DB", "keyVaultSecret": "a_b"}]), "keyVaultSecret"),
    ("secret version", app(secrets=[{"name": "DB", "keyVaultSecret": "db", "version": "latest"}]), "version"),
    (
        "env and secret clash",
        app(env=[{"name": "DB", "value": "x"}], secrets=[{"name": "DB", "keyVaultSecret": "db"}]),
        "both env and secrets",
    ),
    ("negative replicas", app(replicas=-1), "replicas"),
    (
        "task endpoints",
        app(type="manualTask", endpoints=[{"name": "h", "port": 80}]),
        "cannot have endpoints",
    ),
    (
        "probe both",
        app(probes={"liveness": {"httpGet": {"port": 80}, "tcpSocket": {"port": 80}}}),
        "exactly one",
    ),
    ("probe none", app(probes={"readiness": {}}), "exactly one"),
    ("unknown field", app(replica=3), "replica"),
    ("image with space", app(image="ghcr.io/a b"), "image"),
]


@pytest.mark.parametrize(("case", "spec", "needle"), INVALID_APPS, ids=[c[0] for c in INVALID_APPS])
def test_invalid_apps_are_refused_with_a_clear_reason(case: str, spec: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError) as info:
        ChoreoAppSpec.model_validate(spec)
    assert needle in str(info.value), case


@pytest.mark.parametrize(
    "spec",
    [
        {"deletionPolicy": "Destroy"},
        {"namespace": "Not-A-Label"},
        {"keyVault": {"url": "http://vault.example"}},
        {"keyVault": {"url": "https://v.vault.azure.net/", "refreshInterval": "soon"}},
        {"keyVault": {"url": "https://v.vault.azure.net/", "refreshInterval": "0s"}},
        {"quota": {"pods": -1}},
        {"quota": {"cpu": "lots"}},
        {"gateways": {"external": {"hostname": "Bad_Host"}}},
    ],
)
def test_invalid_environments_are_refused(spec: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        EnvironmentSpec.model_validate(spec)


def test_durations() -> None:
    assert parse_duration("1h") == 3600
    assert parse_duration("1h30m") == 5400
    assert parse_duration("250ms") == 0.25


def test_set_condition_keeps_transition_time_when_status_is_unchanged() -> None:
    first = Condition(
        type="Ready", status="False", reason="Rollout", last_transition_time="2026-01-01T00:00:00Z"
    )
    conds = set_condition([], first)
    same = Condition(
        type="Ready", status="False", reason="StillRollout", last_transition_time="2026-02-02T00:00:00Z"
    )
    conds = set_condition(conds, same)
    assert conds[0].reason == "StillRollout" and conds[0].last_transition_time == "2026-01-01T00:00:00Z"
    flipped = Condition(
        type="Ready", status="True", reason="Available", last_transition_time="2026-03-03T00:00:00Z"
    )
    conds = set_condition(conds, flipped)
    assert len(conds) == 1 and conds[0].last_transition_time == "2026-03-03T00:00:00Z"


dns_labels = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")


@given(dns_labels, dns_labels)
def test_any_dns_label_is_accepted_for_environment_and_project(env: str, project: str) -> None:
    spec = ChoreoAppSpec.model_validate(app(environment=env, project=project))
    assert (spec.environment, spec.project) == (env, project)


@given(st.text(min_size=1, max_size=70))
def test_names_that_are_not_dns_labels_are_refused(name: str) -> None:
    import re

    valid = re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) is not None and len(name) <= 63
    try:
        ChoreoAppSpec.model_validate(app(project=name))
    except ValidationError:
        assert not valid
    else:
        assert valid


@given(st.integers(min_value=-100_000, max_value=100_000))
def test_ports_must_be_in_range(port: int) -> None:
    try:
        ChoreoAppSpec.model_validate(app(endpoints=[{"name": "p", "port": port}]))
    except ValidationError:
        assert not 1 <= port <= 65535
    else:
        assert 1 <= port <= 65535


@given(st.integers(1, 1000), st.integers(1, 1000))
def test_autoscaling_bounds(lo: int, hi: int) -> None:
    try:
        ChoreoAppSpec.model_validate(app(autoscaling={"minReplicas": lo, "maxReplicas": hi}))
    except ValidationError:
        assert hi < lo
    else:
        assert hi >= lo
