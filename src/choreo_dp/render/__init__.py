"""Pure renderers: (spec, environment, cluster capabilities) -> Kubernetes manifests.

Nothing in this package performs I/O or imports kopf: every function is deterministic in its
arguments, which is what makes the golden tests under ``tests/render/`` meaningful.
"""

from choreo_dp.render.app import AppRender, render_app
from choreo_dp.render.capabilities import ClusterCapabilities
from choreo_dp.render.endpoints import EndpointExposure, expose_endpoints
from choreo_dp.render.environment import render_environment
from choreo_dp.render.errors import PolicyViolation, RenderError
from choreo_dp.render.policy import check_app_policy

__all__ = [
    "AppRender",
    "ClusterCapabilities",
    "EndpointExposure",
    "PolicyViolation",
    "RenderError",
    "check_app_policy",
    "expose_endpoints",
    "render_app",
    "render_environment",
]
