"""Run every ``bench/bench_*.py`` module, print a table, write ``bench/results/latest.json``.

Each module exposes ``async def run(quick: bool) -> dict[str, float | int | str]``: named figures,
including the baseline measured in the same run and the ratio against it.

``--kube emulated|real|both`` picks the Kubernetes API servers the benchmarks that need one measure
against (``bench/clusters.py``; passed on as ``CHOREO_BENCH_KUBE``).  Default: ``both`` when the
real binaries ``tools/kube/build.py`` builds are cached, ``emulated`` otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench import clusters
from choreo_sandbox.cluster.binaries import BinariesMissing

HERE = Path(__file__).resolve().parent


def discover(names: list[str]) -> list[str]:
    found = sorted(p.stem for p in HERE.glob("bench_*.py"))
    if names:
        wanted = {n if n.startswith("bench_") else f"bench_{n}" for n in names}
        unknown = wanted - set(found)
        if unknown:
            raise SystemExit(f"bench: unknown benchmark(s): {', '.join(sorted(unknown))}")
        found = [f for f in found if f in wanted]
    return found


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--full", action="store_true", help="the issue's full sizes (slow)")
    parser.add_argument(
        "--kube",
        choices=clusters.CHOICES,
        default=os.environ.get(clusters.KUBE_ENV) or clusters.default_choice(),
        help="API servers to measure against: the emulated one, a real kube-apiserver + etcd "
        "(`choreo-dp sandbox cluster`), or both side by side (default: both when the real "
        "binaries are cached, else emulated)",
    )
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    args = parser.parse_args()
    try:
        kinds = clusters.selected_kinds(args.kube)
    except (BinariesMissing, ValueError) as exc:
        parser.exit(2, f"bench: --kube {args.kube}: {exc}\n")
    os.environ[clusters.KUBE_ENV] = args.kube
    print(f"kube API servers (benchmarks using bench/clusters.py): {clusters.describe(kinds)}", flush=True)
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "mode": "full" if args.full else "quick",
        "kube": kinds,
        "benchmarks": {},
    }
    failed = False
    for name in discover(args.names):
        module = importlib.import_module(f"bench.{name}")
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            figures = asyncio.run(module.run(quick=not args.full))
        except Exception:
            traceback.print_exc()
            figures = {"error": traceback.format_exc(limit=3)}
            failed = True
        figures["wall_seconds"] = round(time.perf_counter() - t0, 2)
        results["benchmarks"][name] = figures
        width = max(len(k) for k in figures)
        for key, value in figures.items():
            if key != "error":
                print(f"  {key:<{width}}  {value}")
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"wrote {out / 'latest.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
