"""The sandbox's Key Vault: the emulated vault and Entra token endpoint as one part of the sandbox.

``choreo-dp sandbox keyvault serve`` (a child of the sandbox, like the operator) serves one vault,
``sandbox``, with a few demo secrets, over TLS with the sandbox's own server certificate, and the
token endpoint the operator's workload identity credential calls (``AZURE_AUTHORITY_HOST``). The
operator's identity is what AKS would give it: a federated token file (``DIR/keyvault-identity-token``,
the projected service account token's stand-in) that the emulated Entra trusts for one client id.

What the vault holds is kept in ``DIR/keyvault.json``, so a restart (the sandbox restarts a part that
dies, a rerun reuses the directory) keeps every rotation. ``choreo-dp sandbox keyvault set`` rotates
a secret through the running vault's admin endpoint, guarded by ``DIR/keyvault-admin-token``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import ssl
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from choreo_sandbox.keyvault.entra import EntraEmulator
from choreo_sandbox.keyvault.vault import EmulatedVault, KeyVaultEmulator, SecretVersion
from choreo_sandbox.tls import ensure_tls

VAULT = "sandbox"
# The vault is addressed by the loopback address (no resolver needed in the operator's process);
# its challenge resource is the address's parent "domain", so the SDK's subdomain check passes.
VAULT_HOST = "127.0.0.1"
RESOURCE_HOST = "0.0.1"
TENANT_ID = str(uuid.UUID(int=0x5A4D_B0C5))
CLIENT_ID = str(uuid.UUID(int=0x5A4D_0BE4))
REFRESH_INTERVAL = "10s"  # so a rotation reaches the pods while one watches
# name -> (value, pinned version or None). examples/keyvault-app.yaml reads the first two and pins
# psp-api-key to the version given here.
DEMO_SECRETS: dict[str, tuple[str, str | None]] = {
    "payments-db-password": ("sandbox-db-password-1", None),
    "psp-api-key": ("sandbox-psp-key-1", "0123456789abcdef0123456789abcdef"),
    "greeting": ("hello from the sandbox's Key Vault", None),
}


class KeyVaultUnavailable(Exception):
    """The sandbox's Key Vault is not running in the directory (or refused the request)."""


@dataclass(frozen=True)
class KeyVaultFiles:
    directory: Path

    @property
    def state(self) -> Path:
        return self.directory / "keyvault.json"

    @property
    def identity_token(self) -> Path:
        return self.directory / "keyvault-identity-token"

    @property
    def admin_token(self) -> Path:
        return self.directory / "keyvault-admin-token"

    @property
    def endpoints(self) -> Path:
        return self.directory / "keyvault-endpoints.json"

    @property
    def trust_bundle(self) -> Path:
        return self.directory / "trust-bundle.pem"

    def ensure_tokens(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for path in (self.identity_token, self.admin_token):
            if not path.exists():
                path.touch(mode=0o600)
                # No newline: the credential presents the file's content as it is.
                path.write_text(secrets.token_urlsafe(32))


def vault_url(port: int) -> str:
    return f"https://{VAULT_HOST}:{port}/"


def authority(port: int) -> str:
    return f"https://{VAULT_HOST}:{port}"


def operator_env(directory: Path, vault_port: int, entra_port: int) -> dict[str, str]:
    """What the operator needs to read the sandbox's vault as AKS workload identity would set it up.

    Environments without ``keyVault`` use the vault given here (the chart's default Key Vault). The
    operator trusts the sandbox's CA on top of the system's roots through ``SSL_CERT_FILE``, the
    bundle OpenSSL loads by default, which is what the azure SDK's transport uses."""
    files = KeyVaultFiles(directory)
    files.ensure_tokens()
    ca = ensure_tls(directory).ca_cert
    system = ssl.get_default_verify_paths().cafile
    bundle = Path(system).read_bytes() if system and Path(system).is_file() else b""
    files.trust_bundle.write_bytes(bundle.rstrip() + b"\n" + ca.read_bytes())
    return {
        "AZURE_FEDERATED_TOKEN_FILE": str(files.identity_token),
        "AZURE_CLIENT_ID": CLIENT_ID,
        "AZURE_TENANT_ID": TENANT_ID,
        "AZURE_AUTHORITY_HOST": authority(entra_port),
        "CHOREO_DP_DEFAULT_KEYVAULT_URL": vault_url(vault_port),
        "CHOREO_DP_DEFAULT_KEYVAULT_REFRESH_INTERVAL": REFRESH_INTERVAL,
        "SSL_CERT_FILE": str(files.trust_bundle),
    }


def _load(vault: EmulatedVault, path: Path) -> bool:
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    for name, versions in (stored.get("secrets") or {}).items():
        vault.secrets[name] = [
            SecretVersion(v["version"], v["value"], bool(v.get("enabled", True)), int(v["created"]))
            for v in versions
        ]
    return True


def _save(vault: EmulatedVault, path: Path) -> None:
    data = {
        "vault": vault.name,
        "secrets": {
            name: [
                {"version": v.version, "value": v.value, "enabled": v.enabled, "created": v.created}
                for v in versions
            ]
            for name, versions in vault.secrets.items()
        },
    }
    tmp = path.with_suffix(".tmp")
    tmp.touch(mode=0o600)
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def _server_context(directory: Path) -> ssl.SSLContext:
    tls = ensure_tls(directory)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(tls.server_cert), str(tls.server_key))
    return ctx


