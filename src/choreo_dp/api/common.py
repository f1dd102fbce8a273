"""Shared building blocks for the custom resource models.

The pydantic models in this package are the single source of truth for the CRD schemas
(see :mod:`choreo_dp.api.crdgen`). Field names are camelCase on the wire, snake_case in Python.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

# re-exported for the models here; the vocabulary module defines them
from choreo_dp.api.vocabulary import API_VERSION as API_VERSION
from choreo_dp.api.vocabulary import GROUP as GROUP
from choreo_dp.api.vocabulary import VERSION as VERSION

DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS1123_LABEL_RE = re.compile(DNS1123_LABEL)
ENV_VAR_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"

DnsLabel = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS1123_LABEL)]
ConditionStatus = Literal["True", "False", "Unknown"]
CONDITIONS_LIST_MAP: dict[str, Any] = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}


class Model(BaseModel):
    """Base for every spec/status model: camelCase aliases, populate by either name."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_assignment=False,
    )

    def to_k8s(self) -> dict[str, Any]:
        """The JSON form a Kubernetes API expects: aliases, no unset optional fields."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def now_rfc3339() -> str:
    return datetime.now(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


class Condition(Model):
    """One aspect of the object's state, shaped like metav1.Condition (what `kubectl wait --for=condition=...` reads)."""

    type: str = Field(
        min_length=1,
        max_length=316,
        description="What this condition is about, in CamelCase, e.g. Ready. At most one condition per type.",
    )
    status: ConditionStatus = Field(description="True, False or Unknown (not yet determined).")
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="A machine-readable CamelCase word for why the status is what it is, e.g. ImagePullBackOff.",
    )
    message: str = Field(
        default="", max_length=32768, description="A human-readable explanation of the reason; may be empty."
    )
    last_transition_time: str = Field(
        default_factory=now_rfc3339,
        json_schema_extra={"format": "date-time"},
        description="When status last changed (RFC 3339, UTC), e.g. 2026-01-01T12:00:00Z.",
    )
    observed_generation: int | None = Field(
        default=None,
        ge=0,
        description="The metadata.generation this condition was computed from; older than the object's "
        "generation means the condition is stale.",
    )


def set_condition(conditions: list[Condition], new: Condition) -> list[Condition]:
    """Replace the condition of the same type, keeping lastTransitionTime if status is unchanged."""
    out: list[Condition] = []
    replaced = False
    for c in conditions:
        if c.type == new.type:
            replaced = True
            if c.status == new.status:
                new = new.model_copy(update={"last_transition_time": c.last_transition_time})
            out.append(new)
        else:
            out.append(c)
    if not replaced:
        out.append(new)
    return out


class PrinterColumn(BaseModel):
    name: str
    type: Literal["string", "integer", "number", "boolean", "date"]
    json_path: str
    description: str = ""
    priority: int = 0

    def to_crd(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "jsonPath": self.json_path}
        if self.description:
            out["description"] = self.description
        if self.priority:
            out["priority"] = self.priority
        return out


class CrdInfo(BaseModel):
    """Everything the CRD needs besides the schema."""

    kind: str
    plural: str
    singular: str
    short_names: list[str]
    scope: Literal["Namespaced", "Cluster"]
    printer_columns: list[PrinterColumn]
    categories: list[str] = ["choreo"]
    description: str = ""

    @property
    def name(self) -> str:
        return f"{self.plural}.{GROUP}"


AGE_COLUMN = PrinterColumn(name="Age", type="date", json_path=".metadata.creationTimestamp")


class ObjectMeta(BaseModel):
    """The parts of metav1.ObjectMeta the models read; everything else passes through."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=253)
    namespace: str | None = None
    generation: int | None = None
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}


class Resource(BaseModel):
    """A whole custom resource object (apiVersion, kind, metadata, spec, status)."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")
    crd: ClassVar[CrdInfo]
    spec_cel_rules: ClassVar[list[dict[str, str]]] = []

    api_version: Literal["choreo.dev/v1alpha1"] = Field(default="choreo.dev/v1alpha1", alias="apiVersion")
    kind: str
    metadata: ObjectMeta
