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
from choreo_dp.api.connections import Connection, ConnectionStatus, connection_problems
from choreo_dp.api.environment import Quantity
from choreo_dp.api.files import MAX_FILES, FileSpec, files_problem
from choreo_dp.api.images import IMAGE_PATTERN, InvalidImage, parse_image
from choreo_dp.api.quantity import parse_quantity
from choreo_dp.api.rollout import Rollout, RolloutStatus

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
    """Scale on CPU with a HorizontalPodAutoscaler instead of a fixed replica count."""

    min_replicas: int = Field(default=1, ge=1, le=1000, description="Fewest replicas. Default 1.")
    max_replicas: int = Field(ge=1, le=1000, description="Most replicas; at least minReplicas. Example: 10.")
    target_cpu_utilization_percentage: int = Field(
        default=80,
        ge=1,
        le=100,
        alias="targetCPUUtilizationPercentage",
        description="Average CPU use, in percent of the CPU request, the autoscaler aims for. Default 80.",
    )

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.max_replicas < self.min_replicas:
            raise ValueError("autoscaling.maxReplicas must be >= autoscaling.minReplicas")
        return self


class ResourceList(Model):
    """CPU and memory amounts."""

    cpu: Quantity | None = Field(default=None, description="CPU in cores: 250m (a quarter core), 1, 1.5.")
    memory: Quantity | None = Field(
        default=None, description="Memory in bytes with a binary or decimal suffix: 256Mi, 1Gi, 500M."
    )


class Resources(Model):
    """CPU and memory of the app's container."""

    requests: ResourceList | None = Field(
        default=None,
        description="What the scheduler reserves for each replica. Absent: the environment's default (50m CPU, 64Mi).",
    )
    limits: ResourceList | None = Field(
        default=None,
        description=(
            "The most each replica may use: over the memory limit it is restarted, CPU is throttled. "
            "Absent: the environment's default (500m CPU, 512Mi). Requests must not exceed limits."
        ),
    )

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
    """A plain environment variable of the container."""

    name: EnvVarName = Field(description="Variable name, e.g. LOG_LEVEL. Unique across env and secrets.")
    value: str = Field(default="", max_length=32768, description="Its value, e.g. debug. Default empty.")


class SecretRef(Model):
    """An environment variable whose value comes from the environment's Key Vault."""

    name: EnvVarName = Field(
        description="Environment variable name in the container, e.g. DB_PASSWORD. Unique across env and secrets."
    )
    key_vault_secret: str = Field(
        min_length=1,
        max_length=127,
        pattern=r"^[0-9a-zA-Z-]+$",
        description="Name of the secret in the environment's Key Vault, e.g. orders-db-password.",
    )
    version: str | None = Field(
        default=None,
        pattern=r"^[0-9a-fA-F]{32}$",
        description=(
            "Pin one version of the secret (32 hex digits). Absent: the latest version, read again "
            "every keyVault.refreshInterval; a new value rolls the pods."
        ),
    )


class Endpoint(Model):
    """A port the app serves on, and who may reach it."""

    name: DnsLabel = Field(
        description="Endpoint name, unique within the app, e.g. http. Part of its host or path."
    )
    port: Port = Field(description="Container port the app listens on, 1-65535, e.g. 8080.")
    protocol: Protocol = Field(
        default="REST",
        description="What the port speaks: REST, GraphQL, gRPC, WS (WebSocket) or TCP. Sets the URL scheme. Default REST.",
    )
    visibility: Visibility = Field(
        default="Project",
        description=(
            "Who may reach it: Project (apps of the same project, in-cluster only), Organization (through "
            "the environment's internal gateway), Public (through its external gateway). TCP endpoints are "
            "never routed. Default Project."
        ),
    )
    base_path: str = Field(
        default="/",
        max_length=1024,
        pattern=r"^/[^\s]*$",
        description="Path prefix the app serves under, e.g. /api/v1. Requests arrive at this path. Default /.",
    )


class HttpGetProbe(Model):
    """Healthy when an HTTP GET answers with a status from 200 to 399."""

    path: str = Field(
        default="/",
        max_length=1024,
        pattern=r"^/[^\s]*$",
        description="Path to request, e.g. /healthz. Default /.",
    )
    port: Port = Field(description="Container port to request it on, e.g. 8080.")


class TcpProbe(Model):
    """Healthy when a TCP connection can be opened."""

    port: Port = Field(description="Container port to connect to, e.g. 5432.")


