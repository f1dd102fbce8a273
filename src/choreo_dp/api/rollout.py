"""How a ChoreoApp's new versions reach its users: ``spec.rollout`` and ``status.rollout``.

``strategy: RollingUpdate`` (the default) is the Deployment's own rolling update. ``strategy:
Canary`` runs the new pod template as a second, ``canary`` Deployment beside the ``stable`` one,
shifts the share of traffic given by each step, checks the canary's health between steps and
either promotes it (the stable Deployment takes the new template) or aborts by itself (all
traffic back to stable, canary scaled to zero).

Manual steps are desired state, not commands, so the control plane can set them through the
tunnel and resending them changes nothing: ``promote: N`` releases the manual pauses of steps
1..N of the rollout in progress, ``abort: true`` keeps every rollout aborted while it is set. Both
are outside the pod template, so setting them never starts a rollout; whoever pushes a new
template is expected to clear them (a plain ``cp apply`` does, since it replaces the spec).
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Literal, Self

from pydantic import Field, field_validator, model_validator

from choreo_dp.api.common import Model

RolloutStrategy = Literal["RollingUpdate", "Canary"]
RolloutPhase = Literal["Idle", "Progressing", "Paused", "Promoting", "Aborted", "Completed"]
MANUAL = "manual"
# Phases during which a canary Deployment runs next to the stable one.
ACTIVE_PHASES: frozenset[str] = frozenset({"Progressing", "Paused", "Promoting"})

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_RE = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|s|m|h))+$")
_PART_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
# Go durations as the Kubernetes ecosystem writes them (no ns/us: nothing here is that fast).
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
PAUSE_PATTERN = r"^(manual|([0-9]+(\.[0-9]+)?(ms|s|m|h))+)$"
MIN_PAUSE = timedelta(seconds=1)
MAX_PAUSE = timedelta(days=7)
MIN_INTERVAL = timedelta(seconds=1)
MAX_INTERVAL = timedelta(hours=1)
MAX_STEPS = 20


def parse_duration(text: str) -> timedelta:
    """A Go duration string (``30s``, ``5m``, ``1h30m``, ``1.5s``, ``250ms``) as a timedelta."""
    if not _DURATION_RE.match(text):
        raise ValueError(f"{text!r} is not a duration like 30s, 5m or 1h30m")
    seconds = sum(float(num) * _UNITS[unit] for num, unit in _PART_RE.findall(text))
    return timedelta(seconds=seconds)


def _bounded(text: str, low: timedelta, high: timedelta, what: str) -> str:
    value = parse_duration(text)
    if not low <= value <= high:
        raise ValueError(f"{what} {text} must be between {_fmt(low)} and {_fmt(high)}")
    return text


def _fmt(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    return f"{seconds // 3600}h" if seconds >= 3600 and seconds % 3600 == 0 else f"{seconds}s"


class RolloutStep(Model):
    """One step of a canary: send this share of traffic to the new version, then wait."""

    weight: int = Field(
        ge=1, le=100, description="Percent of traffic (1-100) the canary gets during this step, e.g. 25."
    )
    pause: str = Field(
        default="30s",
        max_length=32,
        pattern=PAUSE_PATTERN,
        description=(
            "How long the step lasts with a healthy canary before the next one: a duration between 1s and "
            "168h (30s, 5m, 1h30m), or manual to wait until spec.rollout.promote reaches this step's number. "
            "Default 30s."
        ),
    )

    @field_validator("pause")
    @classmethod
    def _pause(cls, value: str) -> str:
        return value if value == MANUAL else _bounded(value, MIN_PAUSE, MAX_PAUSE, "pause")

    @property
    def manual(self) -> bool:
        return self.pause == MANUAL

    @property
    def duration(self) -> timedelta:
        """The pause as a duration (zero for a manual pause, which only a promote ends)."""
        return timedelta(0) if self.manual else parse_duration(self.pause)


class RolloutHttpCheck(Model):
    """An HTTP GET against the canary's Service that must answer 2xx."""

    path: str = Field(
        default="/",
        max_length=1024,
        pattern=r"^/[^\s]*$",
        description="Path to request, e.g. /healthz. Default /.",
    )
    port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Service port to request it on, e.g. 8080. Absent: the port of the app's first endpoint.",
    )


