"""Prometheus metrics of the secrets sync. Label values are reasons and environment names, never values."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

KEYVAULT_REQUESTS = Counter(
    "choreo_dp_keyvault_requests",
    "Key Vault secret reads by result.",
    ["result"],  # ok | not_found | forbidden | throttled | unavailable
)
SYNC_DURATION = Histogram(
    "choreo_dp_secret_sync_duration_seconds",
    "Time to sync one app's Kubernetes Secret from Key Vault.",
    ["trigger"],  # reconcile | refresh
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
LAST_SUCCESS = Gauge(
    "choreo_dp_secret_sync_last_success_timestamp_seconds",
    "Unix time of the last successful secret sync, per environment.",
    ["environment"],
)
SECRETS_TRACKED = Gauge(
    "choreo_dp_secrets_tracked",
    "Distinct Key Vault secret versions being kept fresh.",
)


def result_label(reason: str | None, throttled: bool = False) -> str:
    if reason is None:
        return "ok"
    if throttled:
        return "throttled"
    return {"SecretNotFound": "not_found", "Forbidden": "forbidden"}.get(reason, "unavailable")
