"""``logs`` streams: the lines of an app's pods (or one), ``pod/container: text``, in order per pod.

One reader per pod and container reads ``pods/log`` as the API streams it; what one chunk held goes
out as one write, so lines of different pods interleave as they arrive and each pod's stay in order.
With ``follow`` a watch on the app's pods ends the readers of a pod that goes away (a followed log
of a deleted pod need not end by itself); when every reader has ended the stream is done. Pods that
appear during a follow are not picked up: the client asks again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from choreo_dp.agent.streams.channel import StreamStop, cut_line
from choreo_dp.agent.streams.manager import StreamContext
from choreo_dp.agent.streams.pods import app_pods, selector
from choreo_dp.kube import ApiError
from choreo_dp.kube import resources as R
from choreo_dp.kube.lines import LineCutter
from choreo_wire import protocol as P

log = logging.getLogger("choreo_dp.agent.streams")

# A followed log may be quiet for long; past this without a byte its reader ends (code limit when
# every reader ended so). A non-follow read that stalls this long is broken.
FOLLOW_IDLE = 900.0
READ_IDLE = 30.0
# How long the pod watch of a follow runs before it is renewed.
POD_WATCH_SECONDS = 300


@dataclass
class _Readers:
    by_pod: dict[str, list[asyncio.Task[None]]] = field(default_factory=dict)
    failures: list[ApiError] = field(default_factory=list)
    lines: int = 0

    def all(self) -> list[asyncio.Task[None]]:
        return [t for tasks in self.by_pod.values() for t in tasks]


async def stream_logs(ctx: StreamContext) -> None:
    params = ctx.params
    pods, rv = await app_pods(ctx.kube, ctx.namespace, ctx.app, params.pod)
    wanted: dict[str, list[str]] = {}
    for pod in pods:
        name = pod["metadata"]["name"]
        wanted[name] = _containers(pod, params.container)
        if not wanted[name] and params.pod is not None:
            raise StreamStop("not_found", f"pod {name} has no container {params.container}")
    # before any reader runs: the acknowledgement is the stream's first frame
    await ctx.channel.accept()
    readers = _Readers()
    for name, containers in wanted.items():
        readers.by_pod[name] = [
            asyncio.create_task(_read(ctx, name, c, readers), name=f"log-{name}-{c}") for c in containers
        ]
    watcher = (
        asyncio.create_task(_watch_pods(ctx, rv, readers), name="log-pods")
        if params.follow and readers.by_pod
        else None
    )
    try:
        pending = set(readers.all())
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
    finally:
        for task in [*readers.all(), *([watcher] if watcher else [])]:
            task.cancel()
        await asyncio.gather(*readers.all(), *([watcher] if watcher else []), return_exceptions=True)
    if readers.failures and not readers.lines and len(readers.failures) == len(readers.all()):
        first = readers.failures[0]
        code: P.StreamEndCode = (
            "limit" if first.status == 504 else "forbidden" if first.status == 403 else "error"
        )
        raise StreamStop(code, f"{first.status} {first.reason}: {first.message}")


def _containers(pod: dict[str, Any], wanted: str | None) -> list[str]:
    names = [str(c.get("name")) for c in (pod.get("spec") or {}).get("containers") or []]
    if wanted is None:
        return names
    inits = [str(c.get("name")) for c in (pod.get("spec") or {}).get("initContainers") or []]
    return [wanted] if wanted in names or wanted in inits else []


async def _read(ctx: StreamContext, pod: str, container: str, readers: _Readers) -> None:
    params = ctx.params
    prefix = f"{pod}/{container}: "
    query: dict[str, Any] = {
        "container": container,
        "follow": params.follow or None,
        "previous": params.previous or None,
        "sinceSeconds": params.since_seconds,
        "tailLines": params.tail_lines,
        "limitBytes": params.limit_bytes,
    }
    cutter = LineCutter(P.STREAM_MAX_LINE_BYTES)
    channel = ctx.channel
    budget = ctx.budget
    chunks = ctx.kube.stream(
        R.PODS.path(ctx.namespace, pod, "log"),
        query,
        idle_timeout=FOLLOW_IDLE if params.follow else READ_IDLE,
        # one read is at most what a turn reserves: the bucket's debt stays within one reservation,
        # so turns come round at the rate's pace and every reader gets its share (an unbounded read
        # took half a second of the rate at once and left another reader without a turn for seconds)
        max_chunk=budget.reserve,
    )
    try:
        while True:
            # the turn comes before the read: until then the bytes wait in the kernel and TCP
            # backpressure slows the API server's sending (see budget.py)
            await budget.turn()
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                budget.settle(0)
                break
            except BaseException:
                budget.settle(0)
                raise
            budget.settle(len(chunk))
            lines = [_line(prefix, raw, cut) for raw, cut in cutter.feed(chunk)]
            if lines:
                async with channel.lock:
                    await channel.lines(lines)
                readers.lines += len(lines)
        tail = [_line(prefix, raw, cut) for raw, cut in cutter.finish()]
        if tail:
            async with channel.lock:
                await channel.lines(tail)
            readers.lines += len(tail)
    except ApiError as exc:
        # one pod's log missing (not started, no previous container) does not end the others
        log.info("stream %s: log of %s/%s: %s", channel.id, pod, container, exc)
        readers.failures.append(exc)
    finally:
        await chunks.aclose()


def _line(prefix: str, raw: bytes, cut: bool) -> str:
    line = prefix + raw.decode(errors="replace").rstrip("\r")
    # the reader cut what it did not buffer: the line is marked even if it now fits
    return cut_line(line) if cut else line


async def _watch_pods(ctx: StreamContext, rv: str, readers: _Readers) -> None:
    """End the readers of a pod that is deleted. The watch is renewed until the stream ends; if it
    cannot be, readers end by their own idle bound."""
    while True:
        try:
            async for etype, obj in ctx.kube.watch(
                R.PODS,
                ctx.namespace,
                label_selector=selector(ctx.app),
                resource_version=rv,
                timeout_seconds=POD_WATCH_SECONDS,
            ):
                meta = obj.get("metadata") or {}
                rv = str(meta.get("resourceVersion") or rv)
                if etype == "DELETED":
                    for task in readers.by_pod.get(str(meta.get("name")), []):
                        task.cancel()
        except ApiError as exc:
            if not exc.gone:
                log.info("stream %s: the pod watch ended: %s", ctx.channel.id, exc)
                return
            with contextlib.suppress(ApiError):
                _, rv = await app_pods(ctx.kube, ctx.namespace, ctx.app)
