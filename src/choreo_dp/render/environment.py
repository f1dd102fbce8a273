"""Environment -> Namespace, ResourceQuota, LimitRange, NetworkPolicies, app ServiceAccount, pull secret,
and the agent's read-only Role + RoleBinding for pods, logs and Events.

Also the pure rules of the namespace boundary: which namespaces are protected, which Environment a
namespace belongs to (its mark), and which Secrets may be copied as pull secrets.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from typing import Any

from choreo_dp.api import API_VERSION, Environment
from choreo_dp.api.vocabulary import AGENT_OBSERVE_ROLE
from choreo_dp.render.errors import PolicyViolation, RenderError
from choreo_dp.render.labels import (
    APP_SERVICE_ACCOUNT,
    ENVIRONMENT_UID_KEY,
    EXPOSE_EXTERNAL_LABEL,
    EXPOSE_INTERNAL_LABEL,
    PROJECT_LABEL,
    PROTECTED_LABEL,
    PULL_SECRET_LABEL,
    PULL_SECRET_OPT_IN,
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
PULL_SECRET_KEY = ".dockerconfigjson"
RBAC_API_VERSION = "rbac.authorization.k8s.io/v1"
# What the agent may read in an Environment's namespace to answer log, event and live-state streams:
# the pods, their logs and Events, and a list of the apps' children (live state). The operator must
# hold every one of these itself (the apiserver's RBAC escalation check), so the chart's operator
# ClusterRole carries them too; pods/log only has "get". Never Secrets or ConfigMaps.
AGENT_OBSERVE_RULES: tuple[dict[str, Any], ...] = (
    {"apiGroups": [""], "resources": ["pods", "events"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["services"], "verbs": ["list"]},
    {"apiGroups": ["apps"], "resources": ["deployments", "replicasets"], "verbs": ["list"]},
    {"apiGroups": ["batch"], "resources": ["cronjobs", "jobs"], "verbs": ["list"]},
    {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"], "verbs": ["list"]},
    {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": ["list"]},
    {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses", "networkpolicies"], "verbs": ["list"]},
    {"apiGroups": ["gateway.networking.k8s.io"], "resources": ["httproutes"], "verbs": ["list"]},
)


def project_policy_name(project: str) -> str:
    return bounded_name(f"choreo-project-{project}", 253)


def _uid(env: Environment) -> str:
    uid = (env.metadata.model_extra or {}).get("uid")
    if not uid:
        raise RenderError("MissingUID", "environment has no metadata.uid; cannot own its children")
    return str(uid)


def render_namespace(env: Environment) -> dict[str, Any]:
    """The Environment's Namespace, carrying its mark (see ``ENVIRONMENT_UID_KEY``)."""
    uid = _uid(env)
    labels = {**environment_labels(env.metadata.name), ENVIRONMENT_UID_KEY: uid}
    meta: dict[str, Any] = {
        "name": env.target_namespace,
        "labels": labels,
        "annotations": {ENVIRONMENT_UID_KEY: uid},
    }
    if env.spec.deletion_policy == "Delete":
        # Only then may the garbage collector take the namespace (and all in it) with the Environment.
        meta["ownerReferences"] = [owner_reference(API_VERSION, "Environment", env.metadata.name, uid)]
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def namespace_owner(namespace: Mapping[str, Any] | None) -> str | None:
    """The uid of the Environment a live namespace was created for, or None when it carries no
    consistent mark (label and annotation must agree: a namespace is never ours by half)."""
    meta = (namespace or {}).get("metadata") or {}
    label = (meta.get("labels") or {}).get(ENVIRONMENT_UID_KEY)
    annotation = (meta.get("annotations") or {}).get(ENVIRONMENT_UID_KEY)
    return str(label) if label and label == annotation else None


# Protected namespaces: the same rules for the operator and the agent (both read
# CHOREO_DP_PROTECTED_NAMESPACES; each adds its own and the operator's namespace).
DEFAULT_PROTECTED_NAMESPACES: tuple[str, ...] = ("kube-*", "default")
PROTECTED_NAMESPACES_ENV = "CHOREO_DP_PROTECTED_NAMESPACES"
_PATTERN = re.compile(r"^[a-z0-9*?\[\]!-]{1,63}$")


def parse_protected_namespaces(text: str) -> tuple[str, ...]:
    """``kube-*,default,monitoring`` -> patterns; ValueError naming the first bad one.

    Empty text is an empty list (only the product's own namespaces stay protected).
    """
    patterns = tuple(p.strip() for p in text.split(",") if p.strip())
    for pattern in patterns:
        if not _PATTERN.match(pattern):
            raise ValueError(
                f"invalid namespace pattern {pattern!r}: lowercase letters, digits, '-' and the globs * ? [ ] !"
            )
    return patterns


