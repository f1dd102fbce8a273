"""API models: the single source of the CRD schemas."""

from choreo_dp.api.choreoapp import ChoreoApp, ChoreoAppSpec, ChoreoAppStatus
from choreo_dp.api.common import API_VERSION, GROUP, VERSION, Condition, set_condition
from choreo_dp.api.dataplane import DataPlane, DataPlaneSpec, DataPlaneStatus
from choreo_dp.api.environment import Environment, EnvironmentSpec, EnvironmentStatus

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "ChoreoApp",
    "ChoreoAppSpec",
    "ChoreoAppStatus",
    "Condition",
    "DataPlane",
    "DataPlaneSpec",
    "DataPlaneStatus",
    "Environment",
    "EnvironmentSpec",
    "EnvironmentStatus",
    "set_condition",
]
