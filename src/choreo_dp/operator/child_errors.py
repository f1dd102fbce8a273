"""A refused write of a child, and whether retrying can help.

The API refuses a child for reasons the operator cannot fix by trying again (an admission webhook,
a quota on the number of objects, a 422 on a rendered manifest, RBAC); those are recorded on the
owner's status and not retried until something changes. Others pass (429, 5xx, a dropped
connection, a namespace still being deleted) and are retried with backoff.
"""

from __future__ import annotations

from choreo_dp.kube import ApiError
from choreo_dp.kube.backoff import is_retryable
from choreo_dp.operator.keys import ChildKey


class ChildWriteError(ApiError):
    """The API refused to apply or delete one child; carries the API's status and message."""

    def __init__(self, verb: str, child: ChildKey, cause: ApiError) -> None:
        super().__init__(cause.status, cause.reason, cause.message, cause.retry_after, cause.body)
        self.verb = verb
        self.child = child
        self.cause = cause

    @property
    def summary(self) -> str:
        """One line for a status message and an Event: what was refused and the API's own words."""
        where = f"{self.child.namespace}/{self.child.name}" if self.child.namespace else self.child.name
        return (
            f"{self.verb} of {self.child.kind} {where} refused: {self.status} {self.reason}: {self.message}"[
                :1024
            ]
        )

    @property
    def terminal(self) -> bool:
        """True when only a change (of the spec, or of what refused it) can make the write pass."""
        if is_retryable(self.cause) or self.status in (404, 409):
            # 404: the namespace went meanwhile; 409: a write raced ours. Both pass on a retry.
            return False
        return not self.cause.namespace_terminating
