"""The Environment custom resource: a namespace with its guard rails."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field, WithJsonSchema, field_validator

from choreo_dp.api.common import (
    AGE_COLUMN,
    CONDITIONS_LIST_MAP,
    Condition,
    CrdInfo,
    DnsLabel,
    Model,
    PrinterColumn,
    Resource,
)
from choreo_dp.api.images import InvalidImage, validate_allowed_prefix
from choreo_dp.api.quantity import MAX_LENGTH as QUANTITY_MAX_LENGTH
from choreo_dp.api.quantity import NON_NEGATIVE_PATTERN, InvalidQuantity, resource_quantity

DURATION = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _quantity(value: object) -> str:
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ValueError(f"a quantity is a string or a number, not {type(value).__name__}")
    try:
        return resource_quantity(value)
    except InvalidQuantity as exc:
        raise ValueError(str(exc)) from None


# A Kubernetes resource quantity (``500m``, ``2``, ``1.5Gi``), stored as the apiserver stores it
# in a ResourceList (canonical, rounded up to milli-units), so what is applied and what is read
# back compare equal. The CRD types
# it like upstream's resource.Quantity: int-or-string with the grammar as a pattern.
Quantity = Annotated[
    str,
    BeforeValidator(_quantity),
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "pattern": NON_NEGATIVE_PATTERN,
            "maxLength": QUANTITY_MAX_LENGTH,
            "description": "A Kubernetes quantity such as 500m, 2, 512Mi or 1.5Gi.",
        }
    ),
]


def _allowed_prefix(value: str) -> str:
    try:
        return validate_allowed_prefix(value)
    except InvalidImage as exc:
        raise ValueError(str(exc)) from None


AllowedPrefix = Annotated[str, Field(min_length=1, max_length=512), AfterValidator(_allowed_prefix)]


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration such as ``1h30m`` or ``90s``."""
    import re

    total = 0.0
    for number, _frac, unit in re.findall(r"([0-9]+(\.[0-9]+)?)(ms|s|m|h)", text):
        total += float(number) * _UNIT_SECONDS[unit]
    return total


class RegistrySpec(Model):
    """Which container images apps in this environment may run, and the credentials to pull them."""

    allowed_prefixes: list[AllowedPrefix] = Field(
        default_factory=list,
        max_length=64,
        description=(
            "Registries or repository paths images may come from, matched on registry and path "
            "segment boundaries: registry.example.com, ghcr.io/acme/ (anything below acme), "
            'ghcr.io/acme/app (that repository). Empty or absent admits no image; ["*"] admits any. '
            "An app whose image is not admitted is refused with reason ImageNotAllowed."
        ),
    )
    pull_secret_name: DnsLabel | None = Field(
        default=None,
        description=(
            "Name of a kubernetes.io/dockerconfigjson Secret in the operator's namespace, labelled "
            "choreo.dev/pull-secret=true by the cluster admin. Its credentials are copied into the "
            "environment's namespace and used to pull every app's image. Example: acme-registry."
        ),
    )


class KeyVaultSpec(Model):
    """The Azure Key Vault the environment's app secrets (spec.secrets of a ChoreoApp) are read from."""

    url: str = Field(
        max_length=512,
        pattern=r"^https://[A-Za-z0-9.-]+(:[0-9]+)?/?$",
        description="Vault URL, e.g. https://myvault.vault.azure.net/",
    )
    client_id: str | None = Field(
        default=None,
        max_length=64,
        description=(
            "Client id of the managed identity (Entra workload identity) used to read the vault. "
            "Absent: the operator's own identity. Example: 00000000-0000-0000-0000-000000000000."
        ),
    )
    tenant_id: str | None = Field(
        default=None,
        max_length=64,
        description="Entra tenant id of that identity. Absent: the tenant the operator runs in.",
    )
    refresh_interval: str = Field(
        default="1h",
        max_length=32,
        pattern=DURATION,
        description=(
            "How often secret values are read again from the vault, as a duration (units ms, s, m, h; "
            "at least 1s), e.g. 15m or 1h30m. A changed value rolls the app's pods. Default 1h."
        ),
    )

    @field_validator("refresh_interval")
    @classmethod
    def _positive(cls, value: str) -> str:
        if parse_duration(value) < 1.0:
            raise ValueError("refreshInterval must be at least 1s")
        return value

    @property
    def refresh_seconds(self) -> float:
        return parse_duration(self.refresh_interval)


class GatewayRef(Model):
    """Where routed endpoints enter the cluster: a Gateway API Gateway, or an Ingress class where the
    cluster has no Gateway API."""

    gateway_name: DnsLabel | None = Field(
        default=None,
        description="Name of the Gateway (gateway.networking.k8s.io) HTTPRoutes attach to, e.g. public-gw.",
    )
    gateway_namespace: DnsLabel | None = Field(
        default=None,
        description=(
            "Namespace of that Gateway; absent means the environment's own namespace. Also the "
            "namespace the NetworkPolicy admits traffic from: without it routed traffic stays denied."
        ),
    )
    hostname: str | None = Field(
        default=None,
        max_length=253,
        pattern=r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
        description=(
            "Host the endpoints are served on. A wildcard (*.apps.example.com) gives each endpoint its "
            "own host <app>-<endpoint>.apps.example.com; a fixed name (api.example.com) puts every "
            "endpoint under the path /<project>/<app>/<endpoint>. Absent: routes match any host and "
            "the endpoint URL is unknown (not shown in status)."
        ),
    )
    ingress_class_name: DnsLabel | None = Field(
        default=None,
        description="IngressClass to use when the cluster has no Gateway API, e.g. nginx.",
    )


