"""Kubernetes resource quantities (``k8s.io/apimachinery/pkg/api/resource.Quantity``).

The grammar is the one in quantity.go's doc comment, narrowed to what its parser accepts::

    <quantity>        ::= <signedNumber><suffix>
    <number>          ::= <digits> | <digits>.<digits> | <digits>. | .<digits>
    <suffix>          ::= <binarySI> | <decimalExponent> | <decimalSI>
    <binarySI>        ::= Ki | Mi | Gi | Ti | Pi | Ei
    <decimalSI>       ::= n | u | m | "" | k | M | G | T | P | E
    <decimalExponent> ::= "e" <signedDigits> | "E" <signedDigits>

(the doc allows a fractional exponent, the parser does not). Values keep at most nine
fractional digits: a finer value is rounded up, away from zero, to the next nanounit, exactly
as the apiserver does. Unlike the apiserver, which silently caps binary quantities at
2^63-1 and serialises decimal ones above it wrongly (``1000E`` comes back as ``1``), this
module refuses anything larger in magnitude.

:func:`canonical_quantity` is the form the apiserver serialises (``Quantity.String``): the
suffix family of the input kept, no fractional digits, the largest suffix that loses nothing
(``1.5`` → ``1500m``, ``1.5Gi`` → ``1536Mi``, ``2048Ki`` → ``2Mi``, ``0.5Gi`` → ``512Mi``).
Where Go's own output is not stable (a binary quantity that is no whole number of Ki prints as
a bare integer, which reads back as decimal: ``1.953125Ki`` → ``2000`` → ``2k``) it is the
form Go settles on. Sending the canonical form makes the apiserver echo it byte for byte, so
what we apply and what we read back compare equal. :func:`resource_quantity` adds what the
apiserver's defaulting does to requests, limits and quotas: rounding up to milli-units.
"""

from __future__ import annotations

import decimal
import re
from decimal import Decimal
from typing import Literal

Format = Literal["DecimalSI", "BinarySI", "DecimalExponent"]

# The structural-schema pattern the CRDs carry for quantity fields (see crdgen); the same
# language as _QUANTITY_RE, but only non-negative, as every quantity in our specs is.
NON_NEGATIVE_PATTERN = r"^\+?([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?$"
MAX_LENGTH = 64
# Go reads the exponent as an int64 and truncates it to int32; that arithmetic is not
# reproduced, anything this far out is refused long before.
_MAX_EXPONENT_DIGITS = 6

_QUANTITY_RE = re.compile(
    r"(?P<sign>[+-]?)(?P<int>[0-9]*)(?:(?P<dot>\.)(?P<frac>[0-9]*))?"
    r"(?P<suffix>[KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?",
    re.ASCII,
)

