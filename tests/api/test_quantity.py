"""Kubernetes quantities: the apimachinery grammar, its canonical form, and its order."""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from choreo_dp.api.quantity import (
    MAX_VALUE,
    NON_NEGATIVE_PATTERN,
    InvalidQuantity,
    canonical_quantity,
    compare_quantities,
    format_quantity,
    parse_quantity,
    quantity_format,
    resource_quantity,
)

# What k8s.io/apimachinery v0.36.3 resource.ParseQuantity(s).CanonicalizeBytes() gives: the
# right-hand sides were produced by that Go code, not by this module.
GO_CANONICAL = [
    ("0", "0"),
    ("1", "1"),
    ("-0", "0"),
    ("+1", "1"),
    ("01", "1"),
    ("1.5", "1500m"),
    (".5", "500m"),
    ("1.", "1"),
    ("0.5", "500m"),
    ("100m", "100m"),
    ("1000m", "1"),
    ("1500m", "1500m"),
    ("0.1", "100m"),
    ("0.001", "1m"),
    ("0.0001", "100u"),
    ("0.1n", "1n"),
    ("0.000000001", "1n"),
    ("1n", "1n"),
    ("1u", "1u"),
    ("1000n", "1u"),
    ("1000000000", "1G"),
    ("1G", "1G"),
    ("12e6", "12e6"),
    ("1e3", "1e3"),
    ("1E3", "1e3"),
    ("1.5e3", "1500"),
    ("1e-3", "1e-3"),
    ("1e-30", "1e-9"),
    ("-1e-30", "-1e-9"),
    ("1k", "1k"),
    ("1000k", "1M"),
    ("1M", "1M"),
    ("1Ki", "1Ki"),
    ("1024", "1024"),
    ("1024Ki", "1Mi"),
    ("2048Ki", "2Mi"),
    ("1.5Ki", "1536"),
    ("1.5Gi", "1536Mi"),
    ("0.5Gi", "512Mi"),
    ("0.5Ki", "512"),
    ("1.1Ki", "1126400m"),
    ("1023.5Ki", "1048064"),
    ("8Ki", "8Ki"),
    ("1536Mi", "1536Mi"),
    ("1Ei", "1Ei"),
    ("7Ei", "7Ei"),
    ("-1.5Gi", "-1536Mi"),
    ("-1", "-1"),
    ("-1.5", "-1500m"),
    ("9223372036854775807", "9223372036854775807"),
    ("123456789.123456789", "123456789123456789n"),
    ("1e+3", "1e3"),
    ("1E-6", "1e-6"),
    ("500m", "500m"),
    ("64Mi", "64Mi"),
    ("128974848", "128974848"),
    ("129e6", "129e6"),
    ("129M", "129M"),
    ("123Mi", "123Mi"),
    ("100u", "100u"),
    ("0.1m", "100u"),
    ("1.001m", "1001u"),
    ("5e-10", "1e-9"),
]


@pytest.mark.parametrize(("text", "canonical"), GO_CANONICAL, ids=lambda v: str(v))
def test_canonical_form_is_what_the_apiserver_serialises(text: str, canonical: str) -> None:
    assert canonical_quantity(text) == canonical
    assert parse_quantity(canonical) == parse_quantity(text)
    assert canonical_quantity(canonical) == canonical


def test_canonical_form_is_where_go_settles() -> None:
    # Go prints 1.953125Ki (2000 bytes, no whole number of Ki) as "2000", and "2000" as "2k".
    assert canonical_quantity("1.953125Ki") == "2k"
    assert canonical_quantity("2000") == "2k"
    assert canonical_quantity("1.5Ki") == "1536"  # already stable in Go


def test_numbers_are_quantities() -> None:
    assert canonical_quantity(2) == "2"
    assert canonical_quantity(0.5) == "500m"
    assert canonical_quantity(1e-05) == "10e-6"  # JSON 1e-05 reads as a DecimalExponent in Go too
    assert parse_quantity(3) == 3


def test_suffix_families_are_remembered() -> None:
    assert quantity_format("1Gi") == "BinarySI"
    assert quantity_format("1G") == "DecimalSI"
    assert quantity_format("1e9") == "DecimalExponent"
    assert quantity_format("0.5Ki") == "BinarySI" and quantity_format("0.0001Ki") == "DecimalSI"


REFUSED = [
    "1Zz", "", " 1", "1 ", "1m\n", "1K", "1ki", "1KI", "1mi", "1Mb", "1b", "1Z", "1Y", "e3", ".", "+", "-",
    "1e", "1e+", "1.5e1.5", "1e3m", "1..5", "1.5.5", "--1", "+-1", "0x10", "1_000", "\uff11", "1e1000000",
    "8Ei", "1000E", "1e19", "9223372036854775808", "-9223372036854775808", "9.3E", "1" * 65,
]  # fmt: skip


