"""What the agent refuses to write, whatever the control plane says (pure checks).

The data plane does not trust the control plane: a compromised or broken control plane must not be
able to take over objects it does not own, place workloads outside their Environment, run images
the Environment does not admit, or write objects the cluster cannot hold. The agent is the first
line (the operator checks again): every refusal here becomes a ``nack`` with one of the codes
below, so the control plane learns why, and nothing is written.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from choreo_dp.api.images import image_refusal
from choreo_dp.render.environment import (
    DEFAULT_PROTECTED_NAMESPACES,
    PROTECTED_NAMESPACES_ENV,
    parse_protected_namespaces,
    protected_reason,
)

# nack codes (non-retryable: the change counts as processed, the control plane shows it)
NOT_MANAGED = "not_managed"  # the object exists and is not this dataplane's (hand-made or another's)
NAME_CONFLICT = "name_conflict"  # a ChoreoApp of that name in the namespace belongs to another key
ENVIRONMENT_NOT_MANAGED = "environment_not_managed"  # the app's Environment is not this dataplane's
PROTECTED_NAMESPACE = "protected_namespace"  # kube-*, default, the operator's namespace, ...
NAMESPACE_CONFLICT = "namespace_conflict"  # another Environment owns that namespace
NAMESPACE_IMMUTABLE = "namespace_immutable"  # moving an Environment that has apps would strand them
NAMESPACE_MISMATCH = "namespace_mismatch"  # the app exists in a namespace its Environment no longer names
IMAGE_NOT_ALLOWED = "image_not_allowed"  # outside the Environment's registry.allowedPrefixes
TOO_LARGE = "too_large"  # the spec is bigger than MAX_SPEC_BYTES

# A desired spec (canonical JSON) larger than this is refused. It leaves room in a 1 MiB frame
# for the envelope, and in the 1.5 MiB etcd limit for metadata, managedFields and status. The
# control plane must never accept a spec above it (its REST limit has to be at most this).
MAX_SPEC_BYTES = 768 * 1024

# Revisions are persisted in DataPlane.status (int64) and compared as integers; a frame naming one
# beyond this is refused before it can poison the change stream or the persisted state.
MAX_REVISION = 2**63 - 1

# Heartbeats the control plane asks for are clamped into this range (a welcome asking for one every
# microsecond would otherwise turn the agent into a busy loop).
HEARTBEAT_MIN_SECONDS = 1.0
HEARTBEAT_MAX_SECONDS = 300.0

DEFAULT_OPERATOR_NAMESPACE = "choreo-system"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _own_namespace() -> str | None:
    """The namespace the agent's pod runs in, when it runs in one."""
    ns = os.environ.get("POD_NAMESPACE")
    if ns:
        return ns
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or None
    except OSError:
        return None


def default_protected_namespaces(configured: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """``configured`` (the agent's ``--protected-namespaces``) or, when None,
    ``CHOREO_DP_PROTECTED_NAMESPACES`` or ``kube-*`` and ``default``; the operator's namespace
    (``CHOREO_DP_OPERATOR_NAMESPACE``, default ``choreo-system``) and the agent's own namespace are
    always added: the configuration cannot unprotect the product itself."""
    if configured is None:
        raw = os.environ.get(PROTECTED_NAMESPACES_ENV)
        configured = DEFAULT_PROTECTED_NAMESPACES if raw is None else parse_protected_namespaces(raw)
    patterns = list(configured)
    patterns.append(os.environ.get("CHOREO_DP_OPERATOR_NAMESPACE") or DEFAULT_OPERATOR_NAMESPACE)
    own = _own_namespace()
    if own:
        patterns.append(own)
    return tuple(dict.fromkeys(patterns))


@dataclass(frozen=True)
class ProtectedNamespaces:
    """Namespaces no Environment may name (shell-style globs such as ``kube-*``)."""

    patterns: tuple[str, ...]

    def refusal(self, namespace: str) -> str | None:
        # The agent cannot read namespaces (RBAC), so only the names count here; the operator
        # also refuses namespaces labelled choreo.dev/protected.
        return protected_reason(namespace, None, self.patterns)


def spec_size_refusal(canonical: bytes) -> str | None:
    if len(canonical) > MAX_SPEC_BYTES:
        return f"spec of {len(canonical)} bytes exceeds the data plane's limit of {MAX_SPEC_BYTES} bytes"
    return None


def allowed_prefixes(env_obj: Mapping[str, Any]) -> list[str]:
    """``spec.registry.allowedPrefixes`` of an Environment as it is in the cluster; anything that is
    not a list of strings admits nothing."""
    registry = (env_obj.get("spec") or {}).get("registry")
    prefixes = registry.get("allowedPrefixes") if isinstance(registry, dict) else None
    if not isinstance(prefixes, list):
        return []
    return [p for p in prefixes if isinstance(p, str)]


def app_image_refusal(spec: Mapping[str, Any], env_obj: Mapping[str, Any]) -> str | None:
    image = spec.get("image")
    if not isinstance(image, str):
        return "spec.image is missing"
    env_name = (env_obj.get("metadata") or {}).get("name", "?")
    reason = image_refusal(image, allowed_prefixes(env_obj))
    return f"Environment {env_name!r}: {reason}" if reason else None


@dataclass(frozen=True)
class Claim:
    """An Environment's claim on a namespace; the oldest claim owns it (ties broken by name)."""

    created: str
    environment: str

    def sort_key(self) -> tuple[str, str]:
        # RFC 3339 timestamps in UTC (what the API server writes) sort as strings; a missing one
        # sorts last, so an object without one can never outrank a real owner.
        return (self.created or "~", self.environment)


def namespace_owner(claims: Iterable[Claim]) -> str | None:
    ordered = sorted(claims, key=Claim.sort_key)
    return ordered[0].environment if ordered else None
