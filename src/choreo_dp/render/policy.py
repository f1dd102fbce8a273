"""Admission rules the operator enforces before it creates or changes anything for an app."""

from __future__ import annotations

from choreo_dp.api import ChoreoApp, Environment
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
    prefixes = env.spec.registry.allowed_prefixes if env.spec.registry else []
    if prefixes and not any(app.spec.image.startswith(p) for p in prefixes):
        return PolicyViolation(
            "ImageNotAllowed",
            f"image {app.spec.image!r} does not start with an allowed prefix of environment "
            f"{env.metadata.name!r}: {', '.join(prefixes)}",
        )
    return None
