"""Every netlink transaction is bounded: a call that hangs in the worker thread fails with CNI 11, the stuck
thread is left behind, and the next call is served by a fresh thread; the NodeActor answers the same way and
keeps serving.  The hung calls are injected: a transaction that waits on an event the test releases."""

from __future__ import annotations

import socket
import threading
from collections.abc import AsyncIterator, Iterator

import pytest
import trio
import trio.testing

from actors.node import netlink, netns_file
from actors.node.actor import NodeHandle, open_node
from actors.node.netlink import NetlinkTimeout, NetlinkWorker, Session
from spider.coordinator.observed import NsView

TIMEOUT = 0.3


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """What a hung transaction waits for; set at the end so no thread outlives the test."""
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture
async def worker() -> AsyncIterator[NetlinkWorker]:
    made = NetlinkWorker(timeout=TIMEOUT)
    await made.start()
    try:
        yield made
    finally:
        made.stop()


def thread_name(session: Session) -> str:
    return threading.current_thread().name


async def test_a_hung_transaction_times_out_and_the_next_call_gets_a_fresh_thread(
    worker: NetlinkWorker, release: threading.Event
) -> None:
    stuck: list[threading.Thread] = []

    def hang(session: Session) -> str:
        stuck.append(threading.current_thread())
        release.wait(30)
        return "too late"

    with trio.fail_after(10):
        with pytest.raises(NetlinkTimeout) as caught:
            await worker.call(hang)
        assert caught.value.cni_code == 11
        assert str(caught.value) == f"the netlink transaction 'hang' did not finish within {TIMEOUT:g} s; try again"
        fresh = await worker.call(thread_name)
    assert fresh != stuck[0].name
    assert worker.replacements == 1
    release.set()
    await trio.to_thread.run_sync(stuck[0].join, 10)
    assert not stuck[0].is_alive(), "a retired thread exits once its transaction returns"
    with trio.fail_after(10):
        assert await worker.call(thread_name) == fresh


async def test_callers_queued_behind_a_hung_transaction_are_served_in_order(
    worker: NetlinkWorker, release: threading.Event
) -> None:
    order: list[int] = []

    def hang(session: Session) -> None:
        release.wait(30)

    def record(session: Session, n: int) -> int:
        order.append(n)
        return n

    results: dict[int, object] = {}

    async def one(n: int) -> None:
        results[n] = await worker.call(record, n)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:

            async def hung() -> None:
                with pytest.raises(NetlinkTimeout):
                    await worker.call(hang)

            nursery.start_soon(hung)
            await trio.testing.wait_all_tasks_blocked()
            for n in range(5):
                nursery.start_soon(one, n)
                await trio.testing.wait_all_tasks_blocked()
    assert order == [0, 1, 2, 3, 4]
    assert results == {n: n for n in range(5)}


async def test_a_transaction_that_outlives_its_cancelled_caller_past_the_bound_is_left_behind(
    worker: NetlinkWorker, release: threading.Event
) -> None:
    def hang(session: Session) -> None:
        release.wait(30)

    first = await worker.call(thread_name)
    with trio.move_on_after(0.01):
        await worker.call(hang)
    with trio.fail_after(10):
        assert await worker.call(thread_name) != first
    assert worker.replacements == 1


async def test_a_packet_socket_that_comes_back_after_the_caller_gave_up_is_closed(
    worker: NetlinkWorker, release: threading.Event
) -> None:
    made: list[tuple[socket.socket, threading.Thread]] = []

    def late_socket(session: Session) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        made.append((sock, threading.current_thread()))
        release.wait(30)
        return sock

    with trio.fail_after(10), pytest.raises(NetlinkTimeout):
        await worker.call(late_socket)
    sock, thread = made[0]
    assert sock.fileno() != -1
    release.set()
    # the thread hands its result to trio before it exits, and trio runs what threads hand it in order
    await trio.to_thread.run_sync(thread.join, 10)
    assert sock.fileno() == -1


@pytest.fixture
async def node() -> AsyncIterator[NodeHandle]:
    handle, actor = open_node(None, netlink_timeout=TIMEOUT)  # the test's own namespace, which it only reads
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        yield handle
        nursery.cancel_scope.cancel(reason="test over")


async def test_the_node_actor_answers_a_hung_transaction_with_try_again_and_keeps_serving(
    node: NodeHandle, release: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = netlink.inspect_host

    def hung_inspect(session: Session, route_sources_for: tuple[str, ...] = ()) -> NsView:
        release.wait(30)
        return real(session, route_sources_for)

    monkeypatch.setattr(netlink, "inspect_host", hung_inspect)
    with trio.fail_after(10), pytest.raises(NetlinkTimeout) as caught:
        await node.inspect_host()
    assert caught.value.cni_code == 11
    monkeypatch.setattr(netlink, "inspect_host", real)
    with trio.fail_after(10):
        host = await node.inspect_host()
    assert host.link("lo") is not None


async def test_a_netns_check_that_hangs_is_try_again_and_never_reaches_the_worker(
    node: NodeHandle, release: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    def hung_check(path: str) -> None:
        release.wait(30)

    monkeypatch.setattr(netns_file, "check_netns", hung_check)
    with trio.fail_after(10), pytest.raises(NetlinkTimeout, match="examining CNI_NETNS '/var/run/netns/slow'"):
        await node.inspect_pod("/var/run/netns/slow", "eth0")
    with trio.fail_after(10):
        assert (await node.inspect_host()).link("lo") is not None
