"""What ``cp get`` prints: kubectl-like tables of dataplanes, environments and apps, read from the
REST views. The views grow new fields over time, so every field is optional here and an unknown one
is ignored; the table shows the reason of an app that is not well next to its phase."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from choreo_dp.api.environment import default_namespace

NONE = "<none>"
MESSAGE_WIDTH = 80
UNWELL = ("Failed", "Degraded", "Missing")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [list(headers), *[[NONE if v is None or v == "" else str(v) for v in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


# -- small readers -------------------------------------------------------------------------------
def parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def age(seconds: float | None) -> str | None:
    """kubectl's short ages: 45s, 3m12s, 5h, 2d."""
    if seconds is None:
        return None
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    if s < 600:
        return f"{s // 60}m{s % 60}s"
    if s < 3 * 3600:
        return f"{s // 60}m"
    if s < 2 * 86400:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def age_since(text: Any, now: datetime | None = None) -> str | None:
    when = parse_time(text)
    if when is None:
        return None
    return age(((now or datetime.now(UTC)) - when).total_seconds())


def mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def status_of(view: dict[str, Any]) -> dict[str, Any]:
    return mapping(view.get("status"))


def phase(view: dict[str, Any]) -> str | None:
    value = view.get("phase") or status_of(view).get("phase")
    return str(value) if value else None


def observed_revision(view: dict[str, Any]) -> int | None:
    """The desired revision the reported status describes (None: the report does not say)."""
    status = status_of(view)
    for value in (view.get("observedRevision"), status.get("observedRevision"), status.get("revision")):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def observed_at(view: dict[str, Any]) -> str | None:
    status = status_of(view)
    for value in (view.get("observedAt"), status.get("observedAt"), view.get("statusReportedAt")):
        if isinstance(value, str) and value:
            return value
    return None


def refusal(view: dict[str, Any]) -> str | None:
    """The data plane's refusal of the current spec (a nack at or after the object's revision)."""
    error = view.get("lastError")
    if not isinstance(error, dict):
        return None
    revision = view.get("revision")
    if isinstance(error.get("revision"), int) and isinstance(revision, int) and error["revision"] < revision:
        return None
    retry = " (retrying)" if error.get("retryable") else ""
    return f"refused by the data plane: {error.get('code')}: {error.get('message')}{retry}"


def reason(view: dict[str, Any]) -> str | None:
    """Why an app is not well: the refusal, else the failing condition's reason and message."""
    refused = refusal(view)
    if refused:
        return refused
    current = phase(view)
    if current == "Ready":
        return None
    status = status_of(view)
    failing = next(
        (
            c
            for c in status.get("conditions") or []
            if isinstance(c, dict) and c.get("status") in ("False", "Unknown") and c.get("reason")
        ),
        {},
    )
    # the view's own summary of the Ready condition first, then the condition itself
    why = view.get("reason") or failing.get("reason")
    message = view.get("message") or status.get("message") or failing.get("message")
    if why and message:
        return f"{why}: {message}"
    if why or message:
        return str(why or message)
    if current == "Missing":
        return "not in the cluster (deleted there by another writer; the agent restores it)"
    return None


def _clip(text: str | None, wide: bool) -> str | None:
    if text is None or wide or len(text) <= MESSAGE_WIDTH:
        return text
    return text[: MESSAGE_WIDTH - 3] + "..."


# -- tables --------------------------------------------------------------------------------------
def app_table(views: list[dict[str, Any]], *, wide: bool, with_dataplane: bool) -> str:
    headers = ["ENVIRONMENT", "NAME", "STATUS", "READY", "REVISION", "OBSERVED", "REPORTED", "MESSAGE"]
    if wide:
        headers += ["IMAGE", "APPLIED", "STALE"]
    rows = []
    for v in views:
        status = status_of(v)
        row: list[Any] = [
            v.get("environment"),
            v.get("name"),
            phase(v) or ("Refused" if refusal(v) else None),
            status.get("ready"),
            v.get("revision"),
            observed_revision(v),
            age_since(observed_at(v)),
            _clip(reason(v), wide),
        ]
        if wide:
            spec = mapping(v.get("spec"))
            row += [status.get("image") or spec.get("image"), v.get("applied"), v.get("stale")]
        rows.append(row)
    return _with_dataplane(headers, rows, views, with_dataplane)


def environment_table(views: list[dict[str, Any]], *, wide: bool, with_dataplane: bool) -> str:
    headers = ["NAME", "STATUS", "NAMESPACE", "APPS", "REVISION", "REPORTED", "MESSAGE"]
    if wide:
        headers += ["PRODUCTION", "APPLIED"]
    rows = []
    for v in views:
        status = status_of(v)
        spec = mapping(v.get("spec"))
        name = str(v.get("name") or "")
        row: list[Any] = [
            name,
            phase(v) or ("Refused" if refusal(v) else None),
            status.get("namespace") or spec.get("namespace") or default_namespace(name),
            status.get("apps"),
            v.get("revision"),
            age_since(observed_at(v)),
            _clip(reason(v), wide),
        ]
        if wide:
            row += [bool(spec.get("production")), v.get("applied")]
        rows.append(row)
    return _with_dataplane(headers, rows, views, with_dataplane)


