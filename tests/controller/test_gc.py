"""The leader's IP GC on each store: addresses of pods gone without a CNI DEL come back; fixed and fresh ones stay.

Real ADDs (``IpamService``) give the addresses; the GC runs with short gaps so that its two looks at a record
come quickly; what it did is read back from the store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from actors.controller.gc import IpGarbageCollector, collect_once
from actors.ipam.pool import PoolRegistry
from actors.ipam.service import IpamService
from actors.runtime.supervisor import Supervisor
from actors.stores.port import NotFound, Obj, Store
from spider.endpoint import KIND as ENDPOINT
from spider.gc import GcSettings
from spider.ipam_request import AddRequest
from spider.pool import KIND as POOL
from spider.pool import PoolLedger
from tests.controller.support import eventually, pool

TIMEOUT = 30
NODE = "node-1"
FAST = GcSettings(interval=0.3, trace_gap=0.05)


def pod(name: str, *, owner: dict[str, Any] | None = None) -> Obj:
    meta: dict[str, Any] = {"name": name, "namespace": "default"}
    if owner is not None:
        meta["ownerReferences"] = [{**owner, "controller": True, "uid": "owner-uid"}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "pause"}]},
    }


async def running(store: Store, obj: Obj) -> Obj:
    """Create the pod and report it Running (what the kubelet does once the sandbox is up)."""
    created = await store.create(obj)
    status = {"phase": "Running", "podIP": "10.6.0.250", "podIPs": [{"ip": "10.6.0.250"}]}
    return await store.update_status({**created, "status": status})


async def add(ipam: IpamService, created: Obj, container: str = "ctr") -> str:
    """A CNI ADD for the pod: its address in pool ``gc``."""
    meta = created["metadata"]
    req = AddRequest(container, "eth0", "/var/run/netns/x", "default", meta["name"], meta["uid"], ("gc",), ())
    results = await ipam.allocate(req)
    return results[0].allocations[0].ip


async def holders(store: Store) -> dict[str, str]:
    """``{address: pod UID}`` of pool ``gc`` as stored."""
    ledger = PoolLedger.from_object(await store.get(POOL, "gc"))
    return {str(ip): rec.pod_uid for ip, rec in ((ledger.address(i).split("/")[0], r) for i, r in ledger.holders())}


def released(store: Store, ip: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return ip not in await holders(store)

    return check


async def endpoint_exists(store: Store, name: str) -> bool:
    try:
        await store.get(ENDPOINT, name, "default")
    except NotFound:
        return False
    return True


@asynccontextmanager
async def cluster(store: Store, settings: GcSettings = FAST) -> AsyncIterator[tuple[IpamService, IpGarbageCollector]]:
    """Pool ``gc``, an agent's IPAM service, and the GC running (synced) for the body of the block."""
    await store.create(pool("gc", ips=["10.6.0.10-10.6.0.20"]))
    async with trio.open_nursery() as nursery:
        ipam = IpamService(store, PoolRegistry(store, Supervisor(nursery)), NODE)
        gc = IpGarbageCollector(store, settings)
        await nursery.start(gc.run)
        yield ipam, gc
        nursery.cancel_scope.cancel(reason="test over")


async def scans_after(gc: IpGarbageCollector, count: int) -> None:
    start = gc.scans

    async def check() -> bool:
        return gc.scans >= start + count

    await eventually(check, within=TIMEOUT, what=f"{count} more scans")


async def test_a_pod_deleted_without_a_cni_del_gets_its_address_back(private_store: Store) -> None:
    store = private_store
    with trio.fail_after(TIMEOUT):
        async with cluster(store) as (ipam, gc):
            created = await running(store, pod("lost"))
            ip = await add(ipam, created)
            await store.delete("Pod", "lost", "default")  # the node died: no CNI DEL ever comes
            await eventually(released(store, ip), within=TIMEOUT, what="the address released")
            await eventually(lambda: _not(endpoint_exists(store, "lost")), within=TIMEOUT, what="endpoint dropped")
            assert gc.released >= 1
            assert gc.recent[-1].ip == ip
            assert gc.recent[-1].pod_uid == created["metadata"]["uid"]


async def _not(check: Awaitable[bool]) -> bool:
    return not await check


async def test_a_live_pod_keeps_its_address_through_many_scans(private_store: Store) -> None:
    store = private_store
    with trio.fail_after(TIMEOUT):
        async with cluster(store) as (ipam, gc):
            created = await running(store, pod("alive"))
            ip = await add(ipam, created)
            await scans_after(gc, 3)
            assert (await holders(store))[ip] == created["metadata"]["uid"]
            assert gc.released == 0


async def test_a_statefulset_pod_keeps_its_address_while_its_ordinal_is_valid(private_store: Store) -> None:
    store = private_store
    sts = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}}, "serviceName": "web", "template": {}},
    }
    with trio.fail_after(TIMEOUT):
        async with cluster(store) as (ipam, gc):
            made = await store.create(sts)
            owner = {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web"}
            created = await running(store, pod("web-0", owner=owner))
            ip = await add(ipam, created)
            await store.delete("Pod", "web-0", "default")  # no DEL: the next web-0 takes the same address
            await scans_after(gc, 3)
            assert ip in await holders(store)
            assert await endpoint_exists(store, "web-0")
            await store.update({**made, "spec": {**made["spec"], "replicas": 0}})  # scaled down: web-0 is invalid
            await eventually(released(store, ip), within=TIMEOUT, what="the scaled-down ordinal's address released")


async def test_a_pod_re_created_under_the_same_name_keeps_its_fresh_address(private_store: Store) -> None:
    store = private_store
    with trio.fail_after(TIMEOUT):
        async with cluster(store) as (ipam, gc):
            first = await running(store, pod("same"))
            await add(ipam, first, "ctr-1")
            await store.delete("Pod", "same", "default")  # no DEL for the first pod: GC traces it
            second = await running(store, pod("same"))
            new_ip = await add(ipam, second, "ctr-2")  # NB: may be the first pod's address again
            await scans_after(gc, 3)
            assert await holders(store) == {new_ip: second["metadata"]["uid"]}
            recorded = await store.get(ENDPOINT, "same", "default")
            assert recorded["status"]["current"]["uid"] == second["metadata"]["uid"]


async def test_spider_gc_releases_an_orphan_only_after_looking_twice(private_store: Store) -> None:
    store = private_store
    with trio.fail_after(TIMEOUT):
        await store.create(pool("gc", ips=["10.6.0.10-10.6.0.20"]))
        async with trio.open_nursery() as nursery:
            ipam = IpamService(store, PoolRegistry(store, Supervisor(nursery)), NODE)
            gone = await running(store, pod("gone"))
            gone_ip = await add(ipam, gone, "ctr-1")
            alive = await running(store, pod("alive"))
            alive_ip = await add(ipam, alive, "ctr-2")
            await store.delete("Pod", "gone", "default")
            nursery.cancel_scope.cancel(reason="adds done")
        releases = await collect_once(store, GcSettings(), gap=0.05)
        assert [(r.ip, r.pod) for r in releases] == [(gone_ip, "default/gone")]
        assert list(await holders(store)) == [alive_ip]
