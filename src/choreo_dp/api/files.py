"""Files an app gets mounted: plain configuration (a ConfigMap) or a Key Vault secret (the app's Secret).

The path rules exist because of how the files are mounted (see ``choreo_dp.render.files``): without
``subPath``, each directory holding files becomes a read-only volume that shows only the declared
files. So a file may not sit where that volume would hide something the container needs (a system
directory, the writable ``/tmp``), or where one file would have to be a directory for another.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Iterable, Sequence
from typing import Self

from pydantic import Field, model_validator

from choreo_dp.api.common import Model

# Per app: the plain contents share one ConfigMap (1 MiB at most, with its metadata), and every
# byte is carried in the ChoreoApp itself, which etcd bounds at ~1.5 MiB with the rest of the spec.
MAX_TOTAL_CONTENT_BYTES = 512 * 1024
MAX_FILES = 64
MAX_PATH_LENGTH = 1024
# Characters a path segment may use: enough for configuration names, nothing a shell, a volume
# item path or a ConfigMap key would read specially.
_SEGMENT = re.compile(r"^[A-Za-z0-9._-]{1,255}$")
WRITABLE_DIRECTORY = "/tmp"
# Top-level directories no file may be under: the kernel's (/proc, /sys, /dev), the image's
# programs, libraries and configuration (/bin, /sbin, /usr, /lib, /lib32, /lib64, /libx32, /etc),
# the runtime's sockets (/run, /var/run), and the writable emptyDir (/tmp). A file right under /
# is refused too: its volume would have to replace the root directory.
SYSTEM_DIRECTORIES: tuple[str, ...] = (
    "/bin",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/proc",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
    "/var/run",
)
KEY_VAULT_SECRET_PATTERN = r"^[0-9a-zA-Z-]+$"
VERSION_PATTERN = r"^[0-9a-fA-F]{32}$"


class FileSpec(Model):
    """One file mounted read-only into the container: exactly one of content or keyVaultSecret."""

    mount_path: str = Field(
        min_length=1,
        max_length=MAX_PATH_LENGTH,
        # For the apiserver's own check; the validator below gives the clear error.
        json_schema_extra={"pattern": "^/"},
        description=(
            "Absolute, normalised path of the file in the container, e.g. /config/app.yaml (letters, digits, "
            "'.', '_', '-' per segment; no '..', '//' or trailing '/'). Not under /tmp or a system directory "
            "(/bin, /dev, /etc, /lib*, /proc, /run, /sbin, /sys, /usr, /var/run) and not directly under /. "
            "The file's directory is mounted read-only and shows only the files declared in it, so use a "
            "directory of its own (e.g. /config)."
        ),
    )
    content: str | None = Field(
        default=None,
        max_length=MAX_TOTAL_CONTENT_BYTES,
        description=(
            "Plain text content of the file (configuration, not secrets). At most 512 KiB for all files of "
            "the app together. A change rolls the pods."
        ),
    )
    key_vault_secret: str | None = Field(
        default=None,
        min_length=1,
        max_length=127,
        pattern=KEY_VAULT_SECRET_PATTERN,
        description=(
            "Name of a secret in the environment's Key Vault whose value becomes the file (mode 0400), "
            "e.g. orders-tls-key. A new value rolls the pods."
        ),
    )
    version: str | None = Field(
        default=None,
        pattern=VERSION_PATTERN,
        description=(
            "With keyVaultSecret: pin one version of the secret (32 hex digits). Absent: the latest "
            "version, read again every keyVault.refreshInterval."
        ),
    )

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.content is None) == (self.key_vault_secret is None):
            raise ValueError(f"file {self.mount_path}: needs exactly one of content or keyVaultSecret")
        if self.version is not None and self.key_vault_secret is None:
            raise ValueError(f"file {self.mount_path}: version is only allowed with keyVaultSecret")
        problem = path_problem(self.mount_path)
        if problem is not None:
            raise ValueError(f"file {self.mount_path}: {problem}")
        return self

    @property
    def is_secret(self) -> bool:
        return self.key_vault_secret is not None

    @property
    def key(self) -> str:
        return file_key(self.mount_path)


def path_problem(path: str) -> str | None:
    """Why ``path`` cannot be a mounted file's path, or None."""
    if not path.startswith("/"):
        return "mountPath must be absolute (start with /)"
    if path.endswith("/"):
        return "mountPath must not end with / (it names a file)"
    if "//" in path:
        return "mountPath must not contain //"
    segments = path[1:].split("/")
    if any(s in (".", "..") for s in segments):
        return "mountPath must be normalised (no . or .. segments)"
    bad = next((s for s in segments if not _SEGMENT.match(s)), None)
    if bad is not None:
        return f"mountPath segment {bad!r} may use only letters, digits, '.', '_' and '-'"
    if len(segments) < 2:
        return "mountPath must not be directly under / (its directory is mounted read-only)"
    for root in (WRITABLE_DIRECTORY, *SYSTEM_DIRECTORIES):
        if path.startswith(root + "/"):
            which = "the writable emptyDir" if root == WRITABLE_DIRECTORY else "a system directory"
            return f"mountPath must not be under {root} ({which})"
    return None


def file_key(path: str) -> str:
    """The ConfigMap or Secret key holding the file at ``path``.

    Unique per path (a digest of it) and readable (the file name). It always holds a '-', which an
    environment variable name never does, so it cannot collide with the env var keys of the app's
    Secret.
    """
    digest = hashlib.sha256(path.encode()).hexdigest()[:12]
    return f"file-{digest}-{posixpath.basename(path)[:200]}"


def files_problem(files: Sequence[FileSpec]) -> str | None:
    """Rules across an app's files (each file's own rules are checked by ``FileSpec``)."""
    paths = [f.mount_path for f in files]
    dupes = sorted({p for p in paths if paths.count(p) > 1})
    if dupes:
        return f"files: two files at the same mountPath: {', '.join(dupes)}"
    ordered = sorted(paths)
    for path in ordered:
        inside = [p for p in ordered if p.startswith(path + "/")]
        if inside:
            return f"files: {path} is a file, so it cannot also be the directory of {inside[0]}"
    total = sum(len(f.content.encode()) for f in files if f.content is not None)
    if total > MAX_TOTAL_CONTENT_BYTES:
        return (
            f"files: total content is {total} bytes, over the bound of {MAX_TOTAL_CONTENT_BYTES} bytes "
            "(512 KiB) per app"
        )
    return None


def plain_files(files: Iterable[FileSpec]) -> list[FileSpec]:
    return [f for f in files if not f.is_secret]


def secret_files(files: Iterable[FileSpec]) -> list[FileSpec]:
    return [f for f in files if f.is_secret]


def mount_directories(paths: Iterable[str]) -> dict[str, list[str]]:
    """Mount directory -> the paths it holds: the topmost directories holding files.

    A file in a subdirectory of another file's directory goes into that directory's volume (as an
    item path with a subdirectory) instead of a nested mount, which a read-only volume could not hold.
    """
    dirs = {posixpath.dirname(p) for p in paths}
    roots = sorted(d for d in dirs if not any(d.startswith(o + "/") for o in dirs))
    out: dict[str, list[str]] = {r: [] for r in roots}
    for path in sorted(paths):
        root = next(r for r in roots if path.startswith(r + "/"))
        out[root].append(path)
    return out
