"""The names choreo-dp writes into a cluster: API group, labels, annotations, finalizers, field managers.

Every writer (renderers, operator, agent, secrets sync, CLI, control plane) takes them from here, so
a label the operator selects on is the one the agent stamps, and renaming one is a one-line change
that the golden tests and the CRD schemas then show. Pure: imports nothing but the standard library.
"""

from __future__ import annotations

import hashlib
from typing import Any

# --- API group and kinds ---------------------------------------------------------------------
GROUP = "choreo.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND_ENVIRONMENT = "Environment"
KIND_APP = "ChoreoApp"
KIND_DATAPLANE = "DataPlane"

# --- labels ----------------------------------------------------------------------------------
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "choreo-dp"
MANAGED_SELECTOR = f"{MANAGED_BY}={MANAGED_BY_VALUE}"
NAME_LABEL = "app.kubernetes.io/name"
ENVIRONMENT_LABEL = f"{GROUP}/environment"
APP_LABEL = f"{GROUP}/app"
PROJECT_LABEL = f"{GROUP}/project"
# The agent's mark on the Environments and ChoreoApps it wrote: the data plane's name.
DATAPLANE_LABEL = f"{GROUP}/dataplane"
# Pod labels the Environment's NetworkPolicies select on to let the gateways in.
EXPOSE_INTERNAL_LABEL = f"{GROUP}/expose-internal"
EXPOSE_EXTERNAL_LABEL = f"{GROUP}/expose-external"
# Egress-side mark of a caller's pods, one per connection target: ``calls.choreo.dev/<app>.<endpoint>``
# = "true". The target's connection NetworkPolicy admits only pods carrying it (and the caller's app label).
CALLS_LABEL_PREFIX = f"calls.{GROUP}"
# The mark of a namespace the operator created for an Environment: this key, with the Environment's
# uid as value, both as a label (what the operator selects on to find what an Environment owns) and
# as an annotation. The operator writes into, and lets the garbage collector delete, only a
# namespace whose label and annotation both carry the uid of the Environment at hand; it never
# adopts one it did not create.
ENVIRONMENT_UID_KEY = f"{GROUP}/environment-uid"
# A namespace labelled with this (any value) is never used by an Environment.
PROTECTED_LABEL = f"{GROUP}/protected"
# Only registry Secrets labelled ``choreo.dev/pull-secret=true`` may be copied into an environment.
PULL_SECRET_LABEL = f"{GROUP}/pull-secret"
PULL_SECRET_OPT_IN = "true"

# --- annotations -----------------------------------------------------------------------------
# On an app (by the secrets sync) and its pod template (by the operator): changes exactly when a Key
# Vault value behind the app changes, so the pods roll.
SECRETS_HASH_ANNOTATION = f"{GROUP}/secrets-hash"
# On an app: the state of its Key Vault sync (read by the operator's status).
SECRETS_STATE_ANNOTATION = f"{GROUP}/secrets-state"
# On the app's Secret: which Key Vault versions back its values.
VALUES_HASH_ANNOTATION = f"{GROUP}/values-hash"
# The control plane's revision, stamped by the agent and carried to children by the operator.
REVISION_ANNOTATION = f"{GROUP}/revision"
SPEC_HASH_ANNOTATION = f"{GROUP}/spec-hash"
EPOCH_ANNOTATION = f"{GROUP}/epoch"
# An object the control plane no longer has but the agent held back from deleting (why, as value).
ORPHANED_ANNOTATION = f"{GROUP}/orphaned"

# --- finalizers ------------------------------------------------------------------------------
# kopf's own, while the operator has deletion handlers.
OPERATOR_FINALIZER = f"{GROUP}/finalizer"
# Keeps an Environment with deletionPolicy Retain until its namespace has been released.
RETAIN_FINALIZER = f"{GROUP}/retain-namespace"

# --- field managers (server-side apply) and event reporting components -----------------------
# One per writer, so a field one writer owns is never silently taken over by another.
OPERATOR_FIELD_MANAGER = "choreo-dp-operator"
AGENT_FIELD_MANAGER = "choreo-dp-agent"
SECRETS_COMPONENT = "choreo-dp-secrets"

# --- names -----------------------------------------------------------------------------------
APP_SERVICE_ACCOUNT = "choreo-app"
# The Role (and its RoleBinding, same name) the operator renders in each Environment's namespace so
# the agent may read that namespace's pods, logs and Events, and nothing of any other namespace.
AGENT_OBSERVE_ROLE = "choreo-dp-agent-observe"


def app_secret_name(app_name: str) -> str:
    """The Secret holding an app's Key Vault values."""
    # App names are DNS labels of at most 63 chars; Secret names may be 253, so the suffix always fits.
    return f"{app_name}-secrets"


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


# --- the agent's desired-state copy (ConfigMaps in the agent's namespace) -----------------------
# Label on each chunk of the copy; its value is the data plane's name, so two agents never mix.
DESIRED_COPY_LABEL = f"{GROUP}/desired-copy"
# Chunk names: ``<prefix>-<dataplane>-<bucket>``.
DESIRED_COPY_PREFIX = "choreo-dp-desired"
# The bucket count a chunk was written with (a reader with another count re-buckets).
DESIRED_COPY_BUCKETS_ANNOTATION = f"{GROUP}/desired-copy-buckets"
# The binaryData key holding a chunk: gzip of the canonical JSON of its entries.
DESIRED_COPY_DATA_KEY = "desired.json.gz"
# The DataPlane condition saying whether the agent keeps that copy.
DESIRED_COPY_CONDITION = "DesiredCopy"


# --- mounted files (ChoreoApp.spec.files) ------------------------------------------------------
# On the pod template: a digest of the plain files' paths and contents, so a content change rolls
# the pods (secret files roll through SECRETS_HASH_ANNOTATION, as env secrets do).
FILES_HASH_ANNOTATION = f"{GROUP}/files-hash"


def app_files_configmap_name(app_name: str) -> str:
    """The ConfigMap holding an app's plain files (one key per file)."""
    # Like the Secret's: a DNS-label app name plus the suffix stays within 253 characters.
    return f"{app_name}-files"


# --- canary rollouts (ChoreoApp.spec.rollout) ----------------------------------------------------
# Pod and Deployment label telling the two sides of a canary apart; per-track Services select on it.
TRACK_LABEL = f"{GROUP}/track"
TRACK_STABLE = "stable"
TRACK_CANARY = "canary"
# On each Deployment of a canary-strategy app: the hash of the pod template it was rendered from,
# which is what status.rollout.stableRevision / canaryRevision name.
TEMPLATE_HASH_ANNOTATION = f"{GROUP}/template-hash"
# Event reasons of a rollout.
ROLLOUT_STARTED_REASON = "RolloutStarted"
ROLLOUT_STEP_REASON = "RolloutStepAdvanced"
ROLLOUT_PROMOTING_REASON = "RolloutPromoting"
ROLLOUT_COMPLETED_REASON = "RolloutCompleted"
ROLLOUT_ABORTED_REASON = "RolloutAborted"
ROLLOUT_CANCELLED_REASON = "RolloutCancelled"


def track_name(app_name: str, track: str) -> str:
    """The canary Deployment and the per-track Services of an app: ``<app>-<track>``.

    Service names are DNS labels (63 characters); a longer one keeps a prefix plus a stable hash.
    """
    name = f"{app_name}-{track}"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: 63 - len(digest) - 1].rstrip('-')}-{digest}"
