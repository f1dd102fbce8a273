"""``choreo-dp cp``: a client of the control plane's REST API.

Exit codes: 0 success, 1 the control plane (or the data plane, with ``--wait``) refused or failed
something (each failure is one line on stderr, after every other object was tried), 2 bad flags,
configuration or manifests (nothing is sent).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from choreo_cp.cli import history_cmd, manifests, rollout_cmd, views
from choreo_cp.cli.verbs import Command
from choreo_cp.cli.waiting import DEFAULT_TIMEOUT, Target, duration, human, wait_for_apps
from choreo_dp.api.environment import default_namespace
from choreo_dp.cli.common import OneLineParser, UsageError, add_env_argument, add_verb

KIND_ALIASES = {
    "dataplane": "dataplane", "dataplanes": "dataplane", "dp": "dataplane",
    "environment": "environment", "environments": "environment", "env": "environment", "chenv": "environment",
    "app": "app", "apps": "app", "choreoapp": "app", "choreoapps": "app",
}  # fmt: skip
DELETABLE = ("environment", "env", "chenv", "app", "choreoapp")
WATCH_INTERVAL = 2.0


def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="control plane base URL, e.g. https://127.0.0.1:8443 (env CHOREO_DP_CP_URL)")
    p.add_argument("--token-file", help="file holding the admin token (else env CHOREO_DP_CP_TOKEN)")
    p.add_argument(
        "--ca-file", help="CA bundle for the control plane's TLS certificate (env CHOREO_DP_CA_FILE)"
    )


def _dataplane_arg(p: argparse.ArgumentParser, *, required: bool) -> None:
    add_env_argument(p, "--dataplane", required=required, metavar="ID", help="the dataplane's id")


def register(sub: Any) -> None:
    p = add_verb(
        sub,
        "cp",
        "client of the control plane's REST API",
        "choreo-dp cp register edge-1 --token-out edge-1.token",
        "choreo-dp cp apply -f examples/ --dataplane edge-1 --wait",
        "choreo-dp cp get apps --dataplane edge-1",
        "(--url/--token-file/--ca-file or env CHOREO_DP_CP_URL, CHOREO_DP_CP_TOKEN, CHOREO_DP_CA_FILE)",
    )
    verbs = p.add_subparsers(dest="cp_verb", metavar="VERB", parser_class=OneLineParser)
    verbs.required = True

    a = add_verb(
        verbs,
        "apply",
        "push Environment and ChoreoApp manifests (files, directories, stdin; YAML or JSON)",
        "choreo-dp cp apply -f examples/environment-demo.yaml -f examples/rest-api.yaml --dataplane edge-1",
        "choreo-dp cp apply -f examples/ --dataplane edge-1 --wait=2m",
        "cat app.yaml | choreo-dp cp apply -f - --dataplane edge-1",
    )
    a.add_argument(
        "-f", "--filename", action="append", required=True, metavar="FILE|DIR|-",
        help="a manifest file, a directory of *.yaml/*.yml/*.json, or - for stdin (repeatable); "
        "several YAML objects go in one file separated by '---'",
    )  # fmt: skip
    a.add_argument(
        "-R", "--recursive", action="store_true", help="also read the subdirectories of a directory"
    )
    _dataplane_arg(a, required=True)
    a.add_argument(
        "--wait", nargs="?", const=DEFAULT_TIMEOUT, type=duration, metavar="TIMEOUT",
        help=f"wait until the data plane reports every applied app Ready at this revision (exit 0) or "
        f"Failed/Degraded/Missing (exit 1); TIMEOUT like 90s or 5m (default {human(DEFAULT_TIMEOUT)})",
    )  # fmt: skip
    _client_args(a)
    a.set_defaults(handler=_handler(apply))

    d = add_verb(
        verbs,
        "delete",
        "remove an Environment (with its apps: needs --cascade) or a ChoreoApp",
        "choreo-dp cp delete app orders --environment dev --dataplane edge-1",
        "choreo-dp cp delete environment dev --dataplane edge-1 --cascade",
    )
    d.add_argument("kind", choices=DELETABLE, help="environment or app")
    d.add_argument("name")
    _dataplane_arg(d, required=True)
    d.add_argument("--environment", help="the app's environment")
    d.add_argument(
        "--cascade", "--yes", "-y", dest="cascade", action="store_true",
        help="confirm deleting an environment together with its apps",
    )  # fmt: skip
    _client_args(d)
    d.set_defaults(handler=_handler(delete))

    g = add_verb(
        verbs,
        "get",
        "list dataplanes, environments or apps with the status the data plane reported",
        "choreo-dp cp get dataplanes",
        "choreo-dp cp get apps                       # every app of every environment and dataplane",
        "choreo-dp cp get apps --dataplane edge-1 --environment dev -o wide",
        "choreo-dp cp get app orders --dataplane edge-1 --environment dev -o json",
    )
    g.add_argument(
        "kind", choices=sorted(KIND_ALIASES), metavar="KIND", help="dataplanes, environments or apps"
    )
    g.add_argument("name", nargs="?", help="only this one")
    add_env_argument(g, "--dataplane", metavar="ID", help="only this dataplane (default: all)")
    g.add_argument("--environment", help="only this environment (default: all)")
    g.add_argument(
        "-o", "--output", choices=["table", "wide", "json", "yaml"], default="table",
        help="table (default), wide (more columns), json or yaml",
    )  # fmt: skip
    g.add_argument(
        "-w", "--watch", action="store_true",
        help="keep polling and print the rows that changed (table or wide; Ctrl-C ends)",
    )  # fmt: skip
    g.add_argument(
        "--interval", type=duration, default=WATCH_INTERVAL, metavar="DURATION",
        help=f"how often --watch polls (default {WATCH_INTERVAL:g}s)",
    )  # fmt: skip
    _client_args(g)
    g.set_defaults(handler=_handler(get))

    r = add_verb(
        verbs,
        "register",
        "register a dataplane and print its token (shown once)",
        "choreo-dp cp register edge-1 --token-out edge-1.token",
        "choreo-dp cp register edge-1 --rotate-token --token-out edge-1.token",
    )
    r.add_argument("name", help="dataplane id")
    r.add_argument("--rotate-token", action="store_true", help="mint a new token (the old one stops working)")
    r.add_argument("--token-out", help="write the token to this file (mode 0600) instead of printing it")
    _client_args(r)
    r.set_defaults(handler=_handler(register_dataplane))

    _register_observe(verbs)
    history_cmd.register(verbs, _handler, _app_target, _client_args)
    rollout_cmd.register(verbs, _handler, _app_target, _client_args)

    pr = add_verb(
        verbs,
        "promote",
        "deploy the image digest running in one place to another",
        "choreo-dp cp promote orders --from edge-1/dev --to edge-1/prod",
    )
    pr.add_argument("app")
    pr.add_argument("--from", dest="source", required=True, metavar="DATAPLANE/ENV")
    pr.add_argument("--to", dest="target", required=True, metavar="DATAPLANE/ENV")
    pr.add_argument("--project")
    _client_args(pr)
    pr.set_defaults(handler=_handler(promote))


def _app_target(p: argparse.ArgumentParser, name: str = "app") -> None:
    p.add_argument(name, help="the app's name")
    p.add_argument("--environment", required=True, help="the app's environment")
    _dataplane_arg(p, required=True)


def _register_observe(verbs: Any) -> None:
    from choreo_cp.cli import observe_cmd

    lg = add_verb(
        verbs,
        "logs",
        "print an app's logs, streamed from its pods through the tunnel (lines prefixed pod/container)",
        "choreo-dp cp logs orders --environment dev --dataplane edge-1 --tail 100",
        "choreo-dp cp logs orders --environment dev --dataplane edge-1 -f --since 10m",
        "choreo-dp cp logs orders --environment dev --dataplane edge-1 --pod orders-7d9c-x2 --previous",
    )
    _app_target(lg)
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing new lines (Ctrl-C ends)")
    lg.add_argument(
        "--since", type=observe_cmd.since, metavar="DURATION", help="only lines newer than this (10m, 1h)"
    )
    lg.add_argument("--tail", type=_non_negative, metavar="N", help="the last N lines of each container")
    lg.add_argument("--pod", help="only this pod of the app")
    lg.add_argument("--container", help="only this container")
    lg.add_argument("--previous", action="store_true", help="the previous (crashed) container's lines")
    _client_args(lg)
    lg.set_defaults(handler=_handler(observe_cmd.logs))

    ev = add_verb(
        verbs,
        "events",
        "list the Kubernetes Events of an app, its children and pods, newest first",
        "choreo-dp cp events orders --environment dev --dataplane edge-1",
        "choreo-dp cp events orders --environment dev --dataplane edge-1 -w",
    )
    _app_target(ev)
    ev.add_argument("-w", "--watch", action="store_true", help="keep printing new events (Ctrl-C ends)")
    _client_args(ev)
    ev.set_defaults(handler=_handler(observe_cmd.events))

    de = add_verb(
        verbs,
        "describe",
        "one screen about an app: desired spec, revision, reported status, live children, recent events",
        "choreo-dp cp describe app orders --environment dev --dataplane edge-1",
    )
    de.add_argument("kind", choices=["app", "apps", "choreoapp"], metavar="KIND", help="app")
    _app_target(de, "name")
    _client_args(de)
    de.set_defaults(handler=_handler(observe_cmd.describe_app))

    au = add_verb(
        verbs,
        "audit",
        "who read logs, events or live state of which app, newest first (no content is kept)",
        "choreo-dp cp audit",
        "choreo-dp cp audit --dataplane edge-1 --limit 20",
    )
    add_env_argument(au, "--dataplane", metavar="ID", help="only this dataplane (default: all)")
    au.add_argument("--limit", type=_audit_limit, default=100, help="at most this many records (1-1000)")
    _client_args(au)
    au.set_defaults(handler=_handler(observe_cmd.audit))


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: at least 0")
    return value


def _audit_limit(text: str) -> int:
    value = _non_negative(text)
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"invalid limit {text!r}: 1 to 1000")
    return value


def _handler(command: Command) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from choreo_cp.cli.errors import describe
        from choreo_cp.client import ControlPlaneClient, CPError, resolve_settings

        try:
            url, token = resolve_settings(args.url, args.token_file)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        ca_file = args.ca_file or os.environ.get("CHOREO_DP_CA_FILE")
        if ca_file and not Path(ca_file).is_file():
            raise UsageError(f"--ca-file {ca_file}: no such file")
        try:
            client = ControlPlaneClient(url, token, ca_file=ca_file)
        except OSError as exc:  # an unreadable or malformed CA bundle
            raise UsageError(f"--ca-file {ca_file}: {exc.strerror or exc}") from None
        with client:
            try:
                return command(args, client, url)
            except CPError as exc:
                sys.stderr.write(f"choreo-dp cp: {describe(exc, url)}\n")
                return 1

    return run


def _path(*parts: str) -> str:
    return "/api/v1/dataplanes" + "".join(f"/{quote(p, safe='')}" for p in parts)


def _items(client: Any, path: str) -> list[dict[str, Any]]:
    body = client.request("GET", path)
    return [v for v in body.get("items") or [] if isinstance(v, dict)]


def _apps_or_none(client: Any, dp: str, env: str) -> list[dict[str, Any]]:
    """The apps of an environment; none when the environment does not exist (yet)."""
    from choreo_cp.client import CPError

    try:
        return _items(client, _path(dp, "environments", env, "apps"))
    except CPError as exc:
        if exc.status == 404:
            return []
        raise


# -- apply ---------------------------------------------------------------------------------------
def _namespace_problem(item: manifests.Manifest, known_envs: dict[str, dict[str, Any]]) -> str | None:
    """The namespace rule: an app's metadata.namespace may only repeat its Environment's namespace
    (the one the app runs in); anything else would be silently ignored, so it is refused."""
    if item.kind != manifests.APP or not item.namespace:
        return None
    spec = known_envs.get(item.environment) or {}
    expected = str(spec.get("namespace") or default_namespace(item.environment))
    if item.namespace == expected:
        return None
    return (
        f"metadata.namespace {item.namespace!r} is not the namespace of Environment {item.environment!r} "
        f"({expected!r}), where the app runs: remove metadata.namespace or set it to {expected!r}"
    )


def apply(args: argparse.Namespace, client: Any, url: str) -> int:
    from choreo_cp.cli.errors import describe
    from choreo_cp.client import CPError

    try:
        items = manifests.load(args.filename, recursive=args.recursive)
    except manifests.ManifestError as exc:
        for line in exc.problems:
            sys.stderr.write(f"choreo-dp cp apply: error: {line}\n")
        return 2
    dp = args.dataplane
    existing_envs = {str(v.get("name")): v for v in _items(client, _path(dp, "environments"))}
    env_specs = {name: v.get("spec") or {} for name, v in existing_envs.items()}
    env_specs.update({m.name: m.spec for m in items if m.kind == manifests.ENVIRONMENT})
    existing_apps: set[tuple[str, str]] = set()
    for env in sorted({m.environment for m in items if m.kind == manifests.APP}):
        existing_apps.update((env, str(v.get("name"))) for v in _apps_or_none(client, dp, env))
    failures = 0
    targets: list[Target] = []
    for item in items:
        problem = _namespace_problem(item, env_specs)
        if problem is not None:
            sys.stderr.write(f"choreo-dp cp: {item.label}: {problem}\n")
            failures += 1
            continue
        try:
            if item.kind == manifests.ENVIRONMENT:
                existed = item.name in existing_envs
                result = client.put_environment(dp, item.name, item.spec)
            else:
                existed = (item.environment, item.name) in existing_apps
                result = client.put_app(dp, item.environment, item.name, item.spec)
        except CPError as exc:
            failures += 1
            sys.stderr.write(f"choreo-dp cp: {item.label}: {describe(exc, url)}\n")
            continue
        state = "configured" if existed else "created"
        if existed and not result.get("changed"):
            state = "unchanged"
        print(f"{item.label} {state}", flush=True)
        if item.kind == manifests.APP:
            revision = result.get("objectRevision") or result.get("revision")
            targets.append(Target(item.label, dp, item.environment, item.name, int(revision or 0)))
    waited = 0
    if args.wait is not None and targets:
        waited = wait_for_apps(client, url, targets, args.wait)
    return 1 if failures or waited else 0


# -- delete --------------------------------------------------------------------------------------
def _removed_label(key: str) -> str:
    kind, _, rest = key.partition("/")
    return f"{'environment' if kind == manifests.ENVIRONMENT else 'choreoapp'}/{rest}"


def delete(args: argparse.Namespace, client: Any, url: str) -> int:
    kind = KIND_ALIASES[args.kind]
    if kind == "environment":
        apps = sorted(
            str(v.get("name"))
            for v in _items(client, _path(args.dataplane, "environments", args.name, "apps"))
        )
        if apps and not args.cascade:
            shown = ", ".join(apps[:5]) + (f" and {len(apps) - 5} more" if len(apps) > 5 else "")
            sys.stderr.write(
                f"choreo-dp cp: environment/{args.name} has {len(apps)} app(s) ({shown}); deleting it "
                "deletes them too: add --cascade (or --yes) to confirm\n"
            )
            return 1
        result = client.delete_environment(args.dataplane, args.name)
        removed = result.get("removed") or [f"{manifests.ENVIRONMENT}/{args.name}"]
        # apps first, as the control plane removes them, then the environment
        for key in sorted(removed, key=lambda k: k.startswith(manifests.ENVIRONMENT)):
            print(f"{_removed_label(key)} deleted")
        return 0
    if not args.environment:
        raise UsageError("deleting an app needs --environment ENV")
    client.delete_app(args.dataplane, args.environment, args.name)
    print(f"choreoapp/{args.environment}/{args.name} deleted")
    return 0


# -- get -----------------------------------------------------------------------------------------
def _dataplanes(client: Any, only: str | None) -> list[str]:
    if only:
        return [only]
    return [str(v.get("id")) for v in _items(client, _path())]


def _environment_views(client: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for dp in _dataplanes(client, args.dataplane):
        if args.name and args.dataplane:
            return [client.request("GET", _path(dp, "environments", args.name))]
        found.extend(
            v
            for v in _items(client, _path(dp, "environments"))
            if not args.name or v.get("name") == args.name
        )
    return found


def _app_views(client: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.name and args.dataplane and args.environment:
        return [
            client.request("GET", _path(args.dataplane, "environments", args.environment, "apps", args.name))
        ]
    found: list[dict[str, Any]] = []
    for dp in _dataplanes(client, args.dataplane):
        if args.environment:
            envs = [args.environment]
        else:
            envs = [str(v.get("name")) for v in _items(client, _path(dp, "environments"))]
        for env in envs:
            apps = (
                _apps_or_none(client, dp, env)
                if not args.dataplane
                else _items(client, _path(dp, "environments", env, "apps"))
            )
            found.extend(v for v in apps if not args.name or v.get("name") == args.name)
    return found


def _print_structured(data: Any, output: str) -> None:
    if output == "json":
        print(json.dumps(data, indent=2))
    else:
        import yaml

        print(yaml.safe_dump(data, sort_keys=False), end="")


def get(args: argparse.Namespace, client: Any, url: str) -> int:
    if args.watch:
        if args.output not in ("table", "wide"):
            raise UsageError("--watch prints tables: use -o table or -o wide")
        return _watch(args, client)
    return _get_once(args, client)


def _watch(args: argparse.Namespace, client: Any) -> int:
    """Poll and reprint the rows that changed, kubectl-style; Ctrl-C ends (exit 0, in main)."""
    import contextlib
    import io
    import time

    seen: set[tuple[str, ...]] = set()
    first = True
    while True:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            _get_once(args, client)
        lines = out.getvalue().splitlines()
        rows = {_row_identity(lines[0], line): line for line in lines[1:]}
        if first and lines:
            print(lines[0])
        for key, line in rows.items():
            if key not in seen:
                print(line, flush=True)
        seen = set(rows)
        first = False
        time.sleep(args.interval)


# Columns that change with the clock alone: a row is not reprinted because its age grew.
CLOCK_COLUMNS = frozenset({"REPORTED", "HEARTBEAT", "AGE"})


def _row_identity(header: str, line: str) -> tuple[str, ...]:
    """A table row's cells without the clock columns (cells start where their header starts)."""
    starts = [i for i, c in enumerate(header) if c != " " and (i == 0 or header[i - 1] == " ")]
    names = header.split()
    cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
    return tuple(c for n, c in zip(names, cells, strict=True) if n not in CLOCK_COLUMNS)


