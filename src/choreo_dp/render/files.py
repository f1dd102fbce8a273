"""ChoreoApp.spec.files -> the ConfigMap of plain files, the pod's volumes and mounts, the rollout hash.

Each topmost directory holding files is one read-only projected volume whose items place every file
at its path (``choreo_dp.api.files.mount_directories``). No ``subPath``: a subPath mount pins the
file the pod started with and hides later updates, and it is refused for projected secret items on
some runtimes; a projected volume also lets one directory mix plain and secret files.

Plain files come from the ConfigMap ``<app>-files`` the operator owns. Secret files come from the
app's Secret ``<app>-secrets`` that the Key Vault sync already writes, under keys no env var name can
take (``file_key``): one Secret, one sync state, one values hash for every Key Vault value of the
app, so a rotation of either kind rolls the pods through the same ``secrets-hash`` annotation, and
the SecretsSynced condition covers both without a second Secret to keep consistent.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Sequence
from typing import Any

from choreo_dp.api.files import FileSpec, mount_directories, plain_files, secret_files
from choreo_dp.api.vocabulary import app_files_configmap_name, app_secret_name

# Secret files are readable by their owner only. The kubelet makes a projected volume's files
# owned by root (group fsGroup when set, with group read added), so a non-root container could not
# read a 0400 file without an fsGroup; this one is added to the pod only when it has secret files.
SECRET_FILE_MODE = 0o400
PLAIN_FILE_MODE = 0o444
FILES_FS_GROUP = 65532


def volume_name(directory: str) -> str:
    # The directory is not a valid volume name (slashes, length): a short digest of it is, and it
    # stays the same while the directory does, so adding a file elsewhere changes no other volume.
    return f"files-{hashlib.sha256(directory.encode()).hexdigest()[:10]}"


def files_configmap(
    app_name: str, metadata: dict[str, Any], files: Sequence[FileSpec]
) -> dict[str, Any] | None:
    """The ConfigMap of the plain files, or None when there are none. ``metadata`` is the app's
    child metadata (namespace, labels, ownerReferences); the name is replaced."""
    plain = plain_files(files)
    if not plain:
        return None
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {**metadata, "name": app_files_configmap_name(app_name)},
        "data": {f.key: str(f.content) for f in sorted(plain, key=lambda f: f.key)},
    }


def file_volumes(app_name: str, files: Sequence[FileSpec]) -> list[dict[str, Any]]:
    by_path = {f.mount_path: f for f in files}
    volumes = []
    for directory, paths in mount_directories(by_path).items():
        plain = [by_path[p] for p in paths if not by_path[p].is_secret]
        secret = [by_path[p] for p in paths if by_path[p].is_secret]
        sources: list[dict[str, Any]] = []
        if plain:
            sources.append(
                {
                    "configMap": {
                        "name": app_files_configmap_name(app_name),
                        "items": [{"key": f.key, "path": _relative(directory, f)} for f in plain],
                    }
                }
            )
        if secret:
            sources.append(
                {
                    "secret": {
                        "name": app_secret_name(app_name),
                        "items": [
                            {"key": f.key, "path": _relative(directory, f), "mode": SECRET_FILE_MODE}
                            for f in secret
                        ],
                    }
                }
            )
        volumes.append(
            {
                "name": volume_name(directory),
                "projected": {"defaultMode": PLAIN_FILE_MODE, "sources": sources},
            }
        )
    return volumes


def file_mounts(files: Sequence[FileSpec]) -> list[dict[str, Any]]:
    return [
        {"name": volume_name(directory), "mountPath": directory, "readOnly": True}
        for directory in mount_directories(f.mount_path for f in files)
    ]


def files_hash(files: Sequence[FileSpec]) -> str | None:
    """A digest of the plain files (paths and contents): stamped on the pod template so a change
    rolls the pods. Secret files are covered by the secrets hash (which never hashes a value)."""
    plain = plain_files(files)
    if not plain:
        return None
    canonical = json.dumps(sorted((f.mount_path, f.content) for f in plain), separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def needs_fs_group(files: Sequence[FileSpec]) -> bool:
    return bool(secret_files(files))


def _relative(directory: str, f: FileSpec) -> str:
    return posixpath.relpath(f.mount_path, directory)
