"""Asyncio Kubernetes client used by the operator, the agent and the secrets sync."""

from choreo_dp.kube import resources
from choreo_dp.kube.backoff import Backoff
from choreo_dp.kube.client import KubeClient
from choreo_dp.kube.errors import ApiError, ConfigError
from choreo_dp.kube.resources import Resource

__all__ = ["ApiError", "Backoff", "ConfigError", "KubeClient", "Resource", "resources"]
