"""REST: ``GET .../apps/{app}/history`` and ``POST .../apps/{app}/rollback`` against a live server,
and a promotion carrying a rollout strategy."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from choreo_cp.server import ControlPlaneServer
from choreo_wire import protocol as p
from tests.controlplane.helpers import ENV_SPEC, app_spec, put_app, put_env, register

APP = "/api/v1/dataplanes/dp1/environments/dev/apps/shop"
DIGEST = "sha256:" + "ab" * 32
KEY = p.app_key("dev", "shop")


@pytest.fixture
async def three(server: ControlPlaneServer, http: httpx.AsyncClient) -> list[int]:
    """shop at 1.0, 1.1, 1.2: the object revisions, oldest first."""
    await register(http, "dp1")
    await put_env(http, "dp1", "dev")
    return [await put_app(http, "dp1", "dev", "shop", app_spec(f"ghcr.io/acme/shop:1.{i}")) for i in range(3)]


async def ran(server: ControlPlaneServer, revision: int, image: str) -> None:
    """The data plane reports the app Ready at ``revision`` running ``image`` (what the tunnel
    does with a status frame)."""
    status = {"phase": "Ready", "revision": revision, "image": image, "ready": "1/1"}
    server.store.queue_status("dp1", KEY, status)
    await server.store.flush()


async def history(http: httpx.AsyncClient) -> list[dict[str, Any]]:
    r = await http.get(f"{APP}/history")
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def test_history_lists_every_accepted_spec_newest_first(
    server: ControlPlaneServer, http: httpx.AsyncClient, three: list[int]
) -> None:
    await ran(server, three[1], f"ghcr.io/acme/shop:1.1@{DIGEST}")
    r = await http.get(f"{APP}/history")
    body = r.json()
    assert (body["name"], body["environment"], body["limit"]) == ("shop", "dev", 50)
    items = body["items"]
    assert [i["revision"] for i in items] == three[::-1]
    assert [i["image"] for i in items] == [f"ghcr.io/acme/shop:1.{n}" for n in (2, 1, 0)]
    assert {i["author"] for i in items} == {"admin"} and {i["cause"] for i in items} == {"apply"}
    assert [i["digest"] for i in items] == [None, DIGEST, None]
    assert items[1]["ranImage"] == f"ghcr.io/acme/shop:1.1@{DIGEST}"
    assert items[0]["spec"]["image"] == "ghcr.io/acme/shop:1.2" and items[0]["spec"]["environment"] == "dev"
    assert items[0]["at"] >= items[1]["at"] >= items[2]["at"]

    assert (await http.get("/api/v1/dataplanes/dp1/environments/dev/apps/nope/history")).status_code == 404
    assert (await http.get("/api/v1/dataplanes/nope/environments/dev/apps/shop/history")).status_code == 404


async def test_rollback_one_step_pushes_the_previous_spec_as_a_new_revision(
    http: httpx.AsyncClient, three: list[int]
) -> None:
    r = await http.post(f"{APP}/rollback", json={})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["rolledBackTo"] == three[1] and body["changed"] and not body["pinned"]
    assert body["objectRevision"] > three[2]
    assert body["image"] == "ghcr.io/acme/shop:1.1"
    app = (await http.get(APP)).json()
    assert (app["revision"], app["spec"]["image"]) == (body["objectRevision"], "ghcr.io/acme/shop:1.1")
    newest = (await history(http))[0]
    assert (newest["revision"], newest["cause"], newest["rollbackOf"], newest["author"]) == (
        body["objectRevision"],
        "rollback",
        three[1],
        "admin",
    )
    # steps count entries of the history, which now starts with the rollback: 1 step back is 1.2
    again = (await http.post(f"{APP}/rollback", json={"steps": 1})).json()
    assert (again["rolledBackTo"], again["image"]) == (three[2], "ghcr.io/acme/shop:1.2")


async def test_rollback_to_a_revision_pins_the_digest_that_ran_it(
    server: ControlPlaneServer, http: httpx.AsyncClient, three: list[int]
) -> None:
    await ran(server, three[0], f"ghcr.io/acme/shop:1.0@{DIGEST}")
    await ran(server, three[2], "ghcr.io/acme/shop:1.2@sha256:" + "ef" * 32)  # the status moved on
    r = await http.post(f"{APP}/rollback", json={"revision": three[0]})
    assert r.status_code == 202, r.text
    body = r.json()
    assert (body["rolledBackTo"], body["pinned"]) == (three[0], True)
    assert body["image"] == f"ghcr.io/acme/shop@{DIGEST}"
    assert (await http.get(APP)).json()["spec"]["image"] == f"ghcr.io/acme/shop@{DIGEST}"
    # the same request again changes nothing: the spec is already the desired one
    again = await http.post(f"{APP}/rollback", json={"revision": three[0]})
    assert again.status_code == 202 and not again.json()["changed"]


async def test_a_digest_reported_for_another_repository_is_not_pinned(
    server: ControlPlaneServer, http: httpx.AsyncClient, three: list[int]
) -> None:
    await ran(server, three[0], f"ghcr.io/acme/backdoor@{DIGEST}")
    assert (await history(http))[-1]["digest"] is None
    body = (await http.post(f"{APP}/rollback", json={"revision": three[0]})).json()
    assert (body["image"], body["pinned"]) == ("ghcr.io/acme/shop:1.0", False)


async def test_impossible_rollbacks_are_refused_and_everything_is_audited(
    http: httpx.AsyncClient, three: list[int]
) -> None:
    r = await http.post(f"{APP}/rollback", json={"revision": 999})
    assert r.status_code == 404 and "revision 999 is not in the history" in r.json()["detail"]
    r = await http.post(f"{APP}/rollback", json={"steps": 3})
    assert r.status_code == 409 and "holds 3 revision(s)" in r.json()["detail"], r.text
    for bad in ({"steps": 0}, {"revision": 1, "steps": 1}, {"revision": "1"}, {"to": 1}):
        assert (await http.post(f"{APP}/rollback", json=bad)).status_code == 422, bad
    r = await http.post("/api/v1/dataplanes/dp1/environments/dev/apps/nope/rollback", json={})
    assert r.status_code == 404

    # the rules of today judge an old spec: an allowlist tightened since refuses the old image
    await put_env(http, "dp1", "dev", {**ENV_SPEC, "registry": {"allowedPrefixes": ["ghcr.io/other/"]}})
    r = await http.post(f"{APP}/rollback", json={"revision": three[0]})
    assert r.status_code == 422
    [error] = r.json()["detail"]
    assert error["loc"] == ["body", "spec", "image"] and "ghcr.io/other/" in error["msg"]
    await put_env(http, "dp1", "dev")
    assert (await http.post(f"{APP}/rollback", json={"revision": three[0]})).status_code == 202

    audit = (await http.get("/api/v1/audit", params={"dataplane": "dp1"})).json()["items"]
    rollbacks = [(a["status"], a["code"], a["params"]) for a in audit if a["kind"] == "rollback"]
    assert rollbacks[::-1] == [
        (404, "not_found", {"revision": 999}),
        (409, "refused", {"steps": 3}),
        (404, "not_found", {}),
        (422, "invalid", {"revision": three[0], "to": three[0], "image": "ghcr.io/acme/shop:1.0"}),
        (202, "ok", {"revision": three[0], "to": three[0], "image": "ghcr.io/acme/shop:1.0"}),
    ]
    assert {a["who"] for a in audit if a["kind"] == "rollback"} == {"admin"}
    assert audit[0]["app"] == KEY


async def test_a_promotion_may_carry_a_rollout_strategy(
    server: ControlPlaneServer, http: httpx.AsyncClient
) -> None:
    await register(http, "dp1")
    await put_env(http, "dp1", "dev")
    await put_env(http, "dp1", "prod")
    canary = {
        "strategy": "Canary",
        "steps": [{"weight": 25, "pause": "1m"}, {"weight": 50, "pause": "manual"}],
    }
    dev_rev = await put_app(http, "dp1", "dev", "shop", app_spec())
    await ran(server, dev_rev, f"ghcr.io/acme/shop:1.0@{DIGEST}")
    promote = {
        "app": "shop",
        "from": {"dataplane": "dp1", "environment": "dev"},
        "to": {"dataplane": "dp1", "environment": "prod"},
        "rollout": canary,
    }
    r = await http.post("/api/v1/promotions", json=promote)
    prod = "/api/v1/dataplanes/dp1/environments/prod/apps/shop"
    assert r.status_code == 202, r.text
    stored = (await http.get(prod)).json()["spec"]
    assert stored["image"] == f"ghcr.io/acme/shop@{DIGEST}"
    assert stored["rollout"]["strategy"] == "Canary"
    assert [s["weight"] for s in stored["rollout"]["steps"]] == [25, 50]
    [entry] = entries = (await http.get(f"{prod}/history")).json()["items"]
    assert (entry["cause"], entry["author"]) == ("promotion", "admin"), entries
    # null removes it again: a plain rolling update
    r = await http.post("/api/v1/promotions", json={**promote, "rollout": None})
    assert r.status_code == 202, r.text
    assert "rollout" not in (await http.get(prod)).json()["spec"]
    # an invalid strategy is refused as a PUT would refuse it
    r = await http.post("/api/v1/promotions", json={**promote, "rollout": {"strategy": "Sideways"}})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][:2] == ["body", "rollout"]
    audit = (await http.get("/api/v1/audit", params={"dataplane": "dp1"})).json()["items"]
    promotions = [(a["status"], a["code"], a["app"], a["params"]) for a in audit if a["kind"] == "promotion"]
    target = p.app_key("prod", "shop")
    assert promotions[::-1] == [
        (202, "ok", target, {"from": "dp1/dev"}),
        (202, "ok", target, {"from": "dp1/dev"}),
        (422, "invalid", target, {"from": "dp1/dev"}),
    ]
