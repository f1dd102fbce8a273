"""Admission rules the operator enforces before it creates or changes anything for an app."""

from __future__ import annotations

from choreo_dp.api import ChoreoApp, Environment
from choreo_dp.api.images import image_refusal
from choreo_dp.render.errors import PolicyViolation


def check_app_policy(app: ChoreoApp, env: Environment) -> PolicyViolation | None:
    namespace = app.metadata.namespace
    if app.spec.environment != env.metadata.name:
        return PolicyViolation(
            "EnvironmentMismatch",
            f"app names environment {app.spec.environment!r} but was checked against {env.metadata.name!r}",
        )
    if namespace != env.target_namespace:
        return PolicyViolation(
            "NamespaceNotInEnvironment",
            f"namespace {namespace!r} does not belong to environment {env.metadata.name!r} "
            f"(its namespace is {env.target_namespace!r})",
        )
    # Checked here as well as by the control plane: the data plane does not take the control
    # plane's word that an image is allowed. An absent or empty allowlist admits nothing.
    prefixes = env.spec.registry.allowed_prefixes if env.spec.registry else []
    refusal = image_refusal(app.spec.image, prefixes)
    if refusal is not None:
        return PolicyViolation("ImageNotAllowed", f"environment {env.metadata.name!r}: {refusal}")
    return None