class Probe(Model):
    """A health check: exactly one of httpGet or tcpSocket."""

    http_get: HttpGetProbe | None = Field(default=None, description="Check with an HTTP GET.")
    tcp_socket: TcpProbe | None = Field(default=None, description="Check by opening a TCP connection.")
    initial_delay_seconds: int | None = Field(
        default=None,
        ge=0,
        le=3600,
        description="Seconds after the container starts before the first check. Default 0.",
    )
    period_seconds: int | None = Field(
        default=None, ge=1, le=3600, description="Seconds between checks. Default 10."
    )
    failure_threshold: int | None = Field(
        default=None,
        ge=1,
        le=100,
        description="Consecutive failures before the check counts as failed. Default 3.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.http_get is None) == (self.tcp_socket is None):
            raise ValueError("a probe needs exactly one of httpGet or tcpSocket")
        return self


class Probes(Model):
    """Health checks of the container."""

    liveness: Probe | None = Field(
        default=None,
        description="When it fails, the container is restarted. Absent: never restarted for health.",
    )
    readiness: Probe | None = Field(
        default=None,
        description="While it fails, the replica gets no traffic and does not count as ready. Absent: ready once started.",
    )


class ChoreoAppSpec(Model):
    """The desired app: what runs (image, command, env, secrets), how many, and how it is reached."""

    environment: DnsLabel = Field(
        description="The Environment (by name) the app runs in; the app must live in that environment's namespace. Example: dev."
    )
    project: DnsLabel = Field(
        description="The project the app belongs to, e.g. orders. Apps of one project may reach each other's Project endpoints."
    )
    type: AppType = Field(
        description=(
            "What kind of component: service (serves endpoints), webhook (serves callbacks, run like a "
            "service), worker (runs continuously, usually without endpoints), scheduledTask (runs on "
            "spec.schedule), manualTask (runs only when triggered). Tasks cannot have endpoints."
        )
    )
    image: str = Field(
        min_length=1,
        max_length=1024,
        # The parser below gives the clear error; the pattern is for the apiserver's own check.
        json_schema_extra={"pattern": IMAGE_PATTERN},
        description=(
            "Container image, [registry/]repository[:tag][@digest], e.g. ghcr.io/acme/orders:1.4.2. "
            "It must be admitted by the environment's spec.registry.allowedPrefixes."
        ),
    )
    replicas: int = Field(
        default=1,
        ge=0,
        le=1000,
        description="How many copies run (long-running types). Ignored when autoscaling is set. Default 1.",
    )
    autoscaling: Autoscaling | None = Field(
        default=None,
        description="Scale between minReplicas and maxReplicas on CPU use. Absent: spec.replicas copies.",
    )
    resources: Resources | None = Field(
        default=None, description="CPU and memory of each replica. Absent: the environment's defaults."
    )
    command: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Replaces the image's entrypoint, e.g. [\"/app/server\"]. Absent: the image's ENTRYPOINT.",
    )
    args: list[str] = Field(
        default_factory=list,
        max_length=256,
        description='Arguments to the entrypoint, e.g. ["--port", "8080"]. Absent: the image\'s CMD.',
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=256,
        json_schema_extra=LIST_MAP_BY_NAME,
        description="Plain environment variables of the container, by unique name.",
    )
    secrets: list[SecretRef] = Field(
        default_factory=list,
        max_length=256,
        json_schema_extra=LIST_MAP_BY_NAME,
        description="Environment variables read from the environment's Key Vault (spec.keyVault of the Environment).",
    )
    endpoints: list[Endpoint] = Field(
        default_factory=list,
        max_length=32,
        json_schema_extra=LIST_MAP_BY_NAME,
        description="The ports the app serves and who may reach them; URLs appear in status.endpoints.",
    )
    schedule: str | None = Field(
        default=None,
        max_length=128,
        description=(
            "When a scheduledTask runs: a five-field cron expression in the cluster's time zone (usually "
            "UTC), e.g. 0 3 * * * (daily at 03:00). Required for scheduledTask, not allowed otherwise."
        ),
    )
    probes: Probes | None = Field(
        default=None, description="Health checks. Absent: a replica is ready as soon as its container runs."
    )
    suspend: bool = Field(
        default=False,
        description="Stop the app without deleting it: 0 replicas, or no new runs for a scheduledTask. Default false.",
    )
    connections: list[Connection] = Field(
        default_factory=list,
        max_length=64,
        json_schema_extra=LIST_MAP_BY_NAME,
        description=(
            "Endpoints of other apps in the same Environment this app calls: each injects <NAME>_URL, "
            "<NAME>_HOST, <NAME>_PORT and <NAME>_BASE_PATH and allows exactly that traffic, within the "
            "target endpoint's visibility. Status.connections says whether each resolves."
        ),
    )
    files: list[FileSpec] = Field(
        default_factory=list,
        max_length=MAX_FILES,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["mountPath"]},
        description=(
            "Files mounted read-only into the container: plain configuration (content) or a Key Vault "
            "secret (keyVaultSecret). Paths are unique; a change rolls the pods."
        ),
    )
    rollout: Rollout | None = Field(
        default=None,
        description="How a new version replaces the running one: rolling update (default) or a canary in steps.",
    )

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
    def _files(self) -> Self:
        problem = files_problem(self.files)
        if problem is not None:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _rollout_type(self) -> Self:
        # A canary splits traffic between Deployments; a CronJob has neither.
        if self.rollout is not None and self.rollout.canary and self.type in TASK_TYPES:
            raise ValueError(f"rollout strategy Canary needs a long-running type, not {self.type}")
        return self

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.type == "scheduledTask") != (self.schedule is not None):
            raise ValueError("schedule is required when type is scheduledTask and only then")
        for field in ("env", "secrets", "endpoints", "connections"):
            names = [item.name for item in getattr(self, field)]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{field} names must be unique; repeated: {', '.join(dupes)}")
        clash = {e.name for e in self.env} & {s.name for s in self.secrets}
        if clash:
            raise ValueError(f"names used by both env and secrets: {', '.join(sorted(clash))}")
        if self.endpoints and self.type in TASK_TYPES:
            raise ValueError(f"type {self.type} cannot have endpoints")
        taken = [e.name for e in self.env] + [s.name for s in self.secrets]
        if problems := connection_problems(None, self.connections, taken):
            raise ValueError("; ".join(problems))
        return self


