"""The resync direction of a session: snapshot.begin / keys / end, deletions held or done, orphans.

The control plane names what it has; the agent compares bucket digests, sends its inventory of the
buckets that differ, applies the puts as they come, and at snapshot.end lets the safety planner
(:mod:`choreo_dp.agent.resync`) decide which of its own objects go and which are held as orphans.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass, field

from choreo_dp.agent import guards as G
from choreo_dp.agent import metrics as M
from choreo_dp.agent import resync
from choreo_dp.agent.cluster import ApplyRefused, ClusterStore
from choreo_dp.agent.dpstatus import DataPlaneStatus
from choreo_dp.agent.outbound import Outbound
from choreo_dp.agent.shared import SessionState, durable
from choreo_wire import protocol as P

log = logging.getLogger("choreo_dp.agent.session")

# Orphan hold reason when a resync snapshot names fewer (or more) keys than it says it has.
SNAPSHOT_INCONSISTENT = "snapshot_inconsistent"


@dataclass
class Snapshot:
    begin: P.SnapshotBegin
    compared: list[int]
    # the agent's keys in the buckets whose digests matched: the cp has exactly these there
    identical: int = 0
    # keys the cp named in the compared buckets (puts and snapshot.keys), counted as they come ...
    delivered: int = 0
    # ... and kept only when the agent has them: only those can be deletion candidates, so a control
    # plane naming millions of keys costs no memory
    remote: set[str] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    puts: int = 0  # puts received (written or found already in place), for the summary line
    started: float = field(default_factory=lambda: asyncio.get_running_loop().time())


class Resync:
    def __init__(
        self, shared: SessionState, out: Outbound, *, store: ClusterStore, dp: DataPlaneStatus
    ) -> None:
        self.shared = shared
        self.out = out
        self.store = store
        self.dp = dp
        self.snapshot: Snapshot | None = None

    def note_remote(self, snap: Snapshot, key: str, *, count: bool = True) -> None:
        if count:
            snap.delivered += 1
        if key in self.store.index:
            snap.remote.add(key)

    def track_put(self, snap: Snapshot, key: str, task: asyncio.Task[None]) -> None:
        """A snapshot put being applied: snapshot.end waits for it."""
        snap.puts += 1
        snap.tasks.add(task)

        def done(task: asyncio.Task[None]) -> None:
            snap.tasks.discard(task)
            # a key the put just created is the cp's too (it must not become a deletion candidate)
            self.note_remote(snap, key, count=False)

        task.add_done_callback(done)

    async def on_begin(self, frame: P.Frame, begin: P.SnapshotBegin) -> None:
        if self.shared.state != "await_snapshot" or begin.epoch != self.shared.epoch:
            self.out.send_soon(P.Error(code="protocol", message="unexpected snapshot.begin", ref=frame.id))
            return
        if begin.revision > G.MAX_REVISION:
            self.out.send_soon(
                P.Error(code="bad_body", message=f"revision beyond {G.MAX_REVISION}", ref=frame.id)
            )
            return
        try:
            theirs = P.decode_digests(begin.digests, begin.buckets)
        except ValueError as exc:
            self.out.send_soon(P.Error(code="bad_body", message=str(exc), ref=frame.id))
            return
        inventory = self.store.inventory()
        ours = P.bucket_digests(inventory, begin.buckets)
        compared = P.differing_buckets(ours, theirs)
        inside = P.in_buckets(inventory, compared, begin.buckets)
        self.snapshot = Snapshot(begin=begin, compared=compared, identical=len(inventory) - len(inside))
        self.shared.state = "resync"
        for inv in P.inventory_frames(compared, inside):
            await self.out.send(inv)

    def on_keys(self, frame: P.Frame, body: P.SnapshotKeys) -> None:
        if self.snapshot is None:
            self.out.send_soon(
                P.Error(code="protocol", message="snapshot.keys outside a snapshot", ref=frame.id)
            )
            return
        for key in body.keys:
            self.note_remote(self.snapshot, key)

    async def on_end(self, frame: P.Frame, end: P.SnapshotEnd) -> None:
        snap = self.snapshot
        if snap is None or end.epoch != snap.begin.epoch or end.revision != snap.begin.revision:
            self.out.send_soon(P.Error(code="protocol", message="unexpected snapshot.end", ref=frame.id))
            return
        if snap.tasks:
            await asyncio.wait(snap.tasks)
        plan = resync.plan_resync(
            self.store.local_items(),
            snap.remote,
            compared_buckets=snap.compared,
            buckets=snap.begin.buckets,
            agent_epoch=self.dp.epoch,
            agent_revision=self.dp.applied_revision,
            cp_epoch=snap.begin.epoch,
            cp_revision=snap.begin.revision,
            cp_total=snap.begin.total,
        )
        hold_reason: str | None = plan.hold_reason
        deletes, orphans = plan.deletes, plan.orphans
        if deletes and snap.delivered + snap.identical != snap.begin.total:
            # The cp said it has `total` keys but named a different number: a broken snapshot
            # (lost keys, a bug, a truncated store) must not delete what it failed to mention.
            log.warning(
                "resync snapshot inconsistent: %d keys named + %d identical != total %d",
                snap.delivered,
                snap.identical,
                snap.begin.total,
            )
            deletes, orphans, hold_reason = [], sorted([*deletes, *orphans]), SNAPSHOT_INCONSISTENT
        for key in deletes:
            await durable(functools.partial(self._delete, key), f"resync deletion of {key}")
        for key in orphans:
            reason = hold_reason or "held"
            await durable(functools.partial(self.store.mark_orphan, key, reason), f"holding {key} as orphan")
        if orphans:
            log.warning("resync held %d deletion(s) as orphans (%s)", len(orphans), hold_reason)
        await self.out.flush_desired_copy()
        await durable(
            lambda: self.dp.persist_revision(end.epoch, end.revision), f"persisting revision {end.revision}"
        )
        self.shared.persisted = end.revision
        M.APPLIED_REVISION.set(end.revision)
        self.shared.stream.reset(end.revision)
        self.snapshot = None
        self.shared.state = "incremental"
        await self.out.send(P.Applied(revision=end.revision, epoch=end.epoch))
        self.out.summary_due.set()
        log.info(
            "resync finished at revision %d of epoch %s: %d put(s), %d deletion(s), %d orphan(s) held%s, "
            "%d bucket(s) of %d compared, %.2fs",
            end.revision,
            end.epoch,
            snap.puts,
            len(deletes),
            len(orphans),
            f" ({hold_reason})" if orphans and hold_reason else "",
            len(snap.compared),
            snap.begin.buckets,
            asyncio.get_running_loop().time() - snap.started,
        )
        await self.report_orphans(hold_reason)

    async def _delete(self, key: str) -> None:
        try:
            await self.store.delete(key)
        except ApplyRefused as exc:
            # it stopped being ours since the inventory was taken: not ours to delete
            log.warning("resync left %s alone: %s", key, exc)

    async def report_orphans(self, reason: str | None) -> None:
        orphans = self.store.orphans()
        M.ORPHANS.set(len(orphans))
        if orphans or self.dp.conditions:
            await durable(lambda: self.dp.set_orphans(orphans, reason), "recording orphans on the DataPlane")
        if orphans:
            await self.out.send(
                P.Orphans(count=len(orphans), keys=orphans[: P.ORPHAN_REPORT_KEYS], reason=reason)
            )
