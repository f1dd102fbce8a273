"""Environment -> Namespace, ResourceQuota, LimitRange, NetworkPolicies, app ServiceAccount, pull secret."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from choreo_dp.api import API_VERSION, Environment
from choreo_dp.render.errors import RenderError
from choreo_dp.render.labels import (
    APP_SERVICE_ACCOUNT,
    EXPOSE_EXTERNAL_LABEL,
    EXPOSE_INTERNAL_LABEL,
    PROJECT_LABEL,
    bounded_name,
    environment_labels,
    owner_reference,
)

QUOTA_NAME = "choreo-quota"
LIMITRANGE_NAME = "choreo-defaults"
DENY_POLICY = "choreo-default-deny-ingress"
# Containers without resources get these, so a quota on requests never rejects their pods.
DEFAULT_LIMITS = {"cpu": "500m", "memory": "512Mi"}
DEFAULT_REQUESTS = {"cpu": "50m", "memory": "64Mi"}
PULL_SECRET_TYPE = "kubernetes.io/dockerconfigjson"


def project_policy_name(project: str) -> str:
    return bounded_name(f"choreo-project-{project}", 253)


def render_environment(
    env: Environment,
    *,
    projects: Iterable[str] = (),
    pull_secret: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Every object the Environment owns, Namespace first.

    ``projects``: the projects of the apps living in the environment (one NetworkPolicy each);
    ``pull_secret``: the source registry Secret from the operator's namespace, if configured and found.
    """
    uid = (env.metadata.model_extra or {}).get("uid")
    if not uid:
        raise RenderError("MissingUID", "environment has no metadata.uid; cannot own its children")
    ns = env.target_namespace
    labels = environment_labels(env.metadata.name)
    owner = owner_reference(API_VERSION, "Environment", env.metadata.name, str(uid))

    def meta(name: str) -> dict[str, Any]:
        return {"name": name, "namespace": ns, "labels": dict(labels), "ownerReferences": [owner]}

    ns_meta: dict[str, Any] = {"name": ns, "labels": dict(labels)}
    if env.spec.deletion_policy == "Delete":
        # Only then may the garbage collector take the namespace (and all in it) with the Environment.
        ns_meta["ownerReferences"] = [owner]
    out: list[dict[str, Any]] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": ns_meta}]

    quota = env.spec.quota
    if quota is not None and (quota.cpu or quota.memory or quota.pods is not None):
        hard: dict[str, str] = {}
        if quota.cpu:
            hard["requests.cpu"] = quota.cpu
            hard["limits.cpu"] = quota.cpu
        if quota.memory:
            hard["requests.memory"] = quota.memory
            hard["limits.memory"] = quota.memory
        if quota.pods is not None:
            hard["pods"] = str(quota.pods)
        out.append(
            {
                "apiVersion": "v1",
                "kind": "ResourceQuota",
                "metadata": meta(QUOTA_NAME),
                "spec": {"hard": hard},
            }
        )

    out.append(
        {
            "apiVersion": "v1",
            "kind": "LimitRange",
            "metadata": meta(LIMITRANGE_NAME),
            "spec": {
                "limits": [
                    {
                        "type": "Container",
                        "default": dict(DEFAULT_LIMITS),
                        "defaultRequest": dict(DEFAULT_REQUESTS),
                    }
                ]
            },
        }
    )
    out.extend(_network_policies(env, meta, sorted(set(projects))))

    sa: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": meta(APP_SERVICE_ACCOUNT),
        "automountServiceAccountToken": False,
    }
    pull_name = env.spec.registry.pull_secret_name if env.spec.registry else None
    if pull_name and pull_secret is not None:
        sa["imagePullSecrets"] = [{"name": pull_name}]
        copy: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": meta(pull_name),
            "type": pull_secret.get("type") or PULL_SECRET_TYPE,
            "data": dict(pull_secret.get("data") or {}),
        }
        out.append(copy)
    out.append(sa)
    return out


def _network_policies(env: Environment, meta: Any, projects: list[str]) -> list[dict[str, Any]]:
    def policy(name: str, pod_selector: dict[str, Any], ingress: list[dict[str, Any]]) -> dict[str, Any]:
        spec: dict[str, Any] = {"podSelector": pod_selector, "policyTypes": ["Ingress"]}
        if ingress:
            spec["ingress"] = ingress
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": meta(name),
            "spec": spec,
        }

    out = [policy(DENY_POLICY, {}, [])]
    for project in projects:
        same = {"matchLabels": {PROJECT_LABEL: project}}
        out.append(policy(project_policy_name(project), same, [{"from": [{"podSelector": same}]}]))
    gateways = env.spec.gateways
    for which, label, ref in (
        ("internal", EXPOSE_INTERNAL_LABEL, gateways.internal if gateways else None),
        ("external", EXPOSE_EXTERNAL_LABEL, gateways.external if gateways else None),
    ):
        if ref is None or not ref.gateway_namespace:
            # Without the gateway's namespace there is nothing to allow; routed traffic stays denied
            # (documented in docs/operator.md).
            continue
        source = {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ref.gateway_namespace}}
        }
        out.append(
            policy(f"choreo-allow-{which}-gateway", {"matchLabels": {label: "true"}}, [{"from": [source]}])
        )
    return out
