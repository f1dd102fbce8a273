"""Why a secret could not be read, as a condition reason, with messages that never carry a value.

Messages are built here from what we asked for (vault, secret name, version), never copied from the
SDK's exception text: that text is outside our control and must not reach logs, Events or status.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

Reason = Literal["KeyVaultUnavailable", "Forbidden", "SecretNotFound", "NoKeyVault"]

# When an app has several failing secrets, the condition shows the one an operator should fix first.
REASON_PRIORITY: dict[str, int] = {
    "NoKeyVault": 0,
    "Forbidden": 1,
    "SecretNotFound": 2,
    "KeyVaultUnavailable": 3,
}


class SecretFetchError(Exception):
    """A Key Vault read failed. ``str()`` is safe to show anywhere."""

    def __init__(self, reason: Reason, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.reason: Reason = reason
        self.message = message
        self.retry_after = retry_after


def _retry_after(exc: HttpResponseError) -> float | None:
    response = exc.response
    if response is None:
        return None
    headers = getattr(response, "headers", None) or {}
    raw = headers.get("Retry-After")
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except ValueError:
        return None


def classify(exc: BaseException, what: str) -> SecretFetchError:
    """Map an exception from the SDK (or our own deadline) to a reason; ``what`` names the secret."""
    if isinstance(exc, SecretFetchError):
        return exc
    if isinstance(exc, ResourceNotFoundError):
        return SecretFetchError("SecretNotFound", f"{what} was not found in Key Vault")
    if isinstance(exc, ClientAuthenticationError):
        # A token could not be obtained (bad federation, wrong tenant) or the vault rejected the token.
        status = exc.status_code
        if status == 403:
            return SecretFetchError("Forbidden", f"the identity may not read {what} (403 Forbidden)")
        return SecretFetchError(
            "Forbidden", f"could not authenticate to Key Vault to read {what} ({type(exc).__name__})"
        )
    if isinstance(exc, HttpResponseError):
        status = exc.status_code or 0
        if status == 403:
            return SecretFetchError("Forbidden", f"the identity may not read {what} (403 Forbidden)")
        if status == 404:
            return SecretFetchError("SecretNotFound", f"{what} was not found in Key Vault")
        if status == 429:
            after = _retry_after(exc)
            hint = f"; retry after {after:.0f}s" if after is not None else ""
            return SecretFetchError(
                "KeyVaultUnavailable",
                f"Key Vault throttled the read of {what} (429){hint}",
                retry_after=after,
            )
        return SecretFetchError("KeyVaultUnavailable", f"Key Vault answered {status} reading {what}")
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return SecretFetchError(
            "KeyVaultUnavailable", f"Key Vault unreachable reading {what} ({type(exc).__name__})"
        )
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return SecretFetchError("KeyVaultUnavailable", f"Key Vault did not answer in time reading {what}")
    if isinstance(exc, AzureError):
        return SecretFetchError(
            "KeyVaultUnavailable", f"Key Vault error reading {what} ({type(exc).__name__})"
        )
    return SecretFetchError("KeyVaultUnavailable", f"unexpected error reading {what} ({type(exc).__name__})")
