"""``Turns``: tasks of one key run their bodies one at a time, in the order they came; other keys run freely;
a key leaves nothing behind once nobody holds or waits for it, also when a waiter is cancelled."""

from __future__ import annotations

import trio
import trio.testing

from actors.runtime.turns import Turns


async def test_one_key_takes_turns_in_order_and_other_keys_run_freely() -> None:
    turns = Turns()
    order: list[str] = []

    async def body(key: str, name: str, hold: float) -> None:
        async with turns.of(key):
            order.append(f"{name} in")
            await trio.sleep(hold)
            order.append(f"{name} out")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(body, "a", "first", 0.05)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(body, "a", "second", 0)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(body, "b", "other", 0)
    assert order.index("other in") < order.index("first out")
    assert order.index("first out") < order.index("second in")
    assert len(turns) == 0


async def test_a_cancelled_waiter_leaves_nothing_behind() -> None:
    turns = Turns()

    async def waiter() -> None:
        with trio.move_on_after(0.01):
            async with turns.of("a"):
                raise AssertionError("never its turn while the key is held")

    with trio.fail_after(5):
        async with turns.of("a"):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiter)
            assert len(turns) == 1
    assert len(turns) == 0
