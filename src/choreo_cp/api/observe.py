"""``.../apps/{app}/logs|events|live`` and ``/api/v1/audit``: an app's logs, events and live state,
asked of its data plane through the tunnel and streamed to the HTTP client as they arrive.

Nothing streamed is stored or logged: the control plane keeps only the audit record of each
request (who, when, which app, kind, parameters, bytes, end code, duration). What the agent
answers before the first byte decides the HTTP status (403 disabled/forbidden, 404 not_found, 429
limit, 503 disconnected, 502 error, 504 no answer); after it, the end travels in the body (a final
``--- stream ended: code: message`` line in text, an ``end`` record in NDJSON).

With several replicas a request for a dataplane whose session another replica holds is handed to
that replica (forward.py) and answered exactly as if served here; this replica writes the audit
record, the owner none.
"""

from __future__ import annotations

import hmac
import json
import math
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.types import Receive, Scope, Send

from choreo_cp.api.deps import API_V1, CP, AppName, DpId, EnvName, known_dataplane
from choreo_cp.api.http import JsonRoute
from choreo_cp.api.models import documented
from choreo_cp.context import ControlPlane
from choreo_cp.forward import CLIENT_HEADER, CODE_HEADER, HOP_HEADER, HopRefused, hop_record, open_remote
from choreo_cp.store import AuditRecord, now_rfc3339
from choreo_cp.streams import Source, StreamPeer, StreamRefused, payload_bytes
from choreo_wire import protocol as p

router = APIRouter(prefix=API_V1, route_class=JsonRoute, tags=["observe"])

NDJSON = "application/x-ndjson"
# There is one admin token today; every authorised caller is "admin".
WHO = "admin"

_STREAM_ERRORS: dict[int | str, dict[str, Any]] = {
    **documented(404),
    403: {"description": "The data plane refused: observability switched off there, or not allowed."},
    429: {"description": "A stream limit (per data plane, per client); retry after Retry-After seconds."},
    502: {"description": "The data plane failed to serve the request (its message says why)."},
    503: {"description": "The data plane is not connected (or the store is unavailable); retry later."},
    504: {"description": "The data plane did not answer in time."},
}
_PATH = "/dataplanes/{dp}/environments/{env}/apps/{app}"
_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|m|s|ms|us|µs|ns)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_STATUS_OF_END = {"disabled": 403, "forbidden": 403, "not_found": 404, "limit": 429, "disconnected": 503}


def parse_since(text: str) -> int:
    """Seconds of a Go duration (``10m``, ``1h30m``) or a plain number of seconds, rounded up."""
    text = text.strip()
    if re.fullmatch(r"\d+", text):
        seconds = float(text)
    else:
        parts = _GO_DURATION.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise ValueError(f"not a duration: {text[:40]!r} (e.g. 10m, 1h30m, 90s or 90)")
        seconds = sum(float(n) * _UNIT[u] for n, u in parts)
    return max(1, math.ceil(seconds))


def _invalid(field: str, message: str, value: object) -> RequestValidationError:
    return RequestValidationError(
        [{"type": "value_error", "loc": ("query", field), "msg": message, "input": value}]
    )


def _only(request: Request, *allowed: str) -> None:
    """Refuse query parameters the route does not know (a misspelt ``folow`` must not be ignored)."""
    unknown = sorted(set(request.query_params) - set(allowed))
    if unknown:
        raise _invalid(unknown[0], f"unknown query parameter (known: {', '.join(allowed)})", unknown[0])


def _params(**given: Any) -> p.StreamParams:
    try:
        return p.StreamParams(**given)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("query", *e.get("loc", ()))} for e in exc.errors(include_url=False)]
        ) from None


