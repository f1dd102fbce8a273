"""Labels, names and owner references shared by every rendered object."""

from __future__ import annotations

import hashlib
from typing import Any

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "choreo-dp"
NAME_LABEL = "app.kubernetes.io/name"
ENVIRONMENT_LABEL = "choreo.dev/environment"
APP_LABEL = "choreo.dev/app"
PROJECT_LABEL = "choreo.dev/project"
# Pod labels the Environment's NetworkPolicies select on to let the gateways in.
EXPOSE_INTERNAL_LABEL = "choreo.dev/expose-internal"
EXPOSE_EXTERNAL_LABEL = "choreo.dev/expose-external"

# The mark of a namespace the operator created for an Environment: this key, with the Environment's
# uid as value, both as a label (what the operator selects on to find what an Environment owns) and
# as an annotation. The operator writes into, and lets the garbage collector delete, only a
# namespace whose label and annotation both carry the uid of the Environment at hand; it never
# adopts one it did not create.
ENVIRONMENT_UID_KEY = "choreo.dev/environment-uid"
# A namespace labelled with this (any value) is never used by an Environment.
PROTECTED_LABEL = "choreo.dev/protected"
# Only registry Secrets labelled ``choreo.dev/pull-secret=true`` may be copied into an environment.
PULL_SECRET_LABEL = "choreo.dev/pull-secret"
PULL_SECRET_OPT_IN = "true"

SECRETS_HASH_ANNOTATION = "choreo.dev/secrets-hash"
REVISION_ANNOTATION = "choreo.dev/revision"

FIELD_MANAGER = "choreo-dp-operator"
APP_SERVICE_ACCOUNT = "choreo-app"
MANAGED_SELECTOR = f"{MANAGED_BY}={MANAGED_BY_VALUE}"


def environment_labels(env_name: str) -> dict[str, str]:
    return {MANAGED_BY: MANAGED_BY_VALUE, ENVIRONMENT_LABEL: env_name}


def app_labels(env_name: str, project: str, app_name: str) -> dict[str, str]:
    return {
        MANAGED_BY: MANAGED_BY_VALUE,
        ENVIRONMENT_LABEL: env_name,
        PROJECT_LABEL: project,
        APP_LABEL: app_name,
        NAME_LABEL: app_name,
    }


def owner_reference(api_version: str, kind: str, name: str, uid: str) -> dict[str, Any]:
    # controller=true lets `kubectl` and the garbage collector treat the owner as authoritative;
    # blockOwnerDeletion makes foreground deletion of the owner wait for its children.
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def short_hash(text: str, length: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def bounded_name(name: str, limit: int) -> str:
    """``name`` if it fits, else a prefix plus a stable hash so distinct inputs stay distinct."""
    if len(name) <= limit:
        return name
    suffix = short_hash(name)
    return f"{name[: limit - len(suffix) - 1].rstrip('-')}-{suffix}"


def port_name(endpoint_name: str) -> str:
    # Service and container port names are IANA service names: at most 15 characters, at least
    # one letter, no "--". Endpoint names are DNS labels, so only those three rules can fail.
    valid = len(endpoint_name) <= 15 and "--" not in endpoint_name and any(c.isalpha() for c in endpoint_name)
    return endpoint_name if valid else f"ep-{short_hash(endpoint_name, 12)}"
