"""Kubernetes field selectors (``spec.nodeName=node-1,status.phase!=Succeeded``), as list requests take them.

Owns the grammar (``k8s.io/apimachinery/pkg/fields``: requirements separated by commas, each ``field=value``,
``field==value`` or ``field!=value``, with ``\\``, ``,`` and ``=`` escaped by a backslash in values), the fields
the API server lets each kind be selected by (``metadata.name``, ``metadata.namespace`` for a namespaced kind,
a few more for Pods, Nodes, Namespaces and Secrets, as kube-apiserver's registries declare them; not every
built-in kind's), and matching an object (a boolean field compares as ``true``/``false``, absent as ``false``;
any other absent field as ``""``).  Pure: no I/O.  A selector naming a field its kind cannot be selected by is
refused, as the API server refuses it (400 "field label not supported").
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import attrs

from spider.errors import InvalidInput

COMMON_FIELDS = frozenset({"metadata.name", "metadata.namespace"})
"""Every namespaced kind's; a cluster-scoped kind has ``metadata.name`` alone."""
KIND_FIELDS: Mapping[str, frozenset[str]] = {
    "Pod": frozenset(
        {
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        }
    ),
    "Node": frozenset({"spec.unschedulable"}),
    "Namespace": frozenset({"status.phase"}),
    "Secret": frozenset({"type"}),
}
"""Beyond ``COMMON_FIELDS``: what kube-apiserver's registry of each kind adds (custom resources add nothing)."""
BOOLEAN_FIELDS = frozenset({"spec.hostNetwork", "spec.unschedulable"})
"""Compared as the registries format them: ``true`` or ``false``, absent being ``false``."""


class Op(enum.Enum):
    EQUALS = "="
    NOT_EQUALS = "!="


@attrs.frozen
class Requirement:
    field: str
    op: Op
    value: str

    def matches(self, obj: Mapping[str, Any]) -> bool:
        return (field_value(obj, self.field) == self.value) is (self.op is Op.EQUALS)


@attrs.frozen
class FieldSelector:
    """Requirements, all of which an object must meet; none: everything."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, obj: Mapping[str, Any]) -> bool:
        """Whether ``obj`` meets every requirement."""
        return all(r.matches(obj) for r in self.requirements)

    def __str__(self) -> str:
        return ",".join(f"{r.field}{r.op.value}{_escape(r.value)}" for r in self.requirements)


def field_value(obj: Mapping[str, Any], field: str) -> str:
    """The field as the API server compares it: a string, ``""`` when absent, booleans as ``true``/``false``."""
    value: Any = obj
    for part in field.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if isinstance(value, bool) or field in BOOLEAN_FIELDS:
        return "true" if value is True else "false"
    return "" if value is None else str(value)


def selectable(kind: str, namespaced: bool = True) -> frozenset[str]:
    """The fields objects of ``kind`` can be selected by."""
    common = COMMON_FIELDS if namespaced else frozenset({"metadata.name"})
    return common | KIND_FIELDS.get(kind, frozenset())


def parse_field_selector(text: str, kind: str | None, namespaced: bool = True) -> FieldSelector:
    """Parse a field selector for ``kind``; blank means everything; ``InvalidInput`` when malformed or naming a
    field ``kind`` cannot be selected by (``None``: any field)."""
    requirements = []
    for term in _split(text, ","):
        if not term:
            continue
        field, op, raw = _term(term, text)
        if kind is not None and field not in selectable(kind, namespaced):
            allowed = sorted(selectable(kind, namespaced))
            raise InvalidInput(reason=f"field label not supported for {kind}: {field!r} (only {allowed})")
        requirements.append(Requirement(field, op, _unescape(raw, text)))
    return FieldSelector(tuple(requirements))


def _term(term: str, text: str) -> tuple[str, Op, str]:
    """A requirement's field, operator and (still escaped) value."""
    for token, op in (("!=", Op.NOT_EQUALS), ("==", Op.EQUALS), ("=", Op.EQUALS)):
        parts = _split(term, token, limit=1)
        if len(parts) == 2:
            return parts[0], op, parts[1]
    raise InvalidInput(reason=f"invalid field selector {text!r}: {term!r} is not field=value or field!=value")


def _split(text: str, sep: str, limit: int = -1) -> list[str]:
    """Split at ``sep`` where it is not escaped by a backslash (escapes stay in the parts)."""
    parts, current, i = [], "", 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            current += text[i : i + 2]
            i += 2
        elif text.startswith(sep, i) and limit != 0:
            parts.append(current)
            current, i, limit = "", i + len(sep), limit - 1
        else:
            current += text[i]
            i += 1
    return [*parts, current]


def _unescape(value: str, text: str) -> str:
    """A value with its escapes undone; ``InvalidInput`` for an unescaped ``=`` or ``,`` or a bad escape."""
    out, i = "", 0
    while i < len(value):
        char = value[i]
        if char == "\\":
            if i + 1 >= len(value) or value[i + 1] not in "\\,=":
                raise InvalidInput(reason=f"invalid field selector {text!r}: a backslash escapes only \\, , and =")
            out += value[i + 1]
            i += 2
            continue
        if char in ",=":
            raise InvalidInput(reason=f"invalid field selector {text!r}: {char!r} in a value must be escaped")
        out += char
        i += 1
    return out


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=")


__all__ = ["FieldSelector", "field_value", "parse_field_selector", "selectable"]
