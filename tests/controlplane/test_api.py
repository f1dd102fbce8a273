"""REST API: happy paths, every error class, promotion, persistence across a restart."""

from __future__ import annotations

from pathlib import Path

import httpx

from choreo_cp.server import ControlPlaneServer
from choreo_wire import protocol as p
from tests.controlplane.conftest import make_server
from tests.controlplane.helpers import ADMIN_TOKEN, ENV_SPEC, app_spec, put_app, put_env, register

DIGEST = "ghcr.io/acme/shop@sha256:" + "ab" * 32


async def test_register_is_idempotent_and_rotation_is_explicit(http: httpx.AsyncClient) -> None:
    first = await http.put("/api/v1/dataplanes/dp1")
    assert first.status_code == 201
    body = first.json()
    assert body["created"] is True and body["token"].startswith("cpdp_") and body["revision"] == 0
    again = await http.put("/api/v1/dataplanes/dp1")
    assert again.status_code == 200
    assert again.json()["token"] is None and again.json()["epoch"] == body["epoch"]
    rotated = await http.put("/api/v1/dataplanes/dp1", params={"rotateToken": "true"})
    assert rotated.status_code == 200
    assert rotated.json()["token"] not in (None, body["token"])
    got = await http.get("/api/v1/dataplanes/dp1")
    assert got.status_code == 200
    view = got.json()
    assert view["connected"] is False and view["epoch"] == body["epoch"] and "token" not in view


async def test_desired_state_round_trip(http: httpx.AsyncClient) -> None:
    await register(http)
    r = await http.put("/api/v1/dataplanes/dp1/environments/dev", json={"spec": ENV_SPEC})
    assert r.status_code == 202 and r.json()["revision"] == 1 and r.json()["changed"] is True
    # a bare spec (no wrapper) and a whole manifest are accepted too; spec.environment is filled in
    r = await http.put("/api/v1/dataplanes/dp1/environments/dev/apps/shop", json=app_spec())
    assert r.status_code == 202 and r.json()["revision"] == 2
    manifest = {
        "apiVersion": "choreo.dev/v1alpha1",
        "kind": "ChoreoApp",
        "metadata": {"name": "shop", "namespace": "choreo-dev"},
        "spec": {**app_spec(), "environment": "dev"},
    }
    r = await http.put("/api/v1/dataplanes/dp1/environments/dev/apps/shop", json=manifest)
    assert r.status_code == 202 and r.json()["changed"] is False and r.json()["revision"] == 2
    got = (await http.get("/api/v1/dataplanes/dp1/environments/dev/apps/shop")).json()
    assert got["spec"]["environment"] == "dev" and got["spec"]["image"] == "ghcr.io/acme/shop:1.0"
    assert got["revision"] == 2 and got["specHash"] == p.spec_hash(got["spec"])
    assert got["status"] is None and got["applied"] is False
    listed = (await http.get("/api/v1/dataplanes/dp1/environments/dev/apps")).json()
    assert [i["name"] for i in listed["items"]] == ["shop"]
    r = await http.delete("/api/v1/dataplanes/dp1/environments/dev/apps/shop")
    assert r.status_code == 202 and r.json()["revision"] == 3
    assert (await http.get("/api/v1/dataplanes/dp1/environments/dev/apps/shop")).status_code == 404
    r = await http.delete("/api/v1/dataplanes/dp1/environments/dev")
    assert r.status_code == 202 and r.json()["revision"] == 4
    assert (await http.get("/api/v1/dataplanes/dp1")).json()["revision"] == 4


