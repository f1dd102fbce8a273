"""The control plane's REST API and tunnel on PostgreSQL, and "202 means committed" on both engines.

The REST and tunnel tests below are the suite's own (test_api, test_tunnel), collected here a second
time with this module's ``server`` fixture: a control plane whose store is a fresh PostgreSQL
database. Their SQLite run stays where it is; this module only adds the PostgreSQL run.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import httpx
import psycopg
import pytest

from choreo_cp.server import ControlPlaneServer
from tests.controlplane import test_api, test_tunnel
from tests.controlplane.conftest import make_server
from tests.controlplane.helpers import ADMIN_TOKEN, app_spec, put_env, register
from tests.controlplane.test_store_engines import poison_commits

StoreDb = Callable[..., str]


@pytest.fixture
async def server(postgres_db: Callable[[], str]) -> AsyncIterator[ControlPlaneServer]:
    srv = make_server(postgres_db())  # type: ignore[arg-type]
    assert srv.store.dialect.name == "postgresql"
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


test_register_is_idempotent_and_rotation_is_explicit = (
    test_api.test_register_is_idempotent_and_rotation_is_explicit
)
test_desired_state_round_trip = test_api.test_desired_state_round_trip
test_404_for_unknown_things = test_api.test_404_for_unknown_things
test_promotion_moves_the_running_digest = test_api.test_promotion_moves_the_running_digest
test_fresh_agent_resync_sends_only_differences = test_tunnel.test_fresh_agent_resync_sends_only_differences
test_incremental_from_the_agents_revision = test_tunnel.test_incremental_from_the_agents_revision
test_rest_changes_are_pushed_to_the_live_session = (
    test_tunnel.test_rest_changes_are_pushed_to_the_live_session
)
test_reports_reach_the_rest_api = test_tunnel.test_reports_reach_the_rest_api
test_newest_session_wins = test_tunnel.test_newest_session_wins


async def test_a_put_whose_commit_fails_is_never_acknowledged(store_db: StoreDb) -> None:
    """Concurrent PUTs, some of which make their group's COMMIT fail: every 202 is in the store at
    its revision, every other answer is an error and its spec is not stored."""
    db = store_db()
    srv = make_server(db)  # type: ignore[arg-type]
    await srv.start()
    try:
        async with httpx.AsyncClient(
            base_url=srv.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
        ) as http:
            await register(http)
            await put_env(http, "dp1", "dev")
            poison_commits(db)
            images = [f"ghcr.io/acme/a:{'poison' if i % 5 == 2 else i}" for i in range(40)]

            async def put(i: int) -> httpx.Response:
                spec = app_spec(images[i])
                return await http.put(
                    f"/api/v1/dataplanes/dp1/environments/dev/apps/a{i}", json={"spec": spec}
                )

            answers = await asyncio.gather(*(put(i) for i in range(len(images))))
            stored = {o.name: o for o in await srv.store.list_objects("dp1", kind="ChoreoApp")}
            acked = [i for i, r in enumerate(answers) if r.status_code == 202]
            refused = [i for i, r in enumerate(answers) if r.status_code != 202]
            assert all("poison" not in images[i] for i in acked)
            assert all(answers[i].status_code >= 500 for i in refused)
            assert {i for i, im in enumerate(images) if "poison" in im} <= set(refused)
            for i in acked:
                obj = stored[f"a{i}"]
                assert obj.spec["image"] == images[i] and obj.revision == answers[i].json()["revision"]
            assert not {f"a{i}" for i in refused} & set(stored)
            revisions = sorted(answers[i].json()["revision"] for i in acked)
            assert revisions == list(range(2, 2 + len(acked)))  # failed groups left no gaps
    finally:
        await srv.stop()


async def test_postgresql_dropping_connections_is_a_503_then_recovers(
    server: ControlPlaneServer, postgres_db: Callable[[], str]
) -> None:
    """The database drops every connection of the control plane (a restart, a failover): the write
    that meets a dead connection is a 503 with Retry-After, never a 202, and the next one works."""
    async with httpx.AsyncClient(
        base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
    ) as http:
        await register(http)
        await put_env(http, "dp1", "dev")
        url = server.store.path
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        spec = {"spec": app_spec("ghcr.io/acme/a:1")}
        first = await http.put("/api/v1/dataplanes/dp1/environments/dev/apps/a", json=spec)
        assert first.status_code == 503 and first.headers["retry-after"], first.text
        answers = [first]
        for _ in range(10):
            answers.append(await http.put("/api/v1/dataplanes/dp1/environments/dev/apps/a", json=spec))
            if answers[-1].status_code == 202:
                break
        assert answers[-1].status_code == 202, [a.status_code for a in answers]
        assert {a.status_code for a in answers} <= {503, 202}
        assert answers[-1].json()["revision"] == 2  # the refused attempts left nothing behind
