"""``--help`` explains every verb (a description, each sub-command in one line, an example), and
``choreo-dp completion bash|zsh`` prints a script that completes what the parser accepts."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

from choreo_dp.cli.completion_cmd import walk
from choreo_dp.cli.main import build_parser, main


def _parsers(
    parser: argparse.ArgumentParser, path: str = ""
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:  # argparse keeps sub-parsers only here
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers(child, f"{path} {name}".strip())


ALL = list(_parsers(build_parser()))


def test_the_tree_holds_every_verb() -> None:
    paths = {path for path, _ in ALL}
    assert {
        "operator",
        "agent",
        "run",
        "crds",
        "completion",
        "control-plane serve",
        "sandbox cluster",
    } <= paths
    assert {"cp apply", "cp get", "cp delete", "cp register", "cp promote"} <= paths


@pytest.mark.parametrize(("path", "parser"), ALL, ids=[p or "choreo-dp" for p, _ in ALL])
def test_every_verb_describes_itself_with_an_example(path: str, parser: argparse.ArgumentParser) -> None:
    text = parser.format_help()
    assert parser.description and parser.description in text
    assert parser.epilog and "example" in parser.epilog and "choreo-dp " in parser.epilog
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            listed = {a.dest: a.help for a in action._choices_actions}
            assert set(listed) == set(action.choices), f"{path}: a sub-command without a line in --help"
            for name, summary in listed.items():
                assert summary and "\n" not in summary and len(summary) <= 160, f"{path} {name}: {summary!r}"
                assert f"    {name}" in text and summary.split()[0] in text


def test_help_runs_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    for path, _ in ALL:
        with pytest.raises(SystemExit) as info:
            main([*path.split(), "--help"])
        assert info.value.code == 0, path
        out = capsys.readouterr().out
        assert out.startswith("usage: choreo-dp") and "examples:" in out, path


# -- completion ----------------------------------------------------------------------------------
def _script(shell: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "choreo_dp.cli.main", "completion", shell],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return proc.stdout


@pytest.fixture(scope="module")
def bash_script() -> str:
    return _script("bash")


def complete(script: str, line: str) -> list[str]:
    """What bash offers for ``line`` (the word under the cursor is the last one; "" after a space)."""
    words = line.split(" ")
    program = (
        f"{script}\n"
        f"COMP_WORDS=({' '.join(repr(w) for w in words)})\n"
        f"COMP_CWORD={len(words) - 1}\n"
        "_choreo_dp\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    proc = subprocess.run(
        ["bash", "--norc", "-c", program], capture_output=True, text=True, timeout=30, check=True
    )
    return [w for w in proc.stdout.splitlines() if w]


def test_bash_script_is_valid_and_completes_what_the_parser_accepts(bash_script: str) -> None:
    subprocess.run(["bash", "-n"], input=bash_script, text=True, check=True, timeout=30)
    verbs = complete(bash_script, "choreo-dp ")
    assert verbs == ["operator", "agent", "run", "control-plane", "cp", "sandbox", "crds", "completion"]
    assert complete(bash_script, "choreo-dp c") == ["control-plane", "cp", "crds", "completion"]
    assert complete(bash_script, "choreo-dp cp g") == ["get"]
    assert "apps" in complete(bash_script, "choreo-dp cp get ") and "environments" in complete(
        bash_script, "choreo-dp cp get "
    )
    # options and their choices, also after other options and their values
    assert complete(bash_script, "choreo-dp cp get apps --url http://x -o ") == [
        "table",
        "wide",
        "json",
        "yaml",
    ]
    assert complete(bash_script, "choreo-dp cp apply -f x.yaml --dat") == ["--dataplane"]
    assert complete(bash_script, "choreo-dp --log") == []  # global options only
    assert "--log-level" in complete(bash_script, "choreo-dp operator --log")
    assert complete(bash_script, "choreo-dp sandbox --kube ") == []  # a free value: the shell's default
    assert complete(bash_script, "choreo-dp completion ") == ["bash", "zsh"]
    assert complete(bash_script, "choreo-dp sandbox c") == ["cluster"]


def test_bash_script_is_generated_from_the_parser(bash_script: str) -> None:
    for path, command in walk(build_parser()).items():
        for option in command.options:
            assert option in bash_script, (path, option)
        for sub in command.subcommands:
            assert sub in bash_script, (path, sub)


def test_zsh_script_loads_the_same_function() -> None:
    script = _script("zsh")
    assert "bashcompinit" in script and "complete -o default -F _choreo_dp choreo-dp" in script
    if shutil.which("zsh"):
        subprocess.run(["zsh", "-n"], input=script, text=True, check=True, timeout=30)
