"""Helpers for control plane tests: REST shortcuts and a raw, scriptable tunnel client."""

from __future__ import annotations

import asyncio
import json
import ssl
from functools import partial
from typing import Any

import httpx
import websockets
from websockets.asyncio.client import ClientConnection

from choreo_wire import protocol as p
from tests import polling

ADMIN_TOKEN = "admin-token-for-tests-0123456789"
FRAME_TIMEOUT = 5.0

ENV_SPEC: dict[str, Any] = {"displayName": "Dev", "registry": {"allowedPrefixes": ["ghcr.io/acme/"]}}


def app_spec(image: str = "ghcr.io/acme/shop:1.0", **extra: Any) -> dict[str, Any]:
    return {"project": "shop", "type": "service", "image": image, "replicas": 1, **extra}


async def register(http: httpx.AsyncClient, dp: str = "dp1") -> str:
    r = await http.put(f"/api/v1/dataplanes/{dp}")
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    assert isinstance(token, str) and token
    return token


async def put_env(http: httpx.AsyncClient, dp: str, env: str, spec: dict[str, Any] | None = None) -> int:
    r = await http.put(f"/api/v1/dataplanes/{dp}/environments/{env}", json={"spec": spec or ENV_SPEC})
    assert r.status_code == 202, r.text
    return int(r.json()["revision"])


async def put_app(
    http: httpx.AsyncClient, dp: str, env: str, app: str, spec: dict[str, Any] | None = None
) -> int:
    r = await http.put(
        f"/api/v1/dataplanes/{dp}/environments/{env}/apps/{app}", json={"spec": spec or app_spec()}
    )
    assert r.status_code == 202, r.text
    return int(r.json()["revision"])


# the suite's one polling helper; everything here runs in-process, so polls are short
eventually = partial(polling.eventually, timeout=5.0, interval=0.02)


class RawAgent:
    """A scriptable agent speaking the protocol frame by frame (no cluster behind it)."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.seq = p.Sequencer()
        self.received: list[p.Frame] = []

    @classmethod
    async def connect(
        cls, url: str, token: str, *, ssl_context: ssl.SSLContext | None = None, subprotocol: bool = True
    ) -> RawAgent:
        ws = await websockets.connect(
            url,
            subprotocols=[p.SUBPROTOCOL] if subprotocol else None,  # type: ignore[list-item]
            additional_headers={"Authorization": f"Bearer {token}"},
            ssl=ssl_context,
            max_size=p.TRANSPORT_MAX_BYTES,
            open_timeout=FRAME_TIMEOUT,
        )
        return cls(ws)

    async def send(self, body: p.Body, corr: str | None = None) -> str:
        frame_id = p.new_id()
        await self.ws.send(p.encode(body, seq=self.seq.next(), corr=corr, id=frame_id))
        return frame_id

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send(data)

    async def send_json(self, type_: str, body: Any) -> str:
        """A frame built with plain json, not the protocol's models: for bodies a well-behaved
        sender could not even serialise (the hostile agent's)."""
        frame_id = p.new_id()
        envelope = {"v": 1, "type": type_, "id": frame_id, "seq": self.seq.next(), "body": body}
        await self.ws.send(json.dumps(envelope, separators=(",", ":")))
        return frame_id

    async def recv(self, timeout: float = FRAME_TIMEOUT) -> p.Frame:
        data = await asyncio.wait_for(self.ws.recv(), timeout)
        frame = p.decode(data)
        self.received.append(frame)
        return frame

    async def recv_until(self, type_: str, timeout: float = FRAME_TIMEOUT) -> list[p.Frame]:
        """Frames up to and including the first of ``type_``."""
        out: list[p.Frame] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await self.recv(max(0.01, deadline - loop.time()))
            out.append(frame)
            if frame.type == type_:
                return out

    async def hello(
        self, dp: str, *, epoch: str | None = None, revision: int = 0, inventory_count: int = 0
    ) -> p.Welcome:
        await self.send(
            p.Hello(
                dataplane_id=dp,
                versions=[1],
                epoch=epoch,
                applied_revision=revision,
                inventory_count=inventory_count,
            )
        )
        frame = await self.recv()
        assert isinstance(frame.body, p.Welcome), frame
        return frame.body

    async def close(self) -> None:
        await self.ws.close()


def frame_json(frame: p.Frame) -> dict[str, Any]:
    return json.loads(p.encode(frame.body, seq=frame.envelope.seq))  # type: ignore[no-any-return]
