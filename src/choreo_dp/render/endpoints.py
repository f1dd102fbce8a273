"""Where each endpoint of an app is reachable: hostnames, paths and the URLs put in status.

Organization endpoints go through the environment's internal gateway, Public ones through the
external gateway; Project endpoints only get the in-cluster Service address.

Host and path scheme for routed endpoints:
- wildcard gateway hostname ``*.apps.example.com``: one host per endpoint,
  ``<app>-<endpoint>.apps.example.com``, path = the endpoint's ``basePath``;
- fixed hostname ``api.example.com``: shared host, path prefix ``/<project>/<app>/<endpoint>``
  (rewritten to ``basePath`` by HTTPRoute; Ingress has no portable rewrite, so the app sees the
  prefix there);
- no hostname: the route matches any host the gateway serves; the URL is then unknown and
  left out of status (the Exposed condition says so).
"""

from __future__ import annotations

from dataclasses import dataclass

from choreo_dp.api import ChoreoApp, Environment
from choreo_dp.api.choreoapp import Endpoint
from choreo_dp.api.environment import GatewayRef
from choreo_dp.render.capabilities import ClusterCapabilities
from choreo_dp.render.labels import bounded_name

_ROUTED_SCHEMES = {"REST": "https", "GraphQL": "https", "gRPC": "https", "WS": "wss"}
_IN_CLUSTER_SCHEMES = {"REST": "http", "GraphQL": "http", "gRPC": "grpc", "WS": "ws", "TCP": "tcp"}


@dataclass(frozen=True)
class EndpointExposure:
    endpoint: Endpoint
    url: str | None
    # Set when the endpoint needs a route (Organization/Public) and one can be rendered.
    gateway: GatewayRef | None = None
    host: str | None = None
    path: str = "/"
    rewrite_to: str | None = None
    # Why a non-Project endpoint is not routed, as (reason, message); None when all is well.
    problem: tuple[str, str] | None = None

    @property
    def routed(self) -> bool:
        return self.gateway is not None


def service_url(app: ChoreoApp, endpoint: Endpoint) -> str:
    host = f"{app.metadata.name}.{app.metadata.namespace}.svc.cluster.local:{endpoint.port}"
    scheme = _IN_CLUSTER_SCHEMES[endpoint.protocol]
    if endpoint.protocol in ("TCP", "gRPC"):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}{endpoint.base_path}"


def _gateway_for(env: Environment, endpoint: Endpoint) -> GatewayRef | None:
    gateways = env.spec.gateways
    if gateways is None:
        return None
    return gateways.internal if endpoint.visibility == "Organization" else gateways.external


def expose_endpoints(app: ChoreoApp, env: Environment, caps: ClusterCapabilities) -> list[EndpointExposure]:
    out: list[EndpointExposure] = []
    for ep in app.spec.endpoints:
        if ep.visibility == "Project":
            out.append(EndpointExposure(ep, service_url(app, ep)))
            continue
        which = "internal" if ep.visibility == "Organization" else "external"
        if ep.protocol == "TCP":
            problem = ("UnsupportedProtocol", f"endpoint {ep.name}: TCP cannot be routed through a gateway")
            out.append(EndpointExposure(ep, service_url(app, ep), problem=problem))
            continue
        gw = _gateway_for(env, ep)
        usable = gw is not None and (gw.gateway_name if caps.gateway_api else gw.ingress_class_name)
        if gw is None or not usable:
            needed = "gatewayName" if caps.gateway_api else "ingressClassName"
            problem = (
                "GatewayNotConfigured",
                f"endpoint {ep.name}: environment {env.metadata.name} has no gateways.{which}.{needed}",
            )
            out.append(EndpointExposure(ep, service_url(app, ep), problem=problem))
            continue
        out.append(_routed(app, ep, gw))
    return out


def _routed(app: ChoreoApp, ep: Endpoint, gw: GatewayRef) -> EndpointExposure:
    scheme = _ROUTED_SCHEMES[ep.protocol]
    hostname = gw.hostname
    if hostname is None:
        problem = ("HostnameUnknown", f"endpoint {ep.name}: gateway has no hostname; URL unknown")
        return EndpointExposure(ep, None, gateway=gw, host=None, path=ep.base_path, problem=problem)
    if hostname.startswith("*."):
        label = bounded_name(f"{app.metadata.name}-{ep.name}", 63)
        host = f"{label}.{hostname[2:]}"
        return EndpointExposure(
            ep, f"{scheme}://{host}{ep.base_path}", gateway=gw, host=host, path=ep.base_path
        )
    prefix = f"/{app.spec.project}/{app.metadata.name}/{ep.name}"
    url = f"{scheme}://{hostname}{prefix}"
    return EndpointExposure(ep, url, gateway=gw, host=hostname, path=prefix, rewrite_to=ep.base_path)
