"""``Supervisor``: restarts transient failures with backoff, reports started once, lets bugs crash, stops one."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from actors.runtime.supervisor import FIBONACCI, Supervisor
from spider.errors import StaleWrite, StoreUnavailable

TIMEOUT = 60  # virtual seconds under autojump_clock; real ones otherwise


@attrs.define
class Flaky:
    """A child that fails ``failures`` times with a transient error, then serves forever.

    ``when`` says whether each run fails before or after reporting started (with ``"ready-<run>"``).
    ``runs`` collects the ``trio.current_time()`` of every run; ``serving`` is set by the first run that
    does not fail.
    """

    failures: int
    when: str = "before"
    runs: list[float] = attrs.field(factory=list)
    serving: trio.Event = attrs.field(factory=trio.Event)

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        self.runs.append(trio.current_time())
        if self.when == "after":
            task_status.started(f"ready-{len(self.runs)}")
        if len(self.runs) <= self.failures:
            raise StoreUnavailable(reason=f"run {len(self.runs)}")
        if self.when == "before":
            task_status.started(f"ready-{len(self.runs)}")
        self.serving.set()
        await trio.sleep_forever()


def gaps(times: list[float]) -> list[float]:
    return [round(b - a, 6) for a, b in itertools.pairwise(times)]


async def test_transient_failures_restart_after_the_backoff_delays(
    autojump_clock: trio.testing.MockClock,
) -> None:
    child = Flaky(4, when="after")
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            supervisor = Supervisor(nursery)
            await supervisor.start("child", child.run)
            await child.serving.wait()
            nursery.cancel_scope.cancel(reason="test over")
    assert gaps(child.runs) == list(FIBONACCI[:4])  # 0.1, 0.1, 0.2, 0.3
    assert supervisor.restarts == {"child": 4}


async def test_the_last_delay_repeats_once_the_delays_are_used_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    child = Flaky(4, when="after")
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await Supervisor(nursery).start("child", child.run, delays=(1.0, 5.0))
            await child.serving.wait()
            nursery.cancel_scope.cancel(reason="test over")
    assert gaps(child.runs) == [1.0, 5.0, 5.0, 5.0]


async def test_start_waits_through_failures_before_the_first_started(
    autojump_clock: trio.testing.MockClock,
) -> None:
    child = Flaky(2, when="before")
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            t0 = trio.current_time()
            value = await Supervisor(nursery).start("child", child.run)
            assert trio.current_time() - t0 == pytest.approx(0.2)  # two backoffs of 0.1
            nursery.cancel_scope.cancel(reason="test over")
    assert value == "ready-3"  # the run that actually started
    assert len(child.runs) == 3


async def test_started_is_reported_once_even_when_restarts_report_it_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    child = Flaky(3, when="after")  # every run calls started(); only the first may reach the starter
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            value = await Supervisor(nursery).start("child", child.run)
            await child.serving.wait()
            nursery.cancel_scope.cancel(reason="test over")
    assert value == "ready-1"
    assert len(child.runs) == 4


async def test_a_child_that_returns_is_not_restarted(autojump_clock: trio.testing.MockClock) -> None:
    runs: list[float] = []

    async def run(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        runs.append(trio.current_time())
        task_status.started()

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            supervisor = Supervisor(nursery)
            await supervisor.start("child", run)
            await trio.sleep(10)
    assert len(runs) == 1
    assert not supervisor.running("child")


async def test_a_bug_is_not_retried_and_propagates(autojump_clock: trio.testing.MockClock) -> None:
    runs: list[float] = []

    async def run(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        runs.append(trio.current_time())
        task_status.started()
        await trio.sleep(1)
        raise KeyError("a bug")

    sibling_cancelled = False

    async def sibling() -> None:
        nonlocal sibling_cancelled
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            sibling_cancelled = True
            raise

    with trio.fail_after(TIMEOUT), pytest.RaisesGroup(KeyError):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sibling)
            await Supervisor(nursery).start("child", run)
    assert len(runs) == 1
    assert sibling_cancelled  # one-cancels-all


async def test_a_bug_before_started_raises_from_start_and_is_not_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    runs = 0

    async def run(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal runs
        runs += 1
        raise AssertionError("broken before serving")

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            supervisor = Supervisor(nursery)
            with pytest.raises(AssertionError, match="broken before serving"):
                await supervisor.start("child", run)
            await trio.sleep(10)
            assert not supervisor.running("child")
    assert runs == 1


async def test_stop_cancels_one_child_with_its_reason(autojump_clock: trio.testing.MockClock) -> None:
    reasons: dict[str, str] = {}

    def child(name: str) -> Callable[..., Any]:
        async def run(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            task_status.started()
            try:
                await trio.sleep_forever()
            except trio.Cancelled as exc:
                reasons[name] = str(exc)
                raise

        return run

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            supervisor = Supervisor(nursery)
            await supervisor.start("pool/a", child("a"))
            await supervisor.start("pool/b", child("b"))
            supervisor.stop("pool/a", "pool deleted")
            await trio.testing.wait_all_tasks_blocked()
            assert not supervisor.running("pool/a")
            assert supervisor.running("pool/b")
            assert "b" not in reasons
            nursery.cancel_scope.cancel(reason="test over")
    assert "pool deleted" in reasons["a"]


async def test_stop_of_an_unknown_child_is_a_no_op(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            Supervisor(nursery).stop("pool/nobody", "pool deleted")


async def test_a_stopped_child_is_not_restarted_while_backing_off(
    autojump_clock: trio.testing.MockClock,
) -> None:
    child = Flaky(100, when="after")
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            supervisor = Supervisor(nursery)
            await supervisor.start("child", child.run, delays=(5.0,))
            await trio.sleep(1)  # the child failed and sleeps in its backoff
            supervisor.stop("child", "pool deleted")
            await trio.sleep(30)
    assert len(child.runs) == 1


async def test_restart_survives_a_stale_write_too(autojump_clock: trio.testing.MockClock) -> None:
    runs: list[float] = []

    async def run(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        runs.append(trio.current_time())
        task_status.started()
        if len(runs) == 1:
            raise StaleWrite(kind="SpiderIPPool", name="p", sent_version="1")
        await trio.sleep_forever()

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await Supervisor(nursery).start("child", run)
            await trio.sleep(1)
            nursery.cancel_scope.cancel(reason="test over")
    assert gaps(runs) == [0.1]


async def test_the_backoff_starts_over_after_a_run_that_lasted_longer_than_all_the_delays(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # NB: a burst of failures at start-up once left every later, isolated failure waiting the longest delay
    runs: list[float] = []
    serving = trio.Event()

    async def run(*, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        runs.append(trio.current_time())
        task_status.started()
        if len(runs) > len(FIBONACCI) + 1:
            serving.set()
            await trio.sleep_forever()
        await trio.sleep(3600.0 if len(runs) == len(FIBONACCI) + 1 else 0.0)  # a burst, then an hour serving
        raise StoreUnavailable(reason=f"run {len(runs)}")

    with trio.fail_after(2 * 3600):
        async with trio.open_nursery() as nursery:
            await Supervisor(nursery).start("pool/p", run)
            await serving.wait()
            nursery.cancel_scope.cancel()
    assert runs[-1] - (runs[-2] + 3600.0) == pytest.approx(FIBONACCI[0])
