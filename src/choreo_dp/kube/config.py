"""Connection settings from kubeconfig files or the in-cluster service account.

What kubectl reads is read the same way: several files in ``KUBECONFIG`` merged (the first file
to define a name, or current-context, wins; relative paths resolve against the file that holds
them; missing files are skipped), ``exec`` credential plugins (``execauth``), ``proxy-url``,
``tls-server-name`` and ``insecure-skip-tls-verify``.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import logging
import os
import ssl
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from choreo_dp.kube.errors import ConfigError
from choreo_dp.kube.execauth import ExecAuthenticator, ExecConfig, ExecCredential

log = logging.getLogger(__name__)

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
    proxy_url: str | None = None
    tls_server_name: str | None = None
    exec_auth: ExecAuthenticator | None = None
    _tempfiles: list[str] = field(default_factory=list, repr=False)
    _token_read_at: float | None = field(default=None, repr=False)

    def ssl_context(self, credential: ExecCredential | None = None) -> ssl.SSLContext | bool:
        """The TLS settings; ``credential``: an exec plugin's client certificate to present."""
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
        if credential is not None and credential.client_certificate_data and credential.client_key_data:
            _load_pem_chain(ctx, credential.client_certificate_data, credential.client_key_data)
        elif self.client_cert_file:
            ctx.load_cert_chain(self.client_cert_file, self.client_key_file)
        return ctx

    def current_token(self) -> str | None:
        """Token files are re-read because projected service-account tokens rotate.

        Like client-go, at most once a minute: this runs on every request, on the event loop.
        """
        if self.exec_auth is not None:
            cached = self.exec_auth.cached
            return cached.token if cached is not None else None
        if not self.token_file:
            return self.token
        now = time.monotonic()
        if self._token_read_at is None or now - self._token_read_at >= TOKEN_REREAD_SECONDS:
            # A missing file keeps the last token read; the API answers 401 once it expires.
            with contextlib.suppress(OSError):
                self.token = Path(self.token_file).read_text().strip()
            self._token_read_at = now
        return self.token


def _load_pem_chain(ctx: ssl.SSLContext, cert: str, key: str) -> None:
    # ssl loads chains from files only: write them private (mkstemp is 0600), load, remove at once.
    names: list[str] = []
    try:
        for data, suffix in ((cert, ".crt"), (key, ".key")):
            fd, name = tempfile.mkstemp(prefix="choreo-dp-exec-", suffix=suffix)
            names.append(name)
            with os.fdopen(fd, "w") as fh:
                fh.write(data)
        ctx.load_cert_chain(names[0], names[1])
    finally:
        for name in names:
            with contextlib.suppress(OSError):
                os.unlink(name)


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


def _read(file: Path) -> dict[str, Any] | None:
    """One kubeconfig document; None if the file does not exist."""
    try:
        text = file.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read kubeconfig {file}: {exc}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot read kubeconfig {file}: {exc}") from None
    if doc is None:
        return {}  # kubectl accepts an empty file
    if not isinstance(doc, dict):
        raise ConfigError(f"kubeconfig {file} is not a mapping")
    return doc


@dataclass
class _Merged:
    files: list[Path] = field(default_factory=list)
    current_context: str | None = None
    # name -> (body, the file that defined it)
    entries: dict[str, dict[str, tuple[dict[str, Any], Path]]] = field(
        default_factory=lambda: {"contexts": {}, "clusters": {}, "users": {}}
    )

    def add(self, file: Path, doc: dict[str, Any]) -> None:
        self.files.append(file)
        if not self.current_context and doc.get("current-context"):
            self.current_context = str(doc["current-context"])
        for section, key in (("contexts", "context"), ("clusters", "cluster"), ("users", "user")):
            items = doc.get(section) or []
            if not isinstance(items, list):
                raise ConfigError(f"kubeconfig {file}: {section} is not a list")
            for item in items:
                if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                    raise ConfigError(f"kubeconfig {file}: an entry of {section} has no name")
                body = item.get(key)
                # The first file to define a name wins, as in kubectl.
                self.entries[section].setdefault(item["name"], (body if isinstance(body, dict) else {}, file))

    def named(self, section: str, name: str) -> tuple[dict[str, Any], Path]:
        try:
            return self.entries[section][name]
        except KeyError:
            raise ConfigError(f"kubeconfig has no {section[:-1]} named {name!r}") from None

    def where(self) -> str:
        return ", ".join(map(str, self.files))


def from_kubeconfig(path: str | os.PathLike[str], context: str | None = None) -> ConnectionConfig:
    """Settings from one kubeconfig file (a missing file is an error here)."""
    file = Path(path).expanduser()
    if _read(file) is None:
        raise ConfigError(f"cannot read kubeconfig {file}: no such file")
    return from_kubeconfigs([file], context)


