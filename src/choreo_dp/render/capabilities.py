"""What the target cluster can serve; discovered by the operator, passed to the renderers."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClusterCapabilities:
    # The cluster serves gateway.networking.k8s.io/v1 HTTPRoutes: expose through Gateway API,
    # otherwise fall back to networking.k8s.io/v1 Ingress.
    gateway_api: bool = False
