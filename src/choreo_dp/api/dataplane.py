"""The DataPlane custom resource: the agent's view of its link to the control plane."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from choreo_dp.api.common import (
    AGE_COLUMN,
    CONDITIONS_LIST_MAP,
    Condition,
    CrdInfo,
    Model,
    PrinterColumn,
    Resource,
)


class DataPlaneSpec(Model):
    control_plane_url: str = Field(alias="controlPlaneURL", max_length=2048)
    dataplane_id: str = Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


class DataPlaneStatus(Model):
    connected: bool | None = None
    last_heartbeat_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    epoch: str | None = None
    applied_revision: int | None = Field(default=None, ge=0)
    orphans: int | None = Field(default=None, ge=0, description="Deletions held back by the safety rules.")
    orphaned_keys: list[str] = Field(
        default_factory=list, max_length=100, description="The first held deletions (kind/namespace/name)."
    )
    observed_generation: int | None = None
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra=CONDITIONS_LIST_MAP,
    )


class DataPlane(Resource):
    crd = CrdInfo(
        kind="DataPlane",
        plural="dataplanes",
        singular="dataplane",
        short_names=["chdp"],
        scope="Cluster",
        description="The tunnel agent's connection to its control plane (a singleton).",
        printer_columns=[
            PrinterColumn(name="Connected", type="boolean", json_path=".status.connected"),
            PrinterColumn(name="Revision", type="integer", json_path=".status.appliedRevision"),
            PrinterColumn(name="Last-Heartbeat", type="date", json_path=".status.lastHeartbeatTime"),
            AGE_COLUMN,
        ],
    )
    kind: Literal["DataPlane"] = "DataPlane"
    spec: DataPlaneSpec
    status: DataPlaneStatus | None = None
