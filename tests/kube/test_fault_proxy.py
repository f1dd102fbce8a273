"""The fault proxy: its request parser (a table, against kube-apiserver's RequestInfo rules), and
what it forwards, streams and injects, in front of a recording upstream and the real apiserver."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from choreo_dp.kube.config import ConnectionConfig, from_kubeconfig
from choreo_sandbox.cluster.fault_proxy import FaultProxy, FaultProxyThread, RequestInfo, request_info
from tests.fixtures.kube import RealClusterProcess

UPSTREAM_TOKEN = "upstream-token"


def _r(
    verb: str, resource: str, *, ns: str = "", name: str = "", sub: str = "", group: str = ""
) -> RequestInfo:
    prefix = "apis" if group else "api"
    version = "v1"
    if group == "choreo.dev":
        version = "v1alpha1"
    return RequestInfo(True, verb, prefix, group, version, ns, resource, sub, name)


# (method, path, query, expected)
# fmt: off
PARSE_CASES: list[tuple[str, str, dict[str, str], RequestInfo]] = [
    # core, namespaced collection: list / watch (query forms) / create / deletecollection
    ("GET", "/api/v1/namespaces/ns/pods", {}, _r("list", "pods", ns="ns")),
    ("GET", "/api/v1/namespaces/ns/pods", {"watch": "1"}, _r("watch", "pods", ns="ns")),
    ("GET", "/api/v1/namespaces/ns/pods", {"watch": "true"}, _r("watch", "pods", ns="ns")),
    ("GET", "/api/v1/namespaces/ns/pods", {"watch": "True"}, _r("watch", "pods", ns="ns")),
    ("GET", "/api/v1/namespaces/ns/pods", {"watch": "false"}, _r("list", "pods", ns="ns")),
    ("GET", "/api/v1/namespaces/ns/pods", {"watch": "0"}, _r("list", "pods", ns="ns")),
    ("GET", "/api/v1/namespaces/ns/pods", {"watch": ""}, _r("list", "pods", ns="ns")),
    ("POST", "/api/v1/namespaces/ns/configmaps", {}, _r("create", "configmaps", ns="ns")),
    ("DELETE", "/api/v1/namespaces/ns/configmaps", {}, _r("deletecollection", "configmaps", ns="ns")),
    ("GET", "/api/v1/namespaces/ns/pods/", {}, _r("list", "pods", ns="ns")),  # trailing slash
    # the deprecated /watch/ path prefix, on a collection and on one object
    ("GET", "/api/v1/watch/namespaces/ns/pods", {}, _r("watch", "pods", ns="ns")),
    ("GET", "/api/v1/watch/namespaces/ns/pods/p", {}, _r("watch", "pods", ns="ns", name="p")),
    ("GET", "/api/v1/watch/nodes", {}, _r("watch", "nodes")),
    # a field selector pinning metadata.name names the request (RequiresExactMatch)
    ("GET", "/api/v1/namespaces/ns/pods", {"fieldSelector": "metadata.name=p"}, _r("list", "pods", ns="ns", name="p")),
    (
        "GET",
        "/api/v1/namespaces/ns/pods",
        {"watch": "1", "fieldSelector": "status.phase=Running,metadata.name==p"},
        _r("watch", "pods", ns="ns", name="p"),
    ),
    ("GET", "/api/v1/namespaces/ns/pods", {"fieldSelector": "metadata.name!=p"}, _r("list", "pods", ns="ns")),
    ("GET", "/api/v1/namespaces/ns/pods", {"fieldSelector": "metadata.name=a/b"}, _r("list", "pods", ns="ns")),
    # one object: get / update / patch / delete (HEAD is a get; an unknown method has no verb)
    ("GET", "/api/v1/namespaces/ns/pods/p", {}, _r("get", "pods", ns="ns", name="p")),
    ("GET", "/api/v1/namespaces/ns/pods/p", {"watch": "1"}, _r("get", "pods", ns="ns", name="p")),
    ("HEAD", "/api/v1/namespaces/ns/pods/p", {}, _r("get", "pods", ns="ns", name="p")),
    ("PUT", "/api/v1/namespaces/ns/configmaps/c", {}, _r("update", "configmaps", ns="ns", name="c")),
    ("PATCH", "/api/v1/namespaces/ns/configmaps/c", {}, _r("patch", "configmaps", ns="ns", name="c")),
    ("DELETE", "/api/v1/namespaces/ns/configmaps/c", {}, _r("delete", "configmaps", ns="ns", name="c")),
    ("OPTIONS", "/api/v1/namespaces/ns/configmaps/c", {}, _r("", "configmaps", ns="ns", name="c")),
    # subresources
    ("GET", "/api/v1/namespaces/ns/pods/p/log", {"follow": "true"}, _r("get", "pods", ns="ns", name="p", sub="log")),
    ("POST", "/api/v1/namespaces/ns/pods/p/eviction", {}, _r("create", "pods", ns="ns", name="p", sub="eviction")),
    (
        "GET",
        "/api/v1/namespaces/ns/pods/p/proxy/metrics/x",
        {},
        _r("get", "pods", ns="ns", name="p", sub="proxy"),
    ),
    (
        "PUT",
        "/apis/apps/v1/namespaces/ns/deployments/d/scale",
        {},
        _r("update", "deployments", ns="ns", name="d", sub="scale", group="apps"),
    ),
    (
        "PATCH",
        "/apis/apps/v1/namespaces/ns/deployments/d/status",
        {},
        _r("patch", "deployments", ns="ns", name="d", sub="status", group="apps"),
    ),
    # the deprecated /proxy/ verb takes no subresource
    ("GET", "/api/v1/proxy/namespaces/ns/services/s/a/b", {}, _r("proxy", "services", ns="ns", name="s")),
    # cluster-scoped, core and group
    ("GET", "/api/v1/nodes", {}, _r("list", "nodes")),
    ("PATCH", "/api/v1/nodes/n/status", {}, _r("patch", "nodes", name="n", sub="status")),
    (
        "GET",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles/admin",
        {},
        _r("get", "clusterroles", name="admin", group="rbac.authorization.k8s.io"),
    ),
    ("GET", "/apis/choreo.dev/v1alpha1/environments", {}, _r("list", "environments", group="choreo.dev")),
    (
        "PUT",
        "/apis/choreo.dev/v1alpha1/environments/dev/status",
        {},
        _r("update", "environments", name="dev", sub="status", group="choreo.dev"),
    ),
    (
        "GET",
        "/apis/choreo.dev/v1alpha1/namespaces/ns/choreoapps",
        {"watch": "true"},
        _r("watch", "choreoapps", ns="ns", group="choreo.dev"),
    ),
    # namespaces: the namespace of a Namespace request is its name; status and finalize are subresources
    ("GET", "/api/v1/namespaces", {}, _r("list", "namespaces")),
    ("POST", "/api/v1/namespaces", {}, _r("create", "namespaces")),
    ("GET", "/api/v1/namespaces/x", {}, _r("get", "namespaces", ns="x", name="x")),
    ("DELETE", "/api/v1/namespaces/x", {}, _r("delete", "namespaces", ns="x", name="x")),
    ("PUT", "/api/v1/namespaces/x/finalize", {}, _r("update", "namespaces", ns="x", name="x", sub="finalize")),
    ("PUT", "/api/v1/namespaces/x/status", {}, _r("update", "namespaces", ns="x", name="x", sub="status")),
]
# fmt: on

NON_RESOURCE_PATHS = [
    "/",
    "/healthz",
    "/healthz/etcd",
    "/livez",
    "/readyz",
    "/version",
    "/metrics",
    "/openapi/v2",
    "/openapi/v3/apis/apps/v1",
    "/.well-known/openid-configuration",
    "/api",
    "/api/v1",
    "/apis",
    "/apis/apps",
    "/apis/apps/v1",
    "/apis/choreo.dev/v1alpha1",
    "/api/v1/watch",  # the apiserver cannot tell a kind from it: an error, never a resource
    "/logs/kube-apiserver.log",
]


@pytest.mark.parametrize(("method", "path", "query", "expected"), PARSE_CASES, ids=lambda v: None)
def test_request_info(method: str, path: str, query: dict[str, str], expected: RequestInfo) -> None:
    assert request_info(method, path, query) == expected


@pytest.mark.parametrize("path", NON_RESOURCE_PATHS)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_non_resource_paths_are_never_resources(method: str, path: str) -> None:
    info = request_info(method, path, {"watch": "1"})
    assert info == RequestInfo(False, method.lower())


# ----- the proxy in front of a recording upstream ----------------------------------------------
@dataclass
class Upstream:
    """An HTTP server that records what reaches it, echoes it back, and streams on demand."""

    url: str = ""
    seen: list[dict[str, Any]] = field(default_factory=list)
    lines: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    stream_cancelled: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(
            {
                "method": request.method,
                "raw_path": request.raw_path,
                "headers": list(request.headers.items()),
                "body": body,
            }
        )
        if request.path == "/stream":
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            await resp.prepare(request)
            try:
                while (line := await self.lines.get()) is not None:
                    await resp.write(line)
            except asyncio.CancelledError:
                self.stream_cancelled.set()
                raise
            await resp.write_eof()
            return resp
        status = int(request.query.get("status", "200"))
        out = web.Response(status=status, body=b'{"echo":true}', content_type="application/json")
        out.headers.add("Warning", '299 - "first"')
        out.headers.add("Warning", '299 - "second"')
        out.headers["Audit-Id"] = "abc"
        out.headers["Keep-Alive"] = "timeout=5"
        out.headers["Connection"] = "X-Upstream-Hop"
        out.headers["X-Upstream-Hop"] = "1"
        return out


@contextlib.asynccontextmanager
async def upstream_server(tmp_path: Path) -> AsyncIterator[tuple[Upstream, Path]]:
    up = Upstream()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", up.handle)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    up.url = f"http://127.0.0.1:{port}"
    kc = tmp_path / "upstream.kubeconfig"
    kc.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "u", "cluster": {"server": up.url}}],
                "users": [{"name": "u", "user": {"token": UPSTREAM_TOKEN}}],
                "contexts": [{"name": "u", "context": {"cluster": "u", "user": "u", "namespace": "team"}}],
                "current-context": "u",
            }
        )
    )
    try:
        yield up, kc
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def client_for(kubeconfig: Path) -> AsyncIterator[aiohttp.ClientSession]:
    """A raw HTTP client set up from a kubeconfig (CA and client certificate)."""
    cfg = await asyncio.to_thread(from_kubeconfig, kubeconfig)
    try:
        async with aiohttp.ClientSession(
            base_url=cfg.server,
            connector=aiohttp.TCPConnector(ssl=cfg.ssl_context()),
            skip_auto_headers=("Accept-Encoding", "User-Agent"),
            timeout=aiohttp.ClientTimeout(total=30),
        ) as session:
            yield session
    finally:
        _remove_tempfiles(cfg)


def _remove_tempfiles(cfg: ConnectionConfig) -> None:
    """``from_kubeconfig`` writes embedded certificates to temporary files; KubeClient removes them."""
    for name in cfg._tempfiles:
        Path(name).unlink(missing_ok=True)


@pytest.fixture
async def proxied(tmp_path: Path) -> AsyncIterator[tuple[Upstream, FaultProxy, aiohttp.ClientSession]]:
    async with (
        upstream_server(tmp_path) as (up, kc),
        FaultProxy(kc, directory=tmp_path / "proxy") as proxy,
    ):
        assert proxy.kubeconfig_path is not None
        async with client_for(proxy.kubeconfig_path) as http:
            yield up, proxy, http


Proxied = tuple[Upstream, FaultProxy, aiohttp.ClientSession]


async def test_kubeconfig_points_at_the_proxy_over_tls(proxied: Proxied, tmp_path: Path) -> None:
    _, proxy, _ = proxied
    assert proxy.kubeconfig_path is not None
    doc = yaml.safe_load(proxy.kubeconfig_path.read_text())
    assert doc["clusters"][0]["cluster"]["server"] == proxy.url == f"https://127.0.0.1:{proxy.port}"
    assert doc["contexts"][0]["context"]["namespace"] == "team"  # the upstream context's namespace
    assert proxy.kubeconfig_path.stat().st_mode & 0o077 == 0


async def test_forwards_method_path_query_headers_and_body(proxied: Proxied) -> None:
    up, _, http = proxied
    body = b'{"metadata":{"name":"x y"}}'
    headers = CIMultiDict(
        [
            ("Content-Type", "application/apply-patch+yaml"),
            ("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io, application/json"),
            ("User-Agent", "kubectl/v1.36"),
            ("X-Repeated", "one"),
            ("X-Repeated", "two"),
            ("Impersonate-User", "jane"),
            ("Proxy-Authorization", "Basic c2VjcmV0"),
            ("TE", "trailers"),
            ("Connection", "X-Hop"),
            ("X-Hop", "named by Connection, so hop-by-hop"),
        ]
    )
    raw = "/apis/apps/v1/namespaces/ns/deployments/d%20x?fieldManager=a%2Fb&labelSelector=a%3Db,c+in+(d)&dryRun=All"
    async with http.patch(URL(raw, encoded=True), data=body, headers=headers) as resp:
        assert resp.status == 200
    (seen,) = up.seen
    assert seen["method"] == "PATCH"
    assert seen["raw_path"] == raw
    assert seen["body"] == body
    got = CIMultiDict(seen["headers"])
    assert got.getall("X-Repeated") == ["one", "two"]
    for key in ("Content-Type", "Accept", "User-Agent", "Impersonate-User"):
        assert got[key] == headers[key]
    assert got["Authorization"] == f"Bearer {UPSTREAM_TOKEN}"  # the upstream kubeconfig's credentials
    assert not {"Proxy-Authorization", "TE", "X-Hop"} & set(got)  # hop-by-hop
    assert "Accept-Encoding" not in got  # nothing the client did not send


async def test_callers_own_authorization_is_forwarded(proxied: Proxied) -> None:
    up, _, http = proxied
    async with http.get("/api/v1/namespaces", headers={"Authorization": "Bearer mine"}) as resp:
        assert resp.status == 200
    assert CIMultiDict(up.seen[0]["headers"])["Authorization"] == "Bearer mine"


async def test_response_status_headers_and_body_are_preserved(proxied: Proxied) -> None:
    _, _, http = proxied
    async with http.get("/api/v1/namespaces/ns/configmaps/c?status=418") as resp:
        assert resp.status == 418
        assert resp.headers.getall("Warning") == ['299 - "first"', '299 - "second"']
        assert resp.headers["Audit-Id"] == "abc"
        assert resp.headers["Content-Type"] == "application/json"
        assert "Keep-Alive" not in resp.headers and "X-Upstream-Hop" not in resp.headers  # hop-by-hop
        assert await resp.read() == b'{"echo":true}'


async def test_streams_chunk_by_chunk_without_buffering(proxied: Proxied) -> None:
    up, _, http = proxied
    async with http.get("/stream", params={"watch": "1"}, timeout=aiohttp.ClientTimeout(total=None)) as resp:
        assert resp.status == 200 and resp.headers.get("Transfer-Encoding") == "chunked"
        for i in range(3):
            line = json.dumps({"type": "ADDED", "object": {"n": i}}).encode() + b"\n"
            await up.lines.put(line)
            # Each line must arrive while the upstream is still holding the stream open.
            assert await asyncio.wait_for(resp.content.readline(), 5) == line
        await up.lines.put(None)
        assert await asyncio.wait_for(resp.content.read(), 5) == b""


async def test_a_client_leaving_ends_the_upstream_request(proxied: Proxied) -> None:
    up, _, http = proxied
    async with http.get("/stream", timeout=aiohttp.ClientTimeout(total=None)) as resp:
        await up.lines.put(b"first\n")
        assert await asyncio.wait_for(resp.content.readline(), 5) == b"first\n"
        resp.close()
    await asyncio.wait_for(up.stream_cancelled.wait(), 10)


async def test_injected_failure_is_a_status_and_never_forwarded(proxied: Proxied) -> None:
    up, proxy, http = proxied
    fault = proxy.faults.add(verb="patch", resource="configmaps", status=429, retry_after=3, namespace="ns")
    async with http.patch("/api/v1/namespaces/other/configmaps/c", data=b"{}") as resp:
        assert resp.status == 200  # another namespace: forwarded
    async with http.patch("/api/v1/namespaces/ns/configmaps/c", data=b"{}") as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "3"
        assert resp.headers["Content-Type"].startswith("application/json")
        assert await resp.json() == {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": "injected fault",
            "reason": "TooManyRequests",
            "code": 429,
            "details": {"retryAfterSeconds": 3},
        }
    assert fault.hits == 1 and proxy.faults.rules == []
    assert [s["raw_path"] for s in up.seen] == ["/api/v1/namespaces/other/configmaps/c"]
    async with http.patch("/api/v1/namespaces/ns/configmaps/c", data=b"{}") as resp:
        assert resp.status == 200  # count=1: spent


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (500, "InternalError"),
        (409, "Conflict"),
        (503, "ServiceUnavailable"),
        (504, "Timeout"),
        (403, "Forbidden"),
    ],
)
async def test_status_reason_follows_the_code(proxied: Proxied, code: int, reason: str) -> None:
    _, proxy, http = proxied
    proxy.faults.add(verb="list", resource="secrets", status=code, message=f"no {code}")
    async with http.get("/api/v1/namespaces/ns/secrets") as resp:
        assert resp.status == code
        body = await resp.json()
        assert (body["kind"], body["code"], body["reason"], body["message"]) == (
            "Status",
            code,
            reason,
            f"no {code}",
        )
        assert "Retry-After" not in resp.headers and "details" not in body


async def test_stall_then_forward(proxied: Proxied) -> None:
    up, proxy, http = proxied
    fault = proxy.faults.add(verb="watch", resource="pods/log", stall=0.3)
    proxy.faults.add(verb="watch", resource="pods", stall=0.3, name="other")  # does not match
    t0 = time.monotonic()
    async with http.get("/api/v1/namespaces/ns/pods?watch=true&fieldSelector=metadata.name%3Dp") as resp:
        assert resp.status == 200
    assert time.monotonic() - t0 < 0.3
    assert fault.hits == 0
    proxy.faults.clear()
    fault = proxy.faults.add(verb="get", resource="pods/log", stall=0.3)
    t0 = time.monotonic()
    async with http.get("/api/v1/namespaces/ns/pods/p/log?follow=true") as resp:
        assert resp.status == 200
    assert time.monotonic() - t0 >= 0.3 and fault.hits == 1
    assert len(up.seen) == 2


async def test_non_resource_requests_never_match(proxied: Proxied) -> None:
    up, proxy, http = proxied
    fault = proxy.faults.add(verb="*", resource="*", status=500, count=1000)
    for path in NON_RESOURCE_PATHS:
        async with http.get(path) as resp:
            assert resp.status == 200, path
    assert fault.hits == 0 and len(up.seen) == len(NON_RESOURCE_PATHS)
    async with http.get("/api/v1/pods") as resp:
        assert resp.status == 500 and fault.hits == 1


async def test_clients_without_the_proxy_certificate_are_refused(proxied: Proxied) -> None:
    up, proxy, _ = proxied
    assert proxy.kubeconfig_path is not None
    cfg = await asyncio.to_thread(from_kubeconfig, proxy.kubeconfig_path)
    ctx = ssl.create_default_context(cadata=(cfg.ca_data or b"").decode())  # trusts it, has no cert
    with pytest.raises(aiohttp.ClientError):
        async with aiohttp.ClientSession() as s, s.get(f"{proxy.url}/version", ssl=ctx) as resp:
            await resp.read()
    _remove_tempfiles(cfg)
    assert up.seen == []


async def test_unreachable_upstream_is_a_503_status(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        kc = tmp_path / "kc"
        kc.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "u", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                    "users": [{"name": "u", "user": {}}],
                    "contexts": [{"name": "u", "context": {"cluster": "u", "user": "u"}}],
                    "current-context": "u",
                }
            )
        )
        async with FaultProxy(kc) as proxy:
            assert proxy.kubeconfig_path is not None
            async with client_for(proxy.kubeconfig_path) as http, http.get("/api/v1/pods") as resp:
                assert resp.status == 503
                body = await resp.json()
                assert body["kind"] == "Status" and body["reason"] == "ServiceUnavailable"
        assert proxy.dir is None  # its temporary directory is removed


def test_thread_wrapper(tmp_path: Path) -> None:
    async def main() -> None:
        async with upstream_server(tmp_path) as (_, kc):
            thread = await asyncio.to_thread(FaultProxyThread(kc).__enter__)
            try:
                fault = await asyncio.to_thread(
                    thread.add_fault, verb="get", resource="configmaps", status=500
                )
                async with client_for(thread.kubeconfig_path) as http:
                    async with http.get("/api/v1/namespaces/ns/configmaps/c") as resp:
                        assert resp.status == 500
                    async with http.get("/api/v1/namespaces/ns/configmaps/c") as resp:
                        assert resp.status == 200
                assert fault.hits == 1
                await asyncio.to_thread(thread.add_fault, verb="get", resource="configmaps", status=500)
                await asyncio.to_thread(thread.clear_faults)
                assert await asyncio.to_thread(thread.call, lambda: len(thread.faults.rules)) == 0
                assert thread.proxy.requests == 2
            finally:
                await asyncio.to_thread(thread.__exit__, None, None, None)

    asyncio.run(main())


# ----- in front of the real kube-apiserver -------------------------------------------------
async def test_real_apiserver_authenticates_the_callers_own_token(
    real_cluster: RealClusterProcess, tmp_path: Path
) -> None:
    async with FaultProxy(real_cluster.kubeconfig, directory=tmp_path / "p") as proxy:
        assert proxy.kubeconfig_path is not None
        async with client_for(proxy.kubeconfig_path) as http:
            async with http.get("/api/v1/namespaces/default") as resp:
                assert resp.status == 200  # as the upstream kubeconfig's admin
                assert resp.headers.get("Audit-Id")
            async with http.get(
                "/api/v1/namespaces/default", headers={"Authorization": "Bearer nope"}
            ) as resp:
                assert resp.status == 401
                body = await resp.json()
                assert (body["kind"], body["reason"]) == ("Status", "Unauthorized")
