"""``choreo-dp sandbox --once`` end to end: the printed table, the control plane's view, no leftovers."""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def _ours_running(directory: Path) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "choreo_dp" in cmd and str(directory) in cmd:
            found.append(cmd)
    return found


def _run(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "choreo_dp.cli.main", "sandbox", "--once", "--dir", str(directory)],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_sandbox_once_runs_the_whole_loop_and_cleans_up(tmp_path: Path) -> None:
    directory = tmp_path / "sb"
    proc = _run(directory)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    out = proc.stdout
    for step in ("started Kubernetes API", "started control plane", "agent connected", "Ready in"):
        assert step in out, out
    header = re.search(r"^NAMESPACE\s+NAME\s+ENVIRONMENT\s+TYPE\s+READY\s+STATUS\s+URL\s+AGE$", out, re.M)
    assert header, out
    row = re.search(r"^choreo-dev\s+hello\s+dev\s+service\s+2/2\s+Ready\s+(\S+)\s+\S+$", out, re.M)
    assert row, out
    assert row.group(1).startswith("https://dev.sandbox.local/")
    assert "choreo-dp cp apply -f examples/" in out and str(directory / "kubeconfig") in out

    assert _ours_running(directory) == [], "the sandbox left processes running"
    assert not (directory / "sandbox.pids").exists()

    # The control plane's store survives: restart it alone and ask it for the app's last reported status.
    from choreo_dp.sandbox.children import free_port

    port = free_port()
    cp = subprocess.Popen(
        [
            sys.executable, "-m", "choreo_dp.cli.main", "control-plane", "serve",
            "--listen", f"127.0.0.1:{port}", "--db", str(directory / "choreo-cp.db"),
            "--tls-cert", str(directory / "server.pem"), "--tls-key", str(directory / "server-key.pem"),
            "--admin-token-file", str(directory / "admin-token"),
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        ctx = ssl.create_default_context(cafile=str(directory / "ca.pem"))
        token = (directory / "admin-token").read_text().strip()
        req = urllib.request.Request(
            f"https://127.0.0.1:{port}/api/v1/dataplanes/sandbox/environments/dev/apps/hello",
            headers={"Authorization": f"Bearer {token}"},
        )
        body = None
        for _ in range(100):
            try:
                with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
                    body = json.loads(resp.read())
                break
            except OSError:
                if cp.poll() is not None:
                    pytest.fail("control plane did not start again on its own database")
                time.sleep(0.1)
        assert body is not None
        assert body["status"]["phase"] == "Ready"
        assert body["spec"]["image"] == "ghcr.io/acme/hello:1.0.0"
    finally:
        cp.terminate()
        cp.wait(timeout=10)


def test_sandbox_runs_again_in_the_same_dir(tmp_path: Path) -> None:
    directory = tmp_path / "again"
    first = _run(directory)
    assert first.returncode == 0, first.stdout + first.stderr
    second = _run(directory)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Ready in" in second.stdout
    assert _ours_running(directory) == []


def test_a_failing_step_is_named_with_its_log_and_nothing_is_left(tmp_path: Path) -> None:
    directory = tmp_path / "broken"
    # An invalid operator setting makes the operator exit 2 at start-up.
    proc = subprocess.run(
        [sys.executable, "-m", "choreo_dp.cli.main", "sandbox", "--once", "--dir", str(directory)],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "CHOREO_DP_WORKERS": "0"},
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.startswith("sandbox:"))
    assert "operator failed" in line and str(directory / "operator.log") in line, line
    assert "--workers must be at least 1" in (directory / "operator.log").read_text()
    assert _ours_running(directory) == []


def test_ctrl_c_stops_everything(tmp_path: Path) -> None:
    import signal

    directory = tmp_path / "interactive"
    proc = subprocess.Popen(
        [sys.executable, "-m", "choreo_dp.cli.main", "sandbox", "--dir", str(directory)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    seen = []
    deadline = time.monotonic() + 180
    for line in proc.stdout:
        seen.append(line)
        if "Ctrl-C stops everything" in line or time.monotonic() > deadline:
            break
    assert any("Ctrl-C stops everything" in line for line in seen), "".join(seen)
    assert _ours_running(directory), "the parts should be running before Ctrl-C"
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest
    assert "stopped everything the sandbox started" in rest
    assert _ours_running(directory) == []
