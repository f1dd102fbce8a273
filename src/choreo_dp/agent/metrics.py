"""Prometheus metrics of the agent (served on /metrics by the observability module)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

CONNECTED = Gauge("choreo_agent_connected", "1 while a tunnel session is established")
APPLIED_REVISION = Gauge("choreo_agent_applied_revision", "newest revision persisted and acknowledged")
ORPHANS = Gauge("choreo_agent_orphans", "deletions held back by the safety rules")
FRAMES_IN = Counter("choreo_agent_frames_received_total", "frames received", ["type"])
FRAMES_REFUSED = Counter("choreo_agent_frames_refused_total", "frames answered with an error", ["code"])
WRITES = Counter("choreo_agent_object_writes_total", "Environment/ChoreoApp writes", ["op"])
NACKS = Counter("choreo_agent_nacks_total", "changes not applied", ["code", "retryable"])
CONNECT_FAILURES = Counter("choreo_agent_connect_failures_total", "failed connection attempts", ["reason"])
HEARTBEATS = Counter("choreo_agent_heartbeat_renewals_total", "DataPlane lastHeartbeatTime renewals written")
DATAPLANE_WRITE_FAILURES = Counter(
    "choreo_agent_dataplane_write_failures_total", "best-effort DataPlane status writes that failed", ["what"]
)
# 0 while the agent's own DataPlane writes fail: the Kubernetes API is down or refuses the agent
KUBERNETES_REACHABLE = Gauge("choreo_agent_kubernetes_reachable", "1 when the last DataPlane write succeeded")
