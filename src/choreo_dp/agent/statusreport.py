"""Watches the status of the objects the agent manages and coalesces it for the control plane.

``pending`` holds at most one entry per key (the newest status wins), so however fast statuses
change and however long the link is down, memory is bounded by the number of managed objects.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import aiohttp

from choreo_dp.agent.cluster import ClusterStore, Managed, key_of, list_pages, managed_from
from choreo_dp.kube import ApiError, KubeClient, Resource
from choreo_dp.kube import resources as R
from choreo_dp.kube.backoff import Backoff
from choreo_wire import protocol as P

log = logging.getLogger(__name__)
# between watch attempts after an error (the list + watch is re-established each time)
WATCH_BACKOFF = Backoff(base=0.5, cap=30.0)


def now_ms() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class StatusReporter:
    def __init__(self, kube: KubeClient, store: ClusterStore) -> None:
        self.kube = kube
        self.store = store
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
            self.latest.pop(key, None)
            self.pending.pop(key, None)
            self._sent.pop(key, None)
            return
        status = obj.get("status")
        if not isinstance(status, dict) or not status:
            return
        self.latest[key] = status
        digest = P.spec_hash(status)
        if self._sent.get(key) == digest:
            return
        self.pending[key] = P.StatusItem(key=key, status=status, observed_at=now_ms())
        self.changed.set()

    # --- outflow -----------------------------------------------------------------------------

    def take(self, limit: int = P.STATUS_BATCH_ITEMS) -> list[P.StatusItem]:
        keys = list(self.pending)[:limit]
        items = [self.pending.pop(k) for k in keys]
        if not self.pending:
            self.changed.clear()
        return items

    def mark_sent(self, items: list[P.StatusItem]) -> None:
        for item in items:
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
        attempt = 0
        while True:
            try:
                rv = ""
                listed: list[Managed] = []
                async for items, page_rv in list_pages(self.kube, res, self.store.selector):
                    rv = page_rv
                    for obj in items:
                        obj.setdefault("kind", res.kind)
                        self.on_event("ADDED", obj)
                        m = managed_from(obj)
                        if m is not None:
                            listed.append(m)
                # the list is the truth for this kind (objects deleted while unwatched drop out)
                self.store.replace_kind(res.kind, listed)
                self._synced_kinds.add(res.kind)
                if len(self._synced_kinds) == 2:
                    self.synced.set()
                while True:
                    async for event_type, obj in self.kube.watch(
                        res, label_selector=self.store.selector, resource_version=rv, timeout_seconds=240
                    ):
                        new_rv = (obj.get("metadata") or {}).get("resourceVersion")
                        if isinstance(new_rv, str) and new_rv:
                            rv = new_rv
                        if event_type != "BOOKMARK":
                            obj.setdefault("kind", res.kind)
                            self.on_event(event_type, obj)
                        attempt = 0
            except ApiError as exc:
                if not exc.gone:
                    log.warning("watching %s failed: %s", res.plural, exc)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.warning("watching %s failed: %s", res.plural, exc)
            await asyncio.sleep(WATCH_BACKOFF.delay(attempt))
            attempt += 1
