"""A small control plane peer for agent tests, speaking choreo_wire.protocol over websockets.serve.

It keeps desired state and a change log in memory (epoch, revision, log floor), chooses the mode
like the real one must, streams incremental changes with the prev chain, and runs the bucketed
resync. Knobs let tests duplicate/reorder frames, drop links at chosen points, send raw frames,
refuse tokens, and "restore" the store empty or from an older copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import ssl
import uuid
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from choreo_wire import protocol as P


@dataclass
class Entry:
    revision: int
    key: str
    spec: dict[str, Any] | None  # None: a delete


@dataclass
class Store:
    epoch: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    revision: int = 0
    log_floor: int = 0
    log: list[Entry] = field(default_factory=list)
    desired: dict[str, tuple[dict[str, Any], int]] = field(default_factory=dict)  # key -> (spec, rev)


class FakeControlPlane:
    def __init__(self, *, token: str = "tok", ssl_context: ssl.SSLContext | None = None) -> None:
        self.token = token
        self.ssl_context = ssl_context
        self.store = Store()
        self.server: Server | None = None
        self.port = 0
        self.sessions: list[ServerConnection] = []
        self.active: ServerConnection | None = None
        self.received: list[P.Frame] = []
        self.applied: int = 0
        self.statuses: dict[str, dict[str, Any]] = {}
        self.status_times: dict[str, list[str]] = {}
        self.orphan_reports: list[P.Orphans] = []
        self.nacks: list[P.Nack] = []
        self.errors: list[P.Error] = []
        self.hellos: list[P.Hello] = []
        self.modes: list[str] = []
        self.bytes_out = 0
        self.bytes_in = 0
        self.handshakes = 0
        # knobs
        self.duplicate = False
        self.reorder = False
        self.drop_after_puts: int | None = None  # close the link after sending this many puts
        self.drop_on_applied = False  # close when an applied frame arrives, ignoring it
        self.refuse_status: int | None = None
        self.heartbeat_interval = 15.0
        self.snapshot_omit_keys = False  # a broken cp: never sends snapshot.keys
        # while set and not yet open, snapshot.end waits (the link is live: tests inject frames)
        self.snapshot_end_gate: asyncio.Event | None = None
        self._later: asyncio.Task[None] | None = None
        self.changed = asyncio.Event()
        self._seq = P.Sequencer()
        self._puts_sent = 0
        self._lock = asyncio.Lock()

    # --- desired state API (what REST would do) ----------------------------------------------

    async def put(self, key: str, spec: dict[str, Any]) -> int:
        async with self._lock:
            self.store.revision += 1
            rev = self.store.revision
            self.store.desired[key] = (copy.deepcopy(spec), rev)
            self.store.log.append(Entry(rev, key, copy.deepcopy(spec)))
            prev = self.store.log[-2].revision if len(self.store.log) > 1 else self.store.log_floor
            if self.active is not None:
                await self._send_change(self.active, self.store.log[-1], prev)
        return rev

    async def delete(self, key: str) -> int:
        async with self._lock:
            self.store.revision += 1
            rev = self.store.revision
            self.store.desired.pop(key, None)
            self.store.log.append(Entry(rev, key, None))
            prev = self.store.log[-2].revision if len(self.store.log) > 1 else self.store.log_floor
            if self.active is not None:
                await self._send_change(self.active, self.store.log[-1], prev)
        return rev

    def restore(self, store: Store, *, new_epoch: bool) -> None:
        """Replace the store (backup restore / data loss); the live session, if any, is dropped."""
        self.store = copy.deepcopy(store)
        self.applied = 0
        if new_epoch:
            self.store.epoch = uuid.uuid4().hex[:12]

    def drop_after(self, n: int) -> None:
        """Abort the link right after the n-th change frame sent from now on."""
        self._puts_sent = 0
        self.drop_after_puts = n

    def snapshot_store(self) -> Store:
        return copy.deepcopy(self.store)

    def compact(self) -> None:
        """Forget the log (a log gap for any agent behind)."""
        self.store.log_floor = self.store.revision
        self.store.log.clear()

    # --- server ------------------------------------------------------------------------------

    async def start(self, port: int = 0) -> None:
        self.server = await serve(
            self._handler,
            "127.0.0.1",
            port,
            ssl=self.ssl_context,
            subprotocols=[P.SUBPROTOCOL],  # type: ignore[list-item]
            process_request=self._check_auth,
            max_size=P.TRANSPORT_MAX_BYTES,
            ping_interval=None,
        )
        self.port = port or self.server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"{'wss' if self.ssl_context else 'ws'}://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self._later is not None:
            self._later.cancel()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        self.active = None

    async def kill_link(self) -> None:
        ws = self.active
        self.active = None
        if ws is not None:
            ws.transport.abort()  # no close handshake: like a dead peer

    def _check_auth(self, conn: ServerConnection, request: Request) -> Response | None:
        self.handshakes += 1
        if self.refuse_status is not None:
            return conn.respond(self.refuse_status, "refused\n")
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return conn.respond(401, "bad token\n")
        return None

    async def _send(self, ws: ServerConnection, body: P.Body, *, raw: str | None = None) -> None:
        text = raw if raw is not None else self._seq.encode(body)
        self.bytes_out += len(text.encode())
        await ws.send(text)

    async def send_raw(self, text: str | bytes) -> None:
        assert self.active is not None
        await self.active.send(text)

    async def _send_change(self, ws: ServerConnection, entry: Entry, prev: int | None) -> None:
        body: P.Body
        if entry.spec is None:
            body = P.DesiredDelete(key=entry.key, revision=entry.revision, prev=prev)
        else:
            kind = P.parse_key(entry.key).kind
            body = P.DesiredPut(
                key=entry.key,
                kind=kind,
                revision=entry.revision,
                prev=prev,
                spec_hash=P.spec_hash(entry.spec),
                spec=entry.spec,
                metadata={"environment": P.parse_key(entry.key).environment},
            )
        try:
            await self._send(ws, body)
            if self.duplicate:
                await self._send(ws, body)
            self._puts_sent += 1
            if self.drop_after_puts is not None and self._puts_sent >= self.drop_after_puts:
                self.drop_after_puts = None
                ws.transport.abort()
        except Exception:
            pass

    async def _handler(self, ws: ServerConnection) -> None:
        self.sessions.append(ws)
        try:
            hello_frame = P.decode(await asyncio.wait_for(ws.recv(), 10))
        except (P.ProtocolError, TimeoutError):
            return
        hello = hello_frame.body
        assert isinstance(hello, P.Hello)
        self.hellos.append(hello)
        if self.active is not None:  # the newest session wins
            with contextlib.suppress(Exception):
                await self._send(self.active, P.GoAway(reason="replaced", retry_after=1))
                await self.active.close()
        async with self._lock:
            st = self.store
            mode = P.choose_mode(
                cp_epoch=st.epoch,
                cp_revision=st.revision,
                log_floor=st.log_floor,
                agent_epoch=hello.epoch,
                agent_revision=hello.applied_revision,
            )
            self.modes.append(mode)
            await self._send(
                ws,
                P.Welcome(
                    version=1,
                    epoch=st.epoch,
                    revision=st.revision,
                    mode=mode,
                    heartbeat_interval=self.heartbeat_interval,
                ),
            )
            if mode == "incremental":
                await self._stream_since(ws, hello.applied_revision)
                self.active = ws
        reader = asyncio.create_task(self._reader(ws, mode))
        with contextlib.suppress(Exception):
            await reader
        if self.active is ws:
            self.active = None

    async def _stream_since(self, ws: ServerConnection, revision: int) -> None:
        entries = [e for e in self.store.log if e.revision > revision]
        if self.reorder and len(entries) >= 2:
            entries[0], entries[1] = entries[1], entries[0]
        prev_of = {}
        prev = revision
        for e in sorted(entries, key=lambda e: e.revision):
            prev_of[e.revision] = prev
            prev = e.revision
        for e in entries:
            await self._send_change(ws, e, prev_of[e.revision])

    async def _reader(self, ws: ServerConnection, mode: str) -> None:
        inventory: dict[str, str] = {}
        compared: list[int] = []
        begin: P.SnapshotBegin | None = None
        if mode == "resync":
            async with self._lock:
                st = self.store
                hashes = {k: P.spec_hash(spec) for k, (spec, _) in st.desired.items()}
                n = P.bucket_count(len(hashes), self.hellos[-1].inventory_count)
                begin = P.SnapshotBegin(
                    epoch=st.epoch,
                    revision=st.revision,
                    total=len(hashes),
                    buckets=n,
                    digests=P.encode_digests(P.bucket_digests(hashes, n)),
                )
                await self._send(ws, begin)
        async for raw in ws:
            self.bytes_in += len(raw if isinstance(raw, bytes) else raw.encode())
            try:
                frame = P.decode(raw)
            except P.ProtocolError as exc:
                await self._send(ws, exc.to_error())
                continue
            self.received.append(frame)
            self.changed.set()
            body = frame.body
            if isinstance(body, P.Applied):
                if self.drop_on_applied:
                    self.drop_on_applied = False
                    ws.transport.abort()
                    return
                self.applied = max(self.applied, body.revision)
            elif isinstance(body, P.Nack):
                self.nacks.append(body)
            elif isinstance(body, P.Error):
                self.errors.append(body)
            elif isinstance(body, P.Orphans):
                self.orphan_reports.append(body)
            elif isinstance(body, P.StatusBatch):
                for item in body.items:
                    self.statuses[item.key] = item.status
                    self.status_times.setdefault(item.key, []).append(item.observed_at)
            elif isinstance(body, P.Heartbeat) and frame.envelope.corr is None:
                await self._send(
                    ws, P.Heartbeat(time="now"), raw=self._seq.encode(P.Heartbeat(), corr=frame.id)
                )
            elif isinstance(body, P.Inventory) and begin is not None:
                if body.chunk == 0:
                    compared = body.buckets or []
                inventory.update(body.items)
                if body.last:
                    async with self._lock:
                        await self._finish_snapshot(ws, begin, compared, inventory)
                        self.active = ws
                    begin = None

    async def _finish_snapshot(
        self, ws: ServerConnection, begin: P.SnapshotBegin, compared: list[int], inventory: dict[str, str]
    ) -> None:
        st = self.store
        hashes = {k: P.spec_hash(spec) for k, (spec, _) in st.desired.items()}
        puts, same = P.snapshot_diff(hashes, inventory, compared, begin.buckets)
        for key in puts:
            spec, rev = st.desired[key]
            await self._send_change(ws, Entry(rev, key, spec), None)
        for part in P.chunked(same, P.SNAPSHOT_KEYS_CHUNK):
            if part and not self.snapshot_omit_keys:
                await self._send(ws, P.SnapshotKeys(keys=part))
        gate = self.snapshot_end_gate
        if gate is not None:
            # the reader goes on reading (nacks, errors) while a test injects frames
            self._later = asyncio.create_task(self._end_snapshot_after(ws, begin, gate))
            return
        await self._send(ws, P.SnapshotEnd(epoch=begin.epoch, revision=begin.revision))
        # changes committed after the snapshot's revision follow, chained from it
        await self._stream_since(ws, begin.revision)

    async def _end_snapshot_after(
        self, ws: ServerConnection, begin: P.SnapshotBegin, gate: asyncio.Event
    ) -> None:
        await gate.wait()
        async with self._lock:
            await self._send(ws, P.SnapshotEnd(epoch=begin.epoch, revision=begin.revision))
            await self._stream_since(ws, begin.revision)


def frame_text(msg_type: str, body: dict[str, Any], *, v: int = 1) -> str:
    return json.dumps({"v": v, "type": msg_type, "id": uuid.uuid4().hex, "seq": 1, "body": body})


__all__ = ["FakeControlPlane", "Headers", "Store", "frame_text"]
