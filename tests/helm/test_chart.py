"""The chart renders what the issue asks for: lint, values matrix, security defaults, schema, RBAC."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helm.chart import (
    ADMISSION_POLICY_API,
    CHART,
    CP_URL,
    DP_ID,
    FULLNAME,
    MONITORING_API,
    NAMESPACE,
    REPO,
    REQUIRED,
    SCENARIOS,
    Manifest,
    container,
    deployment,
    find,
    merge,
    one,
    render,
    run_helm,
    template_result,
)

COMPONENTS = ("operator", "agent")


def env_of(ctr: Manifest) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in ctr.get("env", [])}


def volumes_of(dep: Manifest) -> dict[str, Manifest]:
    return {v["name"]: v for v in dep["spec"]["template"]["spec"].get("volumes", [])}


# --- lint and chart metadata -------------------------------------------------------------------


def test_helm_lint_strict_with_defaults() -> None:
    result = run_helm("lint", "--strict", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr


def test_helm_lint_strict_with_every_feature() -> None:
    result = run_helm("lint", "--strict", str(CHART), values=SCENARIOS["everything"].values)
    assert result.returncode == 0, result.stdout + result.stderr


def test_chart_version_follows_the_project() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]
    assert chart["version"] == project["version"]
    assert chart["name"] == project["name"]


# --- every scenario: shape and security defaults ------------------------------------------------


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_object_is_labelled_and_namespaced(scenario: str) -> None:
    docs = SCENARIOS[scenario].render()
    for doc in docs:
        labels = doc["metadata"].get("labels", {})
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        assert labels.get("app.kubernetes.io/name") == "choreo-dp", where
        assert labels.get("app.kubernetes.io/instance") == "choreo-dp", where
        assert labels.get("app.kubernetes.io/managed-by") == "Helm", where
        assert labels.get("helm.sh/chart") == "choreo-dp-0.1.0", where
        cluster_scoped = doc["kind"] in {
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
        }
        assert ("namespace" in doc["metadata"]) != cluster_scoped, where
        if not cluster_scoped:
            assert doc["metadata"]["namespace"] == NAMESPACE, where


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_deployments_are_single_restricted_and_probed(scenario: str) -> None:
    docs = SCENARIOS[scenario].render()
    assert len(find(docs, "Deployment")) == 2
    for component in COMPONENTS:
        dep = deployment(docs, component)
        spec = dep["spec"]
        assert spec["replicas"] == 1
        assert spec["strategy"] == {"type": "Recreate"}
        pod = spec["template"]["spec"]
        selector = spec["selector"]["matchLabels"]
        assert selector["app.kubernetes.io/component"] == component
        assert selector.items() <= spec["template"]["metadata"]["labels"].items()
        assert pod["serviceAccountName"] == f"{FULLNAME}-{component}"
        assert pod["automountServiceAccountToken"] is True
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True
        assert psc["runAsUser"] == 65532
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
        ctr = container(dep)
        sc = ctr["securityContext"]
        assert sc["runAsNonRoot"] is True
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert "privileged" not in sc
        assert ctr["resources"]["requests"]["cpu"]
        assert ctr["resources"]["requests"]["memory"]
        ports = {p["name"]: p["containerPort"] for p in ctr["ports"]}
        probe = ctr["livenessProbe"]["httpGet"]
        assert probe["path"] == "/healthz"
        assert probe["port"] == "health"
        assert f"--health-port={ports['health']}" in ctr["args"]
        assert f"--metrics-port={ports['metrics']}" in ctr["args"]
        # A read-only root needs somewhere writable for Python's temp files.
        assert {"name": "tmp", "mountPath": "/tmp"} in ctr["volumeMounts"]


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_service_accounts_do_not_automount(scenario: str) -> None:
    docs = SCENARIOS[scenario].render()
    accounts = find(docs, "ServiceAccount")
    assert {a["metadata"]["name"] for a in accounts} == {f"{FULLNAME}-operator", f"{FULLNAME}-agent"}
    for account in accounts:
        assert account["automountServiceAccountToken"] is False


# --- RBAC --------------------------------------------------------------------------------------

AGENT_CHOREO = {"environments", "choreoapps", "dataplanes", "dataplanes/status"}
OPERATOR_RESOURCES = {
    ("choreo.dev", "environments"),
    ("choreo.dev", "choreoapps"),
    ("choreo.dev", "environments/status"),
    ("choreo.dev", "choreoapps/status"),
    ("choreo.dev", "environments/finalizers"),
    ("choreo.dev", "choreoapps/finalizers"),
    ("choreo.dev", "dataplanes"),  # read, and its status patched once its agent's heartbeat expired
    ("choreo.dev", "dataplanes/status"),
    ("", "namespaces"),
    ("", "resourcequotas"),
    ("", "limitranges"),
    ("", "serviceaccounts"),
    ("", "secrets"),
    ("", "services"),
    ("", "configmaps"),  # the plain files of spec.files
    ("", "pods"),
    ("", "pods/log"),  # held only to grant it (below), never read by the operator's code
    ("apps", "replicasets"),  # the same
    ("batch", "jobs"),  # the same
    ("", "events"),
    ("apps", "deployments"),
    ("batch", "cronjobs"),
    ("autoscaling", "horizontalpodautoscalers"),
    ("policy", "poddisruptionbudgets"),
    ("networking.k8s.io", "networkpolicies"),
    ("networking.k8s.io", "ingresses"),
    ("gateway.networking.k8s.io", "httproutes"),
    ("rbac.authorization.k8s.io", "roles"),
    ("rbac.authorization.k8s.io", "rolebindings"),
    ("apiextensions.k8s.io", "customresourcedefinitions"),
}
READ_ONLY = {
    ("", "pods"),
    ("apiextensions.k8s.io", "customresourcedefinitions"),
    ("choreo.dev", "dataplanes"),
}
READ_VERBS = {"get", "list", "watch"}


def grants(role: Manifest) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "nonResourceURLs" not in rule
        assert "resourceNames" not in rule or rule["resourceNames"]
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_rbac_has_no_wildcards(scenario: str) -> None:
    docs = SCENARIOS[scenario].render()
    roles = find(docs, "ClusterRole") + find(docs, "Role")
    assert roles
    for role in roles:
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert not any("*" in item for item in rule.get(key, [])), (role["metadata"]["name"], rule)
            assert not set(rule["verbs"]) & {"escalate", "bind", "impersonate"}


def test_agent_role_touches_only_choreo_resources_and_its_own_dataplane() -> None:
    docs = SCENARIOS["defaults"].render()
    # beside the two ClusterRoles checked here, one Role: the agent's desired copy, ConfigMaps of
    # its own names in its own namespace (list cannot be narrowed by name)
    (local,) = find(docs, "Role")
    assert local["metadata"]["name"] == f"{FULLNAME}-agent-desired-copy"
    for rule in local["rules"]:
        assert rule["apiGroups"] == [""] and rule["resources"] == ["configmaps"]
        assert rule["verbs"] == ["list"] or all(
            n.startswith("choreo-dp-desired-") for n in rule["resourceNames"]
        )
    role = one(docs, "ClusterRole", f"{FULLNAME}-agent")
    agent = grants(role)
    assert {g for g, _ in agent} == {"choreo.dev"}, "the agent touches nothing but choreo.dev"
    assert set(agent) == {("choreo.dev", r) for r in AGENT_CHOREO}
    for rule in role["rules"]:
        if any(r.startswith("dataplanes") for r in rule["resources"]):
            # Only this data plane's DataPlane (server-side apply: create and patch by name).
            assert rule["resourceNames"] == [DP_ID], rule
            assert set(rule["verbs"]) <= {"create", "patch"}, rule
        else:
            assert "resourceNames" not in rule
    assert agent[("choreo.dev", "dataplanes/status")] == {"patch"}
    assert not any(r.endswith("/status") for g, r in agent if r != "dataplanes/status")


def test_operator_role_is_exactly_the_managed_kinds() -> None:
    docs = SCENARIOS["defaults"].render()
    operator = grants(one(docs, "ClusterRole", f"{FULLNAME}-operator"))
    assert set(operator) == OPERATOR_RESOURCES
    for key in READ_ONLY:
        assert operator[key] == READ_VERBS, key
    # The operator never creates or deletes the desired state: that is the agent's job.
    assert not operator[("choreo.dev", "choreoapps")] & {"create", "delete"}
    assert not operator[("choreo.dev", "environments")] & {"create", "delete"}
    assert operator[("apps", "deployments")] >= {"create", "patch", "delete", "watch"}
    # Namespaces go with their Environment through the garbage collector, never by the operator.
    assert "delete" not in operator[("", "namespaces")]
    # Server-side apply and patches only: "update" only where blockOwnerDeletion needs it.
    updates = {key for key, verbs in operator.items() if "update" in verbs}
    assert updates == {("choreo.dev", "environments/finalizers"), ("choreo.dev", "choreoapps/finalizers")}


def test_bindings_tie_each_role_to_its_own_service_account() -> None:
    docs = SCENARIOS["defaults"].render()
    for component in COMPONENTS:
        binding = one(docs, "ClusterRoleBinding", f"{FULLNAME}-{component}")
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": f"{FULLNAME}-{component}",
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": f"{FULLNAME}-{component}", "namespace": NAMESPACE}
        ]


POLICY = f"{FULLNAME}-operator-owned-objects-only"


def test_admission_policy_guards_every_kind_the_operator_may_change() -> None:
    """RBAC cannot say "only what it made"; the ValidatingAdmissionPolicy does, for every kind the
    operator's role lets it patch or delete (test_real_install.py shows the real apiserver enforce it)."""
    docs = SCENARIOS["defaults"].render()
    policy = one(docs, "ValidatingAdmissionPolicy", POLICY)
    binding = one(docs, "ValidatingAdmissionPolicyBinding", POLICY)
    assert binding["spec"] == {"policyName": POLICY, "validationActions": ["Deny"]}
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    username = f"system:serviceaccount:{NAMESPACE}:{FULLNAME}-operator"
    assert [c["expression"] for c in spec["matchConditions"]] == [
        f'request.userInfo.username == "{username}"'
    ]
    guarded = set()
    for rule in spec["matchConstraints"]["resourceRules"]:
        assert rule["operations"] == ["UPDATE", "DELETE"], rule  # creating is not restricted
        guarded |= {(group, res) for group in rule["apiGroups"] for res in rule["resources"]}
    writable = {
        key
        for key, verbs in grants(one(docs, "ClusterRole", f"{FULLNAME}-operator")).items()
        if verbs & {"patch", "update", "delete"} and key[0] != "choreo.dev" and key != ("", "events")
    }
    assert guarded == writable
    [validation] = spec["validations"]
    assert "app.kubernetes.io/managed-by" in validation["expression"]
    assert "oldObject" in validation["expression"] and validation["reason"] == "Forbidden"