@pytest.mark.parametrize("text", REFUSED, ids=repr)
def test_what_is_not_a_quantity_is_refused(text: str) -> None:
    with pytest.raises(InvalidQuantity):
        canonical_quantity(text)


@pytest.mark.parametrize(
    "value", [True, None, math.nan, math.inf, -math.inf, [], {}, 2**63, -(2**63), 10**400, 1e300]
)
def test_other_types_are_refused(value: object) -> None:
    with pytest.raises(InvalidQuantity):
        parse_quantity(value)  # type: ignore[arg-type]


def test_resource_quantities_are_non_negative_and_in_milli_units() -> None:
    assert resource_quantity("+1.5") == "1500m" and resource_quantity(0) == "0"
    # ResourceList defaulting rounds up to milli-units.
    assert resource_quantity("100u") == "1m" and resource_quantity("1.0001") == "1001m"
    assert resource_quantity("0.0001Ki") == "103m" and resource_quantity("1n") == "1m"
    for bad in ("-1", "-0", "-1m", -1, -0.5):
        with pytest.raises(InvalidQuantity, match="negative"):
            resource_quantity(bad)


def test_the_crd_pattern_is_the_grammar_without_a_minus_sign() -> None:
    import re

    pattern = re.compile(NON_NEGATIVE_PATTERN)
    for text, _ in GO_CANONICAL:
        assert bool(pattern.search(text)) is (not text.startswith("-")), text
    for text in REFUSED:
        if text not in ("8Ei", "1000E", "1e19", "9223372036854775808", "9.3E", "1" * 65, "1e1000000", "1m\n"):
            assert not pattern.search(text), text


def test_comparison() -> None:
    assert compare_quantities("1", "1000m") == 0
    assert compare_quantities("1Gi", "1G") == 1
    assert compare_quantities("500m", "0.6") == -1
    assert compare_quantities("1e3", "1k") == 0
    assert compare_quantities("-1", "0") == -1


# -- properties ---------------------------------------------------------------------------

_SUFFIX_VALUE = {
    "n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000), "": Fraction(1),
    "k": Fraction(10**3), "M": Fraction(10**6), "G": Fraction(10**9), "T": Fraction(10**12),
    "P": Fraction(10**15), "E": Fraction(10**18),
    "Ki": Fraction(2**10), "Mi": Fraction(2**20), "Gi": Fraction(2**30), "Ti": Fraction(2**40),
    "Pi": Fraction(2**50), "Ei": Fraction(2**60),
}  # fmt: skip


@st.composite
def quantities(draw: st.DrawFn) -> tuple[str, Fraction]:
    """A quantity in the grammar and its exact value, computed independently with Fractions."""
    sign = draw(st.sampled_from(["", "+", "-"]))
    whole = draw(st.text("0123456789", max_size=12))
    frac = draw(st.text("0123456789", max_size=12))
    dot = draw(st.booleans()) or not whole
    if not dot:
        frac = ""
    if not whole and not frac:
        whole = "0"
    number = whole + ("." + frac if dot else "")
    kind = draw(st.sampled_from(["si", "exp"]))
    if kind == "si":
        suffix = draw(st.sampled_from(sorted(_SUFFIX_VALUE)))
        scale = _SUFFIX_VALUE[suffix]
    else:
        exp = draw(st.integers(-25, 25))
        suffix = (
            draw(st.sampled_from(["e", "E"]))
            + draw(st.sampled_from(["", "+"] if exp >= 0 else [""]))
            + str(exp)
        )
        scale = Fraction(10) ** exp
    digits = Fraction(int(whole or "0")) + (Fraction(int(frac), 10 ** len(frac)) if frac else 0)
    value = digits * scale * (-1 if sign == "-" else 1)
    return f"{sign}{number}{suffix}", value


def _apiserver_value(exact: Fraction) -> Fraction:
    """Nanounits, rounded up away from zero, like ParseQuantity."""
    nanos = abs(exact) * 10**9
    rounded = Fraction(math.ceil(nanos), 10**9)
    return rounded if exact >= 0 else -rounded


@given(quantities())
@settings(max_examples=800)
@example(("1.5Gi", Fraction(3 * 2**29)))
@example(("0.0000000001", Fraction(1, 10**10)))
def test_values_agree_with_exact_arithmetic(q: tuple[str, Fraction]) -> None:
    text, exact = q
    expected = _apiserver_value(exact)
    if abs(expected) > Fraction(MAX_VALUE):
        with pytest.raises(InvalidQuantity):
            parse_quantity(text)
        return
    assert Fraction(parse_quantity(text)) == expected


@given(quantities())
@settings(max_examples=800)
def test_canonical_form_is_idempotent_and_keeps_the_value(q: tuple[str, Fraction]) -> None:
    text, _ = q
    try:
        canonical = canonical_quantity(text)
    except InvalidQuantity:
        return
    assert canonical_quantity(canonical) == canonical
    assert parse_quantity(canonical) == parse_quantity(text)
    assert "." not in canonical and not canonical.startswith("+")
    assert canonical == "0" or not canonical.lstrip("-").startswith("0")


