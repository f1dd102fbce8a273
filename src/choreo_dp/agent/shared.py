"""What the directions of one tunnel session share: its state, the change stream, durable writes.

A session is split by direction (like argocd-agent's inbound.go / outbound.go): :mod:`inbound`
reads the control plane's frames and applies changes, :mod:`snapshot` runs a resync, and
:mod:`outbound` sends acknowledgements, status and heartbeats. They meet only here.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from choreo_dp.agent.stream import ChangeStream
from choreo_dp.kube import ApiError
from choreo_dp.kube.backoff import Backoff, retrying
from choreo_dp.observability.health import Liveness

log = logging.getLogger("choreo_dp.agent.session")

State = Literal["hello", "await_snapshot", "resync", "incremental"]

# Writes the session cannot go on without (the persisted revision, orphan marks, resync deletions).
DURABLE_BACKOFF = Backoff(base=0.2, cap=30.0)


class SessionEnded(Exception):
    """The session cannot continue (protocol violation, broken chain, a refused write); reconnect."""


@dataclass
class SessionState:
    liveness: Liveness | None
    stream: ChangeStream
    # the revision recorded on the DataPlane: never acknowledged beyond, never moves back
    persisted: int
    state: State = "hello"
    epoch: str = ""

    def beat(self) -> None:
        if self.liveness is not None:
            self.liveness.beat()


async def durable(op: Callable[[], Awaitable[None]], what: str) -> None:
    """Retry ``op`` while Kubernetes may recover (429, 5xx, unreachable); a refusal (403, 404, 409,
    422 ...) would be refused again, so it ends the session: the next one resumes from what is
    persisted, and the error says what to fix instead of retrying quietly forever."""
    try:
        await retrying(op, backoff=DURABLE_BACKOFF, what=what, logger=log)
    except ApiError as exc:
        log.error("Kubernetes refused %s: %s; ending the session", what, exc)
        raise SessionEnded(f"Kubernetes refused {what}: {exc}") from None
