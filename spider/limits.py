"""The bounds on what a client may send the agent: JSON nesting, and each request field by Kubernetes' own limits.

Owns the numbers and the checks.  A check returns ``None`` for a good value or the reason it is refused, and
the caller raises its own error class with that reason, so each entry point keeps its answer: the agent API a
``MalformedRequest`` (HTTP 400, CNI 102), the CNI plugin an ``InvalidEnvironment`` (4) or ``InvalidNetConf``
(7), the webhook a 400.  Every field we store must be bounded (DESIGN §4): a pool status that grows without
limit cannot be written to an API server at all.  Pure: no I/O.

``docs/operations.md`` ("Limits and bad input") lists these with what each bad input gets.
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate, count
from operator import sub
from typing import Any, Final

MAX_JSON_DEPTH: Final = 64
"""Deepest nesting of arrays and objects in any JSON we decode; real requests stay under 10."""
MAX_NAME: Final = 253
"""A DNS-1123 subdomain (pod, pool and network names), as Kubernetes bounds object names."""
MAX_NAMESPACE: Final = 63
"""A DNS-1123 label: Kubernetes namespaces."""
MAX_UID: Final = 128
"""Pod UIDs: Kubernetes makes 36-character UUIDs; we accept any token up to this length."""
MAX_CONTAINER_ID: Final = 256
"""Container IDs: runtimes make 64 hexadecimal digits."""
MAX_IFNAME: Final = 15
"""Interface names: the kernel's IFNAMSIZ (16) less the terminating NUL, in bytes."""
MAX_PATH: Final = 4096
"""Network namespace paths: PATH_MAX."""
MAX_POOL_NAMES: Final = 64
"""Pools named in one request's default pool list."""

_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_DNS_LABEL: Final = re.compile(_LABEL)
_DNS_SUBDOMAIN: Final = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_TOKEN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]*", re.ASCII)
"""A UID: letters, digits and ``_ . : -``, first a letter or digit (a UUID is one)."""
_CONTAINER_ID: Final = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*", re.ASCII)
"""SPEC.md and libcni's ValidateContainerID: a letter or digit, then letters, digits, ``_ . -``."""

_JSON_STRING: Final = re.compile(r'"(?:[^"\\]|\\.)*+"', re.DOTALL)
_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F]")
"""A ``\\uD800``-``\\uDFFF`` escape: half of a pair, or a lone surrogate, which is not text."""
_NOT_BRACKET: Final = re.compile(r"[^\[\]{}]+")
_STEP: Final = str.maketrans({"[": "\x02", "{": "\x02", "]": "\x00", "}": "\x00"})
_BLOCK: Final = 4096


MAX_U32: Final = 2**32 - 1
"""The largest value a 32-bit netlink field carries (a route table, an MTU, a queue length, a bond option)."""
MALFORMED: Final = (ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError, RecursionError)
"""What decoding stored JSON of a shape nobody expected may raise (a number too large for a float, nesting past
the interpreter's limit, a list where an object was due): a decoder of stored state catches all of these, so
that another writer's object, an edit or a bit flip costs that object, not the process."""


def json_depth(text: str, stop_above: int | None = None) -> int:
    """How deep arrays and objects nest in ``text`` (0 for a scalar), without decoding it.

    Linear and in C for all but the last step: strings are cut out, every character but brackets dropped,
    then the running depth is a prefix sum (``2·opened - seen``), taken a block at a time so that it stops
    at the first block that passes ``stop_above``.  Brackets need not balance: it measures the deepest
    point, and the decoder judges the rest.
    """
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text)).translate(_STEP).encode("ascii")
    deepest = depth = 0
    for start in range(0, len(brackets), _BLOCK):
        block = brackets[start : start + _BLOCK]
        # the depth after each step is depth + 2·opened - seen within the block
        deepest = max(deepest, depth + max(map(sub, accumulate(block), count(1))))
        depth += 2 * block.count(2) - len(block)
        if stop_above is not None and deepest > stop_above:
            break
    return deepest


