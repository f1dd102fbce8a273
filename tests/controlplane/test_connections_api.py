"""Push-time checks of spec.connections: refuse what is certainly wrong, accept what may still come."""

from __future__ import annotations

from typing import Any

import httpx

from tests.controlplane.helpers import app_spec, put_app, put_env, register

URL = "/api/v1/dataplanes/dp1/environments/dev/apps"


def endpoint(visibility: str) -> dict[str, Any]:
    return {"name": "api", "port": 8080, "visibility": visibility}


def calling(caller_project: str, target: str = "orders", **conn: Any) -> dict[str, Any]:
    """A caller in ``caller_project``; ``conn`` adds to its one connection (e.g. the target's project)."""
    connection = {"name": "orders", "app": target, "endpoint": "api", **conn}
    return app_spec(project=caller_project, connections=[connection])


async def test_connection_checks_at_push_time(http: httpx.AsyncClient) -> None:
    await register(http)
    await put_env(http, "dp1", "dev")

    # A caller pushed before its target: accepted (the target may come later).
    assert (
        await http.put(f"{URL}/early", json={"spec": calling("billing", project="shop")})
    ).status_code == 202

    # Itself: refused.
    r = await http.put(f"{URL}/orders", json={"spec": calling("shop")})
    assert r.status_code == 422, r.text
    [error] = r.json()["detail"]
    assert error["loc"] == ["body", "spec", "connections", 0, "app"]
    assert "an app cannot connect to itself" in error["msg"]

    await put_app(http, "dp1", "dev", "orders", app_spec(project="shop", endpoints=[endpoint("Project")]))
    # Same project, Project endpoint: accepted.
    await put_app(http, "dp1", "dev", "web", calling("shop"))
    # Another project, Project endpoint, both known: refused with the rule.
    r = await http.put(f"{URL}/spy", json={"spec": calling("billing", project="shop")})
    assert r.status_code == 422, r.text
    [error] = r.json()["detail"]
    assert error["loc"] == ["body", "spec", "connections", 0, "endpoint"]
    assert error["msg"] == (
        "connection orders: endpoint orders/api has visibility Project: only apps of project shop may call "
        "it, and this app is in project billing (Environment 'dev')"
    )
    assert (await http.get(f"{URL}/spy")).status_code == 404

    # A missing endpoint, or a project the target is not (yet) in: left to the operator.
    missing = app_spec(project="billing", connections=[{"name": "x", "app": "orders", "endpoint": "grpc"}])
    assert (await http.put(f"{URL}/later", json={"spec": missing})).status_code == 202
    elsewhere = calling("billing", project="payments")
    assert (await http.put(f"{URL}/moved", json={"spec": elsewhere})).status_code == 202

    # The target opens its endpoint to the organisation: the same caller is now accepted.
    await put_app(
        http, "dp1", "dev", "orders", app_spec(project="shop", endpoints=[endpoint("Organization")])
    )
    await put_app(http, "dp1", "dev", "spy", calling("billing", project="shop"))
