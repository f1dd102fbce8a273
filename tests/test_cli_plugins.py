"""`choreo-dp` keeps every verb while the data plane imports none of the other products.

The control plane's and the sandbox's verbs come from the ``choreo_dp.verbs`` entry points; when
their package or their extra's dependencies are missing the verb answers with one line naming the
extra to install (exit 2), and the data plane's own verbs work without them.
"""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from importlib.metadata import EntryPoint
from typing import Any

import pytest

from choreo_dp.cli import main as cli

CONTRACT_VERBS = {"operator", "agent", "run", "control-plane", "cp", "sandbox", "crds", "completion"}


def _verbs(parser: Any) -> dict[str, str]:
    (sub,) = [a for a in parser._actions if a.dest == "verb"]  # argparse keeps subparsers only there
    return {choice.dest: choice.help or "" for choice in sub._choices_actions}


def test_every_verb_is_installed_in_the_dev_environment() -> None:
    verbs = _verbs(cli.build_parser())
    assert set(verbs) == CONTRACT_VERBS
    assert not [v for v, help in verbs.items() if "not installed" in help]


def test_a_missing_extra_dependency_is_one_line_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = metadata.distribution

    class Fake:
        requires = [
            "aiohttp>=3",
            'choreo-dp[controlplane]; extra == "sandbox"',
            'surely-not-installed-lib>=1; extra == "controlplane"',
        ]

    monkeypatch.setattr(cli, "distribution", lambda name: Fake() if name == cli.DISTRIBUTION else real(name))
    for verb in (["cp", "get", "app", "x"], ["sandbox", "--once"]):
        assert cli.main(verb) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert "surely-not-installed-lib" in err and f"choreo-dp[{cli.PLUGIN_EXTRAS[verb[0]]}]" in err


def test_a_missing_package_keeps_the_verb_and_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    gone = EntryPoint(name="cp", value="no_such_package.cli:register", group=cli.ENTRY_POINT_GROUP)
    monkeypatch.setattr(cli, "entry_points", lambda group: [gone])
    verbs = _verbs(cli.build_parser())
    assert set(verbs) == CONTRACT_VERBS
    assert "not installed" in verbs["cp"] and "not installed" in verbs["control-plane"]
    assert cli.main(["cp", "get", "app", "x", "--dataplane", "d"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "choreo-dp[controlplane]" in err, err


def test_the_data_plane_runs_without_the_other_products_and_their_libraries() -> None:
    """As in the image: the control plane, emulator, sandbox and their libraries cannot be imported."""
    blocked = ("choreo_cp", "kube_emulator", "choreo_sandbox", "fastapi", "uvicorn", "httpx", "jsonpatch")
    script = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "from choreo_dp.cli.main import main\n"
        "for verb in (['operator', '--help'], ['agent', '--help'], ['run', '--help']):\n"
        "    try:\n"
        "        main(verb)\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, (verb, exc.code)\n"
        "assert not [m for m in " + repr(blocked) + " if sys.modules.get(m) is not None]\n"
        "sys.exit(main(['cp', 'get', 'app', 'x']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("choreo-dp: error: 'cp' needs the 'controlplane' extra ('choreo_cp"), line
    assert line.endswith("is not installed): pip install 'choreo-dp[controlplane]'"), line
