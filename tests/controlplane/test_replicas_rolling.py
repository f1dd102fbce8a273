"""Issue 19.4: a rolling restart of three replicas moves every agent and loses or repeats nothing.

Three ``choreo-dp control-plane serve --db postgresql://...`` processes share one database behind
the asyncio least-connections balancer of ``bench/balancer.py`` (HAProxy is the benchmark's; the
suite does not depend on one more system package). 30 simulated agents (``bench/agent_sim.py``:
the real wire protocol over WebSockets/TLS, duplicate writes counted as the real agent would make
them) connect through it. Each replica in turn gets SIGTERM while a third of the dataplanes get a
new revision through the balancer; its agents must be synced on another replica before it comes
back and the next one goes. Then, nobody moving, every dataplane gets one more revision through
whichever replica the balancer picks (cross-replica fan-out), and the replicas even out their
agents again (the one restarted last came back to none). The Kubernetes API is not involved
(the agents are simulated), so there is no emulator/real parametrization here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bench.agent_sim import SimAgent, invariants
from bench.replica_rig import Certs, Rig, push_all, rolling_restart, seed, wait_applied
from tests.fixtures.postgres import PostgresServer
from tests.polling import eventually

AGENTS = 30
REPLICAS = 3
REBALANCE_INTERVAL = 1.0
# choreo_cp.rebalance leaves a replica alone up to one agent above its share
BALANCED_MAX = AGENTS // REPLICAS + 1


@pytest.fixture
async def rig(postgres_server: PostgresServer, tmp_path: Path) -> AsyncIterator[tuple[Rig, list[SimAgent]]]:
    db = postgres_server.database()
    try:
        agents = await seed(db, AGENTS)
        async with Rig(
            db, REPLICAS, tmp_path, Certs(tmp_path), balancer="asyncio", rebalance_interval=REBALANCE_INTERVAL
        ) as rig:
            yield rig, agents
    finally:
        postgres_server.drop(db)


async def test_rolling_restart_moves_every_agent_and_loses_or_repeats_nothing(
    rig: tuple[Rig, list[SimAgent]],
) -> None:
    replicas, agents = rig
    sim = replicas.simulator(agents)
    sim.start()
    try:
        await sim.wait_synced(timeout=60)

        async def counted() -> list[int] | None:
            spread = await replicas.sessions()
            return spread if sum(spread) == AGENTS else None

        spread = await eventually(counted, "every session counted by a replica", timeout=10)
        # least connections: every replica holds some agents, so every restart moves some
        assert sum(spread) == AGENTS and all(n > 0 for n in spread), spread

        rolled = await rolling_restart(replicas, sim, lambda dps: push_all(replicas, dps, "rolling"))
        pushed = rolled["pushed"]
        assert len(pushed) == AGENTS
        assert [s["agents"] for s in rolled["steps"]] and all(s["agents"] > 0 for s in rolled["steps"])
        assert await wait_applied(sim, pushed, timeout=30), invariants(agents, pushed)

        after = await push_all(replicas, [a.dataplane for a in agents], "after")
        assert await wait_applied(sim, after, timeout=30), invariants(agents, after)

        during = invariants(agents, pushed)
        final = invariants(agents, after)
        assert during["lost"] == 0 and during["behind"] == 0, during
        assert final["lost"] == 0 and final["behind"] == 0, final
        assert final["duplicate_effects"] == 0, final
        assert final["duplicate_deliveries"] == 0, final
        assert final["error_frames"] == 0, final
        # every agent was on a replica that went away, and came back without a resync: the same
        # epoch, its revision within the log, so the new replica continues incrementally
        assert all(a.moves for a in agents), [a.dataplane for a in agents if not a.moves]

        async def balanced() -> list[int] | None:
            spread = await replicas.sessions()
            return spread if sum(spread) == AGENTS and max(spread) <= BALANCED_MAX else None

        # the replica restarted last came back to no agents; the others send theirs over
        spread = await eventually(balanced, "the agents spread over the replicas again", timeout=30)
        assert min(spread) > 0, spread

        async def all_synced() -> int | None:
            # an agent sent over to rebalance is between sessions for a second or so
            n = sim.synced()
            return n if n == AGENTS else None

        await eventually(all_synced, "every agent synced again", timeout=30)
        assert await wait_applied(sim, after, timeout=30), invariants(agents, after)
        settled = invariants(agents, after)
        assert settled["lost"] == 0 and settled["duplicate_effects"] == 0, settled
        assert settled["duplicate_deliveries"] == 0 and settled["error_frames"] == 0, settled
        # moving to rebalance is an incremental reconnect, never a resync
        assert Counter(a.resyncs for a in agents) == Counter({1: AGENTS})
    finally:
        await sim.stop()


def _agent(dp: str, deliveries: dict[tuple[str, int], int], effects: dict[tuple[str, int], int]) -> SimAgent:
    a = SimAgent(dp, "token")
    a.deliveries.update(deliveries)
    a.effects.update(effects)
    a.applied = max((rev for _, rev in effects), default=0)
    return a


def test_the_invariant_check_sees_losses_duplicates_and_lag() -> None:
    key = "ChoreoApp/dev/app"
    good = _agent("a", {(key, 5): 1}, {(key, 5): 1})
    redelivered = _agent("b", {(key, 7): 2}, {(key, 7): 1})
    rewritten = _agent("c", {(key, 4): 2}, {(key, 4): 2})
    missed = _agent("d", {(key, 3): 1}, {(key, 3): 1})
    found = invariants(
        [good, redelivered, rewritten, missed], {"a": (key, 5), "b": (key, 7), "c": (key, 4), "d": (key, 9)}
    )
    assert found["lost"] == 1 and found["lost_examples"] == ["d"]
    assert found["behind"] == 1
    assert found["duplicate_deliveries"] == 2
    assert found["duplicate_effects"] == 1
