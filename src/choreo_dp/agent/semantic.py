"""When is the spec in the cluster the spec the control plane sent?

Not when their bytes hash alike: the API server fills in the CRD's ``default:``s (``replicas: 1``,
``deletionPolicy: Delete``, ...), prunes fields the schema does not know, and the agent adds an
app's ``environment`` from its key. Both sides are therefore read through the spec models and
dumped without defaults; equal dumps mean the same desired state.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from choreo_dp.api import ChoreoAppSpec, EnvironmentSpec
from choreo_wire import protocol as P


def semantic_hash(kind: str, spec: Any, environment: str | None = None) -> str | None:
    """sha256 of the normalised spec, or None when the spec is not valid for ``kind`` (such a spec
    equals nothing, so it is always put back)."""
    if not isinstance(spec, dict):
        return None
    body = dict(spec)
    try:
        if kind == "Environment":
            model: Any = EnvironmentSpec.model_validate(body)
        else:
            if environment is not None:
                body.setdefault("environment", environment)
            model = ChoreoAppSpec.model_validate(body)
        normal = model.model_dump(mode="json", by_alias=True, exclude_defaults=True)
        return P.spec_hash(normal)
    except (ValidationError, ValueError, TypeError, RecursionError):
        return None
