"""Shared helpers for the conformance suite: real clients only."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client, config

T = TypeVar("T")
CRD_DIR = Path(__file__).resolve().parents[2] / "crds"


def api_client(kubeconfig: Path) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(kubeconfig))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_for(fn: Callable[[], T | None], timeout: float = 15.0, interval: float = 0.05, what: str = "condition") -> T:
    """Poll until ``fn`` returns something truthy; fail with a clear message at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")
