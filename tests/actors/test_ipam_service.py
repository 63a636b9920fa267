"""IpamService in process: an ADD cut short (agent drain) keeps nothing it was already answered; what a burst
of ADDs reads."""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable
from pathlib import Path

import attrs
import trio

from actors.ipam import AddRequest, IpamService, IpamSettings, PoolRegistry
from actors.sqlite import SqliteStore
from actors.store import Obj
from actors.supervisor import Supervisor
from spider.pool import KIND, PoolLedger
from tests.actors.conftest import TIMEOUT, InterferingStore
from tests.controller.support import eventually
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


async def test_an_add_cancelled_half_way_gives_back_the_address_it_already_got(tmp_path: Path) -> None:
    sqlite = await SqliteStore.open(tmp_path / "store.db")
    store = HoldsOnePool(sqlite, held="v6")
    await sqlite.create(pool_object("v4", "10.30.0.0/24", ["10.30.0.10-10.30.0.19"]))
    await sqlite.create(pool_object("v6", "fd30::/64", ["fd30::10-fd30::19"]))
    request = AddRequest("ctr-1", "eth0", "/var/run/netns/x", "default", "p", "uid-p", ("v4",), ("v6",))
    adding = trio.CancelScope()

    async def add(ipam: IpamService) -> None:
        with adding:
            await ipam.allocate(request)

    try:
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                ipam = IpamService(store, PoolRegistry(store, Supervisor(nursery)), "node-1")
                nursery.start_soon(add, ipam)
                await store.entered.wait()
                await eventually(held(sqlite, "v4", 1), what="the IPv4 answer")  # while IPv6 hangs
                await trio.sleep(0.05)
                adding.cancel(reason="agent draining")
                await eventually(held(sqlite, "v4", 0), what="the IPv4 address given back")
                nursery.cancel_scope.cancel(reason="test over")
            assert await records(sqlite, "v4") == 0
    finally:
        await sqlite.aclose()


async def test_an_add_cancelled_with_the_pool_actors_themselves_ends_within_the_undo_budget(tmp_path: Path) -> None:
    # The whole agent goes away: nobody is left to answer the undo, which must not wait for ever.
    sqlite = await SqliteStore.open(tmp_path / "store.db")
    store = HoldsOnePool(sqlite, held="v6")
    await sqlite.create(pool_object("v4", "10.30.0.0/24", ["10.30.0.10-10.30.0.19"]))
    await sqlite.create(pool_object("v6", "fd30::/64", ["fd30::10-fd30::19"]))
    request = AddRequest("ctr-1", "eth0", "/var/run/netns/x", "default", "p", "uid-p", ("v4",), ("v6",))
    try:
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                settings = IpamSettings(endpoint_budget=0.5)
                ipam = IpamService(store, PoolRegistry(store, Supervisor(nursery)), "node-1", settings)
                nursery.start_soon(ipam.allocate, request)
                await store.entered.wait()
                await eventually(held(sqlite, "v4", 1), what="the IPv4 answer")
                nursery.cancel_scope.cancel(reason="agent stopping")
    finally:
        await sqlite.aclose()


@attrs.define(eq=False)
class CountsReads(InterferingStore):
    """Counts ``get`` calls per kind."""

    reads: collections.Counter[str] = attrs.field(factory=collections.Counter)

    async def get(self, kind: str, name: str, namespace: str = "") -> Obj:
        self.reads[kind] += 1
        return await self.inner.get(kind, name, namespace)


async def test_a_burst_reads_its_namespace_and_node_once_and_every_pod_afresh(tmp_path: Path) -> None:
    sqlite = await SqliteStore.open(tmp_path / "store.db")
    store = CountsReads(sqlite)
    await sqlite.create(pool_object("v4", "10.30.0.0/24", ["10.30.0.10-10.30.0.19"]))
    await sqlite.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
    try:
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                settings = IpamSettings(context_cache_ttl=0.3)
                ipam = IpamService(store, PoolRegistry(store, Supervisor(nursery)), "node-1", settings)
                for i in range(5):
                    await ipam.allocate(AddRequest(f"c{i}", "eth0", "/x", "default", f"p{i}", f"u{i}", ("v4",), ()))
                assert (store.reads["Pod"], store.reads["Namespace"], store.reads["Node"]) == (5, 1, 1)
                await trio.sleep(0.35)  # older than the cache's time to live: read again
                await ipam.allocate(AddRequest("c5", "eth0", "/x", "default", "p5", "u5", ("v4",), ()))
                assert (store.reads["Pod"], store.reads["Namespace"], store.reads["Node"]) == (6, 2, 2)
                nursery.cancel_scope.cancel(reason="test over")
    finally:
        await sqlite.aclose()
