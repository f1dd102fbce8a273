"""A small CEL subset for CRD ``x-kubernetes-validations`` rules.

Supported: literals (int, double, string, bool, null, lists), ``self`` with field access
and indexing, ``has(self.f)``, ``size(x)`` / ``x.size()``, ``startsWith``, ``endsWith``,
``contains``, ``matches``, unary ``!`` and ``-``, ``* / %``, ``+ -``, comparisons, ``in``,
``&&``, ``||`` and ``?:``.  Rules using anything else (``oldSelf`` transition rules,
macros such as ``all``/``exists``, ``messageExpression``) are *not enforced*: they are
skipped rather than guessed at, and ``unsupported(rule)`` says so.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

Node = tuple[Any, ...]
_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+\.\d+|\d+)|(?P<str>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")|(?P<id>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>&&|\|\||==|!=|<=|>=|[-+*/%<>!?:.,()\[\]]))"
)


class Unsupported(Exception):
    """The rule uses CEL this subset does not implement."""


class _NoSuchField(Exception):
    pass


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise Unsupported(f"cannot tokenize at {text[pos:]!r}")
        pos = m.end()
        kind = m.lastgroup
        assert kind is not None
        out.append((kind, m.group(kind)))
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> str | None:
        return self.toks[self.i][1] if self.i < len(self.toks) else None

    def take(self, want: str | None = None) -> tuple[str, str]:
        if self.i >= len(self.toks):
            raise Unsupported("unexpected end of rule")
        tok = self.toks[self.i]
        if want is not None and tok[1] != want:
            raise Unsupported(f"expected {want!r}, got {tok[1]!r}")
        self.i += 1
        return tok

    def parse(self) -> Node:
        node = self.ternary()
        if self.i != len(self.toks):
            raise Unsupported(f"trailing input at {self.peek()!r}")
        return node

    def ternary(self) -> Node:
        cond = self.binary(0)
        if self.peek() == "?":
            self.take("?")
            a = self.ternary()
            self.take(":")
            b = self.ternary()
            return ("?", cond, a, b)
        return cond

    LEVELS = (("||",), ("&&",), ("==", "!=", "<", "<=", ">", ">=", "in"), ("+", "-"), ("*", "/", "%"))

    def binary(self, level: int) -> Node:
        if level == len(self.LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        while self.peek() in self.LEVELS[level]:
            op = self.take()[1]
            right = self.binary(level + 1)
            left = (op, left, right)
        return left

    def unary(self) -> Node:
        if self.peek() == "!":
            self.take()
            return ("!", self.unary())
        if self.peek() == "-":
            self.take()
            return ("neg", self.unary())
        return self.postfix()

    def postfix(self) -> Node:
        node = self.primary()
        while self.peek() in (".", "["):
            if self.take()[1] == ".":
                name = self.take()[1]
                node = ("call", name, [node, *self.args()]) if self.peek() == "(" else ("field", node, name)
            else:
                idx = self.ternary()
                self.take("]")
                node = ("index", node, idx)
        return node

    def args(self) -> list[Node]:
        self.take("(")
        out: list[Node] = []
        while self.peek() != ")":
            out.append(self.ternary())
            if self.peek() == ",":
                self.take()
        self.take(")")
        return out

    def primary(self) -> Node:
        kind, text = self.take()
        if kind == "num":
            return ("lit", float(text) if "." in text else int(text))
        if kind == "str":
            return ("lit", bytes(text[1:-1], "utf-8").decode("unicode_escape"))
        if kind == "id":
            if text in ("true", "false"):
                return ("lit", text == "true")
            if text == "null":
                return ("lit", None)
            if text == "self":
                return ("self",)
            if self.peek() == "(":
                return ("call", text, self.args())
            raise Unsupported(f"unknown identifier {text!r}")
        if text == "(":
            node = self.ternary()
            self.take(")")
            return node
        if text == "[":
            items: list[Node] = []
            while self.peek() != "]":
                items.append(self.ternary())
                if self.peek() == ",":
                    self.take()
            self.take("]")
            return ("list", items)
        raise Unsupported(f"unexpected {text!r}")


@lru_cache(maxsize=256)
def compile_rule(rule: str) -> Node | None:
    """The parsed rule, or None when it is outside the supported subset."""
    try:
        return _Parser(rule).parse()
    except Unsupported:
        return None


def unsupported(rule: str) -> bool:
    return compile_rule(rule) is None


def _eval(node: Node, self_value: Any) -> Any:
    op = node[0]
    if op == "lit":
        return node[1]
    if op == "self":
        return self_value
    if op == "list":
        return [_eval(n, self_value) for n in node[1]]
    if op == "field":
        base = _eval(node[1], self_value)
        if not isinstance(base, dict) or node[2] not in base:
            raise _NoSuchField(node[2])
        return base[node[2]]
    if op == "index":
        base = _eval(node[1], self_value)
        idx = _eval(node[2], self_value)
        try:
            return base[idx]
        except (KeyError, IndexError, TypeError):
            raise _NoSuchField(str(idx)) from None
    if op == "!":
        return not _eval(node[1], self_value)
    if op == "neg":
        return -_eval(node[1], self_value)
    if op == "&&":
        return bool(_eval(node[1], self_value)) and bool(_eval(node[2], self_value))
    if op == "||":
        return bool(_eval(node[1], self_value)) or bool(_eval(node[2], self_value))
    if op == "?":
        return _eval(node[2], self_value) if _eval(node[1], self_value) else _eval(node[3], self_value)
    if op == "call":
        return _call(node[1], node[2], self_value)
    a = _eval(node[1], self_value)
    b = _eval(node[2], self_value)
    ops: dict[str, Any] = {
        "==": lambda: a == b,
        "!=": lambda: a != b,
        "<": lambda: a < b,
        "<=": lambda: a <= b,
        ">": lambda: a > b,
        ">=": lambda: a >= b,
        "in": lambda: a in b,
        "+": lambda: a + b,
        "-": lambda: a - b,
        "*": lambda: a * b,
        "/": lambda: a // b if isinstance(a, int) and isinstance(b, int) else a / b,
        "%": lambda: a % b,
    }
    if op not in ops:
        raise Unsupported(op)
    return ops[op]()


def _call(name: str, args: list[Node], self_value: Any) -> Any:
    if name == "has":
        if len(args) != 1 or args[0][0] != "field":
            raise Unsupported("has() needs a field selection")
        try:
            base = _eval(args[0][1], self_value)
        except _NoSuchField:
            return False
        return isinstance(base, dict) and args[0][2] in base
    values = [_eval(a, self_value) for a in args]
    if name == "size" and len(values) == 1:
        return len(values[0])
    if name == "startsWith" and len(values) == 2:
        return str(values[0]).startswith(values[1])
    if name == "endsWith" and len(values) == 2:
        return str(values[0]).endswith(values[1])
    if name == "contains" and len(values) == 2:
        return values[1] in values[0]
    if name == "matches" and len(values) == 2:
        return re.search(values[1], str(values[0])) is not None
    raise Unsupported(name)


def evaluate(rule: str, self_value: Any) -> bool | None:
    """True/False for a rule in the subset; None when it cannot be evaluated (not enforced)."""
    node = compile_rule(rule)
    if node is None:
        return None
    try:
        return bool(_eval(node, self_value))
    except _NoSuchField:
        # CEL raises "no such key" — the real server reports the rule as failed.
        return False
    except (Unsupported, TypeError, ValueError, ZeroDivisionError, re.error):
        return None