async def test_401_before_anything_else(server: ControlPlaneServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as anon:
        for method, path in [
            ("PUT", "/api/v1/dataplanes/dp1"),
            ("GET", "/api/v1/dataplanes/unknown"),
            ("PUT", "/api/v1/dataplanes/BAD_NAME/environments/dev"),
            ("POST", "/api/v1/promotions"),
        ]:
            r = await anon.request(method, server.url + path, json={"garbage": True})
            assert r.status_code == 401, (method, path, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
            r = await anon.request(method, path, json={}, headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 401
        # the dataplane token is not an admin token
        r = await anon.put("/api/v1/dataplanes/dp1", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        dp_token = r.json()["token"]
        r = await anon.get("/api/v1/dataplanes/dp1", headers={"Authorization": f"Bearer {dp_token}"})
        assert r.status_code == 401
        # ops endpoints are open
        assert (await anon.get("/healthz")).status_code == 200
        assert (await anon.get("/openapi.json")).json()["paths"]["/api/v1/promotions"]


async def test_404_for_unknown_things(http: httpx.AsyncClient) -> None:
    assert (await http.get("/api/v1/dataplanes/ghost")).status_code == 404
    assert (await http.put("/api/v1/dataplanes/ghost/environments/dev", json={"spec": {}})).status_code == 404
    await register(http)
    r = await http.put("/api/v1/dataplanes/dp1/environments/dev/apps/a", json={"spec": app_spec()})
    # an app whose Environment is not defined breaks a rule of the push: 422 naming it, not 404
    assert r.status_code == 422, r.text
    [error] = r.json()["detail"]
    assert error["loc"] == ["body", "spec", "environment"]
    assert "Environment 'dev' is not defined on dataplane 'dp1'" in error["msg"]
    assert (await http.delete("/api/v1/dataplanes/dp1/environments/dev")).status_code == 404
    assert (await http.get("/api/v1/dataplanes/dp1/environments/dev/apps/a")).status_code == 404
    assert (await http.get("/api/v1/nothing-here")).status_code == 404


async def test_422_for_bad_names_and_bodies(http: httpx.AsyncClient) -> None:
    await register(http)
    await put_env(http, "dp1", "dev")
    for path in [
        "/api/v1/dataplanes/Upper/environments/dev",
        "/api/v1/dataplanes/dp1/environments/-dev",
        "/api/v1/dataplanes/dp1/environments/" + "a" * 64,
        "/api/v1/dataplanes/dp1/environments/dev/apps/under_score",
    ]:
        r = await http.put(path, json={"spec": app_spec()})
        assert r.status_code == 422, path
    assert (await http.put("/api/v1/dataplanes/UPPER")).status_code == 422

    async def app_put(body: object, **kw: object) -> httpx.Response:
        return await http.put("/api/v1/dataplanes/dp1/environments/dev/apps/a", json=body, **kw)  # type: ignore[arg-type]

    r = await app_put({"spec": {**app_spec(), "replicas": -1}})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "spec", "replicas"]
    assert (await app_put({"spec": {**app_spec(), "unknownField": 1}})).status_code == 422
    assert (
        await app_put({"spec": {**app_spec(), "type": "scheduledTask"}})
    ).status_code == 422  # no schedule
    r = await app_put({"spec": {**app_spec(), "environment": "prod"}})
    assert r.status_code == 422 and "does not match" in r.text
    r = await app_put({"metadata": {"name": "other"}, "spec": app_spec()})
    assert r.status_code == 422 and "metadata.name" in r.text
    assert (await app_put({"apiVersion": "v1", "spec": app_spec()})).status_code == 422
    assert (await app_put([1, 2])).status_code == 422
    r = await http.put(
        "/api/v1/dataplanes/dp1/environments/dev/apps/a",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 422
    r = await http.put("/api/v1/dataplanes/dp1/environments/dev", json={"spec": {"namespace": "Bad Ns"}})
    assert r.status_code == 422
    r = await http.put("/api/v1/dataplanes/dp1/environments/dev", content=b"x" * (1024 * 1024 + 1))
    assert r.status_code == 413
    # nothing above changed anything
    assert (await http.get("/api/v1/dataplanes/dp1")).json()["revision"] == 1


async def _running(server: ControlPlaneServer, dp: str, env: str, app: str, image: str) -> None:
    """What the agent would report: the app runs ``image``."""
    server.store.queue_status(dp, p.app_key(env, app), {"phase": "Ready", "image": image})
    await server.store.flush()


async def test_promotion_moves_the_running_digest(
    server: ControlPlaneServer, http: httpx.AsyncClient
) -> None:
    await register(http, "dp1")
    await register(http, "dp2")
    await put_env(http, "dp1", "dev")
    await put_env(http, "dp2", "prod")
    await put_app(http, "dp1", "dev", "shop", app_spec(env=[{"name": "MODE", "value": "dev"}]))
    body = {
        "app": "shop",
        "from": {"dataplane": "dp1", "environment": "dev"},
        "to": {"dataplane": "dp2", "environment": "prod"},
    }
    r = await http.post("/api/v1/promotions", json=body)
    assert r.status_code == 409 and "no status" in r.json()["detail"]
    await _running(server, "dp1", "dev", "shop", "ghcr.io/acme/shop:1.0")
    r = await http.post("/api/v1/promotions", json=body)
    assert r.status_code == 409 and "@sha256:" in r.json()["detail"]
    await _running(server, "dp1", "dev", "shop", DIGEST)
    r = await http.post("/api/v1/promotions", json={**body, "project": "other"})
    assert r.status_code == 409 and "project" in r.json()["detail"]
    r = await http.post("/api/v1/promotions", json={**body, "overrides": {"replicas": 3}})
    assert r.status_code == 202, r.text
    assert r.json()["image"] == DIGEST
    got = (await http.get("/api/v1/dataplanes/dp2/environments/prod/apps/shop")).json()
    assert got["spec"]["image"] == DIGEST and got["spec"]["environment"] == "prod"
    assert got["spec"]["replicas"] == 3 and got["spec"]["env"] == [{"name": "MODE", "value": "dev"}]
    # a second promotion keeps the target's own configuration and only moves the image
    await put_app(http, "dp2", "prod", "shop", app_spec(image=DIGEST, replicas=5))
    newer = DIGEST.replace("ab" * 32, "cd" * 32)
    await _running(server, "dp1", "dev", "shop", newer)
    r = await http.post("/api/v1/promotions", json=body)
    assert r.status_code == 202
    got = (await http.get("/api/v1/dataplanes/dp2/environments/prod/apps/shop")).json()
    assert got["spec"]["image"] == newer and got["spec"]["replicas"] == 5


async def test_promotion_refusals(server: ControlPlaneServer, http: httpx.AsyncClient) -> None:
    await register(http, "dp1")
    await put_env(http, "dp1", "dev")
    await put_env(http, "dp1", "locked", {"registry": {"allowedPrefixes": ["registry.internal/"]}})
    await put_app(http, "dp1", "dev", "shop")
    await _running(server, "dp1", "dev", "shop", DIGEST)

    def req(to_env: str, **extra: object) -> dict[str, object]:
        return {
            "app": "shop",
            "from": {"dataplane": "dp1", "environment": "dev"},
            "to": {"dataplane": "dp1", "environment": to_env},
            **extra,
        }

    r = await http.post("/api/v1/promotions", json=req("locked"))
    assert r.status_code == 409 and "not allowed" in r.json()["detail"]
    assert (await http.post("/api/v1/promotions", json=req("missing"))).status_code == 404
    assert (await http.post("/api/v1/promotions", json=req("dev"))).status_code == 422  # same place
    r = await http.post("/api/v1/promotions", json=req("locked", overrides={"image": "x"}))
    assert r.status_code == 422
    await put_env(http, "dp1", "qa", {})
    r = await http.post("/api/v1/promotions", json=req("qa", overrides={"replicas": "many"}))
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][:3] == ["body", "overrides", "replicas"]
    r = await http.post(
        "/api/v1/promotions", json={**req("qa"), "from": {"dataplane": "zz", "environment": "dev"}}
    )
    assert r.status_code == 404


async def test_restart_keeps_epoch_revision_and_tokens(tmp_path: Path) -> None:
    db = tmp_path / "cp.db"
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    first = make_server(db)
    await first.start()
    async with httpx.AsyncClient(base_url=first.url, headers=headers) as http:
        token = await register(http)
        await put_env(http, "dp1", "dev")
        await put_app(http, "dp1", "dev", "a")
        before = (await http.get("/api/v1/dataplanes/dp1")).json()
    await first.stop()
    second = make_server(db)
    await second.start()
    try:
        async with httpx.AsyncClient(base_url=second.url, headers=headers) as http:
            after = (await http.get("/api/v1/dataplanes/dp1")).json()
            assert (
                (after["epoch"], after["revision"])
                == (before["epoch"], before["revision"])
                == (before["epoch"], 2)
            )
            assert (await http.put("/api/v1/dataplanes/dp1")).json()["token"] is None
            assert await put_app(http, "dp1", "dev", "b") == 3
        assert await second.store.authenticate_dataplane(token) == "dp1"
    finally:
        await second.stop()


async def test_metrics_count_requests_and_changes(http: httpx.AsyncClient) -> None:
    await register(http)
    await put_env(http, "dp1", "dev")
    text = (await http.get("/metrics")).text
    assert 'choreo_cp_desired_changes_total{kind="Environment",op="put"} 1.0' in text
    assert 'route="/api/v1/dataplanes/{dp}/environments/{env}"' in text
