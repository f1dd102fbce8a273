"""Builds the controller and registers its reconcilers (controller-runtime's builder, in small).

The controller module knows no reconciler, and the reconcilers know only their context: this is
the one place that ties them together.
"""

from __future__ import annotations

from choreo_dp.operator.app_reconciler import reconcile as reconcile_app
from choreo_dp.operator.config import OperatorConfig, SecretsPort
from choreo_dp.operator.controller import Controller
from choreo_dp.operator.dataplane_reconciler import reconcile as reconcile_dataplane
from choreo_dp.operator.env_reconciler import reconcile as reconcile_env
from choreo_dp.operator.keys import AppKey, DataPlaneKey, EnvKey
from choreo_dp.operator.reconcile import KubeApi
from choreo_dp.render import ClusterCapabilities


def new_controller(
    kube: KubeApi, config: OperatorConfig, caps: ClusterCapabilities, secrets: SecretsPort | None
) -> Controller:
    ctl = Controller(kube, config, caps, secrets)
    ctl.register(AppKey, reconcile_app)
    ctl.register(EnvKey, reconcile_env)
    ctl.register(DataPlaneKey, reconcile_dataplane)
    return ctl
