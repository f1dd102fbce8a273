"""``choreo-dp operator``: the kopf operator reconciling Environment and ChoreoApp."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import Any

from choreo_dp.cli.common import (
    PROTECTED_NAMESPACES_HELP,
    UsageError,
    add_env_argument,
    add_logging_arguments,
    add_verb,
    namespace_patterns,
    port,
)


def operator_config(args: argparse.Namespace) -> Any:
    """The :class:`~choreo_dp.operator.OperatorConfig` for parsed flags (also used by ``choreo-dp run``)."""
    from choreo_dp.cli.agent_cmd import health_host
    from choreo_dp.operator import OperatorConfig

    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    from pydantic import ValidationError

    from choreo_dp.operator.config import default_key_vault_from_env
    from choreo_dp.render.environment import PROTECTED_NAMESPACES_ENV

    try:
        default_key_vault_from_env()
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UsageError(f"CHOREO_DP_DEFAULT_KEYVAULT_*: {first['loc'][0]}: {first['msg']}") from None
    extra: dict[str, Any] = {}
    # ``choreo-dp run`` has no such flag; there the setting comes from the environment alone.
    if getattr(args, "protected_namespaces", None) is not None:
        extra["protected_namespaces"] = args.protected_namespaces
    try:
        return OperatorConfig(
            kubeconfig=args.kubeconfig,
            listen_host=health_host(),
            health_port=args.health_port,
            metrics_port=args.metrics_port,
            workers=args.workers,
            **extra,
        )
    except ValueError as exc:
        raise UsageError(f"{PROTECTED_NAMESPACES_ENV}: {exc}") from None


async def run(args: argparse.Namespace, stop: asyncio.Event | None = None) -> int:
    from choreo_dp.cli.agent_cmd import install_stop_handlers
    from choreo_dp.kube import ConfigError
    from choreo_dp.operator import run_operator

    config = operator_config(args)
    stop = stop or asyncio.Event()
    install_stop_handlers(stop)
    try:
        await run_operator(config, stop)
    except ConfigError as exc:
        raise UsageError(f"kubeconfig: {exc}") from None
    return 0


def handle(args: argparse.Namespace) -> int:
    from choreo_dp.observability.gc_tuning import tune_for_server
    from choreo_dp.observability.logging import configure_logging

    operator_config(args)  # flag errors before anything starts
    configure_logging(args.log_format, args.log_level)
    tune_for_server("choreo_dp.operator")
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run(args))
    return 0


def register(sub: Any) -> None:
    p = add_verb(
        sub,
        "operator",
        "run the operator (reconciles Environment and ChoreoApp into namespaces and workloads)",
        "choreo-dp operator --kubeconfig ~/.kube/config",
        "choreo-dp operator                          # in a pod: the in-cluster configuration",
    )
    add_env_argument(p, "--kubeconfig", help="kubeconfig file (default: in-cluster, then ~/.kube/config)")
    add_env_argument(p, "--metrics-port", type=port, default=9090, help="Prometheus /metrics port")
    add_env_argument(p, "--health-port", type=port, default=8081, help="/healthz port")
    add_env_argument(p, "--workers", type=int, default=16, help="concurrent reconciles")
    add_env_argument(
        p,
        "--protected-namespaces",
        type=namespace_patterns,
        default=None,
        help=PROTECTED_NAMESPACES_HELP,
    )
    add_logging_arguments(p)
    p.set_defaults(handler=handle)