class _Request:
    """One observe request from admission to its audit record."""

    def __init__(
        self, cp: ControlPlane, request: Request, dp: str, env: str, app: str, kind: p.StreamKind
    ) -> None:
        self.cp = cp
        self.dp = dp
        self.key = p.app_key(env, app)
        self.env = env
        self.app = app
        self.kind: p.StreamKind = kind
        self.client = request.client.host if request.client else "?"
        self.started = time.monotonic()
        self.params = p.StreamParams()
        self.stream: Source | None = None
        self.bytes = 0
        query = request.url.query
        self.path_and_query = request.url.path + (f"?{query}" if query else "")
        # handed over by the replica the user called (which audits it): answer in raw chunks
        hop, given = cp.streams.hop, request.headers.get(HOP_HEADER)
        self.hop = bool(
            hop is not None and given is not None and hmac.compare_digest(given.encode(), hop.secret.encode())
        )
        if self.hop:
            self.client = request.headers.get(CLIENT_HEADER) or self.client

    def audit(self, status: int, code: str) -> None:
        if self.hop:
            return
        record = AuditRecord(
            who=WHO,
            client=self.client,
            dataplane=self.dp,
            app=self.key,
            kind=self.kind,
            params=self.params.model_dump(by_alias=True, exclude_defaults=True),
            status=status,
            code=code,
            bytes=self.bytes,
            duration_seconds=round(time.monotonic() - self.started, 3),
        )
        self.cp.streams.run_soon("audit record", lambda: self.cp.store.append_audit(record))

    def refuse(self, status: int, code: str, detail: str, retry_after: float | None = None) -> HTTPException:
        self.audit(status, code)
        if self.stream is not None:
            self.stream.close()
        headers = {"Retry-After": str(max(1, math.ceil(retry_after)))} if retry_after is not None else {}
        if self.hop:
            headers[CODE_HEADER] = code
        return HTTPException(status, detail, headers=headers or None)

    async def open(self, params: p.StreamParams) -> p.StreamData | None:
        """Admit the request and wait for the agent's answer: its first chunk (None: a quiet follow)."""
        self.params = params
        try:
            await known_dataplane(self.cp, self.dp)
            found = await self.cp.store.get_objects(self.dp, [self.key])
        except Exception:
            self.audit(500, "error")
            raise
        if not found:
            raise self.refuse(
                404,
                "not_found",
                f"app {self.app!r} in environment {self.env!r} is not defined on dataplane {self.dp!r}",
            )
        limits = self.cp.streams.limits
        session = self.cp.hub.get(self.dp)
        if isinstance(session, StreamPeer):
            try:
                self.stream = self.cp.streams.open(session, self.kind, self.key, params, self.client)
            except StreamRefused as exc:
                raise self.refuse(exc.status, exc.code, exc.message, exc.retry_after) from None
        else:
            self.stream = await self._hand_over()
        # a follow starts its 200 on the agent's acknowledgement; anything else waits for the first
        # data or the end, so a refusal found while reading (RBAC) is still an HTTP status
        first = await self.stream.answer(limits.answer_timeout, ack_starts=params.follow)
        if first is None:
            if params.follow:
                return None
            raise self.refuse(
                504, "timeout", f"dataplane {self.dp!r} did not answer within {limits.answer_timeout:g}s"
            )
        if isinstance(first, p.StreamEnd):
            if first.code == "done":
                return p.StreamData(id=first.id, seq=0)  # nothing to show: an empty answer, then the end
            status = _STATUS_OF_END.get(first.code, 502)
            retry = first.retry_after if first.retry_after is not None else limits.retry_after
            detail = first.message or f"the data plane ended the stream: {first.code}"
            raise self.refuse(status, first.code, detail, retry if status in (429, 503) else None)
        return first

    async def _owner(self) -> str | None:
        """The advertised URL of the replica holding the session, when it is another replica."""
        if self.hop or self.cp.streams.hop is None or not self.cp.store.clustered:
            return None  # a handed-over request is never handed on: no loops between replicas
        record = await self.cp.store.session_record(self.dp)
        if record is None or not record.open or not record.advertise or record.replica == self.cp.hub.replica:
            return None
        return record.advertise

    async def _hand_over(self) -> Source:
        retry = self.cp.streams.limits.retry_after
        try:
            owner = await self._owner()
        except Exception:
            raise self.refuse(503, "unavailable", "the store is unavailable; retry later", retry) from None
        hop = self.cp.streams.hop
        if owner is None or hop is None:
            raise self.refuse(503, "unavailable", f"dataplane {self.dp!r} is not connected", retry)
        try:
            return await open_remote(self.cp.streams, hop, owner, self.path_and_query, self.client)
        except HopRefused as exc:
            raise self.refuse(exc.status, exc.code, exc.detail, exc.retry_after) from None

    async def items(self, first: p.StreamData | None) -> AsyncIterator[p.StreamData | p.StreamEnd]:
        """The chunks in order, then the end (idle and limit bounds applied here)."""
        stream = self.stream
        assert stream is not None
        if first is not None:
            yield first
        while True:
            item = await stream.next(stream.limits.idle_timeout)
            if item is None:
                stream.finish("limit", f"no data for {stream.limits.idle_timeout:g}s")
                continue
            yield item
            if isinstance(item, p.StreamEnd):
                return

    def consumed(self, data: p.StreamData) -> None:
        size = payload_bytes(data)
        self.bytes += size
        assert self.stream is not None
        self.stream.consumed(size)

    def finished(self) -> None:
        stream = self.stream
        if stream is None:
            return
        stream.close()
        end = stream.end
        self.audit(200, end.code if end is not None else "cancelled")


