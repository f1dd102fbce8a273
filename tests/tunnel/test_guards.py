"""The agent's pure refusal rules (choreo_dp.agent.guards)."""

from __future__ import annotations

from pathlib import Path

import pytest

from choreo_dp.agent import guards as G


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CHOREO_DP_PROTECTED_NAMESPACES", "CHOREO_DP_OPERATOR_NAMESPACE", "POD_NAMESPACE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(G, "SERVICE_ACCOUNT_NAMESPACE", Path("/nonexistent/namespace"))


def test_default_protected_namespaces() -> None:
    protected = G.ProtectedNamespaces(G.default_protected_namespaces())
    for ns in ("kube-system", "kube-public", "kube-node-lease", "default", "choreo-system"):
        assert protected.refusal(ns), ns
    for ns in ("kube", "mykube-system", "default2", "choreo-dev", "monitoring"):
        assert protected.refusal(ns) is None, ns


def test_configured_list_replaces_defaults_but_never_unprotects_the_product(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CHOREO_DP_PROTECTED_NAMESPACES", "monitoring, team-*")
    monkeypatch.setenv("CHOREO_DP_OPERATOR_NAMESPACE", "platform")
    sa = tmp_path / "namespace"
    sa.write_text("agent-ns\n")
    monkeypatch.setattr(G, "SERVICE_ACCOUNT_NAMESPACE", sa)
    protected = G.ProtectedNamespaces(G.default_protected_namespaces())
    for ns in ("monitoring", "team-a", "platform", "agent-ns"):
        assert protected.refusal(ns), ns
    assert protected.refusal("kube-system") is None  # replaced: the operator refuses it anyway
    monkeypatch.setenv("POD_NAMESPACE", "pod-ns")
    assert G.ProtectedNamespaces(G.default_protected_namespaces()).refusal("pod-ns")


def test_the_oldest_claim_owns_a_namespace() -> None:
    claims = [
        G.Claim("2024-05-02T00:00:00Z", "b"),
        G.Claim("2024-05-01T00:00:00Z", "c"),
        G.Claim("", "a"),  # no timestamp: never outranks a real one
    ]
    assert G.namespace_owner(claims) == "c"
    assert (
        G.namespace_owner([G.Claim("2024-05-01T00:00:00Z", "z"), G.Claim("2024-05-01T00:00:00Z", "y")]) == "y"
    )
    assert G.namespace_owner([]) is None


def test_spec_size_limit() -> None:
    assert G.spec_size_refusal(b"x" * G.MAX_SPEC_BYTES) is None
    reason = G.spec_size_refusal(b"x" * (G.MAX_SPEC_BYTES + 1))
    assert reason is not None and str(G.MAX_SPEC_BYTES) in reason


@pytest.mark.parametrize(
    "registry",
    [None, "ghcr.io/", {"allowedPrefixes": "ghcr.io/"}, {"allowedPrefixes": [1, None]}, {}],
)
def test_malformed_allowlists_admit_nothing(registry: object) -> None:
    env = {"metadata": {"name": "dev"}, "spec": {"registry": registry}}
    reason = G.app_image_refusal({"image": "ghcr.io/acme/x:1"}, env)
    assert reason is not None and "'dev'" in reason


def test_allowlist_is_the_environments() -> None:
    env = {"metadata": {"name": "dev"}, "spec": {"registry": {"allowedPrefixes": ["ghcr.io/acme/"]}}}
    assert G.app_image_refusal({"image": "ghcr.io/acme/x:1"}, env) is None
    assert G.app_image_refusal({"image": "ghcr.io/acme.evil.io/x:1"}, env)
    assert G.app_image_refusal({}, env)
