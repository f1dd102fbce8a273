"""Errors the renderers and the policy checks report; both end in phase Failed."""

from __future__ import annotations

from dataclasses import dataclass


class RenderError(Exception):
    """The spec cannot be turned into manifests (the message is shown in status)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class PolicyViolation:
    """Why an app is refused before anything is created or changed."""

    reason: str
    message: str
