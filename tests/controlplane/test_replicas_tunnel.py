"""The tunnel suite's key cases on two replicas of one PostgreSQL database: the agent on one
replica, every REST call through the other.

The tests are the suite's own (``test_tunnel``, ``test_truth``), collected a second time with this
module's fixtures: ``server`` (what the agent dials, and what the tests inspect) is replica B and
``http`` talks to replica A. Resync and incremental streaming, changes pushed to the live session,
reports (statuses, nacks, orphans) reaching the REST API, newest session wins, the anti-entropy
verdict: each now crosses replicas through the store and LISTEN/NOTIFY.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from choreo_cp.server import ControlPlaneServer
from tests.controlplane import test_truth, test_tunnel
from tests.controlplane.conftest import make_server
from tests.controlplane.helpers import ADMIN_TOKEN, eventually


@pytest.fixture
async def replica_a(postgres_db: Callable[[], str]) -> AsyncIterator[tuple[str, ControlPlaneServer]]:
    db = postgres_db()
    a = make_server(db)  # type: ignore[arg-type]
    await a.start()
    try:
        yield db, a
    finally:
        await a.stop()


@pytest.fixture
async def server(replica_a: tuple[str, ControlPlaneServer]) -> AsyncIterator[ControlPlaneServer]:
    db, a = replica_a
    b = make_server(db)  # type: ignore[arg-type]
    await b.start()
    try:
        for srv in (a, b):
            await eventually(lambda s=srv: s.cluster is not None and s.cluster.up, what="cluster link up")
        yield b
    finally:
        await b.stop()


@pytest.fixture
async def http(
    server: ControlPlaneServer, replica_a: tuple[str, ControlPlaneServer]
) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=replica_a[1].url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10
    ) as client:
        yield client


test_fresh_agent_resync_sends_only_differences = test_tunnel.test_fresh_agent_resync_sends_only_differences
test_incremental_from_the_agents_revision = test_tunnel.test_incremental_from_the_agents_revision
test_resync_when_incremental_is_impossible = test_tunnel.test_resync_when_incremental_is_impossible
test_rest_changes_are_pushed_to_the_live_session = (
    test_tunnel.test_rest_changes_are_pushed_to_the_live_session
)
test_reports_reach_the_rest_api = test_tunnel.test_reports_reach_the_rest_api
test_newest_session_wins = test_tunnel.test_newest_session_wins
test_in_sync_needs_the_inventory_digest_not_only_the_ack = (
    test_truth.test_in_sync_needs_the_inventory_digest_not_only_the_ack
)
test_refused_keys_keep_a_dataplane_out_of_sync_and_are_named = (
    test_truth.test_refused_keys_keep_a_dataplane_out_of_sync_and_are_named
)
test_missing_app_is_missing_not_its_last_ready = test_truth.test_missing_app_is_missing_not_its_last_ready