class GatewaysSpec(Model):
    """The two entry points of the environment, by endpoint visibility."""

    internal: GatewayRef | None = Field(
        default=None,
        description="Gateway for endpoints with visibility Organization (reachable inside the organization).",
    )
    external: GatewayRef | None = Field(
        default=None,
        description="Gateway for endpoints with visibility Public (reachable from the internet).",
    )


class QuotaSpec(Model):
    """Totals all apps of the environment together may use (a ResourceQuota on the namespace)."""

    cpu: Quantity | None = Field(
        default=None,
        description=(
            "CPU all pods together may request and be limited to, in cores: 4, 2500m. Containers without "
            "resources count as 50m requested, 500m limit."
        ),
    )
    memory: Quantity | None = Field(
        default=None,
        description=(
            "Memory all pods together may request and be limited to, in bytes with a suffix: 8Gi, 512Mi. "
            "Containers without resources count as 64Mi requested, 512Mi limit."
        ),
    )
    pods: int | None = Field(
        default=None,
        ge=0,
        le=100000,
        description="Most pods that may exist at once in the environment, e.g. 50.",
    )


class EnvironmentSpec(Model):
    """The desired environment: its namespace, which images may run, secrets, gateways and quota."""

    display_name: str | None = Field(
        default=None, max_length=256, description="A human-friendly name for tools to show, e.g. Development."
    )
    namespace: DnsLabel | None = Field(
        default=None,
        description=(
            "The namespace the environment's apps run in; created and owned by the environment. "
            "Defaults to choreo-<name>. Protected namespaces (kube-*, default) are refused."
        ),
    )
    production: bool = Field(
        default=False,
        description="Marks a production environment (the PRODUCTION column of kubectl get). Default false.",
    )
    registry: RegistrySpec | None = Field(
        default=None,
        description="Which images apps may run and how they are pulled. Absent: no image is admitted.",
    )
    key_vault: KeyVaultSpec | None = Field(
        default=None, description="The Key Vault app secrets come from. Needed by any app with spec.secrets."
    )
    gateways: GatewaysSpec | None = Field(
        default=None,
        description=(
            "Where Organization and Public endpoints are exposed. Absent: such endpoints are not "
            "routed (only the in-cluster Service exists) and the app's Exposed condition says why."
        ),
    )
    quota: QuotaSpec | None = Field(
        default=None, description="Resource totals for the whole environment. Absent: no quota."
    )
    deletion_policy: Literal["Delete", "Retain"] = Field(
        default="Delete",
        description=(
            "What happens to the namespace (and everything in it) when the Environment is deleted: "
            "Delete removes it, Retain keeps it and its apps running. Default Delete."
        ),
    )


EnvironmentPhase = Literal["Pending", "Ready", "Failed", "Terminating"]


class EnvironmentStatus(Model):
    """The environment as the operator last observed it. Written by the operator; do not edit."""

    phase: EnvironmentPhase | None = Field(
        default=None,
        description=(
            "Summary of the environment's state: Pending (being set up), Ready (namespace, quota and "
            "policies in place), Failed (see the Ready condition's message), Terminating (being deleted)."
        ),
    )
    namespace: str | None = Field(
        default=None, description="The namespace the environment's apps run in, e.g. choreo-dev."
    )
    apps: int | None = Field(default=None, ge=0, description="How many ChoreoApps the environment holds.")
    observed_generation: int | None = Field(
        default=None,
        description="The metadata.generation this status describes; lower than the object's while a change is being applied.",
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra=CONDITIONS_LIST_MAP,
        description="Detailed state, one entry per type; Ready tells whether the environment can run apps.",
    )


class Environment(Resource):
    crd = CrdInfo(
        kind="Environment",
        plural="environments",
        singular="environment",
        short_names=["chenv"],
        scope="Cluster",
        description="An isolated place (namespace, quota, network policy, registry rules) where apps run.",
        printer_columns=[
            PrinterColumn(name="Namespace", type="string", json_path=".status.namespace"),
            PrinterColumn(name="Production", type="boolean", json_path=".spec.production"),
            PrinterColumn(name="Apps", type="integer", json_path=".status.apps"),
            PrinterColumn(name="Status", type="string", json_path=".status.phase"),
            AGE_COLUMN,
        ],
    )
    kind: Literal["Environment"] = "Environment"
    spec: EnvironmentSpec
    status: EnvironmentStatus | None = None

    @property
    def target_namespace(self) -> str:
        return self.spec.namespace or default_namespace(self.metadata.name)


def default_namespace(env_name: str) -> str:
    """``choreo-<name>`` when that is a namespace name of at most 62 characters, else
    ``choreo-<stem>-<hash>`` of exactly 63: a readable stem of the name and a hash (at least 16 hex
    digits of SHA-256) of all of it.

    Distinct names get distinct namespaces: a plain result is never 63 characters long and a hashed
    one always is, so the two kinds never meet, and hashed ones differ unless 64 bits of SHA-256
    collide. Cutting alone gave every name sharing its first 56 characters the same namespace.
    """
    import hashlib
    import re

    plain = f"choreo-{env_name}"
    if len(plain) <= 62 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", env_name):
        return plain
    stem = re.sub(r"[^a-z0-9-]", "-", env_name.lower())[:39]
    digest = hashlib.sha256(env_name.encode()).hexdigest()[: 63 - len("choreo-") - len(stem) - 1]
    return f"choreo-{stem}-{digest}"
