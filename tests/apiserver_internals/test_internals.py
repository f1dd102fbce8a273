"""Unit and property tests of the emulator's internals (the conformance suite covers behaviour)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kube_emulator import cel
from kube_emulator.fieldsets import (
    MISSING,
    diff,
    field_set,
    from_fields_v1,
    get_at,
    to_fields_v1,
)
from kube_emulator.resources import BUILTINS
from kube_emulator.selectors import parse_field_selector, parse_label_selector
from kube_emulator.tables import human_duration, jsonpath

DEPLOY = next(rt for rt in BUILTINS if rt.plural == "deployments")

scalars = st.one_of(st.integers(-3, 3), st.sampled_from(["a", "b", ""]), st.booleans())
small_maps = st.dictionaries(st.sampled_from(["x", "y", "z"]), scalars, max_size=3)
containers = st.lists(
    st.fixed_dictionaries(
        {"name": st.sampled_from(["app", "side", "init"])},
        optional={
            "image": scalars,
            "env": st.lists(
                st.fixed_dictionaries({"name": st.sampled_from(["A", "B"]), "value": scalars}),
                max_size=2,
                unique_by=lambda e: e["name"],
            ),
        },
    ),
    max_size=3,
    unique_by=lambda c: c["name"],
)
objects = st.fixed_dictionaries(
    {
        "apiVersion": st.just("apps/v1"),
        "kind": st.just("Deployment"),
        "metadata": st.fixed_dictionaries(
            {"name": st.just("d")},
            optional={
                "labels": small_maps,
                "finalizers": st.lists(st.sampled_from(["f1", "f2"]), unique=True, max_size=2),
            },
        ),
    },
    optional={
        "spec": st.fixed_dictionaries(
            {},
            optional={
                "replicas": scalars,
                "template": st.fixed_dictionaries(
                    {},
                    optional={
                        "spec": st.fixed_dictionaries(
                            {}, optional={"containers": containers, "nodeSelector": small_maps}
                        )
                    },
                ),
                "args": st.lists(scalars, max_size=3),
                "empty": st.just({}),
            },
        )
    },
)


def reference_diff(old: dict[str, Any], new: dict[str, Any]) -> tuple[set[Any], set[Any]]:
    """What ``diff`` must equal: computed from the two full field sets."""
    old_fs, new_fs = field_set(old, DEPLOY), field_set(new, DEPLOY)
    changed = {
        p
        for p in new_fs
        if p not in old_fs or (not p[-1].startswith(("k:", "v:")) and get_at(old, p) != get_at(new, p))
    }
    return changed, old_fs - new_fs


@settings(max_examples=300, deadline=None)
@given(objects, objects)
def test_diff_matches_full_field_set_comparison(old: dict[str, Any], new: dict[str, Any]) -> None:
    changed, removed = diff(old, new, DEPLOY)
    ref_changed, ref_removed = reference_diff(old, new)
    assert changed == ref_changed
    assert removed == ref_removed


@settings(max_examples=200, deadline=None)
@given(objects)
def test_fields_v1_round_trip(obj: dict[str, Any]) -> None:
    fs = field_set(obj, DEPLOY)
    assert from_fields_v1(to_fields_v1(fs)) == fs
    for path in fs:
        assert get_at(obj, path) is not MISSING


def test_label_selectors() -> None:
    obj = {"metadata": {"labels": {"app": "web", "tier": "fe"}}}
    cases = {
        "app=web": True,
        "app==web,tier=fe": True,
        "app!=web": False,
        "tier in (fe, be)": True,
        "tier notin (fe)": False,
        "missing notin (x)": True,
        "app": True,
        "!app": False,
        "!missing": True,
        "app in (web),tier in (be)": False,
    }
    for text, want in cases.items():
        pred = parse_label_selector(text)
        assert pred is not None and pred(obj) is want, text


def test_field_selectors() -> None:
    obj = {"metadata": {"name": "n", "namespace": "ns"}, "status": {"phase": "Running"}}
    for text, want in {
        "metadata.name=n": True,
        "metadata.namespace!=ns": False,
        "status.phase==Running,metadata.name=x": False,
    }.items():
        pred = parse_field_selector(text)
        assert pred is not None and pred(obj) is want, text


def test_jsonpath_subset() -> None:
    obj = {
        "status": {"endpoints": [{"url": "u0"}, {"url": "u1"}]},
        "metadata": {"annotations": {"a.b/c": "v"}},
    }
    assert jsonpath(obj, ".status.endpoints[1].url") == "u1"
    assert jsonpath(obj, ".status.endpoints[5].url") is None
    assert jsonpath(obj, ".metadata.annotations['a.b/c']") == "v"
    assert jsonpath(obj, "{.status.missing}") is None


def test_human_duration_matches_kubectl() -> None:
    assert [
        human_duration(s) for s in (0, 59, 119, 120, 600, 3 * 3600, 9 * 3600, 3 * 86400, 400 * 86400)
    ] == [
        "0s",
        "59s",
        "119s",
        "2m",
        "10m",
        "3h",
        "9h",
        "3d",
        "400d",
    ]


def test_cel_subset() -> None:
    assert cel.evaluate("self.a > 1 && size(self.b) == 2", {"a": 2, "b": [1, 2]}) is True
    assert cel.evaluate("self.name.startsWith('x') || has(self.other)", {"name": "y"}) is False
    assert cel.evaluate("self.missing == 1", {}) is False
    assert cel.evaluate("self.all(x, x > 0)", [1]) is None, "macros are outside the subset: not enforced"
    assert cel.unsupported("oldSelf == self")
