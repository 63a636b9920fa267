"""Label selectors: the string grammar, the object form, matching, and the canonical rendering."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spider.errors import InvalidInput
from spider.selector import (
    EVERYTHING,
    Operator,
    Requirement,
    Selector,
    parse_selector,
    selector_from_label_selector,
)

LABELS = {"app": "web", "tier": "db", "example.com/zone": "a", "empty": ""}


@pytest.mark.parametrize(
    ("text", "matches"),
    [
        ("", True),
        ("   ", True),
        ("app=web", True),
        ("app==web", True),
        ("app = web", True),
        ("app=api", False),
        ("app!=api", True),
        ("app!=web", False),
        ("missing!=x", True),
        ("app in (api, web)", True),
        ("app in (api)", False),
        ("app notin (api)", True),
        ("app notin (web,api)", False),
        ("missing notin (x)", True),
        ("missing in (x)", False),
        ("app", True),
        ("missing", False),
        ("!missing", True),
        ("!app", False),
        ("app=web,tier=db", True),
        ("app=web,tier=web", False),
        (" app = web , !missing , tier in (db) ", True),
        ("example.com/zone=a", True),
        ("empty=", True),
        ("empty in ()", True),
        ("empty in (,x)", True),
        ("app=", False),
        ("app in (web,)", True),
    ],
)
def test_string_selectors_match_like_kubernetes(text: str, matches: bool) -> None:
    assert parse_selector(text).matches(LABELS) is matches


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("", ""),
        ("app==web", "app=web"),
        ("tier=db , app=web", "app=web,tier=db"),
        ("x in ( b, a ,b )", "x in (a,b)"),
        ("x notin (a)", "x notin (a)"),
        ("!x,  y", "!x,y"),
        ("x in ()", "x in ()"),
        ("x in (,a)", "x in (,a)"),
        ("x=", "x="),
        ("x!=", "x!="),
    ],
)
def test_selectors_render_canonically(text: str, canonical: str) -> None:
    assert str(parse_selector(text)) == canonical


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("a=b,", "expected a label key"),
        (",a", "expected a label key"),
        ("a b", "found 'b' at column 3"),
        ("a=b=c", "expected ',' or the end"),
        ("!a=b", "after '!a'"),
        ("!", "a label key after '!'"),
        ("a in b", "expected '('"),
        ("a in (b", "found the end"),
        ("a in (b c)", "expected ',' or ')'"),
        ("a notin", "expected '('"),
        ("a > 1", "not supported"),
        ("a=(", "expected a label value"),
        ("=a", "expected a label key"),
        ("A_/b=c", "prefix 'A_'"),
        ("/b=c", "empty prefix"),
        ("a/=c", "empty name"),
        ("-a=c", "label key name '-a'"),
        ("a=-c", "label value '-c'"),
        ("a=" + "v" * 64, "at most 63"),
        ("a" * 64, "at most 63"),
    ],
)
def test_malformed_string_selectors_are_invalid_input(text: str, reason: str) -> None:
    with pytest.raises(InvalidInput, match="label") as info:
        parse_selector(text)
    assert reason in str(info.value)


@pytest.mark.parametrize(
    ("d", "text"),
    [
        ({}, ""),
        ({"matchLabels": None, "matchExpressions": None}, ""),
        ({"matchLabels": {"app": "web"}}, "app=web"),
        (
            {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "api"]}]},
            "app in (api,web)",
        ),
        ({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["x"]}]}, "app notin (x)"),
        ({"matchExpressions": [{"key": "app", "operator": "Exists"}]}, "app"),
        ({"matchExpressions": [{"key": "app", "operator": "DoesNotExist", "values": []}]}, "!app"),
        (
            {"matchLabels": {"tier": "db"}, "matchExpressions": [{"key": "app", "operator": "Exists"}]},
            "app,tier=db",
        ),
    ],
)
def test_label_selector_objects_mean_their_string_form(d: dict[str, Any], text: str) -> None:
    selector = selector_from_label_selector(d)
    assert str(selector) == text
    assert selector == parse_selector(text)


def test_the_empty_label_selector_object_matches_everything() -> None:
    assert selector_from_label_selector({}).matches({})
    assert selector_from_label_selector({}).matches(LABELS)
    assert selector_from_label_selector({}) == EVERYTHING


@pytest.mark.parametrize(
    ("d", "reason"),
    [
        ([], "must be an object"),
        ({"matchLabel": {}}, "unknown fields ['matchLabel']"),
        ({"matchLabels": ["a"]}, "'matchLabels' must be an object"),
        ({"matchLabels": {"a": 1}}, "not a string pair"),
        ({"matchLabels": {"a b": "c"}}, "label key name 'a b'"),
        ({"matchExpressions": {}}, "must be a list"),
        ({"matchExpressions": ["x"]}, "matchExpressions[0]' must be an object"),
        ({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}, "operator 'Gt'"),
        ({"matchExpressions": [{"key": "a", "operator": "In"}]}, "needs at least one value"),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": "x"}]}, "list of strings"),
        ({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}, "takes no values"),
        ({"matchExpressions": [{"operator": "Exists"}]}, "needs a string 'key'"),
        ({"matchExpressions": [{"key": "a", "operator": "Exists", "value": 1}]}, "unknown fields ['value']"),
    ],
)
def test_malformed_label_selector_objects_are_invalid_input(d: Any, reason: str) -> None:
    with pytest.raises(InvalidInput) as info:
        selector_from_label_selector(d)
    assert reason in str(info.value)


def test_requirements_check_their_value_count() -> None:
    with pytest.raises(InvalidInput, match="exactly one value"):
        Requirement("a", Operator.EQUALS, frozenset({"x", "y"}))
    with pytest.raises(InvalidInput, match="at least one value"):
        Requirement("a", Operator.IN)
    with pytest.raises(InvalidInput, match="takes no values"):
        Requirement("a", Operator.EXISTS, frozenset({"x"}))


def test_selectors_equal_regardless_of_requirement_order() -> None:
    assert parse_selector("a=1,b=2") == parse_selector("b=2,a=1")


# --- properties --------------------------------------------------------------------------------------------

# Small alphabets, so that generated labels often meet generated requirements.
_name = st.sampled_from(["app", "tier", "in", "notin", "a.b_c-d", "x9"])
_prefix = st.sampled_from(["", "example.com/", "k8s.io/"])
keys = st.builds(lambda p, n: p + n, _prefix, _name)
values = st.sampled_from(["", "web", "db", "v1.2", "a_b-c"])


@st.composite
def requirements(draw: st.DrawFn) -> Requirement:
    op = draw(st.sampled_from(list(Operator)))
    key = draw(keys)
    if op in (Operator.EQUALS, Operator.NOT_EQUALS):
        return Requirement(key, op, frozenset({draw(values)}))
    if op in (Operator.IN, Operator.NOT_IN):
        return Requirement(key, op, draw(st.frozensets(values, min_size=1, max_size=3)))
    return Requirement(key, op)


selectors = st.builds(Selector, st.lists(requirements(), max_size=4).map(tuple))
label_maps = st.dictionaries(keys, values, max_size=6)


def model_matches(selector: Selector, labels: dict[str, str]) -> bool:
    """A second, deliberately naive reading of the Kubernetes rules, as sets of (key, value) pairs."""
    pairs = set(labels.items())
    for r in selector.requirements:
        hit = any((r.key, v) in pairs for v in r.values)
        ok = {
            Operator.EQUALS: hit,
            Operator.IN: hit,
            Operator.NOT_EQUALS: not hit,
            Operator.NOT_IN: not hit,
            Operator.EXISTS: r.key in labels,
            Operator.DOES_NOT_EXIST: r.key not in labels,
        }[r.operator]
        if not ok:
            return False
    return True


def to_object(selector: Selector) -> dict[str, Any]:
    """The ``metav1.LabelSelector`` form of a selector (``=`` as matchExpressions ``In``)."""
    names = {
        Operator.IN: "In",
        Operator.NOT_IN: "NotIn",
        Operator.EXISTS: "Exists",
        Operator.DOES_NOT_EXIST: "DoesNotExist",
    }
    expressions = []
    for r in selector.requirements:
        op = Operator.IN if r.operator is Operator.EQUALS else r.operator
        if op is Operator.NOT_EQUALS:
            op = Operator.NOT_IN
        expressions.append({"key": r.key, "operator": names[op], "values": sorted(r.values)})
    return {"matchExpressions": expressions}


@settings(deadline=None)
@given(selectors)
def test_rendering_parses_back_to_the_same_selector(selector: Selector) -> None:
    assert parse_selector(str(selector)) == selector


@settings(deadline=None)
@given(selectors, label_maps)
def test_matching_agrees_with_the_model(selector: Selector, labels: dict[str, str]) -> None:
    assert selector.matches(labels) is model_matches(selector, labels)


@settings(deadline=None)
@given(selectors, label_maps)
def test_string_and_object_forms_match_alike(selector: Selector, labels: dict[str, str]) -> None:
    assert selector_from_label_selector(to_object(selector)).matches(labels) is selector.matches(labels)


@settings(deadline=None)
@given(st.lists(requirements(), max_size=4), label_maps)
def test_a_selector_is_the_conjunction_of_its_requirements(reqs: list[Requirement], labels: dict[str, str]) -> None:
    assert Selector(tuple(reqs)).matches(labels) is all(r.matches(labels) for r in reqs)


@given(st.text(alphabet=" \t=!(),<>abc-./_in", max_size=20))
def test_any_string_parses_or_raises_invalid_input(text: str) -> None:
    try:
        selector = parse_selector(text)
    except InvalidInput:
        return
    assert parse_selector(str(selector)) == selector
