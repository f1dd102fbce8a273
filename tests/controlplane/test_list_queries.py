"""Listing objects costs a constant number of store queries, however many objects there are."""

from __future__ import annotations

from pathlib import Path

import httpx

from choreo_cp.api import create_app
from choreo_cp.context import ControlPlane
from choreo_cp.store import Store, object_key
from tests.controlplane.helpers import ADMIN_TOKEN, ENV_SPEC, app_spec


async def count_list_queries(tmp_path: Path, apps: int) -> int:
    statements: list[str] = []
    async with Store(tmp_path / f"cp-{apps}.db", trace=statements.append) as store:
        transport = httpx.ASGITransport(app=create_app(ControlPlane(store=store, admin_token=ADMIN_TOKEN)))
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://cp", headers=headers) as http:
            assert (await http.put("/api/v1/dataplanes/dp1")).status_code == 201
            assert (
                await http.put("/api/v1/dataplanes/dp1/environments/dev", json={"spec": ENV_SPEC})
            ).status_code == 202
            for i in range(apps):
                await store.put_object(
                    "dp1", "ChoreoApp", "dev", f"app{i}", {**app_spec(), "environment": "dev"}
                )
            # Every app has a status and the first one a refusal, so the list has to read both.
            for i in range(apps):
                store.queue_status(
                    "dp1", object_key("ChoreoApp", "dev", f"app{i}"), {"phase": "Ready", "message": f"m{i}"}
                )
            await store.flush()
            assert await store.record_nack(
                "dp1", object_key("ChoreoApp", "dev", "app0"), 2, "Invalid", "no", False
            )

            statements.clear()
            r = await http.get("/api/v1/dataplanes/dp1/environments/dev/apps")
            queries = len(statements)
        assert r.status_code == 200, r.text
        items = r.json()["items"]
        assert [i["name"] for i in items] == [f"app{i}" for i in range(apps)]
        assert [i["status"]["message"] for i in items] == [f"m{i}" for i in range(apps)]
        assert items[0]["lastError"]["code"] == "Invalid"
        assert all(i["lastError"] is None for i in items[1:])
    return queries


async def test_listing_apps_takes_the_same_few_queries_for_10_and_100_apps(tmp_path: Path) -> None:
    few = await count_list_queries(tmp_path, 10)
    many = await count_list_queries(tmp_path, 100)
    assert many == few, f"{few} queries for 10 apps, {many} for 100"
    assert many <= 5
