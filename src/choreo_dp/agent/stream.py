"""Ordering of the incremental change stream and the cumulative acknowledgement (pure logic).

Each ``desired.put``/``desired.delete`` names the revision of the change before it (``prev``).
Changes are released in chain order; early arrivals wait in a bounded buffer; anything at or below
the received mark is a duplicate. The acknowledgeable revision is the highest one such that every
released change up to it is finished.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from choreo_wire.protocol import DesiredDelete, DesiredPut

Change = DesiredPut | DesiredDelete
Verdict = Literal["released", "buffered", "duplicate"]


class ChainBroken(Exception):
    """The stream cannot be ordered (gap, inconsistent prev, buffer overflow): reconnect and resume."""


@dataclass
class ChangeStream:
    base: int
    limit: int = 256
    received: int = field(init=False)
    _early: dict[int, Change] = field(default_factory=dict, init=False)
    _open: deque[int] = field(default_factory=deque, init=False)
    _done: set[int] = field(default_factory=set, init=False)
    acked: int = field(init=False)

    def __post_init__(self) -> None:
        self.received = self.base
        self.acked = self.base

    def reset(self, revision: int) -> None:
        """Start a new chain at ``revision`` (after a snapshot); nothing may be open."""
        if self._open:
            raise ChainBroken("reset with changes still open")
        self._early.clear()
        self._done.clear()
        self.base = self.received = self.acked = revision

    def offer(self, change: Change) -> tuple[Verdict, list[Change]]:
        """Feed one change; returns the verdict and the changes now released, in order."""
        if change.prev is None:
            raise ChainBroken(f"change {change.revision} outside a snapshot has no prev")
        if change.revision <= self.received:
            return "duplicate", []
        if change.prev < self.received:
            raise ChainBroken(f"change {change.revision} claims prev {change.prev} below {self.received}")
        if change.prev > self.received:
            if change.prev in self._early:
                return "duplicate", []
            if len(self._early) >= self.limit:
                raise ChainBroken("reorder buffer full")
            self._early[change.prev] = change
            return "buffered", []
        released: list[Change] = [change]
        self._release(change.revision)
        while self.received in self._early:
            nxt = self._early.pop(self.received)
            released.append(nxt)
            self._release(nxt.revision)
        return "released", released

    def _release(self, revision: int) -> None:
        if revision <= self.received:
            raise ChainBroken(f"revision {revision} not above {self.received}")
        self.received = revision
        self._open.append(revision)

    def finish(self, revision: int) -> int:
        """Mark a released change finished; returns the (possibly advanced) acknowledgeable revision."""
        self._done.add(revision)
        while self._open and self._open[0] in self._done:
            self._done.discard(self._open[0])
            self.acked = self._open.popleft()
        return self.acked

    @property
    def in_flight(self) -> int:
        return len(self._open)

    @property
    def buffered(self) -> int:
        return len(self._early)
