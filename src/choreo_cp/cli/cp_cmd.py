"""``choreo-dp cp``: a client of the control plane's REST API.

Exit codes: 0 success, 1 the control plane refused something (each refusal is one line on
stderr), 2 bad flags, configuration or manifests.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from choreo_dp.api.vocabulary import API_VERSION
from choreo_dp.cli.common import OneLineParser, UsageError

KINDS = ("Environment", "ChoreoApp")


def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="control plane base URL, e.g. https://127.0.0.1:8443 (env CHOREO_DP_CP_URL)")
    p.add_argument("--token-file", help="file holding the admin token (else env CHOREO_DP_CP_TOKEN)")
    p.add_argument(
        "--ca-file", help="CA bundle for the control plane's TLS certificate (env CHOREO_DP_CA_FILE)"
    )


def _output_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", choices=["table", "json"], default="table", help="output format")


def register(sub: Any) -> None:
    p = sub.add_parser("cp", help="client of the control plane's REST API")
    verbs = p.add_subparsers(dest="cp_verb", metavar="VERB", parser_class=OneLineParser)
    verbs.required = True
    a = verbs.add_parser("apply", help="push Environment/ChoreoApp manifests")
    a.add_argument("-f", "--filename", required=True, help="YAML file (multi-document allowed, - for stdin)")
    a.add_argument("--dataplane", required=True)
    _client_args(a)
    a.set_defaults(handler=_handler(apply))
    d = verbs.add_parser("delete", help="remove an Environment or ChoreoApp")
    d.add_argument("kind", choices=["environment", "app", "choreoapp"])
    d.add_argument("name")
    d.add_argument("--dataplane", required=True)
    d.add_argument("--environment")
    _client_args(d)
    d.set_defaults(handler=_handler(delete))
    g = verbs.add_parser("get", help="show a dataplane, environment or app with its reported status")
    g.add_argument("kind", choices=["dataplane", "environment", "app", "choreoapp"])
    g.add_argument("name")
    g.add_argument("--dataplane")
    g.add_argument("--environment")
    _output_arg(g)
    _client_args(g)
    g.set_defaults(handler=_handler(get))
    r = verbs.add_parser("register", help="register a dataplane and print its token (shown once)")
    r.add_argument("name", help="dataplane id")
    r.add_argument("--rotate-token", action="store_true", help="mint a new token (the old one stops working)")
    r.add_argument("--token-out", help="write the token to this file (mode 0600) instead of printing it")
    _client_args(r)
    r.set_defaults(handler=_handler(register_dataplane))
    pr = verbs.add_parser("promote", help="deploy the image digest running in one place to another")
    pr.add_argument("app")
    pr.add_argument("--from", dest="source", required=True, metavar="DATAPLANE/ENV")
    pr.add_argument("--to", dest="target", required=True, metavar="DATAPLANE/ENV")
    pr.add_argument("--project")
    _client_args(pr)
    pr.set_defaults(handler=_handler(promote))


Command = Callable[[argparse.Namespace, Any], int]


def _handler(command: Command) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        import os

        from choreo_cp.client import ControlPlaneClient, CPError, resolve_settings

        try:
            url, token = resolve_settings(args.url, args.token_file)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        ca_file = args.ca_file or os.environ.get("CHOREO_DP_CA_FILE")
        if ca_file and not Path(ca_file).is_file():
            raise UsageError(f"--ca-file {ca_file}: no such file")
        with ControlPlaneClient(url, token, ca_file=ca_file) as client:
            try:
                return command(args, client)
            except CPError as exc:
                sys.stderr.write(f"choreo-dp cp: {exc}\n")
                return 1

    return run


# -- apply ---------------------------------------------------------------------------------------
def load_manifests(text: str, source: str) -> list[dict[str, Any]]:
    """Parse and sanity-check manifests; Environments first so their apps find them."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise UsageError(f"{source}: not valid YAML: {str(exc).splitlines()[0]}") from None
    out: list[dict[str, Any]] = []
    for i, doc in enumerate(docs, 1):
        where = f"{source} document {i}"
        if not isinstance(doc, dict):
            raise UsageError(f"{where}: expected a mapping")
        if doc.get("apiVersion") != API_VERSION:
            raise UsageError(f"{where}: apiVersion must be {API_VERSION}, got {doc.get('apiVersion')!r}")
        if doc.get("kind") not in KINDS:
            raise UsageError(f"{where}: kind must be Environment or ChoreoApp, got {doc.get('kind')!r}")
        name = (doc.get("metadata") or {}).get("name") if isinstance(doc.get("metadata"), dict) else None
        if not isinstance(name, str) or not name:
            raise UsageError(f"{where}: metadata.name is required")
        spec = doc.get("spec")
        if not isinstance(spec, dict):
            raise UsageError(f"{where}: spec must be a mapping")
        if doc["kind"] == "ChoreoApp" and not isinstance(spec.get("environment"), str):
            raise UsageError(f"{where}: ChoreoApp {name}: spec.environment is required")
        out.append(doc)
    if not out:
        raise UsageError(f"{source}: no manifests found")
    out.sort(key=lambda d: 0 if d["kind"] == "Environment" else 1)
    return out


