"""Labels, names and owner references shared by every rendered object."""

from __future__ import annotations

import hashlib

# The names themselves live in the one vocabulary module; re-exported here for the renderers.
from choreo_dp.api.vocabulary import APP_LABEL as APP_LABEL
from choreo_dp.api.vocabulary import APP_SERVICE_ACCOUNT as APP_SERVICE_ACCOUNT
from choreo_dp.api.vocabulary import ENVIRONMENT_LABEL as ENVIRONMENT_LABEL
from choreo_dp.api.vocabulary import ENVIRONMENT_UID_KEY as ENVIRONMENT_UID_KEY
from choreo_dp.api.vocabulary import EXPOSE_EXTERNAL_LABEL as EXPOSE_EXTERNAL_LABEL
from choreo_dp.api.vocabulary import EXPOSE_INTERNAL_LABEL as EXPOSE_INTERNAL_LABEL
from choreo_dp.api.vocabulary import MANAGED_BY as MANAGED_BY
from choreo_dp.api.vocabulary import MANAGED_BY_VALUE as MANAGED_BY_VALUE
from choreo_dp.api.vocabulary import MANAGED_SELECTOR as MANAGED_SELECTOR
from choreo_dp.api.vocabulary import NAME_LABEL as NAME_LABEL
from choreo_dp.api.vocabulary import OPERATOR_FIELD_MANAGER
from choreo_dp.api.vocabulary import PROJECT_LABEL as PROJECT_LABEL
from choreo_dp.api.vocabulary import PROTECTED_LABEL as PROTECTED_LABEL
from choreo_dp.api.vocabulary import PULL_SECRET_LABEL as PULL_SECRET_LABEL
from choreo_dp.api.vocabulary import PULL_SECRET_OPT_IN as PULL_SECRET_OPT_IN
from choreo_dp.api.vocabulary import REVISION_ANNOTATION as REVISION_ANNOTATION
from choreo_dp.api.vocabulary import SECRETS_HASH_ANNOTATION as SECRETS_HASH_ANNOTATION
from choreo_dp.api.vocabulary import owner_reference as owner_reference

FIELD_MANAGER = OPERATOR_FIELD_MANAGER


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
