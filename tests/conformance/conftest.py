"""Conformance fixtures: a namespace per test module, API clients bound to ``kube_target``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client

from tests.conformance.helpers import api_client, unique
from tests.fixtures.kube import KubeTarget


@pytest.fixture(scope="module")
def api(kube_target: KubeTarget) -> Iterator[client.ApiClient]:
    c = api_client(kube_target.kubeconfig)
    yield c
    c.close()


@pytest.fixture(scope="module")
def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@pytest.fixture(scope="module")
def ns(core: client.CoreV1Api) -> Iterator[str]:
    name = unique("conf")
    core.create_namespace({"metadata": {"name": name}})
    yield name
    try:
        core.delete_namespace(name)
    except client.ApiException as exc:
        if exc.status != 404:
            raise
