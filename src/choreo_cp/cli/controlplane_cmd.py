"""``choreo-dp control-plane serve``: the reference control plane."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

from choreo_cp.cli.waiting import duration
from choreo_dp.cli.common import OneLineParser, UsageError, add_env_argument, add_logging_arguments, add_verb
from choreo_dp.observability.gc_tuning import tune_for_server
from choreo_dp.observability.logging import configure_logging

log = logging.getLogger("choreo_cp")


def register(sub: Any) -> None:
    p = add_verb(
        sub,
        "control-plane",
        "the reference control plane (REST API, SQLite store, tunnel endpoint)",
        "choreo-dp control-plane serve --admin-token-file admin.token",
    )
    verbs = p.add_subparsers(dest="cp_verb", metavar="VERB", parser_class=OneLineParser)
    verbs.required = True
    s = add_verb(
        verbs,
        "serve",
        "serve the REST API and the tunnel endpoint",
        "choreo-dp control-plane serve --admin-token-file admin.token     # http on 127.0.0.1:8443",
        "choreo-dp control-plane serve --listen 0.0.0.0:8443 --tls-cert tls.crt --tls-key tls.key "
        "--admin-token-file admin.token --db /var/lib/choreo/cp.db",
        "choreo-dp control-plane serve ... --db postgresql://choreo@db.internal/choreo",
    )
    add_env_argument(s, "--listen", default="127.0.0.1:8443", help="HOST:PORT to listen on")
    add_env_argument(
        s,
        "--db",
        default="./choreo-cp.db",
        help="SQLite database path, or postgresql://USER@HOST/DB (any number of replicas; the password"
        " from PGPASSWORD or ~/.pgpass rather than the URL)",
    )
    add_env_argument(
        s,
        "--advertise-url",
        help="URL the other replicas reach this one at, to hand it stream requests of the agents it"
        " holds (default: from --listen; in Kubernetes the pod IP, e.g. https://$(POD_IP):8443)",
    )
    add_env_argument(s, "--tls-cert", help="TLS certificate (PEM)")
    add_env_argument(s, "--tls-key", help="TLS private key (PEM)")
    add_env_argument(
        s, "--client-ca-file", help="require client certificates signed by this CA (mTLS, every connection)"
    )
    add_env_argument(
        s, "--admin-token-file", help="file holding the admin bearer token (or env CHOREO_DP_ADMIN_TOKEN)"
    )
    add_env_argument(
        s, "--history-limit", type=_history_limit, default=50, metavar="N",
        help="accepted specs kept per app for cp history and cp rollback (oldest pruned; default 50)",
    )  # fmt: skip
    add_env_argument(
        s, "--rebalance-interval", type=_interval, default=30.0, metavar="DURATION",
        help="several replicas: every DURATION (30, 30s, 5m) a replica holding more than its share of the"
        " agents sends a few away to reconnect through the load balancer (0: never; default 30s)",
    )  # fmt: skip
    add_logging_arguments(s)
    s.set_defaults(handler=serve)


def _listen(text: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise UsageError(f"--listen {text!r}: expected HOST:PORT")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise UsageError(f"--listen {text!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise UsageError(f"--listen {text!r}: port out of range")
    return host, port


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _admin_token(path: str | None) -> str:
    if path:
        try:
            token = Path(path).read_text().strip()
        except OSError as exc:
            raise UsageError(f"--admin-token-file {path}: {exc.strerror or exc}") from None
        if not token:
            raise UsageError(f"--admin-token-file {path}: file is empty")
        return token
    token = os.environ.get("CHOREO_DP_ADMIN_TOKEN", "").strip()
    if not token:
        raise UsageError("an admin token is required: --admin-token-file FILE or env CHOREO_DP_ADMIN_TOKEN")
    return token


def _history_limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: a whole number") from None
    if not 1 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: 1 to 10000")
    return value


def _interval(text: str) -> float:
    """A duration as ``cp apply --wait`` takes it (``30``, ``30s``, ``5m``), or ``0``: never."""
    with contextlib.suppress(ValueError):
        if float(text.strip().removesuffix("s")) == 0:
            return 0.0
    return duration(text)


def _readable(flag: str, path: str | None) -> None:
    if path is not None and not os.access(path, os.R_OK):
        raise UsageError(f"{flag} {path}: not a readable file")


def serve(args: argparse.Namespace) -> int:
    from choreo_cp.context import TunnelSettings
    from choreo_cp.server import ServerConfig

    host, port = _listen(args.listen)
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError("--tls-cert and --tls-key go together (both or neither)")
    _readable("--tls-cert", args.tls_cert)
    _readable("--tls-key", args.tls_key)
    _readable("--client-ca-file", args.client_ca_file)
    if args.client_ca_file and not args.tls_cert:
        raise UsageError("--client-ca-file needs --tls-cert/--tls-key")
    if not args.tls_cert and not _is_loopback(host):
        raise UsageError(
            f"--listen {args.listen}: without --tls-cert/--tls-key only loopback addresses are allowed"
        )
    token = _admin_token(args.admin_token_file)
    configure_logging(args.log_format, args.log_level)
    if not args.tls_cert:
        log.warning("TLS is off: serving plain HTTP/WS on loopback %s only (agents need --insecure)", host)
    config = ServerConfig(
        host=host,
        port=port,
        db=args.db,
        admin_token=token,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        client_ca=args.client_ca_file,
        history_limit=args.history_limit,
        advertise_url=args.advertise_url,
        tunnel=TunnelSettings(rebalance_interval=args.rebalance_interval),
    )
    return asyncio.run(_serve(config))


async def _serve(config: Any) -> int:
    from choreo_cp.server import ControlPlaneServer

    server = ControlPlaneServer(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
    except sqlite3.Error as exc:
        sys.stderr.write(f"choreo-dp: error: --db {server.store.engine.location}: {exc}\n")
        return 2
    except (OSError, TimeoutError) as exc:
        log.error("%s", exc)
        return 1
    tune_for_server()
    try:
        await stop.wait()
        log.info("shutting down")
    finally:
        await server.stop()
    return 0
