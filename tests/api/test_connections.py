"""spec.connections: the name grammar, uniqueness, no clash with the app's own variables, not itself."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from choreo_dp.api import ChoreoApp, ChoreoAppSpec
from choreo_dp.api.connections import Connection, env_names
from choreo_dp.api.crdgen import crd_for
from tests.api.samples import app


def conn(
    name: str = "orders-api", target: str = "orders", endpoint: str = "http", **extra: Any
) -> dict[str, Any]:
    return {"name": name, "app": target, "endpoint": endpoint, **extra}


# (case, spec extras, expected error fragment or None when valid)
CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("one connection", {"connections": [conn()]}, None),
    ("other project named", {"connections": [conn(project="billing")]}, None),
    ("single letter name", {"connections": [conn(name="a")]}, None),
    ("two connections", {"connections": [conn(), conn(name="pay", target="payments")]}, None),
    ("same target twice, two names", {"connections": [conn(), conn(name="orders-2")]}, None),
    ("upper-case name", {"connections": [conn(name="Orders")]}, "String should match pattern"),
    ("underscore name", {"connections": [conn(name="orders_api")]}, "String should match pattern"),
    ("leading digit", {"connections": [conn(name="1orders")]}, "String should match pattern"),
    ("trailing dash", {"connections": [conn(name="orders-")]}, "String should match pattern"),
    ("too long name", {"connections": [conn(name="a" * 49)]}, "at most 48 characters"),
    ("bad app name", {"connections": [conn(target="Orders")]}, "String should match pattern"),
    ("bad endpoint name", {"connections": [conn(endpoint="http_1")]}, "String should match pattern"),
    ("unknown field", {"connections": [conn(port=80)]}, "Extra inputs are not permitted"),
    ("missing endpoint", {"connections": [{"name": "x", "app": "orders"}]}, "Field required"),
    ("repeated name", {"connections": [conn(), conn(target="other")]}, "connections names must be unique"),
    (
        "clash with env",
        {"env": [{"name": "ORDERS_API_URL", "value": "x"}], "connections": [conn()]},
        "injects ORDERS_API_URL, already set by spec.env or spec.secrets",
    ),
    (
        "clash with secret",
        {"secrets": [{"name": "ORDERS_API_PORT", "keyVaultSecret": "p"}], "connections": [conn()]},
        "injects ORDERS_API_PORT",
    ),
    (
        "near miss is fine",
        {"env": [{"name": "ORDERS_API", "value": "x"}], "connections": [conn()]},
        None,
    ),
    ("task may call", {"type": "manualTask", "connections": [conn()]}, None),
]


@pytest.mark.parametrize(("case", "extra", "error"), CASES, ids=[c[0] for c in CASES])
def test_connection_rules(case: str, extra: dict[str, Any], error: str | None) -> None:
    if error is None:
        spec = ChoreoAppSpec.model_validate(app(**extra))
        assert [c.name for c in spec.connections] == [c["name"] for c in extra["connections"]]
        return
    with pytest.raises(ValidationError) as info:
        ChoreoAppSpec.model_validate(app(**extra))
    assert error in str(info.value)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("orders-api", ["ORDERS_API_URL", "ORDERS_API_HOST", "ORDERS_API_PORT", "ORDERS_API_BASE_PATH"]),
        ("db", ["DB_URL", "DB_HOST", "DB_PORT", "DB_BASE_PATH"]),
        ("a1-b2-c3", ["A1_B2_C3_URL", "A1_B2_C3_HOST", "A1_B2_C3_PORT", "A1_B2_C3_BASE_PATH"]),
    ],
)
def test_env_names(name: str, expected: list[str]) -> None:
    assert env_names(name) == expected


def test_longest_name_gives_valid_variables() -> None:
    # The longest name still yields variables the spec's own env var grammar would accept.
    longest = Connection.model_validate(conn(name="a" + "-b" * 23 + "c"))
    for var in env_names(longest.name):
        ChoreoAppSpec.model_validate(app(env=[{"name": var, "value": "x"}]))


def test_connection_to_itself_is_refused() -> None:
    body = {
        "kind": "ChoreoApp",
        "metadata": {"name": "orders", "namespace": "choreo-dev"},
        "spec": app(connections=[conn(target="orders")]),
    }
    with pytest.raises(ValidationError, match="connection orders-api targets the app itself"):
        ChoreoApp.model_validate(body)
    body["spec"] = app(connections=[conn(target="payments")])
    assert ChoreoApp.model_validate(body).spec.connections[0].app == "payments"


def test_crd_schema_lists_connections_by_name() -> None:
    schema = crd_for(ChoreoApp)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    field = schema["properties"]["spec"]["properties"]["connections"]
    assert field["x-kubernetes-list-type"] == "map"
    assert field["x-kubernetes-list-map-keys"] == ["name"]
    assert set(field["items"]["required"]) == {"name", "app", "endpoint"}
    status = schema["properties"]["status"]["properties"]["connections"]["items"]["properties"]
    assert {"name", "target", "resolved", "reason"} <= set(status)
