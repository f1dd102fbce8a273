"""A test-only stand-in for the kubelet and the Deployment controller, with failure switches.

It makes Deployments of managed apps become available (or crash-loop / fail to pull, on request)
by creating Pods with container statuses and writing Deployment status, the way a cluster would.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from choreo_dp.kube import ApiError, KubeClient
from choreo_dp.kube import resources as R

SELECTOR = "app.kubernetes.io/managed-by=choreo-dp"


class FakeKubelet:
    def __init__(self, kube: KubeClient) -> None:
        self.kube = kube
        self.failures: dict[
            tuple[str, str], str
        ] = {}  # (ns, deployment) -> CrashLoopBackOff | ImagePullBackOff
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def fail(self, namespace: str, name: str, reason: str | None) -> None:
        if reason is None:
            self.failures.pop((namespace, name), None)
        else:
            self.failures[(namespace, name)] = reason
        self._wake.set()

    async def __aenter__(self) -> FakeKubelet:
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                deployments, _ = await self.kube.list(R.DEPLOYMENTS, label_selector=SELECTOR)
                for dep in deployments:
                    await self._sync(dep)
            except ApiError:
                pass
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.2)

    async def _sync(self, dep: dict[str, Any]) -> None:
        meta, spec = dep["metadata"], dep["spec"]
        ns, name, gen = meta["namespace"], meta["name"], int(meta.get("generation") or 1)
        want = int(spec.get("replicas", 1))
        failure = self.failures.get((ns, name))
        template = spec["template"]
        image = template["spec"]["containers"][0]["image"]
        pods, _ = await self.kube.list(R.PODS, ns, label_selector=f"choreo.dev/app={name}")
        keep = {f"{name}-g{gen}-{i}" for i in range(want)}
        for pod in pods:
            if pod["metadata"]["name"] not in keep:
                await self.kube.delete(R.PODS, pod["metadata"]["name"], ns)
        existing = {p["metadata"]["name"]: p for p in pods}
        for pod_name in sorted(keep):
            status = self._container_status(image, failure)
            pod = existing.get(pod_name)
            if pod is None:
                body = {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": pod_name, "namespace": ns, "labels": template["metadata"]["labels"]},
                    "spec": template["spec"],
                }
                await self.kube.create(R.PODS, body, ns)
            elif (pod.get("status") or {}).get("containerStatuses") == [status]:
                continue
            await self.kube.patch(
                R.PODS, pod_name, {"status": {"containerStatuses": [status]}}, ns, subresource="status"
            )
        ready = 0 if failure else want
        dep_status = {
            "observedGeneration": gen,
            "replicas": want,
            "updatedReplicas": want,
            "readyReplicas": ready,
            "availableReplicas": ready,
        }
        current = {k: (dep.get("status") or {}).get(k) for k in dep_status}
        if current != dep_status:
            await self.kube.patch(R.DEPLOYMENTS, name, {"status": dep_status}, ns, subresource="status")

    @staticmethod
    def _container_status(image: str, failure: str | None) -> dict[str, Any]:
        if failure == "CrashLoopBackOff":
            return {
                "name": "app",
                "image": image,
                "ready": False,
                "restartCount": 4,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
            }
        if failure == "ImagePullBackOff":
            return {
                "name": "app",
                "image": image,
                "ready": False,
                "restartCount": 0,
                "state": {
                    "waiting": {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{image}"'}
                },
            }
        digest = "sha256:" + "ab" * 32
        return {
            "name": "app",
            "image": image,
            "ready": True,
            "restartCount": 0,
            "imageID": f"{image.rsplit(':', 1)[0]}@{digest}",
            "state": {"running": {"startedAt": "2024-01-01T00:00:00Z"}},
        }
