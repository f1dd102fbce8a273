"""The per-session table of on-demand streams (logs, events, live state).

``stream.open`` is answered at once when it cannot be served (switched off, not an app of this data
plane, too many open streams); otherwise a task runs the stream's producer, which writes through its
:class:`~choreo_dp.agent.streams.channel.Channel` onto the outbound side's low-priority stream lane.
Every stream ends with exactly one ``stream.end``: done, a limit, an error, or ``cancelled`` when the
control plane ended it. When the session ends every stream is cancelled and nothing more is sent.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from choreo_dp.agent.cluster import ClusterStore
from choreo_dp.agent.streams.budget import ReadBudget
from choreo_dp.agent.streams.channel import CREDIT_WAIT, Channel, Send, StreamStop
from choreo_dp.api.vocabulary import KIND_APP
from choreo_dp.kube import ApiError, KubeClient
from choreo_dp.kube import resources as R
from choreo_wire import protocol as P

log = logging.getLogger("choreo_dp.agent.streams")

# A client that opened a stream and went away: how soon after stream.end the task must be gone is
# the caller's test; this is how long the session waits for all of them at its end.
CLOSE_WAIT = 5.0
# A refused stream.open is retried by the control plane after this (concurrency limit).
LIMIT_RETRY_AFTER = 5.0
DISABLED_MESSAGE = "observability is switched off in this data plane (observability.enabled=false)"


@dataclass(frozen=True)
class StreamContext:
    """What a producer needs: the API, where the app lives, what was asked, and the way out."""

    kube: KubeClient
    namespace: str
    app: str
    params: P.StreamParams
    channel: Channel
    # the data plane's log-read budget, shared by every reader of every stream
    budget: ReadBudget


Producer = Callable[[StreamContext], Awaitable[None]]


@dataclass
class _Open:
    channel: Channel
    task: asyncio.Task[None]
    cancelled_by_peer: bool = False


class StreamManager:
    def __init__(
        self,
        kube: KubeClient,
        store: ClusterStore,
        send: Send,
        send_soon: Callable[[P.Body], bool],
        *,
        enabled: bool = True,
        producers: dict[str, Producer] | None = None,
        max_concurrent: int = P.STREAM_MAX_CONCURRENT,
        credit_wait: float = CREDIT_WAIT,
        budget: ReadBudget | None = None,
    ) -> None:
        self.kube = kube
        self.store = store
        self.send = send
        self.send_soon = send_soon
        self.enabled = enabled
        self.producers = producers if producers is not None else default_producers()
        self.max_concurrent = max_concurrent
        self.credit_wait = credit_wait
        # per data plane, not per session: the agent hands its own in (a fresh one is a fallback)
        self.budget = budget if budget is not None else ReadBudget()
        self.streams: dict[str, _Open] = {}
        self.closed = False
        self.refusals_dropped = 0

    # --- frames from the control plane -------------------------------------------------------

    def open(self, body: P.StreamOpen) -> None:
        """Never blocks the reader: a refusal goes out without waiting, the stream runs in its task."""
        if self.closed:
            return
        if body.id in self.streams:
            self._refuse(P.Error(code="protocol", message=f"stream {body.id} is already open", ref=body.id))
            return
        if not self.enabled:
            self._refuse(P.StreamEnd(id=body.id, code="disabled", message=DISABLED_MESSAGE))
            return
        if len(self.streams) >= self.max_concurrent:
            self._refuse(
                P.StreamEnd(
                    id=body.id,
                    code="limit",
                    message=f"{self.max_concurrent} streams are open on this data plane",
                    retry_after=LIMIT_RETRY_AFTER,
                )
            )
            return
        channel = Channel(body, self.send, credit_wait=self.credit_wait)
        task = asyncio.create_task(self._run(body, channel), name=f"stream-{body.id}")
        self.streams[body.id] = _Open(channel, task)
        task.add_done_callback(functools.partial(self._forget, body.id))

    def credit(self, body: P.StreamCredit) -> None:
        entry = self.streams.get(body.id)
        if entry is not None:  # a credit for a stream that just ended is normal, not an error
            entry.channel.grant(body.bytes)

    def end(self, body: P.StreamEnd) -> None:
        """The control plane ended the stream (its client went away): stop reading at once."""
        entry = self.streams.get(body.id)
        if entry is not None and not entry.task.done():
            entry.cancelled_by_peer = True
            entry.task.cancel()

    async def close(self) -> None:
        """The session ended: cancel every stream; nothing more can be sent."""
        self.closed = True
        tasks = [entry.task for entry in self.streams.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_WAIT)

    # --- running one stream ------------------------------------------------------------------

    def _refuse(self, body: P.Body) -> None:
        if not self.send_soon(body):
            self.refusals_dropped += 1

    def _forget(self, sid: str, task: asyncio.Task[None]) -> None:
        entry = self.streams.get(sid)
        if entry is not None and entry.task is task:
            del self.streams[sid]

    async def _run(self, body: P.StreamOpen, channel: Channel) -> None:
        end: P.StreamEnd
        try:
            ctx = await self._context(body, channel)
            await self.producers[body.kind](ctx)
            end = P.StreamEnd(id=body.id, code="done")
        except asyncio.CancelledError:
            entry = self.streams.get(body.id)
            if entry is not None and entry.cancelled_by_peer and not self.closed:
                # confirms the end, with nothing after it; best effort (the cp has forgotten the id)
                self.send_soon(P.StreamEnd(id=body.id, code="cancelled"))
            raise
        except StreamStop as stop:
            end = P.StreamEnd(
                id=body.id, code=stop.code, message=stop.message[:4000], retry_after=stop.retry_after
            )
        except ApiError as exc:
            end = P.StreamEnd(
                id=body.id, code=code_of(exc), message=f"{exc.status} {exc.reason}: {exc.message}"[:4000]
            )
        except Exception as exc:  # a broken stream never touches the session
            log.exception("stream %s (%s %s) failed", body.id, body.kind, body.key)
            end = P.StreamEnd(id=body.id, code="error", message=f"{type(exc).__name__}: {exc}"[:4000])
        log.info(
            "stream %s (%s %s) ended: %s, %d bytes",
            body.id,
            body.kind,
            body.key,
            end.code,
            channel.sent_bytes,
            extra={"event": "stream_end", "stream": body.id, "code": end.code, "bytes": channel.sent_bytes},
        )
        await self.send(end)

    async def _context(self, body: P.StreamOpen, channel: Channel) -> StreamContext:
        """Only an app this data plane manages, in its own namespace."""
        try:
            key = P.parse_key(body.key)
        except ValueError:
            raise StreamStop("not_found", f"{body.key!r} is not an app key") from None
        if key.kind != KIND_APP:
            raise StreamStop("forbidden", "streams are only about apps (ChoreoApp/<environment>/<app>)")
        managed = self.store.index.get(body.key)
        if managed is None or managed.namespace is None:
            if await self._exists_unmanaged(key.environment, key.name):
                raise StreamStop("forbidden", f"{body.key} is not an app of this data plane")
            raise StreamStop("not_found", f"no app {body.key} on this data plane")
        return StreamContext(self.kube, managed.namespace, managed.name, body.params, channel, self.budget)

    async def _exists_unmanaged(self, environment: str | None, name: str) -> bool:
        """A ChoreoApp of that name and Environment that someone else wrote."""
        try:
            items, _ = await self.kube.list(R.CHOREOAPPS, field_selector=f"metadata.name={name}")
        except ApiError:
            return False
        return any((i.get("spec") or {}).get("environment") == environment for i in items)


def code_of(exc: ApiError) -> P.StreamEndCode:
    if exc.status in (401, 403):
        return "forbidden"
    if exc.status == 404:
        return "not_found"
    if exc.status == 504:
        return "limit"
    return "error"


def default_producers() -> dict[str, Producer]:
    from choreo_dp.agent.streams.events import stream_events
    from choreo_dp.agent.streams.live import stream_live
    from choreo_dp.agent.streams.logs import stream_logs

    return {"logs": stream_logs, "events": stream_events, "live": stream_live}
