"""Pruning in the fake API server: what a custom resource's structural schema does not list is dropped on every
write, and metadata keeps only ``ObjectMeta``'s fields, as a real API server does (it dropped the pools'
``status.releasedIPs`` while our CRD did not list it)."""

from __future__ import annotations

import copy
from typing import Any

from spider.kinds import SPIDER_GROUP, SPIDER_VERSION
from tests.fakeapi.cluster import CRD_RESOURCE, Cluster, prune_unknown
from tests.fakeapi.test_defaulting import example_crd
from tests.fakeapi.test_latency import pool

GADGETS = {
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "properties": {
                "size": {"type": "integer"},
                "parts": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}},
                "tags": {"type": "object", "additionalProperties": {"type": "string"}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "nested": {
                    "type": "object",
                    "x-kubernetes-preserve-unknown-fields": True,
                    "properties": {"known": {"type": "object", "properties": {"a": {"type": "string"}}}},
                },
            },
        },
        "status": {"type": "object", "properties": {"phase": {"type": "string"}}},
    },
}


def test_what_the_schema_does_not_list_is_dropped_at_every_depth() -> None:
    obj: dict[str, Any] = {
        "apiVersion": "example.com/v1",
        "kind": "Gadget",
        "metadata": {"name": "g"},
        "spec": {
            "size": 3,
            "colour": "red",
            "parts": [{"name": "a", "weight": 2}, {"name": "b"}],
            "tags": {"x": "1", "y": "2"},
            "free": {"anything": {"goes": [1, 2]}},
            "nested": {"kept": 1, "known": {"a": "x", "b": "dropped"}},
        },
        "status": {"phase": "Ready", "progress": 50},
        "extra": True,
    }
    prune_unknown(obj, GADGETS, root=True)
    assert obj == {
        "apiVersion": "example.com/v1",
        "kind": "Gadget",
        "metadata": {"name": "g"},  # the root keeps apiVersion, kind and metadata
        "spec": {
            "size": 3,
            "parts": [{"name": "a"}, {"name": "b"}],  # items pruned in turn
            "tags": {"x": "1", "y": "2"},  # additionalProperties describes every key
            "free": {"anything": {"goes": [1, 2]}},  # x-kubernetes-preserve-unknown-fields keeps all
            "nested": {"kept": 1, "known": {"a": "x"}},  # ... and the listed properties are still pruned
        },
        "status": {"phase": "Ready"},
    }


def test_a_schema_that_lists_everything_leaves_the_object_alone() -> None:
    obj = {"spec": {"size": 1, "parts": [{"name": "a"}], "tags": {}}, "status": {"phase": "x"}}
    before = copy.deepcopy(obj)
    prune_unknown(obj, GADGETS, root=True)
    assert obj == before


def test_a_spider_ippool_status_field_the_crd_does_not_list_is_gone_when_read_back() -> None:
    cluster = Cluster.new()
    pools = cluster.resource(SPIDER_GROUP, SPIDER_VERSION, "spiderippools")
    body = pool("p")
    body["spec"]["colour"] = "red"
    created = cluster.create(pools, "", body)
    assert "colour" not in created["spec"]
    status = {"allocatedIPCount": 0, "releasedIPs": "{}", "lastWriter": "us"}
    written = cluster.update(pools, "", "p", dict(created, status=status), status=True)
    assert written["status"] == {"allocatedIPCount": 0, "releasedIPs": "{}"}
    assert cluster.get(pools, "", "p") == written


def test_metadata_keeps_only_object_meta_fields_for_every_kind() -> None:
    cluster = Cluster.new()
    configmaps = cluster.resource("", "v1", "configmaps")
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "c", "labels": {"a": "b"}, "annotations": {"n": "m"}, "owner": "me"},
        "data": {"k": "v"},
    }
    created = cluster.create(configmaps, "default", body)
    assert "owner" not in created["metadata"]
    assert created["metadata"]["labels"] == {"a": "b"}
    assert created["metadata"]["annotations"] == {"n": "m"}
    sent = {**created, "metadata": {**created["metadata"], "x": 1}}
    updated = cluster.update(configmaps, "default", "c", sent, status=False)
    assert "x" not in updated["metadata"]


def test_a_crd_created_through_the_api_prunes_its_resources() -> None:
    cluster = Cluster.new()
    crd = example_crd("Gadget", "gadgets", GADGETS)
    cluster.create(CRD_RESOURCE, "", crd)
    gadgets = cluster.resource("example.com", "v1", "gadgets")
    body = {"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g"}, "spec": {"size": 1, "x": 2}}
    assert cluster.create(gadgets, "", body)["spec"] == {"size": 1}