def test_admission_policy_needs_the_api_and_can_be_switched_off() -> None:
    without_api = render(REQUIRED)  # `helm template` without --api-versions, or a cluster < 1.30
    assert not find(without_api, "ValidatingAdmissionPolicy")
    off = render(
        merge(REQUIRED, {"operator": {"admissionPolicy": {"enabled": False}}}), (ADMISSION_POLICY_API,)
    )
    assert not find(off, "ValidatingAdmissionPolicy") and not find(off, "ValidatingAdmissionPolicyBinding")


# --- observability on and off -----------------------------------------------------------------


def _rules_cover(held: dict[tuple[str, str], set[str]], rules: list[dict[str, Any]]) -> list[str]:
    """What of ``rules`` ``held`` lacks: the apiserver's RBAC escalation check, for rules without
    resourceNames (a Role the operator writes must not grant more than the operator holds)."""
    lacking = []
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    if verb not in held.get((group, resource), set()):
                        lacking.append(f"{group or 'core'}/{resource}: {verb}")
    return lacking


def test_observability_on_names_the_agent_to_the_operator_who_holds_what_it_grants() -> None:
    from choreo_dp.operator.config import AGENT_SERVICE_ACCOUNT_ENV, parse_service_account
    from choreo_dp.render.environment import AGENT_OBSERVE_RULES

    docs = SCENARIOS["defaults"].render()
    operator_env = env_of(container(deployment(docs, "operator")))
    named = parse_service_account(operator_env[AGENT_SERVICE_ACCOUNT_ENV])
    assert named == (NAMESPACE, f"{FULLNAME}-agent")
    assert one(docs, "ServiceAccount", named[1])["metadata"]["namespace"] == named[0]
    assert "--no-observability" not in container(deployment(docs, "agent"))["args"]
    operator = grants(one(docs, "ClusterRole", f"{FULLNAME}-operator"))
    assert not _rules_cover(operator, [dict(r) for r in AGENT_OBSERVE_RULES])
    # ... and no more than that: reading logs is the one right it holds only to pass on.
    assert operator[("", "pods/log")] == {"get"}
    assert operator[("", "events")] == READ_VERBS | {"create"}
    assert operator[("apps", "replicasets")] == operator[("batch", "jobs")] == {"list"}
    # The agent's cluster-wide role stays choreo.dev only; its reads come per namespace.
    agent = grants(one(docs, "ClusterRole", f"{FULLNAME}-agent"))
    assert {g for g, _ in agent} == {"choreo.dev"}