def apply(args: argparse.Namespace, client: Any) -> int:
    from choreo_cp.client import CPError

    source = "stdin" if args.filename == "-" else args.filename
    try:
        text = sys.stdin.read() if args.filename == "-" else Path(args.filename).read_text()
    except OSError as exc:
        raise UsageError(f"-f {args.filename}: {exc.strerror or exc}") from None
    failures = 0
    for doc in load_manifests(text, source):
        name = doc["metadata"]["name"]
        spec = doc["spec"]
        try:
            if doc["kind"] == "Environment":
                label = f"environment/{name}"
                result = client.put_environment(args.dataplane, name, spec)
            else:
                label = f"choreoapp/{name} (environment {spec['environment']})"
                result = client.put_app(args.dataplane, spec["environment"], name, spec)
        except CPError as exc:
            failures += 1
            sys.stderr.write(f"choreo-dp cp: {label}: {exc}\n")
            continue
        state = "configured" if result.get("changed") else "unchanged"
        print(f"{label} {state} (revision {result.get('revision')})")
    return 1 if failures else 0


# -- delete --------------------------------------------------------------------------------------
def delete(args: argparse.Namespace, client: Any) -> int:
    if args.kind == "environment":
        result = client.delete_environment(args.dataplane, args.name)
        removed = result.get("removed") or []
        extra = f", with {len(removed) - 1} app(s)" if len(removed) > 1 else ""
        print(f"environment/{args.name} deleted{extra} (revision {result.get('revision')})")
        return 0
    if not args.environment:
        raise UsageError("deleting an app needs --environment ENV")
    result = client.delete_app(args.dataplane, args.environment, args.name)
    print(f"choreoapp/{args.name} deleted (revision {result.get('revision')})")
    return 0


# -- get -----------------------------------------------------------------------------------------
def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers, *[["" if v is None else str(v) for v in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def get(args: argparse.Namespace, client: Any) -> int:
    if args.kind == "dataplane":
        body = client.get_dataplane(args.name)
        if args.output == "json":
            print(json.dumps(body, indent=2))
            return 0
        print(
            _table(
                [
                    "DATAPLANE",
                    "CONNECTED",
                    "REVISION",
                    "APPLIED",
                    "IN-SYNC",
                    "ORPHANS",
                    "LAST-HEARTBEAT",
                    "EPOCH",
                ],
                [
                    [
                        body["id"],
                        body.get("connected"),
                        body.get("revision"),
                        body.get("appliedRevision"),
                        body.get("inSync"),
                        body.get("orphans") or 0,
                        body.get("lastHeartbeat"),
                        body.get("epoch"),
                    ]
                ],
            )
        )
        return 0
    if not args.dataplane:
        raise UsageError(f"cp get {args.kind} needs --dataplane ID")
    if args.kind == "environment":
        body = client.get_environment(args.dataplane, args.name)
    else:
        if not args.environment:
            raise UsageError("cp get app needs --environment ENV")
        body = client.get_app(args.dataplane, args.environment, args.name)
    if args.output == "json":
        print(json.dumps(body, indent=2))
        return 0
    status = body.get("status") or {}
    error = body.get("lastError") or {}
    print(
        _table(
            ["NAME", "ENVIRONMENT", "REVISION", "APPLIED", "STATUS", "READY", "IMAGE", "ERROR"],
            [
                [
                    body["name"],
                    body["environment"],
                    body["revision"],
                    body.get("applied"),
                    status.get("phase"),
                    status.get("ready"),
                    status.get("image") or body["spec"].get("image"),
                    error.get("code"),
                ]
            ],
        )
    )
    return 0


# -- register / promote --------------------------------------------------------------------------
def register_dataplane(args: argparse.Namespace, client: Any) -> int:
    body = client.register_dataplane(args.name, rotate_token=args.rotate_token)
    token = body.get("token")
    what = "registered" if body.get("created") else ("token rotated" if token else "already registered")
    if token and args.token_out:
        path = Path(args.token_out)
        path.touch(mode=0o600, exist_ok=True)
        path.chmod(0o600)
        path.write_text(token + "\n")
        print(f"dataplane/{args.name} {what}; token written to {path}")
    elif token:
        print(f"dataplane/{args.name} {what}; token (shown once): {token}")
    else:
        print(f"dataplane/{args.name} {what} (epoch {body.get('epoch')}); use --rotate-token for a new token")
    return 0


def _place(text: str, flag: str) -> tuple[str, str]:
    dp, sep, env = text.partition("/")
    if not sep or not dp or not env:
        raise UsageError(f"{flag} {text!r}: expected DATAPLANE/ENVIRONMENT")
    return dp, env


def promote(args: argparse.Namespace, client: Any) -> int:
    source, target = _place(args.source, "--from"), _place(args.target, "--to")
    body = client.promote(args.app, source, target, project=args.project)
    print(
        f"choreoapp/{args.app} -> {target[0]}/{target[1]}: {body.get('image')} (revision {body.get('revision')})"
    )
    return 0
