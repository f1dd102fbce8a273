"""An emulated Azure Key Vault data plane (secrets), several vaults on one HTTPS port by Host name.

The real azure-keyvault-secrets ``SecretClient`` runs against it unmodified. Wire behaviour copied
from the service:
- a request without a valid bearer token gets ``401`` with
  ``WWW-Authenticate: Bearer authorization="<authority>/<tenant>", resource="<resource>"``;
  the SDK then asks its credential for ``<resource>/.default`` and retries.
  The SDK checks that the vault's host is a subdomain of the resource, so the resource is
  ``https://<resource_host>:<port>``: the tests use ``localhost`` with vaults at ``<vault>.localhost``
  (they resolve those names themselves); the sandbox, whose operator is a plain process with the
  system resolver, serves its vault at ``127.0.0.1`` with the resource ``0.0.1`` (the address's
  parent "domain"), so nothing needs resolving and the check still runs.
- ``GET /secrets/{name}/`` (latest) and ``/secrets/{name}/{version}`` with ``?api-version=...`` return
  ``{"value", "id": "https://<host>/secrets/<name>/<version>", "attributes": {...}, "tags": {}}``;
- ``404 SecretNotFound``, ``403 Forbidden`` (identity without access, or a disabled version),
  ``429 Throttled`` with ``Retry-After``.

Fault injection and counters are plain attributes so tests and the benchmark can drive and observe it.
With ``admin_token`` set, ``PUT /_sandbox/vaults/{vault}/secrets/{name}`` (``{"value": ...}``, that
token as bearer) adds a version: how ``choreo-dp sandbox keyvault set`` rotates a secret.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import ssl
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web

from choreo_sandbox.keyvault.entra import EntraEmulator
from choreo_sandbox.keyvault.https import HttpsServer

THROTTLE_GRACE = 0.1


@dataclass
class SecretVersion:
    version: str
    value: str
    enabled: bool = True
    created: int = field(default_factory=lambda: int(time.time()))


@dataclass
class EmulatedVault:
    """One vault: which tenant it lives in, which client ids may read, and its secrets."""

    name: str
    tenant_id: str
    readers: set[str] = field(default_factory=set)
    secrets: dict[str, list[SecretVersion]] = field(default_factory=dict)
    outage: Literal["503", "reset"] | None = None
    throttle_next: int = 0
    throttle_retry_after: float = 1.0
    # monotonic time before which a throttled client must not come back
    throttled_until: float = 0.0
    throttled_at: float = 0.0

    def set_secret(self, name: str, value: str, version: str | None = None) -> str:
        """Create a new version (what a rotation does) and return its id (a new one unless given)."""
        version = version or uuid.uuid4().hex
        self.secrets.setdefault(name, []).append(SecretVersion(version, value))
        return version

    def latest(self, name: str) -> SecretVersion | None:
        versions = [v for v in self.secrets.get(name, [])]
        return versions[-1] if versions else None


@dataclass
class KeyVaultEmulator:
    entra: EntraEmulator
    ssl_context: ssl.SSLContext
    delay: float = 0.0
    vaults: dict[str, EmulatedVault] = field(default_factory=dict)
    # counters (reset with reset_stats)
    reads: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (vault, name, version|"")
    statuses: Counter[int] = field(default_factory=Counter)
    challenges: int = 0
    throttle_violations: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    # every header the fake saw, for the no-secret-leak test (values must never be sent *to* the vault)
    seen_request_text: list[str] = field(default_factory=list)
    listen_port: int = 0  # 0: an ephemeral port
    resource_host: str = "localhost"
    # Host names (without port) served by a vault, besides ``<vault>.localhost``.
    hosts: dict[str, str] = field(default_factory=dict)
    admin_token: str | None = None
    on_change: Callable[[EmulatedVault], None] | None = None

    def __post_init__(self) -> None:
        app = web.Application()
        app.router.add_get("/secrets/{name}", self._get_secret)
        app.router.add_get("/secrets/{name}/", self._get_secret)
        app.router.add_get("/secrets/{name}/{version}", self._get_secret)
        if self.admin_token is not None:
            app.router.add_put("/_sandbox/vaults/{vault}/secrets/{name}", self._admin_set)
        self._server = HttpsServer(app, self.ssl_context, self.listen_port)

    async def start(self) -> KeyVaultEmulator:
        await self._server.start()
        return self

    async def stop(self) -> None:
        """Stop listening (connections are refused: the vault is unreachable) until ``start`` again."""
        await self._server.stop()

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def resource(self) -> str:
        return f"https://{self.resource_host}:{self.port}"

    def add_vault(
        self, name: str, tenant_id: str, readers: set[str], host: str | None = None
    ) -> EmulatedVault:
        """A vault at ``<name>.localhost``, and at ``host`` too when given."""
        vault = EmulatedVault(name, tenant_id, set(readers))
        self.vaults[name] = vault
        if host is not None:
            self.hosts[host] = name
        return vault

    def url(self, vault: str) -> str:
        host = next((h for h, v in self.hosts.items() if v == vault), f"{vault}.localhost")
        return f"https://{host}:{self.port}/"

    def reset_stats(self) -> None:
        self.reads.clear()
        self.statuses.clear()
        self.challenges = 0
        self.throttle_violations = 0
        self.peak_in_flight = self.in_flight

    @property
    def authorized_reads(self) -> int:
        return sum(self.reads.values())

    # --- handler ---------------------------------------------------------------------------------

    @staticmethod
    def _error(status: int, code: str, message: str, inner: str | None = None) -> web.Response:
        error: dict[str, object] = {"code": code, "message": message}
        if inner:
            error["innererror"] = {"code": inner}
        return web.json_response({"error": error}, status=status)

    def _challenge(self, vault: EmulatedVault) -> web.Response:
        self.challenges += 1
        header = (
            f'Bearer authorization="{self.entra.authority}/{vault.tenant_id}", resource="{self.resource}"'
        )
        return web.json_response(
            {
                "error": {
                    "code": "Unauthorized",
                    "message": "AKV10000: Request is missing a Bearer or PoP token.",
                }
            },
            status=401,
            headers={"WWW-Authenticate": header},
        )

    async def _get_secret(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            response = await self._handle(request)
        finally:
            self.in_flight -= 1
        self.statuses[response.status] += 1
        return response

    async def _handle(self, request: web.Request) -> web.Response:
        self.seen_request_text.append(
            str(request.rel_url) + "\n" + "\n".join(f"{k}: {v}" for k, v in request.headers.items())
        )
        if self.delay:
            await asyncio.sleep(self.delay)
        host = request.host.rsplit(":", 1)[0]
        vault = self.vaults.get(self.hosts.get(host) or host.removesuffix(".localhost"))
        if vault is None:
            return self._error(404, "VaultNotFound", f"no vault at {host}")
        if vault.outage == "503":
            return self._error(503, "ServiceUnavailable", "The service is unavailable.")
        if vault.outage == "reset":
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=500)
        if not request.query.get("api-version"):
            return self._error(400, "BadParameter", "api-version is required")

        auth = request.headers.get("Authorization", "")
        issued = self.entra.identity_of(auth[7:]) if auth.startswith("Bearer ") else None
        if (
            issued is None
            or issued.tenant_id != vault.tenant_id
            or issued.scope != f"{self.resource}/.default"
        ):
            return self._challenge(vault)
        if issued.client_id not in vault.readers:
            return self._error(
                403,
                "Forbidden",
                f"Caller is not authorized to perform action on resource. Caller: appid={issued.client_id}",
                "ForbiddenByPolicy",
            )

        now = time.monotonic()
        # Requests arriving just after a 429 were already on the wire when it was sent: not a violation.
        if vault.throttled_at + THROTTLE_GRACE < now < vault.throttled_until:
            self.throttle_violations += 1
        if vault.throttle_next > 0:
            vault.throttle_next -= 1
            vault.throttled_at = now
            vault.throttled_until = now + vault.throttle_retry_after
            response = self._error(
                429,
                "Throttled",
                "Request was not processed because too many requests were received. Reason: VaultRequestTypeLimitReached",
            )
            response.headers["Retry-After"] = str(int(vault.throttle_retry_after))
            return response

        name = request.match_info["name"]
        wanted = request.match_info.get("version", "")
        self.reads[(vault.name, name, wanted)] += 1
        versions = vault.secrets.get(name, [])
        found = (
            next((v for v in versions if v.version == wanted), None)
            if wanted
            else (versions[-1] if versions else None)
        )
        if found is None:
            ident = f"{name}/{wanted}" if wanted else name
            return self._error(
                404,
                "SecretNotFound",
                f"A secret with (name/id) {ident} was not found in this key vault. If you recently deleted this secret you may be able to recover it using the correct recovery command.",
            )
        if not found.enabled:
            return self._error(
                403, "Forbidden", "Operation get is not allowed on a disabled secret.", "SecretDisabled"
            )
        return web.json_response(
            {
                "value": found.value,
                "id": f"https://{request.host}/secrets/{name}/{found.version}",
                "attributes": {
                    "enabled": True,
                    "created": found.created,
                    "updated": found.created,
                    "recoveryLevel": "Recoverable+Purgeable",
                    "recoverableDays": 90,
                },
                "tags": {},
            }
        )

    async def _admin_set(self, request: web.Request) -> web.Response:
        assert self.admin_token is not None
        auth = request.headers.get("Authorization", "")
        if not (auth.startswith("Bearer ") and secrets.compare_digest(auth[7:], self.admin_token)):
            return self._error(401, "Unauthorized", "the sandbox's Key Vault admin token is required")
        vault = self.vaults.get(request.match_info["vault"])
        if vault is None:
            return self._error(404, "VaultNotFound", f"no vault {request.match_info['vault']!r}")
        try:
            body = await request.json()
        except json.JSONDecodeError:
            body = None
        value = body.get("value") if isinstance(body, dict) else None
        if not isinstance(value, str):
            return self._error(400, "BadParameter", 'the body must be {"value": "<string>"}')
        name = request.match_info["name"]
        version = vault.set_secret(name, value)
        if self.on_change is not None:
            self.on_change(vault)
        return web.json_response({"name": name, "version": version}, status=200)


def random_secret_value() -> str:
    """A value distinctive enough that the leak test can grep for it."""
    return "SV-" + secrets.token_hex(12)
