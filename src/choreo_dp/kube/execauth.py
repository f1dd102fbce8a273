"""Credentials from a kubeconfig ``exec`` plugin (kubelogin, aws eks get-token, gke-gcloud-auth-plugin).

The protocol is client-go's (``client.authentication.k8s.io`` v1 and v1beta1): run the command
with its args and extra env, plus ``KUBERNETES_EXEC_INFO`` describing the request; read an
``ExecCredential`` from stdout whose ``status`` holds a bearer ``token`` or a client certificate
and key (PEM), and an optional ``expirationTimestamp``. The credential is cached until that time
(client-go applies no skew either) or until the API answers 401, then the plugin runs again.
The plugin runs as an asyncio subprocess, never blocking the event loop; concurrent requests
that need a fresh credential share one run. A plugin that fails is a :class:`CredentialError`
(an ``ApiError`` 401: retried by watch streams, reported by requests), a stanza we cannot use a
:class:`ConfigError` when the kubeconfig is read.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from choreo_dp.kube.errors import ConfigError, CredentialError

API_VERSIONS = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1")
EXEC_TIMEOUT = 120.0  # an interactive-less device-code login can take a while; a hung one must not
_STDERR_TAIL = 2000


@dataclass(frozen=True)
class ExecConfig:
    """The ``user.exec`` stanza of a kubeconfig."""

    command: str
    api_version: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    install_hint: str = ""
    provide_cluster_info: bool = False
    interactive_mode: str = "IfAvailable"

    @classmethod
    def parse(cls, raw: Mapping[str, Any], where: str) -> ExecConfig:
        command = raw.get("command")
        if not isinstance(command, str) or not command:
            raise ConfigError(f"{where}: exec needs a command")
        api_version = raw.get("apiVersion")
        if api_version not in API_VERSIONS:
            raise ConfigError(
                f"{where}: exec apiVersion {api_version!r} is not one of {', '.join(API_VERSIONS)}"
            )
        args = raw.get("args") or []
        env = raw.get("env") or []
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise ConfigError(f"{where}: exec args must be a list of strings")
        pairs: list[tuple[str, str]] = []
        for item in env if isinstance(env, list) else [None]:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise ConfigError(f"{where}: exec env must be a list of {{name, value}}")
            pairs.append((item["name"], str(item.get("value", ""))))
        mode = raw.get("interactiveMode") or "IfAvailable"
        if mode not in ("Never", "IfAvailable", "Always"):
            raise ConfigError(f"{where}: exec interactiveMode {mode!r} is not Never, IfAvailable or Always")
        if mode == "Always":
            # A controller has no terminal to hand the plugin.
            raise ConfigError(f"{where}: exec interactiveMode Always needs a terminal; this client has none")
        return cls(
            command=command,
            api_version=str(api_version),
            args=tuple(args),
            env=tuple(pairs),
            install_hint=str(raw.get("installHint") or ""),
            provide_cluster_info=bool(raw.get("provideClusterInfo", False)),
            interactive_mode=str(mode),
        )


@dataclass(frozen=True)
class ExecCredential:
    token: str | None
    client_certificate_data: str | None
    client_key_data: str | None
    expires_at: float | None  # seconds since the epoch

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


def parse_credential(stdout: bytes, api_version: str) -> ExecCredential:
    """The ``ExecCredential`` a plugin printed; CredentialError when it is not one we can use."""
    try:
        doc = json.loads(stdout)
    except ValueError as exc:
        raise CredentialError(f"exec plugin printed no ExecCredential JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("kind") != "ExecCredential":
        raise CredentialError("exec plugin output is not an ExecCredential")
    if doc.get("apiVersion") != api_version:
        raise CredentialError(
            f"exec plugin answered apiVersion {doc.get('apiVersion')!r}, the kubeconfig asked for {api_version!r}"
        )
    status = doc.get("status")
    if not isinstance(status, dict):
        raise CredentialError("exec plugin's ExecCredential has no status")
    token = status.get("token") or None
    cert = status.get("clientCertificateData") or None
    key = status.get("clientKeyData") or None
    if (cert is None) != (key is None):
        raise CredentialError(
            "exec plugin's ExecCredential has a client certificate without its key, or a key without its certificate"
        )
    if token is None and cert is None:
        raise CredentialError("exec plugin's ExecCredential has neither a token nor a client certificate")
    for name, value in (("token", token), ("clientCertificateData", cert), ("clientKeyData", key)):
        if value is not None and not isinstance(value, str):
            raise CredentialError(f"exec plugin's ExecCredential status.{name} is not a string")
    expires_at: float | None = None
    stamp = status.get("expirationTimestamp")
    if stamp:
        try:
            expires_at = datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
        except ValueError:
            raise CredentialError(f"exec plugin's expirationTimestamp {stamp!r} is not RFC 3339") from None
    return ExecCredential(token, cert, key, expires_at)


@dataclass
class ExecAuthenticator:
    """Runs the plugin when there is no credential or it has expired; caches it otherwise."""

    spec: ExecConfig
    cluster: Mapping[str, Any] = field(default_factory=dict)
    clock: Callable[[], float] = time.time
    _cached: ExecCredential | None = field(default=None, repr=False)
    _lock: asyncio.Lock | None = field(default=None, repr=False)

    @property
    def cached(self) -> ExecCredential | None:
        return self._cached

    def invalidate(self, stale: ExecCredential | None = None) -> None:
        """Forget the credential (the API refused it); ``stale``: only if it is still that one."""
        if stale is None or self._cached is stale:
            self._cached = None

    async def credential(self) -> ExecCredential:
        cached = self._cached
        if cached is not None and not cached.expired(self.clock()):
            return cached
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            cached = self._cached
            if cached is not None and not cached.expired(self.clock()):
                return cached  # another request ran the plugin while we waited
            self._cached = await self._run()
            return self._cached

    def _exec_info(self) -> str:
        spec: dict[str, Any] = {"interactive": False}
        if self.spec.provide_cluster_info:
            spec["cluster"] = dict(self.cluster)
        return json.dumps({"apiVersion": self.spec.api_version, "kind": "ExecCredential", "spec": spec})

    async def _run(self) -> ExecCredential:
        env = dict(os.environ)
        env.update(self.spec.env)
        env["KUBERNETES_EXEC_INFO"] = self._exec_info()
        try:
            proc = await asyncio.create_subprocess_exec(
                self.spec.command,
                *self.spec.args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
            )
        except OSError as exc:
            hint = f" ({self.spec.install_hint.strip()})" if self.spec.install_hint else ""
            raise CredentialError(f"cannot run exec plugin {self.spec.command!r}: {exc}{hint}") from None
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(), EXEC_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise CredentialError(
                f"exec plugin {self.spec.command!r} did not answer in {EXEC_TIMEOUT:.0f}s"
            ) from None
        if proc.returncode != 0:
            tail = stderr.decode(errors="replace")[-_STDERR_TAIL:].strip()
            raise CredentialError(f"exec plugin {self.spec.command!r} exited with {proc.returncode}: {tail}")
        return parse_credential(stdout, self.spec.api_version)
