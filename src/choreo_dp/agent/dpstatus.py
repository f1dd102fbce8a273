"""The DataPlane singleton: the agent's durable state (epoch, applied revision) and its visible status.

The applied revision is persisted here *before* the ``applied`` frame is sent, so the cluster is the
agent's offline store: after a restart the agent resumes from what is recorded here.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from choreo_dp.agent.cluster import FIELD_MANAGER
from choreo_dp.api import API_VERSION, Condition, set_condition
from choreo_dp.api.common import now_rfc3339
from choreo_dp.api.vocabulary import DATAPLANE_LABEL
from choreo_dp.kube import ApiError, KubeClient
from choreo_dp.kube import resources as R
from choreo_wire import protocol as P

log = logging.getLogger(__name__)


class DataPlaneStatus:
    def __init__(
        self, kube: KubeClient, dataplane_id: str, control_plane_url: str, *, heartbeat_every: float = 10.0
    ) -> None:
        self.kube = kube
        self.name = dataplane_id
        self.control_plane_url = control_plane_url
        self.heartbeat_every = heartbeat_every
        self.epoch: str | None = None
        self.applied_revision = 0
        self.connected = False
        self.conditions: list[Condition] = []
        self._last_heartbeat_write = 0.0
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
        for raw in status.get("conditions") or []:
            try:
                self.conditions.append(Condition.model_validate(raw))
            except ValueError:
                continue

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
        self.connected = connected
        self.conditions = set_condition(
            self.conditions,
            Condition(
                type="Connected",
                status="True" if connected else "False",
                reason=reason,
                message=message[:1000],
            ),
        )
        status: dict[str, Any] = {"connected": connected, "conditions": self._conditions_json()}
        if connected:
            status["lastHeartbeatTime"] = now_rfc3339()
            self._last_heartbeat_write = time.monotonic()
        await self._patch(status)

    async def heartbeat(self) -> None:
        """Record a heartbeat; written at most every ``heartbeat_every`` seconds."""
        if time.monotonic() - self._last_heartbeat_write < self.heartbeat_every:
            return
        self._last_heartbeat_write = time.monotonic()
        await self._patch({"connected": True, "lastHeartbeatTime": now_rfc3339()})

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


def _reason(text: str | None) -> str:
    """A CamelCase condition reason from a snake_case hold reason."""
    if not text:
        return "Held"
    return "".join(part.capitalize() for part in text.split("_") if part) or "Held"
