"""The request bounds: JSON nesting measured without decoding, and each field's check."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spider import limits

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet=st.sampled_from('[]{}"\\ab\u00e9'), max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=30,
)


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


@given(JSON, st.booleans())
def test_json_depth_is_the_nesting_of_the_decoded_value_whatever_the_strings_hold(value: Any, ascii: bool) -> None:
    assert limits.json_depth(json.dumps(value, ensure_ascii=ascii)) == depth(value)


def test_json_depth_spans_blocks_and_stops_early_when_asked() -> None:
    text = "[1," * 10_000 + "2" + "]" * 10_000
    assert limits.json_depth(text) == 10_000
    assert 64 < limits.json_depth(text, stop_above=64) <= 10_000


def test_loads_refuses_a_bomb_before_decoding_it() -> None:
    with pytest.raises(ValueError, match="nested more than 64 levels"):
        limits.loads(b"[" * 100_000)
    assert limits.loads(b"[" * 64 + b"]" * 64) is not None
    with pytest.raises(ValueError, match="utf-8"):
        limits.loads(b'"\xff"')


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400", "-1e999"])
def test_loads_refuses_numbers_go_refuses(number: str) -> None:
    with pytest.raises(ValueError, match=r"not a JSON number|out of range"):
        limits.loads(f'{{"x": {number}}}')
    assert limits.loads('{"x": 1.5e300}') == {"x": 1.5e300}


@pytest.mark.parametrize(
    ("check", "good", "bad"),
    [
        (limits.dns_label_problem, ["default", "a", "kube-system", "n" * 63], ["", "N", "a_b", "-a", "n" * 64]),
        (limits.dns_subdomain_problem, ["web-0", "a.b", "x" * 253], ["", "Web", "a..b", "x" * 254]),
        (limits.uid_problem, ["0b3f3c1e-5f5c-4c1e-9f3e-1c2d3e4f5a6b", "uid-1"], ["", "a b", "-x", "u" * 129]),
        (limits.container_id_problem, ["3f2c9a8b", "c" * 256], ["", "-c", "a/b", "c" * 257]),
        (limits.ifname_problem, ["eth0", "net1", "e" * 15], ["", "e" * 16, ".", "..", "a/b", "a:b", "a b", "a\0"]),
        (limits.path_problem, ["/var/run/netns/x", "/" * 4096], ["/" * 4097, "/a\0"]),
        (limits.pool_name_problem, ["v4", "v4-*", "p" * 253], ["", "p" * 254, "a b", "a\x00"]),
    ],
)
def test_each_field_check_takes_kubernetes_values_and_names_the_problem_of_others(
    check: Any, good: list[str], bad: list[str]
) -> None:
    assert [check(value) for value in good] == [None] * len(good)
    assert all(isinstance(check(value), str) for value in bad)


def test_a_preview_is_bounded_and_says_the_length() -> None:
    assert limits.preview("short") == "'short'"
    assert limits.preview("x" * 1_000_000) == f"{'x' * 80!r}... (1000000 characters)"