def test_observability_off_refuses_at_the_agent_and_grants_nothing() -> None:
    from choreo_dp.operator.config import AGENT_SERVICE_ACCOUNT_ENV

    docs = SCENARIOS["observability-off"].render()
    assert "--no-observability" in container(deployment(docs, "agent"))["args"]
    assert AGENT_SERVICE_ACCOUNT_ENV not in env_of(container(deployment(docs, "operator")))
    operator = grants(one(docs, "ClusterRole", f"{FULLNAME}-operator"))
    assert not {("", "pods/log"), ("apps", "replicasets"), ("batch", "jobs")} & set(operator)
    assert operator[("", "events")] == {"create"}
    # Still allowed to delete the Roles it granted while the feature was on (pruned on the next
    # reconcile of each Environment).
    for kind in ("roles", "rolebindings"):
        assert {"list", "watch", "delete"} <= operator[("rbac.authorization.k8s.io", kind)]
    defaults = SCENARIOS["defaults"].render()
    changed = {(d["kind"], d["metadata"]["name"]) for d in docs if d not in defaults}
    assert changed == {
        ("ClusterRole", f"{FULLNAME}-operator"),
        ("Deployment", f"{FULLNAME}-operator"),
        ("Deployment", f"{FULLNAME}-agent"),
    }, "observability touches the operator's role and the two Deployments only"


