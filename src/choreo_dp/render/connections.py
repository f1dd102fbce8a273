"""Connections between apps: resolve each against its Environment's apps, then render what it needs.

Pure. A resolved connection gives the caller four environment variables, one egress-side label on
its pod template, and one ingress NetworkPolicy admitting exactly its pods on the target's port.

Addresses are always the target's in-cluster Service, whatever the visibility (a caller inside the
environment never needs the gateway): host ``<app>.<namespace>.svc.cluster.local``, the endpoint's
port, and a URL whose scheme follows the protocol, as in the status of a Project endpoint:
``http`` for REST and GraphQL, ``ws`` for WS, ``grpc`` for gRPC and ``tcp`` for TCP. gRPC and TCP
URLs carry no path (neither protocol has one); ``<NAME>_BASE_PATH`` is the endpoint's basePath for
every protocol, so a client that builds its own URL can.

Visibility, consistent with the Environment's NetworkPolicies (render/environment.py): a default
deny, plus "pods of one project admit pods of the same project". A ``Project`` endpoint resolves
only for callers of its own project (the policy then repeats, port by port, what the project rule
already allows); an ``Organization`` or ``Public`` endpoint resolves for a caller of any project of
the environment. Policies are additive, so each one admits no more than the rule it stands for:
only the caller's pods (its app label and the connection's egress label), only in the environment's
namespace, only on the one port. The gateways' own admission stays with the Environment's policies.

The caller owns the policy: it lives and dies with the connection, and a caller deleted or a
connection dropped takes its opening away through ownerReferences and the operator's prune.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from choreo_dp.api import ChoreoApp
from choreo_dp.api.connections import Connection, env_names, visibility_refusal
from choreo_dp.api.vocabulary import CALLS_LABEL_PREFIX
from choreo_dp.render.endpoints import service_url
from choreo_dp.render.labels import APP_LABEL, PROJECT_LABEL, bounded_name

RESOLVED = "Resolved"


@dataclass(frozen=True)
class ConnectionTarget:
    """The target endpoint's Service, as a caller reaches it."""

    app: str
    namespace: str
    project: str
    endpoint: str
    port: int
    base_path: str
    visibility: str
    url: str

    @property
    def host(self) -> str:
        return f"{self.app}.{self.namespace}.svc.cluster.local"


@dataclass(frozen=True)
class ConnectionResolution:
    connection: Connection
    target: ConnectionTarget | None
    reason: str
    message: str
    target_project: str

    @property
    def resolved(self) -> bool:
        return self.target is not None

    @property
    def target_text(self) -> str:
        return f"{self.target_project}/{self.connection.app}/{self.connection.endpoint}"

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.connection.name,
            "target": self.target_text,
            "resolved": self.resolved,
            "reason": self.reason,
            "message": self.message,
        }
        if self.target is not None:
            out["url"] = self.target.url
        return out


def resolve_connections(caller: ChoreoApp, apps: Mapping[str, ChoreoApp]) -> list[ConnectionResolution]:
    """Judge each of the caller's connections against ``apps``: the valid, not deleting ChoreoApps
    of the caller's Environment (in its namespace), by name."""
    return [_resolve(caller, conn, apps) for conn in caller.spec.connections]


def _resolve(caller: ChoreoApp, conn: Connection, apps: Mapping[str, ChoreoApp]) -> ConnectionResolution:
    wanted_project = conn.project or caller.spec.project

    def unresolved(reason: str, why: str) -> ConnectionResolution:
        return ConnectionResolution(conn, None, reason, f"connection {conn.name}: {why}", wanted_project)

    if conn.app == caller.metadata.name:
        return unresolved("SelfConnection", "an app cannot connect to itself")
    target = apps.get(conn.app)
    if target is None or target.spec.environment != caller.spec.environment:
        return unresolved("AppNotFound", f"no app {conn.app} in environment {caller.spec.environment}")
    if target.spec.project != wanted_project:
        return unresolved(
            "ProjectMismatch", f"app {conn.app} is in project {target.spec.project}, not {wanted_project}"
        )
    endpoint = next((e for e in target.spec.endpoints if e.name == conn.endpoint), None)
    if endpoint is None:
        return unresolved("EndpointNotFound", f"app {conn.app} has no endpoint {conn.endpoint}")
    refusal = visibility_refusal(caller.spec.project, conn, target.spec.project, endpoint.visibility)
    if refusal is not None:
        # The same rule, word for word, as the control plane's refusal at push time.
        return ConnectionResolution(conn, None, "VisibilityForbids", refusal, wanted_project)
    resolved = ConnectionTarget(
        app=conn.app,
        namespace=str(target.metadata.namespace),
        project=target.spec.project,
        endpoint=endpoint.name,
        port=endpoint.port,
        base_path=endpoint.base_path,
        visibility=endpoint.visibility,
        url=service_url(target, endpoint),
    )
    return ConnectionResolution(
        conn, resolved, RESOLVED, f"connection {conn.name}: calls {resolved.url}", target.spec.project
    )


def calls_label(target: ConnectionTarget) -> str:
    # App and endpoint names are DNS labels (no dots), so "<app>.<endpoint>" names one target only.
    return f"{CALLS_LABEL_PREFIX}/{bounded_name(f'{target.app}.{target.endpoint}', 63)}"


def connection_env(resolutions: Sequence[ConnectionResolution]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for res in resolutions:
        if res.target is None:
            continue
        t = res.target
        values = (t.url, t.host, str(t.port), t.base_path)
        out += [{"name": n, "value": v} for n, v in zip(env_names(res.connection.name), values, strict=True)]
    return out


def connection_pod_labels(resolutions: Sequence[ConnectionResolution]) -> dict[str, str]:
    return {calls_label(r.target): "true" for r in resolutions if r.target is not None}


def policy_name(caller_name: str, connection_name: str) -> str:
    # A dot cannot occur in either name, so no two (caller, connection) pairs share a policy name.
    return bounded_name(f"choreo-conn-{caller_name}.{connection_name}", 253)


def connection_policies(
    caller: ChoreoApp, resolutions: Sequence[ConnectionResolution], metadata: Any
) -> list[dict[str, Any]]:
    """One ingress NetworkPolicy per resolved connection, on the target's pods, owned by the caller.

    ``metadata(name)``: the caller's child metadata (its labels and ownerReference)."""
    out: list[dict[str, Any]] = []
    for res in resolutions:
        t = res.target
        if t is None:
            continue
        callers = {
            APP_LABEL: caller.metadata.name,
            PROJECT_LABEL: caller.spec.project,
            calls_label(t): "true",
        }
        out.append(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": metadata(policy_name(caller.metadata.name, res.connection.name)),
                "spec": {
                    "podSelector": {"matchLabels": {APP_LABEL: t.app, PROJECT_LABEL: t.project}},
                    "policyTypes": ["Ingress"],
                    "ingress": [
                        {
                            "from": [{"podSelector": {"matchLabels": callers}}],
                            "ports": [{"protocol": "TCP", "port": t.port}],
                        }
                    ],
                },
            }
        )
    return out
