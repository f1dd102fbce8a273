"""The ChoreoApp custom resource: one deployable component of a project."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Self

from croniter import croniter
from pydantic import Field, field_validator, model_validator

from choreo_dp.api.common import (
    AGE_COLUMN,
    CONDITIONS_LIST_MAP,
    ENV_VAR_NAME,
    Condition,
    CrdInfo,
    DnsLabel,
    Model,
    PrinterColumn,
    Resource,
)
from choreo_dp.api.environment import Quantity
from choreo_dp.api.images import IMAGE_PATTERN, InvalidImage, parse_image
from choreo_dp.api.quantity import parse_quantity

AppType = Literal["service", "webhook", "worker", "scheduledTask", "manualTask"]
Protocol = Literal["REST", "GraphQL", "gRPC", "WS", "TCP"]
Visibility = Literal["Project", "Organization", "Public"]
AppPhase = Literal["Pending", "Progressing", "Ready", "Degraded", "Failed", "Suspended"]
LONG_RUNNING_TYPES: frozenset[str] = frozenset({"service", "webhook", "worker"})
TASK_TYPES: frozenset[str] = frozenset({"scheduledTask", "manualTask"})

Port = Annotated[int, Field(ge=1, le=65535)]
EnvVarName = Annotated[str, Field(min_length=1, max_length=128, pattern=ENV_VAR_NAME)]
LIST_MAP_BY_NAME: dict[str, Any] = {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}


class Autoscaling(Model):
    min_replicas: int = Field(default=1, ge=1, le=1000)
    max_replicas: int = Field(ge=1, le=1000)
    target_cpu_utilization_percentage: int = Field(
        default=80, ge=1, le=100, alias="targetCPUUtilizationPercentage"
    )

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.max_replicas < self.min_replicas:
            raise ValueError("autoscaling.maxReplicas must be >= autoscaling.minReplicas")
        return self


class ResourceList(Model):
    cpu: Quantity | None = None
    memory: Quantity | None = None


class Resources(Model):
    requests: ResourceList | None = None
    limits: ResourceList | None = None

    @model_validator(mode="after")
    def _requests_within_limits(self) -> Self:
        # The apiserver refuses such a pod template; saying so here names the app's field
        # instead of failing later on a Deployment the user never wrote.
        if self.requests is None or self.limits is None:
            return self
        for name in ("cpu", "memory"):
            request, limit = getattr(self.requests, name), getattr(self.limits, name)
            if request is not None and limit is not None and parse_quantity(request) > parse_quantity(limit):
                raise ValueError(
                    f"resources.requests.{name} ({request}) must not exceed resources.limits.{name} ({limit})"
                )
        return self


class EnvVar(Model):
    name: EnvVarName
    value: str = Field(default="", max_length=32768)


class SecretRef(Model):
    name: EnvVarName = Field(description="Environment variable name in the container.")
    key_vault_secret: str = Field(min_length=1, max_length=127, pattern=r"^[0-9a-zA-Z-]+$")
    version: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{32}$", description="Pinned version.")


class Endpoint(Model):
    name: DnsLabel
    port: Port
    protocol: Protocol = "REST"
    visibility: Visibility = "Project"
    base_path: str = Field(default="/", max_length=1024, pattern=r"^/[^\s]*$")


class HttpGetProbe(Model):
    path: str = Field(default="/", max_length=1024, pattern=r"^/[^\s]*$")
    port: Port


class TcpProbe(Model):
    port: Port


class Probe(Model):
    http_get: HttpGetProbe | None = None
    tcp_socket: TcpProbe | None = None
    initial_delay_seconds: int | None = Field(default=None, ge=0, le=3600)
    period_seconds: int | None = Field(default=None, ge=1, le=3600)
    failure_threshold: int | None = Field(default=None, ge=1, le=100)

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.http_get is None) == (self.tcp_socket is None):
            raise ValueError("a probe needs exactly one of httpGet or tcpSocket")
        return self


class Probes(Model):
    liveness: Probe | None = None
    readiness: Probe | None = None


class ChoreoAppSpec(Model):
    environment: DnsLabel
    project: DnsLabel
    type: AppType
    image: str = Field(
        min_length=1,
        max_length=1024,
        # The parser below gives the clear error; the pattern is for the apiserver's own check.
        json_schema_extra={"pattern": IMAGE_PATTERN},
        description="[registry/]repository[:tag][@digest], as the container runtime reads it.",
    )
    replicas: int = Field(default=1, ge=0, le=1000)
    autoscaling: Autoscaling | None = None
    resources: Resources | None = None
    command: list[str] = Field(default_factory=list, max_length=64)
    args: list[str] = Field(default_factory=list, max_length=256)
    env: list[EnvVar] = Field(default_factory=list, max_length=256, json_schema_extra=LIST_MAP_BY_NAME)
    secrets: list[SecretRef] = Field(default_factory=list, max_length=256, json_schema_extra=LIST_MAP_BY_NAME)
    endpoints: list[Endpoint] = Field(default_factory=list, max_length=32, json_schema_extra=LIST_MAP_BY_NAME)
    schedule: str | None = Field(
        default=None, max_length=128, description="Cron schedule (scheduledTask only)."
    )
    probes: Probes | None = None
    suspend: bool = False

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        try:
            parse_image(value)
        except InvalidImage as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and not croniter.is_valid(value):
            raise ValueError(f"schedule {value!r} is not a valid cron expression")
        if value is not None and len(value.split()) != 5:
            raise ValueError("schedule must have exactly five cron fields")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.type == "scheduledTask") != (self.schedule is not None):
            raise ValueError("schedule is required when type is scheduledTask and only then")
        for field in ("env", "secrets", "endpoints"):
            names = [item.name for item in getattr(self, field)]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{field} names must be unique; repeated: {', '.join(dupes)}")
        clash = {e.name for e in self.env} & {s.name for s in self.secrets}
        if clash:
            raise ValueError(f"names used by both env and secrets: {', '.join(sorted(clash))}")
        if self.endpoints and self.type in TASK_TYPES:
            raise ValueError(f"type {self.type} cannot have endpoints")
        return self


class EndpointStatus(Model):
    name: str
    visibility: Visibility
    url: str


class ChoreoAppStatus(Model):
    phase: AppPhase | None = None
    ready: str | None = Field(default=None, description="Ready replicas over desired, like 2/3.")
    replicas: int | None = None
    ready_replicas: int | None = None
    image: str | None = None
    revision: int | None = Field(default=None, description="Control-plane revision applied.")
    endpoints: list[EndpointStatus] = Field(default_factory=list)
    message: str | None = None
    observed_generation: int | None = None
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra=CONDITIONS_LIST_MAP,
    )


_CEL_RULES = [
    {
        "rule": "self.type == 'scheduledTask' ? has(self.schedule) : !has(self.schedule)",
        "message": "schedule is required when type is scheduledTask and only then",
    },
    {
        "rule": "!has(self.autoscaling) || self.autoscaling.maxReplicas >= self.autoscaling.minReplicas",
        "message": "autoscaling.maxReplicas must be >= autoscaling.minReplicas",
    },
    {
        "rule": "!(self.type in ['scheduledTask', 'manualTask']) || !has(self.endpoints) || size(self.endpoints) == 0",
        "message": "tasks cannot have endpoints",
    },
]


class ChoreoApp(Resource):
    crd = CrdInfo(
        kind="ChoreoApp",
        plural="choreoapps",
        singular="choreoapp",
        short_names=["capp"],
        scope="Namespaced",
        description="A deployable component (service, webhook, worker or task) in an Environment.",
        printer_columns=[
            PrinterColumn(name="Environment", type="string", json_path=".spec.environment"),
            PrinterColumn(name="Type", type="string", json_path=".spec.type"),
            PrinterColumn(name="Ready", type="string", json_path=".status.ready"),
            PrinterColumn(name="Status", type="string", json_path=".status.phase"),
            PrinterColumn(name="URL", type="string", json_path=".status.endpoints[0].url"),
            AGE_COLUMN,
            PrinterColumn(name="Image", type="string", json_path=".status.image", priority=1),
        ],
    )
    spec_cel_rules: ClassVar[list[dict[str, str]]] = _CEL_RULES
    kind: Literal["ChoreoApp"] = "ChoreoApp"
    spec: ChoreoAppSpec
    status: ChoreoAppStatus | None = None
