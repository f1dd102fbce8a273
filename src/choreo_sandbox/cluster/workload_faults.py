"""Make a Deployment's pods crash-loop or fail their image pull on a real cluster, with kwok Stages.

kwok's default stages make every pod Running and Ready.  A failure is one more Stage that
matches the Deployment's pods (by namespace and the Deployment's selector) with a positive
weight, which kwok prefers over the zero-weight ``pod-ready``; it writes the status a kubelet
reports for that failure.  The existing pods are deleted so that their replacements meet the
new rule, as they would after a real rollout; healing removes the Stage and rolls the pods again.
Nothing writes pod status from a test.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from choreo_dp.kube import KubeClient
from choreo_dp.kube import resources as R
from choreo_sandbox.cluster.control_plane import STAGES, apply

FAILURE_MODES = ("CrashLoopBackOff", "ImagePullBackOff")
STAGE_LABEL = "choreo.dev/sandbox-fault"

_CONDITIONS = """
      conditions:
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: Initialized
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: PodScheduled
      - lastTransitionTime: {{ $now | Quote }}
        status: "False"
        reason: ContainersNotReady
        type: Ready
      - lastTransitionTime: {{ $now | Quote }}
        status: "False"
        reason: ContainersNotReady
        type: ContainersReady
"""

_ADDRESSES = """
      {{ $hostIPs := NodeIPsWith .spec.nodeName }}
      {{ with $hostIPs }}
      hostIP: {{ index . 0 | Quote }}
      hostIPs:
      {{ range . }}
      - ip: {{ . | Quote }}
      {{ end }}
      {{ end }}
"""

_TEMPLATES = {
    "CrashLoopBackOff": "{{ $now := Now }}\n"
    + _CONDITIONS
    + """
      containerStatuses:
      {{ range .spec.containers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: false
        started: false
        restartCount: 3
        lastState:
          terminated:
            exitCode: 1
            reason: Error
            startedAt: {{ $now | Quote }}
            finishedAt: {{ $now | Quote }}
        state:
          waiting:
            reason: CrashLoopBackOff
            message: {{ printf "back-off 40s restarting failed container=%s" .name | Quote }}
      {{ end }}
"""
    + _ADDRESSES
    + """
      phase: Running
      startTime: {{ $now | Quote }}
""",
    "ImagePullBackOff": "{{ $now := Now }}\n"
    + _CONDITIONS
    + """
      containerStatuses:
      {{ range .spec.containers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: false
        started: false
        restartCount: 0
        state:
          waiting:
            reason: ImagePullBackOff
            message: {{ printf "Back-off pulling image %q" .image | Quote }}
      {{ end }}
"""
    + _ADDRESSES
    + """
      phase: Pending
      startTime: {{ $now | Quote }}
""",
}


def stage_name(namespace: str, deployment: str, mode: str) -> str:
    digest = hashlib.sha256(f"{namespace}/{deployment}".encode()).hexdigest()[:10]
    short = {"CrashLoopBackOff": "crashloop", "ImagePullBackOff": "imagepull"}[mode]
    return f"choreo-fault-{short}-{deployment[:24]}-{digest}"


def failure_stage(namespace: str, selector: dict[str, str], mode: str, owner: str) -> dict[str, Any]:
    """The Stage that gives matching new pods the status of ``mode``."""
    if mode not in FAILURE_MODES:
        raise ValueError(f"failure mode must be one of {FAILURE_MODES}")
    expressions: list[dict[str, Any]] = [
        {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
        {"key": ".metadata.namespace", "operator": "In", "values": [namespace]},
        # Not yet judged: the rule fires once per pod, never on its own output.
        {
            "key": '.status.conditions.[] | select( .type == "Ready" ) | .status',
            "operator": "NotIn",
            "values": ["True", "False"],
        },
    ]
    expressions += [
        {"key": f'.metadata.labels["{k}"]', "operator": "In", "values": [v]}
        for k, v in sorted(selector.items())
    ]
    return {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Stage",
        "metadata": {"name": stage_name(namespace, owner, mode), "labels": {STAGE_LABEL: mode}},
        "spec": {
            "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
            "selector": {"matchExpressions": expressions},
            "weight": 10000,
            "next": {"statusTemplate": _TEMPLATES[mode]},
        },
    }


def pod_verdict(pod: dict[str, Any]) -> str | None:
    """What kwok made of a pod: a failure mode, ``healthy``, or None while it is still unjudged."""
    if pod["metadata"].get("deletionTimestamp"):
        return None
    status = pod.get("status") or {}
    for cs in status.get("containerStatuses") or []:
        reason = ((cs.get("state") or {}).get("waiting") or {}).get("reason")
        if reason in FAILURE_MODES:
            return str(reason)
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
    )
    return HEALTHY if ready else None


HEALTHY = "healthy"


async def set_pod_failure(
    kube: KubeClient, namespace: str, deployment: str, mode: str | None, timeout: float = 60.0
) -> None:
    """Put the Deployment's pods into a failure mode (or back to healthy with None).

    Returns once every current pod of the Deployment shows the mode.  kwok learns of a new
    Stage through its own watch, so a replacement pod can still meet the old rules; such a pod
    is rolled again until the deadline, which makes the outcome certain rather than likely.
    """
    if mode is not None and mode not in FAILURE_MODES:
        raise ValueError(f"failure mode must be one of {FAILURE_MODES} or None")
    dep = await kube.get(R.DEPLOYMENTS, deployment, namespace)
    if dep is None:
        raise LookupError(f"deployment {namespace}/{deployment} not found")
    selector: dict[str, str] = dep["spec"]["selector"].get("matchLabels") or {}
    for other in FAILURE_MODES:
        if other != mode:
            await kube.delete(STAGES, stage_name(namespace, deployment, other))
    if mode is not None:
        await apply(kube, STAGES, failure_stage(namespace, selector, mode, deployment))
    want = mode or HEALTHY
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        dep = await kube.get(R.DEPLOYMENTS, deployment, namespace) or dep
        replicas = int(dep["spec"].get("replicas", 1))
        pods, _ = await kube.list(R.PODS, namespace, label_selector=selector)
        verdicts = [(p, pod_verdict(p)) for p in pods if not p["metadata"].get("deletionTimestamp")]
        wrong = [p for p, v in verdicts if v is not None and v != want]
        if not wrong and sum(1 for _, v in verdicts if v == want) >= replicas:
            return
        for pod in wrong:
            await kube.delete(R.PODS, pod["metadata"]["name"], namespace)
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"pods of {namespace}/{deployment} did not turn {want} in {timeout:.0f}s")
        await asyncio.sleep(0.2)
