"""``choreo-dp sandbox``: everything on one machine; ``sandbox apiserver``: only the emulated API."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from choreo_dp.cli.common import OneLineParser, UsageError, add_env_argument, port


def run_sandbox_verb(args: argparse.Namespace) -> int:
    from choreo_dp.sandbox.demo import run_sandbox

    return asyncio.run(run_sandbox(Path(args.dir), once=args.once))


def register(sub: Any) -> None:
    p = sub.add_parser("sandbox", help="the whole data plane on one machine, no cluster")
    add_env_argument(p, "--dir", default=".sandbox", help="working directory for state and logs")
    p.add_argument("--once", action="store_true", help="exit after the demo app is Ready")
    p.set_defaults(handler=run_sandbox_verb)
    verbs = p.add_subparsers(dest="sandbox_verb", metavar="VERB", parser_class=OneLineParser)
    a = verbs.add_parser("apiserver", help="serve only the emulated Kubernetes API")
    a.add_argument("--port", type=port, required=True, help="port on 127.0.0.1 (0 picks a free one)")
    a.add_argument("--kubeconfig", required=True, help="kubeconfig file to write")
    a.add_argument("--simulate-workloads", action="store_true", help="act like kubelet for Deployments")
    a.set_defaults(handler=run_apiserver)


def run_apiserver(args: argparse.Namespace) -> int:
    """``choreo-dp sandbox apiserver``: serve the emulated API until SIGINT/SIGTERM."""
    from choreo_dp.sandbox.apiserver import serve_forever

    try:
        return asyncio.run(
            serve_forever(args.port, args.kubeconfig, simulate_workloads=args.simulate_workloads)
        )
    except OSError as exc:
        raise UsageError(f"cannot serve on 127.0.0.1:{args.port}: {exc}") from None
