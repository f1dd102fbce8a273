"""What can be checked of the image without a Docker daemon.

It builds the package the tests install (the project from pyproject.toml, with every file its build
needs in the build context), runs as the non-root uid the chart expects, ships no build tools, and
its entry point is the console script the chart's ``command`` names.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shlex
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.helm.chart import CHART, REPO, SCENARIOS, container, deployment

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
SETUPTOOLS = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse_dockerfile(text: str) -> list[Stage]:
    # Join continuation lines, drop comments and the parser directive.
    logical: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
        elif keyword == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], parts[0])
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        else:
            stages[-1].instructions.append((keyword, rest.strip()))
    return stages


STAGES = parse_dockerfile(DOCKERFILE.read_text())
BUILDER, FINAL = STAGES[0], STAGES[-1]


def test_multi_stage_on_python_slim() -> None:
    assert len(STAGES) == 2
    assert BUILDER.name == "builder"
    assert FINAL.base == BUILDER.base == "python:3.11-slim"
    # The image's Python satisfies the project's requirement.
    assert PROJECT["requires-python"] == ">=3.11"


def test_builder_builds_the_project_wheel_with_everything_it_needs() -> None:
    copied: set[str] = set()
    for args in BUILDER.all("COPY"):
        *sources, _dest = shlex.split(args)
        copied.update(s.rstrip("/") for s in sources if not s.startswith("--"))
    needed = {"pyproject.toml", PROJECT["readme"], *SETUPTOOLS["packages"]["find"]["where"]}
    assert needed <= copied, f"the build context lacks {needed - copied}"
    run = " ".join(BUILDER.all("RUN"))
    assert re.search(r"pip wheel .*--wheel-dir /wheels \.(\s|$)", run), run
    # Installs exactly this project (by its distribution name) from the wheels just built.
    assert re.search(rf"pip install --no-index --find-links /wheels {re.escape(PROJECT['name'])}\b", run), run


def test_image_holds_only_the_data_plane() -> None:
    """The wheel the image installs holds choreo_dp and the wire protocol, without any extra: the
    control plane, the emulated API and the sandbox (and FastAPI, uvicorn, jsonpatch) stay out."""
    run = " ".join(BUILDER.all("RUN"))
    removed = re.search(r"rm -rf ((?:src/\S+\s+)+)&& pip wheel ", run)
    assert removed, run
    packages = {p.name for p in (REPO / "src").iterdir() if (p / "__init__.py").is_file()}
    assert {path.removeprefix("src/") for path in removed.group(1).split()} == packages - {
        "choreo_dp",
        "choreo_wire",
    }
    install = re.search(r"pip install --no-index --find-links /wheels (\S+)", run)
    assert install and install.group(1) == PROJECT["name"], "the image installs no extra"
    base = " ".join(PROJECT["dependencies"]).lower()
    for library in ("fastapi", "uvicorn", "httpx", "jsonpatch", "jsonschema", "kubernetes"):
        assert library not in base, library


def test_final_stage_is_non_root_without_build_tools() -> None:
    users = FINAL.all("USER")
    assert users == ["65532:65532"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == 65532
    assert values["podSecurityContext"]["runAsGroup"] == 65532
    run = " ".join(FINAL.all("RUN"))
    for tool in ("apt-get", "apk", "gcc", "build-essential", "pip install", "pip wheel", "make"):
        assert tool not in run, f"final stage runs {tool}"
    copies = FINAL.all("COPY")
    assert copies and all(c.startswith("--from=builder ") for c in copies), copies


def test_entrypoint_is_the_console_script_the_chart_runs() -> None:
    (entrypoint,) = FINAL.all("ENTRYPOINT")
    assert json.loads(entrypoint) == ["choreo-dp"]
    assert list(PROJECT["scripts"]) == ["choreo-dp"]
    docs = SCENARIOS["defaults"].render()
    for component in ("operator", "agent"):
        ctr = container(deployment(docs, component))
        assert ctr["command"] == json.loads(entrypoint)
        assert ctr["args"][0] == component


def test_installed_package_is_the_one_the_image_builds() -> None:
    """The tests run against the same distribution (name, version, entry point) the image installs."""
    dist = importlib.metadata.distribution(PROJECT["name"])
    assert dist.version == PROJECT["version"]
    scripts = {ep.name: ep.value for ep in dist.entry_points if ep.group == "console_scripts"}
    assert scripts == PROJECT["scripts"]
    assert scripts["choreo-dp"] == "choreo_dp.cli.main:main"


def test_exposed_ports_are_the_chart_defaults() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    exposed = {int(p) for args in FINAL.all("EXPOSE") for p in args.split()}
    for component in ("operator", "agent"):
        assert {values[component]["metricsPort"], values[component]["healthPort"]} <= exposed


def docker_pattern(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore matching: ``*`` stays within a path element, ``**`` spans any number."""
    out = ""
    i = 0
    pattern = pattern.strip("/")
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def dockerignored(patterns: list[str], path: str) -> bool:
    """A pattern excludes a path or any of its parents (negation is not used, and checked)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(docker_pattern(pat).match(prefix) for pat in patterns for prefix in prefixes)


def test_dockerignore_keeps_the_build_inputs_and_drops_the_rest() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not [p for p in patterns if p.startswith("!")]
    tracked = subprocess.run(
        ["git", "ls-files", "src"], cwd=REPO, capture_output=True, text=True, check=True, timeout=30
    ).stdout.split()
    assert tracked
    inputs = ["pyproject.toml", PROJECT["readme"], *tracked]
    kept_out = [p for p in inputs if dockerignored(patterns, p)]
    assert not kept_out, f".dockerignore excludes build inputs: {kept_out}"
    for heavy in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", ".sandbox/kubeconfig"):
        assert dockerignored(patterns, heavy), heavy


@pytest.mark.parametrize(
    "path", ["src/choreo_dp/__pycache__/x.pyc", "__pycache__/a.pyc", "src/choreo_dp.egg-info/PKG-INFO"]
)
def test_dockerignore_drops_build_debris(path: str) -> None:
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip()]
    assert dockerignored(patterns, path)


def test_package_data_is_inside_src() -> None:
    """Files the package reads at run time must live under src/ (the only source the image copies)."""
    for pattern in SETUPTOOLS.get("package-data", {}).get("choreo_dp", []):
        assert list((REPO / "src" / "choreo_dp").glob(pattern)), pattern


def test_readme_exists_for_the_build() -> None:
    assert (REPO / PROJECT["readme"]).is_file()
    assert Path(DOCKERFILE).read_text().count("ENTRYPOINT") == 1
