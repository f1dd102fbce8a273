"""ChoreoApp.spec.files: each rule refuses with a message naming it, and the edges of each rule pass."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError

from choreo_dp.api import ChoreoAppSpec
from choreo_dp.api.common import ENV_VAR_NAME
from choreo_dp.api.files import (
    MAX_TOTAL_CONTENT_BYTES,
    SYSTEM_DIRECTORIES,
    FileSpec,
    file_key,
    mount_directories,
)
from tests.api.samples import app


def spec(*files: dict[str, Any], **extra: Any) -> ChoreoAppSpec:
    return ChoreoAppSpec.model_validate(app(files=list(files), **extra))


def plain(path: str, content: str = "x") -> dict[str, Any]:
    return {"mountPath": path, "content": content}


def refused(*files: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        spec(*files)
    return str(info.value)


@pytest.mark.parametrize(
    ("path", "rule"),
    [
        ("config/app.yaml", "must be absolute"),
        ("/config/", "must not end with /"),
        ("/config//app.yaml", "must not contain //"),
        ("/config/../etc/passwd", "must be normalised"),
        ("/config/./app.yaml", "must be normalised"),
        ("/config/app yaml", "may use only letters"),
        ("/config/ap$p", "may use only letters"),
        ("/app.yaml", "directly under /"),
        ("/tmp/app.yaml", "under /tmp (the writable emptyDir)"),
        ("/tmp/deep/app.yaml", "under /tmp"),
        ("/etc/app/app.yaml", "under /etc (a system directory)"),
        ("/var/run/app.sock", "under /var/run"),
        ("/lib64/x.so", "under /lib64"),
        ("/proc/self/x", "under /proc"),
    ],
)
def test_a_bad_path_is_refused_naming_the_rule(path: str, rule: str) -> None:
    assert rule in refused(plain(path))


@pytest.mark.parametrize("root", SYSTEM_DIRECTORIES)
def test_every_system_directory_is_refused(root: str) -> None:
    assert f"under {root}" in refused(plain(f"{root}/choreo/file"))


@pytest.mark.parametrize(
    "path",
    ["/config/app.yaml", "/var/lib/app/x.conf", "/library/x", "/tmpdata/x", "/etcd/x", "/app/conf/.env"],
)
def test_paths_near_the_forbidden_ones_are_allowed(path: str) -> None:
    assert spec(plain(path)).files[0].mount_path == path


def test_exactly_one_source() -> None:
    assert "exactly one of content or keyVaultSecret" in refused({"mountPath": "/config/a"})
    assert "exactly one of content or keyVaultSecret" in refused(
        {"mountPath": "/config/a", "content": "x", "keyVaultSecret": "s"}
    )
    assert "version is only allowed with keyVaultSecret" in refused(
        {"mountPath": "/config/a", "content": "x", "version": "a" * 32}
    )
    # An empty file is a file: content "" is a source.
    assert spec(plain("/config/empty", "")).files[0].content == ""


@pytest.mark.parametrize(
    ("secret", "version", "ok"),
    [
        ("db-password", None, True),
        ("db-password", "0123456789abcdef0123456789ABCDEF", True),
        ("db_password", None, False),
        ("x" * 128, None, False),
        ("db", "123", False),
    ],
)
def test_key_vault_secret_grammar_is_secret_refs(secret: str, version: str | None, ok: bool) -> None:
    f: dict[str, Any] = {"mountPath": "/secrets/db", "keyVaultSecret": secret}
    if version is not None:
        f["version"] = version
    if ok:
        assert spec(f).files[0].is_secret
    else:
        with pytest.raises(ValidationError):
            spec(f)


def test_unique_paths() -> None:
    assert "two files at the same mountPath: /config/a" in refused(
        plain("/config/a"), {"mountPath": "/config/a", "keyVaultSecret": "s"}
    )


def test_a_file_cannot_be_the_directory_of_another() -> None:
    message = refused(plain("/config/a/b"), plain("/config/a"))
    assert "/config/a is a file, so it cannot also be the directory of /config/a/b" in message
    # A shared prefix that is not a directory boundary is fine.
    assert len(spec(plain("/config/a"), plain("/config/ab/c")).files) == 2


def test_total_content_is_bounded_with_the_size_and_the_bound_named() -> None:
    half = "x" * (MAX_TOTAL_CONTENT_BYTES // 2)
    assert len(spec(plain("/config/a", half), plain("/config/b", half)).files) == 2
    message = refused(plain("/config/a", half), plain("/config/b", half + "é"))
    assert f"total content is {MAX_TOTAL_CONTENT_BYTES + 2} bytes" in message  # é is 2 bytes of UTF-8
    assert f"bound of {MAX_TOTAL_CONTENT_BYTES} bytes (512 KiB)" in message


def test_file_keys_are_unique_valid_and_never_an_env_var_name() -> None:
    paths = ["/config/app.yaml", "/other/app.yaml", "/config/APP_YAML", "/c/" + "n" * 255]
    keys = [file_key(p) for p in paths]
    assert len(set(keys)) == len(keys)
    for key in keys:
        assert re.fullmatch(r"[-._a-zA-Z0-9]{1,253}", key), key
        assert not re.match(ENV_VAR_NAME, key)
    assert keys[0].endswith("-app.yaml")  # readable in kubectl


def test_mount_directories_are_the_topmost_ones() -> None:
    groups = mount_directories(["/config/a", "/config/sub/b", "/data/c", "/configx/d"])
    assert groups == {
        "/config": ["/config/a", "/config/sub/b"],
        "/configx": ["/configx/d"],
        "/data": ["/data/c"],
    }


def test_files_round_trip_through_the_wire_form() -> None:
    s = spec(plain("/config/a", "k: v\n"), {"mountPath": "/secrets/tls.key", "keyVaultSecret": "tls-key"})
    wire = s.to_k8s()["files"]
    assert wire == [
        {"mountPath": "/config/a", "content": "k: v\n"},
        {"mountPath": "/secrets/tls.key", "keyVaultSecret": "tls-key"},
    ]
    assert FileSpec.model_validate(wire[1]).key == file_key("/secrets/tls.key")
