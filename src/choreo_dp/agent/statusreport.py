"""Watches the status of the objects the agent manages and coalesces it for the control plane.

``pending`` holds at most one entry per key (the newest status wins), so however fast statuses
change and however long the link is down, memory is bounded by the number of managed objects.

Reports are not acknowledged, so the reporter is level-based where a report can be lost: every
session starts by sending every current status again (what the last session sent may have died in
its socket, or in a control plane killed before it wrote it), and a key the control plane puts again
gets its current status again (a control plane that deleted and re-created an app dropped the status
of the object the cluster kept). The control plane keeps the newest report per object, so a repeat
costs one row write and changes nothing.

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
        # the newest status of every key, with when it was observed: what a repeat sends
        self.latest: dict[str, P.StatusItem] = {}
        # the digest of the newest status of each key handed to the sender (by take()): the control
        # plane ends up with it unless the session ends first, and then requeue() or resend_all()
        # put the newest back. Not the last one *sent*: while one status waits to be sent the
        # cluster may return to the one sent before, and that return must not be skipped.
        self._handed: dict[str, str] = {}
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
        item = P.StatusItem(key=key, status=status, observed_at=now_ms())
        self.latest[key] = item
        if self._handed.get(key) == P.spec_hash(status):
            # the newest status is the one already on its way: anything queued since is older
            self.pending.pop(key, None)
            return
        self.pending[key] = item
        self.changed.set()

    def on_gone(self, key: str) -> None:
        """``key`` left the cluster. If the control plane still desires it (and the agent is not
        deleting it itself), it is missing: say so upstream, and have it put back."""
        self.latest.pop(key, None)
        self.pending.pop(key, None)
        self._handed.pop(key, None)
        if self._missing(key):
            self.pending[key] = P.StatusItem(key=key, status={}, observed_at=now_ms(), missing=True)
            self.changed.set()
            if self.restorer is not None:
                self.restorer.notice(key)

    def _missing(self, key: str) -> bool:
        """Desired, not being deleted by the agent, and not in the cluster."""
        return key in self.store.desired and key not in self.store.deleting and key not in self.store.index

    # --- outflow -----------------------------------------------------------------------------

    def take(self, limit: int = P.STATUS_BATCH_ITEMS) -> list[P.StatusItem]:
        """The next batch for the sender (in the order the keys were queued)."""
        keys = list(self.pending)[:limit]
        items = [self.pending.pop(k) for k in keys]
        for item in items:
            if item.missing:
                self._handed.pop(item.key, None)
            else:
                self._handed[item.key] = P.spec_hash(item.status)
        if not self.pending:
            self.changed.clear()
        return items

    def requeue(self, items: list[P.StatusItem]) -> None:
        """Items taken but not sent (the session ended): queue the newest state of their keys,
        which is not necessarily the item (a newer one may have been taken after it)."""
        for item in items:
            key = item.key
            self._handed.pop(key, None)
            if key in self.pending:
                continue
            current = self.latest.get(key)
            if current is not None:
                self.pending[key] = current
            elif item.missing and self._missing(key):
                self.pending[key] = item
        if self.pending:
            self.changed.set()

    def resend_all(self) -> None:
        """Queue every current status again, and the absence of every desired object the cluster
        lacks (once the watches listed: before that, absent only means not listed yet). Called at
        the start of every session (see the module docstring)."""
        self._handed.clear()
        self.pending.update(self.latest)
        if self.synced.is_set():
            stamp = now_ms()
            for key in self.store.desired:
                if key not in self.latest and self._missing(key):
                    self.pending.setdefault(
                        key, P.StatusItem(key=key, status={}, observed_at=stamp, missing=True)
                    )
        if self.pending:
            self.changed.set()

    def resend(self, key: str) -> None:
        """Queue the current status of ``key`` again (the control plane put it again)."""
        self._handed.pop(key, None)
        item = self.latest.get(key)
        if item is not None:
            self.pending[key] = item
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
