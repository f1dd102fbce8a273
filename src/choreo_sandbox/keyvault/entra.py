"""An emulated Microsoft Entra ID token endpoint for the client-credentials flow with a federated assertion.

The async ``WorkloadIdentityCredential`` (azure-identity's own AadClient, not msal) POSTs a form to
``{authority}/{tenant}/oauth2/v2.0/token`` with ``client_assertion`` = the content of
AZURE_FEDERATED_TOKEN_FILE. It accepts it only when the (tenant, client id) pair has a federated
credential registered that trusts exactly that assertion, like Entra does. The OpenID discovery documents
msal-based (sync) credentials ask for are served too, so it works for either code path.
"""

from __future__ import annotations

import secrets
import ssl
import time
from dataclasses import dataclass, field

from aiohttp import web

from choreo_sandbox.keyvault.https import HttpsServer

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@dataclass(frozen=True)
class IssuedToken:
    tenant_id: str
    client_id: str
    scope: str
    expires_on: float


@dataclass
class TokenRequest:
    tenant_id: str
    client_id: str
    scope: str
    granted: bool


@dataclass
class EntraEmulator:
    ssl_context: ssl.SSLContext
    token_lifetime: int = 3600
    # (tenant, client) -> the one assertion (service account token) its federated credential trusts
    federated: dict[tuple[str, str], str] = field(default_factory=dict)
    tokens: dict[str, IssuedToken] = field(default_factory=dict)
    requests: list[TokenRequest] = field(default_factory=list)
    unavailable: bool = False
    listen_port: int = 0  # 0: an ephemeral port
    # The authority's host name; the sandbox uses the loopback address, which needs no resolver.
    host: str = "localhost"

    def __post_init__(self) -> None:
        app = web.Application()
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self._token)
        app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", self._openid)
        app.router.add_get("/common/discovery/instance", self._instance_discovery)
        self._server = HttpsServer(app, self.ssl_context, self.listen_port)

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> EntraEmulator:
        await self._server.start()
        return self

    async def stop(self) -> None:
        await self._server.stop()

    @property
    def authority(self) -> str:
        """What AZURE_AUTHORITY_HOST should be set to."""
        return f"https://{self.host}:{self._server.port}"

    def trust(self, tenant_id: str, client_id: str, assertion: str) -> None:
        """Register a federated identity credential on app ``client_id`` in ``tenant_id``."""
        self.federated[(tenant_id, client_id)] = assertion

    def identity_of(self, access_token: str) -> IssuedToken | None:
        issued = self.tokens.get(access_token)
        if issued is None or issued.expires_on < time.time():
            return None
        return issued

    # --- handlers --------------------------------------------------------------------------------

    @staticmethod
    def _error(status: int, error: str, description: str) -> web.Response:
        return web.json_response(
            {"error": error, "error_description": description, "error_codes": [700213]}, status=status
        )

    async def _token(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        form = await request.post()
        client_id = str(form.get("client_id", ""))
        scope = str(form.get("scope", ""))
        if self.unavailable:
            return self._error(503, "temporarily_unavailable", "Entra is down (injected outage)")
        if form.get("grant_type") != "client_credentials" or form.get("client_assertion_type") != JWT_BEARER:
            return self._error(
                400, "unsupported_grant_type", "expected client_credentials with a JWT assertion"
            )
        if not scope.endswith("/.default"):
            return self._error(400, "invalid_scope", "scope must end with /.default")
        trusted = self.federated.get((tenant, client_id))
        granted = trusted is not None and secrets.compare_digest(
            trusted, str(form.get("client_assertion", ""))
        )
        self.requests.append(TokenRequest(tenant, client_id, scope, granted))
        if not granted:
            return self._error(
                401,
                "invalid_client",
                "AADSTS700213: No matching federated identity record found for presented assertion.",
            )
        token = "fake-at-" + secrets.token_urlsafe(24)
        self.tokens[token] = IssuedToken(tenant, client_id, scope, time.time() + self.token_lifetime)
        return web.json_response(
            {
                "token_type": "Bearer",
                "expires_in": self.token_lifetime,
                "ext_expires_in": self.token_lifetime,
                "access_token": token,
            }
        )

    async def _openid(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        base = f"{self.authority}/{tenant}"
        return web.json_response(
            {
                "issuer": f"{base}/v2.0",
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "response_types_supported": ["code", "id_token", "token id_token"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"],
                "tenant_region_scope": "WW",
            }
        )

    async def _instance_discovery(self, request: web.Request) -> web.Response:
        host = f"{self.host}:{self._server.port}"
        return web.json_response(
            {
                "tenant_discovery_endpoint": f"{self.authority}/common/v2.0/.well-known/openid-configuration",
                "api-version": "1.1",
                "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
            }
        )
