"""Which failed writes the agent refuses for good (a nack) and which it waits out.

Found by the fault soak: an Environment deleted by hand takes its namespace with it; while that
namespace terminates, the API server answers every create in it with 403. The agent put back the
Environment at once, so the namespace comes back: a 403 of that kind is a wait, not a refusal.
"""

from __future__ import annotations

import pytest

from choreo_dp.agent.cluster import ApplyRefused, NotYetApplicable, _refusal
from choreo_dp.kube import ApiError

# The Status kube-apiserver 1.36 sends (NamespaceLifecycle admission), as the client parses it.
TERMINATING = {
    "kind": "Status",
    "status": "Failure",
    "message": 'choreoapps.choreo.dev "app-01" is forbidden: unable to create new content in namespace '
    "choreo-stage because it is being terminated",
    "reason": "Forbidden",
    "details": {
        "name": "app-01",
        "group": "choreo.dev",
        "kind": "choreoapps",
        "causes": [
            {
                "reason": "NamespaceTerminating",
                "message": "namespace choreo-stage is being terminated",
                "field": "metadata.namespace",
            }
        ],
    },
    "code": 403,
}


def api_error(status: int, body: dict[str, object] | None = None, message: str = "") -> ApiError:
    body = body or {}
    return ApiError(status, str(body.get("reason", "")), str(body.get("message", message)), body=body)


def test_a_terminating_namespace_is_waited_out() -> None:
    exc = _refusal(api_error(403, TERMINATING))
    assert isinstance(exc, NotYetApplicable) and exc.code == "namespace_terminating"


def test_the_message_alone_is_enough_when_the_causes_are_missing() -> None:
    body = {k: v for k, v in TERMINATING.items() if k != "details"}
    assert isinstance(_refusal(api_error(403, body)), NotYetApplicable)


@pytest.mark.parametrize(
    ("status", "message"),
    [(403, "choreoapps is forbidden: User cannot create"), (422, "spec.replicas: Invalid"), (400, "bad")],
)
def test_other_refusals_are_final(status: int, message: str) -> None:
    assert isinstance(_refusal(api_error(status, message=message)), ApplyRefused)


@pytest.mark.parametrize("status", [404, 409, 429, 500, 503])
def test_what_may_pass_is_retried_as_itself(status: int) -> None:
    exc = api_error(status)
    assert _refusal(exc) is exc