async def serve_forever(directory: Path, vault_port: int, entra_port: int) -> int:
    """Serve the vault and the token endpoint until SIGINT/SIGTERM (``directory`` absolute)."""
    files = KeyVaultFiles(directory)
    files.ensure_tokens()
    ctx = _server_context(directory)
    entra = EntraEmulator(ctx, listen_port=entra_port, host=VAULT_HOST)
    entra.trust(TENANT_ID, CLIENT_ID, files.identity_token.read_text())
    kv = KeyVaultEmulator(
        entra,
        ctx,
        listen_port=vault_port,
        resource_host=RESOURCE_HOST,
        admin_token=files.admin_token.read_text().strip(),
        on_change=lambda vault: _save(vault, files.state),
    )
    vault = kv.add_vault(VAULT, TENANT_ID, {CLIENT_ID}, host=VAULT_HOST)
    if not _load(vault, files.state):
        for name, (value, version) in DEMO_SECRETS.items():
            vault.set_secret(name, value, version)
        _save(vault, files.state)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await entra.start()
    await kv.start()
    try:
        endpoints = {"vault": kv.url(VAULT), "authority": entra.authority, "vaultName": VAULT}
        files.endpoints.write_text(json.dumps(endpoints) + "\n")
        print(
            f"listening on {kv.url(VAULT)} (Key Vault {VAULT!r}, secrets {', '.join(sorted(vault.secrets))}) "
            f"and {entra.authority} (Entra ID token endpoint)",
            flush=True,
        )
        await stop.wait()
    finally:
        await kv.stop()
        await entra.stop()
        files.endpoints.unlink(missing_ok=True)
    return 0


async def set_secret(directory: Path, name: str, value: str, timeout: float = 10.0) -> str:
    """Add a version of secret ``name`` in the running sandbox's vault; returns the new version."""
    files = KeyVaultFiles(directory)
    try:
        endpoints: dict[str, Any] = json.loads(files.endpoints.read_text())
        token = files.admin_token.read_text().strip()
    except (OSError, ValueError):
        raise KeyVaultUnavailable(
            f"no sandbox Key Vault is running in {files.directory} "
            f"(start one with: choreo-dp sandbox --dir {files.directory})"
        ) from None
    ctx = ssl.create_default_context(cafile=str(files.directory / "ca.pem"))
    url = f"{endpoints['vault'].rstrip('/')}/_sandbox/vaults/{endpoints['vaultName']}/secrets/{name}"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.put(
                url, json={"value": value}, headers={"Authorization": f"Bearer {token}"}, ssl=ctx
            ) as resp,
        ):
            body: dict[str, Any] = await resp.json(content_type=None)
            if resp.status != 200:
                message = (body.get("error") or {}).get("message", resp.reason)
                raise KeyVaultUnavailable(f"the sandbox's Key Vault refused: {resp.status} {message}")
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise KeyVaultUnavailable(
            f"the sandbox's Key Vault at {endpoints['vault']} does not answer ({type(exc).__name__}); "
            f"is the sandbox in {files.directory} still running?"
        ) from None
    return str(body["version"])


def read_stdin_value() -> str:
    """A value given as ``-``: stdin without its final newline (``echo v | ... set NAME -``)."""
    return sys.stdin.read().removesuffix("\n")
