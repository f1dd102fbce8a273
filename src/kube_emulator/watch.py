"""Watch plumbing: events with once-serialised payloads, bounded per-watcher queues.

A watcher that cannot keep up (its queue is full) is closed with an ERROR event
(410 Expired) — the client re-lists, exactly as it would against the real server —
so one slow consumer can never make the server hold unbounded memory.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kube_emulator.errors import status_body

JSON = dict[str, Any]
Predicate = Callable[[JSON], bool]


@dataclass(slots=True)
class Event:
    type: str
    obj: JSON
    rv: int
    old: JSON | None = None
    _line: bytes | None = None

    def line(self) -> bytes:
        """The JSON line sent to watchers; serialised once however many watchers receive it."""
        if self._line is None:
            self._line = (
                b'{"type":"'
                + self.type.encode()
                + b'","object":'
                + json.dumps(self.obj, separators=(",", ":")).encode()
                + b"}\n"
            )
        return self._line

    @property
    def namespace(self) -> str:
        return str(self.obj.get("metadata", {}).get("namespace") or "")


@dataclass(eq=False)
class Watcher:
    namespace: str | None
    label_pred: Predicate | None
    field_pred: Predicate | None
    queue: asyncio.Queue[Event | None]
    closed_reason: str | None = None

    def matches(self, obj: JSON) -> bool:
        if self.label_pred is not None and not self.label_pred(obj):
            return False
        return self.field_pred is None or self.field_pred(obj)

    def offer(self, ev: Event) -> bool:
        """Queue the event if it concerns this watcher; False when the watcher overflowed."""
        if self.closed_reason is not None:
            return True
        if self.namespace and ev.namespace != self.namespace:
            return True
        filtered = self.label_pred is not None or self.field_pred is not None
        if filtered and ev.type == "MODIFIED":
            now = self.matches(ev.obj)
            before = ev.old is not None and self.matches(ev.old)
            if now and not before:
                ev = Event("ADDED", ev.obj, ev.rv)
            elif before and not now:
                ev = Event("DELETED", ev.obj, ev.rv)
            elif not now:
                return True
        elif filtered and not self.matches(ev.obj):
            return True
        try:
            self.queue.put_nowait(ev)
        except asyncio.QueueFull:
            self.close("watcher fell too far behind; its event queue is full")
            return False
        return True

    def close(self, reason: str) -> None:
        if self.closed_reason is None:
            self.closed_reason = reason
            # Wake the streaming loop; a None sentinel always fits because we drain first.
            while True:
                try:
                    self.queue.put_nowait(None)
                    break
                except asyncio.QueueFull:
                    self.queue.get_nowait()


def error_event(code: int, message: str) -> bytes:
    reason = "Expired" if code == 410 else ("Gone" if code == 410 else "InternalError")
    body = status_body(code, message, reason)
    return json.dumps({"type": "ERROR", "object": body}, separators=(",", ":")).encode() + b"\n"


@dataclass
class History:
    """Bounded event history of one storage bucket, for resourceVersion-based resumes."""

    maxlen: int
    events: deque[Event] = field(default_factory=deque)
    floor: int = 0  # every event with rv > floor is still here

    def append(self, ev: Event) -> None:
        if len(self.events) >= self.maxlen:
            self.floor = self.events.popleft().rv
        self.events.append(ev)

    def since(self, rv: int) -> list[Event] | None:
        """Events after ``rv``; None when some of them were already evicted."""
        if rv < self.floor:
            return None
        out: list[Event] = []
        for ev in reversed(self.events):
            if ev.rv <= rv:
                break
            out.append(ev)
        out.reverse()
        return out