def test_observability_must_be_a_boolean() -> None:
    result = template_result(merge(REQUIRED, {"observability": {"enabled": "no"}}))
    assert result.returncode != 0 and "observability" in result.stderr
    result = template_result(merge(REQUIRED, {"observability": {"enable": True}}))
    assert result.returncode != 0 and "enable" in result.stderr


# --- value scenarios ---------------------------------------------------------------------------


def test_existing_token_secret_is_mounted_and_nothing_is_created() -> None:
    docs = SCENARIOS["defaults"].render()
    assert not find(docs, "Secret")
    agent = deployment(docs, "agent")
    token = volumes_of(agent)["token"]["secret"]
    assert token["secretName"] == "dp-token"
    assert token["items"] == [{"key": "tok", "path": "token"}]
    args = container(agent)["args"]
    assert f"--control-plane={CP_URL}" in args
    assert f"--dataplane={DP_ID}" in args
    assert "--token-file=/var/run/choreo-dp/token/token" in args
    assert not [a for a in args if a.startswith(("--ca-file", "--client-cert", "--client-key", "--insecure"))]
    # Only the agent sees the token.
    assert "token" not in volumes_of(deployment(docs, "operator"))


def test_token_value_creates_the_secret() -> None:
    docs = SCENARIOS["token-created"].render()
    secret = one(docs, "Secret", f"{FULLNAME}-token")
    assert secret["type"] == "Opaque"
    import base64

    assert base64.b64decode(secret["data"]["token"]).decode() == "s3cr3t-token"
    token = volumes_of(deployment(docs, "agent"))["token"]["secret"]
    assert token["secretName"] == f"{FULLNAME}-token"
    assert token["items"] == [{"key": "token", "path": "token"}]


def test_mtls_mounts_client_certificate_and_pins_ca() -> None:
    docs = SCENARIOS["mtls"].render()
    agent = deployment(docs, "agent")
    args = container(agent)["args"]
    assert "--client-cert=/var/run/choreo-dp/client-tls/tls.crt" in args
    assert "--client-key=/var/run/choreo-dp/client-tls/tls.key" in args
    assert "--ca-file=/var/run/choreo-dp/ca/ca.crt" in args
    vols = volumes_of(agent)
    assert vols["client-tls"]["secret"]["secretName"] == "dp-client-tls"
    assert vols["ca"]["configMap"]["name"] == f"{FULLNAME}-ca"
    ca = one(docs, "ConfigMap", f"{FULLNAME}-ca")
    assert ca["data"]["ca.crt"].startswith("-----BEGIN CERTIFICATE-----")


