"""``PoolRegistry``: pool actors start on the first request for a pool that exists, stop when idle or when their
pool is deleted (freeing the ledger), and a request that meets an actor as it stops is served by a successor.

Time is virtual (a ``MockClock`` that jumps once every task has been blocked for 0.3 s of real time, so the
embedded store's worker threads finish first even on a busy machine): the idle timeouts here are minutes long.
"""

from __future__ import annotations

import json

import outcome
import pytest
import trio
import trio.testing

from actors.ipam.plugin import Plugin
from actors.ipam.pool import Allocation, PoolRegistry, open_pool
from actors.ipam.service import IpamService
from actors.runtime.supervisor import Supervisor
from actors.stores.sqlite import SqliteStore
from spider.errors import ActorUnavailable, PoolNotFound, PoolTooLarge
from spider.pool import KIND
from tests.ipam.conftest import POOL, TIMEOUT, owner, persisted, seed_pool
from tests.support import cni_env, netconf

IDLE = 300.0
LONG = IDLE * 20  # the bound of a test that waits through idle timeouts (virtual seconds)


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Virtual time that jumps ahead once all tasks have been blocked for 0.3 s of real time."""
    return trio.testing.MockClock(autojump_threshold=0.3)


def registry_of(store: SqliteStore, nursery: trio.Nursery, **settings: object) -> PoolRegistry:
    registry = PoolRegistry(store, Supervisor(nursery), idle_timeout=IDLE)
    for name, value in settings.items():
        setattr(registry, name, value)
    return registry


def running(registry: PoolRegistry, name: str = POOL) -> bool:
    """Whether the registry knows an actor of the pool and the supervisor keeps it."""
    return name in registry.actors and registry.supervisor.running(f"pool/{name}")


async def test_an_idle_actor_stops_frees_its_ledger_and_the_next_request_starts_another(
    sqlite: SqliteStore, nursery: trio.Nursery, clock: trio.testing.MockClock
) -> None:
    registry = registry_of(sqlite, nursery)
    handle = await registry.get(POOL)
    with trio.fail_after(LONG):
        first = await handle.allocate(owner(1))
        actor = registry.actors[POOL]
        await trio.sleep(IDLE / 2)
        assert running(registry)  # not idle yet
        await trio.sleep(IDLE)
        assert not running(registry)
        assert actor._ledger is None  # the ledger went with the actor
        again = await handle.allocate(owner(1))  # the same handle reaches a new actor
        assert registry.actors[POOL] is not actor
        second = await handle.allocate(owner(2))
    assert again.address == first.address
    assert await persisted(sqlite) == {owner(1).key: first.ip, owner(2).key: second.ip}


async def test_requests_that_arrive_as_an_idle_actor_stops_are_all_served(
    sqlite: SqliteStore, nursery: trio.Nursery, clock: trio.testing.MockClock
) -> None:
    registry = registry_of(sqlite, nursery)
    handle = await registry.get(POOL)
    results: dict[int, outcome.Outcome[Allocation]] = {}

    async def ask_at(when: float, i: int) -> None:
        await trio.sleep_until(when)
        results[i] = await outcome.acapture(handle.allocate, owner(i))

    with trio.fail_after(LONG):
        for round_ in range(3):
            await handle.inspect()  # an actor runs, its idle clock starts now
            deadline = trio.current_time() + IDLE  # the actor stops at this virtual instant
            async with trio.open_nursery() as burst:
                for j, offset in enumerate((0.0, 0.0, 0.0, 0.0, 1e-6)):  # NB: none earlier: it would keep it busy
                    burst.start_soon(ask_at, deadline + offset, 10 * round_ + j)
    assert len(results) == 15
    served = {i: r.unwrap() for i, r in results.items()}
    assert len({a.ip for a in served.values()}) == 15
    assert await persisted(sqlite) == {owner(i).key: a.ip for i, a in served.items()}


async def test_a_deleted_pools_actor_stops_and_its_statistics_go(sqlite: SqliteStore, nursery: trio.Nursery) -> None:
    registry = registry_of(sqlite, nursery)
    handle = await registry.get(POOL)
    with trio.fail_after(TIMEOUT):
        await handle.allocate(owner(1))
        assert POOL in registry.statistics()
        await sqlite.delete(KIND, POOL)
        with pytest.raises(PoolNotFound):
            await handle.allocate(owner(2))
        await trio.testing.wait_all_tasks_blocked()
    assert not running(registry)
    assert registry.statistics() == {}


async def test_a_pool_created_again_gets_a_new_actor(sqlite: SqliteStore, nursery: trio.Nursery) -> None:
    registry = registry_of(sqlite, nursery)
    handle = await registry.get(POOL)
    with trio.fail_after(TIMEOUT):
        await handle.allocate(owner(1))
        await sqlite.delete(KIND, POOL)
        with pytest.raises(PoolNotFound):
            await handle.allocate(owner(3))
        await seed_pool(sqlite)
        got = await handle.allocate(owner(2))
    assert await persisted(sqlite) == {owner(2).key: got.ip}


async def test_a_request_for_a_pool_that_does_not_exist_starts_no_actor(
    sqlite: SqliteStore, nursery: trio.Nursery
) -> None:
    registry = registry_of(sqlite, nursery)
    handle = await registry.get("nope")
    with trio.fail_after(TIMEOUT):
        for _ in range(3):
            with pytest.raises(PoolNotFound):
                await handle.inspect()
            with pytest.raises(PoolNotFound):
                await handle.release(owner(1).key)
    assert registry.actors == {}
    assert registry.statistics() == {}
    assert not registry.supervisor.running("pool/nope")


async def test_a_cni_status_naming_an_unknown_pool_starts_no_actor(sqlite: SqliteStore, nursery: trio.Nursery) -> None:
    registry = registry_of(sqlite, nursery)
    plugin = Plugin(IpamService(sqlite, registry, "node-1"))
    conf = netconf("/unused.sock", "1.1.0", default_ipv4_ippool=["nope", "nor-this"])
    with trio.fail_after(TIMEOUT):
        for _ in range(3):
            await plugin.handle(cni_env("STATUS"), json.dumps(conf).encode())
    assert registry.actors == {}
    assert registry.statistics() == {}


async def test_statistics_keep_counting_across_an_idle_restart(
    sqlite: SqliteStore, nursery: trio.Nursery, clock: trio.testing.MockClock
) -> None:
    registry = registry_of(sqlite, nursery)
    handle = await registry.get(POOL)
    with trio.fail_after(LONG):
        await handle.allocate(owner(1))
        await trio.sleep(IDLE * 2)
        assert not running(registry)
        await handle.allocate(owner(2))
    assert registry.statistics()[POOL]["requests"] == 2


async def test_every_actor_the_registry_starts_keeps_the_status_cap(
    sqlite: SqliteStore, nursery: trio.Nursery, clock: trio.testing.MockClock
) -> None:
    registry = registry_of(sqlite, nursery, max_status_bytes=1)
    handle = await registry.get(POOL)
    with trio.fail_after(LONG):
        with pytest.raises(PoolTooLarge):
            await handle.allocate(owner(1))
        await trio.sleep(IDLE * 2)  # a successor has the same cap
        with pytest.raises(PoolTooLarge):
            await handle.allocate(owner(1))
    assert await persisted(sqlite) == {}


async def test_an_actor_with_an_idle_timeout_closes_its_mailbox_and_returns(
    sqlite: SqliteStore, clock: trio.testing.MockClock
) -> None:
    handle, actor = open_pool(POOL, sqlite)
    actor.idle_timeout = IDLE
    with trio.fail_after(LONG):
        async with trio.open_nursery() as nursery:
            await nursery.start(actor.run)
            await handle.allocate(owner(1))
        # the nursery closed by itself: run returned
        with pytest.raises(ActorUnavailable):
            await handle.allocate(owner(2))
    assert list(await persisted(sqlite)) == [owner(1).key]


async def test_an_actor_without_an_idle_timeout_keeps_serving(
    sqlite: SqliteStore, nursery: trio.Nursery, clock: trio.testing.MockClock
) -> None:
    handle, actor = open_pool(POOL, sqlite)
    assert actor.idle_timeout is None
    with trio.fail_after(LONG):
        await nursery.start(actor.run)
        await handle.allocate(owner(1))
        await trio.sleep(IDLE * 10)
        await handle.allocate(owner(2))
    assert len(await persisted(sqlite)) == 2
