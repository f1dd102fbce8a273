"""spec.files rendering: where each file lands, what rolls the pods, and what an app without files keeps.

The full manifests are in the golden files app-service-with-files.yaml and
app-scheduled-task-with-files.yaml (cases.py); these tests state the rules those files follow.
"""

from __future__ import annotations

import posixpath
from typing import Any

import pytest

from choreo_dp.api.files import file_key
from choreo_dp.api.vocabulary import FILES_HASH_ANNOTATION, SECRETS_HASH_ANNOTATION
from choreo_dp.render import render_app
from choreo_dp.render.errors import RenderError
from choreo_dp.render.files import SECRET_FILE_MODE
from tests.render.cases import GATEWAY_API, app, environment

HASH = "sha256:feedface"


def render(files: list[dict[str, Any]], secrets_hash: str | None = HASH, **spec: Any) -> list[dict[str, Any]]:
    return render_app(
        app(files=files, **spec), environment(), GATEWAY_API, secrets_hash=secrets_hash
    ).manifests


def pod(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    workload = next(m for m in manifests if m["kind"] in ("Deployment", "CronJob"))
    if workload["kind"] == "CronJob":
        template: dict[str, Any] = workload["spec"]["jobTemplate"]["spec"]["template"]
        return template
    deployment_template: dict[str, Any] = workload["spec"]["template"]
    return deployment_template


def landed(manifests: list[dict[str, Any]]) -> dict[str, tuple[str, str, int | None]]:
    """Where each file appears in the container: path -> (source kind, key, item mode)."""
    template = pod(manifests)
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    out: dict[str, tuple[str, str, int | None]] = {}
    for mount in template["spec"]["containers"][0]["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "projected" not in volume:
            continue
        assert mount["readOnly"] is True
        assert "subPath" not in mount
        for source in volume["projected"]["sources"]:
            ((kind, body),) = source.items()
            for item in body["items"]:
                path = posixpath.join(mount["mountPath"], item["path"])
                assert path not in out, f"{path} mounted twice"
                out[path] = (kind, item["key"], item.get("mode"))
    return out


PLAIN = {"mountPath": "/config/app.yaml", "content": "a: 1\n"}
NESTED = {"mountPath": "/config/rules/x.json", "content": "{}"}
SECRET = {"mountPath": "/secrets/tls.key", "keyVaultSecret": "tls-key"}


def test_each_file_lands_at_its_path_from_the_right_source() -> None:
    manifests = render([PLAIN, NESTED, SECRET])
    assert landed(manifests) == {
        "/config/app.yaml": ("configMap", file_key("/config/app.yaml"), None),
        "/config/rules/x.json": ("configMap", file_key("/config/rules/x.json"), None),
        "/secrets/tls.key": ("secret", file_key("/secrets/tls.key"), SECRET_FILE_MODE),
    }
    (cm,) = [m for m in manifests if m["kind"] == "ConfigMap"]
    assert cm["metadata"]["name"] == "orders-files"
    assert cm["data"] == {file_key("/config/app.yaml"): "a: 1\n", file_key("/config/rules/x.json"): "{}"}
    assert cm["metadata"]["ownerReferences"][0]["kind"] == "ChoreoApp"
    # The secret files come from the Secret the Key Vault sync writes, never from the ConfigMap.
    secret_sources = [
        s["secret"]
        for v in pod(manifests)["spec"]["volumes"]
        for s in v.get("projected", {}).get("sources", [])
        if "secret" in s
    ]
    assert [s["name"] for s in secret_sources] == ["orders-secrets"]
    # A 0400 file owned by root is readable by a non-root container only through fsGroup.
    assert "fsGroup" in pod(manifests)["spec"]["securityContext"]


def test_a_content_change_rolls_the_pods_and_nothing_else_does() -> None:
    before = pod(render([PLAIN, SECRET]))["metadata"]["annotations"]
    changed = pod(render([{**PLAIN, "content": "a: 2\n"}, SECRET]))["metadata"]["annotations"]
    same = pod(render([SECRET, PLAIN], replicas=3))["metadata"]["annotations"]
    moved = pod(render([{**PLAIN, "mountPath": "/config/other.yaml"}, SECRET]))["metadata"]["annotations"]
    assert before[FILES_HASH_ANNOTATION] != changed[FILES_HASH_ANNOTATION]
    assert before[FILES_HASH_ANNOTATION] != moved[FILES_HASH_ANNOTATION]
    assert before == same
    # The secret file's value rolls through the Key Vault sync's hash, as env secrets do.
    assert before[SECRETS_HASH_ANNOTATION] == HASH
    rotated = pod(render([PLAIN, SECRET], secrets_hash="sha256:rotated"))["metadata"]["annotations"]
    assert rotated[SECRETS_HASH_ANNOTATION] == "sha256:rotated"


def test_secret_files_need_synced_values() -> None:
    with pytest.raises(RenderError) as info:
        render([SECRET], secrets_hash=None)
    assert info.value.reason == "SecretsNotSynced"
    # Plain files alone need no Key Vault.
    assert render([PLAIN], secrets_hash=None)


def test_only_secret_files_make_no_configmap_and_no_files_hash() -> None:
    manifests = render([SECRET])
    assert not [m for m in manifests if m["kind"] == "ConfigMap"]
    assert FILES_HASH_ANNOTATION not in pod(manifests)["metadata"]["annotations"]


def test_only_plain_files_leave_the_pod_security_context_alone() -> None:
    manifests = render([PLAIN], secrets_hash=None)
    assert pod(manifests)["spec"]["securityContext"] == pod(render([], None))["spec"]["securityContext"]


def test_an_app_without_files_has_only_the_tmp_volume() -> None:
    manifests = render([], None)
    assert [v["name"] for v in pod(manifests)["spec"]["volumes"]] == ["tmp"]
    assert pod(manifests)["spec"]["containers"][0]["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert "annotations" not in pod(manifests)["metadata"]
    assert not [m for m in manifests if m["kind"] == "ConfigMap"]


def test_a_scheduled_task_mounts_files_in_its_job_template() -> None:
    manifests = render([PLAIN], None, type="scheduledTask", schedule="0 3 * * *")
    assert landed(manifests) == {"/config/app.yaml": ("configMap", file_key("/config/app.yaml"), None)}
    assert FILES_HASH_ANNOTATION in pod(manifests)["metadata"]["annotations"]
