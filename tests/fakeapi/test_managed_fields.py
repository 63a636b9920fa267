"""managedFields in the fake API server: each write that changes an object stamps its manager's entry with the
time, to the second, as kube-apiserver's field manager does for an Update; so code that compares an object's
metadata across writes sees what it would see on a real server."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from spider.kinds import SPIDER_GROUP, SPIDER_VERSION
from tests.fakeapi import FakeApiServer
from tests.fakeapi import cluster as cluster_module
from tests.fakeapi.cluster import Cluster
from tests.fakeapi.test_latency import POOLS, exchange, pool


def entries(obj: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    return [
        (e["manager"], e["operation"], e.get("subresource", ""), e["time"]) for e in obj["metadata"]["managedFields"]
    ]


def test_each_manager_and_subresource_has_its_entry_stamped_when_it_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = ["2026-12-07T05:00:01Z"]
    monkeypatch.setattr(cluster_module, "now", lambda: clock[0])
    cluster = Cluster.new()
    pools = cluster.resource(SPIDER_GROUP, SPIDER_VERSION, "spiderippools")
    created = cluster.create(pools, "", pool("p"), manager="kubectl")
    assert entries(created) == [("kubectl", "Update", "", "2026-12-07T05:00:01Z")]
    assert created["metadata"]["managedFields"][0]["fieldsV1"] == {"f:metadata": {}, "f:spec": {}}
    clock[0] = "2026-12-07T05:00:02Z"
    written = cluster.update(pools, "", "p", dict(created, status={"allocatedIPCount": 1}), status=True, manager="host")
    assert entries(written) == [
        ("kubectl", "Update", "", "2026-12-07T05:00:01Z"),
        ("host", "Update", "status", "2026-12-07T05:00:02Z"),
    ]
    clock[0] = "2026-12-07T05:00:03Z"
    again = cluster.update(pools, "", "p", dict(written, status={"allocatedIPCount": 2}), status=True, manager="host")
    assert entries(again)[1] == ("host", "Update", "status", "2026-12-07T05:00:03Z")
    assert entries(again)[0] == entries(written)[0]
    unchanged = cluster.update(pools, "", "p", again, status=True, manager="other")
    assert unchanged == again  # a no-op writes nothing, stamps nothing


def test_a_client_cannot_write_managed_fields_through_an_update() -> None:
    cluster = Cluster.new()
    pools = cluster.resource(SPIDER_GROUP, SPIDER_VERSION, "spiderippools")
    created = cluster.create(pools, "", pool("p"), manager="a")
    forged = {**created, "metadata": {**created["metadata"], "managedFields": []}}
    assert cluster.update(pools, "", "p", forged, status=False, manager="a") == created
    without = {**created, "metadata": {k: v for k, v in created["metadata"].items() if k != "managedFields"}}
    assert cluster.update(pools, "", "p", without, status=False, manager="a") == created


async def test_the_manager_is_the_field_manager_or_the_user_agent_up_to_its_first_slash(
    nursery: trio.Nursery,
) -> None:
    server: FakeApiServer = await nursery.start(FakeApiServer().run)
    with trio.fail_after(10):
        _, _, body = await exchange(server, "POST", POOLS, pool("a"), ("User-Agent", "kubectl/v1.24.0 (linux)"))
        _, _, other = await exchange(server, "POST", f"{POOLS}?fieldManager=mine", pool("b"), ("User-Agent", "x/1"))
    assert [e["manager"] for e in json.loads(body)["metadata"]["managedFields"]] == ["kubectl"]
    assert [e["manager"] for e in json.loads(other)["metadata"]["managedFields"]] == ["mine"]
