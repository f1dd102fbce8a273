"""The pure rules of the namespace boundary: the namespace's mark and which Secrets may be copied."""

from __future__ import annotations

from typing import Any

import pytest

from choreo_dp.render import RenderError, render_environment
from choreo_dp.render.environment import check_pull_secret, namespace_owner, render_namespace
from choreo_dp.render.labels import ENVIRONMENT_UID_KEY
from tests.render.cases import ENV_UID, environment

OPT_IN = {"choreo.dev/pull-secret": "true"}


def secret(kind: str | None, labels: dict[str, str] | None, data: dict[str, str]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {"name": "regcred", "namespace": "choreo-system", "labels": labels or {}}
    }
    if kind is not None:
        body["type"] = kind
    body["data"] = data
    return body


DOCKER = "kubernetes.io/dockerconfigjson"


def test_the_namespace_carries_the_environment_uid_as_label_and_annotation() -> None:
    ns = render_namespace(environment())
    assert ns["metadata"]["labels"][ENVIRONMENT_UID_KEY] == ENV_UID
    assert ns["metadata"]["annotations"] == {ENVIRONMENT_UID_KEY: ENV_UID}
    assert namespace_owner(ns) == ENV_UID
    assert render_environment(environment())[0] == ns


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (None, "PullSecretNotFound"),
        (secret("Opaque", OPT_IN, {"password": "aHVudGVyMg=="}), "PullSecretNotAllowed"),
        (secret(None, OPT_IN, {".dockerconfigjson": "e30="}), "PullSecretNotAllowed"),  # no type: Opaque
        (secret("kubernetes.io/service-account-token", OPT_IN, {"token": "dA=="}), "PullSecretNotAllowed"),
        (secret(DOCKER, None, {".dockerconfigjson": "e30="}), "PullSecretNotAllowed"),  # not opted in
        (
            secret(DOCKER, {"choreo.dev/pull-secret": "yes"}, {".dockerconfigjson": "e30="}),
            "PullSecretNotAllowed",
        ),
        (secret(DOCKER, OPT_IN, {}), "PullSecretNotAllowed"),
        (secret(DOCKER, OPT_IN, {".dockerconfigjson": "e30="}), None),
    ],
)
def test_which_secrets_may_be_copied(body: dict[str, Any] | None, reason: str | None) -> None:
    refusal = check_pull_secret(body, "regcred", "choreo-system")
    assert (refusal.reason if refusal else None) == reason
    if refusal is not None:
        assert "regcred" in refusal.message and "choreo-system" in refusal.message


def test_render_refuses_what_may_not_be_copied_and_copies_only_the_credentials() -> None:
    with pytest.raises(RenderError) as exc:
        render_environment(environment(), pull_secret=secret("Opaque", OPT_IN, {"password": "eA=="}))
    assert exc.value.reason == "PullSecretNotAllowed"
    extra = secret(DOCKER, OPT_IN, {".dockerconfigjson": "e30=", "other": "eA=="})
    copies = [m for m in render_environment(environment(), pull_secret=extra) if m["kind"] == "Secret"]
    assert len(copies) == 1
    assert copies[0]["type"] == DOCKER and copies[0]["data"] == {".dockerconfigjson": "e30="}
