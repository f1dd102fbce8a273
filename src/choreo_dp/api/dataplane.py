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
    """Which control plane the agent connects to, and as whom. Set at install time."""

    control_plane_url: str = Field(
        alias="controlPlaneURL",
        max_length=2048,
        description="The control plane the agent dials out to, e.g. wss://cp.example.com/tunnel.",
    )
    dataplane_id: str = Field(
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="This data plane's id at the control plane (lowercase, dots and dashes), e.g. eu-west-prod.",
    )


class DataPlaneStatus(Model):
    """The agent's link to its control plane and what it has applied. Written by the agent; do not edit."""

    connected: bool | None = Field(
        default=None, description="Whether the agent's tunnel session with the control plane is up."
    )
    last_heartbeat_time: str | None = Field(
        default=None,
        json_schema_extra={"format": "date-time"},
        description="Renewed by the agent about every 10 s while its session with the control plane is up.",
    )
    heartbeat_bound_seconds: int | None = Field(
        default=None,
        ge=1,
        description=(
            "A lastHeartbeatTime older than this many seconds means the agent is gone, whatever "
            "`connected` says (the agent cannot clear it when it is killed)."
        ),
    )
    epoch: str | None = Field(
        default=None,
        description=(
            "The control plane's store generation the applied revision belongs to; a new epoch (a "
            "restored or replaced control plane) makes the agent resynchronize with safety rules."
        ),
    )
    applied_revision: int | None = Field(
        default=None,
        ge=0,
        description="Every change up to this control-plane revision is persisted in the cluster.",
    )
    orphans: int | None = Field(
        default=None,
        ge=0,
        description="How many deletions are held back by the safety rules (see the OrphansHeld condition).",
    )
    orphaned_keys: list[str] = Field(
        default_factory=list, max_length=100, description="The first held deletions (kind/namespace/name)."
    )
    observed_generation: int | None = Field(
        default=None, description="The metadata.generation this status describes."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra=CONDITIONS_LIST_MAP,
        description="Detailed state, one entry per type: Connected and Ready (the tunnel is up), OrphansHeld (deletions held back).",
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
