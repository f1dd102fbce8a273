"""A small asyncio Kubernetes client on aiohttp.

The official ``kubernetes`` package is synchronous; calling it from the operator or the agent
would block their event loops. This client covers what the product needs: get, list, create,
server-side apply, patch, delete, watch and events, with bounded retries on 429 and 5xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import ssl
from collections.abc import AsyncGenerator, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

import aiohttp

from choreo_dp.kube import config as kubeconfig
from choreo_dp.kube import resources as R
from choreo_dp.kube.backoff import Backoff
from choreo_dp.kube.errors import ApiError, CredentialError
from choreo_dp.kube.execauth import ExecCredential
from choreo_dp.kube.lines import MAX_LINE, split_lines
from choreo_dp.kube.resources import Resource

log = logging.getLogger(__name__)

PatchType = Literal["merge", "json", "strategic", "apply"]
_CONTENT_TYPES: dict[str, str] = {
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
    "strategic": "application/strategic-merge-patch+json",
    "apply": "application/apply-patch+yaml",
}
# client-go's pager default.
LIST_PAGE_SIZE = 500
_IDEMPOTENT = frozenset({"GET", "PUT", "PATCH", "DELETE", "HEAD"})


def _retry_after(headers: Mapping[str, str]) -> float | None:
    raw = headers.get("Retry-After")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None


def _label_selector(selector: str | Mapping[str, str] | None) -> str | None:
    if selector is None or isinstance(selector, str):
        return selector
    return ",".join(f"{k}={v}" for k, v in selector.items())


# The receive buffer of a paced stream's connection (Linux doubles it for bookkeeping): a few
# chunks of a busy log stream.
PACED_RECEIVE_BUFFER = 32 << 10


def _paced_socket(addr_info: Any) -> socket.socket:
    """A socket whose receive buffer is fixed small before it connects (set later, the window the
    kernel already advertised is not taken back)."""
    family, type_, proto = addr_info[0], addr_info[1], addr_info[2]
    sock = socket.socket(family=family, type=type_, proto=proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, PACED_RECEIVE_BUFFER)
    return sock


class KubeClient:
    def __init__(
        self,
        cfg: kubeconfig.ConnectionConfig,
        *,
        max_retries: int = 5,
        backoff: Backoff = Backoff(),
        request_timeout: float = 30.0,
        max_connections: int = 64,
        max_watch_event: int = MAX_LINE,
        user_agent: str = "choreo-dp",
    ) -> None:
        self.config = cfg
        self.max_retries = max_retries
        self.backoff = backoff
        self.request_timeout = request_timeout
        self._max_connections = max_connections
        self.max_watch_event = max_watch_event
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None
        # streams whose reader paces itself (pods/log under the log-read budget): see stream()
        self._paced_session: aiohttp.ClientSession | None = None
        self._served_cache: dict[str, bool] = {}
        self._exec_ssl: tuple[ExecCredential, ssl.SSLContext | bool] | None = None

    @classmethod
    async def from_kubeconfig(cls, path: str | os.PathLike[str] | None = None, **kwargs: Any) -> KubeClient:
        cfg = await asyncio.to_thread(kubeconfig.load, path)
        return cls(cfg, **kwargs)

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = self._new_session()
        return self._session

    def _ensure_paced_session(self) -> aiohttp.ClientSession:
        if self._paced_session is None or self._paced_session.closed:
            self._paced_session = self._new_session(socket_factory=_paced_socket)
        return self._paced_session

    def _new_session(self, **connector_options: Any) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            ssl=self.config.ssl_context(), limit=self._max_connections, **connector_options
        )
        return aiohttp.ClientSession(
            base_url=self.config.server,
            connector=connector,
            proxy=self.config.proxy_url,
            headers={"User-Agent": self._user_agent, "Accept": "application/json"},
        )

    async def close(self) -> None:
        for session in (self._session, self._paced_session):
            if session is not None:
                await session.close()
        self._session = self._paced_session = None
        for name in self.config._tempfiles:
            with contextlib.suppress(OSError):
                os.unlink(name)
        self.config._tempfiles.clear()

    async def _auth(self) -> tuple[dict[str, str], dict[str, Any], ExecCredential | None]:
        """Headers and per-request connection options for the next call, and the exec credential
        they came from (to drop it if the API refuses it)."""
        options: dict[str, Any] = {}
        if self.config.tls_server_name and self.config.server.startswith("https://"):
            options["server_hostname"] = self.config.tls_server_name
        plugin = self.config.exec_auth
        if plugin is None:
            token = self.config.current_token()
            return ({"Authorization": f"Bearer {token}"} if token else {}), options, None
        cred = await plugin.credential()
        if cred.client_certificate_data:
            # aiohttp keys pooled connections by their SSL context: a new certificate gets new ones.
            if self._exec_ssl is None or self._exec_ssl[0] is not cred:
                try:
                    self._exec_ssl = (cred, self.config.ssl_context(cred))
                except (ssl.SSLError, OSError) as exc:
                    plugin.invalidate(cred)
                    raise CredentialError(f"exec plugin's client certificate is unusable: {exc}") from None
            options["ssl"] = self._exec_ssl[1]
        return ({"Authorization": f"Bearer {cred.token}"} if cred.token else {}), options, cred

    def _refused(self, status: int, cred: ExecCredential | None) -> bool:
        """A 401 for an exec credential: forget it so the plugin runs again (client-go does too)."""
        if status != 401 or cred is None or self.config.exec_auth is None:
            return False
        self.config.exec_auth.invalidate(cred)
        return True

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        retry: bool | None = None,
    ) -> Any:
        """One API call with bounded retries; returns the decoded JSON body."""
        session = self._ensure_session()
        clean_params = {k: str(v) for k, v in (params or {}).items() if v is not None}
        data = None if body is None else json.dumps(body, separators=(",", ":"))
        may_retry_5xx = method in _IDEMPOTENT if retry is None else retry
        attempt = 0
        reauthenticated = False
        while True:
            headers, options, cred = await self._auth()
            if data is not None:
                headers["Content-Type"] = content_type
            try:
                async with session.request(
                    method,
                    path,
                    params=clean_params,
                    data=data,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=self.request_timeout),
                    **options,
                ) as resp:
                    payload = await resp.read()
                    if resp.status < 400:
                        return json.loads(payload) if payload else {}
                    error = self._error(resp.status, payload, resp.headers)
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                error = ApiError(503, "ConnectionError", f"{type(exc).__name__}: {exc}")
            if self._refused(error.status, cred) and not reauthenticated:
                reauthenticated = True
                continue
            retryable = error.status == 429 or (error.status >= 500 and may_retry_5xx)
            if not retryable or attempt >= self.max_retries:
                raise error
            delay = self.backoff.delay(attempt, error.retry_after)
            log.debug("retrying %s %s after %s in %.2fs", method, path, error, delay)
            await asyncio.sleep(delay)
            attempt += 1

    @staticmethod
    def _error(status: int, payload: bytes, headers: Mapping[str, str]) -> ApiError:
        try:
            body = json.loads(payload) if payload else {}
        except ValueError:
            body = {"message": payload[:500].decode(errors="replace")}
        if not isinstance(body, dict):
            body = {"message": str(body)[:500]}
        return ApiError(
            status,
            str(body.get("reason", "")),
            str(body.get("message", "")),
            retry_after=_retry_after(headers),
            body=body,
        )

    # --- verbs -----------------------------------------------------------------------------

    async def get(
        self, res: Resource, name: str, namespace: str | None = None, subresource: str | None = None
    ) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = await self.request("GET", res.path(namespace, name, subresource))
        except ApiError as exc:
            if exc.not_found:
                return None
            raise
        return result

    async def list(
        self,
        res: Resource,
        namespace: str | None = None,
        label_selector: str | Mapping[str, str] | None = None,
        field_selector: str | None = None,
        *,
        page_size: int | None = LIST_PAGE_SIZE,
    ) -> tuple[list[dict[str, Any]], str]:
        """Every matching object and the list's resourceVersion, read in pages of ``page_size``.

        Pages keep each response (and the API server's work per request) bounded, as client-go's
        pager does. A continue token pins the first page's snapshot; once etcd has compacted it
        the API answers 410, and then, like client-go, one unpaginated list at the latest version
        is the only consistent answer left. ``page_size=None`` lists in one request.
        """
        base = {"labelSelector": _label_selector(label_selector), "fieldSelector": field_selector}
        path = res.path(namespace)
        items: list[dict[str, Any]] = []
        rv: str | None = None
        token: str | None = None
        while True:
            try:
                body = await self.request(
                    "GET", path, params={**base, "limit": page_size or None, "continue": token}
                )
            except ApiError as exc:
                if not (exc.gone and token is not None):
                    raise
                log.info("listing %s: the continue token expired (%s), listing at once", res.plural, exc)
                body = await self.request("GET", path, params=base)
                items, rv, token = [], None, None
            items.extend(body.get("items") or [])
            meta = body.get("metadata") or {}
            # Every page reports the snapshot's version on a real server; an emulated one may not
            # pin it, and the first page's is then the one a watch can safely start from.
            if rv is None:
                rv = str(meta.get("resourceVersion", ""))
            token = meta.get("continue") or None
            if not token:
                break
        for item in items:
            item.setdefault("apiVersion", res.api_version)
            item.setdefault("kind", res.kind)
        return items, rv

    async def create(
        self, res: Resource, body: dict[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        ns = namespace or body.get("metadata", {}).get("namespace")
        result: dict[str, Any] = await self.request("POST", res.path(ns), body=body)
        return result

    async def replace(
        self, res: Resource, body: dict[str, Any], subresource: str | None = None
    ) -> dict[str, Any]:
        meta = body["metadata"]
        result: dict[str, Any] = await self.request(
            "PUT", res.path(meta.get("namespace"), meta["name"], subresource), body=body
        )
        return result

    async def apply(
        self,
        body: dict[str, Any],
        field_manager: str,
        *,
        force: bool = True,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        """Server-side apply of a full manifest (the resource comes from apiVersion and kind)."""
        res = R.for_kind(body["apiVersion"], body["kind"])
        meta = body["metadata"]
        # JSON is valid YAML, so the apply content type accepts it as is.
        result: dict[str, Any] = await self.request(
            "PATCH",
            res.path(meta.get("namespace"), meta["name"], subresource),
            params={"fieldManager": field_manager, "force": "true" if force else "false"},
            body=body,
            content_type=_CONTENT_TYPES["apply"],
        )
        return result

    async def patch(
        self,
        res: Resource,
        name: str,
        patch: Any,
        namespace: str | None = None,
        patch_type: PatchType = "merge",
        subresource: str | None = None,
        field_manager: str | None = None,
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(
            "PATCH",
            res.path(namespace, name, subresource),
            params={"fieldManager": field_manager},
            body=patch,
            content_type=_CONTENT_TYPES[patch_type],
        )
        return result

    async def delete(
        self,
        res: Resource,
        name: str,
        namespace: str | None = None,
        propagation: Literal["Background", "Foreground", "Orphan"] = "Background",
        precondition_uid: str | None = None,
    ) -> bool:
        body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation}
        if precondition_uid:
            body["preconditions"] = {"uid": precondition_uid}
        try:
            await self.request("DELETE", res.path(namespace, name), body=body)
        except ApiError as exc:
            if exc.not_found:
                return False
            raise
        return True

    async def watch(
        self,
        res: Resource,
        namespace: str | None = None,
        label_selector: str | Mapping[str, str] | None = None,
        resource_version: str | None = None,
        timeout_seconds: int = 300,
        allow_bookmarks: bool = True,
    ) -> AsyncGenerator[tuple[str, dict[str, Any]]]:
        """Yield (type, object) until the server ends the watch; ApiError(410) when too old."""
        session = self._ensure_session()
        params = {
            "watch": "1",
            "timeoutSeconds": str(timeout_seconds),
            "allowWatchBookmarks": "true" if allow_bookmarks else None,
            "resourceVersion": resource_version,
            "labelSelector": _label_selector(label_selector),
        }
        clean = {k: v for k, v in params.items() if v}
        timeout = aiohttp.ClientTimeout(total=timeout_seconds + 30, sock_connect=self.request_timeout)
        headers, options, cred = await self._auth()
        async with session.get(
            res.path(namespace), params=clean, headers=headers, timeout=timeout, **options
        ) as resp:
            if resp.status >= 400:
                self._refused(resp.status, cred)
                raise self._error(resp.status, await resp.read(), resp.headers)
            async for line in split_lines(resp.content.iter_any(), self.max_watch_event):
                if not line.strip():
                    continue
                event = json.loads(line)
                etype, obj = event.get("type"), event.get("object") or {}
                if etype == "ERROR":
                    raise ApiError(
                        int(obj.get("code", 500)), str(obj.get("reason", "")), str(obj.get("message", ""))
                    )
                yield str(etype), obj

    async def stream(
        self,
        path: str,
        params: Mapping[str, Any] | None = None,
        *,
        idle_timeout: float | None,
        max_chunk: int | None = None,
    ) -> AsyncGenerator[bytes]:
        """GET a streamed body (``pods/log``) and yield its chunks as they arrive.

        No total timeout: a followed log has no end. ``idle_timeout`` bounds the wait for the next
        chunk (ApiError 504 ``IdleTimeout``); a broken connection is ApiError 503. Not retried: the
        caller knows whether reading again from the start is what it wants.

        ``max_chunk`` is for a caller that paces its reads: a chunk holds at most that much (without
        it a chunk is whatever the connection buffered, hundreds of KiB on a fast one), and the
        connection's receive buffer is kept at :data:`PACED_RECEIVE_BUFFER` instead of growing to
        tens of MiB (Linux autotuning), so a reader that waits stops the server's sending within
        about that much: on a new stream the server would otherwise push megabytes before the
        pacing had any effect.
        """
        session = self._ensure_session() if max_chunk is None else self._ensure_paced_session()
        clean = {
            k: ("true" if v is True else "false" if v is False else str(v))
            for k, v in (params or {}).items()
            if v is not None
        }
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.request_timeout, sock_read=idle_timeout)
        headers, options, cred = await self._auth()
        # pods/log answers text/plain; asking for JSON only would get 406 from some servers
        headers["Accept"] = "*/*"
        try:
            async with session.get(path, params=clean, headers=headers, timeout=timeout, **options) as resp:
                if resp.status >= 400:
                    self._refused(resp.status, cred)
                    raise self._error(resp.status, await resp.read(), resp.headers)
                chunks = (
                    resp.content.iter_any() if max_chunk is None else resp.content.iter_chunked(max_chunk)
                )
                async for chunk in chunks:
                    yield chunk
        except aiohttp.ServerTimeoutError:
            raise ApiError(504, "IdleTimeout", f"nothing read for {idle_timeout}s") from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
            raise ApiError(503, "ConnectionError", f"{type(exc).__name__}: {exc}") from None

    async def served(self, group_version: str) -> bool:
        """Whether the server serves an API group version (e.g. ``gateway.networking.k8s.io/v1``)."""
        if group_version not in self._served_cache:
            try:
                await self.request("GET", f"/apis/{group_version}" if "/" in group_version else "/api/v1")
                self._served_cache[group_version] = True
            except ApiError as exc:
                if exc.status != 404:
                    raise
                self._served_cache[group_version] = False
        return self._served_cache[group_version]

    async def post_event(
        self,
        involved: Mapping[str, Any],
        type_: Literal["Normal", "Warning"],
        reason: str,
        message: str,
        component: str,
    ) -> None:
        """Record a core/v1 Event on an object; failures are logged, never raised."""
        meta = involved.get("metadata", {})
        namespace = meta.get("namespace") or "default"
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name', 'object')}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion"),
                "kind": involved.get("kind"),
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "source": {"component": component},
            "reportingComponent": component,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.request("POST", R.EVENTS.path(namespace), body=body, retry=False)
        except ApiError as exc:
            log.warning("could not post event %s on %s: %s", reason, meta.get("name"), exc)
