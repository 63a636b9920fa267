"""The NodeActor and its netlink thread, without privileges: one thread, in order, errors back to the caller,
a transaction that outlives a cancelled caller, and a clean start and stop."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator

import pytest
import trio
import trio.lowlevel

from actors.node.actor import NodeHandle, open_node
from actors.node.netlink import NetlinkWorker, Session
from spider.coordinator.errors import NamespaceGone
from spider.errors import ActorUnavailable, InvalidEnvironment


@pytest.fixture
async def worker() -> AsyncIterator[NetlinkWorker]:
    made = NetlinkWorker()
    await made.start()
    try:
        yield made
    finally:
        made.stop()


@pytest.fixture
async def node() -> AsyncIterator[NodeHandle]:
    handle, actor = open_node(None)  # the test's own namespace, which it only reads
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        yield handle
        nursery.cancel_scope.cancel(reason="test over")


async def test_concurrent_transactions_all_run_in_the_one_netlink_thread_one_at_a_time(worker: NetlinkWorker) -> None:
    seen: list[int] = []
    inside = 0
    overlaps = 0

    def record(session: Session, n: int) -> int:
        nonlocal inside, overlaps
        inside += 1
        overlaps += inside > 1
        threading.Event().wait(0.002)
        seen.append(threading.get_ident())
        inside -= 1
        return n * 2

    results: dict[int, int] = {}

    async def one(n: int) -> None:
        results[n] = await worker.call(record, n)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(one, n)
    assert results == {n: n * 2 for n in range(20)}
    assert len(set(seen)) == 1
    assert seen[0] != threading.get_ident()
    assert overlaps == 0


async def test_an_error_in_a_transaction_is_raised_in_the_caller(worker: NetlinkWorker) -> None:
    def broken(session: Session) -> None:
        raise ZeroDivisionError("bug")

    with trio.fail_after(5), pytest.raises(ZeroDivisionError):
        await worker.call(broken)
    with trio.fail_after(5):
        assert await worker.call(lambda session: "still serving") == "still serving"


async def test_a_cancelled_caller_does_not_cut_a_transaction_short(worker: NetlinkWorker) -> None:
    finished = threading.Event()

    def slow(session: Session) -> None:
        threading.Event().wait(0.2)
        finished.set()

    with trio.move_on_after(0.05) as scope:
        await worker.call(slow)
    assert scope.cancelled_caught
    with trio.fail_after(5):
        await worker.call(lambda session: None)  # queued behind it: it ran to the end first
    assert finished.is_set()


async def test_the_node_actor_answers_a_missing_namespace_and_keeps_serving(node: NodeHandle) -> None:
    with trio.fail_after(5):
        with pytest.raises(NamespaceGone) as caught:
            await node.inspect_pod("/var/run/netns/sp-no-such-pod", "eth0")
        assert caught.value.cni_code == 3
        with pytest.raises(InvalidEnvironment, match="CNI_NETNS"):
            await node.inspect_pod("/proc/self/status", "eth0")  # a file that is no namespace
        host = await node.inspect_host()
    assert host.link("lo") is not None


async def test_a_handle_whose_actor_has_stopped_gets_actor_unavailable() -> None:
    handle, actor = open_node(None)
    await actor.mailbox.aclose()
    with trio.fail_after(5), pytest.raises(ActorUnavailable):
        await handle.inspect_host()


async def test_a_host_namespace_that_does_not_exist_stops_the_node_actor_from_starting() -> None:
    _, actor = open_node("sp-no-such-host")
    with trio.fail_after(5), pytest.raises(FileNotFoundError, match="sp-no-such-host"):
        await actor.run()
