"""``FreshRead``: concurrent callers share reads, and none gets an answer read before it asked."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from actors.runtime.fresh import FreshRead


class Source:
    """A value that changes; each read takes a second (virtual) and returns what it was when it began."""

    def __init__(self) -> None:
        self.value = 0
        self.fail: Exception | None = None

    async def fetch(self) -> int:
        value = self.value
        await trio.sleep(1)
        if self.fail is not None:
            raise self.fail
        return value


def asker(reads: FreshRead[int], got: dict[str, int]) -> Callable[[str], Awaitable[None]]:
    """A caller that notes what its read answered under its name."""

    async def ask(who: str) -> None:
        got[who] = await reads.read()

    return ask


async def test_callers_asking_at_once_share_one_read(autojump_clock: trio.testing.MockClock) -> None:
    source = Source()
    reads = FreshRead(source.fetch)
    got: list[int] = []

    async def ask() -> None:
        got.append(await reads.read())

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(ask)
    assert (got, reads.reads) == ([0] * 10, 1)


async def test_a_caller_arriving_during_a_read_gets_the_next_one_which_latecomers_share(
    autojump_clock: trio.testing.MockClock,
) -> None:
    source, got = Source(), dict[str, int]()
    reads = FreshRead(source.fetch)
    ask = asker(reads, got)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask, "early")
        await trio.sleep(0.5)  # the first read is under way
        source.value = 1  # a change the early read may not see, but the late callers must
        for who in ("late-1", "late-2", "late-3"):
            nursery.start_soon(ask, who)
    assert got == {"early": 0, "late-1": 1, "late-2": 1, "late-3": 1}
    assert reads.reads == 2


async def test_a_failed_read_fails_every_caller_of_its_round_and_the_next_call_reads_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    source = Source()
    source.fail = ValueError("down")
    reads = FreshRead(source.fetch)
    failed = 0

    async def ask() -> None:
        nonlocal failed
        with pytest.raises(ValueError, match="down"):
            await reads.read()
        failed += 1

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(ask)
    source.fail = None
    assert (failed, await reads.read(), reads.reads) == (3, 0, 2)


@pytest.mark.parametrize("cancel_at", [0.5, 1.5], ids=["waiting-out-the-read-under-way", "while-reading"])
async def test_when_the_caller_reading_for_a_round_is_cancelled_the_others_of_the_round_read_again(
    autojump_clock: trio.testing.MockClock, cancel_at: float
) -> None:
    source, got = Source(), dict[str, int]()
    reads = FreshRead(source.fetch)
    ask = asker(reads, got)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask, "first")  # reads from 0 to 1
        await trio.sleep(0.1)
        with trio.move_on_after(cancel_at - 0.1):  # the next round's reader: it waits until 1, then reads until 2
            async with trio.open_nursery() as cancelled:
                cancelled.start_soon(ask, "reader")
                await trio.sleep(0.1)
                nursery.start_soon(ask, "other")  # of the same round as the reader
                await trio.sleep_forever()
    assert "reader" not in got
    assert got == {"first": 0, "other": 0}
    assert reads.reads == (2 if cancel_at < 1 else 3)
