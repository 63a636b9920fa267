"""Kubernetes label selectors, in both of their forms, parsed to one ``Selector`` that matches label maps.

Owns the string grammar (``app=web,tier in (a,b),!canary``, as ``kubectl -l`` and list/watch take it), the
object form used in specs (``matchLabels`` / ``matchExpressions``), label key and value validation, and the
canonical rendering (``str(selector)``, which parses back to an equal selector).  Pure: no I/O.

Semantics follow ``k8s.io/apimachinery/pkg/labels``: requirements are ANDed; the empty selector matches
everything; ``!=`` and ``notin`` also match objects that lack the key.  The numeric operators ``>`` and
``<`` (node selectors only) are refused.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from spider.errors import InvalidInput

_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_NAME_MAX = 63
_PREFIX_MAX = 253


def label_key_problem(key: str) -> str | None:
    """Why ``key`` is not a valid label key (``[prefix/]name``), or ``None`` when it is."""
    prefix, slash, name = key.rpartition("/")
    if slash:
        if not prefix:
            return f"label key {key!r} has an empty prefix"
        if len(prefix) > _PREFIX_MAX or not _DNS_SUBDOMAIN.fullmatch(prefix):
            return f"label key prefix {prefix!r} must be a lower-case DNS subdomain of at most {_PREFIX_MAX} characters"
    if not name:
        return f"label key {key!r} has an empty name"
    if len(name) > _NAME_MAX or not _NAME.fullmatch(name):
        return (
            f"label key name {name!r} must be at most {_NAME_MAX} alphanumerics, '-', '_' or '.', "
            "starting and ending with an alphanumeric"
        )
    return None


def label_value_problem(value: str) -> str | None:
    """Why ``value`` is not a valid label value (empty, or like a key's name part), or ``None`` when it is."""
    if value and (len(value) > _NAME_MAX or not _NAME.fullmatch(value)):
        return (
            f"label value {value!r} must be empty or at most {_NAME_MAX} alphanumerics, '-', '_' or '.', "
            "starting and ending with an alphanumeric"
        )
    return None


class Operator(enum.StrEnum):
    """A requirement's operator; the value is its spelling in the string form."""

    EQUALS = "="
    NOT_EQUALS = "!="
    IN = "in"
    NOT_IN = "notin"
    EXISTS = "exists"
    DOES_NOT_EXIST = "!"


_SINGLE = (Operator.EQUALS, Operator.NOT_EQUALS)
_SET = (Operator.IN, Operator.NOT_IN)
_NO_VALUES = (Operator.EXISTS, Operator.DOES_NOT_EXIST)


def _value_set(values: Iterable[str]) -> frozenset[str]:
    return frozenset(values)


@attrs.frozen
class Requirement:
    """One condition on one label key; ``InvalidInput`` when the key, values or their count are wrong."""

    key: str
    operator: Operator
    values: frozenset[str] = attrs.field(default=frozenset(), converter=_value_set)

    def __attrs_post_init__(self) -> None:
        problem = label_key_problem(self.key)
        if problem is None:
            problem = next(filter(None, map(label_value_problem, sorted(self.values))), None)
        if problem is None:
            n = len(self.values)
            if self.operator in _SINGLE and n != 1:
                problem = f"operator {self.operator.value!r} on {self.key!r} takes exactly one value, not {n}"
            elif self.operator in _SET and n == 0:
                problem = f"operator {self.operator.value!r} on {self.key!r} needs at least one value"
            elif self.operator in _NO_VALUES and n:
                problem = f"operator {self.operator.name.lower()!r} on {self.key!r} takes no values"
        if problem is not None:
            raise InvalidInput(reason=problem)

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a label map satisfies this requirement."""
        present = self.key in labels
        if self.operator is Operator.EXISTS:
            return present
        if self.operator is Operator.DOES_NOT_EXIST:
            return not present
        hit = present and labels[self.key] in self.values
        return hit if self.operator in (Operator.EQUALS, Operator.IN) else not hit

    def sort_key(self) -> tuple[str, str, tuple[str, ...]]:
        """The canonical order of requirements: by key, then operator, then values."""
        return self.key, self.operator.value, tuple(sorted(self.values))

    def __str__(self) -> str:
        if self.operator is Operator.EXISTS:
            return self.key
        if self.operator is Operator.DOES_NOT_EXIST:
            return f"!{self.key}"
        values = sorted(self.values)
        if self.operator in _SINGLE:
            return f"{self.key}{self.operator.value}{values[0]}"
        return f"{self.key} {self.operator.value} ({','.join(values)})"


def _canonical(requirements: Iterable[Requirement]) -> tuple[Requirement, ...]:
    return tuple(sorted(requirements, key=Requirement.sort_key))


@attrs.frozen
class Selector:
    """A conjunction of requirements; the empty selector matches every label map."""

    requirements: tuple[Requirement, ...] = attrs.field(default=(), converter=_canonical)

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a label map satisfies every requirement."""
        return all(r.matches(labels) for r in self.requirements)

    @property
    def empty(self) -> bool:
        """True for the selector that matches everything."""
        return not self.requirements

    def __str__(self) -> str:
        return ",".join(map(str, self.requirements))


EVERYTHING = Selector()

# --- the string form ---------------------------------------------------------------------------------

_TOKEN = re.compile(r"(?P<symbol>==|!=|=|!|\(|\)|,|<|>)|(?P<word>[^\s=!(),<>]+)")


@attrs.frozen
class _Token:
    text: str
    word: bool
    column: int


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = _skip_space(text, 0)
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        assert m is not None  # every non-space character starts a symbol or a word
        word = m.group("word")
        tokens.append(_Token(m.group(), word is not None, pos + 1))
        pos = _skip_space(text, m.end())
    return tokens


class _Parser:
    """Recursive descent over the token list (grammar of ``labels.Parse``)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.pos = 0

    def fail(self, expected: str) -> InvalidInput:
        if self.pos < len(self.tokens):
            tok = self.tokens[self.pos]
            found = f"found {tok.text!r} at column {tok.column}"
        else:
            found = "found the end"
        return InvalidInput(reason=f"label selector {self.text!r}: expected {expected}, {found}")

    def peek(self) -> _Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> _Token:
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def at_boundary(self) -> bool:
        tok = self.peek()
        return tok is None or (not tok.word and tok.text == ",")

    def word(self, what: str) -> str:
        tok = self.peek()
        if tok is None or not tok.word:
            raise self.fail(what)
        return self.take().text

    def selector(self) -> Selector:
        requirements: list[Requirement] = []
        if self.peek() is None:
            return EVERYTHING
        while True:
            requirements.append(self.requirement())
            if self.peek() is None:
                return Selector(tuple(requirements))
            if not self.at_boundary():
                raise self.fail("',' or the end")
            self.take()

    def make(self, key: str, operator: Operator, values: frozenset[str] = frozenset()) -> Requirement:
        try:
            return Requirement(key, operator, values)
        except InvalidInput as exc:
            raise InvalidInput(reason=f"label selector {self.text!r}: {exc.reason}") from None

    def requirement(self) -> Requirement:
        tok = self.peek()
        if tok is not None and not tok.word and tok.text == "!":
            self.take()
            key = self.word("a label key after '!'")
            if not self.at_boundary():
                raise self.fail(f"',' or the end after '!{key}'")
            return self.make(key, Operator.DOES_NOT_EXIST)
        key = self.word("a label key or '!'")
        if self.at_boundary():
            return self.make(key, Operator.EXISTS)
        op = self.take()
        if not op.word and op.text in ("=", "=="):
            return self.make(key, Operator.EQUALS, self.exact_value())
        if not op.word and op.text == "!=":
            return self.make(key, Operator.NOT_EQUALS, self.exact_value())
        if op.word and op.text in ("in", "notin"):
            return self.make(key, Operator(op.text), self.value_set())
        self.pos -= 1
        if op.text in ("<", ">"):
            raise self.fail("'=', '==', '!=', 'in' or 'notin' ('<' and '>' are not supported)")
        raise self.fail(f"'=', '==', '!=', 'in', 'notin', ',' or the end after {key!r}")

    def exact_value(self) -> frozenset[str]:
        if self.at_boundary():
            return frozenset({""})
        return frozenset({self.word("a label value")})

    def value_set(self) -> frozenset[str]:
        tok = self.peek()
        if tok is None or tok.word or tok.text != "(":
            raise self.fail("'('")
        self.take()
        values: set[str] = set()
        want_value = True  # NB: an empty slot ("()", "(a,)", "(,a)") is the empty value, as in Kubernetes
        while True:
            tok = self.peek()
            if tok is None:
                raise self.fail("a label value, ',' or ')'")
            self.take()
            if tok.word and want_value:
                values.add(tok.text)
                want_value = False
            elif not tok.word and tok.text == ",":
                if want_value:
                    values.add("")
                want_value = True
            elif not tok.word and tok.text == ")":
                if want_value:
                    values.add("")
                return frozenset(values)
            else:
                self.pos -= 1
                raise self.fail("',' or ')'" if not want_value else "a label value, ',' or ')'")


def parse_selector(text: str) -> Selector:
    """Parse the string form of a label selector; blank means everything; ``InvalidInput`` when malformed."""
    return _Parser(text).selector()


# --- the object form ---------------------------------------------------------------------------------

_OPERATORS = {
    "In": Operator.IN,
    "NotIn": Operator.NOT_IN,
    "Exists": Operator.EXISTS,
    "DoesNotExist": Operator.DOES_NOT_EXIST,
}


def selector_from_label_selector(d: Mapping[str, Any]) -> Selector:
    """The selector a ``metav1.LabelSelector`` object describes; ``{}`` matches everything.

    ``InvalidInput`` on unknown fields, non-string keys or values, unknown operators, values given to
    ``Exists``/``DoesNotExist`` or missing for ``In``/``NotIn``.
    """
    if not isinstance(d, Mapping):
        raise InvalidInput(reason=f"a label selector must be an object, not {type(d).__name__}")
    unknown = sorted(set(d) - {"matchLabels", "matchExpressions"})
    if unknown:
        raise InvalidInput(reason=f"label selector has unknown fields {unknown} (known: matchLabels, matchExpressions)")
    requirements: list[Requirement] = []
    match_labels = d.get("matchLabels")
    match_labels = {} if match_labels is None else match_labels
    if not isinstance(match_labels, Mapping):
        raise InvalidInput(reason="label selector 'matchLabels' must be an object of strings")
    for key, value in match_labels.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidInput(reason=f"label selector 'matchLabels' entry {key!r}: {value!r} is not a string pair")
        requirements.append(Requirement(key, Operator.EQUALS, frozenset({value})))
    expressions = d.get("matchExpressions")
    expressions = [] if expressions is None else expressions
    if not isinstance(expressions, list):
        raise InvalidInput(reason="label selector 'matchExpressions' must be a list")
    for i, expr in enumerate(expressions):
        requirements.append(_expression(i, expr))
    return Selector(tuple(requirements))


def _expression(i: int, expr: object) -> Requirement:
    where = f"label selector 'matchExpressions[{i}]'"
    if not isinstance(expr, Mapping):
        raise InvalidInput(reason=f"{where} must be an object")
    unknown = sorted(set(expr) - {"key", "operator", "values"})
    if unknown:
        raise InvalidInput(reason=f"{where} has unknown fields {unknown} (known: key, operator, values)")
    key, op, values = expr.get("key"), expr.get("operator"), expr.get("values")
    values = [] if values is None else values
    if not isinstance(key, str):
        raise InvalidInput(reason=f"{where} needs a string 'key'")
    if op not in _OPERATORS:
        raise InvalidInput(reason=f"{where} has operator {op!r}; expected one of {', '.join(_OPERATORS)}")
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise InvalidInput(reason=f"{where} 'values' must be a list of strings")
    operator = _OPERATORS[op]
    if operator in _SET and not values:
        raise InvalidInput(reason=f"{where}: operator {op!r} needs at least one value")
    if operator in _NO_VALUES and values:
        raise InvalidInput(reason=f"{where}: operator {op!r} takes no values")
    return Requirement(key, operator, frozenset(values))
