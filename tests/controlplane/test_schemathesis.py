"""Schemathesis against the REST API's own OpenAPI document, over loopback to a live server.

Every operation gets valid and invalid requests generated from the document; the checks are that
nothing answers 5xx, every status code and content type answered is declared for the operation,
responses match their schemas, invalid input is rejected, and authentication is never ignored.
Bounded and reproducible: a fixed number of examples per operation and derandomized generation
(Hypothesis derives the examples from the test, not from a random seed or a saved database).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    missing_required_header,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from choreo_cp.api import create_app
from choreo_cp.context import ControlPlane
from choreo_cp.server import ControlPlaneServer
from choreo_cp.store import Store
from choreo_wire import protocol as p
from tests.controlplane.conftest import make_server
from tests.controlplane.helpers import ADMIN_TOKEN, app_spec

EXAMPLES_PER_OPERATION = 30
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# Not positive_data_acceptance: some rules cannot be said in JSON Schema (a schedule only for
# scheduledTask, from != to, quantities in Kubernetes' grammar), so schema-valid bodies can rightly
# get a 422.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    missing_required_header,
    unsupported_method,
    ignored_auth,
]

# The document does not depend on any state: build it from an app that is never served.
_DOCUMENT = create_app(ControlPlane(store=Store(":memory:"), admin_token=ADMIN_TOKEN)).openapi()
schema = schemathesis.openapi.from_dict(_DOCUMENT)
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    max_examples=EXAMPLES_PER_OPERATION,
    deterministic=True,
    database="none",
)
# A generated body past the 1 MiB request limit (64 files of up to 512 KiB each fit the schema) is
# refused with 413 before it is parsed: a rejection like 422, and documented for the operation.
_rejection = schema.config.checks.negative_data_rejection
_rejection.expected_statuses = [*(_rejection.expected_statuses or []), "413"]


class LiveServer:
    """The control plane on 127.0.0.1 in a thread of its own (the tests themselves are synchronous)."""

    def __init__(self, db: Path) -> None:
        self.server: ControlPlaneServer = make_server(db)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="cp-under-test", daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(30)
        return self

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def seed(self) -> None:
        """Some state for generated requests to find (most names they make up are unknown)."""
        with requests.Session() as http:
            http.headers.update(AUTH)

            def put(path: str, body: object | None = None) -> None:
                r = http.put(self.server.url + path, json=body, timeout=10)
                assert r.status_code in (200, 201, 202), r.text

            put("/api/v1/dataplanes/dp1")
            put("/api/v1/dataplanes/dp2")
            put("/api/v1/dataplanes/dp1/environments/dev", {"spec": {"registry": {"allowedPrefixes": ["*"]}}})
            put(
                "/api/v1/dataplanes/dp2/environments/prod", {"spec": {"registry": {"allowedPrefixes": ["*"]}}}
            )
            put("/api/v1/dataplanes/dp1/environments/dev/apps/a", {"spec": app_spec()})
        digest = "ghcr.io/acme/shop@sha256:" + "ab" * 32
        self.server.store.queue_status("dp1", p.app_key("dev", "a"), {"phase": "Ready", "image": digest})


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with LiveServer(tmp_path_factory.mktemp("schemathesis") / "cp.db") as server:
        server.seed()
        yield server


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_rest_api_conforms_to_its_openapi_document(case: schemathesis.Case, live: LiveServer) -> None:
    case.call_and_validate(base_url=live.server.url, headers=AUTH, checks=CHECKS, timeout=10)
