"""The DataPlane singleton: the agent's durable state (epoch, applied revision) and its visible status.

The applied revision is persisted here *before* the ``applied`` frame is sent, so the cluster is the
agent's offline store: after a restart the agent resumes from what is recorded here.

``connected: true`` alone would stay true forever after a ``kill -9``. So while a session is up the
agent renews ``lastHeartbeatTime`` on its own timer and publishes ``heartbeatBoundSeconds``: a
reader (the operator, a human) treats a heartbeat older than the bound as not connected. The
``Connected`` and ``Ready`` conditions carry the same reason and message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from choreo_dp.agent.cluster import FIELD_MANAGER
from choreo_dp.api import API_VERSION, Condition, set_condition
from choreo_dp.api.common import now_rfc3339
from choreo_dp.api.vocabulary import DATAPLANE_LABEL, DESIRED_COPY_CONDITION
from choreo_dp.kube import ApiError, KubeClient
from choreo_dp.kube import resources as R
from choreo_wire import protocol as P

log = logging.getLogger(__name__)

HEARTBEAT_EVERY = 10.0
# Several missed renewals (a slow or restarting API server) before a reader declares the agent gone.
HEARTBEAT_BOUND = 45


class DataPlaneStatus:
    def __init__(
        self,
        kube: KubeClient,
        dataplane_id: str,
        control_plane_url: str,
        *,
        heartbeat_every: float = HEARTBEAT_EVERY,
        heartbeat_bound: int = HEARTBEAT_BOUND,
    ) -> None:
        self.kube = kube
        self.name = dataplane_id
        self.control_plane_url = control_plane_url
        self.heartbeat_every = heartbeat_every
        self.heartbeat_bound = heartbeat_bound
        # called when a session is welcomed, before the (best effort) write: the agent logs it
        self.on_connected: Callable[[], None] | None = None
        self.heartbeats = 0  # renewals written
        self.epoch: str | None = None
        self.applied_revision = 0
        self.connected = False
        self.conditions: list[Condition] = []
        self._last_heartbeat_write = 0.0
        self._conditions_pending = False
        self.writes = 0

    async def load(self) -> None:
        """Create the singleton if needed and read the persisted epoch / revision."""
        body = {
            "apiVersion": API_VERSION,
            "kind": "DataPlane",
            "metadata": {"name": self.name, "labels": {DATAPLANE_LABEL: self.name}},
            "spec": {"controlPlaneURL": self.control_plane_url, "dataplaneId": self.name},
        }
        obj = await self.kube.apply(body, FIELD_MANAGER, force=True)
        status = obj.get("status") or {}
        epoch = status.get("epoch")
        self.epoch = epoch if isinstance(epoch, str) and epoch else None
        rev = status.get("appliedRevision")
        self.applied_revision = rev if isinstance(rev, int) and rev >= 0 else 0
        loaded: list[Condition] = []
        for raw in status.get("conditions") or []:
            try:
                loaded.append(Condition.model_validate(raw))
            except ValueError:
                continue
        # a reload (the singleton was deleted and recreated) must not append the same types twice
        if loaded or not self.conditions:
            self.conditions = loaded

    async def _patch(self, status: dict[str, Any]) -> None:
        try:
            await self.kube.patch(R.DATAPLANES, self.name, {"status": status}, subresource="status")
        except ApiError as exc:
            if not exc.not_found:
                raise
            # someone deleted the singleton: recreate it, then write again
            await self.load()
            await self.kube.patch(R.DATAPLANES, self.name, {"status": status}, subresource="status")
        self.writes += 1

    def _conditions_json(self) -> list[dict[str, Any]]:
        return [c.to_k8s() for c in self.conditions]

    async def persist_revision(self, epoch: str, revision: int) -> None:
        """Durably record that everything up to ``revision`` of ``epoch`` is in the cluster."""
        await self._patch({"epoch": epoch, "appliedRevision": revision})
        self.epoch, self.applied_revision = epoch, revision

    async def set_connected(self, connected: bool, reason: str, message: str = "") -> None:
        """``Connected`` and ``Ready`` (the agent's own readiness is its link) with one reason."""
        self.connected = connected
        if connected and self.on_connected is not None:
            self.on_connected()
        for kind in ("Connected", "Ready"):
            self.conditions = set_condition(
                self.conditions,
                Condition(
                    type=kind,
                    status="True" if connected else "False",
                    reason=reason,
                    message=message[:1000],
                ),
            )
        status: dict[str, Any] = {"connected": connected, "conditions": self._conditions_json()}
        if connected:
            status.update(self._heartbeat_fields())
            self._last_heartbeat_write = time.monotonic()
        self._conditions_pending = True
        await self._patch(status)
        self._conditions_pending = False

    def _heartbeat_fields(self) -> dict[str, Any]:
        return {"lastHeartbeatTime": now_rfc3339(), "heartbeatBoundSeconds": self.heartbeat_bound}

    async def heartbeat(self) -> bool:
        """Renew ``lastHeartbeatTime`` unless it was written less than ``heartbeat_every`` ago: the
        agent's timer and the control plane's heartbeats both call this, and coalesce here.
        Returns whether a write was made."""
        if not self.connected or time.monotonic() - self._last_heartbeat_write < self.heartbeat_every:
            return False
        self._last_heartbeat_write = time.monotonic()
        status: dict[str, Any] = {"connected": True, **self._heartbeat_fields()}
        pending = self._conditions_pending
        if pending:
            # the session's Connected write was lost to an outage: without this the conditions
            # would say Disconnected under a fresh heartbeat until the next reconnect
            status["conditions"] = self._conditions_json()
        try:
            await self._patch(status)
        except BaseException:
            self._last_heartbeat_write = 0.0  # not written: the next tick tries again
            raise
        if pending:
            self._conditions_pending = False
        self.heartbeats += 1
        return True

    async def set_orphans(self, keys: list[str], reason: str | None) -> None:
        self.conditions = set_condition(
            self.conditions,
            Condition(
                type="OrphansHeld",
                status="True" if keys else "False",
                reason=_reason(reason) if keys else "None",
                message=(f"{len(keys)} deletion(s) held: " + ", ".join(keys[:5])) if keys else "",
            ),
        )
        await self._patch(
            {
                "orphans": len(keys),
                "orphanedKeys": keys[: P.ORPHAN_REPORT_KEYS],
                "conditions": self._conditions_json(),
            }
        )

    async def set_desired_copy(self, ok: bool, reason: str, message: str = "") -> None:
        """Whether the agent keeps its offline copy of the desired specs (anti-entropy while
        disconnected depends on it)."""
        self.conditions = set_condition(
            self.conditions,
            Condition(
                type=DESIRED_COPY_CONDITION,
                status="True" if ok else "False",
                reason=reason,
                message=message[:1000],
            ),
        )
        await self._patch({"conditions": self._conditions_json()})


def _reason(text: str | None) -> str:
    """A CamelCase condition reason from a snake_case hold reason."""
    if not text:
        return "Held"
    return "".join(part.capitalize() for part in text.split("_") if part) or "Held"
