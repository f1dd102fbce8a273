"""The cluster the operator's end-to-end modules run against: the emulator, then the real cluster.

``operator_cluster`` is module-scoped and parametrized ``emulator`` / ``real``: pytest runs a
module's tests on one target, tears that target down, then runs them on the other.  See
``tests/operator/harness.py`` for what each target is and how names are kept apart.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.fixtures.kube import RealClusterProcess
from tests.operator.harness import Cluster, declare_real_cluster, emulated_cluster, real_cluster_at

TARGETS = ("emulator", "real")


@pytest_asyncio.fixture(loop_scope="module", scope="module", params=TARGETS)
async def operator_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Cluster]:
    tmp = tmp_path_factory.mktemp(f"operator-{request.param}")
    if request.param == "emulator":
        async with emulated_cluster(tmp) as cluster:
            yield cluster
        return
    real: RealClusterProcess = request.getfixturevalue("real_cluster")
    async with real_cluster_at(real.kubeconfig, tmp) as cluster:
        yield cluster


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    declare_real_cluster(items, "operator_cluster")
