"""Valid sample objects shared by the API tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def example_objects() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        out.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return out


def app(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "environment": "dev",
        "project": "shop",
        "type": "service",
        "image": "ghcr.io/acme/x:1",
    }
    base.update(spec)
    return base


DATAPLANE = {
    "apiVersion": "choreo.dev/v1alpha1",
    "kind": "DataPlane",
    "metadata": {"name": "sandbox", "creationTimestamp": "2026-01-01T00:00:00Z"},
    "spec": {"controlPlaneURL": "wss://cp.example:443", "dataplaneId": "sandbox"},
    "status": {
        "connected": True,
        "lastHeartbeatTime": "2026-01-01T00:00:05Z",
        "epoch": "e1",
        "appliedRevision": 42,
        "orphans": 0,
        "conditions": [
            {
                "type": "Connected",
                "status": "True",
                "reason": "Connected",
                "message": "",
                "lastTransitionTime": "2026-01-01T00:00:01Z",
                "observedGeneration": 1,
            }
        ],
    },
}
