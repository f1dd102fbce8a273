"""Golden tests: rendered manifests must equal the reviewed YAML under tests/render/golden/.

Regenerate after an intended change with ``CHOREO_DP_UPDATE_GOLDEN=1 pytest tests/render`` and
review the diff like code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from choreo_dp.render import render_app, render_environment
from tests.render.cases import APP_CASES, ENV_CASES

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("CHOREO_DP_UPDATE_GOLDEN") == "1"


def _check(name: str, docs: list[dict[str, Any]]) -> None:
    path = GOLDEN / f"{name}.yaml"
    text = yaml.safe_dump_all(docs, sort_keys=False, width=120)
    if UPDATE:
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run with CHOREO_DP_UPDATE_GOLDEN=1"
    expected = list(yaml.safe_load_all(path.read_text()))
    assert docs == expected, (
        f"{name} differs from {path}; regenerate with CHOREO_DP_UPDATE_GOLDEN=1 if intended"
    )


@pytest.mark.parametrize("case", sorted(APP_CASES))
def test_app_golden(case: str) -> None:
    app, env, caps, secrets_hash = APP_CASES[case]
    rendered = render_app(app, env, caps, secrets_hash=secrets_hash)
    status = [
        {"endpoint": e.endpoint.name, "url": e.url, "problem": list(e.problem) if e.problem else None}
        for e in rendered.exposures
    ]
    _check(f"app-{case}", [*rendered.manifests, {"exposures": status}])


@pytest.mark.parametrize("case", sorted(ENV_CASES))
def test_environment_golden(case: str) -> None:
    env, projects, pull_secret, agent_sa = ENV_CASES[case]
    _check(
        case,
        render_environment(env, projects=projects, pull_secret=pull_secret, agent_service_account=agent_sa),
    )


def test_every_golden_file_has_a_case() -> None:
    expected = {f"app-{c}.yaml" for c in APP_CASES} | {f"{c}.yaml" for c in ENV_CASES}
    # app-canary-*.yaml belong to tests/render/test_rollout.py, which checks them the same way.
    assert {p.name for p in GOLDEN.glob("*.yaml") if not p.name.startswith("app-canary-")} == expected
