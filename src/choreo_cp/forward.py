"""A stream request handed to the replica that holds the dataplane's session (several replicas).

Only the replica holding a dataplane's tunnel session can ask its agent for logs, events or live
state, but a load balancer sends the user's request to any replica. The receiving replica checks
the request as usual, reads the session's advertised URL from the store and asks that replica for
the same path with the admin token and the replicas' shared secret (``X-Choreo-Hop``). The owner
then answers with its raw chunks (NDJSON, one record per ``stream.data`` and a final ``end``
record) without auditing; the receiving replica turns them back into stream items, so rendering,
byte accounting, limits and the audit record (once, with the user's identity and address) are the
very code of a local stream. Nothing is stored or logged on either side.

The hop's body is read as it arrives (TCP backpressure carries the client's pace to the owner,
whose credit carries it to the agent). Closing the response closes the hop's connection; the owner
notices within a loop turn (its response listens for the disconnect) and cancels the agent's
stream. An owner that cannot be reached is a 503 with Retry-After; one that goes away mid-stream
ends the stream with code ``disconnected`` and the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import ssl
from collections.abc import AsyncIterator
from typing import Any

import httpx
from pydantic import ValidationError

from choreo_cp.streams import Hop, Item, StreamLimits, StreamRegistry
from choreo_wire import protocol as p

log = logging.getLogger(__name__)

HOP_HEADER = "X-Choreo-Hop"
# the original client's address, for the owner's per-client slots
CLIENT_HEADER = "X-Choreo-Hop-Client"
# the end code of a refusal, so the receiving replica audits it as the owner would have
CODE_HEADER = "X-Choreo-Hop-Code"
HOP_CONNECT_TIMEOUT = 2.0
# an error body is a short JSON detail; anything longer is cut
MAX_ERROR_BODY = 64 * 1024
# beyond the owner's own bounds (it ends an idle stream, it answers an open within answer_timeout)
HOP_SLACK = 10.0
CLOSE_TIMEOUT = 5.0


class HopRefused(Exception):
    """The owner answered with an error status before any data (or could not be reached)."""

    def __init__(self, status: int, code: str, detail: str, retry_after: float | None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.retry_after = retry_after


@functools.cache
def _ssl_context(ca_file: str | None, client_cert: tuple[str, str] | None) -> ssl.SSLContext:
    """One context per process: building it reads the system's CA bundle and these files, blocking
    I/O that need not run on the event loop for every handed-over stream. The files are this
    replica's own configuration, read once like its serving certificate."""
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    if client_cert:
        context.load_cert_chain(*client_cert)
    return context


def _retry_after(response: httpx.Response) -> float | None:
    with contextlib.suppress(KeyError, ValueError):
        return float(response.headers["retry-after"])
    return None


def _detail(body: bytes, status: int) -> str:
    with contextlib.suppress(ValueError):
        detail = json.loads(body).get("detail")
        if isinstance(detail, str):
            return detail
    return f"the control-plane replica serving the data plane answered {status}"


def _item(stream_id: str, line: bytes) -> Item:
    """One NDJSON record of the owner's hop body as a stream item."""
    record = json.loads(line)
    if record.get("type") == "end":
        return p.StreamEnd(
            id=stream_id,
            code=record["code"],
            message=record.get("message") or "",
            retry_after=record.get("retryAfter"),
        )
    return p.StreamData(
        id=stream_id,
        seq=int(record.get("seq", 1)),
        lines=record.get("lines") or [],
        objects=record.get("objects") or [],
    )


def hop_record(item: Item) -> dict[str, Any]:
    """The owner's side of :func:`_item`."""
    if isinstance(item, p.StreamEnd):
        record: dict[str, Any] = {"type": "end", "code": item.code, "message": item.message}
        if item.retry_after is not None:
            record["retryAfter"] = item.retry_after
        return record
    return {"type": "data", "seq": item.seq, "lines": item.lines, "objects": item.objects}


