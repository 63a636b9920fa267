"""The fake API server's list with a ``fieldSelector``: only the matching objects, and a 400 for a field the kind
cannot be selected by, as kube-apiserver answers (the store refuses such a selector itself before sending it)."""

from __future__ import annotations

import pytest

from spider.kinds import SPIDER_GROUP, SPIDER_VERSION
from tests.fakeapi.cluster import ApiError, Cluster


def pods_on_two_nodes() -> Cluster:
    cluster = Cluster.new()
    pods = cluster.resource("", "v1", "pods")
    for name, node in (("a", "node-1"), ("b", "node-2"), ("c", "node-1")):
        body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "pause"}]}}  # fmt: skip
        cluster.create(pods, "default", body)
    return cluster


def test_a_list_with_a_field_selector_has_only_the_matching_objects() -> None:
    cluster = pods_on_two_nodes()
    listing = cluster.list(cluster.resource("", "v1", "pods"), "default", "", "spec.nodeName=node-1")
    assert [item["metadata"]["name"] for item in listing["items"]] == ["a", "c"]


@pytest.mark.parametrize(
    ("group", "version", "plural", "fields", "message"),
    [
        ("", "v1", "pods", "spec.containers=x", "field label not supported: spec.containers"),
        (SPIDER_GROUP, SPIDER_VERSION, "spiderippools", "spec.subnet=x", "field label not supported: spec.subnet"),
        ("", "v1", "pods", "spec.nodeName", "invalid field selector"),
    ],
)
def test_a_field_the_kind_cannot_be_selected_by_is_a_bad_request(
    group: str, version: str, plural: str, fields: str, message: str
) -> None:
    cluster = pods_on_two_nodes()
    with pytest.raises(ApiError) as raised:
        cluster.list(cluster.resource(group, version, plural), "", "", fields)
    assert raised.value.code == 400
    assert message in str(raised.value.status())
