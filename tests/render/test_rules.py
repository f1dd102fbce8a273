"""Rules of the renderers beyond the golden files: schema validity, policy, field ownership."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from choreo_dp.render import RenderError, check_app_policy, render_app, render_environment
from choreo_dp.render.labels import APP_LABEL, ENVIRONMENT_LABEL, MANAGED_BY, PROJECT_LABEL, port_name
from tests.render.cases import (
    APP_CASES,
    APP_UID,
    ENV_CASES,
    GATEWAY_API,
    INGRESS_ONLY,
    app,
    endpoint,
    environment,
)

K8S_VERSION = "1.30.0"


def _all_manifests() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for case, (a, env, caps, h) in APP_CASES.items():
        out += [(case, m) for m in render_app(a, env, caps, secrets_hash=h).manifests]
    for case, (env, projects, secret, agent_sa) in ENV_CASES.items():
        rendered = render_environment(
            env, projects=projects, pull_secret=secret, agent_service_account=agent_sa
        )
        out += [(case, m) for m in rendered]
    return out


def test_core_manifests_are_schema_valid() -> None:
    checked = 0
    for case, manifest in _all_manifests():
        if manifest["apiVersion"].startswith("gateway.networking.k8s.io"):
            continue  # not in the core OpenAPI schemas
        try:
            kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{case}: {manifest['kind']} invalid: {exc}") from exc
        checked += 1
    assert checked > 30, f"only {checked} manifests checked"


def test_every_child_is_labelled_and_owned() -> None:
    for case, manifest in _all_manifests():
        labels = manifest["metadata"]["labels"]
        assert labels[MANAGED_BY] == "choreo-dp", case
        assert ENVIRONMENT_LABEL in labels, case
        if case in APP_CASES:
            assert labels[APP_LABEL] and labels[PROJECT_LABEL], case
            assert manifest["metadata"]["ownerReferences"][0]["uid"] == APP_UID
            assert manifest["metadata"]["ownerReferences"][0]["controller"] is True


def test_namespace_owned_by_environment_only_when_delete_policy() -> None:
    delete_ns = render_environment(environment())[0]
    retain_ns = render_environment(environment(deletionPolicy="Retain"))[0]
    assert delete_ns["kind"] == retain_ns["kind"] == "Namespace"
    assert delete_ns["metadata"]["ownerReferences"][0]["kind"] == "Environment"
    assert "ownerReferences" not in retain_ns["metadata"]


def test_hpa_leaves_replicas_to_the_autoscaler() -> None:
    kinds = {
        m["kind"]: m
        for m in render_app(app(autoscaling={"maxReplicas": 4}), environment(), GATEWAY_API).manifests
    }
    assert "replicas" not in kinds["Deployment"]["spec"]
    assert kinds["HorizontalPodAutoscaler"]["spec"]["maxReplicas"] == 4
    assert "PodDisruptionBudget" in kinds


def test_pdb_only_with_more_than_one_replica() -> None:
    one = {m["kind"] for m in render_app(app(replicas=1), environment(), GATEWAY_API).manifests}
    two = {m["kind"] for m in render_app(app(replicas=2), environment(), GATEWAY_API).manifests}
    assert "PodDisruptionBudget" not in one
    assert "PodDisruptionBudget" in two


def test_suspend_scales_to_zero_and_drops_hpa_and_pdb() -> None:
    kinds = {
        m["kind"]: m for m in render_app(app(suspend=True, replicas=3), environment(), GATEWAY_API).manifests
    }
    assert kinds["Deployment"]["spec"]["replicas"] == 0
    assert "HorizontalPodAutoscaler" not in kinds and "PodDisruptionBudget" not in kinds


def test_secrets_need_a_hash_and_use_secret_key_refs() -> None:
    with_secret = app(secrets=[{"name": "TOKEN", "keyVaultSecret": "tok"}])
    with pytest.raises(RenderError):
        render_app(with_secret, environment(), GATEWAY_API)
    dep = render_app(with_secret, environment(), GATEWAY_API, secrets_hash="h1").workload
    env = dep["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env == [
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "orders-secrets", "key": "TOKEN"}}}
    ]
    assert dep["spec"]["template"]["metadata"]["annotations"] == {"choreo.dev/secrets-hash": "h1"}


def test_routes_follow_capabilities() -> None:
    spec = {"endpoints": [endpoint("api", "Public"), endpoint("raw", "Project", "TCP", 5432)]}
    gw = {m["kind"] for m in render_app(app(**spec), environment(), GATEWAY_API).manifests}
    ing = {m["kind"] for m in render_app(app(**spec), environment(), INGRESS_ONLY).manifests}
    assert gw == {"Deployment", "Service", "HTTPRoute"}
    assert ing == {"Deployment", "Service", "Ingress"}


def test_unroutable_endpoints_are_reported_not_rendered() -> None:
    no_gw = environment(gateways=None)
    rendered = render_app(app(endpoints=[endpoint("api", "Organization")]), no_gw, GATEWAY_API)
    assert {m["kind"] for m in rendered.manifests} == {"Deployment", "Service"}
    assert (
        rendered.exposures[0].problem is not None
        and rendered.exposures[0].problem[0] == "GatewayNotConfigured"
    )
    tcp = render_app(app(endpoints=[endpoint("db", "Public", "TCP", 5432)]), environment(), GATEWAY_API)
    assert tcp.exposures[0].problem is not None and tcp.exposures[0].problem[0] == "UnsupportedProtocol"


def test_policy_refusals() -> None:
    env = environment()
    assert check_app_policy(app(), env) is None
    bad_image = check_app_policy(app(image="docker.io/evil/miner:1"), env)
    assert bad_image is not None and bad_image.reason == "ImageNotAllowed"
    wrong_ns = app()
    wrong_ns.metadata.namespace = "someone-else"
    refusal = check_app_policy(wrong_ns, env)
    assert refusal is not None and refusal.reason == "NamespaceNotInEnvironment"
    open_env = environment(registry={"allowedPrefixes": ["*"]})
    assert check_app_policy(app(image="docker.io/library/nginx:1"), open_env) is None


# Issue 12, finding 8: the operator's own image check, whatever the control plane decided.
@pytest.mark.parametrize(
    ("prefixes", "image"),
    [
        (["registry.example.com"], "registry.example.com.evil.io/x:1"),  # host prefix attack
        (["registry.example.com/"], "registry.example.com.evil.io/x:1"),
        (["registry.example.com"], "registry.example.com:5000/x:1"),  # another port is another registry
        (["ghcr.io/acme/"], "ghcr.io/acmeevil/x:1"),  # path segment prefix attack
        (["ghcr.io/acme"], "ghcr.io/acme-evil/x:1"),
        (["ghcr.io/acme/"], "docker.io/evil/miner"),
        ([], "docker.io/library/nginx:1"),  # empty allowlist admits nothing
        (None, "docker.io/library/nginx:1"),  # so does an absent registry section
    ],
)
def test_policy_refuses_images_outside_the_allowlist(prefixes: list[str] | None, image: str) -> None:
    env = environment(registry=None if prefixes is None else {"allowedPrefixes": prefixes})
    refusal = check_app_policy(app(image=image), env)
    assert refusal is not None and refusal.reason == "ImageNotAllowed"
    assert image in refusal.message


@pytest.mark.parametrize(
    ("prefixes", "image"),
    [
        (["registry.example.com"], "registry.example.com/x:1"),
        (["REGISTRY.example.com"], "registry.example.com/team/x@sha256:" + "a" * 64),
        (["ghcr.io/acme/"], "ghcr.io/acme/x/y:1"),
        (["docker.io/library/"], "nginx:1.25"),  # normalised as the runtime pulls it
        (["docker.io/library/nginx"], "index.docker.io/nginx"),
        (["*"], "quay.io/anything/at-all:v1"),
    ],
)
def test_policy_admits_images_inside_the_allowlist(prefixes: list[str], image: str) -> None:
    env = environment(registry={"allowedPrefixes": prefixes})
    assert check_app_policy(app(image=image), env) is None


def test_policy_refuses_a_path_traversal_image_even_if_the_model_was_bypassed() -> None:
    # model_construct skips validation, as an object built by a buggy or hostile caller would.
    bad = app()
    bad.spec = bad.spec.model_copy(update={"image": "docker.io/library/../../evil/x"})
    refusal = check_app_policy(bad, environment(registry={"allowedPrefixes": ["docker.io/library/"]}))
    assert refusal is not None and refusal.reason == "ImageNotAllowed" and "'..'" in refusal.message


@pytest.mark.parametrize(
    ("name", "expected"),
    [("api", "api"), ("a-very-long-endpoint-name", None), ("8080", None), ("a--b", None)],
)
def test_port_names_are_valid_iana_names(name: str, expected: str | None) -> None:
    got = port_name(name)
    assert len(got) <= 15 and "--" not in got and any(c.isalpha() for c in got)
    if expected is not None:
        assert got == expected
    assert port_name(name) == got  # stable


def test_manual_task_is_a_suspended_cronjob() -> None:
    cj = render_app(app("m", type="manualTask"), environment(), GATEWAY_API).workload
    assert cj["kind"] == "CronJob" and cj["spec"]["suspend"] is True
    assert cj["spec"]["concurrencyPolicy"] == "Forbid"
