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

from choreo_dp.api import vocabulary as V

MANAGED_BY = V.MANAGED_BY_VALUE
VALUES_HASH_ANNOTATION = V.VALUES_HASH_ANNOTATION
APP_HASH_ANNOTATION = V.SECRETS_HASH_ANNOTATION
APP_STATE_ANNOTATION = V.SECRETS_STATE_ANNOTATION
secret_name = V.app_secret_name


def values_hash(bindings: Mapping[str, tuple[str, str, str]]) -> str:
    """``bindings``: env var -> (vault url, secret name, version served)."""
    canonical = json.dumps(sorted((k, *v) for k, v in bindings.items()), separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def labels(app: Mapping[str, Any], environment: str) -> dict[str, str]:
    spec = app.get("spec") or {}
    return {
        V.MANAGED_BY: V.MANAGED_BY_VALUE,
        V.ENVIRONMENT_LABEL: environment,
        V.APP_LABEL: str(app["metadata"]["name"]),
        V.PROJECT_LABEL: str(spec.get("project", "")),
    }


def owner_reference(app: Mapping[str, Any]) -> dict[str, Any]:
    meta = app["metadata"]
    return V.owner_reference(
        app.get("apiVersion", V.API_VERSION), app.get("kind", V.KIND_APP), meta["name"], meta["uid"]
    )


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
