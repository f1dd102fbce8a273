"""``events`` streams: Kubernetes Events of the app, its children and its pods, newest first; with
``follow`` a watch on the namespace's Events, filtered to those objects.

The objects are found by the app's label (children and pods) plus the ChoreoApp itself. During a
watch an Event about an unknown pod or child of the app's name prefix makes the set be listed
again (at most every REFRESH_EVERY), so pods created after the start are followed too.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from choreo_dp.agent.streams.manager import StreamContext
from choreo_dp.agent.streams.pods import app_children, app_pods
from choreo_dp.api.vocabulary import KIND_APP
from choreo_dp.kube import ApiError
from choreo_dp.kube import resources as R

REFRESH_EVERY = 2.0
EVENT_WATCH_SECONDS = 300


async def involved(ctx: StreamContext) -> set[tuple[str, str]]:
    pods, _ = await app_pods(ctx.kube, ctx.namespace, ctx.app)
    children = await app_children(ctx.kube, ctx.namespace, ctx.app)
    objects = {(KIND_APP, ctx.app)}
    objects.update((str(o.get("kind", "Pod")), o["metadata"]["name"]) for o in pods)
    objects.update((str(o.get("kind")), o["metadata"]["name"]) for o in children)
    return objects


def _of(event: dict[str, Any]) -> tuple[str, str]:
    obj = event.get("involvedObject") or {}
    return str(obj.get("kind", "")), str(obj.get("name", ""))


def _when(event: dict[str, Any]) -> str:
    return str(
        event.get("lastTimestamp")
        or event.get("eventTime")
        or (event.get("series") or {}).get("lastObservedTime")
        or (event.get("metadata") or {}).get("creationTimestamp")
        or ""
    )


def summary(event: dict[str, Any]) -> dict[str, Any]:
    kind, name = _of(event)
    return {
        "type": event.get("type"),
        "reason": event.get("reason"),
        "message": event.get("message"),
        "object": f"{kind}/{name}",
        "count": event.get("count") or (event.get("series") or {}).get("count") or 1,
        "firstTimestamp": event.get("firstTimestamp") or event.get("eventTime"),
        "lastTimestamp": _when(event) or None,
    }


async def stream_events(ctx: StreamContext) -> None:
    objects = await involved(ctx)
    items, rv = await ctx.kube.list(R.EVENTS, ctx.namespace)
    mine = sorted((e for e in items if _of(e) in objects), key=_when, reverse=True)
    await ctx.channel.accept()
    await ctx.channel.objects([summary(e) for e in mine])
    if not ctx.params.follow:
        return
    loop = asyncio.get_running_loop()
    refreshed = loop.time()
    while True:
        try:
            async for etype, event in ctx.kube.watch(
                R.EVENTS, ctx.namespace, resource_version=rv, timeout_seconds=EVENT_WATCH_SECONDS
            ):
                rv = str((event.get("metadata") or {}).get("resourceVersion") or rv)
                if etype not in ("ADDED", "MODIFIED"):
                    continue
                about = _of(event)
                if (
                    about not in objects
                    and about[1].startswith(f"{ctx.app}-")
                    and loop.time() - refreshed >= REFRESH_EVERY
                ):
                    refreshed = loop.time()
                    objects = await involved(ctx)
                if about in objects:
                    await ctx.channel.objects([summary(event)])
        except ApiError as exc:
            if not exc.gone:
                raise
            # too old: the newest state from here on (a gap the client sees only as missing Events)
            with contextlib.suppress(ApiError):
                _, rv = await ctx.kube.list(R.EVENTS, ctx.namespace)
