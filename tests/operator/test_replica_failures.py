"""Which ReplicaSet creation failures make an app Degraded: a missing app ServiceAccount is the
Environment's reconcile still running (progress), a quota refusal is damage until it changes."""

from __future__ import annotations

import pytest

from choreo_dp.operator.app_status import _awaits_app_service_account

SA = (
    'pods "web-6c8d-" is forbidden: error looking up service account choreo-demo/choreo-app: '
    'serviceaccount "choreo-app" not found'
)
QUOTA = 'pods "web-6c8d-x" is forbidden: exceeded quota: choreo-quota, requested: pods=1, used: pods=1, limited: pods=1'
OTHER_SA = (
    'pods "web-6c8d-" is forbidden: error looking up service account choreo-demo/builder: '
    'serviceaccount "builder" not found'
)


@pytest.mark.parametrize(
    ("failure", "awaits"),
    [(SA, True), (QUOTA, False), (OTHER_SA, False), ("", False)],
    ids=["app service account", "quota", "another service account", "empty"],
)
def test_only_the_missing_app_service_account_is_progress(failure: str, awaits: bool) -> None:
    assert _awaits_app_service_account(failure) is awaits
