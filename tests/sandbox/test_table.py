"""The sandbox's ``kubectl get choreoapps -A`` table without kubectl is the table kubectl prints.

``Sandbox.server_table`` renders the apiserver's ``meta.k8s.io/v1 Table`` for machines that never
built the binaries; it must read exactly like the kubectl built from k8s.io/kubernetes (on the
emulated API and on the real kube-apiserver), AGE aside (a second may pass between the two).
"""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from choreo_dp.kube import ApiError, KubeClient
from choreo_dp.kube import resources as R
from choreo_sandbox.demo import Sandbox
from tests.fixtures.kube import RealClusterProcess
from tests.tunnel.conftest import eventually

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"


@pytest.fixture
async def sandbox(kube_faulty_target: RealClusterProcess | None, tmp_path: Path) -> AsyncIterator[Sandbox]:
    """A ``Sandbox`` object (nothing started) whose kubeconfig and client point at the target."""
    sb = Sandbox(tmp_path / "sb")
    sb.directory.mkdir(parents=True)
    if kube_faulty_target is None:
        from kube_emulator import ApiServer

        async with ApiServer(port=0) as srv:
            srv.write_kubeconfig(sb.kubeconfig)
            async with await KubeClient.from_kubeconfig(sb.kubeconfig) as sb.kube:
                yield sb
        return
    shutil.copy(kube_faulty_target.kubeconfig, sb.kubeconfig)
    async with await KubeClient.from_kubeconfig(sb.kubeconfig) as sb.kube:
        yield sb


def _without_age(table: str) -> list[str]:
    return [re.sub(r"\S+$", "", line) for line in table.splitlines()]


async def test_server_table_reads_like_kubectl(sandbox: Sandbox) -> None:
    kube = sandbox.kube
    assert kube is not None
    for path in sorted(CRD_DIR.glob("*.yaml")):
        await kube.apply(yaml.safe_load(path.read_text()), "choreo-dp-tests")

    async def served() -> bool:
        try:
            await kube.list(R.CHOREOAPPS)
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    await eventually(served, timeout=30, what="choreoapps served")
    ns = f"table-{uuid.uuid4().hex[:8]}"  # the real cluster is shared: a namespace of our own
    await kube.create(R.NAMESPACES, {"metadata": {"name": ns}})
    try:
        base = {"project": "p", "type": "service", "image": "ghcr.io/acme/a:1", "environment": "dev"}
        for name, status in (
            (
                "a-ready",
                {
                    "phase": "Ready",
                    "ready": "2/2",
                    "endpoints": [{"name": "http", "visibility": "Public", "url": "https://x/y"}],
                },
            ),
            ("b-with-a-much-longer-name", {"phase": "Progressing", "ready": "0/1"}),
            ("c-no-status", None),
        ):
            body = {"apiVersion": "choreo.dev/v1alpha1", "kind": "ChoreoApp", "metadata": {"name": name}}
            await kube.create(R.CHOREOAPPS, {**body, "spec": base}, ns)
            if status is not None:
                await kube.patch(R.CHOREOAPPS, name, {"status": status}, ns, subresource="status")
        kubectl = await sandbox.kubectl_table()
        assert re.search(
            rf"^{ns}\s+a-ready\s+dev\s+service\s+2/2\s+Ready\s+https://x/y\s+\S+$", kubectl, re.M
        )
        assert _without_age(await sandbox.server_table()) == _without_age(kubectl)
    finally:
        await kube.delete(R.NAMESPACES, ns)
