"""Policy predicates such as `defenses.dp.epsilon <= 3`, parsed without eval.

A policy file comes from whoever configures a deployment pipeline; evaluating it with
Python's eval would hand that file code execution. The grammar is deliberately tiny:

    predicate := operand OP literal
    operand   := path | FUNC "(" path ")"          FUNC: len, min, max
    path      := name ("." (name | index))*        e.g. evaluation.per_class_accuracy.3
    OP        := <= < >= > == != in "not in"
    literal   := number | "string" | 'string' | true | false | null | "[" literals "]"
"""
from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import cast

from cards.errors import LaminateError

_TOKEN = re.compile(r"""
    \s*(?:
      (?P<num>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
    | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    | (?P<op><=|>=|==|!=|<|>)
    | (?P<punct>[()\[\],])
    | (?P<word>[A-Za-z_][A-Za-z0-9_]*(?:\.(?:[A-Za-z_][A-Za-z0-9_]*|\d+))*)
    )""", re.VERBOSE)

_FUNCS = {"len", "min", "max"}
_KEYWORDS = {"true": True, "false": False, "null": None}
_COMPARE = {
    "<=": lambda a, b: a <= b, "<": lambda a, b: a < b,
    ">=": lambda a, b: a >= b, ">": lambda a, b: a > b,
}


class PredicateError(LaminateError):
    """A predicate string that does not follow the grammar."""


class _Missing:
    """Marks a path that does not exist in the claims (distinct from a null value)."""


@dataclass(frozen=True)
class Predicate:
    """One parsed policy predicate: ``[func(]path[)] op value`` over the claims."""
    text: str
    func: str | None
    path: tuple
    op: str
    value: object

    @functools.cached_property  # read on every appraisal, as the check's field
    def field(self) -> str:
        """The claims path as a check's field name, e.g. ``claims.evaluation.accuracy``."""
        return "claims." + ".".join(str(p) for p in self.path)

    def evaluate(self, claims: dict) -> tuple[bool, str]:
        """Return (holds, reason); reason quotes the value that was compared."""
        actual = _resolve(claims, self.path)
        if actual is _Missing:
            return False, f"{self.field} is not in the card"
        if self.func:
            actual, problem = _aggregate(self.func, actual, self.field)
            if problem:
                return False, problem
        shown = f"{self.func}({self.field})" if self.func else self.field
        holds, problem = _apply(self.op, actual, self.value)
        if problem:
            return False, f"{shown} is {_show(actual)}: {problem}"
        verdict = "holds" if holds else "violated"
        return holds, f"{shown} = {_show(actual)}; {self.text} {verdict}"


def parse(text: str) -> Predicate:
    """Parse one predicate; raise PredicateError naming what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise PredicateError("predicate must be a non-empty string")
    tokens = _tokenize(text)
    pos = 0

    def take():
        nonlocal pos
        if pos >= len(tokens):
            raise PredicateError(f"{text!r}: unexpected end")
        tok = tokens[pos]
        pos += 1
        return tok

    kind, val = take()
    func = None
    if kind == "word" and val in _FUNCS and pos < len(tokens) and tokens[pos] == ("punct", "("):
        func = val
        take()
        kind, val = take()
        if kind != "word" or val in _KEYWORDS:
            raise PredicateError(f"{text!r}: {func}() takes a claim path")
        path = _path(val)
        if take() != ("punct", ")"):
            raise PredicateError(f"{text!r}: missing ')'")
    elif kind == "word" and val not in _KEYWORDS and val not in ("in", "not"):
        path = _path(val)
    else:
        raise PredicateError(f"{text!r}: must start with a claim path such as evaluation.accuracy")

    if pos >= len(tokens):
        raise PredicateError(f"{text!r}: expected a comparison (<=, <, >=, >, ==, !=, in, not in)")
    kind, val = take()
    if kind == "op":
        op = val
    elif (kind, val) == ("word", "in"):
        op = "in"
    elif (kind, val) == ("word", "not") and pos < len(tokens) and tokens[pos] == ("word", "in"):
        take()
        op = "not in"
    else:
        raise PredicateError(f"{text!r}: expected a comparison (<=, <, >=, >, ==, !=, in, not in)")

    value, pos = _literal(tokens, pos, text)
    if pos != len(tokens):
        raise PredicateError(f"{text!r}: unexpected {tokens[pos][1]!r} after the value")
    if op in ("in", "not in") and not isinstance(value, list):
        raise PredicateError(f"{text!r}: '{op}' needs a list such as [\"sim\", \"tpm\"]")
    if op in _COMPARE and not (_is_number(value) or isinstance(value, str)):
        raise PredicateError(f"{text!r}: '{op}' needs a number or a string")
    return Predicate(text=_normalise(text), func=func, path=path, op=op, value=value)


_STRING = re.compile(r"""("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')""")


