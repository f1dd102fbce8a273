"""Everything a request handler or tunnel session needs, passed around as one object."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field

from choreo_cp.hub import Hub
from choreo_cp.insync import DesiredDigests
from choreo_cp.metrics import Metrics
from choreo_cp.store import Store
from choreo_cp.streams import StreamRegistry
from choreo_dp.observability.health import Liveness


@dataclass
class TunnelSettings:
    """Limits of the tunnel endpoint (see docs/protocol.md)."""

    heartbeat_interval: float = 10.0
    # A session that has not heard from its agent for this long is closed: dead links are found
    # within 30 s (the contract's bound) even if TCP keeps the socket open.
    idle_timeout: float = 30.0
    hello_timeout: float = 10.0
    send_batch: int = 256
    status_flush_interval: float = 0.25
    # Bound on frames queued for one session (replies to the agent); a full queue means the agent
    # stopped reading, and the session is dropped rather than buffering without bound.
    outbox_limit: int = 1024
    # Anti-entropy: an agent whose inventory keeps differing is sent goaway(resync) and may reconnect
    # after resync_retry_after; repeated requests back off from anti_entropy_backoff doubling to
    # anti_entropy_backoff_cap, so a difference a resync cannot cure does not loop.
    resync_retry_after: float = 1.0
    anti_entropy_backoff: float = 60.0
    anti_entropy_backoff_cap: float = 600.0
    # How long a session retries a store operation that fails with "database is locked" / disk I/O
    # before it gives up on that operation (a read ends the session with a goaway; a report is kept).
    store_retry_seconds: float = 10.0
    # Several replicas: every this many seconds (jittered) a replica holding more than its share of
    # the agents sends a few away (choreo_cp/rebalance.py); 0 switches it off.
    rebalance_interval: float = 30.0

    @property
    def dead_link_after(self) -> float:
        """A data plane whose last heartbeat is older than this is shown not connected."""
        return self.idle_timeout


@dataclass
class ControlPlane:
    store: Store
    admin_token: str
    hub: Hub = field(default_factory=Hub)
    metrics: Metrics = field(default_factory=Metrics)
    tunnel: TunnelSettings = field(default_factory=TunnelSettings)
    streams: StreamRegistry = field(default_factory=StreamRegistry)
    # Beaten by the periodic store flush: /healthz fails when the store thread stops making progress.
    liveness: Liveness = field(default_factory=lambda: Liveness("store", max_silence=60.0))
    digests: DesiredDigests = field(init=False)

    def __post_init__(self) -> None:
        self.digests = DesiredDigests(self.store)

    def is_admin(self, token: str) -> bool:
        return bool(self.admin_token) and hmac.compare_digest(token.encode(), self.admin_token.encode())
