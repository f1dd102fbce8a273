"""The control plane refuses a bad spec.files at push time (422 naming the rule), through the data
plane's own model, and stores a good one as pushed."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from choreo_dp.api.files import MAX_TOTAL_CONTENT_BYTES
from tests.controlplane.helpers import app_spec, put_env, register

APP = "/api/v1/dataplanes/dp1/environments/dev/apps/web"


@pytest.mark.parametrize(
    ("files", "rule"),
    [
        ([{"mountPath": "/tmp/app.yaml", "content": "x"}], "must not be under /tmp"),
        ([{"mountPath": "/etc/app/app.yaml", "content": "x"}], "must not be under /etc"),
        ([{"mountPath": "/config/../x", "content": "x"}], "must be normalised"),
        ([{"mountPath": "/config/a", "content": "x", "keyVaultSecret": "s"}], "exactly one of content"),
        (
            [{"mountPath": "/config/a", "content": "x"}, {"mountPath": "/config/a", "keyVaultSecret": "s"}],
            "two files at the same mountPath",
        ),
        (
            [
                {"mountPath": "/config/a", "content": "x" * MAX_TOTAL_CONTENT_BYTES},
                {"mountPath": "/config/b", "content": "y"},
            ],
            f"total content is {MAX_TOTAL_CONTENT_BYTES + 1} bytes",
        ),
    ],
)
async def test_a_bad_file_is_refused_with_its_rule(
    http: httpx.AsyncClient, files: list[dict[str, Any]], rule: str
) -> None:
    await register(http)
    await put_env(http, "dp1", "dev")
    r = await http.put(APP, json={"spec": {**app_spec(), "files": files}})
    assert r.status_code == 422, r.text
    assert rule in r.text
    assert (await http.get(APP)).status_code == 404


async def test_good_files_are_stored_as_pushed(http: httpx.AsyncClient) -> None:
    await register(http)
    await put_env(http, "dp1", "dev")
    files = [
        {"mountPath": "/config/app.yaml", "content": "a: 1\n"},
        {"mountPath": "/secrets/tls.key", "keyVaultSecret": "tls-key"},
    ]
    r = await http.put(APP, json={"spec": {**app_spec(), "files": files}})
    assert r.status_code == 202, r.text
    assert (await http.get(APP)).json()["spec"]["files"] == files
