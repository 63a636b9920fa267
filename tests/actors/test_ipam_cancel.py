"""IpamService under cancellation: an ADD cut short (agent drain) keeps nothing it was already answered."""

from __future__ import annotations

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
