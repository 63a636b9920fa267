"""IpamService in process: an ADD cut short (agent drain) keeps nothing it was already answered; what a burst
of ADDs reads; an ADD's and a DEL's reads of the Pod and of its endpoint go at once."""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from actors.ipam.service import IpamService, IpamSettings, PoolRegistry
from actors.runtime.supervisor import Supervisor
from actors.stores.port import Invalid, Obj, Store
from actors.stores.sqlite import SqliteStore
from spider.endpoint import KIND as ENDPOINT
from spider.errors import SpiderError, StoreUnavailable
from spider.ipam_request import AddRequest, DelRequest
from spider.pool import KIND, PoolLedger
from tests.controller.support import eventually
from tests.ipam.conftest import TIMEOUT, InterferingStore
from tests.support import pool_object


@attrs.define(eq=False)
class HoldsOnePool(InterferingStore):
    """Status writes of pool ``held`` never finish (its API server stalls); the others pass."""

    held: str = ""

    async def update_status(self, obj: Obj) -> Obj:
        if obj["metadata"]["name"] == self.held:
            self.entered.set()
            await trio.sleep_forever()
        return await self.inner.update_status(obj)


async def records(store: SqliteStore, pool: str) -> int:
    return len(PoolLedger.from_object(await store.get(KIND, pool)).records)


