"""A small synchronous client of the control plane's REST API (used by ``choreo-dp cp``)."""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

DEFAULT_TIMEOUT = 15.0


class CPError(Exception):
    """A non-2xx answer (``status``) or a transport failure (``status`` 0)."""

    def __init__(self, status: int, detail: Any) -> None:
        self.status = status
        self.detail = detail
        super().__init__(f"{status}: {format_detail(detail)}" if status else str(detail))


def format_detail(detail: Any) -> str:
    """pydantic's error list as ``loc: msg; ...``, anything else as text."""
    if isinstance(detail, dict) and "detail" in detail:
        detail = detail["detail"]
    if isinstance(detail, list):
        parts = []
        for err in detail[:5]:
            if isinstance(err, dict):
                loc = ".".join(str(x) for x in err.get("loc", []))
                parts.append(f"{loc}: {err.get('msg', '')}")
            else:
                parts.append(str(err))
        more = f" (+{len(detail) - 5} more)" if len(detail) > 5 else ""
        return "; ".join(parts) + more
    return str(detail)


def resolve_settings(url: str | None, token_file: str | None) -> tuple[str, str]:
    """URL and admin token from flags, else ``CHOREO_DP_CP_URL`` / ``CHOREO_DP_CP_TOKEN``.

    Raises ValueError with a one-line explanation when something is missing.
    """
    url = url or os.environ.get("CHOREO_DP_CP_URL")
    if not url:
        raise ValueError("no control plane URL: --url or env CHOREO_DP_CP_URL")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"--url {url!r}: expected http(s)://HOST:PORT")
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise ValueError(f"--token-file {token_file}: {exc.strerror or exc}") from None
    else:
        token = os.environ.get("CHOREO_DP_CP_TOKEN", "").strip()
    if not token:
        raise ValueError("no admin token: --token-file FILE or env CHOREO_DP_CP_TOKEN")
    return url.rstrip("/"), token


def _q(name: str) -> str:
    return quote(name, safe="")


class ControlPlaneClient:
    def __init__(
        self, url: str, token: str, *, ca_file: str | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        verify: ssl.SSLContext | bool = True
        if ca_file:
            verify = ssl.create_default_context(cafile=ca_file)
        self._http = httpx.Client(
            base_url=url,
            headers={"Authorization": f"Bearer {token}"},
            verify=verify,
            timeout=timeout,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ControlPlaneClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def request(self, method: str, path: str, body: Any = None, params: dict[str, str] | None = None) -> Any:
        try:
            resp = self._http.request(method, path, json=body, params=params)
        except httpx.HTTPError as exc:
            raise CPError(
                0, f"{method} {self._http.base_url}{path}: {exc.__class__.__name__}: {exc}"
            ) from None
        try:
            payload = resp.json()
        except ValueError:
            payload = resp.text
        if resp.status_code >= 400:
            raise CPError(resp.status_code, payload)
        return payload

    # dataplanes
    def register_dataplane(self, dp: str, *, rotate_token: bool = False) -> dict[str, Any]:
        params = {"rotateToken": "true"} if rotate_token else None
        result: dict[str, Any] = self.request("PUT", f"/api/v1/dataplanes/{_q(dp)}", params=params)
        return result

    def get_dataplane(self, dp: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"/api/v1/dataplanes/{_q(dp)}")
        return result

    # desired objects
    def _env_path(self, dp: str, env: str) -> str:
        return f"/api/v1/dataplanes/{_q(dp)}/environments/{_q(env)}"

    def put_environment(self, dp: str, env: str, spec: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.request("PUT", self._env_path(dp, env), {"spec": spec})
        return result

    def delete_environment(self, dp: str, env: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("DELETE", self._env_path(dp, env))
        return result

    def get_environment(self, dp: str, env: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", self._env_path(dp, env))
        return result

    def put_app(self, dp: str, env: str, app: str, spec: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.request(
            "PUT", f"{self._env_path(dp, env)}/apps/{_q(app)}", {"spec": spec}
        )
        return result

    def delete_app(self, dp: str, env: str, app: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("DELETE", f"{self._env_path(dp, env)}/apps/{_q(app)}")
        return result

    def get_app(self, dp: str, env: str, app: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"{self._env_path(dp, env)}/apps/{_q(app)}")
        return result

    def app_history(self, dp: str, env: str, app: str) -> dict[str, Any]:
        """Every accepted spec of the app kept by the control plane, newest first (``items``)."""
        result: dict[str, Any] = self.request("GET", f"{self._env_path(dp, env)}/apps/{_q(app)}/history")
        return result

    def rollback_app(
        self, dp: str, env: str, app: str, *, revision: int | None = None, steps: int | None = None
    ) -> dict[str, Any]:
        """Push an earlier spec again as a new revision (``revision``, else ``steps`` back, default 1)."""
        body: dict[str, Any] = {"revision": revision} if revision is not None else {"steps": steps or 1}
        result: dict[str, Any] = self.request(
            "POST", f"{self._env_path(dp, env)}/apps/{_q(app)}/rollback", body
        )
        return result

    def promote(
        self,
        app: str,
        source: tuple[str, str],
        target: tuple[str, str],
        *,
        project: str | None = None,
        overrides: dict[str, Any] | None = None,
        rollout: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "app": app,
            "from": {"dataplane": source[0], "environment": source[1]},
            "to": {"dataplane": target[0], "environment": target[1]},
        }
        if project:
            body["project"] = project
        if overrides:
            body["overrides"] = overrides
        if rollout is not None:
            body["rollout"] = rollout
        result: dict[str, Any] = self.request("POST", "/api/v1/promotions", body)
        return result
