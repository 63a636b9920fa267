"""SubnetActor: a subnet's addresses handed to pools with group commit and the resourceVersion guard."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from actors.ipam.subnet import SubnetNotFound, SubnetRegistry
from actors.runtime.supervisor import Supervisor
from actors.stores.port import Obj, Store
from actors.stores.sqlite import SqliteStore
from spider.addr import IPSet
from spider.subnet import InsufficientSubnetIPs

TIMEOUT = 10


def subnet_object() -> Obj:
    return {
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderSubnet",
        "metadata": {"name": "s4"},
        "spec": {"ipVersion": 4, "subnet": "10.6.0.0/24", "ips": ["10.6.0.1-10.6.0.10"]},
    }


@attrs.define
class Optimistic:
    """The embedded store without its write lock (so the actor takes the API server's path), whose subnet
    another writer changes just before the first ``bumps`` status writes."""

    inner: Store
    bumps: int = 0
    writes: int = 0

    async def update_status(self, obj: Obj) -> Obj:
        self.writes += 1
        if self.bumps:
            self.bumps -= 1
            current = await self.inner.get("SpiderSubnet", "s4")
            await self.inner.update_status({**current, "status": {**(current.get("status") or {}), "x": self.bumps}})
        return await self.inner.update_status(obj)

    def __getattr__(self, name: str) -> Any:
        if name == "update_status_atomically":
            raise AttributeError(name)
        return getattr(self.inner, name)


async def controlled(store: Store) -> dict[str, Any]:
    return json.loads((await store.get("SpiderSubnet", "s4")).get("status", {}).get("controlledIPPools") or "{}")


@pytest.fixture
async def sqlite(tmp_path: Path) -> Any:
    store = await SqliteStore.open(tmp_path / "store.db")
    await store.create(subnet_object())
    try:
        yield store
    finally:
        await store.aclose()


async def test_concurrent_claims_get_disjoint_lowest_ranges_recorded_before_the_answer(sqlite: SqliteStore) -> None:
    got: dict[str, IPSet] = {}
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            registry = SubnetRegistry(sqlite, Supervisor(nursery))
            handle = registry.get("s4")

            async def claim(pool: str) -> None:
                got[pool] = await handle.claim(pool, f"apps_v1_Deployment_ns_{pool}", 3, IPSet(4))
                assert pool in await controlled(sqlite)  # NB: durable before the answer

            async with trio.open_nursery() as claims:
                for pool in ("a", "b", "c"):
                    claims.start_soon(claim, pool)
            nursery.cancel_scope.cancel(reason="test over")
    everything = [ip for ips in got.values() for ip in ips]
    assert len(everything) == len(set(everything)) == 9
    assert IPSet.of(4, everything).to_strings() == ["10.6.0.1-10.6.0.9"]
    status = (await sqlite.get("SpiderSubnet", "s4"))["status"]
    assert status["allocatedIPCount"] == 9
    assert status["totalIPCount"] == 10


async def test_a_claim_the_subnet_cannot_cover_fails_and_records_nothing(sqlite: SqliteStore) -> None:
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            handle = SubnetRegistry(sqlite, Supervisor(nursery)).get("s4")
            with pytest.raises(InsufficientSubnetIPs, match="required '11' but only left '10'"):
                await handle.claim("a", "app", 11, IPSet(4))
            with pytest.raises(SubnetNotFound):
                await SubnetRegistry(sqlite, Supervisor(nursery)).get("nope").release("a")
            nursery.cancel_scope.cancel(reason="test over")
    assert await controlled(sqlite) == {}


async def test_a_lost_write_race_is_retried_against_the_newer_subnet(sqlite: SqliteStore) -> None:
    store = Optimistic(sqlite, bumps=2)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            handle = SubnetRegistry(store, Supervisor(nursery)).get("s4")  # type: ignore[arg-type]
            ips = await handle.claim("a", "app", 2, IPSet(4))
            assert await handle.record("a", "app", IPSet.parse(4, ["10.6.0.2"]))
            assert await handle.release("a")
            nursery.cancel_scope.cancel(reason="test over")
    assert ips.to_strings() == ["10.6.0.1-10.6.0.2"]
    assert store.writes >= 5  # two lost races, then three writes
    assert await controlled(sqlite) == {}


def manual_pool(name: str, cidr: str, ips: list[str]) -> Obj:
    return {
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderIPPool",
        "metadata": {"name": name},
        "spec": {"ipVersion": 4, "subnet": cidr, "ips": ips},
    }


@attrs.define
class PoolJustBeforeTheWrite:
    """The embedded store, where a manual pool is created just before the actor's status write begins (after
    anything the actor could have read outside that write's transaction)."""

    inner: SqliteStore
    pool: Obj
    created: bool = False

    async def update_status_atomically(self, *args: Any, **kwargs: Any) -> Obj:
        if not self.created:
            self.created = True
            await self.inner.create(self.pool)
        return await self.inner.update_status_atomically(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_a_pool_created_just_before_the_embedded_write_is_never_handed_out(sqlite: SqliteStore) -> None:
    store = PoolJustBeforeTheWrite(sqlite, manual_pool("manual", "10.6.0.0/24", ["10.6.0.1"]))
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            handle = SubnetRegistry(store, Supervisor(nursery)).get("s4")  # type: ignore[arg-type]
            ips = await handle.claim("a", "app", 1, IPSet(4))
            nursery.cancel_scope.cancel(reason="test over")
    assert store.created
    assert ips.to_strings() == ["10.6.0.2"]


@pytest.mark.parametrize("path", ["atomic", "optimistic"])
async def test_a_stale_entry_is_re_used_only_where_no_manual_pool_holds_its_addresses_now(
    sqlite: SqliteStore, path: str
) -> None:
    stale = {"x": {"ips": ["10.6.0.1-10.6.0.2"], "application": "apps_v1_Deployment_ns_x"}}
    current = await sqlite.get("SpiderSubnet", "s4")
    await sqlite.update_status({**current, "status": {"controlledIPPools": json.dumps(stale)}})
    await sqlite.create(manual_pool("manual", "10.6.0.0/24", ["10.6.0.1"]))
    store: Any = sqlite if path == "atomic" else Optimistic(sqlite)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            handle = SubnetRegistry(store, Supervisor(nursery)).get("s4")
            ips = await handle.claim("x", "apps_v1_Deployment_ns_x", 2, IPSet(4))
            nursery.cancel_scope.cancel(reason="test over")
    assert ips.to_strings() == ["10.6.0.2-10.6.0.3"]
    assert (await controlled(sqlite))["x"]["ips"] == ["10.6.0.2-10.6.0.3"]


@pytest.mark.parametrize("path", ["atomic", "optimistic"])
async def test_the_addresses_of_a_pool_of_an_overlapping_cidr_are_never_handed_out(
    sqlite: SqliteStore, path: str
) -> None:
    await sqlite.create(manual_pool("narrow", "10.6.0.0/25", ["10.6.0.1-10.6.0.2"]))
    await sqlite.create(manual_pool("elsewhere", "10.7.0.0/24", ["10.7.0.1"]))
    store: Any = sqlite if path == "atomic" else Optimistic(sqlite)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            handle = SubnetRegistry(store, Supervisor(nursery)).get("s4")
            ips = await handle.claim("a", "app", 2, IPSet(4))
            nursery.cancel_scope.cancel(reason="test over")
    assert ips.to_strings() == ["10.6.0.3-10.6.0.4"]
