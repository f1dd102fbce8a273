"""The Kubernetes Secret an app's values go into, and the hash stamped on its pod template.

The hash is a digest of which Key Vault secret *version* backs each key, not of the values: Key Vault
versions are immutable, so it changes exactly when a value changes, and unlike a plain hash of a value
it cannot be brute-forced back into a short secret by someone who can read the Deployment.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from choreo_dp.api import API_VERSION

MANAGED_BY = "choreo-dp"
VALUES_HASH_ANNOTATION = "choreo.dev/values-hash"
APP_HASH_ANNOTATION = "choreo.dev/secrets-hash"
APP_STATE_ANNOTATION = "choreo.dev/secrets-state"


def secret_name(app_name: str) -> str:
    # App names are DNS labels of at most 63 chars; Secret names may be 253, so the suffix always fits.
    return f"{app_name}-secrets"


def values_hash(bindings: Mapping[str, tuple[str, str, str]]) -> str:
    """``bindings``: env var -> (vault url, secret name, version served)."""
    canonical = json.dumps(sorted((k, *v) for k, v in bindings.items()), separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def labels(app: Mapping[str, Any], environment: str) -> dict[str, str]:
    spec = app.get("spec") or {}
    return {
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "choreo.dev/environment": environment,
        "choreo.dev/app": str(app["metadata"]["name"]),
        "choreo.dev/project": str(spec.get("project", "")),
    }


def owner_reference(app: Mapping[str, Any]) -> dict[str, Any]:
    meta = app["metadata"]
    return {
        "apiVersion": app.get("apiVersion", API_VERSION),
        "kind": app.get("kind", "ChoreoApp"),
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def secret_manifest(
    app: Mapping[str, Any], environment: str, values: Mapping[str, str], digest: str
) -> dict[str, Any]:
    meta = app["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": secret_name(meta["name"]),
            "namespace": meta["namespace"],
            "labels": labels(app, environment),
            "annotations": {VALUES_HASH_ANNOTATION: digest},
            "ownerReferences": [owner_reference(app)],
        },
        "type": "Opaque",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in sorted(values.items())},
    }
