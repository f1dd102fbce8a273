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
    allowed_prefixes: list[AllowedPrefix] = Field(
        default_factory=list,
        max_length=64,
        description=(
            "Registries or repository paths images may come from, matched on registry and path "
            "segment boundaries: registry.example.com, ghcr.io/acme/ (anything below acme), "
            'ghcr.io/acme/app (that repository). Empty or absent admits no image; ["*"] admits any.'
        ),
    )
    pull_secret_name: DnsLabel | None = Field(
        default=None,
        description="A kubernetes.io/dockerconfigjson Secret in the operator's namespace, copied here.",
    )


class KeyVaultSpec(Model):
    url: str = Field(
        max_length=512,
        pattern=r"^https://[A-Za-z0-9.-]+(:[0-9]+)?/?$",
        description="Vault URL, e.g. https://myvault.vault.azure.net/",
    )
    client_id: str | None = Field(default=None, max_length=64, description="Workload identity client id.")
    tenant_id: str | None = Field(default=None, max_length=64, description="Entra tenant id.")
    refresh_interval: str = Field(default="1h", max_length=32, pattern=DURATION)

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
    gateway_name: DnsLabel | None = None
    gateway_namespace: DnsLabel | None = None
    hostname: str | None = Field(
        default=None,
        max_length=253,
        pattern=r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
    )
    ingress_class_name: DnsLabel | None = None


class GatewaysSpec(Model):
    internal: GatewayRef | None = Field(default=None, description="Gateway for Organization endpoints.")
    external: GatewayRef | None = Field(default=None, description="Gateway for Public endpoints.")


class QuotaSpec(Model):
    cpu: Quantity | None = None
    memory: Quantity | None = None
    pods: int | None = Field(default=None, ge=0, le=100000)


class EnvironmentSpec(Model):
    display_name: str | None = Field(default=None, max_length=256)
    namespace: DnsLabel | None = Field(default=None, description="Defaults to choreo-<name>.")
    production: bool = False
    registry: RegistrySpec | None = None
    key_vault: KeyVaultSpec | None = None
    gateways: GatewaysSpec | None = None
    quota: QuotaSpec | None = None
    deletion_policy: Literal["Delete", "Retain"] = "Delete"


EnvironmentPhase = Literal["Pending", "Ready", "Failed", "Terminating"]


class EnvironmentStatus(Model):
    phase: EnvironmentPhase | None = None
    namespace: str | None = None
    apps: int | None = Field(default=None, ge=0)
    observed_generation: int | None = None
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra=CONDITIONS_LIST_MAP,
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
