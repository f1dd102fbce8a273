"""``cp logs``, ``cp events``, ``cp describe app``, ``cp audit``: an app seen from the control plane.

Logs and watched events come as NDJSON (``{"type": "line"|"object"|"end", ...}``) and are printed as
each record arrives. A stream's end record says how it ended: ``done`` (or ``cancelled``) is a
normal end (exit 0), anything else is printed as one line on stderr (exit 1). A connection that
closes without an end record was cut (exit 1). Ctrl-C and a closed pipe are quiet (choreo_dp.cli.main).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx

from choreo_cp.cli import views
from choreo_cp.cli.waiting import duration
from choreo_cp.client import CPError

NDJSON = "application/x-ndjson"
NORMAL_ENDS = ("done", "cancelled")
# A followed stream may be silent for long (a quiet app); the server's idle bound ends it first.
FOLLOW_READ_TIMEOUT = 3600.0
READ_TIMEOUT = 60.0
EVENT_HEADERS = ("LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE")
LIVE_HEADERS = ("KIND", "NAME", "READY", "STATUS", "RESTARTS", "AGE", "NODE", "REASON")
DESCRIBE_EVENTS = 10


def since(text: str) -> str:
    """``--since``: a Go duration (10m, 1h30m, 45s) or seconds, checked here, sent as given."""
    duration(text)
    return text.strip()


def app_path(dp: str, env: str, app: str, *tail: str) -> str:
    parts = ("dataplanes", dp, "environments", env, "apps", app, *tail)
    return "/api/v1/" + "/".join(quote(p, safe="") for p in parts)


class StreamEnded(Exception):
    """An abnormal end of a stream: its code and message, as one line."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code


def _error_of(resp: httpx.Response) -> CPError:
    resp.read()
    try:
        detail: Any = resp.json()
    except ValueError:
        detail = resp.text
    retry = resp.headers.get("Retry-After")
    if retry and isinstance(detail, dict) and isinstance(detail.get("detail"), str):
        detail = {"detail": f"{detail['detail']} (retry after {retry}s)"}
    return CPError(resp.status_code, detail)


def records(client: Any, path: str, params: dict[str, str], *, follow: bool) -> Iterator[dict[str, Any]]:
    """The NDJSON records of a streamed GET, as they arrive, up to and including the end record.

    Errors before the stream starts are CPError (the one-line error helpers describe them); a
    connection lost mid-stream is StreamEnded("disconnected").
    """
    # the client's own httpx session: same base URL, token and TLS settings
    http: httpx.Client = client._http
    timeout = httpx.Timeout(30.0, read=FOLLOW_READ_TIMEOUT if follow else READ_TIMEOUT)
    try:
        with http.stream("GET", path, params=params, headers={"Accept": NDJSON}, timeout=timeout) as resp:
            if resp.status_code >= 400:
                raise _error_of(resp)
            for raw in resp.iter_lines():
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw)
                except ValueError:
                    raise StreamEnded(
                        "error", f"the control plane sent a malformed record: {raw[:80]!r}"
                    ) from None
                if not isinstance(record, dict):
                    continue
                yield record
                if record.get("type") == "end":
                    return
    except httpx.HTTPError as exc:
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
            raise CPError(0, f"GET {path}: {exc}") from exc
        raise StreamEnded(
            "disconnected", f"the connection to the control plane was lost ({type(exc).__name__})"
        ) from None
    raise StreamEnded("disconnected", "the stream ended without an end record (connection cut)")


def _finish(record: dict[str, Any]) -> None:
    code = str(record.get("code") or "error")
    if code not in NORMAL_ENDS:
        raise StreamEnded(code, str(record.get("message") or ""))


def _ended(exc: StreamEnded, what: str) -> int:
    sys.stderr.write(f"choreo-dp cp: {what} ended: {exc}\n")
    return 1


# -- logs ----------------------------------------------------------------------------------------
def logs(args: argparse.Namespace, client: Any, url: str) -> int:
    params = {
        k: v
        for k, v in {
            "follow": "true" if args.follow else None,
            "since": args.since,
            "tail": None if args.tail is None else str(args.tail),
            "pod": args.pod,
            "container": args.container,
            "previous": "true" if args.previous else None,
        }.items()
        if v is not None
    }
    path = app_path(args.dataplane, args.environment, args.app, "logs")
    try:
        for record in records(client, path, params, follow=args.follow):
            if record.get("type") == "line":
                sys.stdout.write(f"{record.get('text', '')}\n")
                sys.stdout.flush()
            elif record.get("type") == "end":
                _finish(record)
    except StreamEnded as exc:
        return _ended(exc, "logs")
    return 0


# -- events --------------------------------------------------------------------------------------
def event_row(event: dict[str, Any]) -> list[Any]:
    last = event.get("lastTimestamp") or event.get("firstTimestamp")
    message = " ".join(str(event.get("message") or "").split())
    count = event.get("count")
    seen = views.age_since(last)
    if seen and isinstance(count, int) and count > 1:
        seen = f"{seen} (x{count})"
    return [seen, event.get("type"), event.get("reason"), event.get("object"), message]


