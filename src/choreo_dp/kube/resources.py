"""The resource kinds the product talks to, and how their URLs are built."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote


@dataclass(frozen=True, slots=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(
        self, namespace: str | None = None, name: str | None = None, subresource: str | None = None
    ) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{quote(namespace, safe='')}"
        elif self.namespaced and name is not None:
            raise ValueError(f"{self.kind} {name!r} is namespaced: a namespace is required")
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{quote(name, safe='')}"
            if subresource:
                base += f"/{subresource}"
        return base


NAMESPACES = Resource("", "v1", "namespaces", "Namespace", False)
SECRETS = Resource("", "v1", "secrets", "Secret", True)
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap", True)
SERVICEACCOUNTS = Resource("", "v1", "serviceaccounts", "ServiceAccount", True)
SERVICES = Resource("", "v1", "services", "Service", True)
PODS = Resource("", "v1", "pods", "Pod", True)
EVENTS = Resource("", "v1", "events", "Event", True)
RESOURCEQUOTAS = Resource("", "v1", "resourcequotas", "ResourceQuota", True)
LIMITRANGES = Resource("", "v1", "limitranges", "LimitRange", True)
DEPLOYMENTS = Resource("apps", "v1", "deployments", "Deployment", True)
REPLICASETS = Resource("apps", "v1", "replicasets", "ReplicaSet", True)
CRONJOBS = Resource("batch", "v1", "cronjobs", "CronJob", True)
JOBS = Resource("batch", "v1", "jobs", "Job", True)
HPAS = Resource("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", True)
PDBS = Resource("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", True)
NETWORKPOLICIES = Resource("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", True)
INGRESSES = Resource("networking.k8s.io", "v1", "ingresses", "Ingress", True)
HTTPROUTES = Resource("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute", True)
GATEWAYS = Resource("gateway.networking.k8s.io", "v1", "gateways", "Gateway", True)
ROLES = Resource("rbac.authorization.k8s.io", "v1", "roles", "Role", True)
ROLEBINDINGS = Resource("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True)
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease", True)
CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False)
ENVIRONMENTS = Resource("choreo.dev", "v1alpha1", "environments", "Environment", False)
CHOREOAPPS = Resource("choreo.dev", "v1alpha1", "choreoapps", "ChoreoApp", True)
DATAPLANES = Resource("choreo.dev", "v1alpha1", "dataplanes", "DataPlane", False)

ALL: tuple[Resource, ...] = (
    NAMESPACES,
    SECRETS,
    CONFIGMAPS,
    SERVICEACCOUNTS,
    SERVICES,
    PODS,
    EVENTS,
    RESOURCEQUOTAS,
    LIMITRANGES,
    DEPLOYMENTS,
    REPLICASETS,
    CRONJOBS,
    JOBS,
    HPAS,
    PDBS,
    NETWORKPOLICIES,
    INGRESSES,
    HTTPROUTES,
    GATEWAYS,
    ROLES,
    ROLEBINDINGS,
    LEASES,
    CRDS,
    ENVIRONMENTS,
    CHOREOAPPS,
    DATAPLANES,
)
_BY_KIND = {(r.api_version, r.kind): r for r in ALL}


def for_kind(api_version: str, kind: str) -> Resource:
    """The resource for a manifest's apiVersion and kind; KeyError for kinds the product does not use."""
    try:
        return _BY_KIND[(api_version, kind)]
    except KeyError:
        raise KeyError(f"unknown resource kind {api_version} {kind}") from None
