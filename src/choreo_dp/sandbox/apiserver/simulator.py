"""Workload simulator (placeholder until the kubelet-like logic lands)."""

from __future__ import annotations

from choreo_dp.sandbox.apiserver.store import Store


class WorkloadSimulator:
    def __init__(self, store: Store, delay: float = 0.2, enabled: bool = False) -> None:
        self.store = store
        self.delay = delay
        self.enabled = enabled
        self.failures: dict[tuple[str, str], str | None] = {}

    def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def set_pod_failure(self, namespace: str, deployment: str, mode: str | None) -> None:
        self.failures[(namespace, deployment)] = mode
