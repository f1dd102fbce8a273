"""The Deployments' command, args and env are parsed by the real CLI into the expected configuration.

The chart and ``choreo_dp.cli`` must agree on flag and env names: we build the parser the way the
container would (rendered env in ``os.environ``, since ``add_env_argument`` reads it at build time)
and parse the rendered args.
"""

from __future__ import annotations

import argparse
import os
import posixpath
from typing import Any

import pytest

from choreo_dp.cli.agent_cmd import agent_config
from choreo_dp.cli.common import env_name
from choreo_dp.cli.main import build_parser
from tests.helm.chart import CP_URL, DP_ID, NAMESPACE, SCENARIOS, Manifest, container, deployment

# Env the operator reads directly (not a flag): its own namespace, and default Key Vault settings.
OPERATOR_NON_FLAG_ENV = {
    "CHOREO_DP_OPERATOR_NAMESPACE",
    "CHOREO_DP_DEFAULT_KEYVAULT_URL",
    "CHOREO_DP_DEFAULT_KEYVAULT_CLIENT_ID",
    "CHOREO_DP_DEFAULT_KEYVAULT_TENANT_ID",
    "CHOREO_DP_DEFAULT_KEYVAULT_REFRESH_INTERVAL",
    "CHOREO_DP_AGENT_SERVICE_ACCOUNT",
}


# Env the agent reads directly: the operator's namespace, which it refuses to let Environments use.
AGENT_NON_FLAG_ENV = {"CHOREO_DP_OPERATOR_NAMESPACE"}


def rendered_env(ctr: Manifest) -> dict[str, str]:
    """The environment the kubelet would give the container (downward API resolved)."""
    env: dict[str, str] = {}
    for item in ctr.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        elif item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            env[item["name"]] = NAMESPACE
        else:
            raise AssertionError(f"unexpected env source: {item}")
    return env


def parse_like_the_container(
    ctr: Manifest, monkeypatch: pytest.MonkeyPatch
) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    for name in list(os.environ):
        if name.startswith("CHOREO_DP_"):
            monkeypatch.delenv(name)
    for name, value in rendered_env(ctr).items():
        monkeypatch.setenv(name, value)
    assert ctr["command"] == ["choreo-dp"]
    parser = build_parser()
    try:
        ns = parser.parse_args(ctr["args"])
    except SystemExit as exc:  # OneLineParser reports on stderr and exits 2
        raise AssertionError(f"the CLI rejected {ctr['args']} (exit {exc.code})") from None
    verb_parser = subparser(parser, ctr["args"][0])
    # argparse accepts unambiguous prefixes; the chart must spell every flag exactly.
    options = {opt for a in verb_parser._actions for opt in a.option_strings}
    inexact = [arg for arg in ctr["args"][1:] if arg.startswith("--") and arg.split("=", 1)[0] not in options]
    assert not inexact, f"flags the CLI does not define exactly: {inexact}"
    return ns, verb_parser


