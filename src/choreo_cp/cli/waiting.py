"""``cp apply --wait``: poll the control plane's app views until the data plane reports each applied
app Ready at (or after) the revision just pushed, or reports it Failed/Degraded/Missing, or refused
it, or the time is up.

A status counts only when it describes the pushed revision (its observed revision) and the view
does not call it stale, so the Ready of the previous spec never ends the wait. Views without an
observed revision (a data plane from before status carried one) count once the agent has
acknowledged the revision. The control plane being briefly unreachable (a restart) is waited out
until the deadline; a 401 or 404 ends the wait at once.
"""

from __future__ import annotations

import random
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from choreo_cp.cli.errors import describe
from choreo_cp.cli.views import UNWELL, observed_revision, phase, reason, refusal, status_of
from choreo_cp.client import CPError

DEFAULT_TIMEOUT = 300.0
WELL = ("Ready", "Suspended")
# polling cadence: from half a second, growing to a few seconds for long rollouts, with jitter so
# many waiting clients do not poll in step
FIRST_INTERVAL = 0.5
MAX_INTERVAL = 5.0

_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)(ms|s|m|h))+$")
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration(text: str) -> float:
    """``90``, ``90s``, ``5m``, ``1h30m`` in seconds (argparse type of ``--wait``)."""
    import argparse

    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        if not _DURATION.match(text):
            raise argparse.ArgumentTypeError(f"invalid duration {text!r} (e.g. 90s, 5m, 1h30m)") from None
        seconds = sum(float(n) * _UNIT[u] for n, u in _PART.findall(text))
    if not 0 < seconds <= 24 * 3600:
        raise argparse.ArgumentTypeError(f"duration {text!r} must be above 0 and at most 24h")
    return seconds


def human(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"


@dataclass(frozen=True)
class Target:
    label: str
    dataplane: str
    environment: str
    name: str
    revision: int  # the object's revision after the apply


def judge(view: dict[str, Any], revision: int) -> tuple[str, str]:
    """("ready" | "failed" | "waiting", what to say) for one app view."""
    error = view.get("lastError")
    if (
        isinstance(error, dict)
        and not error.get("retryable")
        and isinstance(error.get("revision"), int)
        and error["revision"] >= revision
    ):
        return "failed", refusal(view) or "refused by the data plane"
    current = phase(view)
    observed = observed_revision(view)
    at = f" at revision {observed}" if observed is not None else ""
    if current == "Missing" and view.get("applied"):
        return "failed", f"Missing{at}: {reason(view)}"
    if view.get("stale"):
        # the revision, when known, already says why it does not count
        return "waiting", f"{current or 'no status'}{at or ' (stale)'}"
    describes = observed >= revision if observed is not None else bool(view.get("applied"))
    if not describes:
        return "waiting", f"{current or 'no status yet'}{at}"
    ready = status_of(view).get("ready")
    if current in WELL:
        return "ready", f"{current}{f' ({ready})' if ready else ''}{at}"
    if current in UNWELL:
        return "failed", f"{current}{at}: {reason(view) or 'no reason given'}"
    return "waiting", f"{current or 'no status yet'}{f' {ready}' if ready else ''}{at}"


def _list_apps(client: Any, dataplane: str, environment: str) -> dict[str, dict[str, Any]]:
    path = f"/api/v1/dataplanes/{quote(dataplane, safe='')}/environments/{quote(environment, safe='')}/apps"
    body = client.request("GET", path)
    return {str(v.get("name")): v for v in body.get("items") or [] if isinstance(v, dict)}


def _transient(exc: CPError) -> bool:
    return exc.status == 0 or exc.status == 429 or exc.status >= 500


def wait_for_apps(
    client: Any,
    url: str,
    targets: list[Target],
    timeout: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """0 when every target is Ready at its revision; 1 when any failed or the time ran out."""
    deadline = clock() + timeout
    pending = {t.label: t for t in targets}
    last: dict[str, str] = {}
    failed = 0
    told_unreachable = False
    attempt = 0
    while pending:
        groups: dict[tuple[str, str], list[Target]] = {}
        for t in pending.values():
            groups.setdefault((t.dataplane, t.environment), []).append(t)
        for (dp, env), group in groups.items():
            try:
                views = _list_apps(client, dp, env)
            except CPError as exc:
                if _transient(exc):
                    if not told_unreachable:
                        sys.stderr.write(f"choreo-dp cp: still waiting: {describe(exc, url)}\n")
                        told_unreachable = True
                    for t in group:
                        last[t.label] = describe(exc, url)
                    continue
                for t in group:
                    sys.stderr.write(f"choreo-dp cp: {t.label}: {describe(exc, url)}\n")
                    del pending[t.label]
                    failed += 1
                continue
            for t in group:
                view = views.get(t.name)
                if view is None:
                    verdict, text = "failed", "deleted from the control plane while waiting"
                else:
                    verdict, text = judge(view, t.revision)
                last[t.label] = text
                if verdict == "ready":
                    print(f"{t.label} {text}", flush=True)
                elif verdict == "failed":
                    sys.stderr.write(f"choreo-dp cp: {t.label} {text}\n")
                    failed += 1
                if verdict != "waiting":
                    del pending[t.label]
        if not pending:
            break
        left = deadline - clock()
        if left <= 0:
            for t in pending.values():
                sys.stderr.write(
                    f"choreo-dp cp: {t.label}: timed out after {human(timeout)} waiting for Ready at "
                    f"revision {t.revision} (last: {last.get(t.label, 'nothing reported')})\n"
                )
                failed += 1
            break
        ceiling = min(MAX_INTERVAL, FIRST_INTERVAL * 1.5**attempt)
        sleep(min(left, random.uniform(ceiling / 2, ceiling)))
        attempt += 1
    return 1 if failed else 0
