"""The ClusterRoles grant what the code actually calls: a forbidden call fails only in a real cluster.

The emulated API does not enforce RBAC, so this checks statically: every ``R.<RESOURCE>`` the
agent's and operator's modules use, every kind the operator renders and every kind it watches
must be granted by the chart's ClusterRole for that component.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from choreo_dp.kube import resources as R
from tests.helm.chart import FULLNAME, REPO, SCENARIOS, one
from tests.helm.test_chart import grants

SRC = REPO / "src" / "choreo_dp"
AGENT_CODE = [SRC / "tunnel", SRC / "cli" / "agent_cmd.py"]
OPERATOR_CODE = [SRC / "operator", SRC / "secrets", SRC / "render", SRC / "cli" / "operator_cmd.py"]
APPLY_VERBS = {"get", "list", "watch", "create", "patch", "delete"}

KNOWN = {name: value for name, value in vars(R).items() if isinstance(value, R.Resource)}
BY_KIND = {res.kind: res for res in KNOWN.values()}


def python_files(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out += sorted(path.rglob("*.py"))
        elif path.exists():
            out.append(path)
    return out


def resources_named(paths: list[Path]) -> set[tuple[str, str]]:
    used: set[tuple[str, str]] = set()
    for file in python_files(paths):
        text = file.read_text()
        for name in re.findall(r"\bR\.([A-Z][A-Z_]+)\b", text):
            assert name in KNOWN, f"{file}: R.{name} is not in choreo_dp.kube.resources"
            used.add((KNOWN[name].group, KNOWN[name].plural))
        if "post_event(" in text:
            used.add(("", "events"))
    return used


def kinds_rendered(paths: list[Path]) -> set[tuple[str, str]]:
    used: set[tuple[str, str]] = set()
    for file in python_files(paths):
        for kind in re.findall(r"\"kind\": \"([A-Z]\w+)\"", file.read_text()):
            if kind in BY_KIND:
                used.add((BY_KIND[kind].group, BY_KIND[kind].plural))
    return used


def role(component: str) -> dict[tuple[str, str], set[str]]:
    return grants(one(SCENARIOS["defaults"].render(), "ClusterRole", f"{FULLNAME}-{component}"))


def test_operator_role_covers_what_the_operator_calls() -> None:
    granted = role("operator")
    missing = sorted(k for k in resources_named(OPERATOR_CODE) if k not in granted)
    assert not missing, f"the operator calls resources its ClusterRole does not grant: {missing}"


def test_operator_can_apply_what_it_renders_and_watch_what_it_watches() -> None:
    handlers = pytest.importorskip("choreo_dp.operator.handlers")
    granted = role("operator")
    rendered = kinds_rendered([SRC / "render"]) - {
        ("gateway.networking.k8s.io", "gateways")
    }  # parentRef only
    assert rendered, "no rendered kinds found: the scan is broken"
    for key in sorted(rendered):
        assert granted.get(key, set()) >= APPLY_VERBS, f"operator renders {key} but may not manage it"
    watched = {(g, p) for g, _v, p in handlers.watched_children(True)} | {
        (handlers.PODS[0], handlers.PODS[2])
    }
    watched |= {("choreo.dev", "environments"), ("choreo.dev", "choreoapps")}
    for key in sorted(watched):
        assert {"list", "watch"} <= granted.get(key, set()), f"operator watches {key} without list/watch"


def test_agent_role_covers_what_the_agent_calls() -> None:
    granted = role("agent")
    used = resources_named(AGENT_CODE)
    assert ("choreo.dev", "choreoapps") in used  # the scan sees the agent's calls
    missing = sorted(k for k in used if k not in granted)
    assert not missing, f"the agent calls resources its ClusterRole does not grant: {missing}"
