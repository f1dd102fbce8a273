"""The ClusterRoles grant what the code calls, verb by verb, and nothing else.

The emulated API does not enforce RBAC, so this derives the needs statically: every Kubernetes call
the agent's and the operator's modules make (parsed with ``ast``: the KubeClient method gives the
verb, its first argument the resource, ``subresource=`` the subresource; ``R.for_kind(...)`` is any
kind the operator renders, or for a delete any kind it prunes) and every kind kopf watches for it.
tests/helm/test_real_install.py checks the model against reality: the requests the operator and
agent really make against a real kube-apiserver, as the chart's ServiceAccounts, are a subset.
"""

from __future__ import annotations

import ast
import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from choreo_dp.kube import resources as R
from choreo_dp.render.environment import AGENT_OBSERVE_RULES
from tests.helm.chart import FULLNAME, REPO, SCENARIOS, find, one
from tests.helm.test_chart import grants

SRC = REPO / "src" / "choreo_dp"
AGENT_CODE = [SRC / "agent", SRC / "cli" / "agent_cmd.py"]
OPERATOR_CODE = [SRC / "operator", SRC / "secrets", SRC / "render", SRC / "cli" / "operator_cmd.py"]

KNOWN = {name: value for name, value in vars(R).items() if isinstance(value, R.Resource)}
BY_KIND = {res.kind: res for res in KNOWN.values()}

# KubeClient method -> the verbs the RBAC authorizer checks. Server-side apply is a PATCH; when it
# creates the object the apiserver also checks "create" (real kube-apiserver: 403 without it).
METHOD_VERBS: dict[str, set[str]] = {
    "get": {"get"},
    "list": {"list"},
    "watch": {"watch"},
    "create": {"create"},
    "replace": {"update"},
    "apply": {"patch", "create"},
    "patch": {"patch"},
    "delete": {"delete"},
}
HTTP_VERBS = {"POST": {"create"}, "PUT": {"update"}, "PATCH": {"patch"}, "DELETE": {"delete"}}

Key = tuple[str, str]  # (apiGroup, resource or resource/subresource)
Needs = dict[Key, set[str]]


def python_files(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out += sorted(path.rglob("*.py"))
        elif path.exists():
            out.append(path)
    return out


def key_of(res: R.Resource, sub: str | None = None) -> Key:
    return (res.group, res.plural + (f"/{sub}" if sub else ""))


def _r_names(node: ast.AST) -> set[str]:
    """``R.X`` resources mentioned under ``node``."""
    found = set()
    for sub in ast.walk(node):
        if not (isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name)):
            continue
        if sub.value.id == "R" and sub.attr.isupper():
            assert sub.attr in KNOWN, f"R.{sub.attr} is not in choreo_dp.kube.resources"
            found.add(sub.attr)
    return found


def _kind_literals(tree: ast.AST) -> set[str]:
    """``"kind": "X"`` in dict literals under ``tree``, for kinds choreo_dp.kube.resources knows."""
    kinds = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Dict):
            continue
        for k, v in zip(node.keys, node.values, strict=True):
            named = isinstance(k, ast.Constant) and k.value == "kind" and isinstance(v, ast.Constant)
            if named and isinstance(v, ast.Constant) and isinstance(v.value, str) and v.value in BY_KIND:
                kinds.add(v.value)
    return kinds


def _is_kube(node: ast.AST) -> bool:
    """``kube``, ``self.kube``, ``ctl.kube``, ``self._kube``: a KubeClient."""
    name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else ""
    return name.lstrip("_") == "kube"


def _uses_for_kind(node: ast.AST) -> bool:
    return any(
        isinstance(n, ast.Attribute)
        and n.attr == "for_kind"
        and isinstance(n.value, ast.Name)
        and n.value.id == "R"
        for n in ast.walk(node)
    )


