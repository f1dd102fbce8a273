"""``choreo-dp sandbox apiserver``: prints where it listens, writes a kubeconfig, stops cleanly."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from kubernetes import client

from tests.conformance.helpers import api_client

pytestmark = pytest.mark.emulator_only


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serves_until_signalled(tmp_path: Path, sig: signal.Signals) -> None:
    kc = tmp_path / "kubeconfig"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "choreo_dp.cli.main",
            "sandbox",
            "apiserver",
            "--port",
            "0",
            "--kubeconfig",
            str(kc),
            "--simulate-workloads",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.fullmatch(r"listening on http://127\.0\.0\.1:(\d+)\n", line)
        assert m, line + (proc.stderr.read() if proc.poll() is not None and proc.stderr else "")
        api = api_client(kc)
        assert api.configuration.host == f"http://127.0.0.1:{m.group(1)}"
        assert "default" in {n.metadata.name for n in client.CoreV1Api(api).list_namespace().items}
        api.close()
    finally:
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err


def test_bad_port_is_a_usage_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "choreo_dp.cli.main",
            "sandbox",
            "apiserver",
            "--port",
            "99999",
            "--kubeconfig",
            str(tmp_path / "k"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
