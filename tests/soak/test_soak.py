"""The fault soak (issue 14, "Proof"): random desired-state changes and random faults, then every
invariant of :mod:`tests.soak.invariants` must hold within a bound.

Runs in ``make test``. ``CHOREO_DP_SOAK_SECONDS`` (default 180) is the budget of the faulted run
plus convergence; ``CHOREO_DP_SOAK_CONVERGE_SECONDS`` (default half of it, at most 120) bounds the
convergence alone; ``CHOREO_DP_SOAK_SEED`` replays a run (the seed is always printed). What was
injected and how long convergence took are printed whether it passes or fails; a failure also
prints the violations and the end of each part's log (the whole logs stay in the test's tmp dir).

The seed fixes the sequence of choices (which fault, which object, how long), not the timing of a
distributed system: a replay takes the same decisions at about the same moments.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from pathlib import Path

import pytest

from tests import polling
from tests.soak.adversary import Adversary, FaultLog
from tests.soak.driver import Driver
from tests.soak.invariants import ready_keys, violations
from tests.soak.rig import Rig, bounded

SECONDS = float(os.environ.get("CHOREO_DP_SOAK_SECONDS", "180"))
CONVERGE_SECONDS = float(os.environ.get("CHOREO_DP_SOAK_CONVERGE_SECONDS", str(min(120.0, SECONDS / 2))))
FAULT_SECONDS = max(20.0, SECONDS - CONVERGE_SECONDS)
# The adversary starts once the first desired state had a moment to land.
QUIET_START = 10.0
START_TIMEOUT = 300.0  # a real cluster from cold, then three processes

pytestmark = [
    pytest.mark.soak,
    pytest.mark.real_apiserver,
    pytest.mark.timeout(int(START_TIMEOUT + SECONDS + 300)),
]


def soak_seed() -> int:
    given = os.environ.get("CHOREO_DP_SOAK_SEED")
    return int(given) if given else random.SystemRandom().randrange(1 << 32)


async def test_fault_soak(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seed = soak_seed()
    rng = random.Random(seed)
    log = FaultLog()
    rig = Rig(tmp_path / "soak")
    report = [
        f"fault soak: seed {seed} (CHOREO_DP_SOAK_SEED={seed} replays it), {FAULT_SECONDS:.0f}s of faults, "
        f"convergence bound {CONVERGE_SECONDS:.0f}s, directory {rig.directory}"
    ]
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    remaining: list[str] = ["the soak did not get to the invariant check"]
    driver: Driver | None = None
    adversary: Adversary | None = None
    try:
        started = time.monotonic()
        await bounded(rig.start(), START_TIMEOUT)
        report.append(
            f"started the cluster, control plane, operator and agent in {time.monotonic() - started:.1f}s"
        )
        log = FaultLog()
        driver = Driver(random.Random(rng.random()), rig.cp_client, log.add)
        adversary = Adversary(rig, random.Random(rng.random()), log)
        seen_ready: set[str] = set()

        async def monitor() -> None:
            while not stop.is_set():
                assert rig.kube is not None
                with contextlib.suppress(Exception):  # the apiserver may be stopped: skip a sample
                    seen_ready.update(await bounded(ready_keys(rig.kube)))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 2.0)

        async def adversary_later() -> None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), QUIET_START)
            assert adversary is not None
            await adversary.run(stop, until=log.started + FAULT_SECONDS)

        tasks = [
            asyncio.create_task(driver.run(stop)),
            asyncio.create_task(adversary_later()),
            asyncio.create_task(monitor()),
        ]
        done, _ = await asyncio.wait(tasks, timeout=FAULT_SECONDS, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()  # a harness task that died is a harness bug: surface it
        stop.set()
        # the adversary puts back what it broke (bounded: its lasting faults end within 20 s,
        # an apiserver restart within 90 s)
        await bounded(asyncio.gather(*tasks), 240)
        log.add("faults stopped; checking invariants")

        converge_start = time.monotonic()

        async def converged() -> bool:
            assert driver is not None
            remaining[:] = await violations(rig, driver.ledger, seen_ready)
            return not remaining

        with contextlib.suppress(polling.PollTimeout):
            await polling.eventually(converged, "every invariant", timeout=CONVERGE_SECONDS, interval=2.0)
        took = time.monotonic() - converge_start
        report.append(
            f"converged in {took:.1f}s after the faults stopped"
            if not remaining
            else f"NOT converged within {CONVERGE_SECONDS:.0f}s ({len(remaining)} violations)"
        )
        report.append(f"apps seen Ready during the run: {len(seen_ready)}")
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=30)
        if driver is not None:
            report.append(
                "driver: " + ", ".join(f"{k} x{v}" for k, v in sorted(driver.ledger.counts.items()))
            )
            report.extend(f"driver: {line}" for line in driver.unexpected)
        if adversary is not None:
            report.append("faults: " + ", ".join(f"{k} x{v}" for k, v in sorted(adversary.injected.items())))
        report.append("fault log:\n" + log.text())
        if remaining:
            report.append("violations:\n  " + "\n  ".join(remaining[:80]))
            report.append(rig.log_tails())
        await bounded(rig.stop(), 180)
        with capsys.disabled():
            print("\n" + "\n".join(report))
    assert driver is not None and not driver.unexpected, driver.unexpected if driver else None
    assert not remaining, f"seed {seed}: {len(remaining)} invariant violations (see the report above)"