def from_kubeconfigs(paths: Sequence[str | os.PathLike[str]], context: str | None = None) -> ConnectionConfig:
    """Settings from several kubeconfig files merged the way kubectl merges ``KUBECONFIG``."""
    merged = _Merged()
    for path in paths:
        if not str(path):
            continue
        file = Path(path).expanduser()
        doc = _read(file)
        if doc is not None:
            merged.add(file, doc)
    if not merged.files:
        raise ConfigError(f"none of the kubeconfig files exist: {', '.join(map(str, paths))}")
    ctx_name = context or merged.current_context
    if not ctx_name:
        raise ConfigError(f"kubeconfig {merged.where()} has no current-context")
    ctx, _ = merged.named("contexts", ctx_name)
    cluster, cluster_file = merged.named("clusters", str(ctx.get("cluster", "")))
    user, user_file = merged.named("users", str(ctx["user"])) if ctx.get("user") else ({}, cluster_file)
    if "server" not in cluster:
        raise ConfigError(f"kubeconfig {merged.where()}: cluster {ctx.get('cluster')!r} has no server")
    cluster_dir, user_dir = cluster_file.parent, user_file.parent
    cfg = ConnectionConfig(
        server=str(cluster["server"]).rstrip("/"),
        token=user.get("token"),
        token_file=_resolve(user_dir, user.get("tokenFile")),
        ca_file=_resolve(cluster_dir, cluster.get("certificate-authority")),
        client_cert_file=_resolve(user_dir, user.get("client-certificate")),
        client_key_file=_resolve(user_dir, user.get("client-key")),
        insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
        namespace=ctx.get("namespace", "default"),
        proxy_url=_proxy_url(cluster.get("proxy-url"), merged),
        tls_server_name=cluster.get("tls-server-name") or None,
    )
    if cfg.insecure and cfg.server.startswith("https://"):
        log.warning(
            "kubeconfig %s: insecure-skip-tls-verify: the API server's identity is not checked",
            merged.where(),
        )
    if cluster.get("certificate-authority-data"):
        cfg.ca_data = base64.b64decode(cluster["certificate-authority-data"])
    if user.get("client-certificate-data"):
        cfg.client_cert_file = _data_to_file(user["client-certificate-data"], ".crt", cfg)
    if user.get("client-key-data"):
        cfg.client_key_file = _data_to_file(user["client-key-data"], ".key", cfg)
    raw_exec = user.get("exec")
    if raw_exec:
        if not isinstance(raw_exec, dict):
            raise ConfigError(f"kubeconfig {user_file}: user {ctx.get('user')!r}: exec is not a mapping")
        spec = ExecConfig.parse(raw_exec, f"kubeconfig {user_file}: user {ctx.get('user')!r}")
        if os.sep in spec.command and not os.path.isabs(spec.command):
            # A relative command with a path separator is relative to its kubeconfig, as in kubectl.
            spec = dataclasses.replace(spec, command=str(user_dir / spec.command))
        cfg.exec_auth = ExecAuthenticator(spec, cluster=_cluster_info(cfg, cluster))
    return cfg


def _proxy_url(raw: Any, merged: _Merged) -> str | None:
    if not raw:
        return None
    scheme = urlsplit(str(raw)).scheme
    if scheme not in ("http", "https"):
        raise ConfigError(
            f"kubeconfig {merged.where()}: proxy-url {raw!r}: only http and https proxies are supported"
        )
    return str(raw)


def _cluster_info(cfg: ConnectionConfig, cluster: dict[str, Any]) -> dict[str, Any]:
    """``spec.cluster`` of KUBERNETES_EXEC_INFO (for ``provideClusterInfo``)."""
    info: dict[str, Any] = {"server": cfg.server, "insecure-skip-tls-verify": cfg.insecure}
    if cfg.tls_server_name:
        info["tls-server-name"] = cfg.tls_server_name
    if cluster.get("certificate-authority-data"):
        info["certificate-authority-data"] = cluster["certificate-authority-data"]
    if cfg.proxy_url:
        info["proxy-url"] = cfg.proxy_url
    extensions = cluster.get("extensions") or []
    for ext in extensions if isinstance(extensions, list) else []:
        if isinstance(ext, dict) and ext.get("name") == "client.authentication.k8s.io/exec":
            info["config"] = ext.get("extension")
    return info


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
    """Explicit path, then $KUBECONFIG (its files merged), then ~/.kube/config, then in-cluster."""
    if path:
        return from_kubeconfig(path)
    env = os.environ.get("KUBECONFIG")
    if env:
        return from_kubeconfigs(env.split(os.pathsep))
    if "KUBERNETES_SERVICE_HOST" in os.environ:
        return in_cluster()
    default = Path("~/.kube/config").expanduser()
    if default.exists():
        return from_kubeconfig(default)
    return in_cluster()