class RemoteStream:
    """A stream served by another replica, read like a local one (streams.Source)."""

    def __init__(
        self,
        registry: StreamRegistry,
        client: httpx.AsyncClient,
        response: httpx.Response,
        owner: str,
    ) -> None:
        self.registry = registry
        self.limits: StreamLimits = registry.limits
        self.id = p.new_id()
        self._client = client
        self._response = response
        self._owner = owner
        self._records: AsyncIterator[str] = response.aiter_lines()
        self._end: p.StreamEnd | None = None
        self._closed = False

    @property
    def end(self) -> p.StreamEnd | None:
        return self._end

    async def answer(self, timeout: float, *, ack_starts: bool) -> Item | None:
        if ack_starts:
            # the owner starts a follow's 200 only once its agent acknowledged the open
            return p.StreamData(id=self.id, seq=0)
        return await self.next(timeout + HOP_SLACK)

    async def next(self, timeout: float) -> Item | None:
        """The owner's next chunk, then its end; the owner bounds idleness itself, so ``timeout``
        (the caller's idle bound) only adds to the hop's read timeout."""
        if self._end is not None:
            return self._end
        try:
            while True:
                line = await anext(self._records)
                if line.strip():
                    break
            item = _item(self.id, line.encode())
        except StopAsyncIteration:
            item = self._lost("it ended the stream without an end record")
        except (httpx.HTTPError, ValueError, KeyError, ValidationError) as exc:
            item = self._lost(f"{exc.__class__.__name__}: {exc}"[:300])
        if isinstance(item, p.StreamEnd):
            self._end = item
        return item

    def _lost(self, reason: str) -> p.StreamEnd:
        return p.StreamEnd(
            id=self.id,
            code="disconnected",
            message=f"the control-plane replica serving the data plane went away ({reason})"[:4096],
        )

    def consumed(self, size: int) -> None:
        """Credit is the owner's business: reading the hop's body is what lets it grant more."""

    def finish(self, code: p.StreamEndCode, message: str) -> None:
        self._end = p.StreamEnd(id=self.id, code=code, message=message)

    def close(self) -> None:
        """Close the hop's connection: the owner sees its client go and cancels the agent's stream."""
        if self._closed:
            return
        self._closed = True
        if self._end is None:
            self._end = p.StreamEnd(id=self.id, code="cancelled", message="the client went away")
        response, client = self._response, self._client

        async def closing() -> None:
            try:
                await asyncio.wait_for(response.aclose(), CLOSE_TIMEOUT)
            finally:
                await asyncio.wait_for(client.aclose(), CLOSE_TIMEOUT)

        self.registry.run_soon("closing a handed-over stream", closing)


async def open_remote(
    registry: StreamRegistry,
    hop: Hop,
    owner: str,
    path_and_query: str,
    client_address: str,
) -> RemoteStream:
    """Ask the replica at ``owner`` (its advertised URL) for the same stream; raises :class:`HopRefused`."""
    limits = registry.limits
    timeout = httpx.Timeout(
        connect=HOP_CONNECT_TIMEOUT,
        read=max(limits.idle_timeout, limits.answer_timeout) + HOP_SLACK,
        write=HOP_CONNECT_TIMEOUT,
        pool=HOP_CONNECT_TIMEOUT,
    )
    client = httpx.AsyncClient(
        base_url=owner.rstrip("/"),
        timeout=timeout,
        verify=_ssl_context(hop.ca_file, hop.client_cert) if owner.startswith("https:") else True,
        # the hop is replica to replica: no proxy from the environment belongs in between
        trust_env=False,
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=0),
    )
    headers = {
        "Authorization": f"Bearer {hop.token}",
        HOP_HEADER: hop.secret,
        CLIENT_HEADER: client_address,
        "Accept": "application/x-ndjson",
    }
    try:
        request = client.build_request("GET", path_and_query, headers=headers)
        response = await client.send(request, stream=True)
    except httpx.HTTPError as exc:
        await client.aclose()
        log.warning(
            "the replica at %s (holding a session) cannot be reached: %s", owner, exc.__class__.__name__
        )
        raise HopRefused(
            503,
            "unavailable",
            "the control-plane replica serving this data plane cannot be reached; retry later",
            limits.retry_after,
        ) from None
    except BaseException:
        await client.aclose()
        raise
    if response.status_code != 200:
        try:
            body = b""
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) >= MAX_ERROR_BODY:
                    break
        except httpx.HTTPError:
            body = b""
        finally:
            await response.aclose()
            await client.aclose()
        code = response.headers.get(CODE_HEADER) or "error"
        raise HopRefused(
            response.status_code, code, _detail(body, response.status_code), _retry_after(response)
        )
    return RemoteStream(registry, client, response, owner)
