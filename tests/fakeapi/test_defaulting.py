"""CRD defaulting in the fake API server: a custom resource's schema ``default:`` values fill in absent fields
on create, update and status writes, as a real API server does (it answered a SpiderEndpoint status written
without ``vlan`` with ``vlan: 0``)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from spider.kinds import SPIDER_API_VERSION, SPIDER_GROUP, SPIDER_VERSION
from tests.fakeapi.cluster import CRD_RESOURCE, Cluster, apply_defaults

WIDGETS = {
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "properties": {
                "mode": {"type": "string", "default": "auto"},
                "limits": {
                    "type": "object",
                    "default": {},
                    "properties": {"cpu": {"type": "integer", "default": 2}, "memory": {"type": "string"}},
                },
                "ports": {
                    "type": "array",
                    "items": {"type": "object", "properties": {"protocol": {"type": "string", "default": "TCP"}}},
                },
                "labels": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "properties": {"weight": {"type": "integer", "default": 1}},
                    },
                },
                "note": {"type": "string", "nullable": True, "default": "none"},
                "hint": {"type": "string", "default": "empty"},
                "default": {"type": "boolean", "default": False},
            },
        },
        "status": {"type": "object", "properties": {"phase": {"type": "string", "default": "New"}}},
    },
}


def example_crd(kind: str, plural: str, schema: dict[str, Any], *, status: bool = False) -> dict[str, Any]:
    """A cluster-scoped CustomResourceDefinition of ``example.com/v1`` with ``schema`` (and a status
    subresource when ``status``)."""
    version: dict[str, Any] = {"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": schema}}
    if status:
        version["subresources"] = {"status": {}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.example.com"},
        "spec": {
            "group": "example.com",
            "names": {"kind": kind, "plural": plural},
            "scope": "Cluster",
            "versions": [version],
        },
    }


def endpoint(ips: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": SPIDER_API_VERSION,
        "kind": "SpiderEndpoint",
        "metadata": {"name": "pod", "namespace": "default"},
        "status": {
            "current": {"uid": "u1", "node": "node-1", "ips": ips},
            "ownerControllerType": "Pod",
            "ownerControllerName": "pod",
        },
    }


def test_absent_fields_get_their_defaults_top_down_and_a_default_is_defaulted_in_turn() -> None:
    obj: dict[str, Any] = {
        "spec": {
            "ports": [{}, {"protocol": "UDP"}],
            "labels": {"a": {}, "b": {"weight": 5}},
            "note": None,
            "hint": None,
        }
    }
    apply_defaults(obj, WIDGETS)
    assert obj["spec"] == {
        "mode": "auto",
        "limits": {"cpu": 2},  # the default {} got its own field's default
        "ports": [{"protocol": "TCP"}, {"protocol": "UDP"}],
        "labels": {"a": {"weight": 1}, "b": {"weight": 5}},
        "note": None,  # nullable: null is a value
        "hint": "empty",  # not nullable: null is defaulted
        "default": False,  # a property named "default" is a property like any other
    }
    assert "status" not in obj  # no default for the object itself: absent stays absent


def test_fields_that_are_set_keep_their_values() -> None:
    obj = {"spec": {"mode": "manual", "limits": {"cpu": 8, "memory": "1Gi"}, "default": True}}
    before = copy.deepcopy(obj)
    apply_defaults(obj, WIDGETS)
    assert {k: obj["spec"][k] for k in before["spec"]} == before["spec"]


def test_a_spider_endpoint_written_without_vlan_reads_back_with_vlan_0() -> None:
    cluster = Cluster.new()
    endpoints = cluster.resource(SPIDER_GROUP, SPIDER_VERSION, "spiderendpoints")
    created = cluster.create(endpoints, "default", endpoint([{"interface": "eth0"}]))
    assert created["status"]["current"]["ips"] == [{"interface": "eth0", "vlan": 0}]
    sent = dict(
        created,
        status=dict(
            created["status"],
            current=dict(created["status"]["current"], ips=[{"interface": "net1"}, {"interface": "net2", "vlan": 7}]),
        ),
    )
    updated = cluster.update(endpoints, "default", "pod", sent, status=False)
    assert updated["status"]["current"]["ips"] == [{"interface": "net1", "vlan": 0}, {"interface": "net2", "vlan": 7}]
    assert cluster.get(endpoints, "default", "pod") == updated


def test_a_spider_ippool_spec_gets_its_schema_defaults_and_a_status_write_keeps_them() -> None:
    cluster = Cluster.new()
    pools = cluster.resource(SPIDER_GROUP, SPIDER_VERSION, "spiderippools")
    body = {
        "apiVersion": SPIDER_API_VERSION,
        "kind": "SpiderIPPool",
        "metadata": {"name": "p"},
        "spec": {"subnet": "10.6.0.0/16", "ips": ["10.6.0.10-10.6.0.20"]},
    }
    created = cluster.create(pools, "", body)
    assert (created["spec"]["default"], created["spec"]["disable"]) == (False, False)
    written = cluster.update(pools, "", "p", dict(created, status={"allocatedIPCount": 1}), status=True)
    assert written["spec"] == created["spec"]
    assert written["metadata"]["generation"] == 1


def test_a_crd_created_through_the_api_brings_its_schema_defaults_for_spec_and_the_status_subresource() -> None:
    cluster = Cluster.new()
    crd = example_crd("Widget", "widgets", WIDGETS, status=True)
    cluster.create(CRD_RESOURCE, "", crd)
    widgets = cluster.resource("example.com", "v1", "widgets")
    created = cluster.create(
        widgets, "", {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {}}
    )
    assert created["spec"]["mode"] == "auto"
    assert "status" not in created  # a status subresource: create drops the status
    written = cluster.update(widgets, "", "w", dict(created, status={}), status=True)
    assert written["status"] == {"phase": "New"}
    assert set(written["metadata"]) >= {"name", "uid", "resourceVersion"}


@pytest.mark.parametrize("installed", [True, False])
def test_only_custom_resources_whose_crd_is_known_are_defaulted(installed: bool) -> None:
    cluster = Cluster.new(crds_installed=installed)
    assert bool(cluster.schemas) is installed
    namespaces = cluster.resource("", "v1", "namespaces")
    created = cluster.create(namespaces, "", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}})
    assert "spec" not in created
