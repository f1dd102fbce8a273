"""``choreo-dp run``: operator and agent in one process (development)."""

from __future__ import annotations

from typing import Any

from choreo_dp.cli.agent_cmd import add_agent_arguments
from choreo_dp.cli.common import add_env_argument, add_logging_arguments, not_implemented, port


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="operator and agent in one process (development)")
    add_agent_arguments(p)
    add_env_argument(p, "--kubeconfig", help="kubeconfig file")
    add_env_argument(p, "--metrics-port", type=port, default=9090, help="Prometheus /metrics port")
    add_env_argument(p, "--health-port", type=port, default=8081, help="/healthz port")
    add_logging_arguments(p)
    p.set_defaults(handler=not_implemented("run"))
