"""Where the real Kubernetes binaries built by ``tools/kube/build.py`` are cached."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

BIN_ENV = "CHOREO_DP_KUBE_BIN"
CACHE_ENV = "CHOREO_DP_KUBE_CACHE"
REQUIRED = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok")


class BinariesMissing(RuntimeError):
    """The real control plane cannot start: its binaries were never built on this machine."""


@dataclass(frozen=True)
class KubeBinaries:
    bin_dir: Path

    def path(self, name: str) -> str:
        return str(self.bin_dir / name)

    @property
    def kwok_crds(self) -> Path:
        return self.bin_dir.parent / "kwok" / "crds"

    @property
    def kwok_stages(self) -> Path:
        return self.bin_dir.parent / "kwok" / "stages"

    @property
    def gateway_api_crds(self) -> Path:
        """The Gateway API standard channel (``config/crd/standard/*.yaml`` of the release that
        ``tools/kube/gateway-api/go.mod`` pins): the CRDs plus the release's safe-upgrades
        ValidatingAdmissionPolicy.  Not installed by ``RealCluster``; a cluster serves
        gateway.networking.k8s.io only once someone applies them."""
        return self.bin_dir.parent / "gateway-api" / "crds"


def cache_root() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "choreo-dp" / "kube"


def _candidate() -> Path | None:
    env = os.environ.get(BIN_ENV)
    if env:
        return Path(env)
    pointer = cache_root() / "current"
    try:
        return Path(pointer.read_text().strip())
    except OSError:
        return None


def find_binaries() -> KubeBinaries:
    """The cached binaries, or ``BinariesMissing`` saying how to build them."""
    where = _candidate()
    if where is None:
        raise BinariesMissing(
            "no real Kubernetes binaries are cached; build them with `python tools/kube/build.py` "
            f"(or `make test`), or point {BIN_ENV} at a directory holding {', '.join(REQUIRED)}"
        )
    found = KubeBinaries(where)
    absent = [n for n in REQUIRED if not (where / n).exists()]
    if absent:
        raise BinariesMissing(f"{where} lacks {', '.join(absent)}; rebuild with `python tools/kube/build.py`")
    if not found.kwok_stages.is_dir() or not found.gateway_api_crds.is_dir():
        raise BinariesMissing(
            f"kwok or Gateway API assets missing beside {where}; rerun `python tools/kube/build.py`"
        )
    return found


def binaries_available() -> bool:
    try:
        find_binaries()
    except BinariesMissing:
        return False
    return True