def events(args: argparse.Namespace, client: Any, url: str) -> int:
    path = app_path(args.dataplane, args.environment, args.app, "events")
    if not args.watch:
        found = client.request("GET", path)
        items = [e for e in found if isinstance(e, dict)] if isinstance(found, list) else []
        if not items:
            sys.stderr.write("No events found.\n")
            return 0
        print(views.table(EVENT_HEADERS, [event_row(e) for e in items]))
        return 0
    # Rows of a watch are printed one at a time: fixed widths keep them aligned under the header.
    widths = (14, 8, 24, 36)
    print(_fixed(EVENT_HEADERS, widths), flush=True)
    try:
        for record in records(client, path, {"watch": "true"}, follow=True):
            if record.get("type") == "object" and isinstance(record.get("object"), dict):
                print(_fixed(event_row(record["object"]), widths), flush=True)
            elif record.get("type") == "end":
                _finish(record)
    except StreamEnded as exc:
        return _ended(exc, "events")
    return 0


def _fixed(row: Any, widths: tuple[int, ...]) -> str:
    cells = [views.NONE if v is None or v == "" else str(v) for v in row]
    return "   ".join(c.ljust(w) for c, w in zip(cells, (*widths, 0), strict=False)).rstrip()


# -- describe app --------------------------------------------------------------------------------
def _optional(client: Any, path: str) -> tuple[Any, str | None]:
    """A part of the screen that may be unavailable (data plane not connected, feature off)."""
    from choreo_cp.cli.errors import describe as describe_error

    try:
        return client.request("GET", path), None
    except CPError as exc:
        if exc.status == 0:
            raise
        return None, describe_error(exc, "")


def _spec_summary(spec: dict[str, Any]) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = [
        ("Type", spec.get("type")),
        ("Project", spec.get("project")),
        ("Image", spec.get("image")),
    ]
    if spec.get("schedule"):
        out.append(("Schedule", spec.get("schedule")))
    autoscaling = views.mapping(spec.get("autoscaling"))
    if autoscaling:
        out.append(
            ("Replicas", f"{autoscaling.get('minReplicas')}-{autoscaling.get('maxReplicas')} (autoscaled)")
        )
    elif spec.get("replicas") is not None:
        out.append(("Replicas", spec.get("replicas")))
    endpoints = [e for e in spec.get("endpoints") or [] if isinstance(e, dict)]
    if endpoints:
        out.append(
            (
                "Endpoints",
                ", ".join(f"{e.get('name')} {e.get('port')}/{e.get('visibility')}" for e in endpoints),
            )
        )
    if spec.get("suspend"):
        out.append(("Suspended", "true"))
    return out


def describe_app(args: argparse.Namespace, client: Any, url: str) -> int:
    view = client.request("GET", app_path(args.dataplane, args.environment, args.name))
    spec = views.mapping(view.get("spec"))
    status = views.status_of(view)
    lines = [
        ("Name", view.get("name") or args.name),
        ("Dataplane", args.dataplane),
        ("Environment", args.environment),
        *_spec_summary(spec),
        ("Revision", view.get("revision")),
        ("Observed", views.observed_revision(view)),
        ("Phase", views.phase(view)),
        ("Ready", status.get("ready")),
        ("Reason", views.reason(view)),
        ("Reported", views.age_since(views.observed_at(view))),
    ]
    width = max(len(k) for k, _ in lines) + 2
    for key, value in lines:
        print(f"{key + ':':<{width}}{views.NONE if value is None or value == '' else value}")
    for line in views.files_and_connections(spec, status):
        print(line)

    live, problem = _optional(client, app_path(args.dataplane, args.environment, args.name, "live"))
    print("\nLive:")
    objects = [o for o in views.mapping(live).get("objects") or [] if isinstance(o, dict)]
    if problem:
        print(f"  unavailable: {problem}")
    elif not objects:
        print("  <none>")
    else:
        rows = [
            [o.get("kind"), o.get("name"), _ready(o.get("ready")), o.get("status"), o.get("restarts"),
             views.age(o.get("age") if isinstance(o.get("age"), (int, float)) else None), o.get("node"),
             o.get("reason")]
            for o in objects
        ]  # fmt: skip
        print(_indent(views.table(LIVE_HEADERS, rows)))

    found, problem = _optional(client, app_path(args.dataplane, args.environment, args.name, "events"))
    print("\nEvents:")
    items = [e for e in found if isinstance(e, dict)] if isinstance(found, list) else []
    if problem:
        print(f"  unavailable: {problem}")
    elif not items:
        print("  <none>")
    else:
        print(_indent(views.table(EVENT_HEADERS, [event_row(e) for e in items[:DESCRIBE_EVENTS]])))
    return 0


def _ready(value: Any) -> Any:
    return {True: "true", False: "false"}.get(value, value) if isinstance(value, bool) else value


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines())


# -- audit ---------------------------------------------------------------------------------------
AUDIT_HEADERS = ("AT", "WHO", "DATAPLANE", "APP", "KIND", "BYTES", "CODE", "DURATION")


def audit(args: argparse.Namespace, client: Any, url: str) -> int:
    params = {"limit": str(args.limit)}
    if args.dataplane:
        params["dataplane"] = args.dataplane
    body = client.request("GET", "/api/v1/audit", params=params)
    items = [r for r in views.mapping(body).get("items") or [] if isinstance(r, dict)]
    if not items:
        sys.stderr.write("No audit records found.\n")
        return 0
    rows = []
    for r in items:
        took = r.get("durationSeconds")
        rows.append(
            [r.get("at"), r.get("who"), r.get("dataplane"), r.get("app"), r.get("kind"), r.get("bytes"),
             r.get("code"), f"{took:.1f}s" if isinstance(took, (int, float)) else None]
        )  # fmt: skip
    print(views.table(AUDIT_HEADERS, rows))
    return 0
