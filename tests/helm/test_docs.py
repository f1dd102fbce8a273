"""The install commands the README and docs/helm.md show are accepted by the chart."""

from __future__ import annotations

import re
import shlex

import pytest

from tests.helm.chart import CHART, REPO, run_helm

DOCS = ["README.md", "docs/helm.md"]


def install_commands(text: str) -> list[list[str]]:
    joined = text.replace("\\\n", " ")
    return [shlex.split(m) for m in re.findall(r"^helm install .*$", joined, flags=re.MULTILINE)]


@pytest.mark.parametrize("doc", DOCS)
def test_documented_install_renders(doc: str) -> None:
    commands = install_commands((REPO / doc).read_text())
    assert commands, f"{doc} shows no `helm install`"
    for argv in commands:
        assert argv[3] == "deploy/helm/choreo-dp"
        sets = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--set"]
        assert sets
        args = ["template", argv[2], str(CHART), "--namespace", "choreo-system"]
        for item in sets:
            args += ["--set", item]
        result = run_helm(*args)
        assert result.returncode == 0, f"{doc}: {' '.join(argv)}\n{result.stderr}"
