"""``choreo-dp sandbox apiserver`` and ``choreo-dp sandbox cluster``: print where they listen once
they serve, write a working kubeconfig, stop cleanly on a signal, refuse bad flags in one line."""

from __future__ import annotations

import os
import queue
import re
import signal
import ssl
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from tests.conformance.helpers import api_client, wait_for
from tests.fixtures.kube import kubectl_runner

CLI = [sys.executable, "-m", "choreo_dp.cli.main", "sandbox"]
CLUSTER_START = 240.0  # etcd, kube-apiserver, controllers and kwok from cold, on a shared machine


@pytest.mark.emulator_only
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_apiserver_serves_until_signalled(tmp_path: Path, sig: signal.Signals) -> None:
    kc = tmp_path / "kubeconfig"
    proc = subprocess.Popen(
        [*CLI, "apiserver", "--port", "0", "--kubeconfig", str(kc), "--simulate-workloads"],
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


@pytest.mark.emulator_only
def test_apiserver_bad_port_is_a_usage_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*CLI, "apiserver", "--port", "99999", "--kubeconfig", str(tmp_path / "k")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1


def _descendants(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (from /proc; the components run in sessions of their own)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z":
            parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


@pytest.mark.real_apiserver
def test_cluster_serves_until_sigterm(tmp_path: Path) -> None:
    kc = tmp_path / "admin.kubeconfig"
    scratch = tmp_path / "tmp"  # where the cluster keeps its data directory (TMPDIR)
    scratch.mkdir()
    env = dict(os.environ, TMPDIR=str(scratch))
    proc = subprocess.Popen(
        [*CLI, "cluster", "--port", "0", "--kubeconfig", str(kc), "--nodes", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    children: set[int] = set()
    try:
        try:
            line = lines.get(timeout=CLUSTER_START)
        except queue.Empty:
            raise AssertionError(f"no line within {CLUSTER_START}s") from None
        m = re.fullmatch(r"listening on https://127\.0\.0\.1:(\d+)\n", line)
        assert m, line
        port = int(m.group(1))
        # the line comes only once kube-apiserver says it is ready
        doc = yaml.safe_load(kc.read_text())
        assert doc["clusters"][0]["cluster"]["server"] == f"https://127.0.0.1:{port}"
        api = api_client(kc)
        try:
            ctx = ssl.create_default_context(cafile=api.configuration.ssl_ca_cert)
            ctx.load_cert_chain(api.configuration.cert_file, api.configuration.key_file)
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/readyz", context=ctx, timeout=10) as r:
                assert (r.status, r.read()) == (200, b"ok")
        finally:
            api.close()
        # the admin kubeconfig works with the kubectl built alongside the control plane
        kubectl = kubectl_runner(kc, tmp_path / "kubectl-cache")
        assert kubectl("auth", "can-i", "*", "*").stdout.strip() == "yes"
        nodes = kubectl("get", "nodes", "-o", "jsonpath={.items[*].metadata.name}").stdout.split()
        assert nodes == ["kwok-node-0"]
        assert [d.name for d in scratch.iterdir()], "the cluster keeps its data under TMPDIR"
        children = _descendants(proc.pid)
        assert len(children) >= 5, children  # etcd, kube-apiserver, controller-manager, scheduler, kwok
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _out, err = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, err
    wait_for(lambda: not [p for p in children if _alive(p)], timeout=10, what="every component to exit")
    assert list(scratch.iterdir()) == [], "the data directory is removed"


def _cluster_cli(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "cluster", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        cwd=tmp_path,
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--port", "99999", "--kubeconfig", "k"],
        ["--port", "0", "--kubeconfig", "k", "--nodes", "0"],
        ["--port", "0"],
        ["--port", "0", "--kubeconfig", "k", "--no-such-flag"],
    ],
)
def test_cluster_bad_flags_are_one_line_exit_2(tmp_path: Path, args: list[str]) -> None:
    proc = _cluster_cli(tmp_path, *args)
    assert proc.returncode == 2, proc
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stdout == ""


def test_cluster_without_binaries_says_so_in_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    proc = _cluster_cli(tmp_path, "--port", "0", "--kubeconfig", "k", env={"CHOREO_DP_KUBE_BIN": str(empty)})
    assert proc.returncode == 2, proc
    (line,) = proc.stderr.strip().splitlines()
    assert str(empty) in line and "kube-apiserver" in line and "tools/kube/build.py" in line, line
    assert not (tmp_path / "k").exists()