def protected_reason(name: str, namespace: Mapping[str, Any] | None, patterns: Iterable[str]) -> str | None:
    """Why namespace ``name`` may never be used by an Environment, or None.

    ``patterns``: shell-style globs (``kube-*``) of protected names, matched whether or not the
    namespace exists; ``namespace``: the live object, if any, whose ``choreo.dev/protected`` label
    (any value) protects it too.
    """
    for pattern in patterns:
        if fnmatch.fnmatchcase(name, pattern):
            return f"namespace {name!r} is protected (matches {pattern!r}); Environments may not use it"
    labels = (((namespace or {}).get("metadata") or {}).get("labels")) or {}
    if PROTECTED_LABEL in labels:
        return f"namespace {name!r} is protected (labelled {PROTECTED_LABEL}); Environments may not use it"
    return None


def check_pull_secret(
    secret: Mapping[str, Any] | None, name: str, source_namespace: str
) -> PolicyViolation | None:
    """Whether ``secret`` (read from the operator's namespace) may be copied as a pull secret.

    Only registry credentials the cluster admin opted in: type kubernetes.io/dockerconfigjson with
    a .dockerconfigjson key and the label choreo.dev/pull-secret=true. Anything else (a token, TLS
    keys, an Opaque credentials Secret) stays where it is, whatever an Environment names.
    """
    where = f"pull secret {name!r} in namespace {source_namespace!r}"
    if secret is None:
        return PolicyViolation("PullSecretNotFound", f"{where} not found")
    kind = secret.get("type") or "Opaque"
    if kind != PULL_SECRET_TYPE:
        return PolicyViolation(
            "PullSecretNotAllowed", f"{where} is of type {kind!r}; only {PULL_SECRET_TYPE} Secrets are copied"
        )
    labels = ((secret.get("metadata") or {}).get("labels")) or {}
    if labels.get(PULL_SECRET_LABEL) != PULL_SECRET_OPT_IN:
        return PolicyViolation(
            "PullSecretNotAllowed",
            f"{where} is not labelled {PULL_SECRET_LABEL}={PULL_SECRET_OPT_IN}; "
            "only Secrets opted in with that label are copied",
        )
    if not (secret.get("data") or {}).get(PULL_SECRET_KEY):
        return PolicyViolation("PullSecretNotAllowed", f"{where} has no {PULL_SECRET_KEY} key")
    return None


def render_environment(
    env: Environment,
    *,
    projects: Iterable[str] = (),
    pull_secret: dict[str, Any] | None = None,
    agent_service_account: tuple[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Every object the Environment owns, Namespace first.

    ``projects``: the projects of the apps living in the environment (one NetworkPolicy each);
    ``pull_secret``: the source registry Secret from the operator's namespace, if configured, found
    and allowed (:func:`check_pull_secret`; anything else is refused here too);
    ``agent_service_account``: (namespace, name) of the agent's ServiceAccount when observability is
    on; then the agent gets read access to pods, pods/log and Events here and nowhere else.
    """
    uid = _uid(env)
    ns = env.target_namespace
    labels = environment_labels(env.metadata.name)
    owner = owner_reference(API_VERSION, "Environment", env.metadata.name, uid)

    def meta(name: str) -> dict[str, Any]:
        return {"name": name, "namespace": ns, "labels": dict(labels), "ownerReferences": [owner]}

    out: list[dict[str, Any]] = [render_namespace(env)]

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
        source = str((pull_secret.get("metadata") or {}).get("namespace") or "")
        refused = check_pull_secret(pull_secret, pull_name, source)
        if refused is not None:
            raise RenderError(refused.reason, refused.message)
        sa["imagePullSecrets"] = [{"name": pull_name}]
        copy: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": meta(pull_name),
            "type": PULL_SECRET_TYPE,
            # The credentials alone: nothing else the source may hold travels with them.
            "data": {PULL_SECRET_KEY: pull_secret["data"][PULL_SECRET_KEY]},
        }
        out.append(copy)
    out.append(sa)
    if agent_service_account is not None:
        out.extend(_agent_observe(meta, agent_service_account))
    return out


def _agent_observe(meta: Any, service_account: tuple[str, str]) -> list[dict[str, Any]]:
    """Role + RoleBinding granting the agent read access in this namespace only.

    Owned by the Environment like every other child, so they go with the namespace and never
    outlive the Environment that asked for them.
    """
    sa_namespace, sa_name = service_account
    role = {
        "apiVersion": RBAC_API_VERSION,
        "kind": "Role",
        "metadata": meta(AGENT_OBSERVE_ROLE),
        "rules": [
            {k: list(v) if isinstance(v, list) else v for k, v in rule.items()}
            for rule in AGENT_OBSERVE_RULES
        ],
    }
    binding = {
        "apiVersion": RBAC_API_VERSION,
        "kind": "RoleBinding",
        "metadata": meta(AGENT_OBSERVE_ROLE),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": AGENT_OBSERVE_ROLE},
        "subjects": [{"kind": "ServiceAccount", "name": sa_name, "namespace": sa_namespace}],
    }
    return [role, binding]


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