class EndpointStatus(Model):
    """Where one endpoint can be reached."""

    name: str = Field(description="The endpoint's name (spec.endpoints[].name).")
    visibility: Visibility = Field(description="Its visibility: Project, Organization or Public.")
    url: str = Field(
        description=(
            "Its URL: in-cluster for Project endpoints (http://orders.choreo-dev.svc.cluster.local:8080/), "
            "through the gateway otherwise (https://orders-http.apps.example.com/)."
        )
    )


class ChoreoAppStatus(Model):
    """The app as the operator last observed it. Written by the operator; do not edit."""

    phase: AppPhase | None = Field(
        default=None,
        description=(
            "Summary: Pending (not yet acted on), Progressing (rolling out), Ready (all desired replicas "
            "ready), Degraded (running but not healthy, see message), Failed (cannot run, see message), "
            "Suspended (spec.suspend)."
        ),
    )
    ready: str | None = Field(default=None, description="Ready replicas over desired, like 2/3.")
    replicas: int | None = Field(default=None, description="Replicas currently desired.")
    ready_replicas: int | None = Field(default=None, description="Replicas ready to serve.")
    image: str | None = Field(default=None, description="The image the app's replicas run.")
    revision: int | None = Field(
        default=None, description="The control plane's revision of this app that is applied here."
    )
    endpoints: list[EndpointStatus] = Field(
        default_factory=list,
        description="The URLs of the app's endpoints (an endpoint with no known URL is left out).",
    )
    connections: list[ConnectionStatus] = Field(
        default_factory=list,
        description="Each of spec.connections and whether it resolves (target found and visibility allows).",
    )
    rollout: RolloutStatus | None = Field(
        default=None, description="Progress of a canary rollout (spec.rollout.strategy Canary only)."
    )
    message: str | None = Field(
        default=None, description="Why the app is not Ready, in one line (e.g. the container's last error)."
    )
    observed_generation: int | None = Field(
        default=None,
        description="The metadata.generation this status describes; lower than the object's while a change is being applied.",
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra=CONDITIONS_LIST_MAP,
        description="Detailed state, one entry per type: Ready, Progressing, Exposed (endpoints routed), and others.",
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
            PrinterColumn(name="Rollout", type="string", json_path=".status.rollout.summary"),
            PrinterColumn(name="URL", type="string", json_path=".status.endpoints[0].url"),
            AGE_COLUMN,
            PrinterColumn(name="Image", type="string", json_path=".status.image", priority=1),
        ],
    )
    spec_cel_rules: ClassVar[list[dict[str, str]]] = _CEL_RULES
    kind: Literal["ChoreoApp"] = "ChoreoApp"
    spec: ChoreoAppSpec
    status: ChoreoAppStatus | None = None

    @model_validator(mode="after")
    def _no_connection_to_itself(self) -> Self:
        # Only here is the app's own name known; the spec checks everything else.
        if problems := connection_problems(self.metadata.name, self.spec.connections, ()):
            raise ValueError("; ".join(problems))
        return self
