"""A pool whose status would outgrow its store refuses new records with a permanent error (issue 16, item 5).

etcd refuses objects over 1.5 MiB, so on an API server a pool that kept growing would end in writes that fail
as "try again" forever; the actor refuses the allocation that would pass ``max_status_bytes`` instead.
"""

from __future__ import annotations

import json

import pytest
import trio

from actors.ipam.pool import Allocate, PoolActor, PoolHandle
from actors.runtime.mailbox import Reply
from spider.errors import CNI_POOL_EXHAUSTED, PoolTooLarge
from tests.ipam.conftest import POOL, TIMEOUT, owner, persisted


async def test_an_allocation_past_the_status_limit_fails_naming_the_pool_and_the_limit(
    pool: tuple[PoolHandle, PoolActor],
) -> None:
    handle, actor = pool
    with trio.fail_after(TIMEOUT):
        first = await handle.allocate(owner(1))
        ledger = await handle.inspect()
        actor.max_status_bytes = ledger.status_bytes() + ledger.record_bytes(owner(2))  # room for one more
        await handle.allocate(owner(2))
        with pytest.raises(PoolTooLarge) as refused:
            await handle.allocate(owner(3))
        assert refused.value.cni_code == CNI_POOL_EXHAUSTED
        assert f"pool {refused.value.pool!r}" in str(refused.value)
        assert str(actor.max_status_bytes) in str(refused.value)
        # a holder asking again is no new record: still answered
        assert (await handle.allocate(owner(1))).address == first.address
        # nothing was stored for the refused owner
        assert len(await persisted(actor.store)) == 2


async def test_a_batch_refuses_only_the_records_past_the_limit(pool: tuple[PoolHandle, PoolActor]) -> None:
    handle, actor = pool
    with trio.fail_after(TIMEOUT):
        ledger = await handle.inspect()
        actor.max_status_bytes = ledger.status_bytes() + 3 * ledger.record_bytes(owner(9))
        answers: dict[int, object] = {}

        async def ask(i: int) -> None:
            try:
                answers[i] = await handle.allocate(owner(i))
            except PoolTooLarge as exc:
                answers[i] = exc

        async with trio.open_nursery() as nursery:
            for i in range(6):
                nursery.start_soon(ask, i)
    refused = [i for i, a in answers.items() if isinstance(a, PoolTooLarge)]
    assert len(refused) == 3
    assert len(await persisted(actor.store)) == 3


async def test_releasing_makes_room_again(pool: tuple[PoolHandle, PoolActor]) -> None:
    handle, actor = pool
    big = owner(1, container="c" * 300)  # a long record; what its release leaves in releasedIPs is short
    with trio.fail_after(TIMEOUT):
        await handle.allocate(big)
        actor.max_status_bytes = (await handle.inspect()).status_bytes()
        with pytest.raises(PoolTooLarge):
            await handle.allocate(owner(2))
        await handle.release(big.key)
        await handle.allocate(owner(2))


async def test_history_of_rested_addresses_gives_way_to_records_but_resting_ones_never_do(
    pool: tuple[PoolHandle, PoolActor],
) -> None:
    """With a cooldown, every address is used once before any is reused, so the last holders in ``releasedIPs``
    grow with the pool's size: at the limit they are forgotten, oldest first, once their rest is over."""
    handle, actor = pool
    now = [0.0]
    actor.clock, actor.default_cooldown = (lambda: now[0]), 10.0
    with trio.fail_after(TIMEOUT):
        for n in range(10):
            now[0] = float(n)
            await handle.allocate(owner(n))
            await handle.release(owner(n).key)
        ledger = await handle.inspect()
        assert len(ledger.released) == 10
        assert not ledger.records
        actor.max_status_bytes = ledger.status_bytes() + ledger.record_bytes(owner(99)) - 1  # one byte short
        now[0] = 9.5  # every address still rests
        with pytest.raises(PoolTooLarge):
            await handle.allocate(owner(99))
        assert (await handle.inspect()).released == ledger.released
        now[0] = 10.5  # the first one released has rested
        await handle.allocate(owner(99))
    stored = (await actor.store.get("SpiderIPPool", POOL))["status"]
    remembered = {record["pod"] for record in json.loads(stored["releasedIPs"]).values()}
    assert "default/pod-0" not in remembered
    assert "default/pod-9" in remembered
    assert len(await persisted(actor.store)) == 1


async def test_making_room_for_one_allocation_does_not_expire_the_rest_of_its_batch(
    pool: tuple[PoolHandle, PoolActor],
) -> None:
    # NB: the wall clock read to forget history once took the name of the trio time that expiries compare with
    handle, actor = pool
    wall = 1_700_000_000.0
    now = [wall]
    actor.clock, actor.default_cooldown = (lambda: now[0]), 10.0
    with trio.fail_after(TIMEOUT):
        for n in range(10):
            now[0] = wall + n
            await handle.allocate(owner(n))
            await handle.release(owner(n).key)
        ledger = await handle.inspect()
        actor.max_status_bytes = ledger.status_bytes() + ledger.record_bytes(owner(99)) - 1  # the first forgets
        now[0] = wall + 100.0  # every address has rested
        expires = trio.current_time() + 60  # forwarded by the pool host: its senders wait another minute
        first = Allocate(owner(98), Reply[object].open(), expires=expires, sender="node-b")
        second = Allocate(owner(99), Reply[object].open(), expires=expires, sender="node-b")
        handle._mailbox.send_nowait(first)  # NB: both in one batch
        handle._mailbox.send_nowait(second)
        await first.reply.wait()
        await second.reply.wait()
    assert len(await persisted(actor.store)) == 2
