"""The controllers' work queue: each key waits once, a key being worked on can come back, and a key that keeps
failing comes back after growing delays until it succeeds."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from actors.controller.workqueue import WorkQueue, backoff


@pytest.mark.parametrize(("failures", "delay"), [(0, 1.0), (1, 1.0), (2, 2.0), (3, 5.0), (9, 5.0)])
def test_the_delay_grows_with_the_failures_and_stays_at_the_last(failures: int, delay: float) -> None:
    assert backoff((1.0, 2.0, 5.0), failures) == delay


async def test_a_key_waits_once_however_often_it_is_added_and_may_come_back_once_taken() -> None:
    queue = WorkQueue[str].open()
    for key in ("a", "b", "a", "a"):
        queue.add(key)
    assert len(queue) == 2
    assert await queue.get() == "a"
    queue.add("a")  # NB: changed while being worked on: it must be worked on again
    assert [await queue.get(), await queue.get()] == ["b", "a"]
    assert not queue


async def test_a_failing_key_comes_back_later_each_time_until_it_succeeds(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    mock_clock.autojump_threshold = 0  # NB: time jumps to the next deadline whenever every task waits
    queue = WorkQueue[str].open((1.0, 2.0, 5.0))
    arrivals: list[float] = []

    for _ in range(3):
        queue.failed(nursery, "k")
        assert await queue.get() == "k"
        arrivals.append(trio.current_time())
    queue.succeeded("k")
    queue.failed(nursery, "k")
    assert await queue.get() == "k"
    arrivals.append(trio.current_time())
    assert [round(b - a, 3) for a, b in zip([0.0, *arrivals], arrivals, strict=False)] == [1.0, 2.0, 5.0, 1.0]
