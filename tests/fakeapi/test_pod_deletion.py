"""Deleting a Pod as kube-apiserver does (``podStrategy.CheckGracefulDelete``): one a node runs stays, terminating,
for its grace period (``deletionTimestamp`` that far ahead) until its kubelet deletes it with grace 0; a later
delete may only shorten the grace; a pod no node runs, or one that has finished, goes at once."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from tests.fakeapi.cluster import ApiError, Cluster
from tests.support import pod_spec


def pod(name: str, node: str = "node-1", **spec: Any) -> dict[str, Any]:
    body = pod_spec(**spec)
    if node:
        body["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"}, "spec": body}


def seconds_ahead(stamp: str) -> float:
    return (datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC) - datetime.now(UTC)).total_seconds()


def gone(cluster: Cluster, name: str) -> bool:
    with pytest.raises(ApiError) as missing:
        cluster.get(cluster.resource("", "v1", "pods"), "default", name)
    return missing.value.code == 404


def test_a_pod_a_node_runs_stays_terminating_for_its_grace_until_its_kubelet_deletes_it() -> None:
    cluster = Cluster.new()
    pods = cluster.resource("", "v1", "pods")
    created = cluster.create(pods, "default", pod("p"))
    assert created["spec"]["terminationGracePeriodSeconds"] == 30  # the API's default
    marked = cluster.delete(pods, "default", "p", {})
    assert marked["metadata"]["deletionGracePeriodSeconds"] == 30
    assert 28 <= seconds_ahead(marked["metadata"]["deletionTimestamp"]) <= 30
    assert cluster.delete(pods, "default", "p", {"gracePeriodSeconds": 60}) == marked  # only ever shortened
    shorter = cluster.delete(pods, "default", "p", {"gracePeriodSeconds": 5})
    assert shorter["metadata"]["deletionGracePeriodSeconds"] == 5
    assert cluster.get(pods, "default", "p")["metadata"]["deletionGracePeriodSeconds"] == 5
    cluster.delete(pods, "default", "p", {"gracePeriodSeconds": 0})  # the kubelet: the containers are gone
    assert gone(cluster, "p")


def test_a_pod_no_node_runs_or_one_that_finished_goes_at_once() -> None:
    cluster = Cluster.new()
    pods = cluster.resource("", "v1", "pods")
    cluster.create(pods, "default", pod("unscheduled", node=""))
    cluster.delete(pods, "default", "unscheduled", {})
    assert gone(cluster, "unscheduled")
    done = cluster.create(pods, "default", pod("done"))
    cluster.update(pods, "default", "done", dict(done, status={"phase": "Succeeded"}), status=True)
    cluster.delete(pods, "default", "done", {})
    assert gone(cluster, "done")


def test_an_update_of_a_pod_waiting_out_its_grace_keeps_it_and_a_grace_0_delete_ends_a_finalizers_wait() -> None:
    # NB: the registry deletes during an update only once no finalizer and no grace is left
    cluster = Cluster.new()
    pods = cluster.resource("", "v1", "pods")
    cluster.create(pods, "default", pod("p"))
    marked = cluster.delete(pods, "default", "p", {})
    marked["metadata"]["labels"] = {"seen": "yes"}
    cluster.update(pods, "default", "p", marked, status=False)
    assert cluster.get(pods, "default", "p")["metadata"]["labels"] == {"seen": "yes"}
    held = cluster.create(
        pods, "default", {**pod("held"), "metadata": {**pod("held")["metadata"], "finalizers": ["x/y"]}}
    )
    assert held["metadata"]["finalizers"] == ["x/y"]
    cluster.delete(pods, "default", "held", {})
    cut = cluster.delete(pods, "default", "held", {"gracePeriodSeconds": 0})
    assert cut["metadata"]["deletionGracePeriodSeconds"] == 0
    released = cluster.get(pods, "default", "held")
    released["metadata"]["finalizers"] = []
    cluster.update(pods, "default", "held", released, status=False)
    assert gone(cluster, "held")
