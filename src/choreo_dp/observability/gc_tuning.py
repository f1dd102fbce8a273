"""Garbage-collector settings for a long-running server process.

CPython's default thresholds (700, 10, 10) collect the youngest generation every 700 net allocations
and the whole heap whenever enough has survived into the oldest one. A control plane replica holding
3,000 agent sessions keeps ~565,000 tracked objects; under heartbeat traffic it ran a full collection
every ~10 s, each stopping its event loop for 0.6-1.2 s (measured with ``gc.callbacks``), which was
the heartbeat round trip's p99 (1.3 s) and 16 % of the loop's time. Two changes fix it:

- :func:`gc.freeze` once start-up is done: the modules, routes, schemas and settings (most of the
  objects of an idle process) go to the permanent generation, and no collection walks them again;
- a young-generation threshold of 20,000 (fewer, larger young collections) and a higher oldest
  threshold, so a full collection comes after millions of allocations, not thousands; it still
  comes, so garbage in reference cycles is still reclaimed.

Every long-running command does the same (``agent``, ``operator``, ``run``, ``sandbox apiserver``,
``control-plane serve``). The agent's and the emulated API's full collections took 50-54 ms each
with ~100,000 tracked objects; with ten log streams flowing one of them fell on a desired-state
write about once a run and was the slowest push-to-applied of the starvation benchmark.
"""

from __future__ import annotations

import gc
import importlib

THRESHOLDS = (20_000, 20, 100)


def tune_for_server(*modules: str) -> None:
    """Call once the process has started (imports done, app built), before it takes traffic.
    ``modules`` are imported first, so that a command's lazily imported code is frozen too."""
    for name in modules:
        importlib.import_module(name)
    gc.collect()  # what start-up left as garbage goes now, not into the permanent generation
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
