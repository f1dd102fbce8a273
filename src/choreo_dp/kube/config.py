"""Connection settings from a kubeconfig file or the in-cluster service account."""

from __future__ import annotations

import base64
import contextlib
import os
import ssl
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from choreo_dp.kube.errors import ConfigError

TOKEN_REREAD_SECONDS = 60.0
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass
class ConnectionConfig:
    server: str
    token: str | None = None
    token_file: str | None = None
    ca_file: str | None = None
    ca_data: bytes | None = None
    client_cert_file: str | None = None
    client_key_file: str | None = None
    insecure: bool = False
    namespace: str = "default"
    _tempfiles: list[str] = field(default_factory=list, repr=False)
    _token_read_at: float | None = field(default=None, repr=False)

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.server.startswith("https://"):
            return False
        if self.insecure:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif self.ca_file or self.ca_data:
            ctx = ssl.create_default_context(
                cafile=self.ca_file, cadata=self.ca_data.decode() if self.ca_data else None
            )
        else:
            ctx = ssl.create_default_context()
        if self.client_cert_file:
            ctx.load_cert_chain(self.client_cert_file, self.client_key_file)
        return ctx

    def current_token(self) -> str | None:
        """Token files are re-read because projected service-account tokens rotate.

        Like client-go, at most once a minute: this runs on every request, on the event loop.
        """
        if not self.token_file:
            return self.token
        now = time.monotonic()
        if self._token_read_at is None or now - self._token_read_at >= TOKEN_REREAD_SECONDS:
            # A missing file keeps the last token read; the API answers 401 once it expires.
            with contextlib.suppress(OSError):
                self.token = Path(self.token_file).read_text().strip()
            self._token_read_at = now
        return self.token


def _data_to_file(data: str, suffix: str, cfg: ConnectionConfig) -> str:
    fd, name = tempfile.mkstemp(prefix="choreo-dp-kube-", suffix=suffix)
    with os.fdopen(fd, "wb") as fh:
        fh.write(base64.b64decode(data))
    cfg._tempfiles.append(name)
    return name


def _resolve(base: Path, value: str | None) -> str | None:
    if value is None:
        return None
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else base / p)


def _named(items: list[dict[str, Any]], name: str, what: str) -> dict[str, Any]:
    for item in items or []:
        if item.get("name") == name:
            body = item.get(what)
            return body if isinstance(body, dict) else {}
    raise ConfigError(f"kubeconfig has no {what} named {name!r}")


def from_kubeconfig(path: str | os.PathLike[str], context: str | None = None) -> ConnectionConfig:
    file = Path(path).expanduser()
    try:
        doc = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read kubeconfig {file}: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"kubeconfig {file} is not a mapping")
    ctx_name = context or doc.get("current-context")
    if not ctx_name:
        raise ConfigError(f"kubeconfig {file} has no current-context")
    ctx = _named(doc.get("contexts", []), ctx_name, "context")
    cluster = _named(doc.get("clusters", []), ctx.get("cluster", ""), "cluster")
    user = _named(doc.get("users", []), ctx["user"], "user") if ctx.get("user") else {}
    if "server" not in cluster:
        raise ConfigError(f"kubeconfig {file}: cluster has no server")
    base = file.parent
    cfg = ConnectionConfig(
        server=str(cluster["server"]).rstrip("/"),
        token=user.get("token"),
        token_file=_resolve(base, user.get("tokenFile")),
        ca_file=_resolve(base, cluster.get("certificate-authority")),
        client_cert_file=_resolve(base, user.get("client-certificate")),
        client_key_file=_resolve(base, user.get("client-key")),
        insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
        namespace=ctx.get("namespace", "default"),
    )
    if cluster.get("certificate-authority-data"):
        cfg.ca_data = base64.b64decode(cluster["certificate-authority-data"])
    if user.get("client-certificate-data"):
        cfg.client_cert_file = _data_to_file(user["client-certificate-data"], ".crt", cfg)
    if user.get("client-key-data"):
        cfg.client_key_file = _data_to_file(user["client-key-data"], ".key", cfg)
    return cfg


def in_cluster() -> ConnectionConfig:
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise ConfigError(
            "not running in a cluster (KUBERNETES_SERVICE_HOST is unset) and no kubeconfig given"
        )
    host = f"[{host}]" if ":" in host else host
    ns_file = SERVICE_ACCOUNT_DIR / "namespace"
    return ConnectionConfig(
        server=f"https://{host}:{port}",
        token_file=str(SERVICE_ACCOUNT_DIR / "token"),
        ca_file=str(SERVICE_ACCOUNT_DIR / "ca.crt"),
        namespace=ns_file.read_text().strip() if ns_file.exists() else "default",
    )


def load(path: str | os.PathLike[str] | None = None) -> ConnectionConfig:
    """Explicit path, then $KUBECONFIG, then ~/.kube/config, then the in-cluster service account."""
    if path:
        return from_kubeconfig(path)
    env = os.environ.get("KUBECONFIG")
    if env:
        return from_kubeconfig(env.split(os.pathsep)[0])
    if "KUBERNETES_SERVICE_HOST" in os.environ:
        return in_cluster()
    default = Path("~/.kube/config").expanduser()
    if default.exists():
        return from_kubeconfig(default)
    return in_cluster()