def _hop_response(req: _Request, first: p.StreamData | None) -> Response:
    """The owner's answer to a handed-over request: every chunk and the end as they come."""

    async def body() -> AsyncIterator[bytes]:
        async for item in req.items(first):
            yield _ndjson(hop_record(item))
            if isinstance(item, p.StreamData):
                req.consumed(item)

    return _Streamed(body(), req.finished, media_type=NDJSON)


class _Streamed(StreamingResponse):
    """A streaming response that releases its stream however it ends (even if never iterated)."""

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None], **kw: Any) -> None:
        super().__init__(content, **kw)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


def _end_record(end: p.StreamEnd) -> dict[str, Any]:
    record: dict[str, Any] = {"type": "end", "code": end.code, "message": end.message}
    if end.retry_after is not None:
        record["retryAfter"] = end.retry_after
    return record


def _ndjson(value: dict[str, Any]) -> bytes:
    return (json.dumps(value, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


async def _collect(req: _Request, first: p.StreamData | None) -> list[dict[str, Any]]:
    """Every object of a non-follow stream (bounded by its limitBytes); an abnormal end is an HTTP error."""
    objects: list[dict[str, Any]] = []
    try:
        async for item in req.items(first):
            if isinstance(item, p.StreamEnd):
                if item.code not in ("done", "limit"):
                    status = _STATUS_OF_END.get(item.code, 502)
                    retry = req.cp.streams.limits.retry_after if status in (429, 503) else None
                    raise req.refuse(status, item.code, item.message or item.code, retry)
                break
            objects.extend(item.objects)
            req.consumed(item)
    finally:
        if req.stream is not None:
            req.stream.close()
    return objects


Follow = Annotated[bool, Query(description="Keep streaming new lines (logs).")]


@router.get(
    _PATH + "/logs",
    responses={
        **_STREAM_ERRORS,
        200: {
            "description": "The log lines, ``pod/container: text``, streamed as they arrive.",
            "content": {"text/plain": {}, NDJSON: {}},
        },
    },
    response_class=StreamingResponse,
)
async def get_logs(
    dp: DpId,
    env: EnvName,
    app: AppName,
    request: Request,
    cp: CP,
    follow: Follow = False,
    since: Annotated[str | None, Query(max_length=40, description="Go duration (10m) or seconds.")] = None,
    tail: Annotated[int | None, Query(ge=0, le=100_000, description="Last N lines per container.")] = None,
    container: Annotated[str | None, Query(max_length=253)] = None,
    pod: Annotated[str | None, Query(max_length=253)] = None,
    previous: bool = False,
    limit_bytes: Annotated[int | None, Query(alias="limitBytes", ge=1, le=1 << 30)] = None,
) -> Response:
    _only(request, "follow", "since", "tail", "container", "pod", "previous", "limitBytes")
    req = _Request(cp, request, dp, env, app, "logs")
    since_seconds = None
    if since is not None:
        try:
            since_seconds = parse_since(since)
        except ValueError as exc:
            raise _invalid("since", str(exc), since) from None
    if limit_bytes is None and not follow:
        limit_bytes = cp.streams.limits.default_limit_bytes
    params = _params(
        follow=follow,
        since_seconds=since_seconds,
        tail_lines=tail,
        container=container,
        pod=pod,
        previous=previous,
        limit_bytes=limit_bytes,
    )
    first = await req.open(params)
    if req.hop:
        return _hop_response(req, first)
    ndjson = NDJSON in request.headers.get("accept", "")

    async def body() -> AsyncIterator[bytes]:
        async for item in req.items(first):
            if isinstance(item, p.StreamEnd):
                if ndjson:
                    yield _ndjson(_end_record(item))
                elif item.code != "done":
                    yield f"--- stream ended: {item.code}: {item.message}\n".encode()
                return
            if item.lines:
                if ndjson:
                    yield b"".join(_ndjson({"type": "line", "text": line}) for line in item.lines)
                else:
                    yield ("\n".join(item.lines) + "\n").encode()
            req.consumed(item)

    media = NDJSON if ndjson else "text/plain; charset=utf-8"
    return _Streamed(body(), req.finished, media_type=media, headers={"X-Content-Type-Options": "nosniff"})


@router.get(
    _PATH + "/events",
    responses={
        **_STREAM_ERRORS,
        200: {
            "description": "Without watch: a JSON list, newest first. With watch: NDJSON object records and an end record.",
            "content": {"application/json": {}, NDJSON: {}},
        },
    },
    response_class=JSONResponse,
)
async def get_events(
    dp: DpId,
    env: EnvName,
    app: AppName,
    request: Request,
    cp: CP,
    watch: Annotated[bool, Query(description="Follow new events (NDJSON).")] = False,
) -> Response:
    _only(request, "watch")
    req = _Request(cp, request, dp, env, app, "events")
    params = _params(follow=watch, limit_bytes=None if watch else cp.streams.limits.default_limit_bytes)
    first = await req.open(params)
    if req.hop:
        return _hop_response(req, first)
    if not watch:
        objects = await _collect(req, first)
        req.finished()
        return JSONResponse(objects)

    async def body() -> AsyncIterator[bytes]:
        async for item in req.items(first):
            if isinstance(item, p.StreamEnd):
                yield _ndjson(_end_record(item))
                return
            if item.objects:
                yield b"".join(_ndjson({"type": "object", "object": obj}) for obj in item.objects)
            req.consumed(item)

    return _Streamed(body(), req.finished, media_type=NDJSON)


@router.get(_PATH + "/live", responses=_STREAM_ERRORS)
async def get_live(dp: DpId, env: EnvName, app: AppName, request: Request, cp: CP) -> dict[str, Any]:
    _only(request)
    req = _Request(cp, request, dp, env, app, "live")
    first = await req.open(_params(limit_bytes=cp.streams.limits.default_limit_bytes))
    if req.hop:
        return _hop_response(req, first)  # type: ignore[return-value]
    objects = await _collect(req, first)
    req.finished()
    return {"app": req.key, "observedAt": now_rfc3339(), "objects": objects}


@router.get("/audit")
async def list_audit(
    request: Request,
    cp: CP,
    dataplane: Annotated[str | None, Query(max_length=253)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Who asked for logs, events or live state of which app, newest first (no content is kept)."""
    _only(request, "dataplane", "limit")
    records = await cp.store.list_audit(dataplane, limit)
    return {"items": [r.view() for r in records]}
