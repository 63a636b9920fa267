"""``Reply``, the one-shot answer slot; ``drain`` and ``gather``, the group-commit batchers; ``Paces``, how long
a sender is worth waiting for (runtime/mailbox.py)."""

from __future__ import annotations

import math

import outcome
import pytest
import trio

from actors.runtime.mailbox import Paces, Reply, drain, gather
from spider.errors import PoolExhausted

TIMEOUT = 5


async def test_a_resolved_reply_gives_its_value_to_the_waiter() -> None:
    reply = Reply[int].open()
    reply.value(7)
    with trio.fail_after(TIMEOUT):
        assert await reply.wait() == 7


async def test_a_waiter_blocks_until_the_reply_is_resolved() -> None:
    reply = Reply[str].open()
    got: list[str] = []

    async def waiter() -> None:
        got.append(await reply.wait())

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []
            reply.value("late")
    assert got == ["late"]


async def test_a_second_resolve_is_ignored() -> None:
    reply = Reply[int].open()
    reply.value(1)
    reply.value(2)  # never blocks nor raises
    reply.error(PoolExhausted(pool="p", capacity=1))
    with trio.fail_after(TIMEOUT):
        assert await reply.wait() == 1


async def test_resolving_after_the_waiter_gave_up_neither_blocks_nor_raises() -> None:
    reply = Reply[int].open()
    with trio.move_on_after(0.01) as scope:
        await reply.wait()
    assert scope.cancelled_caught
    reply.value(1)
    reply.error(RuntimeError("nobody listens"))


async def test_an_error_raises_in_the_waiter() -> None:
    reply = Reply[int].open()
    reply.resolve(outcome.Error(PoolExhausted(pool="p", capacity=3)))
    with trio.fail_after(TIMEOUT), pytest.raises(PoolExhausted) as caught:
        await reply.wait()
    assert caught.value.capacity == 3


def test_drain_takes_everything_queued_below_the_limit() -> None:
    send, recv = trio.open_memory_channel[int](10)
    for i in range(1, 4):
        send.send_nowait(i)
    assert drain(recv, 0, limit=10) == [0, 1, 2, 3]
    with pytest.raises(trio.WouldBlock):
        recv.receive_nowait()


def test_drain_stops_at_the_limit_counting_the_first_message() -> None:
    send, recv = trio.open_memory_channel[int](10)
    for i in range(1, 8):
        send.send_nowait(i)
    assert drain(recv, 0, limit=4) == [0, 1, 2, 3]
    assert recv.receive_nowait() == 4  # the rest stays queued, in order


def test_drain_of_an_empty_mailbox_is_just_the_first_message() -> None:
    _, recv = trio.open_memory_channel[str](1)
    assert drain(recv, "only", limit=64) == ["only"]


def test_drain_returns_what_was_queued_before_the_senders_closed() -> None:
    send, recv = trio.open_memory_channel[int](4)
    send.send_nowait(1)
    send.close()
    assert drain(recv, 0, limit=4) == [0, 1]


async def test_gather_goes_as_soon_as_the_expected_messages_are_in(autojump_clock: trio.abc.Clock) -> None:
    send, recv = trio.open_memory_channel[int](10)
    batch = [1]

    async def late_senders() -> None:
        await trio.sleep(1)
        await send.send(2)
        await trio.sleep(1)
        await send.send(3)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(late_senders)
        start = trio.current_time()
        await gather(recv, batch, 10, expect=3, within=600)
        waited = trio.current_time() - start
    assert batch == [1, 2, 3]
    assert waited == pytest.approx(2)  # NB: virtual time: the two senders, not the 600 s linger


async def test_gather_can_count_senders_instead_of_messages(autojump_clock: trio.abc.Clock) -> None:
    send, recv = trio.open_memory_channel[str](10)
    batch = ["a1"]
    for msg in ("a2", "a3", "b1"):  # NB: three more from a and b; c is still on its way
        send.send_nowait(msg)

    async def late_sender() -> None:
        await trio.sleep(1)
        await send.send("c1")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(late_sender)
        start = trio.current_time()
        await gather(recv, batch, 10, expect=3, within=600, count=lambda b: len({m[0] for m in b}))
        waited = trio.current_time() - start
    assert batch == ["a1", "a2", "a3", "b1", "c1"]
    assert waited == pytest.approx(1)  # NB: four messages were in at once, but only two senders


