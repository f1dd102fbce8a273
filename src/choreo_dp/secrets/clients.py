"""One credential per identity and one async SecretClient per (vault, identity), reused and closed.

Creating a client per read would redo the Key Vault challenge and the token request every time and
leak aiohttp sessions. The pool also owns, per client:
- a :class:`ThrottleGate` fed by the retry policy, so a 429 slows every reader of that vault;
- a warm-up lock: the first read of a new client is sent alone, so a burst of reads does not turn into
  a burst of 401 challenges and token requests; once the challenge is cached the rest run in parallel.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from azure.core.credentials_async import AsyncTokenCredential
from azure.keyvault.secrets.aio import SecretClient

from choreo_dp.secrets.identity import Identity, build_credential
from choreo_dp.secrets.retry import BoundedRetryPolicy, ThrottleGate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TransportSettings:
    """Bounds replacing azure-core's defaults (10 retries, 300 s reads)."""

    connection_timeout: float = 3.0
    read_timeout: float = 5.0
    retry_total: int = 2
    retry_backoff_factor: float = 0.5
    retry_backoff_max: float = 4.0
    # A Retry-After up to this long is slept on inside the SDK; a longer one fails the read and the
    # vault's gate holds every later read back until it expires.
    max_retry_after: float = 10.0
    # CA bundle path (or False/True) for a vault or authority behind a private CA; None = system store.
    connection_verify: str | bool | None = None
    authority: str | None = None

    def common(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "connection_timeout": self.connection_timeout,
            "read_timeout": self.read_timeout,
            "retry_total": self.retry_total,
            "retry_backoff_factor": self.retry_backoff_factor,
            "retry_backoff_max": self.retry_backoff_max,
        }
        if self.connection_verify is not None:
            options["connection_verify"] = self.connection_verify
        return options


@dataclass
class VaultClient:
    vault_url: str
    identity: Identity
    client: SecretClient
    gate: ThrottleGate
    warm: bool = False
    warm_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def normalize_vault_url(url: str) -> str:
    return url.strip().rstrip("/").lower() + "/"


CredentialFactory = Callable[[Identity, Mapping[str, Any]], AsyncTokenCredential]


def _default_factory(identity: Identity, options: Mapping[str, Any]) -> AsyncTokenCredential:
    return build_credential(identity, transport_options=options)


class ClientPool:
    def __init__(
        self,
        settings: TransportSettings | None = None,
        credential_factory: CredentialFactory = _default_factory,
    ) -> None:
        self.settings = settings or TransportSettings()
        self._credential_factory = credential_factory
        self._credentials: dict[Identity, AsyncTokenCredential] = {}
        self._clients: dict[tuple[str, Identity], VaultClient] = {}
        self._closed = False

    @property
    def credential_count(self) -> int:
        return len(self._credentials)

    @property
    def client_count(self) -> int:
        return len(self._clients)

    def credential(self, identity: Identity) -> AsyncTokenCredential:
        cred = self._credentials.get(identity)
        if cred is None:
            options = self.settings.common()
            if self.settings.authority:
                options["authority"] = self.settings.authority
            cred = self._credential_factory(identity, options)
            self._credentials[identity] = cred
            log.info("created Key Vault credential for %s", identity.describe())
        return cred

    def client(self, vault_url: str, identity: Identity) -> VaultClient:
        if self._closed:
            raise RuntimeError("the Key Vault client pool is closed")
        key = (normalize_vault_url(vault_url), identity)
        existing = self._clients.get(key)
        if existing is not None:
            return existing
        gate = ThrottleGate()
        settings = self.settings
        retry = BoundedRetryPolicy(
            max_retry_after=settings.max_retry_after,
            on_throttle=gate.throttle,
            retry_total=settings.retry_total,
            retry_backoff_factor=settings.retry_backoff_factor,
            retry_backoff_max=settings.retry_backoff_max,
        )
        client = SecretClient(
            vault_url=key[0],
            credential=self.credential(identity),
            retry_policy=retry,
            **settings.common(),
        )
        created = VaultClient(key[0], identity, client, gate)
        self._clients[key] = created
        log.info("created SecretClient for %s as %s", key[0], identity.describe())
        return created

    async def close(self) -> None:
        """Close every client, then every credential (clients use them); errors are logged, not raised."""
        self._closed = True
        clients, self._clients = list(self._clients.values()), {}
        credentials, self._credentials = list(self._credentials.values()), {}
        for vc in clients:
            try:
                await asyncio.wait_for(vc.client.close(), timeout=5)
            except Exception as exc:
                log.warning("closing SecretClient for %s failed: %s", vc.vault_url, type(exc).__name__)
        for cred in credentials:
            try:
                await asyncio.wait_for(cred.close(), timeout=5)
            except Exception as exc:
                log.warning("closing credential failed: %s", type(exc).__name__)
