"""The agent marks the SpiderEndpoint of a pod it served without a Pod object (``ipam.spider.io/pod-object:
absent``), so that GC leaves that pod's addresses to its CNI DEL; the latest ADD decides the mark."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from actors.ipam.service import IpamService, PoolRegistry
from actors.runtime.supervisor import Supervisor
from actors.stores.port import Obj, Store
from actors.stores.sqlite import SqliteStore
from actors.stores.validating import ValidatingStore
from spider.endpoint import ANNO_POD_OBJECT, Endpoint
from spider.endpoint import KIND as ENDPOINT
from spider.ipam_request import AddRequest
from tests.ipam.conftest import TIMEOUT
from tests.support import pool_object


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    """An embedded store (checked as the agent's is) with pool ``v4``."""
    made = ValidatingStore(await SqliteStore.open(tmp_path / "store.db"))
    await made.create(pool_object("v4", "10.31.0.0/24", ["10.31.0.10-10.31.0.19"]))
    try:
        yield made
    finally:
        await made.aclose()


def request(container: str = "ctr-1", ifname: str = "eth0", uid: str = "uid-p") -> AddRequest:
    return AddRequest(container, ifname, "/var/run/netns/x", "default", "p", uid, ("v4",), ())


async def pod_object(store: Store) -> str:
    """Create the Pod object of pod ``p``; its UID."""
    created = await store.create(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "pause"}]},
        }
    )
    return str(created["metadata"]["uid"])


async def added(store: Store, *requests: AddRequest) -> Obj:
    """Serve the ADDs; the endpoint as stored after them."""
    async with trio.open_nursery() as nursery:
        ipam = IpamService(store, PoolRegistry(store, Supervisor(nursery)), "node-1")
        for req in requests:
            await ipam.allocate(req)
        nursery.cancel_scope.cancel(reason="adds done")
    return await store.get(ENDPOINT, "p", "default")


async def test_the_endpoint_of_a_pod_served_without_a_pod_object_says_so(store: Store) -> None:
    with trio.fail_after(TIMEOUT):
        obj = await added(store, request())
    assert obj["metadata"]["annotations"] == {ANNO_POD_OBJECT: "absent"}
    assert Endpoint.from_object(obj).pod_object_absent


async def test_the_endpoint_of_a_pod_with_a_pod_object_has_no_mark(store: Store) -> None:
    with trio.fail_after(TIMEOUT):
        obj = await added(store, request(uid=await pod_object(store)))
    assert ANNO_POD_OBJECT not in (obj["metadata"].get("annotations") or {})
    assert not Endpoint.from_object(obj).pod_object_absent


async def test_the_mark_survives_the_endpoints_rewrite_by_another_interfaces_add(store: Store) -> None:
    with trio.fail_after(TIMEOUT):
        obj = await added(store, request(), request(ifname="net1"))
    endpoint = Endpoint.from_object(obj)
    assert [n.interface for n in endpoint.nics] == ["eth0", "net1"]
    assert endpoint.pod_object_absent


async def test_the_latest_add_of_the_pod_decides_the_mark(store: Store) -> None:
    with trio.fail_after(TIMEOUT):
        uid = await pod_object(store)
        assert not Endpoint.from_object(await added(store, request(uid=uid))).pod_object_absent
        await store.delete("Pod", "p", "default")  # the Pod object went; the sandbox is made again
        assert Endpoint.from_object(await added(store, request(container="ctr-2", uid=uid))).pod_object_absent
        uid = await pod_object(store)  # a new pod of that name, with its Pod object
        assert not Endpoint.from_object(await added(store, request(container="ctr-3", uid=uid))).pod_object_absent
