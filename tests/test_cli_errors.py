"""Every verb of ``choreo-dp``, given bad input in a real process: one line on stderr, the right
exit code (2 for usage and configuration, 1 for a failure at run time), never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

# (id, argv, extra environment, exit code, a piece of the one line)
AGENT = ["--control-plane", "ws://127.0.0.1:1", "--insecure", "--dataplane", "x", "--token-file", "{token}"]
CASES: list[tuple[str, list[str], dict[str, str], int, str]] = [
    ("unknown-verb", ["bogus"], {}, 2, "invalid choice: 'bogus'"),
    ("log-level", ["operator", "--log-level", "verbose"], {}, 2, "invalid level 'verbose'"),
    ("log-level-env", ["operator"], {"CHOREO_DP_LOG_LEVEL": "verbose"}, 2, "CHOREO_DP_LOG_LEVEL='verbose'"),
    ("log-format-env", ["operator"], {"CHOREO_DP_LOG_FORMAT": "xml"}, 2, "CHOREO_DP_LOG_FORMAT='xml'"),
    ("operator-no-kubeconfig", ["operator"], {}, 2, "kubeconfig: "),
    ("operator-port", ["operator", "--health-port", "99999"], {}, 2, "port out of range"),
    ("agent-no-kubeconfig", ["agent", *AGENT], {}, 2, "(--kubeconfig FILE, or run in a pod)"),
    ("agent-missing-flag", ["agent", "--dataplane", "x"], {}, 2, "required"),
    ("agent-token-file", ["agent", *AGENT[:-1], "/nonexistent"], {}, 2, "--token-file: no such file"),
    ("run-no-kubeconfig", ["run", *AGENT], {}, 2, "kubeconfig: "),
    ("serve-listen", ["control-plane", "serve", "--listen", "nowhere"], {"CHOREO_DP_ADMIN_TOKEN": "t"}, 2, "HOST:PORT"),
    ("serve-no-verb", ["control-plane"], {}, 2, "required: VERB"),
    ("serve-rebalance", ["control-plane", "serve", "--rebalance-interval", "-1"], {"CHOREO_DP_ADMIN_TOKEN": "t"}, 2, "must be above 0 and at most 24h"),
    ("serve-rebalance-env", ["control-plane", "serve"], {"CHOREO_DP_REBALANCE_INTERVAL": "soon"}, 2, "CHOREO_DP_REBALANCE_INTERVAL='soon'"),
    ("cp-no-url", ["cp", "get", "apps"], {}, 2, "no control plane URL"),
    ("cp-kind", ["cp", "get", "bogus"], {}, 2, "invalid choice: 'bogus'"),
    ("cp-unreachable", ["cp", "get", "apps", "--url", "http://127.0.0.1:{port}"], {}, 1, "cannot reach the control plane"),
    ("cp-bad-yaml", ["cp", "apply", "-f", "{bad_yaml}", "--dataplane", "d", "--url", "http://127.0.0.1:{port}"], {}, 2, "not valid YAML"),
    ("cp-no-file", ["cp", "apply", "-f", "/nonexistent.yaml", "--dataplane", "d", "--url", "http://127.0.0.1:{port}"], {}, 2, "No such file"),
    ("cp-wait", ["cp", "apply", "-f", "-", "--dataplane", "d", "--wait=soon"], {}, 2, "invalid duration 'soon'"),
    ("cp-delete-app", ["cp", "delete", "app", "x", "--dataplane", "d", "--url", "http://127.0.0.1:{port}"], {}, 2, "needs --environment"),
    ("cp-ca-file", ["cp", "get", "apps", "--url", "https://127.0.0.1:{port}", "--ca-file", "/nonexistent"], {}, 2, "--ca-file /nonexistent"),
    ("cp-promote", ["cp", "promote", "a", "--from", "x", "--to", "y/z", "--url", "http://127.0.0.1:{port}"], {}, 2, "DATAPLANE/ENVIRONMENT"),
    ("sandbox-kube", ["sandbox", "--kube", "bogus"], {}, 2, "invalid choice: 'bogus'"),
    ("sandbox-apiserver", ["sandbox", "apiserver", "--port", "x", "--kubeconfig", "k"], {}, 2, "invalid port value"),
    ("sandbox-cluster", ["sandbox", "cluster", "--port", "0", "--kubeconfig", "k", "--nodes", "0"], {}, 2, "between 1 and 500"),
    ("crds", ["crds", "--output-dir", "/proc/not-here"], {}, 2, "--output-dir /proc/not-here"),
    ("completion", ["completion", "fish"], {}, 2, "invalid choice: 'fish'"),
]  # fmt: skip


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("argv", "env", "code", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_one_line_and_an_exit_code(
    argv: list[str], env: dict[str, str], code: int, message: str, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("t\n")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("kind: [unclosed\n")
    values = {"token": str(token), "bad_yaml": str(bad_yaml), "port": str(_closed_port())}
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CHOREO_DP_", "KUBERNETES_"))}
    # no kubeconfig anywhere: not in $KUBECONFIG, not in ~/.kube, not in a pod
    clean.update(HOME=str(tmp_path), KUBECONFIG="", CHOREO_DP_CP_TOKEN="admin", **env)
    proc = subprocess.run(
        [sys.executable, "-m", "choreo_dp.cli.main", *(a.format(**values) for a in argv)],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean,
        input="",
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_an_unexpected_error_is_one_line_unless_debugging(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from choreo_dp.cli import crds_cmd
    from choreo_dp.cli.main import DEBUG_ENV, main

    def broken(_: object) -> int:
        raise RuntimeError("something\nnobody expected")

    monkeypatch.setattr(crds_cmd, "run", broken)  # bound as the handler when main builds the parser
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    assert main(["crds", "--output-dir", "/tmp/x"]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        f"choreo-dp: error: RuntimeError: something nobody expected (set {DEBUG_ENV}=1 for the traceback)"
    )
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(RuntimeError):
        main(["crds", "--output-dir", "/tmp/x"])
