"""Fault injection for a real kube-apiserver: a TLS reverse proxy that consults the emulator's rules.

``async with FaultProxy(upstream_kubeconfig) as proxy:`` serves ``https://127.0.0.1:N`` and writes
``proxy.kubeconfig_path`` for clients.  Every request is forwarded to the upstream API server with
the upstream kubeconfig's credentials; responses stream back unbuffered (watches and
``pods/log?follow`` flow chunk by chunk, long-running requests never time out).  Before
forwarding, the request path is parsed the way kube-apiserver's ``RequestInfoFactory`` does
(``request_info``), and ``proxy.faults`` — the same ``Faults`` the emulated API uses — may fail
or stall it: ``proxy.faults.add(verb="patch", resource="configmaps", status=429, retry_after=1)``.
Injected failures leave as the emulator's ``Status`` bodies (``errors.py``), with ``Retry-After``.

``FaultProxyThread`` runs one on a background loop for synchronous tests (``.call(fn)``,
``.add_fault(...)``).

Clients authenticate to the proxy with a client certificate from the proxy's own throwaway CA
(``pki.create_pki``), embedded in the kubeconfig it writes: the port is loopback only, but it
holds the upstream's admin identity, so it is not left open to anything that can connect.  A
request that carries its own ``Authorization`` header is forwarded with that header and without
the upstream client certificate, so the upstream authenticates (and authorizes) the caller, not
the proxy.  Not proxied: protocol upgrades (exec, attach, port-forward); the upstream sees them
without ``Upgrade`` and answers 400.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import ipaddress
import logging
import os
import shutil
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from choreo_dp.kube.config import ConnectionConfig, from_kubeconfig
from choreo_sandbox.cluster.pki import ClusterPki, create_pki
from kube_emulator.app import failure_response
from kube_emulator.errors import ApiFailure
from kube_emulator.faults import Fault, Faults
from kube_emulator.serving import ServiceThread, start_site

log = logging.getLogger(__name__)

MAX_BODY = 32 * 1024 * 1024  # kube-apiserver refuses far less (3 MiB objects); let it say so
CONNECT_TIMEOUT = 30.0
# RFC 7230 section 6.1 hop-by-hop headers, plus the ones aiohttp recomputes for each hop.
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Trailers",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
        "Content-Length",
        "Expect",
    )
)

# k8s.io/apiserver/pkg/endpoints/request/requestinfo.go
API_PREFIXES = frozenset({"api", "apis"})
GROUPLESS_API_PREFIXES = frozenset({"api"})
SPECIAL_VERBS = frozenset({"proxy", "watch"})
SPECIAL_VERBS_NO_SUBRESOURCES = frozenset({"proxy"})
NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})
METHOD_VERBS = {
    "POST": "create",
    "GET": "get",
    "HEAD": "get",
    "PUT": "update",
    "PATCH": "patch",
    "DELETE": "delete",
}


@dataclass(frozen=True)
class RequestInfo:
    """What kube-apiserver's ``RequestInfoFactory`` makes of a request (the fields faults match on).

    Non-resource requests (``/healthz``, ``/version``, discovery such as ``/api/v1`` or
    ``/apis/apps/v1``) have ``is_resource_request=False`` and the lowercase method as verb.
    """

    is_resource_request: bool
    verb: str
    api_prefix: str = ""
    api_group: str = ""
    api_version: str = ""
    namespace: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""


def _truthy(value: str | None) -> bool:
    """``metav1.ListOptions`` bools: absent, ``""``, ``0`` and ``false`` are false, anything else true."""
    return value is not None and value != "" and value != "0" and value.lower() != "false"


def _exact_name(field_selector: str | None) -> str:
    """The name a ``metadata.name=X`` term pins (``fields.Selector.RequiresExactMatch``), if valid."""
    for term in (field_selector or "").split(","):
        term = term.strip()
        if "!=" in term:
            continue
        key, sep, value = term.partition("==") if "==" in term else term.partition("=")
        if sep and key.strip() == "metadata.name":
            value = value.strip()
            # path.IsValidPathSegmentName
            if value not in (".", "..") and "/" not in value and "%" not in value:
                return value
            return ""
    return ""


def request_info(method: str, path: str, query: Mapping[str, str] | None = None) -> RequestInfo:
    """Parse a Kubernetes request path like kube-apiserver does (``RequestInfoFactory.NewRequestInfo``)."""
    query = query or {}
    non_resource = RequestInfo(False, method.lower())
    trimmed = path.strip("/")
    parts = trimmed.split("/") if trimmed else []
    if len(parts) < 3 or parts[0] not in API_PREFIXES:
        return non_resource
    prefix, parts = parts[0], parts[1:]
    group = ""
    if prefix not in GROUPLESS_API_PREFIXES:
        if len(parts) < 3:
            return non_resource
        group, parts = parts[0], parts[1:]
    version, parts = parts[0], parts[1:]
    if parts[0] in SPECIAL_VERBS:
        if len(parts) < 2:  # the apiserver answers "unable to determine kind and namespace from url"
            return non_resource
        verb, parts = parts[0], parts[1:]
    else:
        verb = METHOD_VERBS.get(method.upper(), "")
    namespace = ""
    if parts[0] == "namespaces" and len(parts) > 1:
        namespace = parts[1]
        if len(parts) > 2 and parts[2] not in NAMESPACE_SUBRESOURCES:
            parts = parts[2:]
    resource = parts[0]
    name = parts[1] if len(parts) >= 2 else ""
    subresource = parts[2] if len(parts) >= 3 and verb not in SPECIAL_VERBS_NO_SUBRESOURCES else ""
    if not name and verb == "get":
        verb = "watch" if _truthy(query.get("watch")) else "list"
        name = _exact_name(query.get("fieldSelector"))
    if not name and verb == "delete":
        verb = "deletecollection"
    return RequestInfo(True, verb, prefix, group, version, namespace, resource, subresource, name)


def _embedded_kubeconfig(server: str, pki: ClusterPki, namespace: str) -> dict[str, Any]:
    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "choreo-dp-fault-proxy",
                "cluster": {"server": server, "certificate-authority-data": b64(pki.ca.cert)},
            }
        ],
        "users": [
            {
                "name": "fault-proxy-client",
                "user": {
                    "client-certificate-data": b64(pki.admin.cert),
                    "client-key-data": b64(pki.admin.key),
                },
            }
        ],
        "contexts": [
            {
                "name": "choreo-dp-fault-proxy",
                "context": {
                    "cluster": "choreo-dp-fault-proxy",
                    "user": "fault-proxy-client",
                    "namespace": namespace,
                },
            }
        ],
        "current-context": "choreo-dp-fault-proxy",
    }


class FaultProxy:
    """A TLS reverse proxy on loopback in front of one kube-apiserver, with ``Faults`` before it.

    ``directory`` holds the proxy's PKI and client kubeconfig (a temporary one, removed on
    stop, when not given); ``kubeconfig`` overrides where the client kubeconfig is written.
    """

    def __init__(
        self,
        upstream_kubeconfig: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        directory: str | os.PathLike[str] | None = None,
        kubeconfig: str | os.PathLike[str] | None = None,
        context: str | None = None,
        faults: Faults | None = None,
    ) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"the fault proxy only listens on loopback, not {host}")
        self.upstream_kubeconfig = Path(upstream_kubeconfig)
        self.context = context
        self.host = host
        self.requested_port = port
        self.faults = faults if faults is not None else Faults()
        self._own_dir = directory is None
        self._dir_arg = Path(directory) if directory is not None else None
        self._kubeconfig_arg = Path(kubeconfig) if kubeconfig is not None else None
        self.dir: Path | None = None
        self.kubeconfig_path: Path | None = None
        self.upstream: str = ""
        self.requests = 0  # requests received (for tests that must prove traffic went through)
        self._cfg: ConnectionConfig | None = None
        self._session: aiohttp.ClientSession | None = None
        self._session_own_auth: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._port = 0

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self._port}"

    # ----- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        cfg = await asyncio.to_thread(from_kubeconfig, self.upstream_kubeconfig, self.context)
        self._cfg = cfg
        self.upstream = cfg.server
        self.dir = self._dir_arg or Path(tempfile.mkdtemp(prefix="choreo-dp-fault-proxy-"))
        pki = await asyncio.to_thread(create_pki, self.dir / "pki")
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT)
        # Forward exactly what the client sent: no default Accept/Accept-Encoding/User-Agent, no
        # Content-Type guessed for bodies, no transparent gunzip of what comes back.
        skip = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=cfg.ssl_context(), limit=0),
            timeout=timeout,
            auto_decompress=False,
            skip_auto_headers=skip,
        )
        anonymous = dataclasses.replace(cfg, client_cert_file=None, client_key_file=None, _tempfiles=[])
        self._session_own_auth = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=anonymous.ssl_context(), limit=0),
            timeout=timeout,
            auto_decompress=False,
            skip_auto_headers=skip,
        )
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca.cert))
        server_ctx.load_cert_chain(str(pki.serving.cert), str(pki.serving.key))
        server_ctx.verify_mode = ssl.CERT_REQUIRED
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a client that goes away (a watch it closes, a stalled request it
        # gives up on) ends its upstream request at once, not at the next event.
        self._runner, self._port = await start_site(
            app, self.host, self.requested_port, ssl_context=server_ctx, handler_cancellation=True
        )
        self.kubeconfig_path = self._kubeconfig_arg or self.dir / "kubeconfig"
        doc = _embedded_kubeconfig(self.url, pki, cfg.namespace)
        await asyncio.to_thread(_write_private, self.kubeconfig_path, yaml.safe_dump(doc, sort_keys=False))

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for session in (self._session, self._session_own_auth):
            if session is not None:
                await session.close()
        self._session = self._session_own_auth = None
        if self._cfg is not None:
            for name in self._cfg._tempfiles:
                with contextlib.suppress(OSError):
                    os.unlink(name)
            self._cfg._tempfiles.clear()
        if self._own_dir and self.dir is not None:
            await asyncio.to_thread(shutil.rmtree, self.dir, True)
            self.dir = None

    async def __aenter__(self) -> FaultProxy:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # ----- requests ------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if self.faults.rules:
            info = request_info(request.method, request.path, request.query)
            if info.is_resource_request:
                try:
                    await self.faults.apply(
                        info.verb, info.resource, info.subresource, info.namespace, info.name
                    )
                except ApiFailure as exc:
                    return failure_response(exc)
        return await self._forward(request)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None and self._session_own_auth is not None and self._cfg is not None
        headers = _end_to_end(request.headers)
        session = self._session
        if "Authorization" in headers:
            session = self._session_own_auth  # the caller's identity, not the proxy's certificate
        else:
            token = self._cfg.current_token()
            if token:
                headers["Authorization"] = f"Bearer {token}"
        body = await request.read() if request.body_exists else None
        url = URL(self.upstream + request.raw_path, encoded=True)
        try:
            upstream = await session.request(
                request.method, url, headers=headers, data=body, allow_redirects=False
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return failure_response(
                ApiFailure(503, f"fault proxy: upstream {self.upstream} unreachable: {exc}")
            )
        complete = False
        try:
            response = web.StreamResponse(
                status=upstream.status, reason=upstream.reason, headers=_end_to_end(upstream.headers)
            )
            if upstream.content_length is not None and "Transfer-Encoding" not in upstream.headers:
                response.content_length = upstream.content_length
            await response.prepare(request)
            # Chunks are written as they arrive: a watch event leaves as soon as the upstream
            # sends it.  An upstream failure mid-body propagates, and aiohttp drops the client
            # connection instead of ending the body cleanly.
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
            except ConnectionResetError:
                log.debug("client left during %s %s", request.method, request.path)
                return response
            complete = True
            return response
        finally:
            if complete:
                upstream.release()
            else:
                upstream.close()


def _end_to_end(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """The headers without hop-by-hop ones, including any the ``Connection`` header names."""
    named = {
        token.strip().lower() for value in headers.getall("Connection", []) for token in value.split(",")
    }
    out: CIMultiDict[str] = CIMultiDict()
    for key, value in headers.items():
        if key.lower() not in HOP_BY_HOP and key.lower() not in named:
            out.add(key, value)
    return out


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.touch(mode=0o600)
    tmp.write_text(text)
    tmp.replace(path)


class FaultProxyThread(ServiceThread[FaultProxy]):
    """A ``FaultProxy`` on its own event loop in a daemon thread, for synchronous tests.

    ``with FaultProxyThread(kubeconfig) as t:`` then ``t.kubeconfig_path``, ``t.add_fault(...)``,
    ``t.clear_faults()``, or ``t.call(fn)`` to run ``fn()`` on the proxy's loop (``Faults`` is not
    thread-safe, so rules are only touched there).
    """

    def __init__(self, upstream_kubeconfig: str | os.PathLike[str], **kwargs: Any) -> None:
        super().__init__(lambda: FaultProxy(upstream_kubeconfig, **kwargs), "kube-fault-proxy")

    @property
    def proxy(self) -> FaultProxy:
        return self.service

    @property
    def faults(self) -> Faults:
        return self.proxy.faults

    @property
    def kubeconfig_path(self) -> Path:
        assert self.proxy.kubeconfig_path is not None
        return self.proxy.kubeconfig_path

    def add_fault(self, **kwargs: Any) -> Fault:
        """``Faults.add`` on the proxy's loop; returns the rule (its ``hits`` count as it fires)."""
        return self.call(lambda: self.faults.add(**kwargs))

    def clear_faults(self) -> None:
        self.call(self.faults.clear)
