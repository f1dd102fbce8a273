"""The canary layout: golden files for each phase (gateway and ingress), and its rules.

Regenerate the golden files after an intended change with ``CHOREO_DP_UPDATE_GOLDEN=1 pytest
tests/render/test_rollout.py`` and review the diff like code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from choreo_dp.api.rollout import RolloutStatus
from choreo_dp.api.vocabulary import TEMPLATE_HASH_ANNOTATION, TRACK_LABEL
from choreo_dp.render import ClusterCapabilities, RenderError, render_app
from choreo_dp.render.rollout import canary_replicas, http_check_url
from tests.render.cases import GATEWAY_API, INGRESS_ONLY, app, endpoint, environment

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("CHOREO_DP_UPDATE_GOLDEN") == "1"

ROLLOUT = {"strategy": "Canary", "steps": [{"weight": 10, "pause": "30s"}, {"weight": 50, "pause": "manual"}]}
CANARY_SPEC: dict[str, Any] = {
    "replicas": 4,
    "image": "registry.example.com/shop/orders:1.3.0",
    "endpoints": [endpoint("api", "Public", base_path="/v1")],
    "rollout": ROLLOUT,
}
OLD_IMAGE = "registry.example.com/shop/orders:1.2.3"
STABLE_REV = "0123456789abcdef"
CANARY_REV = "fedcba9876543210"


def _live_stable_template() -> dict[str, Any]:
    """What the stable Deployment runs: the previous image, as the cluster reports it back."""
    old = render_app(app(**{**CANARY_SPEC, "image": OLD_IMAGE}), environment(), GATEWAY_API)
    template: dict[str, Any] = old.workload["spec"]["template"]
    template["metadata"]["creationTimestamp"] = None
    return template


def _state(phase: str, step: int, weight: int) -> RolloutStatus:
    return RolloutStatus(
        phase=phase,
        step=step,
        weight=weight,
        stable_revision=STABLE_REV,
        canary_revision=CANARY_REV,
        started_at="2026-01-01T12:00:00Z",
        step_started_at="2026-01-01T12:00:00Z",
    )


# case -> (capabilities, rollout state or None)
CANARY_CASES: dict[str, tuple[ClusterCapabilities, RolloutStatus | None]] = {
    "idle-gateway": (GATEWAY_API, None),
    "step1-gateway": (GATEWAY_API, _state("Progressing", 1, 10)),
    "step2-paused-gateway": (GATEWAY_API, _state("Paused", 2, 50)),
    "promoting-gateway": (GATEWAY_API, _state("Promoting", 2, 50)),
    "aborted-gateway": (GATEWAY_API, _state("Aborted", 1, 0)),
    "completed-gateway": (GATEWAY_API, _state("Completed", 2, 0)),
    "step1-ingress": (INGRESS_ONLY, _state("Progressing", 1, 10)),
    "step2-paused-ingress": (INGRESS_ONLY, _state("Paused", 2, 50)),
    "aborted-ingress": (INGRESS_ONLY, _state("Aborted", 1, 0)),
}


def _render(caps: ClusterCapabilities, state: RolloutStatus | None, **spec: Any) -> Any:
    return render_app(
        app(**{**CANARY_SPEC, **spec}),
        environment(),
        caps,
        rollout=state,
        stable_template=_live_stable_template(),
    )


def _by(manifests: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name)


@pytest.mark.parametrize("case", sorted(CANARY_CASES))
def test_canary_golden(case: str) -> None:
    caps, state = CANARY_CASES[case]
    rendered = _render(caps, state)
    extra = {"templateRevision": rendered.template_revision, "rolloutNote": rendered.rollout_note}
    docs = [*rendered.manifests, extra]
    path = GOLDEN / f"app-canary-{case}.yaml"
    if UPDATE:
        path.write_text(yaml.safe_dump_all(docs, sort_keys=False, width=120))
    assert path.exists(), f"missing golden file {path}; run with CHOREO_DP_UPDATE_GOLDEN=1"
    assert docs == list(yaml.safe_load_all(path.read_text())), f"{case} differs from {path}"


def test_every_canary_golden_file_has_a_case() -> None:
    assert {p.name for p in GOLDEN.glob("app-canary-*.yaml")} == {
        f"app-canary-{c}.yaml" for c in CANARY_CASES
    }


def test_rolling_update_strategy_renders_like_no_rollout() -> None:
    plain = render_app(app(**{**CANARY_SPEC, "rollout": None}), environment(), GATEWAY_API)
    rolling = render_app(
        app(**{**CANARY_SPEC, "rollout": {"strategy": "RollingUpdate"}}), environment(), GATEWAY_API
    )
    assert rolling.manifests == plain.manifests
    assert rolling.template_revision is None and plain.template_revision is None


def test_idle_marks_the_stable_track_and_its_template_hash() -> None:
    rendered = _render(GATEWAY_API, None)
    dep = rendered.workload
    assert dep["spec"]["template"]["metadata"]["labels"][TRACK_LABEL] == "stable"
    assert dep["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION] == rendered.template_revision
    assert [m["kind"] for m in rendered.manifests].count("Deployment") == 1


def test_template_revision_follows_the_pod_template_only() -> None:
    base = _render(GATEWAY_API, None).template_revision
    assert _render(GATEWAY_API, None, replicas=7).template_revision == base
    assert _render(GATEWAY_API, None, rollout={**ROLLOUT, "promote": 2}).template_revision == base
    assert _render(GATEWAY_API, None, image="registry.example.com/shop/orders:9").template_revision != base


@pytest.mark.parametrize("weight", [1, 10, 25, 50, 99])
def test_gateway_weights_add_up_and_stable_keeps_its_template(weight: int) -> None:
    rendered = _render(GATEWAY_API, _state("Progressing", 1, weight))
    route = _by(rendered.manifests, "HTTPRoute", "orders-api")
    refs = route["spec"]["rules"][0]["backendRefs"]
    assert [(r["name"], r["weight"]) for r in refs] == [
        ("orders-stable", 100 - weight),
        ("orders-canary", weight),
    ]
    stable = _by(rendered.manifests, "Deployment", "orders")
    canary = _by(rendered.manifests, "Deployment", "orders-canary")
    assert stable["spec"]["template"]["spec"]["containers"][0]["image"] == OLD_IMAGE
    assert canary["spec"]["template"]["spec"]["containers"][0]["image"] == CANARY_SPEC["image"]
    assert stable["spec"]["replicas"] == 4
    assert canary["spec"]["replicas"] == canary_replicas(4, weight, weighted_routes=True) >= 1
    assert canary["spec"]["selector"]["matchLabels"][TRACK_LABEL] == "canary"
    assert _by(rendered.manifests, "Service", "orders")["spec"]["selector"] == {"choreo.dev/app": "orders"}
    assert _by(rendered.manifests, "Service", "orders-canary")["spec"]["selector"][TRACK_LABEL] == "canary"


def test_ingress_splits_by_replicas_and_says_so() -> None:
    rendered = _render(INGRESS_ONLY, _state("Progressing", 1, 25))
    assert _by(rendered.manifests, "Deployment", "orders-canary")["spec"]["replicas"] == 1
    assert _by(rendered.manifests, "Deployment", "orders")["spec"]["replicas"] == 3
    assert rendered.rollout_note is not None and "approximate" in rendered.rollout_note
    ingress = _by(rendered.manifests, "Ingress", "orders-api")
    assert ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] == "orders"


@pytest.mark.parametrize("caps", [GATEWAY_API, INGRESS_ONLY])
def test_abort_sends_nothing_to_the_canary(caps: ClusterCapabilities) -> None:
    rendered = _render(caps, _state("Aborted", 2, 0))
    assert _by(rendered.manifests, "Deployment", "orders-canary")["spec"]["replicas"] == 0
    stable = _by(rendered.manifests, "Deployment", "orders")
    assert stable["spec"]["replicas"] == 4
    assert stable["spec"]["template"]["spec"]["containers"][0]["image"] == OLD_IMAGE
    for route in (m for m in rendered.manifests if m["kind"] == "HTTPRoute"):
        weights = {r["name"]: r["weight"] for r in route["spec"]["rules"][0]["backendRefs"]}
        assert weights == {"orders-stable": 100, "orders-canary": 0}


def test_a_rollout_without_the_stable_template_is_refused() -> None:
    with pytest.raises(RenderError) as err:
        render_app(app(**CANARY_SPEC), environment(), GATEWAY_API, rollout=_state("Progressing", 1, 10))
    assert err.value.reason == "StableTemplateUnknown"


def test_long_app_names_keep_track_names_within_a_dns_label() -> None:
    name = "a" * 63
    rendered = render_app(
        app(name, **CANARY_SPEC),
        environment(),
        GATEWAY_API,
        rollout=_state("Progressing", 1, 10),
        stable_template=_live_stable_template(),
    )
    keys = [
        (m["kind"], m["metadata"]["name"])
        for m in rendered.manifests
        if m["kind"] in ("Service", "Deployment")
    ]
    assert all(len(n) <= 63 for _, n in keys) and len(set(keys)) == len(keys) == 5
    # stable, canary, and the Service of both tracks: three distinct names
    assert len({n for _, n in keys}) == 3


@pytest.mark.parametrize(
    ("total", "weight", "weighted", "expected"),
    [
        (4, 10, True, 1),
        (4, 10, False, 1),
        (10, 25, False, 3),
        (10, 50, True, 5),
        (0, 50, True, 0),
        (3, 99, False, 3),
    ],
)
def test_canary_replicas(total: int, weight: int, weighted: bool, expected: int) -> None:
    assert canary_replicas(total, weight, weighted_routes=weighted) == expected


def test_http_check_targets_the_canary_service() -> None:
    check = {**ROLLOUT, "analysis": {"httpGet": {"path": "/healthz"}}}
    assert http_check_url(app(**{**CANARY_SPEC, "rollout": check})) == (
        "http://orders-canary.choreo-dev.svc.cluster.local:8080/healthz"
    )
    on_port = {**ROLLOUT, "analysis": {"httpGet": {"path": "/ready", "port": 9090}}}
    assert http_check_url(app(**{**CANARY_SPEC, "rollout": on_port})).endswith(":9090/ready")  # type: ignore[union-attr]
    assert http_check_url(app(**CANARY_SPEC)) is None
    assert http_check_url(app(**{**CANARY_SPEC, "endpoints": [], "rollout": check})) is None
