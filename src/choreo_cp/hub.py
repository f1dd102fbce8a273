"""Which tunnel session serves which dataplane, and how REST changes reach it.

One active session per dataplane: a newer connection replaces the older one (the older is told to go
away), because the newest connection is the one the agent is actually using after a network blip.
REST handlers call :meth:`Hub.notify` after their change is committed; the session wakes up and
streams whatever the store holds beyond what it already sent, so notifications can be coalesced
and never carry data themselves.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

log = logging.getLogger(__name__)

# A replaced agent waits this long before dialing again: if two agents share one token by mistake,
# they alternate every few seconds instead of fighting in a tight loop.
REPLACED_RETRY_AFTER = 5.0


class Session(Protocol):
    @property
    def dataplane(self) -> str: ...

    @property
    def session_id(self) -> str: ...

    @property
    def started_at(self) -> str: ...

    @property
    def remote(self) -> str: ...

    def wake(self) -> None:
        """Something changed in the store for this dataplane."""

    def go_away(self, reason: str, retry_after: float) -> None:
        """Send goaway with ``reason`` and close soon (a newer session took over, token revoked...)."""


class Hub:
    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}
        self._empty = asyncio.Event()
        self._empty.set()

    def attach(self, session: Session) -> Session | None:
        """Make ``session`` the active one for its dataplane; returns (and retires) the previous one."""
        previous = self._sessions.get(session.dataplane)
        self._sessions[session.dataplane] = session
        self._empty.clear()
        if previous is not None and previous is not session:
            log.info(
                "dataplane %s: session %s replaces %s",
                session.dataplane,
                session.session_id,
                previous.session_id,
            )
            previous.go_away("replaced by a newer session of this dataplane", REPLACED_RETRY_AFTER)
            return previous
        return None

    def detach(self, session: Session) -> bool:
        """Forget ``session`` if it is still the active one; False when a newer one already took over."""
        if self._sessions.get(session.dataplane) is session:
            del self._sessions[session.dataplane]
            if not self._sessions:
                self._empty.set()
            return True
        return False

    def get(self, dataplane: str) -> Session | None:
        return self._sessions.get(dataplane)

    def notify(self, dataplane: str) -> None:
        session = self._sessions.get(dataplane)
        if session is not None:
            session.wake()

    async def wait_empty(self, timeout: float) -> bool:
        """Wait (bounded) until no session is attached; True if that happened."""
        try:
            await asyncio.wait_for(self._empty.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def __len__(self) -> int:
        return len(self._sessions)

    def sessions(self) -> list[Session]:
        return list(self._sessions.values())
