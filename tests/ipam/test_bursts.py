"""Property: concurrent bursts against a live PoolActor, with conflicting writers, never lose or double an address.

``@given`` with pytest-trio: no sync fixtures here (Hypothesis's function-scoped-fixture health check, STYLE
§0.4); each example builds its own store in a temporary directory.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import outcome
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.ipam.pool import Allocation, PoolHandle, open_pool
from actors.stores.sqlite import SqliteStore
from spider.errors import PoolExhausted
from spider.pool import Owner
from tests.ipam.conftest import POOL, TIMEOUT, InterferingStore, foreign, persisted, seed_pool

CAPACITY = 20
owners = st.builds(
    Owner,
    pod_uid=st.sampled_from([f"uid-{i}" for i in range(25)]),
    nic=st.sampled_from(["eth0", "net1"]),
    namespace=st.just("default"),
    name=st.just("pod"),
    container_id=st.sampled_from(["c1", "c2"]),  # a repeat from a new sandbox keeps the address
    node=st.just("node-a"),
)
bursts = st.lists(st.tuples(st.lists(owners, max_size=20), st.integers(0, 3)), min_size=1, max_size=3)


async def fire(handle: PoolHandle, batch: list[Owner]) -> list[tuple[Owner, outcome.Outcome[Allocation]]]:
    results: list[tuple[Owner, outcome.Outcome[Allocation]]] = []

    async def one(who: Owner) -> None:
        results.append((who, await outcome.acapture(handle.allocate, who)))

    async with trio.open_nursery() as nursery:
        for who in batch:
            nursery.start_soon(one, who)
    return results


@settings(max_examples=15, deadline=None, database=None)
@given(bursts=bursts)
async def test_concurrent_bursts_with_conflicting_writers_never_lose_or_double_an_address(
    bursts: list[tuple[list[Owner], int]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp, trio.fail_after(TIMEOUT):
        async with await SqliteStore.open(Path(tmp) / "store.db") as sqlite:
            await seed_pool(sqlite, ips=f"10.0.0.10-10.0.0.{10 + CAPACITY - 1}")
            store = InterferingStore(sqlite)
            handle, actor = open_pool(POOL, store)
            told: dict[tuple[str, str], str] = {}
            exhausted = False
            async with trio.open_nursery() as nursery:
                await nursery.start(actor.run)
                for n, (batch, conflicts) in enumerate(bursts):
                    store.interfere(*(foreign(f"{n}-{i}") for i in range(conflicts)))
                    for who, result in await fire(handle, batch):
                        if isinstance(result, outcome.Error):
                            assert isinstance(result.error, PoolExhausted), result.error
                            exhausted = True
                            continue
                        ip = result.unwrap().ip
                        assert told.setdefault(who.key, ip) == ip  # one owner key, one address
                nursery.cancel_scope.cancel(reason="example over")
            stored = await persisted(sqlite)
    theirs = {key: ip for key, ip in store.taken.items() if ip is not None}
    assert stored == told | theirs  # nothing lost, nothing extra, the other writer's work survives
    assert len(set(stored.values())) == len(stored)  # no address twice
    if exhausted:
        assert len(stored) == CAPACITY  # exhaustion only when full