class RolloutAnalysis(Model):
    """The health gate checked every interval while a canary runs."""

    http_get: RolloutHttpCheck | None = Field(
        default=None,
        description=(
            "Also require this HTTP GET against the canary's Service to answer 2xx. Absent: only pod "
            "readiness and container restarts are checked."
        ),
    )
    failure_threshold: int = Field(
        default=3,
        ge=1,
        le=100,
        description=(
            "Consecutive failed checks (a canary pod not ready, a container restart, a failed HTTP check) "
            "after which the rollout aborts by itself. Default 3."
        ),
    )
    interval: str = Field(
        default="10s",
        max_length=32,
        pattern=DURATION_PATTERN,
        description="Time between two checks, 1s to 1h, e.g. 10s. Default 10s.",
    )

    @field_validator("interval")
    @classmethod
    def _interval(cls, value: str) -> str:
        return _bounded(value, MIN_INTERVAL, MAX_INTERVAL, "interval")

    @property
    def interval_delta(self) -> timedelta:
        return parse_duration(self.interval)


class Rollout(Model):
    """How a new version of the app replaces the running one."""

    strategy: RolloutStrategy = Field(
        default="RollingUpdate",
        description=(
            "RollingUpdate: replace the pods a few at a time (the default). Canary: run the new version beside "
            "the old one and shift traffic to it step by step while it stays healthy (long-running types only)."
        ),
    )
    steps: list[RolloutStep] = Field(
        default_factory=list,
        max_length=MAX_STEPS,
        description=(
            "Canary steps in order, at least one, at most 20; weights never decrease and are below 100 except "
            "on the last step. After the last step the new version is promoted."
        ),
    )
    analysis: RolloutAnalysis | None = Field(
        default=None,
        description="The canary's health gate. Absent: pods ready and no restarts, checked every 10s, 3 failures abort.",
    )
    promote: int | None = Field(
        default=None,
        ge=1,
        le=MAX_STEPS,
        description=(
            "Release the manual pauses of steps 1 to this number (1-based) of the rollout in progress. Setting "
            "it again is harmless; clear it when pushing a new version."
        ),
    )
    abort: bool = Field(
        default=False,
        description=(
            "While true, a canary rollout aborts (all traffic to the running version, canary scaled to zero). "
            "Default false."
        ),
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.strategy == "RollingUpdate":
            if self.steps:
                raise ValueError("rollout.steps only apply to strategy Canary")
            return self
        if not self.steps:
            raise ValueError("rollout strategy Canary needs at least one step")
        weights = [s.weight for s in self.steps]
        for i in range(1, len(weights)):
            if weights[i] < weights[i - 1]:
                raise ValueError(
                    f"rollout.steps weights must not decrease (step {i + 1}: {weights[i]} < {weights[i - 1]})"
                )
        if any(w >= 100 for w in weights[:-1]):
            raise ValueError(
                "only the last rollout step may have weight 100 (promotion after it is implicit)"
            )
        return self

    @property
    def canary(self) -> bool:
        return self.strategy == "Canary"

    @property
    def gate(self) -> RolloutAnalysis:
        """The analysis in force (the documented defaults when absent)."""
        return self.analysis or RolloutAnalysis()


class RolloutStatus(Model):
    """Where a canary rollout stands. Written by the operator; it is the whole rollout state, so an
    operator restart resumes from here."""

    phase: RolloutPhase = Field(
        default="Idle",
        description=(
            "Idle (no rollout yet), Progressing (canary up, steps advancing), Paused (waiting for "
            "spec.rollout.promote), Promoting (stable taking the new version), Aborted (gate failed or "
            "spec.rollout.abort; all traffic on stable), Completed (new version promoted)."
        ),
    )
    step: int = Field(
        default=0, ge=0, description="Current step, 1-based (0 when no rollout is in progress)."
    )
    weight: int = Field(default=0, ge=0, le=100, description="Percent of traffic meant for the canary now.")
    stable_revision: str | None = Field(
        default=None, description="Pod template hash the stable Deployment runs (choreo.dev/template-hash)."
    )
    canary_revision: str | None = Field(
        default=None, description="Pod template hash the canary runs (or ran, once completed or aborted)."
    )
    started_at: str | None = Field(
        default=None,
        json_schema_extra={"format": "date-time"},
        description="When this rollout started (RFC 3339).",
    )
    step_started_at: str | None = Field(
        default=None,
        json_schema_extra={"format": "date-time"},
        description="When the current step started (RFC 3339).",
    )
    last_check_at: str | None = Field(
        default=None,
        json_schema_extra={"format": "date-time"},
        description="When the health gate was last checked during this step (RFC 3339).",
    )
    failures: int = Field(default=0, ge=0, description="Consecutive failed health checks.")
    restarts: int = Field(
        default=0, ge=0, description="Container restarts of the canary's pods already counted by a check."
    )
    promote_requested: bool | None = Field(
        default=None, description="True when spec.rollout.promote has released the current manual step."
    )
    message: str | None = Field(
        default=None, description="What the rollout waits for, or why it aborted (the failing check)."
    )
    summary: str | None = Field(
        default=None, description="One word and the weight for kubectl get, e.g. Canary 25% or Aborted."
    )
