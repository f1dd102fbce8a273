"""``/healthz`` that fails when the main loop stops making progress, and ``/metrics``.

Each long-running loop owns a :class:`Liveness` probe and calls :meth:`Liveness.beat` whenever
it completes a unit of work or an idle wait; the endpoint reports 500 once any probe is stale.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest


class Liveness:
    def __init__(self, name: str, max_silence: float = 60.0) -> None:
        self.name = name
        self.max_silence = max_silence
        self._last = time.monotonic()

    def beat(self) -> None:
        self._last = time.monotonic()

    @property
    def silence(self) -> float:
        return time.monotonic() - self._last

    @property
    def healthy(self) -> bool:
        return self.silence <= self.max_silence


def make_app(probes: Iterable[Liveness], registry: CollectorRegistry = REGISTRY) -> web.Application:
    probe_list = list(probes)

    async def healthz(_: web.Request) -> web.Response:
        stale = [p for p in probe_list if not p.healthy]
        if stale:
            text = "; ".join(f"{p.name}: no progress for {p.silence:.0f}s" for p in stale)
            return web.Response(status=500, text=text + "\n")
        return web.Response(text="ok\n")

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


async def serve(
    probes: Iterable[Liveness], host: str, ports: Iterable[int], registry: CollectorRegistry = REGISTRY
) -> web.AppRunner:
    """Serve health and metrics on each given port (they may be the same); caller cleans up the runner."""
    runner = web.AppRunner(make_app(probes, registry), access_log=None)
    await runner.setup()
    for p in sorted(set(ports)):
        await web.TCPSite(runner, host, p).start()
    return runner
