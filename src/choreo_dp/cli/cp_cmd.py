"""``choreo-dp cp``: a client of the control plane's REST API."""

from __future__ import annotations

from typing import Any

from choreo_dp.cli.common import OneLineParser, add_env_argument, not_implemented


def _client_args(p: Any) -> None:
    add_env_argument(p, "--url", help="control plane base URL (env CHOREO_DP_CP_URL also accepted)")
    add_env_argument(p, "--token-file", help="admin token file (or env CHOREO_DP_CP_TOKEN)")
    add_env_argument(p, "--ca-file", help="CA bundle for the control plane's TLS certificate")


def register(sub: Any) -> None:
    p = sub.add_parser("cp", help="client of the control plane's REST API")
    verbs = p.add_subparsers(dest="cp_verb", metavar="VERB", parser_class=OneLineParser)
    verbs.required = True
    a = verbs.add_parser("apply", help="push Environment/ChoreoApp manifests")
    a.add_argument("-f", "--filename", required=True, help="YAML file (multi-document allowed, - for stdin)")
    a.add_argument("--dataplane", required=True)
    _client_args(a)
    a.set_defaults(handler=not_implemented("cp apply"))
    d = verbs.add_parser("delete", help="remove an Environment or ChoreoApp")
    d.add_argument("kind", choices=["environment", "app", "choreoapp"])
    d.add_argument("name")
    d.add_argument("--dataplane", required=True)
    d.add_argument("--environment")
    _client_args(d)
    d.set_defaults(handler=not_implemented("cp delete"))
    g = verbs.add_parser("get", help="show a dataplane or an app with its reported status")
    g.add_argument("kind", choices=["dataplane", "app", "choreoapp"])
    g.add_argument("name")
    g.add_argument("--dataplane")
    g.add_argument("--environment")
    _client_args(g)
    g.set_defaults(handler=not_implemented("cp get"))
