"""``/healthz`` that fails when a long-running loop stops making progress or keeps failing, and ``/metrics``.

Each long-running loop owns a :class:`Liveness` probe and calls :meth:`Liveness.beat` whenever
it completes a unit of work or an idle wait; the endpoint reports 500 once any probe is stale. A
supervised loop (:mod:`choreo_dp.observability.supervise`) gets a child probe that its supervisor
marks failed while the loop is crashing and being restarted, so a loop that dies is never hidden
behind a sibling that still beats.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest


class Liveness:
    """``max_silence=None``: no beat is expected (an idle watch is fine); only :meth:`fail` makes it unhealthy."""

    def __init__(self, name: str, max_silence: float | None = 60.0) -> None:
        self.name = name
        self.max_silence = max_silence
        self._last = time.monotonic()
        self._failure: str | None = None
        self._children: list[Liveness] = []

    def child(self, name: str, max_silence: float | None = None) -> Liveness:
        """A probe reported under this one (``agent/status-watch``): registering the parent serves both."""
        probe = Liveness(f"{self.name}/{name}", max_silence)
        self._children.append(probe)
        return probe

    def beat(self) -> None:
        self._last = time.monotonic()
        self._failure = None

    def fail(self, reason: str) -> None:
        """Unhealthy until the next :meth:`beat`."""
        self._failure = reason

    @property
    def failure(self) -> str | None:
        return self._failure

    @property
    def silence(self) -> float:
        return time.monotonic() - self._last

    def problems(self) -> list[str]:
        """One line per unhealthy probe, this one and its children."""
        found: list[str] = []
        if self._failure is not None:
            found.append(f"{self.name}: {self._failure}")
        elif self.max_silence is not None and self.silence > self.max_silence:
            found.append(f"{self.name}: no progress for {self.silence:.0f}s")
        for probe in self._children:
            found.extend(probe.problems())
        return found

    @property
    def healthy(self) -> bool:
        return not self.problems()


def make_app(probes: Iterable[Liveness], registry: CollectorRegistry = REGISTRY) -> web.Application:
    probe_list = list(probes)

    async def healthz(_: web.Request) -> web.Response:
        problems = [line for p in probe_list for line in p.problems()]
        if problems:
            return web.Response(status=500, text="; ".join(problems) + "\n")
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