def held(store: SqliteStore, pool: str, count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await records(store, pool) == count

    return check


@pytest.fixture
async def two_pools(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """An embedded store with an IPv4 pool ``v4`` and an IPv6 pool ``v6``."""
    store = await SqliteStore.open(tmp_path / "store.db")
    await store.create(pool_object("v4", "10.30.0.0/24", ["10.30.0.10-10.30.0.19"]))
    await store.create(pool_object("v6", "fd30::/64", ["fd30::10-fd30::19"]))
    try:
        yield store
    finally:
        await store.aclose()


def service(nursery: trio.Nursery, store: Store, **settings: Any) -> IpamService:
    return IpamService(store, PoolRegistry(store, Supervisor(nursery)), "node-1", IpamSettings(**settings))


DUAL = AddRequest("ctr-1", "eth0", "/var/run/netns/x", "default", "p", "uid-p", ("v4",), ("v6",))


async def test_an_add_cancelled_half_way_gives_back_the_address_it_already_got(two_pools: SqliteStore) -> None:
    store = HoldsOnePool(two_pools, held="v6")
    adding = trio.CancelScope()

    async def add(ipam: IpamService) -> None:
        with adding:
            await ipam.allocate(DUAL)

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(add, service(nursery, store))
            await store.entered.wait()
            await eventually(held(two_pools, "v4", 1), what="the IPv4 answer")  # while IPv6 hangs
            await trio.sleep(0.05)
            adding.cancel(reason="agent draining")
            await eventually(held(two_pools, "v4", 0), what="the IPv4 address given back")
            nursery.cancel_scope.cancel(reason="test over")
        assert await records(two_pools, "v4") == 0


async def test_an_add_cancelled_with_the_pool_actors_themselves_ends_within_the_undo_budget(
    two_pools: SqliteStore,
) -> None:
    # The whole agent goes away: nobody is left to answer the undo, which must not wait for ever.
    store = HoldsOnePool(two_pools, held="v6")
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service(nursery, store, undo_budget=0.5).allocate, DUAL)
            await store.entered.wait()
            await eventually(held(two_pools, "v4", 1), what="the IPv4 answer")
            nursery.cancel_scope.cancel(reason="agent stopping")


@attrs.define(eq=False)
class CountsReads(InterferingStore):
    """Counts ``get`` calls per kind."""

    reads: collections.Counter[str] = attrs.field(factory=collections.Counter)

    async def get(self, kind: str, name: str, namespace: str = "") -> Obj:
        self.reads[kind] += 1
        return await self.inner.get(kind, name, namespace)


async def test_a_burst_reads_its_namespace_and_node_once_and_every_pod_afresh(two_pools: SqliteStore) -> None:
    store = CountsReads(two_pools)
    await two_pools.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            ipam = service(nursery, store, context_cache_ttl=0.3)
            for i in range(5):
                await ipam.allocate(AddRequest(f"c{i}", "eth0", "/x", "default", f"p{i}", f"u{i}", ("v4",), ()))
            assert (store.reads["Pod"], store.reads["Namespace"], store.reads["Node"]) == (5, 1, 1)
            await trio.sleep(0.35)  # older than the cache's time to live: read again
            await ipam.allocate(AddRequest("c5", "eth0", "/x", "default", "p5", "u5", ("v4",), ()))
            assert (store.reads["Pod"], store.reads["Namespace"], store.reads["Node"]) == (6, 2, 2)
            nursery.cancel_scope.cancel(reason="test over")


@attrs.define(eq=False)
class PodReadWaitsForEndpointRead(InterferingStore):
    """A Pod read answers only once the endpoint read has begun: the two must be under way at once.  With
    ``pod_fails``, the Pod read then fails with that error, and the endpoint read with another."""

    pod_fails: SpiderError | None = None
    endpoint_read: trio.Event = attrs.field(factory=trio.Event)

    async def get(self, kind: str, name: str, namespace: str = "") -> Obj:
        if kind == "Pod":
            with trio.fail_after(TIMEOUT / 2):
                await self.endpoint_read.wait()
            if self.pod_fails is not None:
                raise self.pod_fails
        if kind == ENDPOINT:
            self.endpoint_read.set()
            if self.pod_fails is not None:
                raise Invalid(kind=kind, name=name, reason="not the error that wins")
        return await self.inner.get(kind, name, namespace)


async def test_an_add_and_a_del_read_the_pod_and_its_endpoint_at_once(two_pools: SqliteStore) -> None:
    store = PodReadWaitsForEndpointRead(two_pools)
    add = AddRequest("c1", "eth0", "/x", "default", "p1", "u1", ("v4",), ())
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            ipam = service(nursery, store)
            (answer,) = await ipam.allocate(add)
            assert (await two_pools.get(ENDPOINT, "p1", "default"))["status"]["current"]["uid"] == "u1"
            store.endpoint_read = trio.Event()
            freed = await ipam.release(DelRequest("c1", "eth0", "default", "p1", "u1"))
            assert freed == [answer.allocations[0].address]
            nursery.cancel_scope.cancel(reason="test over")


async def test_when_both_reads_fail_the_pods_error_is_the_answer(two_pools: SqliteStore) -> None:
    store = PodReadWaitsForEndpointRead(two_pools, pod_fails=StoreUnavailable(reason="the API server is away"))
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            ipam = service(nursery, store)
            with pytest.raises(StoreUnavailable):
                await ipam.allocate(AddRequest("c1", "eth0", "/x", "default", "p1", "u1", ("v4",), ()))
            store.endpoint_read = trio.Event()
            with pytest.raises(StoreUnavailable):
                await ipam.release(DelRequest("c1", "eth0", "default", "p1", "u1"))
            nursery.cancel_scope.cancel(reason="test over")
    assert await records(two_pools, "v4") == 0


@attrs.define(eq=False)
class EndpointReadBreaks(InterferingStore):
    """The endpoint read fails with something that is no ``SpiderError`` (``hang``: never answers); with
    ``pod_fails``, the Pod read fails with that."""

    hang: bool = False
    pod_fails: SpiderError | None = None

    async def get(self, kind: str, name: str, namespace: str = "") -> Obj:
        if kind == ENDPOINT:
            if self.hang:
                await trio.sleep_forever()
            raise RuntimeError("a bug in the endpoint read")
        if kind == "Pod" and self.pod_fails is not None:
            raise self.pod_fails
        return await self.inner.get(kind, name, namespace)


async def test_an_unexpected_error_of_the_endpoint_read_comes_out_as_itself(two_pools: SqliteStore) -> None:
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            ipam = service(nursery, EndpointReadBreaks(two_pools))
            with pytest.raises(RuntimeError, match="a bug in the endpoint read"):
                await ipam.allocate(AddRequest("c1", "eth0", "/x", "default", "p1", "u1", ("v4",), ()))
            nursery.cancel_scope.cancel(reason="test over")


async def test_a_failed_pod_read_stops_the_endpoint_read_it_no_longer_needs(two_pools: SqliteStore) -> None:
    store = EndpointReadBreaks(two_pools, hang=True, pod_fails=StoreUnavailable(reason="the API server is away"))
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            ipam = service(nursery, store)
            with pytest.raises(StoreUnavailable):
                await ipam.allocate(AddRequest("c1", "eth0", "/x", "default", "p1", "u1", ("v4",), ()))
            with pytest.raises(StoreUnavailable):
                await ipam.release(DelRequest("c1", "eth0", "default", "p1", "u1"))
            nursery.cancel_scope.cancel(reason="test over")
