"""Prometheus metrics of the reference control plane (one registry per server instance)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "choreo_cp_http_requests",
            "REST requests by route template, method and status code.",
            ["route", "method", "code"],
            registry=r,
        )
        self.changes = Counter(
            "choreo_cp_desired_changes",
            "Desired-state changes committed (each bumps a dataplane revision).",
            ["kind", "op"],
            registry=r,
        )
        self.sessions = Gauge("choreo_cp_tunnel_sessions", "Active tunnel sessions.", registry=r)
        self.session_starts = Counter(
            "choreo_cp_tunnel_session_starts", "Tunnel sessions accepted, by sync mode.", ["mode"], registry=r
        )
        self.session_rejects = Counter(
            "choreo_cp_tunnel_rejects", "Tunnel connections refused, by reason.", ["reason"], registry=r
        )
        self.frames_in = Counter(
            "choreo_cp_tunnel_frames_in", "Frames received by type.", ["type"], registry=r
        )
        self.frames_out = Counter("choreo_cp_tunnel_frames_out", "Frames sent by type.", ["type"], registry=r)
        self.bytes_in = Counter("choreo_cp_tunnel_bytes_in", "Tunnel payload bytes received.", registry=r)
        self.bytes_out = Counter("choreo_cp_tunnel_bytes_out", "Tunnel payload bytes sent.", registry=r)
        self.nacks = Counter("choreo_cp_tunnel_nacks", "Nacks received, by code.", ["code"], registry=r)
        self.reports_refused = Counter(
            "choreo_cp_tunnel_reports_refused",
            "Reports from data planes refused by validation (nothing stored), by kind of report.",
            ["report"],
            registry=r,
        )
        self.anti_entropy = Counter(
            "choreo_cp_anti_entropy",
            "Inventory summaries judged, by outcome (match, explained, pending, differs) and the resyncs"
            " requested or deferred by the backoff (resync_requested, resync_deferred).",
            ["outcome"],
            registry=r,
        )
        self.store_unavailable = Counter(
            "choreo_cp_store_unavailable",
            "Store operations that failed with a database error a retry may cure, by where.",
            ["where"],
            registry=r,
        )
        self.store_flush_seconds = Histogram(
            "choreo_cp_store_flush_seconds",
            "Time to write one batch of coalesced reports.",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0),
            registry=r,
        )
