"""The fake API server answers a PUT as kube-apiserver's generic registry does where our store's error mapping
depends on it: a resourceVersion it cannot parse is a 500 with no reason (the versioner's own error), a Lease
must name the version it replaces (its strategy allows no unconditional update), and a PUT that removes the
last finalizer of an object being deleted answers the object as sent, version and all, while the object goes."""

from __future__ import annotations

from typing import Any

import pytest

from spider.kinds import SPIDER_API_VERSION
from tests.fakeapi.cluster import MAX_OBJECT_BYTES, ApiError, Cluster


def lease(name: str = "l") -> dict[str, Any]:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15},
    }


def test_a_put_with_a_version_the_server_cannot_parse_is_a_500_without_a_reason() -> None:
    cluster = Cluster.new()
    leases = cluster.resource("coordination.k8s.io", "v1", "leases")
    created = cluster.create(leases, "default", lease())
    with pytest.raises(ApiError) as refused:
        cluster.update(
            leases, "default", "l", dict(created, metadata=dict(created["metadata"], resourceVersion="x")), status=False
        )
    assert (refused.value.code, refused.value.reason) == (500, "")
    assert refused.value.message == 'strconv.ParseUint: parsing "x": invalid syntax'


def test_a_lease_is_only_updated_at_a_named_version_other_built_in_kinds_take_the_stored_one() -> None:
    cluster = Cluster.new()
    leases = cluster.resource("coordination.k8s.io", "v1", "leases")
    cluster.create(leases, "default", lease())
    with pytest.raises(ApiError) as refused:
        cluster.update(leases, "default", "l", lease(), status=False)
    assert refused.value.code == 422
    assert "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update" in refused.value.message
    namespaces = cluster.resource("", "v1", "namespaces")
    blind = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default", "labels": {"a": "b"}}}
    assert cluster.update(namespaces, "", "default", blind, status=False)["metadata"]["labels"] == {"a": "b"}


def test_removing_the_last_finalizer_of_an_object_being_deleted_answers_the_object_as_sent() -> None:
    cluster = Cluster.new()
    pools = cluster.resource("spiderpool.spidernet.io", "v2beta1", "spiderippools")
    body = {
        "apiVersion": SPIDER_API_VERSION,
        "kind": "SpiderIPPool",
        "metadata": {"name": "p", "finalizers": ["spiderpool.spidernet.io"]},
        "spec": {"subnet": "10.6.0.0/16", "ips": ["10.6.0.10"]},
    }
    cluster.create(pools, "", body)
    cluster.delete(pools, "", "p", {})
    marked = cluster.get(pools, "", "p")
    sent = dict(marked, metadata=dict(marked["metadata"], finalizers=[]))
    answer = cluster.update(pools, "", "p", sent, status=False)
    assert answer["metadata"]["resourceVersion"] == marked["metadata"]["resourceVersion"]
    assert not answer["metadata"].get("finalizers")
    with pytest.raises(ApiError) as gone:
        cluster.get(pools, "", "p")
    assert gone.value.code == 404


def test_an_object_larger_than_etcd_stores_is_a_500_and_nothing_is_written() -> None:
    cluster = Cluster.new()
    leases = cluster.resource("coordination.k8s.io", "v1", "leases")
    created = cluster.create(leases, "default", lease())
    version = cluster.rv
    huge = dict(created, metadata=dict(created["metadata"], annotations={"a": "x" * MAX_OBJECT_BYTES}))
    with pytest.raises(ApiError) as refused:
        cluster.update(leases, "default", "l", huge, status=False)
    assert (refused.value.code, refused.value.reason) == (500, "")
    assert refused.value.message == "etcdserver: request is too large"
    assert cluster.rv == version
    assert cluster.get(leases, "default", "l") == created
