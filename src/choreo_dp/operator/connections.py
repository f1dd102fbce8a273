"""Connections on the operator's side: resolve a caller's targets from the watch-fed cache, and map a
target's change back to its callers (controller-runtime's EnqueueRequestsFromMapFunc over an index).

Targets are read from the cache only, never with a GET per reconcile: a target that appears, changes
or goes away reaches its callers as a watch event through :class:`CallerIndex`.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from pydantic import ValidationError

from choreo_dp.api import ChoreoApp
from choreo_dp.operator.keys import AppKey
from choreo_dp.operator.spec_only import without_status
from choreo_dp.operator.state import CacheView
from choreo_dp.render.connections import ConnectionResolution, resolve_connections


def target_names(body: dict[str, Any] | None) -> frozenset[str]:
    """The apps a ChoreoApp body connects to, read leniently (an invalid spec still names them)."""
    out: set[str] = set()
    for conn in ((body or {}).get("spec") or {}).get("connections") or []:
        if isinstance(conn, dict) and isinstance(conn.get("app"), str):
            out.add(conn["app"])
    return frozenset(out)


class CallerIndex:
    """Which apps connect to which: target -> callers, kept from the apps' watch events.

    Connections never leave a namespace (an Environment's apps all live in its one), so a target
    is the caller's namespace plus the connection's app name.
    """

    def __init__(self) -> None:
        self._targets: dict[AppKey, frozenset[AppKey]] = {}
        self._callers: dict[AppKey, set[AppKey]] = defaultdict(set)

    def update(self, caller: AppKey, body: dict[str, Any] | None) -> None:
        """``body`` None: the caller is gone."""
        new = frozenset(AppKey(caller.namespace, name) for name in target_names(body))
        old = self._targets.get(caller, frozenset())
        if new == old:
            return
        for target in old - new:
            callers = self._callers.get(target)
            if callers is not None:
                callers.discard(caller)
                if not callers:
                    del self._callers[target]
        for target in new - old:
            self._callers[target].add(caller)
        if new:
            self._targets[caller] = new
        else:
            self._targets.pop(caller, None)

    def callers_of(self, target: AppKey) -> list[AppKey]:
        return sorted(self._callers.get(target, ()))


def resolve_for(cache: CacheView, key: AppKey, app: ChoreoApp) -> list[ConnectionResolution]:
    """Judge the app's connections against its targets as the cache holds them."""
    if not app.spec.connections:
        return []
    apps: dict[str, ChoreoApp] = {}
    for name in {c.app for c in app.spec.connections}:
        body = cache.app(AppKey(key.namespace, name))
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            continue
        try:
            apps[name] = ChoreoApp.model_validate(without_status(body))
        except ValidationError:
            # An invalid target is as good as absent: its own status says why.
            continue
    return resolve_connections(app, apps)


def unresolved_message(resolutions: list[ConnectionResolution]) -> str | None:
    messages = [r.message for r in resolutions if not r.resolved]
    return "; ".join(messages) if messages else None
