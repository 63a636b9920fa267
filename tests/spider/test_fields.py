"""``spider.fields``: field selectors parse as the API server parses them, match as it matches, and refuse the
fields a kind cannot be selected by."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spider.errors import InvalidInput
from spider.fields import field_value, parse_field_selector, selectable

POD = {"metadata": {"name": "web-0", "namespace": "shop"}, "spec": {"nodeName": "node-1", "hostNetwork": True}}


@pytest.mark.parametrize(
    ("text", "matches"),
    [
        ("", True),
        ("spec.nodeName=node-1", True),
        ("spec.nodeName==node-1", True),
        ("spec.nodeName!=node-1", False),
        ("spec.nodeName=node-2", False),
        ("spec.hostNetwork=true", True),  # NB: a boolean compares as its string
        ("spec.hostNetwork!=false", True),
        ("status.phase=", True),  # NB: an absent field is the empty string
        ("status.phase!=Running", True),
        ("spec.nodeName=node-1,metadata.namespace=shop", True),
        ("spec.nodeName=node-1,metadata.namespace=other", False),
        ("metadata.name=web-0,", True),  # NB: an empty term is skipped
    ],
)
def test_a_pod_is_matched_as_the_api_server_matches_it(text: str, matches: bool) -> None:
    assert parse_field_selector(text, "Pod").matches(POD) is matches


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("spec.nodeName", "Pod"),  # no operator
        ("spec.nodeName=a=b", "Pod"),  # an unescaped = in the value
        ("spec.nodeName=a\\b", "Pod"),  # a backslash escapes only \\ , and =
        ("spec.containers=x", "Pod"),  # not a field Pods can be selected by
        ("spec.nodeName=node-1", "SpiderIPPool"),  # custom resources: metadata.name and metadata.namespace only
        ("type=Opaque", "ConfigMap"),  # Secrets have it, ConfigMaps do not
        ("spec.nodeName=a, ", "Pod"),  # a term of spaces is not an empty one
    ],
)
def test_a_malformed_selector_or_a_field_the_kind_lacks_is_refused(text: str, kind: str) -> None:
    with pytest.raises(InvalidInput):
        parse_field_selector(text, kind)


def test_a_cluster_scoped_kind_cannot_be_selected_by_namespace() -> None:
    with pytest.raises(InvalidInput):
        parse_field_selector("metadata.namespace=default", "Node", namespaced=False)
    assert parse_field_selector("metadata.name=n1", "Node", namespaced=False).requirements


def test_an_absent_boolean_field_reads_as_false() -> None:
    unschedulable = parse_field_selector("spec.unschedulable=false", "Node", namespaced=False)
    assert unschedulable.matches({"metadata": {"name": "n1"}, "spec": {}})
    assert not unschedulable.matches({"spec": {"unschedulable": True}})


def test_every_kind_can_be_selected_by_name_and_namespace_and_some_by_more() -> None:
    assert selectable("SpiderIPPool") == {"metadata.name", "metadata.namespace"}
    assert {"spec.nodeName", "status.phase"} <= selectable("Pod")
    assert "type" in selectable("Secret")
    assert parse_field_selector("anything=at-all", None).requirements  # no kind: any field


values = st.text(alphabet=st.sampled_from("ab-.,=\\ "), max_size=8)


@given(value=values, equals=st.booleans())
def test_a_value_with_commas_equals_signs_and_backslashes_survives_its_rendering(value: str, equals: bool) -> None:
    op = "=" if equals else "!="
    selector = parse_field_selector(
        f"metadata.name{op}" + value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\="), "Pod"
    )
    assert [r.value for r in selector.requirements] == [value]
    assert parse_field_selector(str(selector), "Pod") == selector
    obj = {"metadata": {"name": value}}
    assert selector.matches(obj) is equals


def test_a_nested_field_that_is_not_an_object_reads_as_absent() -> None:
    assert field_value({"spec": "oops"}, "spec.nodeName") == ""
