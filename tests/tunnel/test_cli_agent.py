"""``choreo-dp agent`` / ``run`` flag handling: one clear line, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "choreo_dp.cli.main", *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("verb", ["agent", "run"])
def test_ws_refused_without_insecure(verb: str, tmp_path: Path) -> None:
    token = tmp_path / "t"
    token.write_text("x")
    r = cli(verb, "--control-plane", "ws://127.0.0.1:1", "--dataplane", "dp", "--token-file", str(token))
    assert r.returncode == 2
    assert "without --insecure" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_missing_token_file_and_half_mtls(tmp_path: Path) -> None:
    r = cli(
        "agent",
        "--control-plane",
        "wss://127.0.0.1:1",
        "--dataplane",
        "dp",
        "--token-file",
        str(tmp_path / "no"),
    )
    assert r.returncode == 2 and "no such file" in r.stderr
    token = tmp_path / "t"
    token.write_text("x")
    r = cli(
        "agent", "--control-plane", "wss://127.0.0.1:1", "--dataplane", "dp", "--token-file", str(token),
        "--client-cert", str(token),
    )  # fmt: skip
    assert r.returncode == 2 and "go together" in r.stderr