def _normalise(text: str) -> str:
    """Whitespace runs collapsed to one space, except inside string literals: the text
    is parsed again later, and "banned  model" must stay a different name from
    "banned model"."""
    pieces = _STRING.split(text)     # odd pieces are the literals, kept exactly
    return "".join(p if i % 2 else re.sub(r"\s+", " ", p) for i, p in enumerate(pieces)).strip()


def _tokenize(text: str) -> list:
    tokens, pos = [], 0
    stripped = text.rstrip()
    while pos < len(stripped):
        m = _TOKEN.match(stripped, pos)
        if not m or m.end() == pos:
            raise PredicateError(f"{text!r}: cannot read {stripped[pos:].strip()[:20]!r}")
        kind = cast(str, m.lastgroup)  # every alternative of _TOKEN is a named group
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    return tokens


def _path(word: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in word.split("."))


def _literal(tokens, pos, text):
    if pos >= len(tokens):
        raise PredicateError(f"{text!r}: missing the value to compare with")
    kind, val = tokens[pos]
    pos += 1
    if kind == "num":
        number = float(val)
        if not math.isfinite(number):
            raise PredicateError(f"{text!r}: {val} is not a finite number")
        return (int(val) if re.fullmatch(r"[-+]?\d+", val) else number), pos
    if kind == "str":
        return _unquote(val), pos
    if kind == "word" and val in _KEYWORDS:
        return _KEYWORDS[val], pos
    if (kind, val) == ("punct", "["):
        items = []
        if pos < len(tokens) and tokens[pos] == ("punct", "]"):
            return items, pos + 1
        while True:
            item, pos = _literal(tokens, pos, text)
            if isinstance(item, list):
                raise PredicateError(f"{text!r}: nested lists are not supported")
            items.append(item)
            if pos >= len(tokens):
                raise PredicateError(f"{text!r}: missing ']'")
            sep = tokens[pos]
            pos += 1
            if sep == ("punct", "]"):
                return items, pos
            if sep != ("punct", ","):
                raise PredicateError(f"{text!r}: expected ',' or ']' in the list")
    raise PredicateError(f"{text!r}: {val!r} is not a value (number, \"string\", true, false, null, [list])")


def _unquote(token: str) -> str:
    body = token[1:-1]
    return re.sub(r"\\(.)", r"\1", body)


def _resolve(data, path):
    for part in path:
        if isinstance(part, int) and isinstance(data, list):
            if part >= len(data):
                return _Missing
            data = data[part]
        elif isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, dict) and str(part) in data:
            data = data[str(part)]
        else:
            return _Missing
    return data


def _aggregate(func: str, value, field: str):
    """(len/min/max of value, None), or (None, why not): a claim of the wrong shape, an
    empty list or a NaN is a violated predicate, never an exception out of appraisal.
    NaN is refused because min() and max() would skip or pick it depending on order."""
    if func == "len":
        if not isinstance(value, (list, dict, str)):
            return None, f"len() needs a list, mapping or string, {field} is {_kind(value)}"
        return len(value), None
    if not isinstance(value, list) or not all(_is_number(v) for v in value):
        return None, f"{func}() needs a list of numbers, {field} is {_kind(value)}"
    if not value:
        return None, f"{func}() of an empty list: {field} has no values"
    if any(isinstance(v, float) and math.isnan(v) for v in value):
        return None, f"{func}() of a list holding NaN at {field}"
    return (min(value) if func == "min" else max(value)), None


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _kind(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if _is_number(v):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "a list"
    return "a mapping"


def _show(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (dict, list)):
        return _kind(v)
    return repr(v) if isinstance(v, str) else f"{v:g}" if isinstance(v, float) else str(v)


def _same_kind(a, b) -> bool:
    if _is_number(a) and _is_number(b):
        return True
    return type(a) is type(b) or a is None or b is None


def _apply(op, actual, expected):
    """Return (holds, problem): problem is set when the values cannot be compared."""
    if op in ("==", "!="):
        equal = _same_kind(actual, expected) and actual == expected \
            and isinstance(actual, bool) == isinstance(expected, bool)
        return (equal if op == "==" else not equal), None
    if op in ("in", "not in"):
        found = any(_same_kind(actual, e) and actual == e
                    and isinstance(actual, bool) == isinstance(e, bool) for e in expected)
        return (found if op == "in" else not found), None
    if _is_number(expected):
        if not _is_number(actual):
            return False, f"not comparable with the number {_show(expected)}"
        if isinstance(actual, float) and math.isnan(actual):
            return False, "NaN is not comparable"
    elif not isinstance(actual, str):
        return False, f"not comparable with the string {expected!r}"
    return _COMPARE[op](actual, expected), None
