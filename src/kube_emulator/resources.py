"""The resource table: built-in kinds the product touches plus whatever CRDs define.

Discovery, routing, table printing and storage all read this one registry, so a CRD
becomes servable the moment it is registered here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(slots=True)
class CrdVersion:
    """What one served version of a CRD contributes: its schema and printer columns."""

    name: str
    schema: JSON | None
    printer_columns: list[JSON]
    storage: bool


@dataclass(slots=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: frozenset[str] = frozenset()
    has_generation: bool = True
    singular: str = ""
    verbs: tuple[str, ...] = ALL_VERBS
    # CRDs only: schema of this served version (None for built-ins).
    crd: CrdVersion | None = None
    crd_name: str = ""
    storage_version: str = ""

    def __post_init__(self) -> None:
        if not self.singular:
            self.singular = self.kind.lower()
        if not self.storage_version:
            self.storage_version = self.version

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_version(self) -> str:
        return self.api_version

    @property
    def storage_key(self) -> tuple[str, str]:
        """Objects live per (group, plural): every served version of a CRD shares them."""
        return (self.group, self.plural)

    @property
    def qualified(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources


def _b(
    group: str,
    version: str,
    plural: str,
    kind: str,
    namespaced: bool = True,
    short: tuple[str, ...] = (),
    cats: tuple[str, ...] = (),
    status: bool = False,
    generation: bool = True,
    verbs: tuple[str, ...] = ALL_VERBS,
    extra_sub: tuple[str, ...] = (),
) -> ResourceType:
    subs = set(extra_sub)
    if status:
        subs.add("status")
    return ResourceType(
        group=group,
        version=version,
        plural=plural,
        kind=kind,
        namespaced=namespaced,
        short_names=short,
        categories=cats,
        subresources=frozenset(subs),
        has_generation=generation,
        verbs=verbs,
    )


ALL = ("all",)
BUILTINS: tuple[ResourceType, ...] = (
    _b("", "v1", "namespaces", "Namespace", False, ("ns",), status=True, generation=False),
    _b("", "v1", "configmaps", "ConfigMap", short=("cm",), generation=False),
    _b("", "v1", "secrets", "Secret", generation=False),
    _b("", "v1", "serviceaccounts", "ServiceAccount", short=("sa",), generation=False),
    _b("", "v1", "services", "Service", short=("svc",), cats=ALL, status=True, generation=False),
    _b("", "v1", "endpoints", "Endpoints", short=("ep",), generation=False),
    _b("", "v1", "events", "Event", short=("ev",), generation=False),
    _b("", "v1", "pods", "Pod", short=("po",), cats=ALL, status=True, generation=False, extra_sub=("log",)),
    _b("", "v1", "resourcequotas", "ResourceQuota", short=("quota",), status=True, generation=False),
    _b("", "v1", "limitranges", "LimitRange", short=("limits",), generation=False),
    _b("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", short=("pvc",), status=True),
    _b("", "v1", "nodes", "Node", False, ("no",), status=True, generation=False),
    _b(
        "apps",
        "v1",
        "deployments",
        "Deployment",
        short=("deploy",),
        cats=ALL,
        status=True,
        extra_sub=("scale",),
    ),
    _b("apps", "v1", "replicasets", "ReplicaSet", short=("rs",), cats=ALL, status=True, extra_sub=("scale",)),
    _b("apps", "v1", "statefulsets", "StatefulSet", short=("sts",), cats=ALL, status=True),
    _b("apps", "v1", "daemonsets", "DaemonSet", short=("ds",), cats=ALL, status=True),
    _b("batch", "v1", "jobs", "Job", cats=ALL, status=True),
    _b("batch", "v1", "cronjobs", "CronJob", short=("cj",), cats=ALL, status=True),
    _b(
        "autoscaling",
        "v2",
        "horizontalpodautoscalers",
        "HorizontalPodAutoscaler",
        short=("hpa",),
        cats=ALL,
        status=True,
    ),
    _b("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", short=("pdb",), status=True),
    _b("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", short=("netpol",)),
    _b("networking.k8s.io", "v1", "ingresses", "Ingress", short=("ing",), status=True),
    _b("networking.k8s.io", "v1", "ingressclasses", "IngressClass", False),
    _b(
        "gateway.networking.k8s.io",
        "v1",
        "gateways",
        "Gateway",
        short=("gtw",),
        cats=("gateway-api",),
        status=True,
    ),
    _b("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute", cats=("gateway-api",), status=True),
    _b(
        "gateway.networking.k8s.io",
        "v1",
        "gatewayclasses",
        "GatewayClass",
        False,
        ("gc",),
        ("gateway-api",),
        status=True,
    ),
    _b("rbac.authorization.k8s.io", "v1", "roles", "Role", generation=False),
    _b("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", generation=False),
    _b("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False, generation=False),
    _b(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
        False,
        generation=False,
    ),
    _b("coordination.k8s.io", "v1", "leases", "Lease", generation=False),
    _b(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        False,
        ("crd", "crds"),
        status=True,
    ),
    _b("events.k8s.io", "v1", "events", "Event", short=("ev",), generation=False),
    _b(
        "authorization.k8s.io",
        "v1",
        "selfsubjectaccessreviews",
        "SelfSubjectAccessReview",
        False,
        generation=False,
        verbs=("create",),
    ),
)

# The order groups are announced in /apis; kubectl resolves ambiguous names (events) by it.
GROUP_ORDER = [
    "apps",
    "events.k8s.io",
    "authorization.k8s.io",
    "autoscaling",
    "batch",
    "networking.k8s.io",
    "policy",
    "rbac.authorization.k8s.io",
    "apiextensions.k8s.io",
    "coordination.k8s.io",
    "gateway.networking.k8s.io",
]


@dataclass
class Registry:
    """Every served (group, version, plural), in registration order."""

    by_gvr: dict[tuple[str, str, str], ResourceType] = field(default_factory=dict)
    generation: int = 0  # bumped on every CRD change; discovery caches key on it

    @classmethod
    def with_builtins(cls) -> Registry:
        reg = cls()
        for rt in BUILTINS:
            reg.add(rt)
        return reg

    def add(self, rt: ResourceType) -> None:
        self.by_gvr[(rt.group, rt.version, rt.plural)] = rt
        self.generation += 1

    def remove_crd(self, crd_name: str) -> list[ResourceType]:
        gone = [rt for rt in self.by_gvr.values() if rt.crd_name == crd_name]
        for rt in gone:
            del self.by_gvr[(rt.group, rt.version, rt.plural)]
        if gone:
            self.generation += 1
        return gone

    def get(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self.by_gvr.get((group, version, plural))

    def __iter__(self) -> Iterator[ResourceType]:
        return iter(list(self.by_gvr.values()))

    def group_versions(self) -> dict[str, list[str]]:
        """group -> served versions, preferred (first registered) first; core group excluded."""
        out: dict[str, list[str]] = {}
        for rt in self.by_gvr.values():
            if rt.group:
                versions = out.setdefault(rt.group, [])
                if rt.version not in versions:
                    versions.append(rt.version)
        ordered: dict[str, list[str]] = {}
        for g in GROUP_ORDER:
            if g in out:
                ordered[g] = out.pop(g)
        ordered.update(out)
        return ordered

    def in_group_version(self, group: str, version: str) -> list[ResourceType]:
        return [rt for rt in self.by_gvr.values() if rt.group == group and rt.version == version]

    def by_kind(self, group: str, kind: str) -> ResourceType | None:
        for rt in self.by_gvr.values():
            if rt.group == group and rt.kind == kind:
                return rt
        return None

    def storage_type(self, key: tuple[str, str]) -> ResourceType | None:
        """The ResourceType whose version is the storage version of this (group, plural)."""
        fallback = None
        for rt in self.by_gvr.values():
            if rt.storage_key == key:
                if rt.version == rt.storage_version:
                    return rt
                fallback = rt
        return fallback