def test_ca_from_existing_configmap() -> None:
    docs = SCENARIOS["ca-configmap"].render()
    assert not find(docs, "ConfigMap")
    ca = volumes_of(deployment(docs, "agent"))["ca"]["configMap"]
    assert ca["name"] == "corp-ca"
    assert ca["items"] == [{"key": "bundle.pem", "path": "ca.crt"}]


def test_proxy_env_on_both_pods_and_api_server_bypasses_it() -> None:
    docs = SCENARIOS["proxy"].render()
    for component in COMPONENTS:
        env = env_of(container(deployment(docs, component)))
        assert env["HTTPS_PROXY"] == "http://proxy.corp:3128"
        assert env["NO_PROXY"] == "10.0.0.0/8,.corp,$(KUBERNETES_SERVICE_HOST)"
        assert "HTTP_PROXY" not in env
    assert "HTTPS_PROXY" not in env_of(container(deployment(SCENARIOS["defaults"].render(), "agent")))


def test_workload_identity_on_the_operator_only() -> None:
    docs = SCENARIOS["workload-identity"].render()
    sa = one(docs, "ServiceAccount", f"{FULLNAME}-operator")
    assert sa["metadata"]["annotations"] == {
        "azure.workload.identity/client-id": "11111111-2222-3333-4444-555555555555",
        "azure.workload.identity/tenant-id": "66666666-7777-8888-9999-000000000000",
    }
    pod_labels = deployment(docs, "operator")["spec"]["template"]["metadata"]["labels"]
    assert pod_labels["azure.workload.identity/use"] == "true"
    assert (
        "azure.workload.identity/use"
        not in deployment(docs, "agent")["spec"]["template"]["metadata"]["labels"]
    )
    assert "annotations" not in one(docs, "ServiceAccount", f"{FULLNAME}-agent")["metadata"]
    env = env_of(container(deployment(docs, "operator")))
    assert env["CHOREO_DP_DEFAULT_KEYVAULT_URL"] == "https://kv-prod.vault.azure.net/"
    assert env["CHOREO_DP_DEFAULT_KEYVAULT_REFRESH_INTERVAL"] == "30m"
    assert "CHOREO_DP_DEFAULT_KEYVAULT_CLIENT_ID" not in env
    # Without workload identity the label is absent.
    default_labels = deployment(SCENARIOS["defaults"].render(), "operator")["spec"]["template"]["metadata"]
    assert "azure.workload.identity/use" not in default_labels["labels"]


