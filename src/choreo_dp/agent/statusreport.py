"""Watches the status of the objects the agent manages and coalesces it for the control plane.

``pending`` holds at most one entry per key (the newest status wins), so however fast statuses
change and however long the link is down, memory is bounded by the number of managed objects.

The same watch keeps the store's index current and tells the restorer
(:mod:`choreo_dp.agent.restorer`) about objects another writer deleted or changed; an object the
control plane desires that disappears is reported ``missing`` so the control plane does not go on
showing its last status.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from choreo_dp.agent.cluster import ClusterStore, Managed, key_of, managed_from
from choreo_dp.agent.restorer import Restorer
from choreo_dp.kube import KubeClient, Resource
from choreo_dp.kube import resources as R
from choreo_dp.kube.backoff import Backoff
from choreo_dp.kube.watch import Changed, Listed, WatchStream
from choreo_wire import protocol as P

log = logging.getLogger(__name__)
# between watch attempts after an error (the list + watch is re-established each time)
WATCH_BACKOFF = Backoff(base=0.5, cap=30.0)


def now_ms() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class StatusReporter:
    def __init__(self, kube: KubeClient, store: ClusterStore, restorer: Restorer | None = None) -> None:
        self.kube = kube
        self.store = store
        self.restorer = restorer
        self.pending: dict[str, P.StatusItem] = {}
        self.latest: dict[str, dict[str, Any]] = {}
        self._sent: dict[str, str] = {}
        self.changed = asyncio.Event()
        self.synced = asyncio.Event()  # set after the first list of each kind
        self._synced_kinds: set[str] = set()

    # --- intake ------------------------------------------------------------------------------

    def on_event(self, event_type: str, obj: dict[str, Any]) -> None:
        self.store.observe(event_type, obj)
        key = key_of(obj)
        if key is None:
            return
        if event_type == "DELETED":
            self.on_gone(key)
            return
        m = self.store.index.get(key)
        if self.restorer is not None and m is not None and not self.store.matches_desired(m):
            self.restorer.notice(key)
        status = obj.get("status")
        if not isinstance(status, dict) or not status:
            return
        self.latest[key] = status
        digest = P.spec_hash(status)
        if self._sent.get(key) == digest:
            return
        self.pending[key] = P.StatusItem(key=key, status=status, observed_at=now_ms())
        self.changed.set()

    def on_gone(self, key: str) -> None:
        """``key`` left the cluster. If the control plane still desires it (and the agent is not
        deleting it itself), it is missing: say so upstream, and have it put back."""
        self.latest.pop(key, None)
        self.pending.pop(key, None)
        self._sent.pop(key, None)
        if key in self.store.desired and key not in self.store.deleting and key not in self.store.index:
            self.pending[key] = P.StatusItem(key=key, status={}, observed_at=now_ms(), missing=True)
            self.changed.set()
            if self.restorer is not None:
                self.restorer.notice(key)

    # --- outflow -----------------------------------------------------------------------------

    def take(self, limit: int = P.STATUS_BATCH_ITEMS) -> list[P.StatusItem]:
        keys = list(self.pending)[:limit]
        items = [self.pending.pop(k) for k in keys]
        if not self.pending:
            self.changed.clear()
        return items

    def mark_sent(self, items: list[P.StatusItem]) -> None:
        for item in items:
            if not item.missing:
                self._sent[item.key] = P.spec_hash(item.status)

    def requeue(self, items: list[P.StatusItem]) -> None:
        """Give back items that were not sent, unless a newer status arrived meanwhile."""
        for item in items:
            self.pending.setdefault(item.key, item)
        if self.pending:
            self.changed.set()

    def resend_all(self) -> None:
        """The control plane lost what we told it (new epoch): queue every current status."""
        self._sent.clear()
        stamp = now_ms()
        for key, status in self.latest.items():
            self.pending.setdefault(key, P.StatusItem(key=key, status=status, observed_at=stamp))
        if self.pending:
            self.changed.set()

    # --- the watch loops ---------------------------------------------------------------------

    async def run(self) -> None:
        # a TaskGroup, not gather: one watch failing cancels the other, so a supervisor restarting
        # run() never leaves a second copy of a watch behind
        async with asyncio.TaskGroup() as group:
            group.create_task(self._watch(R.ENVIRONMENTS), name=f"watch-{R.ENVIRONMENTS.plural}")
            group.create_task(self._watch(R.CHOREOAPPS), name=f"watch-{R.CHOREOAPPS.plural}")

    async def _watch(self, res: Resource) -> None:
        """List + watch through :class:`WatchStream` (resumable, relists on 410, retries with
        backoff forever); a relist is the truth: objects gone meanwhile count as deleted."""
        stream = WatchStream(
            self.kube,
            res,
            None,
            label_selector=self.store.selector,
            backoff=WATCH_BACKOFF,
            timeout_seconds=240,
        )
        async for event in stream:
            if isinstance(event, Listed):
                listed: list[Managed] = []
                for obj in event.items:
                    obj.setdefault("kind", res.kind)
                    self.on_event("ADDED", obj)
                    m = managed_from(obj)
                    if m is not None:
                        listed.append(m)
                for gone in self.store.replace_kind(res.kind, listed):
                    self.on_gone(gone.key)
                self._synced_kinds.add(res.kind)
                if len(self._synced_kinds) == 2:
                    self.synced.set()
                if self.restorer is not None:
                    self.restorer.check_all()
            elif isinstance(event, Changed):
                event.object.setdefault("kind", res.kind)
                self.on_event(event.type, event.object)
