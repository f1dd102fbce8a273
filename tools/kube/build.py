"""Build the real Kubernetes binaries the test loop runs, once, into a cache outside the work tree.

    python tools/kube/build.py            # build what is missing, one line per binary
    python tools/kube/build.py --print    # only print the bin directory (exit 1 if incomplete)

Each subdirectory of tools/kube is a Go module that pins one upstream project (Kubernetes with
``replace`` directives for its staging modules, etcd, kwok, Toxiproxy).  The cache directory is
named after the Kubernetes release and a hash of every go.mod/go.sum here plus this script's
build recipe, so changing a pin rebuilds and an unchanged tree reuses the binaries forever.

On success ``<cache>/current`` names the bin directory; ``choreo_sandbox.cluster`` reads it
(or ``CHOREO_DP_KUBE_BIN``) so nothing else needs to know the hash.  Nothing here is committed.

Assets that are not binaries live beside ``bin``: kwok's CRDs and stages (``kwok/``), and the
Gateway API CRDs of the standard channel (``gateway-api/crds``, from the ``gateway-api`` module:
nothing is built there).  The Gateway API pin is not part of the binaries' cache key, so bumping
it recopies a few YAML files instead of relinking every binary; ``gateway-api/source.json``
records which go.mod/go.sum the copy came from.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
KUBE_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.16"
KWOK_VERSION = "v0.8.0"
TOXIPROXY_VERSION = "v2.5.0"
# Bump when the recipe below changes in a way the go.mod hashes cannot see.
RECIPE = "2"


def cache_root() -> Path:
    env = os.environ.get("CHOREO_DP_KUBE_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "choreo-dp" / "kube"


def _kube_ldflags() -> list[str]:
    major, minor = KUBE_VERSION.lstrip("v").split(".")[:2]
    date = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    flags = []
    # The same variables hack/lib/version.sh sets, so /version and `kubectl version` tell the release.
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={KUBE_VERSION}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate={date}",
        ]
    return flags


@dataclass(frozen=True)
class Binary:
    name: str
    module_dir: str
    package: str
    version: str
    ldflags: tuple[str, ...] = ()


BINARIES = (
    Binary("kube-apiserver", "kubernetes", "k8s.io/kubernetes/cmd/kube-apiserver", KUBE_VERSION),
    Binary(
        "kube-controller-manager", "kubernetes", "k8s.io/kubernetes/cmd/kube-controller-manager", KUBE_VERSION
    ),
    Binary("kube-scheduler", "kubernetes", "k8s.io/kubernetes/cmd/kube-scheduler", KUBE_VERSION),
    Binary("kubectl", "kubernetes", "k8s.io/kubernetes/cmd/kubectl", KUBE_VERSION),
    Binary("etcd", "etcd", "go.etcd.io/etcd/server/v3", ETCD_VERSION),
    Binary(
        "kwok",
        "kwok",
        "sigs.k8s.io/kwok/cmd/kwok",
        KWOK_VERSION,
        (f"-X sigs.k8s.io/kwok/pkg/consts.Version={KWOK_VERSION.lstrip('v')}",),
    ),
    Binary(
        "kwokctl",
        "kwok",
        "sigs.k8s.io/kwok/cmd/kwokctl",
        KWOK_VERSION,
        (f"-X sigs.k8s.io/kwok/pkg/consts.Version={KWOK_VERSION.lstrip('v')}",),
    ),
    Binary(
        "toxiproxy-server",
        "toxiproxy",
        "github.com/Shopify/toxiproxy/v2/cmd/server",
        TOXIPROXY_VERSION,
        (f"-X github.com/Shopify/toxiproxy/v2.Version={TOXIPROXY_VERSION}",),
    ),
)


def _module_hash(h: Any, module_dirs: set[str]) -> Any:
    for f in sorted(HERE.glob("*/go.*")):
        if f.parent.name in module_dirs:
            h.update(f.relative_to(HERE).as_posix().encode())
            h.update(f.read_bytes())
    return h


def fingerprint() -> str:
    """The binaries' cache key: the recipe and the go.mod/go.sum of the modules they are built from."""
    return str(
        _module_hash(hashlib.sha256(RECIPE.encode()), {b.module_dir for b in BINARIES}).hexdigest()[:12]
    )


def bin_dir() -> Path:
    return cache_root() / f"{KUBE_VERSION}-{fingerprint()}" / "bin"


def _go_env() -> dict[str, str]:
    # Go's own build cache (GOCACHE) is kept: rebuilding after a pin change reuses compiled packages.
    return dict(os.environ, CGO_ENABLED="0", GOTOOLCHAIN="local", GOFLAGS="-mod=readonly -buildvcs=false")


def build_one(b: Binary, dest: Path, env: dict[str, str]) -> None:
    ldflags = ["-s", "-w", *b.ldflags]
    if b.module_dir == "kubernetes":
        ldflags += _kube_ldflags()
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        out = Path(tmp) / b.name
        cmd = ["go", "build", "-trimpath", "-ldflags", " ".join(ldflags), "-o", str(out), b.package]
        proc = subprocess.run(
            cmd, cwd=HERE / b.module_dir, env=env, capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout + proc.stderr)
            raise SystemExit(f"kube: building {b.name} failed (go build exit {proc.returncode})")
        out.replace(dest)  # atomic: a half-built binary is never seen as cached


