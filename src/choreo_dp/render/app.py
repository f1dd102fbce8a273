"""ChoreoApp -> Deployment or CronJob, Service, HPA, PDB, HTTPRoutes or Ingresses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from choreo_dp.api import API_VERSION, ChoreoApp, Environment
from choreo_dp.api.choreoapp import LONG_RUNNING_TYPES, Probe
from choreo_dp.api.rollout import RolloutStatus
from choreo_dp.api.vocabulary import FILES_HASH_ANNOTATION, app_secret_name
from choreo_dp.render.capabilities import ClusterCapabilities
from choreo_dp.render.connections import (
    ConnectionResolution,
    connection_env,
    connection_pod_labels,
    connection_policies,
)
from choreo_dp.render.endpoints import EndpointExposure, expose_endpoints
from choreo_dp.render.errors import RenderError
from choreo_dp.render.files import (
    FILES_FS_GROUP,
    file_mounts,
    file_volumes,
    files_configmap,
    files_hash,
    needs_fs_group,
)
from choreo_dp.render.labels import (
    APP_LABEL,
    APP_SERVICE_ACCOUNT,
    EXPOSE_EXTERNAL_LABEL,
    EXPOSE_INTERNAL_LABEL,
    SECRETS_HASH_ANNOTATION,
    app_labels,
    bounded_name,
    owner_reference,
    port_name,
)
from choreo_dp.render.rollout import canary_layout, is_canary

CONTAINER_NAME = "app"
# A date that never comes (February 31st): manual tasks only run via `kubectl create job --from`.
NEVER_SCHEDULE = "0 0 31 2 *"
TMP_VOLUME = "tmp"


@dataclass(frozen=True)
class AppRender:
    manifests: list[dict[str, Any]]
    exposures: list[EndpointExposure] = field(default_factory=list)
    # Canary strategy only (see choreo_dp.render.rollout): the spec's pod template hash, and a note
    # for status.rollout.message when the traffic split is approximate.
    template_revision: str | None = None
    rollout_note: str | None = None

    @property
    def workload(self) -> dict[str, Any]:
        return next(m for m in self.manifests if m["kind"] in ("Deployment", "CronJob"))


def secrets_name(app_name: str) -> str:
    """The Secret the Key Vault sync writes for an app (keys are the env var names)."""
    return app_secret_name(app_name)


def render_app(
    app: ChoreoApp,
    env: Environment,
    caps: ClusterCapabilities,
    *,
    secrets_hash: str | None = None,
    connections: tuple[ConnectionResolution, ...] = (),
    rollout: RolloutStatus | None = None,
    stable_template: dict[str, Any] | None = None,
) -> AppRender:
    uid = (app.metadata.model_extra or {}).get("uid")
    if not uid:
        raise RenderError("MissingUID", "app has no metadata.uid; cannot own its children")
    if not app.metadata.namespace:
        raise RenderError("MissingNamespace", "app has no metadata.namespace")
    ctx = _Ctx(app, env, owner_reference(API_VERSION, "ChoreoApp", app.metadata.name, str(uid)), connections)
    exposures = expose_endpoints(app, env, caps)
    manifests: list[dict[str, Any]] = []
    if app.spec.type in LONG_RUNNING_TYPES:
        manifests.append(_deployment(ctx, exposures, secrets_hash))
        if app.spec.autoscaling is not None and not app.spec.suspend:
            manifests.append(_hpa(ctx))
        if _max_replicas(app) > 1 and not app.spec.suspend:
            manifests.append(_pdb(ctx))
    else:
        manifests.append(_cronjob(ctx, secrets_hash))
    if app.spec.endpoints:
        manifests.append(_service(ctx))
    files_cm = files_configmap(ctx.name, ctx.metadata(), app.spec.files)
    if files_cm is not None:
        manifests.append(files_cm)
    for exp in exposures:
        if exp.routed:
            manifests.append(_httproute(ctx, exp) if caps.gateway_api else _ingress(ctx, exp))
    manifests += connection_policies(app, connections, ctx.metadata)
    if is_canary(app):
        layout = canary_layout(manifests, app, caps, rollout, stable_template)
        return AppRender(layout.manifests, exposures, layout.revision, layout.note)
    return AppRender(manifests, exposures)


@dataclass(frozen=True)
class _Ctx:
    app: ChoreoApp
    env: Environment
    owner: dict[str, Any]
    # Resolved ones add env vars, a pod label and a NetworkPolicy; unresolved ones add nothing.
    connections: tuple[ConnectionResolution, ...] = ()

    @property
    def name(self) -> str:
        return self.app.metadata.name

    @property
    def namespace(self) -> str:
        return str(self.app.metadata.namespace)

    @property
    def labels(self) -> dict[str, str]:
        return app_labels(self.env.metadata.name, self.app.spec.project, self.name)

    def metadata(self, name: str | None = None) -> dict[str, Any]:
        return {
            "name": name or self.name,
            "namespace": self.namespace,
            "labels": self.labels,
            "ownerReferences": [self.owner],
        }


def _max_replicas(app: ChoreoApp) -> int:
    if app.spec.autoscaling is not None:
        return app.spec.autoscaling.max_replicas
    return app.spec.replicas


def _selector(ctx: _Ctx) -> dict[str, str]:
    # Deployment selectors are immutable: keep them to the one label that never changes.
    return {APP_LABEL: ctx.name}


def _probe(probe: Probe) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if probe.http_get is not None:
        out["httpGet"] = {"path": probe.http_get.path, "port": probe.http_get.port}
    elif probe.tcp_socket is not None:
        out["tcpSocket"] = {"port": probe.tcp_socket.port}
    for key, value in (
        ("initialDelaySeconds", probe.initial_delay_seconds),
        ("periodSeconds", probe.period_seconds),
        ("failureThreshold", probe.failure_threshold),
    ):
        if value is not None:
            out[key] = value
    return out


def _container(ctx: _Ctx) -> dict[str, Any]:
    spec = ctx.app.spec
    env: list[dict[str, Any]] = [{"name": e.name, "value": e.value} for e in spec.env]
    env += [
        {"name": s.name, "valueFrom": {"secretKeyRef": {"name": secrets_name(ctx.name), "key": s.name}}}
        for s in spec.secrets
    ]
    env += connection_env(ctx.connections)
    c: dict[str, Any] = {"name": CONTAINER_NAME, "image": spec.image}
    if spec.command:
        c["command"] = list(spec.command)
    if spec.args:
        c["args"] = list(spec.args)
    if env:
        c["env"] = env
    if spec.endpoints:
        c["ports"] = [
            {"name": port_name(e.name), "containerPort": e.port, "protocol": "TCP"} for e in spec.endpoints
        ]
    if spec.resources is not None:
        resources = spec.resources.to_k8s()
        if resources:
            c["resources"] = resources
    if spec.probes is not None:
        if spec.probes.liveness is not None:
            c["livenessProbe"] = _probe(spec.probes.liveness)
        if spec.probes.readiness is not None:
            c["readinessProbe"] = _probe(spec.probes.readiness)
    c["securityContext"] = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
    }
    c["volumeMounts"] = [{"name": TMP_VOLUME, "mountPath": "/tmp"}, *file_mounts(spec.files)]
    return c


def _pod_template(
    ctx: _Ctx, secrets_hash: str | None, exposures: list[EndpointExposure], restart_policy: str | None
) -> dict[str, Any]:
    labels = dict(ctx.labels)
    if any(e.routed and e.endpoint.visibility == "Organization" for e in exposures):
        labels[EXPOSE_INTERNAL_LABEL] = "true"
    if any(e.routed and e.endpoint.visibility == "Public" for e in exposures):
        labels[EXPOSE_EXTERNAL_LABEL] = "true"
    labels.update(connection_pod_labels(ctx.connections))
    metadata: dict[str, Any] = {"labels": labels}
    if ctx.app.spec.secrets or any(f.is_secret for f in ctx.app.spec.files):
        if secrets_hash is None:
            raise RenderError("SecretsNotSynced", "app has secrets but no synced secret values hash")
        # Changing the hash changes the template, which rolls the pods onto the new values.
        metadata["annotations"] = {SECRETS_HASH_ANNOTATION: secrets_hash}
    plain_hash = files_hash(ctx.app.spec.files)
    if plain_hash is not None:
        metadata.setdefault("annotations", {})[FILES_HASH_ANNOTATION] = plain_hash
    pod: dict[str, Any] = {
        "serviceAccountName": APP_SERVICE_ACCOUNT,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [_container(ctx)],
        "volumes": [
            {"name": TMP_VOLUME, "emptyDir": {"sizeLimit": "256Mi"}},
            *file_volumes(ctx.name, ctx.app.spec.files),
        ],
    }
    if needs_fs_group(ctx.app.spec.files):
        pod["securityContext"]["fsGroup"] = FILES_FS_GROUP
    if restart_policy is not None:
        pod["restartPolicy"] = restart_policy
    return {"metadata": metadata, "spec": pod}


def _deployment(ctx: _Ctx, exposures: list[EndpointExposure], secrets_hash: str | None) -> dict[str, Any]:
    spec = ctx.app.spec
    dep_spec: dict[str, Any] = {}
    if spec.suspend:
        dep_spec["replicas"] = 0
    elif spec.autoscaling is None:
        dep_spec["replicas"] = spec.replicas
    # With an HPA the field is left out of the apply, so this manager never owns it and the
    # HPA's writes are not undone by the next reconcile.
    dep_spec.update(
        {
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": _selector(ctx)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
            "template": _pod_template(ctx, secrets_hash, exposures, None),
        }
    )
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": ctx.metadata(), "spec": dep_spec}


def _cronjob(ctx: _Ctx, secrets_hash: str | None) -> dict[str, Any]:
    spec = ctx.app.spec
    manual = spec.type == "manualTask"
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": ctx.metadata(),
        "spec": {
            "schedule": NEVER_SCHEDULE if manual else spec.schedule,
            "suspend": True if manual else spec.suspend,
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": 300,
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {
                "metadata": {"labels": ctx.labels},
                "spec": {
                    "backoffLimit": 2,
                    "ttlSecondsAfterFinished": 86400,
                    "template": _pod_template(ctx, secrets_hash, [], "Never"),
                },
            },
        },
    }


def _service(ctx: _Ctx) -> dict[str, Any]:
    ports = []
    for ep in ctx.app.spec.endpoints:
        port: dict[str, Any] = {
            "name": port_name(ep.name),
            "port": ep.port,
            "targetPort": ep.port,
            "protocol": "TCP",
        }
        app_protocol = {"gRPC": "kubernetes.io/h2c", "WS": "kubernetes.io/ws", "TCP": None}.get(
            ep.protocol, "http"
        )
        if app_protocol:
            port["appProtocol"] = app_protocol
        ports.append(port)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": ctx.metadata(),
        "spec": {"type": "ClusterIP", "selector": _selector(ctx), "ports": ports},
    }


def _hpa(ctx: _Ctx) -> dict[str, Any]:
    auto = ctx.app.spec.autoscaling
    assert auto is not None
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": ctx.metadata(),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": ctx.name},
            "minReplicas": auto.min_replicas,
            "maxReplicas": auto.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": auto.target_cpu_utilization_percentage,
                        },
                    },
                }
            ],
        },
    }


def _pdb(ctx: _Ctx) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": ctx.metadata(),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _selector(ctx)}},
    }


def route_name(app_name: str, endpoint_name: str) -> str:
    return bounded_name(f"{app_name}-{endpoint_name}", 253)


def _httproute(ctx: _Ctx, exp: EndpointExposure) -> dict[str, Any]:
    gw = exp.gateway
    assert gw is not None and gw.gateway_name is not None
    parent: dict[str, Any] = {
        "group": "gateway.networking.k8s.io",
        "kind": "Gateway",
        "name": gw.gateway_name,
    }
    if gw.gateway_namespace:
        parent["namespace"] = gw.gateway_namespace
    rule: dict[str, Any] = {
        "matches": [{"path": {"type": "PathPrefix", "value": exp.path}}],
        "backendRefs": [{"name": ctx.name, "port": exp.endpoint.port}],
    }
    if exp.rewrite_to is not None:
        rule["filters"] = [
            {
                "type": "URLRewrite",
                "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": exp.rewrite_to}},
            }
        ]
    spec: dict[str, Any] = {"parentRefs": [parent]}
    if exp.host:
        spec["hostnames"] = [exp.host]
    spec["rules"] = [rule]
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": ctx.metadata(route_name(ctx.name, exp.endpoint.name)),
        "spec": spec,
    }


def _ingress(ctx: _Ctx, exp: EndpointExposure) -> dict[str, Any]:
    gw = exp.gateway
    assert gw is not None and gw.ingress_class_name is not None
    rule: dict[str, Any] = {
        "http": {
            "paths": [
                {
                    "path": exp.path,
                    "pathType": "Prefix",
                    "backend": {"service": {"name": ctx.name, "port": {"number": exp.endpoint.port}}},
                }
            ]
        }
    }
    if exp.host:
        rule = {"host": exp.host, **rule}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": ctx.metadata(route_name(ctx.name, exp.endpoint.name)),
        "spec": {"ingressClassName": gw.ingress_class_name, "rules": [rule]},
    }
