"""Idle agents on three control-plane replicas behind a TCP load balancer, and a rolling restart.

Issue 19.4. Three ``choreo-dp control-plane serve --db postgresql://...`` processes share one
PostgreSQL (a throwaway server started here, as the tests do) behind HAProxy (Debian's, installed
when missing; the asyncio proxy of ``bench/balancer.py`` when it cannot be: ``balancer`` says which
ran). N simulated agents (``bench/agent_sim.py``: the real wire protocol over WebSockets/TLS, one
asyncio process) connect through the balancer, resync, and send heartbeats at the interval the
control plane asks for (10 s).

Figures:
- connect time for all N (hello + resync each) through the balancer;
- steady state over a window: CPU (% of one core) and RSS of each replica, per agent; heartbeat
  round trip p50/p99 as the agents see it;
- a rolling restart: SIGTERM one replica at a time, pushing a revision (one REST PUT through the
  balancer) to a third of the dataplanes while it goes; wait until the agents it held are synced on
  another replica, restart it, next. Every agent must reconnect; every 202-acknowledged revision
  must be received and written exactly once (``lost``, ``duplicate_*``); time to move. Then one
  more revision per dataplane with nobody moving (``after_*``: it reaches agents held by another
  replica than the one that took the PUT).
- rebalancing (replicas started with ``--rebalance-interval 5``): after the rolling restart the
  replica restarted last holds none; time until no replica holds more than its share plus the
  rule's tolerance, the spread then, and lost/duplicated revisions over the whole run after it.
- baseline in the same run: the same N agents on ONE replica behind the same balancer; the ratios
  replicas/one for server CPU per agent and heartbeat p99.

Quick (``make bench``): 300 agents, 20 s window. ``--full`` or ``CHOREO_BENCH_REPLICAS_AGENTS``: 3,000.
``CHOREO_BENCH_BALANCER=asyncio`` skips HAProxy; ``CHOREO_BENCH_REPLICAS_WINDOW`` sets the window (s).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from bench.agent_sim import SimAgent, Simulator, invariants
from bench.replica_rig import (
    Certs,
    Rig,
    cpu_seconds,
    push_all,
    rolling_restart,
    rss_mib,
    seed,
    steady_state,
    wait_applied,
)
from choreo_cp.rebalance import to_shed

REPLICAS = 3
IDLE_WINDOW = 5.0
CONNECT_TIMEOUT = 300.0
# Agents of a stopped replica synced elsewhere within this (a figure when not).
MOVE_TIMEOUT = 300.0
# Replicas even out their agents every this many seconds in this benchmark (the default is 30).
REBALANCE_INTERVAL = 5.0
# ... and must within this long after the rolling restart.
REBALANCE_TIMEOUT = 180.0


def _fresh(agents: list[SimAgent]) -> list[SimAgent]:
    """The same dataplanes as agents that have never connected (each phase starts alike)."""
    return [SimAgent(a.dataplane, a.token) for a in agents]


async def _phase(
    db: str, agents: list[SimAgent], replicas: int, workdir: Path, certs: Certs, window: float, restart: bool
) -> dict[str, Any]:
    balancer = os.environ.get("CHOREO_BENCH_BALANCER", "haproxy")
    async with Rig(db, replicas, workdir, certs, balancer, rebalance_interval=REBALANCE_INTERVAL) as rig:
        idle_rss = [rss_mib(r.pid) for r in rig.replicas]
        # The replicas' own floor (flush loop, LISTEN, health checks of the balancer), no agents.
        idle0 = [cpu_seconds(r.pid) for r in rig.replicas]
        await asyncio.sleep(IDLE_WINDOW)
        idle_cpu = [
            round(100 * (cpu_seconds(r.pid) - c) / IDLE_WINDOW, 1)
            for r, c in zip(rig.replicas, idle0, strict=True)
        ]
        sim = rig.simulator(agents)
        rss_sim0 = rss_mib(os.getpid())
        start_cpu = [cpu_seconds(r.pid) for r in rig.replicas]
        t0 = time.monotonic()
        sim.start()
        try:
            try:
                await sim.wait_synced(timeout=CONNECT_TIMEOUT)
            except TimeoutError as exc:
                # A figure, not a crash: how far one setup got is what the comparison needs.
                failures = [f for a in agents for f in a.failures]
                return {
                    "balancer": rig.balancer.kind,
                    "error": f"{exc} within {CONNECT_TIMEOUT:.0f} s",
                    "sessions_per_replica": await rig.sessions(),
                    "cpu_pct_per_replica_until_then": [
                        round(100 * (cpu_seconds(r.pid) - c) / (time.monotonic() - t0), 1)
                        for r, c in zip(rig.replicas, start_cpu, strict=True)
                    ],
                    "session_failures": len(failures),
                    "session_failure_examples": sorted(set(failures))[:3],
                }
            connect_s = time.monotonic() - t0
            steady = await steady_state(rig, sim, window)
            rss_sim = rss_mib(os.getpid())
            n = len(agents)
            out: dict[str, Any] = {
                "balancer": rig.balancer.kind,
                "connect_all_s": round(connect_s, 2),
                "sessions_per_replica": steady["sessions"],
                "cpu_pct_per_replica": steady["cpu_pct"],
                "cpu_pct_total": steady["cpu_pct_total"],
                "cpu_ms_per_agent_per_s": round(10 * steady["cpu_pct_total"] / n, 4),
                "rss_mib_per_replica": steady["rss_mib"],
                "rss_kib_per_agent": round(1024 * (sum(steady["rss_mib"]) - sum(idle_rss)) / n, 1),
                "idle_rss_mib_per_replica": [round(x, 1) for x in idle_rss],
                "idle_cpu_pct_per_replica": idle_cpu,
                "balancer_cpu_pct": steady["balancer_cpu_pct"],
                "balancer_rss_mib": steady["balancer_rss_mib"],
                "simulator_cpu_pct": steady["simulator_cpu_pct"],
                "simulator_rss_kib_per_agent": round(1024 * (rss_sim - rss_sim0) / n, 1),
                "heartbeats": steady["heartbeats"],
                "heartbeat_p50_ms": steady["heartbeat_p50_ms"],
                "heartbeat_p99_ms": steady["heartbeat_p99_ms"],
            }
            if restart:
                try:
                    out.update(await _restart_figures(rig, sim, n))
                except (AssertionError, TimeoutError, RuntimeError) as exc:
                    # Keep the steady-state figures; say how far the restart got.
                    out["restart_error"] = str(exc)[:400]
                    out["restart_synced_at_error"] = sim.synced()
                    out["sessions_per_replica_at_error"] = await rig.sessions()
            failures = [f for a in sim.agents for f in a.failures]
            out["session_failures"] = len(failures)
            out["session_failure_examples"] = sorted(set(failures))[:3]
            return out
        finally:
            await sim.stop()


async def _restart_figures(rig: Rig, sim: Simulator, n: int) -> dict[str, Any]:
    """The rolling restart with a push per dataplane, then one more push with nobody moving."""
    out: dict[str, Any] = {}
    tag = str(int(time.time()))
    rolled = await rolling_restart(rig, sim, lambda dps: push_all(rig, dps, tag), move_timeout=MOVE_TIMEOUT)
    pushed = rolled.pop("pushed")
    out["all_applied"] = await wait_applied(sim, pushed, timeout=60)
    check = invariants(sim.agents, pushed)
    # Then, nobody moving: one more revision each, through whichever replica the
    # balancer picks, which is mostly not the one holding the agent (cross-replica fan-out).
    t1 = time.monotonic()
    after = await push_all(rig, [a.dataplane for a in sim.agents], f"{tag}-after")
    after_ok = await wait_applied(sim, after, timeout=60)
    out["after_push_all_s"] = round(time.monotonic() - t1, 2)
    out["after_all_applied"] = after_ok
    final = invariants(sim.agents, after)  # duplicates and errors over the whole run
    out["after_lost"] = final["lost"]
    restarted = {a.dataplane for a in sim.agents if len(a.moves) > 0}
    out.update(
        {
            "restart_steps": rolled["steps"],
            "restart_agents_moved": len(restarted),
            "restart_moves": rolled["moves"],
            "restart_move_p50_s": rolled["move_p50_s"],
            "restart_move_p99_s": rolled["move_p99_s"],
            "restart_move_max_s": rolled["move_max_s"],
            "restart_all_synced_after": sim.synced() == n,
            "restart_pushed": check["pushed"],
            "restart_lost": check["lost"],
            "restart_lost_examples": check["lost_examples"],
            "restart_behind": check["behind"],
            "duplicate_effects": final["duplicate_effects"],
            "duplicate_deliveries": final["duplicate_deliveries"],
            "restart_resyncs_after_first": sum(max(0, a.resyncs - 1) for a in sim.agents),
            "error_frames": final["error_frames"],
            "error_examples": final["error_examples"],
            "sessions_per_replica_after": await rig.sessions(),
        }
    )
    out.update(await _rebalance_figures(rig, sim, n, after))
    return out


async def _rebalance_figures(rig: Rig, sim: Simulator, n: int, after: Any) -> dict[str, Any]:
    """Time until the replicas hold their shares again (choreo_cp.rebalance), and the invariants
    over the whole run once the moved agents are back in sync."""
    t0 = time.monotonic()
    spread = await rig.sessions()
    while not (
        sum(spread) == n and all(to_shed(k, {str(i): c for i, c in enumerate(spread)}) == 0 for k in spread)
    ):
        if time.monotonic() - t0 > REBALANCE_TIMEOUT:
            return {"rebalanced": False, "sessions_per_replica_rebalance_timeout": spread}
        await asyncio.sleep(0.5)
        spread = await rig.sessions()
    took = time.monotonic() - t0
    synced = await wait_applied(sim, after, timeout=60)
    final = invariants(sim.agents, after)
    return {
        "rebalanced": True,
        "rebalance_s": round(took, 1),
        "sessions_per_replica_rebalanced": spread,
        "rebalance_all_applied": synced,
        "rebalance_lost": final["lost"],
        "rebalance_duplicate_effects": final["duplicate_effects"],
        "rebalance_resyncs_after_first": sum(max(0, a.resyncs - 1) for a in sim.agents),
    }


async def _guarded(phase: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    """One phase's figures, or its error: the other phase's figures are worth keeping either way."""
    try:
        figures = await phase
    except Exception as exc:
        figures = {"error": f"{exc.__class__.__name__}: {exc}"[:600]}
    print(json.dumps(figures), file=sys.stderr, flush=True)
    return figures


async def run(quick: bool) -> dict[str, Any]:
    from tests.fixtures.postgres import running_postgres

    n = int(os.environ.get("CHOREO_BENCH_REPLICAS_AGENTS") or (300 if quick else 3000))
    window = float(os.environ.get("CHOREO_BENCH_REPLICAS_WINDOW") or (20.0 if quick else 30.0))
    # 3,000 TLS sockets here, 3,000 in the balancer and 3,000 more across the replicas.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * n + 1024)), hard))
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as tmp, running_postgres() as pg:
        workdir = Path(tmp)
        certs = Certs(workdir)
        db = pg.database()
        t0 = time.monotonic()
        agents = await seed(db, n)
        seed_s = time.monotonic() - t0
        many = await _guarded(_phase(db, _fresh(agents), REPLICAS, workdir, certs, window, restart=True))
        one = await _guarded(_phase(db, _fresh(agents), 1, workdir, certs, window, restart=False))
    figures: dict[str, Any] = {
        "agents": n,
        "replicas": REPLICAS,
        "window_s": window,
        "seed_s": round(seed_s, 1),
    }
    figures.update({f"replicas_{k}": v for k, v in many.items()})
    figures.update({f"baseline_one_{k}": v for k, v in one.items()})
    for name, key in (
        ("cpu_per_agent", "cpu_ms_per_agent_per_s"),
        ("heartbeat_p99", "heartbeat_p99_ms"),
        ("rss_per_agent", "rss_kib_per_agent"),
    ):
        if key in many and key in one:
            figures[f"ratio_{name}_replicas_vs_one"] = round(many[key] / max(1e-9, one[key]), 2)
    return figures