def test_operator_knows_its_namespace_from_the_downward_api() -> None:
    env = env_of(container(deployment(SCENARIOS["defaults"].render(), "operator")))
    assert env["CHOREO_DP_OPERATOR_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def test_service_monitor_only_when_the_api_is_served() -> None:
    with_api = SCENARIOS["servicemonitor-with-api"].render()
    monitor = one(with_api, "ServiceMonitor", FULLNAME)
    assert monitor["apiVersion"] == MONITORING_API
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    selected = monitor["spec"]["selector"]
    services = find(with_api, "Service")
    assert len(services) == 2
    for service in services:
        labels = service["metadata"]["labels"]
        assert selected["matchLabels"].items() <= labels.items()
        assert labels["app.kubernetes.io/component"] in selected["matchExpressions"][0]["values"]
        assert service["spec"]["ports"][0]["name"] == "metrics"
    assert not find(SCENARIOS["servicemonitor-without-api"].render(), "ServiceMonitor")
    # The API alone does not create one: it is opt-in.
    assert not find(render(REQUIRED, (MONITORING_API,)), "ServiceMonitor")


def test_network_policies_limit_egress() -> None:
    docs = SCENARIOS["networkpolicy"].render()
    assert not find(SCENARIOS["defaults"].render(), "NetworkPolicy")
    policies = {p["metadata"]["name"]: p for p in find(docs, "NetworkPolicy")}
    assert set(policies) == {f"{FULLNAME}-operator", f"{FULLNAME}-agent"}
    for component in COMPONENTS:
        spec = policies[f"{FULLNAME}-{component}"]["spec"]
        assert spec["policyTypes"] == ["Ingress", "Egress"]
        assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == component
        cidrs = {peer["ipBlock"]["cidr"] for rule in spec["egress"] for peer in rule.get("to", [])}
        dns = [r for r in spec["egress"] if "to" not in r]
        assert len(dns) == 1
        assert {p["port"] for p in dns[0]["ports"]} == {53}
        assert all("to" in r or r is dns[0] for r in spec["egress"])  # no open egress besides DNS
        if component == "agent":
            assert cidrs == {"10.0.0.1/32", "203.0.113.0/24"}
            cp_rule = next(
                r
                for r in spec["egress"]
                if r.get("to", [{}])[0].get("ipBlock", {}).get("cidr") == "203.0.113.0/24"
            )
            assert cp_rule["ports"] == [{"port": 8443, "protocol": "TCP"}]  # from the URL
        else:
            assert cidrs == {"10.0.0.1/32"}
        assert spec["ingress"][0]["from"] == [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]
    # wss:// without a port means 443; extra egress is appended.
    everything = {p["metadata"]["name"]: p for p in find(SCENARIOS["everything"].render(), "NetworkPolicy")}
    agent_egress = everything[f"{FULLNAME}-agent"]["spec"]["egress"]
    assert {
        "to": [{"ipBlock": {"cidr": "198.51.100.7/32"}}],
        "ports": [{"port": 443, "protocol": "TCP"}],
    } in agent_egress
    assert {"to": [{"ipBlock": {"cidr": "192.0.2.0/24"}}], "ports": [{"port": 443}]} in agent_egress


def test_everything_scenario_values_reach_the_pods() -> None:
    docs = SCENARIOS["everything"].render()
    operator = deployment(docs, "operator")
    pod = operator["spec"]["template"]["spec"]
    ctr = container(operator)
    assert ctr["image"] == "ghcr.io/choreo-dp/choreo-dp@sha256:" + "a" * 64
    assert ctr["imagePullPolicy"] == "Always"
    assert pod["imagePullSecrets"] == [{"name": "corp-registry"}]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"][0]["key"] == "dedicated"
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert "--metrics-port=19090" in ctr["args"]
    assert "--log-format=text" in ctr["args"]
    assert "--log-level=DEBUG" in ctr["args"]
    assert env_of(ctr)["EXTRA"] == "1"
    assert env_of(ctr)["NO_PROXY"].endswith(",$(KUBERNETES_SERVICE_HOST)")
    assert operator["metadata"]["labels"]["team"] == "platform"
    pull = one(docs, "Secret", f"{FULLNAME}-registry")
    assert pull["type"] == "kubernetes.io/dockerconfigjson"
    pdbs = {p["metadata"]["name"]: p["spec"] for p in find(docs, "PodDisruptionBudget")}
    assert pdbs[f"{FULLNAME}-operator"]["minAvailable"] == 1
    assert pdbs[f"{FULLNAME}-agent"]["maxUnavailable"] == 0
    assert "minAvailable" not in pdbs[f"{FULLNAME}-agent"]
    assert one(docs, "ServiceMonitor", FULLNAME)["spec"]["endpoints"][0]["scrapeTimeout"] == "10s"
    agent_ports = {p["name"]: p["containerPort"] for p in container(deployment(docs, "agent"))["ports"]}
    assert agent_ports["health"] == 18082
    assert not find(SCENARIOS["defaults"].render(), "PodDisruptionBudget")


def test_default_image_uses_app_version() -> None:
    ctr = container(deployment(SCENARIOS["defaults"].render(), "agent"))
    assert ctr["image"] == "ghcr.io/choreo-dp/choreo-dp:0.1.0"
    assert ctr["command"] == ["choreo-dp"]


# --- schema and required values ----------------------------------------------------------------

BAD_VALUES: list[tuple[str, dict[str, Any], str]] = [
    ("unknown top-level key", {"replicaCount": 2}, "Additional property replicaCount is not allowed"),
    ("unknown nested key", {"controlPlane": {"tokn": "x"}}, "Additional property tokn is not allowed"),
    ("unknown component key", {"agent": {"replicas": 3}}, "Additional property replicas is not allowed"),
    ("port is a string", {"operator": {"metricsPort": "9090"}}, "Invalid type"),
    ("port out of range", {"agent": {"healthPort": 70000}}, "agent.healthPort"),
    ("bool is a string", {"crds": {"install": "yes"}}, "Invalid type"),
    ("log format", {"logging": {"format": "xml"}}, "logging.format"),
    ("pull policy", {"image": {"pullPolicy": "Sometimes"}}, "image.pullPolicy"),
    ("digest", {"image": {"digest": "latest"}}, "image.digest"),
    ("https url", {"controlPlane": {"url": "https://cp.example.com"}}, "controlPlane.url"),
    ("dataplane id", {"dataPlane": {"id": "Prod_EU"}}, "dataPlane.id"),
    (
        "cidr",
        {"networkPolicy": {"apiServer": {"cidrs": ["kubernetes.default"]}}},
        "networkPolicy.apiServer.cidrs",
    ),
    ("tolerations is a map", {"operator": {"tolerations": {"key": "x"}}}, "Invalid type"),
]


@pytest.mark.parametrize(("case", "bad", "message"), BAD_VALUES, ids=[c[0] for c in BAD_VALUES])
def test_schema_rejects_bad_values(case: str, bad: dict[str, Any], message: str) -> None:
    result = template_result(merge(REQUIRED, bad))
    assert result.returncode != 0, f"{case}: accepted"
    assert message in result.stderr, result.stderr


MISSING: list[tuple[str, dict[str, Any], str]] = [
    ("no url", {"controlPlane": {"url": ""}}, "controlPlane.url is required"),
    ("no dataplane", {"dataPlane": {"id": ""}}, "dataPlane.id is required"),
    ("no token", {"dataPlane": {"token": {"existingSecret": ""}}}, "a dataplane token is required"),
    ("two tokens", {"dataPlane": {"token": {"value": "x"}}}, "only one of dataPlane.token"),
    ("ws without insecure", {"controlPlane": {"url": "ws://cp:80"}}, "controlPlane.insecure=true"),
    (
        "workload identity without client id",
        {"azureWorkloadIdentity": {"enabled": True}},
        "azureWorkloadIdentity.clientId is required",
    ),
    (
        "netpol without api cidrs",
        {"networkPolicy": {"enabled": True}},
        "networkPolicy.apiServer.cidrs is required",
    ),
    (
        "netpol without cp cidrs",
        {"networkPolicy": {"enabled": True, "apiServer": {"cidrs": ["10.0.0.1/32"]}}},
        "networkPolicy.controlPlane.cidrs is required",
    ),
    ("pull secret without content", {"registryPullSecret": {"create": True}}, "dockerConfigJson is required"),
]


@pytest.mark.parametrize(("case", "bad", "message"), MISSING, ids=[c[0] for c in MISSING])
def test_missing_required_values_fail_with_a_clear_message(
    case: str, bad: dict[str, Any], message: str
) -> None:
    result = template_result(merge(REQUIRED, bad))
    assert result.returncode != 0, f"{case}: accepted"
    assert message in result.stderr, result.stderr


def test_insecure_ws_is_allowed_when_asked_for() -> None:
    docs = render(merge(REQUIRED, {"controlPlane": {"url": "ws://cp:80", "insecure": True}}))
    args = container(deployment(docs, "agent"))["args"]
    assert "--insecure" in args
    assert "--control-plane=ws://cp:80" in args


def test_notes_tell_how_to_check_the_connection_and_apps() -> None:
    # Rendered NOTES need `helm install`, which needs an API server: see test_apply.py for that half.
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    assert "kubectl get dataplane" in notes
    assert "kubectl get choreoapps -A" in notes


def test_packaged_chart_is_self_contained(tmp_path: Path) -> None:
    """`helm package` keeps crds-src/ (read with .Files) and the schema: the .tgz renders the same."""
    result = run_helm("package", str(CHART), "--destination", str(tmp_path))
    assert result.returncode == 0, result.stderr
    (tgz,) = tmp_path.glob("choreo-dp-*.tgz")
    args = ["template", "choreo-dp", str(tgz), "--namespace", NAMESPACE]
    packaged = run_helm(*args, values=REQUIRED)
    assert packaged.returncode == 0, packaged.stderr
    docs = [d for d in yaml.safe_load_all(packaged.stdout) if d]
    assert docs == render(REQUIRED)
    rejected = run_helm(*args, values=merge(REQUIRED, {"bogus": 1}))
    assert rejected.returncode != 0


def test_chart_refuses_clusters_older_than_1_29() -> None:
    args = ["template", "choreo-dp", str(CHART), "--namespace", NAMESPACE]
    old = run_helm(*args, "--kube-version", "1.28.9", values=REQUIRED)
    assert old.returncode != 0
    assert "kubeVersion" in old.stderr or "1.29" in old.stderr, old.stderr
    assert run_helm(*args, "--kube-version", "1.29.0", values=REQUIRED).returncode == 0