def subparser(parser: argparse.ArgumentParser, verb: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found: argparse.ArgumentParser = action.choices[verb]
            return found
    raise AssertionError("no sub-commands")


def option_envs(parser: argparse.ArgumentParser) -> set[str]:
    return {env_name(opt) for a in parser._actions for opt in a.option_strings if opt.startswith("--")}


def mounted_source(dep: Manifest, path: str) -> tuple[Manifest, str]:
    """Which volume (and which key of it) provides the file at ``path`` in the container."""
    ctr = container(dep)
    directory, filename = posixpath.split(path)
    mounts = [m for m in ctr.get("volumeMounts", []) if m["mountPath"] == directory]
    assert len(mounts) == 1, f"{path} is not in a mounted directory"
    assert mounts[0].get("readOnly") is True
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    volume = volumes[mounts[0]["name"]]
    source = volume.get("secret") or volume.get("configMap")
    assert source is not None, volume
    items = {i["path"]: i["key"] for i in source.get("items", [])}
    return volume, items.get(filename, filename)


def container_port(ctr: Manifest, name: str) -> int:
    return next(p["containerPort"] for p in ctr["ports"] if p["name"] == name)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_operator_configuration_parses(scenario: str, monkeypatch: pytest.MonkeyPatch) -> None:
    s = SCENARIOS[scenario]
    ctr = container(deployment(s.render(), "operator"))
    ns, verb = parse_like_the_container(ctr, monkeypatch)
    assert ns.verb == "operator"
    assert ns.kubeconfig is None  # in-cluster
    assert ns.metrics_port == container_port(ctr, "metrics")
    assert ns.health_port == container_port(ctr, "health")
    logging = {"format": "json", "level": "INFO", **s.values.get("logging", {})}
    assert ns.log_format == logging["format"]
    assert ns.log_level == logging["level"]
    unknown = (
        {n for n in rendered_env(ctr) if n.startswith("CHOREO_DP_")}
        - option_envs(verb)
        - OPERATOR_NON_FLAG_ENV
    )
    assert not unknown, f"env the operator does not read: {unknown}"
    assert rendered_env(ctr)["CHOREO_DP_OPERATOR_NAMESPACE"] == NAMESPACE
    # The operator's configuration as it reads its environment (names of the agent's ServiceAccount).
    from choreo_dp.operator import OperatorConfig

    on = s.values.get("observability", {}).get("enabled", True)
    assert OperatorConfig().agent_service_account == ((NAMESPACE, "choreo-dp-agent") if on else None)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_agent_configuration_parses(scenario: str, monkeypatch: pytest.MonkeyPatch) -> None:
    s = SCENARIOS[scenario]
    dep = deployment(s.render(), "agent")
    ctr = container(dep)
    ns, verb = parse_like_the_container(ctr, monkeypatch)
    cp = s.values["controlPlane"]
    assert ns.verb == "agent"
    assert ns.control_plane == cp.get("url", CP_URL)
    assert ns.dataplane == DP_ID
    assert ns.insecure is bool(cp.get("insecure", False))
    assert ns.metrics_port == container_port(ctr, "metrics")
    assert ns.health_port == container_port(ctr, "health")

    volume, key = mounted_source(dep, ns.token_file)
    token: dict[str, Any] = s.values["dataPlane"]["token"]
    if token.get("existingSecret"):
        assert (volume["secret"]["secretName"], key) == (token["existingSecret"], token["existingSecretKey"])
    else:
        assert (volume["secret"]["secretName"], key) == ("choreo-dp-token", "token")

    if cp.get("caBundle") or cp.get("caBundleConfigMap"):
        volume, key = mounted_source(dep, ns.ca_file)
        expected = cp.get("caBundleConfigMap") or {"name": "choreo-dp-ca", "key": "ca.crt"}
        assert (volume["configMap"]["name"], key) == (expected["name"], expected["key"])
    else:
        assert ns.ca_file is None

    if cp.get("clientCertificate", {}).get("secretName"):
        for path, expected_key in ((ns.client_cert, "tls.crt"), (ns.client_key, "tls.key")):
            volume, key = mounted_source(dep, path)
            assert (volume["secret"]["secretName"], key) == (
                cp["clientCertificate"]["secretName"],
                expected_key,
            )
    else:
        assert ns.client_cert is None
        assert ns.client_key is None

    unknown = (
        {n for n in rendered_env(ctr) if n.startswith("CHOREO_DP_")} - option_envs(verb) - AGENT_NON_FLAG_ENV
    )
    assert not unknown, f"env the agent does not read: {unknown}"

    # The agent's own validation of that configuration (URL scheme, cert/key pairing, files), with
    # the files the pod mounts (checked above) standing in for the real ones.
    mounted = {p for p in (ns.token_file, ns.ca_file, ns.client_cert, ns.client_key) if p}
    monkeypatch.setattr(os.path, "isfile", lambda path: path in mounted)
    cfg = agent_config(ns)
    assert (cfg.control_plane, cfg.dataplane_id, cfg.token_file) == (ns.control_plane, DP_ID, ns.token_file)
    assert cfg.proxy is True  # HTTPS_PROXY / NO_PROXY from the pod's environment are honoured
    if "proxy" in s.values:
        assert rendered_env(ctr)["HTTPS_PROXY"] == s.values["proxy"]["httpsProxy"]


def test_a_wrong_flag_would_be_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The parse above is a real check: a flag the CLI does not define fails it."""
    ctr = container(deployment(SCENARIOS["defaults"].render(), "agent"))
    ctr["args"] = [*ctr["args"], "--control-plane-url=wss://x"]
    with pytest.raises(AssertionError, match="the CLI rejected"):
        parse_like_the_container(ctr, monkeypatch)


def test_an_abbreviated_flag_would_be_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    ctr = container(deployment(SCENARIOS["defaults"].render(), "operator"))
    ctr["args"] = [*ctr["args"], "--metrics=9999"]  # argparse alone would take it for --metrics-port
    with pytest.raises(AssertionError, match="exactly"):
        parse_like_the_container(ctr, monkeypatch)
