"""One line for every way a request to the control plane can fail, saying what to do about it."""

from __future__ import annotations

import ssl
from typing import Any

import httpx

from choreo_cp.client import CPError


def _transport(exc: CPError, url: str) -> str:
    # CPError is raised "from None", which hides but keeps the httpx exception as its context
    cause = exc.__context__
    if isinstance(cause, httpx.ConnectError):
        inner = cause.__context__ or cause.__cause__
        text = str(cause)
        if isinstance(inner, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in text:
            return (
                f"cannot verify the TLS certificate of the control plane at {url}: "
                f"{getattr(inner, 'verify_message', None) or 'unknown issuer'} (--ca-file or env CHOREO_DP_CA_FILE)"
            )
        if isinstance(inner, ssl.SSLError) or "SSL" in text:
            return f"TLS with the control plane at {url} failed: {text} (http:// vs https://?)"
        if "Name or service not known" in text or "nodename nor servname" in text:
            return f"cannot resolve the control plane's host in {url}"
        return f"cannot reach the control plane at {url}: {_errno_text(text)}"
    if isinstance(cause, httpx.TimeoutException):
        return f"the control plane at {url} did not answer in time"
    if isinstance(cause, httpx.HTTPError):
        return f"talking to the control plane at {url} failed: {type(cause).__name__}: {cause}"
    return str(exc)


def _errno_text(text: str) -> str:
    # "[Errno 111] Connection refused" -> "connection refused"
    return (text.split("] ", 1)[-1] or text).strip().lower() or "connection failed"


def validation_rules(detail: Any) -> str:
    """FastAPI's 422 list as ``spec.image: the rule; ...`` (without the ``body.`` prefix)."""
    if isinstance(detail, dict) and "detail" in detail:
        detail = detail["detail"]
    if not isinstance(detail, list):
        return str(detail)
    parts = []
    for err in detail[:5]:
        if not isinstance(err, dict):
            parts.append(str(err))
            continue
        loc = [str(x) for x in err.get("loc", [])]
        if loc and loc[0] == "body":
            loc = loc[1:]
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        parts.append(f"{'.'.join(loc)}: {msg}" if loc else msg)
    more = f" (and {len(detail) - 5} more)" if len(detail) > 5 else ""
    return "; ".join(parts) + more


def describe(exc: CPError, url: str) -> str:
    """The one line to print for a failed request."""
    if exc.status == 0:
        return _transport(exc, url)
    detail = exc.detail.get("detail") if isinstance(exc.detail, dict) else exc.detail
    if exc.status == 401:
        return f"401 unauthorized: {detail} (the admin token: --token-file or env CHOREO_DP_CP_TOKEN)"
    if exc.status == 422:
        return f"422 refused: {validation_rules(exc.detail)}"
    text = " ".join(str(detail).split())
    return f"{exc.status}: {text}"