def _enclosing_functions(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    """Every node -> its innermost enclosing function (or the module)."""
    owner: dict[ast.AST, ast.AST] = {}

    def visit(node: ast.AST, scope: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else scope
            owner[child] = inner
            visit(child, inner)

    visit(tree, tree)
    return owner


@dataclass(frozen=True)
class Component:
    files: list[Path]
    children: frozenset[str] = frozenset()  # kinds an R.for_kind(...) may be: what it renders
    prunable: frozenset[str] = frozenset()  # kinds an R.for_kind(...) it deletes may be

    def functions(self) -> dict[str, ast.AST]:
        out: dict[str, ast.AST] = {}
        for file in python_files(self.files):
            for node in ast.walk(ast.parse(file.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    out.setdefault(node.name, node)
        return out


def _assigned(name: str, scope: ast.AST) -> ast.AST | None:
    for node in ast.walk(scope):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return node.value
    return None


def _manifest_kinds(arg: ast.AST, scope: ast.AST, comp: Component) -> set[str] | None:
    """Kinds of a manifest argument: a dict literal, or a variable set from one or from a function
    of the component (``body = manifest.secret_manifest(...)``); None when it cannot tell."""
    value = _assigned(arg.id, scope) if isinstance(arg, ast.Name) else arg
    if isinstance(value, ast.Dict):
        return _kind_literals(value) or None
    if isinstance(value, ast.Call):
        fn = value.func.attr if isinstance(value.func, ast.Attribute) else getattr(value.func, "id", "")
        found = comp.functions().get(fn)
        if found is not None:
            return _kind_literals(found) or None
    return None


def _resolve(arg: ast.AST, method: str, scope: ast.AST, module: ast.AST, comp: Component) -> set[R.Resource]:
    """The resources a call's first argument may be."""
    if isinstance(arg, ast.Attribute) and isinstance(arg.value, ast.Name) and arg.value.id == "R":
        return {KNOWN[arg.attr]}
    if _uses_for_kind(arg):
        return {BY_KIND[k] for k in (comp.prunable if method == "delete" else comp.children)}
    if method == "apply":  # a manifest, not a resource
        kinds = _manifest_kinds(arg, scope, comp)
        if kinds is not None:
            return {BY_KIND[k] for k in kinds}
        if _uses_for_kind(module):  # applying what it renders
            return {BY_KIND[k] for k in comp.children}
        return {BY_KIND[k] for k in _kind_literals(module)} | {KNOWN[n] for n in _r_names(module)}
    return {KNOWN[n] for n in (_r_names(scope) or _r_names(module))}


def calls_in(comp: Component) -> Needs:
    """Resources and verbs of every KubeClient call in the component's code.

    A resource held in a variable resolves to the ``R.X`` named in the enclosing function, else in
    the module; a manifest to the kind literals it is built from.
    """
    needs: Needs = {}
    for file in python_files(comp.files):
        tree = ast.parse(file.read_text(), str(file))
        scope_of = _enclosing_functions(tree)
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
            func = call.func
            if isinstance(func, ast.Name) and func.id == "WatchStream" and len(call.args) > 1:
                # WatchStream(kube, res, ...): the informer's list + watch
                for res in _resolve(call.args[1], "watch", scope_of.get(call, tree), tree, comp):
                    needs.setdefault(key_of(res), set()).update({"list", "watch"})
                continue
            if not (isinstance(func, ast.Attribute) and _is_kube(func.value)) or not call.args:
                continue
            sub = next(
                (str(k.value.value) for k in call.keywords
                 if k.arg == "subresource" and isinstance(k.value, ast.Constant) and k.value.value),
                None,
            )  # fmt: skip
            scope = scope_of.get(call, tree)
            if func.attr == "post_event":
                needs.setdefault(key_of(R.EVENTS), set()).add("create")
            elif func.attr in METHOD_VERBS:
                for res in _resolve(call.args[0], func.attr, scope, tree, comp):
                    needs.setdefault(key_of(res, sub), set()).update(METHOD_VERBS[func.attr])
            elif func.attr == "stream" and isinstance(call.args[0], ast.Call):
                # kube.stream(R.PODS.path(ns, name, "log"), query): a GET of a subresource, read
                # as it arrives (pods/log with follow)
                path = call.args[0]
                if isinstance(path.func, ast.Attribute) and path.func.attr == "path":
                    subs = [a.value for a in path.args[2:3] if isinstance(a, ast.Constant)]
                    for res in _resolve(path.func.value, "stream", scope, tree, comp):
                        needs.setdefault(key_of(res, str(subs[0]) if subs else None), set()).add("get")
            elif func.attr == "request" and isinstance(call.args[0], ast.Constant) and len(call.args) > 1:
                # kube.request("GET", res.path(ns[, name]), ...): a list without a name, else a get.
                method, path = str(call.args[0].value), call.args[1]
                if not (isinstance(path, ast.Call) and isinstance(path.func, ast.Attribute)):
                    continue
                named = len(path.args) > 1 and not (
                    isinstance(path.args[1], ast.Constant) and path.args[1].value is None
                )
                verbs = HTTP_VERBS.get(method) or ({"get"} if named else {"list"})
                for res in _resolve(path.func.value, "request", scope, tree, comp):
                    needs.setdefault(key_of(res), set()).update(verbs)
    return needs


def kinds_rendered(paths: list[Path]) -> set[str]:
    return {k for f in python_files(paths) for k in _kind_literals(ast.parse(f.read_text()))}


def _merge(into: Needs, more: Needs) -> Needs:
    for key, verbs in more.items():
        into.setdefault(key, set()).update(verbs)
    return into


OWNER_BLOCKS_DELETION = '"blockOwnerDeletion": True'
# What kopf itself does for the operator (not in our code): it watches the CRDs to notice resources
# appearing (a 403 there degrades it to a scan at startup) and posts Events (POST only).
KOPF_NEEDS: Needs = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
    ("", "events"): {"create"},
}


@functools.cache
def _needs(component: str) -> tuple[tuple[Key, frozenset[str]], ...]:
    if component == "agent":
        needs = calls_in(Component(AGENT_CODE))
    else:
        handlers = pytest.importorskip("choreo_dp.operator.handlers")
        from choreo_dp.operator.app_reconciler import APP_CHILD_KINDS
        from choreo_dp.operator.env_reconciler import ENV_CHILD_KINDS

        rendered = kinds_rendered([SRC / "render"]) - {"Gateway"}  # a parentRef only, never written
        comp = Component(OPERATOR_CODE, frozenset(rendered), APP_CHILD_KINDS | ENV_CHILD_KINDS)
        needs = calls_in(comp)
        for group, _version, plural in (*handlers.watched_children(True), handlers.PODS):
            needs.setdefault((group, plural), set()).update({"list", "watch"})
        for res in (R.ENVIRONMENTS, R.CHOREOAPPS, R.DATAPLANES):
            needs.setdefault(key_of(res), set()).update({"list", "watch"})
        owner_code = python_files([SRC / "render", SRC / "api" / "vocabulary.py"])
        if OWNER_BLOCKS_DELETION in "".join(f.read_text() for f in owner_code):
            # Children name their Environment / ChoreoApp with blockOwnerDeletion: true. Where the
            # OwnerReferencesPermissionEnforcement admission plugin is on (OpenShift), that needs
            # update on the owner's finalizers subresource. Not on by default, so not provable here.
            for res in (R.ENVIRONMENTS, R.CHOREOAPPS):
                needs.setdefault(key_of(res, "finalizers"), set()).add("update")
        _merge(needs, KOPF_NEEDS)
        # The apiserver lets the operator write the agent's per-namespace Role only if it holds
        # every rule of it (RBAC escalation check): granting is a need too.
        _merge(needs, {k: set(v) for k, v in _rule_grants(AGENT_OBSERVE_RULES).items()})
    return tuple(sorted((k, frozenset(v)) for k, v in needs.items()))


def code_needs(component: str) -> Needs:
    """(apiGroup, resource[/subresource]) -> verbs that ``component``'s code (and kopf) use."""
    return {k: set(v) for k, v in _needs(component)}


# Granted beyond the strict needs, on purpose. "get" beside "list" adds no power (a list reads the
# same objects) and keeps `kubectl auth can-i get` answering as an admin expects.
def allowed_extra(key: Key, verb: str, needs: Needs) -> bool:
    return verb == "get" and "list" in needs.get(key, set())


def _rule_grants(rules: tuple[dict[str, Any], ...]) -> Needs:
    out: Needs = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def role(component: str) -> Needs:
    docs = SCENARIOS["defaults"].render()
    granted = grants(one(docs, "ClusterRole", f"{FULLNAME}-{component}"))
    if component == "agent":
        # the Role the operator renders in each Environment's namespace (observability on)
        _merge(granted, _rule_grants(AGENT_OBSERVE_RULES))
    # the agent's Role in its own namespace (ConfigMaps of its desired copy)
    for local in find(docs, "Role", f"{FULLNAME}-{component}-desired-copy"):
        for key, verbs in grants(local).items():
            granted.setdefault(key, set()).update(verbs)
    return granted


def missing(component: str) -> list[str]:
    granted = role(component)
    return [
        f"{group or 'core'}/{res}: {sorted(verbs - granted.get((group, res), set()))}"
        for (group, res), verbs in sorted(code_needs(component).items())
        if verbs - granted.get((group, res), set())
    ]


def unneeded(component: str) -> list[str]:
    needs = code_needs(component)
    return [
        f"{group or 'core'}/{res}: {verb}"
        for (group, res), verbs in sorted(role(component).items())
        for verb in sorted(verbs)
        if verb not in needs.get((group, res), set()) and not allowed_extra((group, res), verb, needs)
    ]


def test_the_scan_sees_the_calls() -> None:
    operator, agent = code_needs("operator"), code_needs("agent")
    # Spot checks of the parser against calls known to be in the code.
    assert {"patch"} <= operator[("choreo.dev", "choreoapps/status")]
    assert {"get"} <= operator[("", "secrets")]
    assert {"patch", "create", "delete", "list", "watch"} <= operator[("apps", "deployments")]
    assert {"list", "watch", "patch", "create", "delete", "get"} <= agent[("choreo.dev", "choreoapps")]
    assert {"patch"} <= agent[("choreo.dev", "dataplanes/status")]
    assert agent[("", "pods/log")] == {"get"}  # streamed (kube.stream), follow or not
    # Workloads: the agent only lists them, for live state, in its Environments' namespaces.
    assert all(verbs == {"list"} for (g, _), verbs in agent.items() if re.match(r"apps|batch", g))
    # R.for_kind(...) deletes resolve to the pruned kinds only: namespaces are created and patched
    # (and deleted by the garbage collector), never deleted by the operator.
    assert (
        operator[("", "namespaces")] >= {"create", "patch"} and "delete" not in operator[("", "namespaces")]
    )


@pytest.mark.parametrize("component", ["operator", "agent"])
def test_role_covers_what_the_code_calls(component: str) -> None:
    gaps = missing(component)
    assert not gaps, f"the {component} calls what its ClusterRole does not grant:\n" + "\n".join(gaps)


@pytest.mark.parametrize("component", ["operator", "agent"])
def test_role_grants_nothing_the_code_does_not_use(component: str) -> None:
    extra = unneeded(component)
    assert not extra, f"the {component}'s ClusterRole grants what no code uses:\n" + "\n".join(extra)
