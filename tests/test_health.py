"""/healthz fails when any registered main loop stops making progress; /metrics serves Prometheus text."""

from __future__ import annotations

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, Counter

from choreo_dp.observability.health import Liveness, make_app


async def test_healthz_names_the_stale_loop_and_metrics_are_served() -> None:
    registry = CollectorRegistry()
    Counter("demo_total", "a demo counter", registry=registry).inc()
    operator, agent = Liveness("operator", max_silence=60), Liveness("agent", max_silence=60)
    async with TestClient(TestServer(make_app([operator, agent], registry))) as client:
        resp = await client.get("/healthz")
        assert resp.status == 200
        agent.max_silence = 0.0  # the agent's loop has not beaten since: stale
        resp = await client.get("/healthz")
        text = await resp.text()
        assert resp.status == 500 and "agent" in text and "operator" not in text
        agent.max_silence, operator.max_silence = 60, 60
        agent.beat()
        assert (await client.get("/healthz")).status == 200
        metrics = await (await client.get("/metrics")).text()
        assert "demo_total 1.0" in metrics
