"""``choreo-dp sandbox``: everything on one machine; ``sandbox apiserver``: only the emulated API."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from choreo_dp.cli.common import OneLineParser, UsageError, add_env_argument, add_verb, port


def run_sandbox_verb(args: argparse.Namespace) -> int:
    from choreo_sandbox.cluster import BinariesMissing
    from choreo_sandbox.demo import check_kube_mode, run_sandbox

    try:
        check_kube_mode(args.kube)
    except BinariesMissing as exc:
        raise UsageError(f"--kube real: {exc}") from None
    return asyncio.run(run_sandbox(Path(args.dir), once=args.once, kube=args.kube))


def _kube_mode(raw: str) -> str:
    if raw not in ("emulated", "real"):
        raise argparse.ArgumentTypeError(f"invalid choice: {raw!r} (choose from 'emulated', 'real')")
    return raw


def register(sub: Any) -> None:
    p = add_verb(
        sub,
        "sandbox",
        "the whole data plane on one machine, on an emulated or a real API",
        "choreo-dp sandbox                           # until Ctrl-C; prints what to try next",
        "choreo-dp sandbox --once                    # exit 0 once the demo app is Ready",
        "choreo-dp sandbox --kube real --dir /tmp/sb # a real kube-apiserver with kwok nodes",
    )
    add_env_argument(p, "--dir", default=".sandbox", help="working directory for state and logs")
    p.add_argument("--once", action="store_true", help="exit after the demo app is Ready")
    add_env_argument(
        p,
        "--kube",
        type=_kube_mode,
        default="emulated",
        metavar="{emulated,real}",
        help="the Kubernetes API: the emulated one, or a real control plane with kwok nodes "
        "(`sandbox cluster`, from the binaries `tools/kube/build.py` caches)",
    )
    p.set_defaults(handler=run_sandbox_verb)
    verbs = p.add_subparsers(dest="sandbox_verb", metavar="VERB", parser_class=OneLineParser)
    a = add_verb(
        verbs,
        "apiserver",
        "serve only the emulated Kubernetes API",
        "choreo-dp sandbox apiserver --port 6443 --kubeconfig /tmp/kc --simulate-workloads",
    )
    a.add_argument("--port", type=port, required=True, help="port on 127.0.0.1 (0 picks a free one)")
    a.add_argument("--kubeconfig", required=True, help="kubeconfig file to write")
    a.add_argument("--simulate-workloads", action="store_true", help="act like kubelet for Deployments")
    a.set_defaults(handler=run_apiserver)
    c = add_verb(
        verbs,
        "cluster",
        "run a real Kubernetes control plane with kwok nodes",
        "choreo-dp sandbox cluster --port 6443 --kubeconfig /tmp/kc --nodes 3",
    )
    c.add_argument("--port", type=port, required=True, help="kube-apiserver port on 127.0.0.1 (0 picks one)")
    c.add_argument("--kubeconfig", required=True, help="admin kubeconfig file to write")
    c.add_argument("--nodes", type=_node_count, default=2, help="simulated kwok nodes (default 2)")
    c.set_defaults(handler=run_cluster)
    from choreo_sandbox.keyvault.cli import register as register_keyvault

    register_keyvault(verbs)


def run_apiserver(args: argparse.Namespace) -> int:
    """``choreo-dp sandbox apiserver``: serve the emulated API until SIGINT/SIGTERM."""
    from choreo_dp.observability.gc_tuning import tune_for_server
    from kube_emulator import serve_forever

    tune_for_server()
    try:
        return asyncio.run(
            serve_forever(args.port, args.kubeconfig, simulate_workloads=args.simulate_workloads)
        )
    except OSError as exc:
        raise UsageError(f"cannot serve on 127.0.0.1:{args.port}: {exc}") from None


def _node_count(raw: str) -> int:
    try:
        n = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {raw!r}") from None
    if not 1 <= n <= 500:
        raise argparse.ArgumentTypeError("must be between 1 and 500")
    return n


def run_cluster(args: argparse.Namespace) -> int:
    """``choreo-dp sandbox cluster``: a real control plane until SIGINT/SIGTERM."""
    from choreo_sandbox.cluster import BinariesMissing, serve_forever
    from choreo_sandbox.cluster.processes import ProcessFailed

    try:
        return asyncio.run(serve_forever(args.port, args.kubeconfig, args.nodes))
    except BinariesMissing as exc:
        raise UsageError(str(exc)) from None
    except ProcessFailed as exc:
        sys.stderr.write(f"choreo-dp: the cluster did not start: {exc}\n")
        return 1
