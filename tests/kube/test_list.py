"""Lists read in pages (limit + continue), and a continue token that expired (410)."""

from __future__ import annotations

from typing import Any

from choreo_dp.kube import Backoff, KubeClient
from choreo_dp.kube import resources as R
from tests.fixtures.kube import FaultyApi

SELECTOR = {"test.choreo.dev/paged": "yes"}


def _cm(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "labels": SELECTOR},
    }


async def _seed(kube: KubeClient, ns: str, n: int) -> list[str]:
    names = [f"paged-{i}" for i in range(n)]
    for name in names:
        await kube.create(R.CONFIGMAPS, _cm(name, ns))
    return names


async def test_list_reads_every_page(kube_faulty: FaultyApi) -> None:
    ns = kube_faulty.namespace
    async with await KubeClient.from_kubeconfig(kube_faulty.kubeconfig_path) as kube:
        names = await _seed(kube, ns, 5)
        # A stall of a millisecond changes nothing but counts the list requests that reach the API.
        counter = kube_faulty.faults.add(verb="list", resource="configmaps", stall=0.001, count=100)
        items, rv = await kube.list(R.CONFIGMAPS, ns, label_selector=SELECTOR, page_size=2)
        assert sorted(i["metadata"]["name"] for i in items) == names
        assert all(i["kind"] == "ConfigMap" and i["apiVersion"] == "v1" for i in items)
        assert rv and counter.hits == 3
        items, _ = await kube.list(R.CONFIGMAPS, ns, label_selector=SELECTOR, page_size=None)
        assert len(items) == 5 and counter.hits == 4


async def test_an_expired_continue_token_lists_again_in_one_request(kube_faulty: FaultyApi) -> None:
    ns = kube_faulty.namespace
    async with await KubeClient.from_kubeconfig(
        kube_faulty.kubeconfig_path, backoff=Backoff(base=0.01, cap=0.05)
    ) as kube:
        names = await _seed(kube, ns, 5)
        faults = kube_faulty.faults
        first = faults.add(verb="list", resource="configmaps", stall=0.001, count=1)
        gone = faults.add(verb="list", resource="configmaps", status=410, count=1, message="continue expired")
        after = faults.add(verb="list", resource="configmaps", stall=0.001, count=100)
        items, rv = await kube.list(R.CONFIGMAPS, ns, label_selector=SELECTOR, page_size=2)
        assert sorted(i["metadata"]["name"] for i in items) == names and rv
        # page one, its continue answered 410, then one unpaginated list
        assert (first.hits, gone.hits, after.hits) == (1, 1, 1)
