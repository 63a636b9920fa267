"""A pool whose status would outgrow its store refuses new records with a permanent error (issue 16, item 5).

etcd refuses objects over 1.5 MiB, so on an API server a pool that kept growing would end in writes that fail
as "try again" forever; the actor refuses the allocation that would pass ``max_status_bytes`` instead.
"""

from __future__ import annotations

import pytest
import trio

from actors.ipam.pool import PoolActor, PoolHandle
from spider.errors import CNI_POOL_EXHAUSTED, PoolTooLarge
from tests.ipam.conftest import TIMEOUT, owner, persisted


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