_DECIMAL_SI: dict[str, int] = {
    "n": -9,
    "u": -6,
    "m": -3,
    "": 0,
    "k": 3,
    "M": 6,
    "G": 9,
    "T": 12,
    "P": 15,
    "E": 18,
}
_BINARY_SI: dict[str, int] = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL_SUFFIX = {exp: s for s, exp in _DECIMAL_SI.items()}
_BINARY_SUFFIX = {exp // 10: s for s, exp in _BINARY_SI.items()}

MAX_VALUE = Decimal(2**63 - 1)
NANO = Decimal("1e-9")
MILLI = Decimal("1e-3")
# Enough digits for any accepted input (64 characters times 2^60) without rounding.
_CONTEXT = decimal.Context(
    prec=200,
    Emax=decimal.MAX_EMAX,
    Emin=decimal.MIN_EMIN,
    traps=[decimal.Inexact, decimal.InvalidOperation, decimal.Overflow],
)
# Rounding to nanounits is inexact on purpose.
_ROUNDING = _CONTEXT.copy()
_ROUNDING.traps[decimal.Inexact] = False


class InvalidQuantity(ValueError):
    """Not a Kubernetes quantity, or out of the range a quantity can hold."""


def _parse(s: str | int | float) -> tuple[Decimal, Format]:
    text = _as_text(s)
    m = _QUANTITY_RE.fullmatch(text)
    if m is None or not (m["int"] or m["frac"]):
        raise InvalidQuantity(
            f"quantity {text!r} must be a number with an optional suffix "
            "(n, u, m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei or an exponent such as e3)"
        )
    suffix = m["suffix"] or ""
    digits = Decimal(f"{m['sign']}{m['int'] or '0'}.{m['frac'] or '0'}")
    value: Decimal
    fmt: Format
    if suffix in _DECIMAL_SI:
        fmt = "DecimalSI"
        value = digits.scaleb(_DECIMAL_SI[suffix], _CONTEXT)
    elif suffix in _BINARY_SI:
        fmt = "BinarySI"
        value = _CONTEXT.multiply(digits, Decimal(2 ** _BINARY_SI[suffix]))
    else:
        fmt = "DecimalExponent"
        exponent = suffix[1:].lstrip("+-").lstrip("0")
        if len(exponent) > _MAX_EXPONENT_DIGITS:
            raise InvalidQuantity(f"quantity {text!r}: the exponent is out of range")
        value = digits.scaleb(int(suffix[1:]), _CONTEXT)
    value = _bounded(value, text)
    if fmt == "BinarySI" and 0 < value.copy_abs() < 1:
        fmt = "DecimalSI"
    return value, fmt


def _bounded(value: Decimal, text: str) -> Decimal:
    # Checked before rounding too, so a huge value never reaches quantize.
    if value.copy_abs() > MAX_VALUE:
        raise InvalidQuantity(f"quantity {text!r} is larger than 2^63-1 in magnitude")
    if value != 0 and _exponent(value) < -9:
        # The apiserver keeps nanounits and rounds a finer request up, away from zero, so
        # asking for some of a resource never yields none.
        value = value.quantize(NANO, rounding=decimal.ROUND_UP, context=_ROUNDING)
    if value.copy_abs() > MAX_VALUE:
        raise InvalidQuantity(f"quantity {text!r} is larger than 2^63-1 in magnitude")
    return value


def _exponent(value: Decimal) -> int:
    exponent = value.as_tuple().exponent
    if not isinstance(exponent, int):
        raise InvalidQuantity(f"quantity {value} is not a finite number")
    return exponent


def _as_text(s: str | int | float) -> str:
    if isinstance(s, bool):
        raise InvalidQuantity(f"a quantity is a string or a number, not {s!r}")
    if isinstance(s, int):
        if abs(s) > MAX_VALUE:
            raise InvalidQuantity("quantity is larger than 2^63-1 in magnitude")
        return str(s)
    if isinstance(s, float):
        if s != s or s in (float("inf"), float("-inf")):
            raise InvalidQuantity(f"quantity {s!r} is not a finite number")
        return repr(s)
    if not isinstance(s, str):
        raise InvalidQuantity(f"a quantity is a string or a number, not {type(s).__name__}")
    if not s:
        raise InvalidQuantity("the quantity is empty")
    if len(s) > MAX_LENGTH:
        raise InvalidQuantity(f"quantity {s[:MAX_LENGTH]!r}... is longer than {MAX_LENGTH} characters")
    return s


def parse_quantity(s: str | int | float) -> Decimal:
    """The value of a quantity as the apiserver holds it (nanounits, rounded up)."""
    return _parse(s)[0]


def quantity_format(s: str | int | float) -> Format:
    """The suffix family the apiserver remembers for a quantity and serialises it with."""
    return _parse(s)[1]


def format_quantity(value: Decimal | int, fmt: Format = "DecimalSI") -> str:
    """The canonical text of ``value`` in suffix family ``fmt``: what the apiserver echoes unchanged."""
    value = Decimal(value)
    if not value.is_finite():
        raise InvalidQuantity(f"quantity {value} is not a finite number")
    value = _bounded(value, str(value))
    if value == 0:
        return "0"
    if fmt == "BinarySI":
        mantissa, power = int(value), 0
        if value == mantissa:
            while mantissa % 1024 == 0:
                mantissa //= 1024
                power += 1
        if power:
            return f"{mantissa}{_BINARY_SUFFIX[power]}"
        # Go would print a bare integer here (4.8828125Ki as "5000"), which it reads back as a
        # decimal quantity and prints differently ("5k"); the decimal form is the one that
        # survives a round trip. Fractions and values below 1Ki are decimal in Go as well.
        fmt = "DecimalSI"
    normal = value.normalize(_CONTEXT)
    sign, digits, _ = normal.as_tuple()
    exponent = _exponent(normal)
    mantissa = int("".join(map(str, digits)))
    # The largest multiple of three not above the exponent: the biggest suffix that keeps the
    # mantissa whole.
    shift = exponent % 3
    mantissa *= 10**shift
    exponent -= shift
    number = f"-{mantissa}" if sign else str(mantissa)
    if fmt == "DecimalExponent":
        return number + (f"e{exponent}" if exponent else "")
    return number + _DECIMAL_SUFFIX[exponent]


def canonical_quantity(s: str | int | float) -> str:
    """The apiserver's serialisation of ``s``; raise :class:`InvalidQuantity` if it is not one."""
    value, fmt = _parse(s)
    return format_quantity(value, fmt)


def compare_quantities(a: str | int | float, b: str | int | float) -> int:
    """-1, 0 or 1 as ``a`` is less than, equal to or greater than ``b`` (``Quantity.Cmp``)."""
    x, y = parse_quantity(a), parse_quantity(b)
    return (x > y) - (x < y)


def resource_quantity(s: str | int | float) -> str:
    """A requests/limits/quota amount as the apiserver stores it in a core/v1 ResourceList.

    Those must not be negative, and the apiserver's defaulting rounds them up to milli-units
    (``SetDefaults_ResourceList``): ``100u`` is stored as ``1m``.
    """
    value, fmt = _parse(s)
    # "-0" too: the CRD's pattern has no minus sign, and the two must agree.
    if value < 0 or (isinstance(s, str) and s.startswith("-")):
        raise InvalidQuantity(f"quantity {s!r} must not be negative")
    if _exponent(value) < -3:
        value = value.quantize(MILLI, rounding=decimal.ROUND_UP, context=_ROUNDING)
        if value > MAX_VALUE:
            raise InvalidQuantity(f"quantity {s!r} is larger than 2^63-1")
    return format_quantity(value, fmt)
