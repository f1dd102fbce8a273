"""``choreo-dp agent``: the outbound tunnel agent."""

from __future__ import annotations

from typing import Any

from choreo_dp.cli.common import add_env_argument, add_logging_arguments, not_implemented, port


def add_agent_arguments(p: Any) -> None:
    add_env_argument(p, "--control-plane", required=True, help="wss://HOST:PORT of the control plane")
    add_env_argument(p, "--dataplane", required=True, help="this dataplane's id")
    add_env_argument(p, "--token-file", required=True, help="file holding the dataplane bearer token")
    add_env_argument(p, "--ca-file", help="CA bundle to pin for the control plane")
    add_env_argument(p, "--client-cert", help="mTLS client certificate")
    add_env_argument(p, "--client-key", help="mTLS client key")
    p.add_argument("--insecure", action="store_true", help="allow ws:// (development only)")


def register(sub: Any) -> None:
    p = sub.add_parser("agent", help="run the outbound tunnel agent")
    add_agent_arguments(p)
    add_env_argument(p, "--kubeconfig", help="kubeconfig file (default: in-cluster, then ~/.kube/config)")
    add_env_argument(p, "--metrics-port", type=port, default=9091, help="Prometheus /metrics port")
    add_env_argument(p, "--health-port", type=port, default=8082, help="/healthz port")
    add_logging_arguments(p)
    p.set_defaults(handler=not_implemented("agent"))
