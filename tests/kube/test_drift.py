"""The drift check compares resource quantities by the value the API server stores."""

from __future__ import annotations

from typing import Any

import pytest

from choreo_dp.kube import KubeClient
from choreo_dp.operator.drift import contains, same_quantity
from tests.fixtures.kube import FaultyApi


def _resources(**values: Any) -> dict[str, Any]:
    return {"spec": {"containers": [{"name": "app", "resources": {"requests": values}}]}}


@pytest.mark.parametrize(
    ("live", "desired", "in_sync"),
    [
        ("500m", 0.5, True),
        ("500m", "0.5", True),
        ("1Gi", "1024Mi", True),
        ("1536Mi", "1.5Gi", True),
        ("2", 2, True),
        ("1m", "100u", True),  # requests are rounded up to milli-units when stored
        ("1k", "1000", True),
        ("500m", "0.6", False),
        ("1Gi", "1G", False),  # 2^30 is not 10^9
        ("abc", "abc", True),  # not a quantity: plain equality
        ("abc", "abd", False),
        (True, "1", False),
    ],
)
def test_quantities_in_resource_lists(live: Any, desired: Any, in_sync: bool) -> None:
    assert contains(_resources(cpu=live), _resources(cpu=desired)) is in_sync


@pytest.mark.parametrize(
    ("live", "desired", "in_sync"),
    [
        # only where quantities live: elsewhere these are different strings
        ({"env": [{"name": "N", "value": "1k"}]}, {"env": [{"name": "N", "value": "1000"}]}, False),
        ({"replicas": 1}, {"replicas": 1.0}, True),
        ({"emptyDir": {"sizeLimit": "256Mi"}}, {"emptyDir": {"sizeLimit": "0.25Gi"}}, True),
        ({"spec": {"hard": {"requests.cpu": "2"}}}, {"spec": {"hard": {"requests.cpu": "2000m"}}}, True),
        ({"limits": [{"default": {"memory": "1Gi"}}]}, {"limits": [{"default": {"memory": "1024Mi"}}]}, True),
        ({"requests": {"cpu": "1"}}, {"requests": {"cpu": "1", "memory": "1Gi"}}, False),
    ],
)
def test_quantities_only_where_they_live(live: Any, desired: Any, in_sync: bool) -> None:
    assert contains(live, desired) is in_sync


def test_same_quantity_refuses_non_quantities() -> None:
    assert not same_quantity(None, "1")
    assert not same_quantity({"a": 1}, "1")
    assert not same_quantity("-1", "-1")  # a negative request is no stored quantity


async def test_a_deployment_applied_with_loose_quantities_reads_back_in_sync(kube_faulty: FaultyApi) -> None:
    ns = kube_faulty.namespace
    labels = {"app": "drift"}
    manifest: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "drift", "namespace": ns},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "image": "example.com/app:1",
                            "resources": {
                                "requests": {"cpu": 0.5, "memory": "1024Mi"},
                                "limits": {"cpu": "1.5", "memory": "1.5Gi"},
                            },
                        }
                    ],
                    "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "0.25Gi"}}],
                },
            },
        },
    }
    async with await KubeClient.from_kubeconfig(kube_faulty.kubeconfig_path) as kube:
        live = await kube.apply(manifest, "drift-test")
    container = live["spec"]["template"]["spec"]["containers"][0]
    if not kube_faulty.emulated:
        # What kube-apiserver stores, so the check below does not compare equal texts. The
        # emulator answers this apply with the quantities as sent (a gap of the emulator's), so
        # there the check below is the trivial case.
        assert container["resources"]["requests"] == {"cpu": "500m", "memory": "1Gi"}
        assert container["resources"]["limits"] == {"cpu": "1500m", "memory": "1536Mi"}
    assert contains(live, manifest)
