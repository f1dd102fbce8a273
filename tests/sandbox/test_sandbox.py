"""``choreo-dp sandbox`` end to end: the printed table, the control plane's view, no leftovers.

The whole-loop and the Ctrl-C tests run with ``--kube emulated`` and with ``--kube real`` (the
sandbox then starts its own real cluster, ``sandbox cluster``, from the cached binaries; without
them those tests fail with the sandbox's hint on how to build them, as every real-cluster test
does).  Clean means: no process whose command line names the sandbox's directory (the real
cluster's etcd, kube-apiserver, ... run from ``DIR/cluster.tmp``), no ``sandbox.pids``, and no
data directory of the cluster left.
"""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.fixtures.kube import kubectl_binary

KUBE_MODES = ("emulated", "real")


def _ours_running(directory: Path) -> list[str]:
    """Processes (other than this one) whose command line names a path in ``directory``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            args = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        # the directory itself as an argument counts (`--dir D`), not only paths inside it
        if any(a == str(directory) or a.endswith(f"={directory}") or f"{directory}/" in a for a in args):
            found.append(" ".join(args))
    return found


def _assert_clean(directory: Path) -> None:
    assert _ours_running(directory) == [], "the sandbox left processes running"
    assert not (directory / "sandbox.pids").exists()
    assert not (directory / "cluster.tmp").exists(), "the real cluster's data directory was left"


def _without_binaries(tmp_path: Path) -> dict[str, str]:
    """The environment of a machine that never built the real binaries (no Go, say)."""
    env = {k: v for k, v in os.environ.items() if k != "CHOREO_DP_KUBE_BIN"}
    return {**env, "CHOREO_DP_KUBE_CACHE": str(tmp_path / "empty-kube-cache")}


def _run(
    directory: Path, kube: str = "emulated", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "choreo_dp.cli.main",
            "sandbox",
            "--once",
            "--dir",
            str(directory),
            "--kube",
            kube,
        ],
        capture_output=True,
        text=True,
        timeout=400,
        env={**(env or os.environ), "PYTHONUNBUFFERED": "1"},
    )


@pytest.mark.parametrize(
    ("kube", "binaries"),
    [("emulated", True), ("real", True), ("emulated", False)],
    ids=["emulated", "real", "emulated-without-binaries"],
)
def test_sandbox_once_runs_the_whole_loop_and_cleans_up(kube: str, binaries: bool, tmp_path: Path) -> None:
    directory = tmp_path / "sb"
    # Without the binaries (``make sandbox`` on a machine without Go) the table comes from the
    # apiserver's server-side printing, laid out as kubectl does (``test_table.py``).
    proc = _run(directory, kube, env=None if binaries else _without_binaries(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr

    out = proc.stdout
    for step in (
        "started Kubernetes API",
        "started control plane",
        "started Key Vault",
        "agent connected",
        "Ready in",
    ):
        assert step in out, out
    header = re.search(
        r"^NAMESPACE\s+NAME\s+ENVIRONMENT\s+TYPE\s+READY\s+STATUS\s+ROLLOUT\s+URL\s+AGE$", out, re.M
    )
    assert header, out
    row = re.search(r"^choreo-dev\s+hello\s+dev\s+service\s+2/2\s+Ready\s+(\S+)\s+\S+$", out, re.M)
    assert row, out
    assert row.group(1).startswith("https://dev.sandbox.local/")
    assert f"{Path(sys.executable).parent / 'choreo-dp'} cp apply -f " in out, out
    assert str(directory / "kubeconfig") in out
    assert "reusing" not in out, "a fresh directory reuses nothing"
    if kube == "real":
        assert "a real cluster (etcd, kube-apiserver" in out, out

    _assert_clean(directory)

    # The control plane's store survives: restart it alone and ask it for the app's last reported status.
    from choreo_sandbox.children import free_port

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
    # It says what it keeps from the first run, and that the old apps go to the new cluster.
    reusing = next(line for line in second.stdout.splitlines() if line.startswith("reusing "))
    for kept in ("control plane's database", "CA and TLS certificate", "admin token", "Key Vault's secrets"):
        assert kept in reusing, reusing
    assert re.search(
        r"^the control plane's store from the earlier run holds 1 environment\(s\) and 1 app\(s\) for "
        r"dataplane 'sandbox' \(dev/hello\); the agent applies them to the new, empty Kubernetes API$",
        second.stdout,
        re.M,
    ), second.stdout
    _assert_clean(directory)


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
    _assert_clean(directory)


def test_kube_real_without_binaries_is_one_line_with_how_to_build(tmp_path: Path) -> None:
    proc = _run(tmp_path / "nobin", "real", env=_without_binaries(tmp_path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "tools/kube/build.py" in lines[0], proc.stderr
    assert not (tmp_path / "nobin").exists()


class Lines:
    """A child's merged output, read on a thread so a test can wait for a line with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.seen: list[str] = []
        self._cond = threading.Condition()
        self._done = False
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.seen.append(line)
                self._cond.notify_all()
        with self._cond:
            self._done = True
            self._cond.notify_all()

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not any(text in line for line in self.seen):
                left = deadline - time.monotonic()
                if self._done or left <= 0:
                    pytest.fail(
                        f"no line with {text!r} ({'exited' if self._done else 'timed out'}):\n{self.text}"
                    )
                self._cond.wait(left)

    def wait_closed(self, timeout: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._done, timeout)

    @property
    def text(self) -> str:
        return "".join(self.seen)


