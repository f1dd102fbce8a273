"""``choreo-dp agent``: the outbound tunnel agent."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
from typing import Any

from choreo_dp.cli.common import (
    PROTECTED_NAMESPACES_HELP,
    UsageError,
    add_env_argument,
    add_logging_arguments,
    add_verb,
    env_name,
    namespace_patterns,
    port,
)

log = logging.getLogger(__name__)


def env_bool(text: str) -> bool:
    """true/false, yes/no, on/off, 1/0 (any case)."""
    value = text.strip().lower()
    if value in ("true", "yes", "on", "1"):
        return True
    if value in ("false", "no", "off", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30}


def byte_rate(text: str) -> int:
    """Bytes per second: ``2097152``, ``2Mi``, ``500Ki``, ``1M`` (an optional ``/s``); 0 is off."""
    value = text.strip().lower().removesuffix("/s").removesuffix("b")
    digits = value.rstrip("kmgi")
    unit = value[len(digits) :]
    if unit not in _UNITS or not digits.isdigit():
        raise argparse.ArgumentTypeError(f"expected bytes per second like 2Mi or 2097152, got {text!r}")
    return int(digits) * _UNITS[unit]


def add_agent_arguments(p: Any) -> None:
    add_env_argument(p, "--control-plane", required=True, help="wss://HOST:PORT of the control plane")
    add_env_argument(p, "--dataplane", required=True, help="this dataplane's id")
    add_env_argument(p, "--token-file", required=True, help="file holding the dataplane bearer token")
    add_env_argument(p, "--ca-file", help="CA bundle to pin for the control plane")
    add_env_argument(p, "--client-cert", help="mTLS client certificate")
    add_env_argument(p, "--client-key", help="mTLS client key")
    p.add_argument("--insecure", action="store_true", help="allow ws:// (development only)")
    add_env_argument(
        p, "--protected-namespaces", type=namespace_patterns, default=None, help=PROTECTED_NAMESPACES_HELP
    )
    add_env_argument(
        p,
        "--state-namespace",
        default=None,
        help="namespace of the ConfigMaps holding the offline copy of the desired specs "
        "(default: the agent's own namespace, else choreo-system)",
    )
    p.set_defaults(observability=True)
    # the env default is parsed here (not by add_env_argument) because the flag has a --no- form
    env = env_name("--observability")
    if env in os.environ:
        try:
            p.set_defaults(observability=env_bool(os.environ[env]))
        except argparse.ArgumentTypeError as exc:
            raise UsageError(f"{env}={os.environ[env]!r}: {exc}") from None
    p.add_argument(
        "--observability",
        action=argparse.BooleanOptionalAction,
        help="serve on-demand logs, events and live state of the apps through the tunnel; "
        f"--no-observability answers every such request 'disabled' (env {env}, default true)",
    )
    add_env_argument(
        p,
        "--stream-read-rate",
        type=byte_rate,
        default=None,
        help="the data plane's log-read budget in bytes/s (e.g. 2Mi), shared by every log stream, "
        "so that log reads never slow the API server's writes much; 0 switches it off (default 2Mi)",
    )


def agent_config(args: argparse.Namespace) -> Any:
    """Validate the flags into an AgentConfig; UsageError (exit 2) on anything wrong."""
    import os

    from choreo_dp.agent.agent import AgentConfig, ConfigError, tunnel_url
    from choreo_dp.agent.guards import default_protected_namespaces

    try:
        tunnel_url(args.control_plane, args.insecure)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    for flag in ("token_file", "ca_file", "client_cert", "client_key"):
        value = getattr(args, flag, None)
        if value and not os.path.isfile(value):
            raise UsageError(f"--{flag.replace('_', '-')}: no such file: {value}")
    if bool(args.client_cert) != bool(args.client_key):
        raise UsageError("--client-cert and --client-key go together")
    return AgentConfig(
        control_plane=args.control_plane,
        dataplane_id=args.dataplane,
        token_file=args.token_file,
        ca_file=args.ca_file,
        client_cert=args.client_cert,
        client_key=args.client_key,
        insecure=args.insecure,
        protected_namespaces=default_protected_namespaces(getattr(args, "protected_namespaces", None)),
        state_namespace=getattr(args, "state_namespace", None) or None,
        observability_enabled=getattr(args, "observability", True),
        **(
            {"stream_read_rate": rate}
            if (rate := getattr(args, "stream_read_rate", None)) is not None
            else {}
        ),
    )


def install_stop_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


def health_host() -> str:
    """Probes must be reachable by the kubelet in a pod; elsewhere stay on loopback."""
    import os

    default = "0.0.0.0" if "KUBERNETES_SERVICE_HOST" in os.environ else "127.0.0.1"
    return os.environ.get("CHOREO_DP_HEALTH_HOST", default)


async def run_agent(args: argparse.Namespace, stop: asyncio.Event | None = None) -> int:
    from choreo_dp.agent.agent import Agent
    from choreo_dp.kube import ConfigError, KubeClient
    from choreo_dp.observability import health
    from choreo_dp.observability.health import Liveness

    cfg = agent_config(args)
    stop = stop or asyncio.Event()
    install_stop_handlers(stop)
    try:
        kube = await KubeClient.from_kubeconfig(args.kubeconfig)
    except ConfigError as exc:
        raise UsageError(f"kubeconfig: {exc} (--kubeconfig FILE, or run in a pod)") from None
    liveness = Liveness("agent", max_silence=120.0)
    try:
        runner = await health.serve([liveness], health_host(), [args.health_port, args.metrics_port])
    except OSError as exc:
        await kube.close()
        raise UsageError(
            f"cannot listen on --health-port {args.health_port} / --metrics-port {args.metrics_port}: "
            f"{exc.strerror or exc}"
        ) from None
    try:
        await Agent(cfg, kube, liveness=liveness).run(stop)
    finally:
        await runner.cleanup()
        await kube.close()
    return 0


def handle(args: argparse.Namespace) -> int:
    from choreo_dp.observability.gc_tuning import tune_for_server
    from choreo_dp.observability.logging import configure_logging

    agent_config(args)  # flag errors before anything starts
    configure_logging(args.log_format, args.log_level)
    tune_for_server("choreo_dp.agent.agent")
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run_agent(args))
    return 0


def register(sub: Any) -> None:
    p = add_verb(
        sub,
        "agent",
        "run the outbound tunnel agent (connects to the control plane, writes the desired state)",
        "choreo-dp agent --control-plane wss://cp.example:8443 --dataplane edge-1 "
        "--token-file /var/run/choreo/token --ca-file ca.pem",
    )
    add_agent_arguments(p)
    add_env_argument(p, "--kubeconfig", help="kubeconfig file (default: in-cluster, then ~/.kube/config)")
    add_env_argument(p, "--metrics-port", type=port, default=9091, help="Prometheus /metrics port")
    add_env_argument(p, "--health-port", type=port, default=8082, help="/healthz port")
    add_logging_arguments(p)
    p.set_defaults(handler=handle)
