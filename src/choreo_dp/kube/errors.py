"""Errors from the Kubernetes API, carrying the Status body's reason and message."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        reason: str = "",
        message: str = "",
        retry_after: float | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{status} {reason}: {message}".strip())
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after
        self.body = body or {}

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def gone(self) -> bool:
        return self.status == 410

    @property
    def retryable(self) -> bool:
        return self.status == 429 or self.status >= 500

    @property
    def namespace_terminating(self) -> bool:
        """403 from a namespace being deleted: it refuses new content for seconds and may be created
        afresh once gone, so this is a wait, not a refusal."""
        causes = ((self.body.get("details") or {}).get("causes")) or []
        if any(isinstance(c, dict) and c.get("reason") == "NamespaceTerminating" for c in causes):
            return True
        return self.status == 403 and "being terminated" in self.message


class ConfigError(Exception):
    """The kubeconfig (or in-cluster environment) cannot be used."""


class WatchEventTooLarge(ApiError):
    """A watch event longer than the client reads; resuming would meet it again, so relist."""

    def __init__(self, limit: int) -> None:
        super().__init__(500, "WatchEventTooLarge", f"a watch event is longer than {limit} bytes")
        self.limit = limit


class CredentialError(ApiError):
    """No credential to send: the kubeconfig's exec plugin failed (a 401 we give ourselves)."""

    def __init__(self, message: str) -> None:
        super().__init__(401, "CredentialError", message)