def _app_ready(directory: Path, kubectl: str, cache: Path) -> bool:
    out = subprocess.run(
        [kubectl, "--kubeconfig", str(directory / "kubeconfig"), "--cache-dir", str(cache),
         "get", "choreoapps", "-A", "--no-headers"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return re.search(r"^choreo-dev\s+hello\s+dev\s+service\s+2/2\s+Ready\s", out.stdout, re.M) is not None


@pytest.mark.timeout(900)
@pytest.mark.parametrize("kube", KUBE_MODES)
def test_parts_are_supervised_the_dir_is_guarded_and_ctrl_c_stops_everything(
    kube: str, tmp_path: Path
) -> None:
    directory = tmp_path / "interactive"
    kubectl = kubectl_binary()
    proc = subprocess.Popen(
        [sys.executable, "-m", "choreo_dp.cli.main", "sandbox", "--dir", str(directory), "--kube", kube],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines = Lines(proc)
    try:
        lines.wait_for("Ctrl-C stops everything", timeout=400)
        assert _ours_running(directory), "the parts should be running before Ctrl-C"
        pids = json.loads((directory / "sandbox.pids").read_text())

        # A second sandbox on the same directory is refused with one line, and touches nothing.
        second = _run(directory, kube)
        assert second.returncode == 2, second.stdout + second.stderr
        assert len(second.stderr.splitlines()) == 1 and "another running sandbox" in second.stderr
        holder = proc.pid
        assert f"(pid {holder}); stop it with Ctrl-C in its terminal or `kill {holder}`" in second.stderr
        assert json.loads((directory / "sandbox.pids").read_text()) == pids
        assert proc.poll() is None

        # A part that dies is reported and started again ...
        os.kill(pids["agent"], signal.SIGKILL)
        lines.wait_for("restarted agent", timeout=60)
        assert "agent exited with code -9; restarting it" in lines.text
        # ... with the end of its log, and the status line says what is down and what was restarted.
        died = lines.text.split("agent exited with code -9", 1)[1].splitlines()
        assert died[1].startswith("  | "), lines.text
        assert "Degraded: agent is down, being restarted" in lines.text
        lines.wait_for("restarts: agent 1x; Ctrl-C stops everything.", timeout=10)
        # The Key Vault too (its secrets are on disk).
        os.kill(pids["keyvault"], signal.SIGKILL)
        lines.wait_for("restarted keyvault", timeout=60)
        # ... the Kubernetes API too: it comes back empty (a real cluster with a new store and
        # CA), the operator and the agent with it, and the control plane's desired state is
        # applied again until the app is Ready.
        api = "cluster" if kube == "real" else "apiserver"
        os.kill(pids[api], signal.SIGKILL)
        lines.wait_for(f"restarted {api} on", timeout=400)
        deadline = time.monotonic() + 120
        while not _app_ready(directory, kubectl, tmp_path / "kubectl-cache"):
            assert time.monotonic() < deadline, "the app did not become Ready again after the restart"
            time.sleep(0.5)

        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=180)
        lines.wait_closed(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, lines.text
    assert "stopped everything the sandbox started" in lines.text
    _assert_clean(directory)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("kube", KUBE_MODES)
def test_a_sandbox_killed_outright_is_cleaned_up_by_the_next_run(kube: str, tmp_path: Path) -> None:
    directory = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "choreo_dp.cli.main", "sandbox", "--dir", str(directory), "--kube", kube],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines = Lines(proc)
    try:
        lines.wait_for("Ctrl-C stops everything", timeout=400)
    finally:
        proc.kill()  # no cleanup at all: its parts keep running in their own sessions
        proc.wait()
    pids = json.loads((directory / "sandbox.pids").read_text())
    if kube == "real":
        # ... and the real cluster's own processes too, their parent gone as well.
        os.kill(pids["cluster"], signal.SIGKILL)
    assert _ours_running(directory)

    again = _run(directory, kube)
    assert again.returncode == 0, again.stdout + again.stderr
    assert re.search(r"^stopped \d+ process\(es\) left over by a previous run", again.stdout, re.M), (
        again.stdout
    )
    assert "Ready in" in again.stdout
    _assert_clean(directory)
