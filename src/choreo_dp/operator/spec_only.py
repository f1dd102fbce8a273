"""Validate what the operator is asked to do (the spec), never what some writer reported (the status).

The api models forbid unknown fields, status included. A status written by another version of the
operator (an upgrade, a rollback, CRDs newer than the operator, which the chart allows) would then
fail validation of the whole object and turn every app ``Failed/InvalidSpec``. The status is the
operator's output, not its input: it is dropped before validation, and the few fields read from it
(previous conditions, the phase) are read tolerantly where they are used.
"""

from __future__ import annotations

from typing import Any


def without_status(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` without its status (a shallow copy; the cache's own body is never modified)."""
    return {k: v for k, v in body.items() if k != "status"}
