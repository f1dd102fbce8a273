"""Asyncio Kubernetes client used by the operator, the agent and the secrets sync."""

from choreo_dp.kube import resources
from choreo_dp.kube.backoff import Backoff
from choreo_dp.kube.client import KubeClient
from choreo_dp.kube.errors import ApiError, ConfigError
from choreo_dp.kube.resources import Resource
from choreo_dp.kube.watch import Changed, Listed, WatchEvent, WatchStream

__all__ = [
    "ApiError",
    "Backoff",
    "Changed",
    "ConfigError",
    "KubeClient",
    "Listed",
    "Resource",
    "WatchEvent",
    "WatchStream",
    "resources",
]
