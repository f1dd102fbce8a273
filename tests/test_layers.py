"""The import contracts of pyproject.toml ([tool.importlinter]) hold, and cover every package.

The contracts themselves (layers of the data plane, the data plane never importing the control
plane or the emulator, the wire module importing nothing of ours, ...) live in pyproject.toml so
`lint-imports` and this test enforce the same thing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
CONFIG = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
LINT = [
    sys.executable,
    "-c",
    "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())",
]
# choreo_dp subpackages outside the layer stack: used by several layers, import only inner ones.
OUTSIDE_LAYERS = {"choreo_dp.observability"}


def _lint(cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run(
        [*LINT, "--no-cache", str(cwd / "pyproject.toml")],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip


def test_import_contracts_are_kept() -> None:
    result = _lint(REPO, SRC)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_every_package_is_covered() -> None:
    packages = sorted(p.name for p in SRC.iterdir() if (p / "__init__.py").is_file())
    assert sorted(CONFIG["root_packages"]) == packages
    (layers,) = [c for c in CONFIG["contracts"] if c["type"] == "layers"]
    layered = {m.strip() for layer in layers["layers"] for m in layer.split("|")}
    subpackages = {
        f"choreo_dp.{p.name}" for p in (SRC / "choreo_dp").iterdir() if (p / "__init__.py").is_file()
    }
    assert subpackages - OUTSIDE_LAYERS == layered


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("choreo_wire/protocol.py", "import choreo_dp.kube", "the wire protocol imports nothing of ours"),
        ("choreo_dp/api/common.py", "import choreo_dp.render", "layers point inward"),
        ("choreo_dp/operator/keys.py", "import choreo_cp.store", "never imports the control plane"),
    ],
)
def test_a_forbidden_import_breaks_a_contract(tmp_path: Path, module: str, line: str, contract: str) -> None:
    """The contracts bite: one added import in a copy of the tree is reported."""
    shutil.copytree(SRC, tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "src" / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    result = _lint(tmp_path, tmp_path / "src")
    assert result.returncode != 0
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in " ".join(broken.split()), result.stdout