# kwok's own CRDs and default stages, copied beside the binaries so a run needs no module cache.
KWOK_ASSETS = (
    "kustomize/crd/bases/kwok.x-k8s.io_stages.yaml",
    "kustomize/crd/bases/kwok.x-k8s.io_logs.yaml",
    "kustomize/crd/bases/kwok.x-k8s.io_clusterlogs.yaml",
    "kustomize/stage/node/fast/node-initialize.yaml",
    "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "kustomize/stage/pod/fast/pod-ready.yaml",
    "kustomize/stage/pod/fast/pod-complete.yaml",
    "kustomize/stage/pod/fast/pod-delete.yaml",
)


def copy_kwok_assets(dest: Path, env: dict[str, str]) -> None:
    proc = subprocess.run(
        ["go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/kwok"],
        cwd=HERE / "kwok",
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit("kube: cannot locate the kwok module to copy its CRDs and stages")
    src = Path(proc.stdout.strip())
    for rel in KWOK_ASSETS:
        kind = "crds" if "/crd/" in rel else "stages"
        (dest / kind).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, dest / kind / Path(rel).name)


# The Gateway API CRDs (standard channel) a real cluster needs to serve gateway.networking.k8s.io;
# the emulated API serves that group built in.  Only the YAML is used: the module is not built.
GATEWAY_API_MODULE = "sigs.k8s.io/gateway-api"
GATEWAY_API_DIR = "gateway-api"
GATEWAY_API_CHANNEL = "config/crd/standard"


def gateway_api_key() -> str:
    return str(_module_hash(hashlib.sha256(b"gateway-api"), {GATEWAY_API_DIR}).hexdigest()[:12])


def gateway_api_current(dest: Path) -> bool:
    try:
        source = json.loads((dest / "source.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(source.get("key") == gateway_api_key() and any((dest / "crds").glob("*.yaml")))


def copy_gateway_api_crds(dest: Path, env: dict[str, str]) -> None:
    """Copy ``config/crd/standard/*.yaml`` of the pinned Gateway API module into ``dest/crds``."""
    proc = subprocess.run(
        ["go", "list", "-m", "-f", "{{.Dir}} {{.Version}}", GATEWAY_API_MODULE],
        cwd=HERE / GATEWAY_API_DIR,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit("kube: cannot locate the gateway-api module to copy its CRDs")
    src_dir, version = proc.stdout.split()
    files = sorted((Path(src_dir) / GATEWAY_API_CHANNEL).glob("*.yaml"))
    if not files:
        raise SystemExit(f"kube: {GATEWAY_API_MODULE} {version} has no {GATEWAY_API_CHANNEL}/*.yaml")
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Built aside and swapped in, so a reader never sees half a channel.
    tmp = Path(tempfile.mkdtemp(prefix=".gateway-api-", dir=dest.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the kwok assets beside it are world-readable
    (tmp / "crds").mkdir()
    for f in files:
        shutil.copyfile(f, tmp / "crds" / f.name)
    source = {
        "module": GATEWAY_API_MODULE,
        "version": version,
        "channel": "standard",
        "key": gateway_api_key(),
    }
    (tmp / "source.json").write_text(json.dumps(source, indent=2) + "\n")
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        dest.replace(old)
        shutil.rmtree(old, ignore_errors=True)
    tmp.replace(dest)
    print(f"kube: Gateway API {version} CRDs (standard channel) copied", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--print", action="store_true", help="print the bin directory; exit 1 if incomplete")
    args = ap.parse_args(argv)
    target = bin_dir()
    assets = target.parent / "kwok"
    missing = [b for b in BINARIES if not (target / b.name).exists()]
    gateway = target.parent / "gateway-api"
    gateway_current = gateway_api_current(gateway)
    complete = not missing and (assets / "stages").is_dir() and gateway_current
    if args.print:
        print(target)
        return 0 if complete else 1
    if not complete and shutil.which("go") is None:
        print("kube: Go is not installed; cannot build the real Kubernetes binaries", file=sys.stderr)
        return 1
    target.mkdir(parents=True, exist_ok=True)
    env = _go_env()
    started = time.monotonic()
    for b in BINARIES:
        if b not in missing:
            print(f"kube: {b.name} {b.version} cached", flush=True)
            continue
        t0 = time.monotonic()
        print(f"kube: building {b.name} {b.version} ...", end="", flush=True)
        build_one(b, target / b.name, env)
        print(f" {time.monotonic() - t0:.0f}s", flush=True)
    if not (assets / "stages").is_dir():
        copy_kwok_assets(assets, env)
    if not gateway_current:
        copy_gateway_api_crds(gateway, env)
    manifest = {b.name: {"version": b.version, "package": b.package} for b in BINARIES}
    (target.parent / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    tmp_pointer = cache_root() / ".current.tmp"
    tmp_pointer.write_text(str(target) + "\n")
    tmp_pointer.replace(cache_root() / "current")
    if missing:
        print(f"kube: built {len(missing)} binaries in {time.monotonic() - started:.0f}s into {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
