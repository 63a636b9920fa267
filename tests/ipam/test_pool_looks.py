"""The pool host's last looks (``PoolActor.look``, through ``PoolRegistry.deliver_all``): forwarded looks skip
the mailbox and share one read of the pool's version; a look is answered yes only while the pool is at its
version or has left it through the actor's own writes of allocations; anything else is answered from the
records, so a look never says yes for a record another writer freed."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from actors.ipam.pool import Allocate, Allocation, OwnWrites, PoolActor, PoolMsg, PoolRegistry, Verify
from actors.runtime.mailbox import Reply
from actors.runtime.supervisor import Supervisor
from actors.stores.sqlite import SqliteStore
from spider.addr import ip_to_int
from spider.pool import KIND, PoolLedger
from tests.ipam.conftest import POOL, TIMEOUT, CountsPoolReads, InterferingStore, another_writer, foreign, owner


@pytest.fixture
def counted(sqlite: SqliteStore) -> CountsPoolReads:
    return CountsPoolReads(sqlite, metadata_delay=0.01)


@pytest.fixture
async def registry(nursery: trio.Nursery, counted: CountsPoolReads) -> PoolRegistry:
    """The pool host's registry (the store writes optimistically, as the API server's does)."""
    return PoolRegistry(counted, Supervisor(nursery))


def forwarded_look(ip: str, key: tuple[str, str], recorded_at: str, node: str = "node-1") -> Verify:
    return Verify(ip, key, Reply[bool].open(), recorded_at, sender=node)


async def looked(registry: PoolRegistry, *looks: Verify) -> list[bool]:
    """The answers to looks delivered as one forwarded batch."""
    await registry.deliver_all(POOL, list(looks))
    return [await look.reply.wait() for look in looks]


async def looks_from_nodes(registry: PoolRegistry, held: list[Allocation], apart: float = 0.0) -> list[bool]:
    """The answers to the looks of ``held`` (``owner(i)``'s, from ``node-i``), each sent in a call of its own,
    all at once or ``apart`` seconds after the one before."""
    answers: list[bool] = []

    async def node(i: int) -> None:
        await trio.sleep(apart * i)
        look = forwarded_look(held[i].ip, owner(i).key, held[i].recorded_at, f"node-{i}")
        answers.extend(await looked(registry, look))

    async with trio.open_nursery() as nodes:
        for i in range(len(held)):
            nodes.start_soon(node, i)
    return answers


def actor_of(registry: PoolRegistry) -> PoolActor:
    return registry.actors[POOL]


async def hold_a_write(registry: PoolRegistry, counted: CountsPoolReads, nursery: trio.Nursery) -> None:
    """Keep the actor busy: its next write is under way and held (until ``counted.gate`` is set), so its
    mailbox answers nothing meanwhile."""
    counted.gate = trio.Event()
    nursery.start_soon((await registry.get(POOL)).allocate, owner("busy"))
    await counted.entered.wait()


async def test_a_look_at_its_version_is_answered_by_one_read_of_the_version_while_the_actor_is_busy(
    registry: PoolRegistry, counted: CountsPoolReads, nursery: trio.Nursery
) -> None:
    with trio.fail_after(TIMEOUT):
        mine = await (await registry.get(POOL)).allocate(owner(1))
        await hold_a_write(registry, counted, nursery)
        counted.metadata = counted.whole = 0
        assert await looked(registry, forwarded_look(mine.ip, owner(1).key, mine.recorded_at)) == [True]
        assert (counted.metadata, counted.whole) == (1, 0)
        assert actor_of(registry).stats.looks == 1
        counted.gate.set()


async def test_the_looks_of_many_nodes_at_once_share_at_most_two_reads(
    registry: PoolRegistry, counted: CountsPoolReads, nursery: trio.Nursery
) -> None:
    handle = await registry.get(POOL)
    with trio.fail_after(TIMEOUT):
        held = [await handle.allocate(owner(i)) for i in range(10)]
        await hold_a_write(registry, counted, nursery)
        counted.metadata = 0
        assert await looks_from_nodes(registry, held) == [True] * 10
        assert counted.metadata <= 2
        counted.gate.set()


async def test_a_look_after_the_actors_own_allocations_still_holds_without_reading_the_records(
    registry: PoolRegistry, counted: CountsPoolReads
) -> None:
    handle = await registry.get(POOL)
    with trio.fail_after(TIMEOUT):
        mine = await handle.allocate(owner(1))
        for i in range(2, 5):  # three more writes, each of allocations only
            await handle.allocate(owner(i))
        counted.whole = counted.metadata = 0
        assert await looked(registry, forwarded_look(mine.ip, owner(1).key, mine.recorded_at)) == [True]
        assert (counted.metadata, counted.whole) == (1, 0)  # NB: the mailbox would read the version twice


@pytest.mark.parametrize("freed", [True, False], ids=["record-freed", "record-kept"])
async def test_after_another_writer_a_look_is_answered_from_the_records(
    registry: PoolRegistry, counted: CountsPoolReads, sqlite: SqliteStore, freed: bool
) -> None:
    handle = await registry.get(POOL)
    with trio.fail_after(TIMEOUT):
        mine = await handle.allocate(owner(1))
        stored = await sqlite.get(KIND, POOL)
        ledger = PoolLedger.from_object(stored)
        ledger.allocate(foreign(1))
        if freed:
            assert ledger.release_ip(ip_to_int(mine.ip), owner(1).pod_uid)
        await sqlite.update_status({**stored, "status": ledger.to_status()})
        counted.whole = 0
        assert await looked(registry, forwarded_look(mine.ip, owner(1).key, mine.recorded_at)) == [not freed]
        assert counted.whole == 1  # the pool moved on behind the actor's back: its records, read once


async def test_after_the_actor_released_something_a_look_is_answered_from_the_records(
    registry: PoolRegistry, counted: CountsPoolReads
) -> None:
    handle = await registry.get(POOL)
    with trio.fail_after(TIMEOUT):
        mine = await handle.allocate(owner(1))
        await handle.allocate(owner(2))
        await handle.release(owner(1).key)  # e.g. the GC on the host freed it after the ADD's write
        assert await looked(registry, forwarded_look(mine.ip, owner(1).key, mine.recorded_at)) == [False]


async def test_a_look_for_a_pool_no_actor_serves_yet_is_served_by_a_new_actor(
    registry: PoolRegistry, sqlite: SqliteStore, nursery: trio.Nursery
) -> None:
    agent = PoolRegistry(InterferingStore(sqlite), Supervisor(nursery))  # the agent wrote itself (fallback)
    with trio.fail_after(TIMEOUT):
        mine = await (await agent.get(POOL)).allocate(owner(1))
        assert POOL not in registry.actors
        assert await looked(registry, forwarded_look(mine.ip, owner(1).key, mine.recorded_at)) == [True]
        assert POOL in registry.actors


def test_own_writes_follow_a_chain_of_allocations_and_stop_at_a_gap_or_a_release() -> None:
    writes = OwnWrites(limit=3)
    assert writes.kept_since("1", "1")  # the pool did not move
    writes.add("1", "2", kept=True)
    writes.add("2", "3", kept=True)
    assert writes.kept_since("1", "3")
    assert writes.kept_since("2", "3")
    assert not writes.kept_since("3", "1")  # never backwards
    assert not writes.kept_since("0", "3")  # a version we did not write from: someone else's
    writes.add("5", "6", kept=True)  # a gap: 3 -> 5 was another writer's
    assert not writes.kept_since("1", "6")
    writes.add("6", "7", kept=False)  # this one released something
    assert not writes.kept_since("6", "7")
    assert not writes.kept_since("1", "3")  # forgotten: the oldest steps go first


async def test_a_look_left_to_the_mailbox_is_not_held_for_the_nodes_a_busy_host_waits_for(
    nursery: trio.Nursery, counted: CountsPoolReads, sqlite: SqliteStore
) -> None:
    send, recv = trio.open_memory_channel[PoolMsg](256)
    actor = PoolActor(POOL, counted, recv, linger=600.0, quiet_share=0.05 / 600)  # NB: the first batch: 50 ms
    with trio.fail_after(TIMEOUT):  # NB: the linger would outlast it
        await nursery.start(actor.run)
        replies = [Reply[Allocation].open() for _ in range(2)]
        for node, reply in zip(("node-a", "node-b"), replies, strict=True):
            send.send_nowait(Allocate(owner(node), reply, sender=node))  # the host now waits for both nodes
        mine = await replies[0].wait()
        await replies[1].wait()
        await another_writer(sqlite, foreign(1))  # so the look is left to the records
        look = forwarded_look(mine.ip, owner("node-a").key, mine.recorded_at, "node-a")
        assert await actor.look([look]) == [look]
        send.send_nowait(look)
        assert await look.reply.wait()


# --- the looks a write will be sent (``AwaitedLooks``) ----------------------------------------------------------


async def forwarded_allocations(registry: PoolRegistry, *nodes: int) -> list[Allocation]:
    """One batch of allocations, ``owner(i)``'s forwarded from ``node-i`` for each ``i`` in ``nodes``: one write."""
    batch = [Allocate(owner(i), Reply[Allocation].open(), sender=f"node-{i}") for i in nodes]
    await registry.deliver_all(POOL, list(batch))
    return [await msg.reply.wait() for msg in batch]


def look_of(held: Allocation, i: int, node: int | None = None) -> Verify:
    """``owner(i)``'s look at what it was answered, from ``node-i`` (or ``node``)."""
    return forwarded_look(held.ip, owner(i).key, held.recorded_at, f"node-{i if node is None else node}")


async def test_the_looks_of_one_write_share_one_read_however_they_straggle(
    registry: PoolRegistry, counted: CountsPoolReads
) -> None:
    with trio.fail_after(TIMEOUT):
        held = await forwarded_allocations(registry, *range(5))
        assert len({a.recorded_at for a in held}) == 1  # one write
        actor_of(registry).awaited_looks.within = TIMEOUT  # NB: a stalled machine must not split the read
        counted.metadata = 0
        # NB: each arrives while the read of the one before would be under way
        assert await looks_from_nodes(registry, held, apart=0.005) == [True] * 5
        assert counted.metadata == actor_of(registry).stats.version_reads == 1


async def test_a_node_sending_its_looks_one_call_at_a_time_is_not_waited_for_twice(
    registry: PoolRegistry, counted: CountsPoolReads
) -> None:
    with trio.fail_after(TIMEOUT):  # NB: far shorter than the wait it must not make
        nodes = {0: 0, 1: 0, 2: 2}  # owner 0's and owner 1's ADDs ran on node-0
        batch = [Allocate(owner(i), Reply[Allocation].open(), sender=f"node-{n}") for i, n in nodes.items()]
        await registry.deliver_all(POOL, list(batch))
        held = [await msg.reply.wait() for msg in batch]
        actor_of(registry).awaited_looks.within = 600.0
        answers: list[bool] = []

        async def node_0() -> None:  # as its PoolForwarder sends them: the second once the first is answered
            for i in (0, 1):
                answers.extend(await looked(registry, look_of(held[i], i, node=0)))

        async with trio.open_nursery() as calls:
            calls.start_soon(node_0)
            calls.start_soon(looked, registry, look_of(held[2], 2))
        assert answers == [True, True]


async def test_a_look_whose_fellow_gave_its_address_back_does_not_wait_for_it(
    registry: PoolRegistry, counted: CountsPoolReads, nursery: trio.Nursery
) -> None:
    with trio.fail_after(TIMEOUT):  # NB: far shorter than the wait it must not make
        held = await forwarded_allocations(registry, 0, 1)
        actor_of(registry).awaited_looks.within = 600.0
        answers: list[bool] = []
        answered = trio.Event()

        async def node_0() -> None:
            answers.extend(await looked(registry, look_of(held[0], 0)))
            answered.set()

        nursery.start_soon(node_0)
        await trio.testing.wait_all_tasks_blocked()
        assert answers == []  # it waits for node-1's look
        counted.gate = trio.Event()  # NB: the release's write is held: only the release itself may end the wait
        nursery.start_soon((await registry.get(POOL)).release, owner(1).key)  # node-1's ADD gave up its address
        await answered.wait()
        assert answers == [True]
        counted.gate.set()


async def test_a_look_whose_fellow_never_comes_reads_alone_after_a_short_wait(
    registry: PoolRegistry, counted: CountsPoolReads
) -> None:
    with trio.fail_after(TIMEOUT):
        held = await forwarded_allocations(registry, 0, 1, 2)
        actor_of(registry).awaited_looks.within = 0.02
        counted.metadata = 0
        asked = trio.current_time()
        assert await looked(registry, look_of(held[0], 0)) == [True]
        assert trio.current_time() - asked >= 0.02  # it did wait for node-1 and node-2
        actor_of(registry).awaited_looks.within = 600.0
        assert await looked(registry, look_of(held[1], 1)) == [True]  # a later one of the same write: no wait
        assert counted.metadata == 2


async def test_a_look_of_an_older_write_waits_for_no_one(registry: PoolRegistry, counted: CountsPoolReads) -> None:
    with trio.fail_after(TIMEOUT):  # NB: far shorter than the wait it must not make
        older = await forwarded_allocations(registry, 0, 1)
        newer = await forwarded_allocations(registry, 2, 3)  # this write awaits node-2's and node-3's looks
        actor_of(registry).awaited_looks.within = 600.0
        assert newer[0].recorded_at != older[0].recorded_at
        assert await looked(registry, look_of(older[0], 0)) == [True]