async def test_gather_with_nearly_all_in_goes_after_a_quiet_pause_and_not_before(
    autojump_clock: trio.abc.Clock,
) -> None:
    send, recv = trio.open_memory_channel[int](10)
    batch = [1]

    async def late_senders() -> None:
        await trio.sleep(5)  # NB: longer than the quiet pause, but only one is in: keep waiting
        await send.send(2)
        await trio.sleep(0.5)
        await send.send(3)  # three of ten: nearly all, as asked
        await trio.sleep(0.5)
        await send.send(4)  # within the pause: taken
        await trio.sleep(5)
        await send.send(5)  # after it: the batch went without it

    async with trio.open_nursery() as nursery:
        nursery.start_soon(late_senders)
        start = trio.current_time()
        await gather(recv, batch, 10, expect=10, within=600, nearly=3, quiet=1)
        waited = trio.current_time() - start
    assert batch == [1, 2, 3, 4]
    assert waited == pytest.approx(7)  # NB: virtual time: the last one at 6, then one quiet second


async def test_gather_gives_up_waiting_after_within_and_keeps_what_came(autojump_clock: trio.abc.Clock) -> None:
    send, recv = trio.open_memory_channel[int](10)
    batch = [1]
    await send.send(2)
    start = trio.current_time()
    await gather(recv, batch, 10, expect=5, within=3)
    assert batch == [1, 2]
    assert trio.current_time() - start == pytest.approx(3)


async def test_gather_also_takes_what_is_queued_beyond_the_expected_up_to_the_limit() -> None:
    send, recv = trio.open_memory_channel[int](10)
    for n in range(2, 8):
        send.send_nowait(n)
    batch = [1]
    with trio.fail_after(TIMEOUT):
        await gather(recv, batch, 5, expect=2, within=600)
    assert batch == [1, 2, 3, 4, 5]
    assert recv.receive_nowait() == 6


async def test_gather_stops_at_a_closed_mailbox() -> None:
    send, recv = trio.open_memory_channel[int](10)
    send.send_nowait(2)
    send.close()
    batch = [1]
    with trio.fail_after(TIMEOUT):
        await gather(recv, batch, 10, expect=5, within=600)
    assert batch == [1, 2]


def test_paces_say_a_sender_never_seen_may_come_any_time() -> None:
    assert Paces().until(["a"], cap=0.25) == math.inf
    assert Paces().until([], cap=0.25) == -math.inf


def test_paces_wait_for_a_sender_of_unknown_pace_a_cap_past_its_last_message() -> None:
    paces = Paces(share=1.5)
    paces.note([("a", 10.0)], keep={"a"})
    assert paces.until(["a"], cap=0.25) == pytest.approx(10.25)


def test_paces_wait_for_a_sender_its_share_of_its_pace_and_no_more_than_the_cap() -> None:
    paces = Paces(share=1.5)
    paces.note([("fast", 10.0), ("slow", 10.0)], keep={"fast", "slow"})
    paces.note([("fast", 10.1), ("slow", 12.0)], keep={"fast", "slow"})  # paces 0.1 s and 2 s
    assert paces.until(["fast"], cap=0.25) == pytest.approx(10.1 + 0.15)
    assert paces.until(["slow"], cap=0.25) == pytest.approx(12.0 + 0.25)
    assert paces.until(["fast", "slow"], cap=0.25) == pytest.approx(12.25)  # NB: the latest of them


def test_paces_count_a_senders_first_message_of_a_batch_and_forget_who_is_not_kept() -> None:
    paces = Paces(share=1.0)
    paces.note([("a", 1.0), ("b", 1.0)], keep={"a", "b"})
    paces.note([("a", 3.0), ("a", 2.0)], keep={"a"})  # NB: a's first of the batch came at 2: pace 1
    assert paces.until(["a"], cap=10) == pytest.approx(3.0)
    assert paces.until(["b"], cap=10) == math.inf  # forgotten: as if never seen


async def test_gather_past_due_waits_only_while_messages_keep_coming(autojump_clock: trio.abc.Clock) -> None:
    send, recv = trio.open_memory_channel[int](10)
    batch = [1]
    start = trio.current_time()

    async def sender() -> None:
        for n, at in ((2, 1.0), (3, 1.8), (4, 2.6), (5, 4.0)):  # NB: 4 comes past due, within a second of 3; 5 not
            await trio.sleep_until(start + at)
            await send.send(n)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        await gather(recv, batch, 10, expect=10, within=600, quiet=1, due=lambda _: start + 2)
        waited = trio.current_time() - start
    assert batch == [1, 2, 3, 4]
    assert waited == pytest.approx(3.6)
