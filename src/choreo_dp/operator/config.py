"""Operator configuration: what the CLI, ``choreo-dp run`` and the sandbox pass to :func:`run_operator`."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from choreo_dp.api import Condition, Environment
from choreo_dp.observability.health import Liveness
from choreo_dp.render.environment import (
    DEFAULT_PROTECTED_NAMESPACES,
    PROTECTED_NAMESPACES_ENV,
    parse_protected_namespaces,
)

if TYPE_CHECKING:
    from choreo_dp.kube import KubeClient

DEFAULT_OPERATOR_NAMESPACE = "choreo-system"
AGENT_SERVICE_ACCOUNT_ENV = "CHOREO_DP_AGENT_SERVICE_ACCOUNT"


def parse_service_account(text: str) -> tuple[str, str]:
    """``namespace:name`` -> (namespace, name); ValueError saying the expected form."""
    namespace, sep, name = text.strip().partition(":")
    label = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    subdomain = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
    if not sep or not label.match(namespace) or not subdomain.match(name):
        raise ValueError(
            f"invalid service account {text!r}: expected namespace:name, e.g. choreo-system:choreo-dp-agent"
        )
    return namespace, name


# Unset (the sandbox, where the agent runs as admin) or empty: no per-namespace Role for the agent.
def _agent_service_account_from_env() -> tuple[str, str] | None:
    raw = os.environ.get(AGENT_SERVICE_ACCOUNT_ENV, "").strip()
    return parse_service_account(raw) if raw else None


# Namespaces no Environment may use (shell-style globs), besides the operator's own namespace
# (always protected) and any namespace labelled choreo.dev/protected.
def _protected_from_env() -> tuple[str, ...]:
    raw = os.environ.get(PROTECTED_NAMESPACES_ENV)
    return DEFAULT_PROTECTED_NAMESPACES if raw is None else parse_protected_namespaces(raw)


class SecretsResult(Protocol):
    @property
    def secret_name(self) -> str: ...
    @property
    def values_hash(self) -> str | None: ...
    @property
    def ready(self) -> bool: ...
    @property
    def condition(self) -> Condition: ...


class SecretsPort(Protocol):
    """What the operator needs from the Key Vault sync (``choreo_dp.secrets.SecretSyncer``)."""

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def sync_app(self, app_obj: Any, env: Environment) -> SecretsResult: ...
    async def forget_app(self, namespace: str, name: str) -> None: ...


SecretsFactory = Callable[["KubeClient"], SecretsPort]


def default_key_vault_from_env() -> Any:
    """The chart's default Key Vault (``CHOREO_DP_DEFAULT_KEYVAULT_*``) for Environments without one."""
    from choreo_dp.api.environment import KeyVaultSpec

    url = os.environ.get("CHOREO_DP_DEFAULT_KEYVAULT_URL")
    if not url:
        return None
    fields = {
        "url": url,
        "clientId": os.environ.get("CHOREO_DP_DEFAULT_KEYVAULT_CLIENT_ID") or None,
        "tenantId": os.environ.get("CHOREO_DP_DEFAULT_KEYVAULT_TENANT_ID") or None,
        "refreshInterval": os.environ.get("CHOREO_DP_DEFAULT_KEYVAULT_REFRESH_INTERVAL") or "1h",
    }
    return KeyVaultSpec.model_validate({k: v for k, v in fields.items() if v is not None})


def default_secrets_factory(kube: KubeClient) -> SecretsPort:
    from choreo_dp.secrets import SecretSyncer

    return SecretSyncer(kube, default_key_vault=default_key_vault_from_env())


@dataclass
class OperatorConfig:
    kubeconfig: str | None = None
    operator_namespace: str = field(
        default_factory=lambda: os.environ.get("CHOREO_DP_OPERATOR_NAMESPACE", DEFAULT_OPERATOR_NAMESPACE)
    )
    # Health (/healthz) and metrics (/metrics) servers; None = not served (e.g. in tests).
    listen_host: str = "127.0.0.1"
    health_port: int | None = None
    metrics_port: int | None = None
    # Probes of other loops in the same process (``choreo-dp run``: the agent) that /healthz covers too.
    extra_liveness: list[Liveness] = field(default_factory=list)
    # Concurrent reconciles; each is a few API calls, so this bounds in-flight writes too.
    workers: int = 16
    # Safety-net resyncs: every app/environment is reconciled at least this often.
    app_resync_seconds: float = 300.0
    env_resync_seconds: float = 30.0
    # Progressing apps are looked at again after this long even without events.
    progressing_requeue_seconds: float = 30.0
    liveness_max_silence: float = 60.0
    # How long workers wait for the ChoreoApp listing before reconciling anyway.
    cache_sync_timeout: float = 30.0
    # A connected DataPlane whose agent has not renewed its heartbeat for this long (unless its
    # status.heartbeatBoundSeconds says otherwise) is marked not connected.
    dataplane_heartbeat_bound_seconds: float = 45.0
    secrets_factory: SecretsFactory | None = default_secrets_factory
    # None = discover (gateway.networking.k8s.io/v1 served?); True/False to force.
    gateway_api: bool | None = None
    # Globs of namespaces no Environment may use, whether they exist or not. Replaces the default
    # list; the operator's own namespace is protected whatever it says.
    protected_namespaces: tuple[str, ...] = field(default_factory=_protected_from_env)
    # (namespace, name) of the agent's ServiceAccount, given only when observability is on: each
    # Environment's namespace then gets a Role + RoleBinding letting it read pods, logs and Events.
    agent_service_account: tuple[str, str] | None = field(default_factory=_agent_service_account_from_env)

    @property
    def protected_patterns(self) -> tuple[str, ...]:
        return (*self.protected_namespaces, self.operator_namespace)