_formats = st.sampled_from(["DecimalSI", "BinarySI", "DecimalExponent"])
_values = st.decimals(
    min_value=-MAX_VALUE, max_value=MAX_VALUE, allow_nan=False, allow_infinity=False, places=9
) | st.integers(-(2**63) + 1, 2**63 - 1).map(Decimal)


@given(_values, _formats)
@settings(max_examples=800)
def test_parse_of_format_is_the_identity(value: Decimal, fmt: str) -> None:
    text = format_quantity(value, fmt)  # type: ignore[arg-type]
    assert parse_quantity(text) == value
    assert canonical_quantity(text) == text


@given(quantities(), quantities())
@settings(max_examples=500)
def test_order_agrees_with_the_decimal_value(a: tuple[str, Fraction], b: tuple[str, Fraction]) -> None:
    (ta, ea), (tb, eb) = a, b
    va, vb = _apiserver_value(ea), _apiserver_value(eb)
    if max(abs(va), abs(vb)) > Fraction(MAX_VALUE):
        return
    assert compare_quantities(ta, tb) == (va > vb) - (va < vb)
    assert compare_quantities(canonical_quantity(ta), canonical_quantity(tb)) == (va > vb) - (va < vb)


# -- the apiserver as the oracle ------------------------------------------------------------


def _sample_quantities(n: int) -> list[str]:
    """Non-negative quantities across every suffix family, drawn from a fixed seed."""
    import random

    rng = random.Random(12)
    out = [text for text, _ in GO_CANONICAL if not text.startswith("-")]
    out += ["1.953125Ki", "4.8828125Ki", "0.0001Ki", "1000Ki", "100u", "1.0001"]
    while len(out) < n:
        whole = str(rng.randint(0, 10 ** rng.randint(0, 7)))
        frac = "".join(rng.choice("0123456789") for _ in range(rng.randint(0, 10)))
        number = whole + ("." + frac if frac else "")
        suffix = rng.choice([*_SUFFIX_VALUE, f"e{rng.randint(-12, 9)}", f"E+{rng.randint(0, 6)}"])
        text = number + suffix
        try:
            resource_quantity(text)
        except InvalidQuantity:
            continue
        out.append(text)
    return out


def _dry_run(api: Any, path: str, obj: dict[str, Any]) -> dict[str, Any]:
    from tests.conformance.helpers import raw

    status, body, _ = raw(api, "POST", path, query={"dryRun": "All"}, body=obj)
    assert status == 201, body
    assert isinstance(body, dict)
    return body


def test_the_apiserver_agrees_on_value_and_canonical_form(kube_target: Any) -> None:
    """Dry-run objects carry a few hundred quantities through ParseQuantity and back.

    What we send in our canonical form must come back byte for byte (so an applied object and
    the one read back compare equal); what we send raw must come back with the same value and
    canonical form. A plain Quantity (an emptyDir's sizeLimit) and a ResourceList entry (a
    quota's hard limit, where defaulting also rounds up to milli-units) are both checked.
    """
    from tests.conformance.helpers import api_client

    texts = _sample_quantities(300)
    api = api_client(kube_target.kubeconfig)
    try:
        for form, convert in (("ours", True), ("raw", False)):
            sent = [canonical_quantity(t) if convert else t for t in texts]
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"quantities-{form}"},
                "spec": {
                    "containers": [{"name": "c", "image": "nginx:1.25"}],
                    "volumes": [{"name": f"v{i}", "emptyDir": {"sizeLimit": q}} for i, q in enumerate(sent)],
                },
            }
            volumes = _dry_run(api, "/api/v1/namespaces/default/pods", pod)["spec"]["volumes"]
            # Admission adds the service account's token volume; ours are found by name.
            by_name = {v["name"]: v for v in volumes}
            back = [by_name[f"v{i}"]["emptyDir"]["sizeLimit"] for i in range(len(sent))]
            for text, out, got in zip(texts, sent, back, strict=True):
                if convert:
                    assert got == out, (text, out, got)
                assert parse_quantity(got) == parse_quantity(text), (text, got)
                assert canonical_quantity(got) == canonical_quantity(text), (text, got)

            sent = [resource_quantity(t) if convert else t for t in texts]
            hard = {f"requests.example.com/q{i}": q for i, q in enumerate(sent)}
            quota = {
                "apiVersion": "v1",
                "kind": "ResourceQuota",
                "metadata": {"name": f"q-{form}"},
                "spec": {"hard": hard},
            }
            back_hard = _dry_run(api, "/api/v1/namespaces/default/resourcequotas", quota)["spec"]["hard"]
            for i, (text, out) in enumerate(zip(texts, sent, strict=True)):
                got = back_hard[f"requests.example.com/q{i}"]
                if convert:
                    assert got == out, (text, out, got)
                assert resource_quantity(got) == resource_quantity(text), (text, got)
    finally:
        api.close()
