"""``choreo-dp operator``: the kopf operator reconciling Environment and ChoreoApp."""

from __future__ import annotations

from typing import Any

from choreo_dp.cli.common import add_env_argument, add_logging_arguments, not_implemented, port


def register(sub: Any) -> None:
    p = sub.add_parser("operator", help="run the operator (reconciles Environment and ChoreoApp)")
    add_env_argument(p, "--kubeconfig", help="kubeconfig file (default: in-cluster, then ~/.kube/config)")
    add_env_argument(p, "--metrics-port", type=port, default=9090, help="Prometheus /metrics port")
    add_env_argument(p, "--health-port", type=port, default=8081, help="/healthz port")
    add_logging_arguments(p)
    p.set_defaults(handler=not_implemented("operator"))
