"""Dependencies point inward: the inner layers import nothing of the outer ones."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "choreo_dp"

# layer -> module prefixes it must never import
FORBIDDEN = {
    "api": ("choreo_dp.", "kopf", "aiohttp", "kubernetes", "fastapi", "websockets", "azure"),
    "render": ("choreo_dp.kube", "choreo_dp.operator", "choreo_dp.tunnel", "choreo_dp.secrets",
               "choreo_dp.controlplane", "choreo_dp.sandbox", "choreo_dp.cli",
               "kopf", "aiohttp", "kubernetes", "fastapi", "websockets", "azure"),
    "kube": ("choreo_dp.operator", "choreo_dp.tunnel", "choreo_dp.secrets", "choreo_dp.controlplane",
             "choreo_dp.sandbox", "choreo_dp.cli", "kopf"),
    "secrets": ("choreo_dp.operator", "choreo_dp.tunnel", "choreo_dp.controlplane", "choreo_dp.cli", "kopf"),
    "tunnel": ("choreo_dp.operator", "choreo_dp.secrets", "choreo_dp.controlplane", "choreo_dp.cli", "kopf"),
    "controlplane": ("choreo_dp.operator", "choreo_dp.secrets", "choreo_dp.kube", "choreo_dp.cli", "kopf"),
}  # fmt: skip
ALLOWED_INSIDE_API = ("choreo_dp.api",)


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_point_inward(layer: str) -> None:
    offending = []
    for path in sorted((SRC / layer).rglob("*.py")):
        for module in _imports(path):
            if module.startswith(ALLOWED_INSIDE_API) and layer == "api":
                continue
            if any(module == f.rstrip(".") or module.startswith(f if f.endswith(".") else f + ".") or module == f
                   for f in FORBIDDEN[layer]):  # fmt: skip
                offending.append(f"{path.relative_to(SRC)} imports {module}")
    assert offending == []