def _get_once(args: argparse.Namespace, client: Any) -> int:
    kind = KIND_ALIASES[args.kind]
    if kind == "dataplane":
        found = [client.request("GET", _path(args.name))] if args.name else _items(client, _path())
    elif kind == "environment":
        found = _environment_views(client, args)
    else:
        found = _app_views(client, args)
    found.sort(key=lambda v: tuple(str(v.get(k) or "") for k in ("id", "dataplane", "environment", "name")))
    what = {"dataplane": "dataplanes", "environment": "environments", "app": "apps"}[kind]
    if args.name and not found:
        sys.stderr.write(f"choreo-dp cp: {kind} {args.name!r} not found\n")
        return 1
    if args.output in ("json", "yaml"):
        _print_structured(found[0] if args.name and len(found) == 1 else {"items": found}, args.output)
        return 0
    if not found:
        sys.stderr.write(f"No {what} found.\n")
        return 0
    wide = args.output == "wide"
    if kind == "dataplane":
        print(views.dataplane_table(found, wide=wide))
    elif kind == "environment":
        print(views.environment_table(found, wide=wide, with_dataplane=not args.dataplane))
    else:
        print(views.app_table(found, wide=wide, with_dataplane=not args.dataplane))
    return 0


# -- register / promote --------------------------------------------------------------------------
def register_dataplane(args: argparse.Namespace, client: Any, url: str) -> int:
    body = client.register_dataplane(args.name, rotate_token=args.rotate_token)
    token = body.get("token")
    what = "registered" if body.get("created") else ("token rotated" if token else "already registered")
    if token and args.token_out:
        path = Path(args.token_out)
        try:
            path.touch(mode=0o600, exist_ok=True)
            path.chmod(0o600)
            path.write_text(token + "\n")
        except OSError as exc:
            sys.stderr.write(
                f"choreo-dp cp: --token-out {path}: {exc.strerror or exc}; the token was minted but not "
                "saved: run again with --rotate-token\n"
            )
            return 1
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


def promote(args: argparse.Namespace, client: Any, url: str) -> int:
    source, target = _place(args.source, "--from"), _place(args.target, "--to")
    body = client.promote(args.app, source, target, project=args.project)
    print(
        f"choreoapp/{args.app} -> {target[0]}/{target[1]}: {body.get('image')} (revision {body.get('revision')})"
    )
    return 0
