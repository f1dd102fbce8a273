"""The control plane's collector settings, in a process of their own (they are process-wide)."""

from __future__ import annotations

import json
import subprocess
import sys

from choreo_dp.observability.gc_tuning import THRESHOLDS

PROBE = """
import gc, json, weakref
from choreo_dp.observability.gc_tuning import tune_for_server

class Node:
    pass

before = gc.get_freeze_count()
garbage = Node()
garbage.self = garbage  # start-up garbage in a cycle: collected by the tuning, not frozen
left = weakref.ref(garbage)
del garbage
tune_for_server()
print(json.dumps({"before": before, "frozen": gc.get_freeze_count(), "thresholds": gc.get_threshold(),
                  "cycle_collected": left() is None}))
"""


def test_start_up_objects_are_frozen_and_collections_are_rarer() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    seen = json.loads(out.stdout)
    assert seen["before"] == 0
    assert seen["frozen"] > 1000  # the imported modules' objects
    assert tuple(seen["thresholds"]) == THRESHOLDS
    assert seen["cycle_collected"]
