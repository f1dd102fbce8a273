"""``choreo-dp control-plane serve``: the reference control plane."""

from __future__ import annotations

from typing import Any

from choreo_dp.cli.common import OneLineParser, add_env_argument, add_logging_arguments, not_implemented


def register(sub: Any) -> None:
    p = sub.add_parser("control-plane", help="the reference control plane")
    verbs = p.add_subparsers(dest="cp_verb", metavar="VERB", parser_class=OneLineParser)
    verbs.required = True
    s = verbs.add_parser("serve", help="serve the REST API and the tunnel endpoint")
    add_env_argument(s, "--listen", default="127.0.0.1:8443", help="HOST:PORT to listen on")
    add_env_argument(s, "--db", default="./choreo-cp.db", help="SQLite database path")
    add_env_argument(s, "--tls-cert", help="TLS certificate (PEM)")
    add_env_argument(s, "--tls-key", help="TLS private key (PEM)")
    add_env_argument(s, "--admin-token-file", help="file holding the admin bearer token")
    add_logging_arguments(s)
    s.set_defaults(handler=not_implemented("control-plane serve"))
