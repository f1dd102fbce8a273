"""Kubernetes-style failures: every error leaves the server as a ``Status`` object."""

from __future__ import annotations

from typing import Any

JSON = dict[str, Any]

REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


class ApiFailure(Exception):
    """Raised anywhere in request handling; turned into a Status response by the app."""

    def __init__(
        self,
        code: int,
        message: str,
        reason: str | None = None,
        *,
        name: str | None = None,
        group: str | None = None,
        kind: str | None = None,
        causes: list[JSON] | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or REASONS.get(code, "Unknown")
        self.name = name
        self.group = group
        self.kind = kind
        self.causes = causes
        self.retry_after = retry_after

    def status(self) -> JSON:
        return status_body(
            self.code,
            self.message,
            self.reason,
            name=self.name,
            group=self.group,
            kind=self.kind,
            causes=self.causes,
            retry_after=self.retry_after,
        )


def status_body(
    code: int,
    message: str,
    reason: str,
    *,
    name: str | None = None,
    group: str | None = None,
    kind: str | None = None,
    causes: list[JSON] | None = None,
    retry_after: int | None = None,
) -> JSON:
    details: JSON = {}
    # StatusDetails fields are omitempty: an empty group (the core group) is not sent.
    if name:
        details["name"] = name
    if group:
        details["group"] = group
    if kind:
        details["kind"] = kind
    if causes:
        details["causes"] = causes
    if retry_after is not None:
        details["retryAfterSeconds"] = retry_after
    body: JSON = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return body


def success_status(name: str, group: str, kind: str, uid: str) -> JSON:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {k: v for k, v in (("name", name), ("group", group), ("kind", kind), ("uid", uid)) if v},
    }


def not_found(resource: str, group: str, name: str) -> ApiFailure:
    qualified = f"{resource}.{group}" if group else resource
    return ApiFailure(404, f'{qualified} "{name}" not found', name=name, group=group, kind=resource)


def already_exists(resource: str, group: str, name: str) -> ApiFailure:
    qualified = f"{resource}.{group}" if group else resource
    return ApiFailure(
        409, f'{qualified} "{name}" already exists', "AlreadyExists", name=name, group=group, kind=resource
    )


def conflict(resource: str, group: str, name: str, why: str) -> ApiFailure:
    qualified = f"{resource}.{group}" if group else resource
    return ApiFailure(
        409,
        f'Operation cannot be fulfilled on {qualified} "{name}": {why}',
        name=name,
        group=group,
        kind=resource,
    )


STALE = "the object has been modified; please apply your changes to the latest version and try again"


def check_resource_version(resource: str, group: str, name: str, wanted: object, current: str) -> None:
    """Optimistic concurrency: a write that names a resourceVersion must name the current one."""
    if wanted and str(wanted) != current:
        raise conflict(resource, group, name, STALE)


def invalid(kind: str, group: str, name: str, causes: list[JSON]) -> ApiFailure:
    """422 with one cause per field, worded like the real API server."""
    qualified = f"{kind}.{group}" if group else kind
    # utilerrors.NewAggregate: distinct messages joined by ", ", bracketed when more than one.
    texts: list[str] = []
    for c in causes:
        t = c["message"] if not c.get("field") else f"{c['field']}: {c['message']}"
        if t not in texts:
            texts.append(t)
    text = ", ".join(texts)
    if len(texts) > 1:
        text = f"[{text}]"
    return ApiFailure(
        422, f'{qualified} "{name}" is invalid: {text}', name=name, group=group, kind=kind, causes=causes
    )


def cause(field: str, message: str, reason: str = "FieldValueInvalid") -> JSON:
    return {"reason": reason, "message": message, "field": field}