def heartbeat_age(view: dict[str, Any]) -> str | None:
    for key in ("heartbeatAgeSeconds", "lastHeartbeatAgeSeconds", "lastReportAgeSeconds"):
        value = view.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return age(value)
    return age_since(view.get("lastHeartbeat"))


def _dataplane_message(view: dict[str, Any]) -> str | None:
    """Why a dataplane is not in sync, and the deletions it holds back."""
    parts = []
    if not view.get("inSync") and view.get("syncReason"):
        parts.append(str(view["syncReason"]))
    reason = mapping(view.get("agent")).get("orphanReason")
    if view.get("orphans") and reason:
        parts.append(f"{view['orphans']} deletion(s) held back: {reason}")
    return "; ".join(parts) or None


def dataplane_table(views: list[dict[str, Any]], *, wide: bool) -> str:
    headers = [
        "NAME",
        "CONNECTED",
        "IN-SYNC",
        "REVISION",
        "APPLIED",
        "OBJECTS",
        "ORPHANS",
        "HEARTBEAT",
        "MESSAGE",
    ]
    if wide:
        headers += ["EPOCH", "REMOTE"]
    rows = []
    for v in views:
        row: list[Any] = [
            v.get("id"),
            v.get("connected"),
            v.get("inSync"),
            v.get("revision"),
            v.get("appliedRevision"),
            v.get("objects"),
            v.get("orphans") or 0,
            heartbeat_age(v),
            _clip(_dataplane_message(v), wide),
        ]
        if wide:
            row += [v.get("epoch"), mapping(v.get("session")).get("remote")]
        rows.append(row)
    return table(headers, rows)


def _with_dataplane(
    headers: list[str], rows: list[list[Any]], views: list[dict[str, Any]], with_dataplane: bool
) -> str:
    if with_dataplane:
        headers = ["DATAPLANE", *headers]
        rows = [[v.get("dataplane"), *row] for v, row in zip(views, rows, strict=True)]
    return table(headers, rows)


# -- describe app: files and connections --------------------------------------------------------
FILE_HEADERS = ("PATH", "SOURCE")
CONNECTION_HEADERS = ("NAME", "TARGET", "RESOLVED", "REASON", "DETAIL")


def file_rows(spec: dict[str, Any]) -> list[list[Any]]:
    """One row per spec.files entry: its path and where it comes from, never what it holds (a
    plain file's content is configuration, but the screen is the same for every reader)."""
    rows = []
    for f in spec.get("files") or []:
        if not isinstance(f, dict):
            continue
        if f.get("keyVaultSecret"):
            pinned = f" (version {f['version']})" if f.get("version") else ""
            source = f"keyVaultSecret {f['keyVaultSecret']}{pinned}"
        else:
            source = "content"
        rows.append([f.get("mountPath"), source])
    return rows


def connection_rows(spec: dict[str, Any], status: dict[str, Any]) -> list[list[Any]]:
    """One row per spec.connections entry with the operator's last judgement of it.

    The spec is the control plane's desired state and the status what the data plane reported, so a
    connection the operator has not judged yet (just pushed, or an older operator) says so instead
    of borrowing another's answer."""
    judged = {
        c.get("name"): c for c in status.get("connections") or [] if isinstance(c, dict) and c.get("name")
    }
    rows = []
    for conn in spec.get("connections") or []:
        if not isinstance(conn, dict):
            continue
        name = conn.get("name")
        target = f"{conn.get('project') or spec.get('project')}/{conn.get('app')}/{conn.get('endpoint')}"
        seen = judged.get(name)
        if seen is None:
            rows.append([name, target, "unknown", None, "not reported by the data plane yet"])
            continue
        resolved = seen.get("resolved")
        detail = seen.get("url") if resolved else seen.get("message")
        rows.append(
            [name, seen.get("target") or target, str(bool(resolved)).lower(), seen.get("reason"), detail]
        )
    return rows


def files_and_connections(spec: dict[str, Any], status: dict[str, Any]) -> list[str]:
    """The Files and Connections sections of ``cp describe app`` (only those the app has)."""
    out: list[str] = []
    for title, headers, rows in (
        ("Files", FILE_HEADERS, file_rows(spec)),
        ("Connections", CONNECTION_HEADERS, connection_rows(spec, status)),
    ):
        if rows:
            out += ["", f"{title}:", *(f"  {line}" for line in table(headers, rows).splitlines())]
    return out
