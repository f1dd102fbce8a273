"""Inputs for the golden tests: one environment, apps of every type and visibility."""

from __future__ import annotations

from typing import Any

from choreo_dp.api import ChoreoApp, Environment
from choreo_dp.render import ClusterCapabilities

ENV_UID = "11111111-1111-1111-1111-111111111111"
APP_UID = "22222222-2222-2222-2222-222222222222"

GATEWAY_API = ClusterCapabilities(gateway_api=True)
INGRESS_ONLY = ClusterCapabilities(gateway_api=False)


def environment(**spec: Any) -> Environment:
    base: dict[str, Any] = {
        "displayName": "Development",
        "registry": {"allowedPrefixes": ["registry.example.com/"], "pullSecretName": "regcred"},
        "gateways": {
            "internal": {
                "gatewayName": "internal",
                "gatewayNamespace": "choreo-gateways",
                "hostname": "*.internal.example.com",
                "ingressClassName": "nginx-internal",
            },
            "external": {
                "gatewayName": "external",
                "gatewayNamespace": "choreo-gateways",
                "hostname": "api.example.com",
                "ingressClassName": "nginx",
            },
        },
        "quota": {"cpu": "8", "memory": "16Gi", "pods": 50},
    }
    base.update(spec)
    return Environment.model_validate(
        {"kind": "Environment", "metadata": {"name": "dev", "uid": ENV_UID}, "spec": base}
    )


def app(name: str = "orders", **spec: Any) -> ChoreoApp:
    base: dict[str, Any] = {
        "environment": "dev",
        "project": "shop",
        "type": "service",
        "image": "registry.example.com/shop/orders:1.2.3",
    }
    base.update(spec)
    return ChoreoApp.model_validate(
        {
            "kind": "ChoreoApp",
            "metadata": {"name": name, "namespace": "choreo-dev", "uid": APP_UID, "generation": 1},
            "spec": base,
        }
    )


def endpoint(
    name: str, visibility: str, protocol: str = "REST", port: int = 8080, base_path: str = "/"
) -> dict[str, Any]:
    return {"name": name, "port": port, "protocol": protocol, "visibility": visibility, "basePath": base_path}


SERVICE_FULL: dict[str, Any] = {
    "replicas": 3,
    "command": ["/app/server"],
    "args": ["--port", "8080"],
    "env": [{"name": "LOG_LEVEL", "value": "info"}],
    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}},
    "probes": {
        "liveness": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 10},
        "readiness": {"tcpSocket": {"port": 8080}, "initialDelaySeconds": 2},
    },
    "endpoints": [endpoint("api", "Project", base_path="/orders")],
}

# case name -> (app, environment, capabilities, secrets hash)
APP_CASES: dict[str, tuple[ChoreoApp, Environment, ClusterCapabilities, str | None]] = {
    "service-project": (app(**SERVICE_FULL), environment(), GATEWAY_API, None),
    "service-organization-gateway": (
        app(endpoints=[endpoint("api", "Organization", base_path="/v1")]),
        environment(),
        GATEWAY_API,
        None,
    ),
    "service-public-gateway": (
        app(endpoints=[endpoint("api", "Public", base_path="/v1"), endpoint("events", "Public", "WS", 9090)]),
        environment(),
        GATEWAY_API,
        None,
    ),
    "service-organization-ingress": (
        app(endpoints=[endpoint("api", "Organization")]),
        environment(),
        INGRESS_ONLY,
        None,
    ),
    "service-public-ingress": (
        app(endpoints=[endpoint("graph", "Public", "GraphQL", base_path="/graphql")]),
        environment(),
        INGRESS_ONLY,
        None,
    ),
    "service-autoscaled": (
        app(
            autoscaling={"minReplicas": 2, "maxReplicas": 6},
            endpoints=[endpoint("grpc", "Project", "gRPC", 50051)],
        ),
        environment(),
        GATEWAY_API,
        None,
    ),
    "service-suspended": (
        app(
            suspend=True,
            autoscaling={"minReplicas": 2, "maxReplicas": 6},
            endpoints=[endpoint("api", "Public")],
        ),
        environment(),
        GATEWAY_API,
        None,
    ),
    "service-with-secrets": (
        app(
            env=[{"name": "MODE", "value": "prod"}],
            secrets=[{"name": "DB_PASSWORD", "keyVaultSecret": "orders-db-password"}],
        ),
        environment(),
        GATEWAY_API,
        "sha256:0123456789abcdef",
    ),
    "webhook": (
        app("hooks", type="webhook", endpoints=[endpoint("in", "Public", base_path="/hooks")]),
        environment(),
        GATEWAY_API,
        None,
    ),
    "worker": (app("consumer", type="worker", replicas=2), environment(), GATEWAY_API, None),
    "scheduled-task": (
        app("nightly", type="scheduledTask", schedule="0 3 * * *"),
        environment(),
        GATEWAY_API,
        None,
    ),
    "scheduled-task-suspended": (
        app("nightly", type="scheduledTask", schedule="*/5 * * * *", suspend=True),
        environment(),
        GATEWAY_API,
        None,
    ),
    "manual-task": (
        app("migrate", type="manualTask", args=["migrate", "up"]),
        environment(),
        GATEWAY_API,
        None,
    ),
    # spec.files (tests/render/test_files.py): plain and Key Vault files, two mount directories.
    "service-with-files": (
        app(
            endpoints=[endpoint("http", "Project")],
            files=[
                {"mountPath": "/config/app.yaml", "content": "level: debug\n"},
                {"mountPath": "/config/rules/limits.json", "content": '{"rps": 10}'},
                {"mountPath": "/secrets/tls.key", "keyVaultSecret": "orders-tls-key"},
                {"mountPath": "/config/ca.pem", "keyVaultSecret": "orders-ca", "version": "0" * 32},
            ],
        ),
        environment(),
        GATEWAY_API,
        "sha256:0123456789abcdef",
    ),
    "scheduled-task-with-files": (
        app(
            "nightly",
            type="scheduledTask",
            schedule="0 3 * * *",
            files=[{"mountPath": "/config/job.ini", "content": "[job]\nbatch = 100\n"}],
        ),
        environment(),
        GATEWAY_API,
        None,
    ),
}

# The agent's ServiceAccount as the chart names it (CHOREO_DP_AGENT_SERVICE_ACCOUNT) when observability is on.
AGENT_SA = ("choreo-system", "choreo-dp-agent")

# case name -> (environment, projects, pull secret source, agent service account)
ENV_CASES: dict[str, tuple[Environment, list[str], dict[str, Any] | None, tuple[str, str] | None]] = {
    "environment-full": (
        environment(),
        ["shop", "billing"],
        {
            "metadata": {
                "name": "regcred",
                "namespace": "choreo-system",
                "labels": {"choreo.dev/pull-secret": "true"},
            },
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": "e30="},
        },
        AGENT_SA,
    ),
    "environment-minimal-retain": (
        Environment.model_validate(
            {
                "kind": "Environment",
                "metadata": {"name": "prod", "uid": ENV_UID},
                "spec": {"namespace": "payments-prod", "production": True, "deletionPolicy": "Retain"},
            }
        ),
        [],
        None,
        None,
    ),
}
