"""The few facts the status computation needs from Deployments, CronJobs and Pods.

Watch events deliver whole objects; keeping only these summaries keeps the operator's memory
proportional to the number of apps, not to the size of the objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from choreo_dp.api.vocabulary import TEMPLATE_HASH_ANNOTATION, TRACK_LABEL

# Container waiting reasons that mean "this will not fix itself".
BAD_WAITING_REASONS = frozenset(
    {
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)


@dataclass(slots=True)
class DeploymentSummary:
    uid: str
    generation: int
    observed_generation: int
    spec_replicas: int
    replicas: int
    updated_replicas: int
    ready_replicas: int
    available_replicas: int
    image: str | None
    progress_deadline_exceeded: bool
    progressing_message: str | None
    # The ReplicaSet cannot create pods (a ResourceQuota refuses them, a missing ServiceAccount,
    # an admission webhook...): the Deployment's ReplicaFailure condition, copied from its
    # ReplicaSet's and cleared once creation succeeds again.
    replica_failure: str | None = None
    # Canary-layout Deployments only (they carry the track label): the template hash annotation and
    # the pod template itself, which a rollout in progress must keep applying to the stable side
    # (the spec no longer holds it). Other apps do not pay for a copy of their template.
    template_hash: str | None = None
    template: dict[str, Any] | None = None

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> DeploymentSummary:
        meta, spec, status = body.get("metadata", {}), body.get("spec", {}), body.get("status") or {}
        tracked = TRACK_LABEL in (meta.get("labels") or {})
        containers = (spec.get("template", {}).get("spec", {}) or {}).get("containers") or [{}]
        stalled, message, failure = False, None, None
        for cond in status.get("conditions") or []:
            if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
                stalled, message = True, cond.get("message")
            elif cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
                failure = str(cond.get("message") or cond.get("reason") or "pods cannot be created")
        return cls(
            uid=str(meta.get("uid", "")),
            generation=int(meta.get("generation") or 0),
            observed_generation=int(status.get("observedGeneration") or 0),
            spec_replicas=int(spec.get("replicas", 1)),
            replicas=int(status.get("replicas") or 0),
            updated_replicas=int(status.get("updatedReplicas") or 0),
            ready_replicas=int(status.get("readyReplicas") or 0),
            available_replicas=int(status.get("availableReplicas") or 0),
            image=containers[0].get("image"),
            progress_deadline_exceeded=stalled,
            progressing_message=message,
            replica_failure=failure,
            template_hash=(meta.get("annotations") or {}).get(TEMPLATE_HASH_ANNOTATION) if tracked else None,
            template=spec.get("template") if tracked else None,
        )


@dataclass(slots=True)
class CronJobSummary:
    uid: str
    suspend: bool
    active: int
    last_schedule_time: str | None
    last_successful_time: str | None

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> CronJobSummary:
        spec, status = body.get("spec", {}), body.get("status") or {}
        return cls(
            uid=str(body.get("metadata", {}).get("uid", "")),
            suspend=bool(spec.get("suspend", False)),
            active=len(status.get("active") or []),
            last_schedule_time=status.get("lastScheduleTime"),
            last_successful_time=status.get("lastSuccessfulTime"),
        )


@dataclass(slots=True)
class PodSummary:
    name: str
    image: str | None
    image_id: str | None
    ready: bool
    problem: str | None
    terminating: bool
    # The rollout track (stable, canary) of a canary-layout app's pod, None for any other pod.
    track: str | None = None
    # Container restarts summed over the pod's containers (a canary's health gate counts new ones).
    restarts: int = 0

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> PodSummary:
        meta, spec, status = body.get("metadata", {}), body.get("spec", {}), body.get("status") or {}
        containers = spec.get("containers") or [{}]
        problem = None
        image_id = None
        ready = False
        restarts = sum(int(cs.get("restartCount") or 0) for cs in status.get("containerStatuses") or [])
        for cs in status.get("containerStatuses") or []:
            if cs.get("name") != containers[0].get("name"):
                continue
            ready = bool(cs.get("ready"))
            image_id = cs.get("imageID") or None
            waiting = (cs.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason")
            last = (cs.get("lastState") or {}).get("terminated") or {}
            if reason in BAD_WAITING_REASONS:
                detail = waiting.get("message") or ""
                restarts = cs.get("restartCount") or 0
                problem = f"pod {meta.get('name')}: {reason}"
                if reason == "CrashLoopBackOff":
                    exit_code = last.get("exitCode")
                    problem += f" (restarts: {restarts}" + (
                        f", last exit code {exit_code})" if exit_code is not None else ")"
                    )
                elif detail:
                    problem += f": {detail[:300]}"
        return cls(
            name=str(meta.get("name", "")),
            image=containers[0].get("image"),
            image_id=image_id,
            ready=ready,
            problem=problem,
            terminating=bool(meta.get("deletionTimestamp")),
            track=(meta.get("labels") or {}).get(TRACK_LABEL),
            restarts=restarts,
        )


def running_image(image: str, image_id: str | None) -> str:
    """The digest reference of what runs: ``repo@sha256:...`` when the kubelet reports one."""
    if not image_id:
        return image
    for prefix in ("docker-pullable://", "docker://", "containerd://"):
        image_id = image_id.removeprefix(prefix)
    if "@sha256:" in image_id:
        return image_id
    if image_id.startswith("sha256:"):
        repo = image.split("@", 1)[0]
        # Strip a tag, but not a registry port ("host:5000/x:tag").
        if ":" in repo.rsplit("/", 1)[-1]:
            repo = repo.rsplit(":", 1)[0]
        return f"{repo}@{image_id}"
    return image