def loads(data: bytes | str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` for untrusted input: UTF-8 only, at most ``max_depth`` levels deep, and text only: a
    string holding a lone surrogate (``"\\ud800"``, valid JSON but no character) is refused, as it could be
    neither stored nor answered as UTF-8 (Go's decoder turns it into U+FFFD; we say no).

    Raises ``ValueError`` (``json.JSONDecodeError`` and ``UnicodeDecodeError`` are ones) with the reason.
    """
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    depth = json_depth(text, stop_above=max_depth)
    if depth > max_depth:
        raise ValueError(f"JSON nested more than {max_depth} levels deep (the limit)")
    try:
        value = json.loads(text, parse_constant=_not_a_number, parse_float=_finite)
    except RecursionError:  # pragma: no cover - json_depth keeps far below the interpreter's limit
        raise ValueError("JSON nested too deep") from None
    if _SURROGATE_ESCAPE.search(text):  # NB: rare, so the whole value is checked only then
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("JSON holds a lone surrogate escape (such as \\ud800), which is no character") from None
    return value


def _not_a_number(constant: str) -> float:
    # NB: Python's decoder takes NaN and Infinity, which are not JSON: Go's (the runtime's, the API server's) refuses
    raise ValueError(f"{constant} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # NB: 1e400; Go's decoder refuses a number out of float64's range
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def preview(value: str, size: int = 80) -> str:
    """``value`` for an error message: at most ``size`` characters of it, and its length when cut."""
    return repr(value) if len(value) <= size else f"{value[:size]!r}... ({len(value)} characters)"


def _too_long(value: str, limit: int) -> str | None:
    if len(value) > limit:
        return f"is {len(value)} characters long; the limit is {limit}"
    return None


def dns_label_problem(value: str) -> str | None:
    """Why ``value`` is not a Kubernetes namespace (a DNS-1123 label), or ``None``."""
    if problem := _too_long(value, MAX_NAMESPACE):
        return problem
    if not _DNS_LABEL.fullmatch(value):
        return "must be a DNS-1123 label (lower-case letters, digits and '-', starting and ending alphanumeric)"
    return None


def dns_subdomain_problem(value: str) -> str | None:
    """Why ``value`` is not a Kubernetes object name (a DNS-1123 subdomain), or ``None``."""
    if problem := _too_long(value, MAX_NAME):
        return problem
    if not _DNS_SUBDOMAIN.fullmatch(value):
        return "must be a DNS-1123 subdomain (lower-case letters, digits, '-' and '.', alphanumeric at each end)"
    return None


def pool_name_problem(value: str) -> str | None:
    """Why ``value`` cannot name a pool (or a wildcard pattern of pool names, ``v4-*``), or ``None``."""
    if problem := _too_long(value, MAX_NAME):
        return problem
    if not value or not value.isprintable() or any(c.isspace() for c in value):
        return "must be printable, with no whitespace"
    return None


def uid_problem(value: str) -> str | None:
    """Why ``value`` is not a pod UID we accept, or ``None``."""
    if problem := _too_long(value, MAX_UID):
        return problem
    if not _TOKEN.fullmatch(value):
        return "must be letters, digits, '_', '.', ':' or '-', starting with a letter or digit"
    return None


def container_id_problem(value: str) -> str | None:
    """Why ``value`` is not a container ID (SPEC.md's rule, bounded), or ``None``."""
    if problem := _too_long(value, MAX_CONTAINER_ID):
        return problem
    if not _CONTAINER_ID.fullmatch(value):
        return "must be a letter or digit followed by letters, digits, '_', '.' or '-'"
    return None


def ifname_problem(value: str) -> str | None:
    """Why ``value`` is not a Linux interface name (libcni's ValidateInterfaceName), or ``None``."""
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:  # NB: bytes that are no UTF-8, or a JSON "\udcff": netlink takes UTF-8 only
        return "must be UTF-8 text"
    if size == 0 or size > MAX_IFNAME:
        return f"must be 1 to {MAX_IFNAME} bytes long"
    if value in (".", ".."):
        return f"must not be {value!r}"
    if "/" in value or ":" in value or "\0" in value or any(c.isspace() for c in value):
        return "must not contain '/', ':', NUL or whitespace"
    return None


def path_problem(value: str) -> str | None:
    """Why ``value`` is not a file path we accept (a network namespace), or ``None``."""
    if problem := _too_long(value, MAX_PATH):
        return problem
    if "\0" in value:
        return "must not contain NUL"
    return None
