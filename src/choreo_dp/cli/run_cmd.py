"""``choreo-dp run``: operator and agent in one process (development).

One /healthz and /metrics for both: /healthz fails when either main loop stops making progress,
and if either part ends, the other is stopped and the process exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import Any

from choreo_dp.cli.agent_cmd import add_agent_arguments
from choreo_dp.cli.common import UsageError, add_env_argument, add_logging_arguments, port


async def run_both(args: argparse.Namespace, stop: asyncio.Event | None = None) -> int:
    from choreo_dp.cli.agent_cmd import agent_config, install_stop_handlers
    from choreo_dp.cli.operator_cmd import operator_config
    from choreo_dp.kube import ConfigError, KubeClient
    from choreo_dp.observability.health import Liveness
    from choreo_dp.operator import run_operator
    from choreo_dp.tunnel.agent import Agent

    op_cfg = operator_config(args)
    ag_cfg = agent_config(args)
    agent_liveness = Liveness("agent", max_silence=120.0)
    op_cfg.extra_liveness.append(agent_liveness)
    stop = stop or asyncio.Event()
    install_stop_handlers(stop)
    try:
        kube = await KubeClient.from_kubeconfig(args.kubeconfig)
    except ConfigError as exc:
        raise UsageError(f"kubeconfig: {exc}") from None
    try:
        operator = asyncio.create_task(run_operator(op_cfg, stop), name="operator")
        agent = asyncio.create_task(Agent(ag_cfg, kube, liveness=agent_liveness).run(stop), name="agent")
        done, pending = await asyncio.wait([operator, agent], return_when=asyncio.FIRST_COMPLETED)
        stop.set()  # one part ended: stop the other cleanly
        if pending:
            _, late = await asyncio.wait(pending, timeout=15)
            for task in late:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        await kube.close()
    return 0


def handle(args: argparse.Namespace) -> int:
    from choreo_dp.cli.agent_cmd import agent_config
    from choreo_dp.cli.operator_cmd import operator_config
    from choreo_dp.observability.logging import configure_logging

    operator_config(args)  # flag errors before anything starts
    agent_config(args)
    configure_logging(args.log_format, args.log_level)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run_both(args))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="operator and agent in one process (development)")
    add_agent_arguments(p)
    add_env_argument(p, "--kubeconfig", help="kubeconfig file")
    add_env_argument(p, "--metrics-port", type=port, default=9090, help="Prometheus /metrics port")
    add_env_argument(p, "--health-port", type=port, default=8081, help="/healthz port")
    add_env_argument(p, "--workers", type=int, default=16, help="concurrent operator reconciles")
    add_logging_arguments(p)
    p.set_defaults(handler=handle)
