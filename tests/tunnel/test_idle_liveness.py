"""An idle session is alive: ``/healthz`` must not fail between the control plane's heartbeats.

The agent's liveness allows 120 s of silence (``choreo-dp agent``); the control plane may space
its heartbeats up to 300 s (``guards.HEARTBEAT_MAX_SECONDS``), and the agent then sends its own at
the same interval. A session with nothing to do used to beat only on those frames, so the kubelet
would restart a healthy agent every few minutes. The DataPlane renewal timer (every
``heartbeat_every / 2``) now beats while the session is up and idle; a session stuck with a change
in flight still does not. Scaled down here (liveness 2 s, renewals every 0.2 s, the control plane
every 300 s), on both API servers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from choreo_dp.agent import guards as G
from choreo_dp.agent.agent import Agent, AgentConfig
from choreo_dp.agent.dpstatus import HEARTBEAT_EVERY
from choreo_dp.kube import KubeClient
from choreo_dp.observability.health import Liveness
from tests.tunnel.conftest import Faulty, Names, eventually
from tests.tunnel.fakecp import FakeControlPlane
from tests.tunnel.test_agent import Running, app_spec, config, converged, seed

pytestmark = pytest.mark.timeout(60)

AGENT_LIVENESS = 120.0  # what ``choreo-dp agent`` gives the agent (cli/agent_cmd.py run_agent)
SILENCE = 2.0  # the scaled-down liveness limit of the test


@contextlib.asynccontextmanager
async def running_with(agent: Agent) -> AsyncIterator[Running]:
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    r = Running(agent, task, stop)
    try:
        yield r
    finally:
        if not task.done():
            await r.halt()


def test_production_timers_beat_well_within_the_liveness_limit() -> None:
    """The premise, with the shipped numbers: the control plane may stay silent longer than the
    liveness limit, and the renewal timer ticks several times within it."""
    assert G.HEARTBEAT_MAX_SECONDS > AGENT_LIVENESS
    assert HEARTBEAT_EVERY / 2 * 4 <= AGENT_LIVENESS


async def test_an_idle_session_stays_live_when_the_control_plane_heartbeats_rarely(
    fake_cp: FakeControlPlane, kube: KubeClient, token_file: Path, tls: dict[str, Any], names: Names
) -> None:
    fake_cp.heartbeat_interval = G.HEARTBEAT_MAX_SECONDS
    await seed(fake_cp, 1, names)
    cfg: AgentConfig = config(fake_cp, token_file, tls, names, heartbeat_every=0.4)
    liveness = Liveness("agent", max_silence=SILENCE)
    async with running_with(Agent(cfg, kube, liveness=liveness)) as r:
        await eventually(lambda: converged(fake_cp, kube, names), what="sync")
        frames = len(fake_cp.received)
        renewals = r.agent.dp.heartbeats
        # renewals are at least heartbeat_every (0.4 s) apart: 8 of them outlast the 2 s limit
        await eventually(
            lambda: r.agent.dp.heartbeats >= renewals + 8, timeout=20, what="8 renewals (> 2 s idle)"
        )
        assert liveness.problems() == []
        assert r.agent.connected.is_set() and len(fake_cp.hellos) == 1
        # idle indeed: at most the early heartbeat that follows the last acknowledgement went out
        assert len(fake_cp.received) - frames <= 1


async def test_a_change_stuck_in_flight_still_fails_liveness(
    fake_cp: FakeControlPlane,
    faulty: Faulty,
    token_file: Path,
    tls: dict[str, Any],
    names: Names,
) -> None:
    """The renewal timer does not hide a session that stopped progressing: a put that Kubernetes
    keeps answering 503 stays in flight, and the liveness goes stale until it lands."""
    fake_cp.heartbeat_interval = G.HEARTBEAT_MAX_SECONDS
    await seed(fake_cp, 1, names)
    cfg: AgentConfig = config(fake_cp, token_file, tls, names, heartbeat_every=0.4)
    liveness = Liveness("agent", max_silence=SILENCE)
    async with running_with(Agent(cfg, faulty.kube, liveness=liveness)) as r:
        await eventually(lambda: converged(fake_cp, faulty.kube, names), what="sync")
        stuck = faulty.faults.add(verb="patch", resource="choreoapps", status=503, count=100_000)
        await fake_cp.put(names.app_key("late"), app_spec(names.env))
        await eventually(
            lambda: r.agent.session is not None and r.agent.session.stream.in_flight, what="in flight"
        )
        await eventually(lambda: liveness.problems(), timeout=20, what="liveness stale while stuck")
        assert r.agent.dp.heartbeats > 0 and stuck.hits > 0
        faulty.faults.clear()
        await eventually(lambda: converged(fake_cp, faulty.kube, names), timeout=30, what="the put lands")
        await eventually(lambda: not liveness.problems(), what="live again")
