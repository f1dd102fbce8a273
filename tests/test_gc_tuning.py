"""The control plane's collector settings, in a process of their own (they are process-wide)."""

from __future__ import annotations

import json
import subprocess
import sys

from choreo_dp.observability.gc_tuning import THRESHOLDS

PROBE = """
import gc, json
from choreo_dp.observability.gc_tuning import tune_for_server
before = gc.get_freeze_count()
cycle = []
cycle.append(cycle)  # start-up garbage: collected, not frozen
del cycle
tune_for_server()
young = [object() for _ in range(10)]  # made after start-up: collectable as ever
print(json.dumps({"before": before, "frozen": gc.get_freeze_count(), "thresholds": gc.get_threshold(),
                  "garbage": len(gc.garbage)}))
"""


def test_start_up_objects_are_frozen_and_collections_are_rarer() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    seen = json.loads(out.stdout)
    assert seen["before"] == 0
    assert seen["frozen"] > 1000  # the imported modules' objects
    assert tuple(seen["thresholds"]) == THRESHOLDS
    assert seen["garbage"] == 0
