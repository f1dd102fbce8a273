"""The server processes' collector settings, each in a process of its own (they are process-wide)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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


# Each long-running command tunes its process before its loop starts: asyncio.run is replaced by a
# probe that reports the collector's state at that moment and runs nothing.
ENTRY_PROBE = """
import asyncio, gc, json, sys
from choreo_dp.cli.main import main

def probe(coro, **_):
    coro.close()
    loaded = [m for m in ("choreo_dp.agent.agent", "choreo_dp.operator", "kube_emulator") if m in sys.modules]
    print(json.dumps({"frozen": gc.get_freeze_count(), "thresholds": gc.get_threshold(), "loaded": loaded}))
    return 0

asyncio.run = probe
sys.exit(main(sys.argv[1:]))
"""

# what each command's loop runs, imported (and so frozen) before the loop starts
SERVES = {
    "agent": ["choreo_dp.agent.agent"],
    "operator": ["choreo_dp.operator"],
    "run": ["choreo_dp.agent.agent", "choreo_dp.operator"],
    "sandbox apiserver": ["kube_emulator"],
}
SERVER_COMMANDS = {
    "agent": [
        "agent",
        "--control-plane",
        "wss://127.0.0.1:1",
        "--dataplane",
        "dp",
        "--token-file",
        "{token}",
    ],
    "operator": ["operator"],
    "run": ["run", "--control-plane", "wss://127.0.0.1:1", "--dataplane", "dp", "--token-file", "{token}"],
    "sandbox apiserver": ["sandbox", "apiserver", "--port", "0", "--kubeconfig", "{kubeconfig}"],
}


@pytest.mark.parametrize("command", sorted(SERVER_COMMANDS))
def test_every_server_command_tunes_its_collector_before_serving(command: str, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    argv = [a.format(token=token, kubeconfig=tmp_path / "kubeconfig") for a in SERVER_COMMANDS[command]]
    out = subprocess.run(
        [sys.executable, "-c", ENTRY_PROBE, *argv], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["frozen"] > 1000
    assert tuple(seen["thresholds"]) == THRESHOLDS
    assert set(SERVES[command]) <= set(seen["loaded"]), seen["loaded"]
