"""The CLI surface: every verb of the contract, one-line errors with exit 2, env-var configuration."""

from __future__ import annotations

import subprocess
import sys

import pytest

from choreo_dp.cli.main import build_parser, main

VERBS = ["operator", "agent", "run", "control-plane", "cp", "sandbox", "crds"]


def test_help_lists_every_verb() -> None:
    text = build_parser().format_help()
    for verb in VERBS:
        assert verb in text


@pytest.mark.parametrize(
    "argv",
    [
        ["operator", "--help"],
        ["agent", "--help"],
        ["run", "--help"],
        ["control-plane", "serve", "--help"],
        ["cp", "apply", "--help"],
        ["cp", "delete", "--help"],
        ["cp", "get", "--help"],
        ["sandbox", "--help"],
        ["sandbox", "apiserver", "--help"],
        ["crds", "--help"],
    ],
)
def test_every_verb_has_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    assert "usage:" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["operator", "--metrics-port", "notaport"],
        ["operator", "--no-such-flag"],
        ["agent", "--dataplane", "x"],
        ["bogus-verb"],
        ["sandbox", "apiserver", "--port", "70000", "--kubeconfig", "k"],
    ],
)
def test_bad_flags_exit_2_with_one_line(argv: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "choreo_dp.cli.main", *argv], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0], proc.stderr


def test_options_come_from_choreo_dp_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHOREO_DP_METRICS_PORT", "9999")
    monkeypatch.setenv("CHOREO_DP_LOG_FORMAT", "json")
    args = build_parser().parse_args(["operator"])
    assert args.metrics_port == 9999 and args.log_format == "json"


def test_bad_env_value_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CHOREO_DP_METRICS_PORT", "abc")
    assert main(["operator"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CHOREO_DP_METRICS_PORT" in err[0]


def test_bad_default_key_vault_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CHOREO_DP_DEFAULT_KEYVAULT_URL", "http://not-https.example")
    assert main(["operator"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CHOREO_DP_DEFAULT_KEYVAULT" in err[0]


def test_default_key_vault_comes_from_the_charts_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from choreo_dp.operator.config import default_key_vault_from_env

    assert default_key_vault_from_env() is None
    monkeypatch.setenv("CHOREO_DP_DEFAULT_KEYVAULT_URL", "https://acme.vault.azure.net/")
    monkeypatch.setenv("CHOREO_DP_DEFAULT_KEYVAULT_REFRESH_INTERVAL", "15m")
    kv = default_key_vault_from_env()
    assert kv.url == "https://acme.vault.azure.net/" and kv.refresh_seconds == 900 and kv.client_id is None
