"""What a ``CNI_NETNS`` must be (``actors.node.netns_file``), checked without a namespace of our own: a FIFO,
a directory, a device, a socket, a plain file and a namespace of another kind are refused with CNI 4 naming the
path and what it is, a missing path is CNI 3, and nothing that could block is ever opened.  The NodeActor
answers a FIFO at once and keeps serving.  (A namespace made by ``ip netns add`` is in ``tests/netns``.)"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from actors.node import netns_file
from actors.node.actor import NodeHandle, open_node
from spider.coordinator.errors import NamespaceGone
from spider.errors import InvalidEnvironment


@pytest.fixture
def fifo(tmp_path: Path) -> str:
    path = tmp_path / "netns-fifo"
    os.mkfifo(path)
    return str(path)


@pytest.fixture
async def node() -> AsyncIterator[NodeHandle]:
    handle, actor = open_node(None)  # the test's own namespace, which it only reads
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        yield handle
        nursery.cancel_scope.cancel(reason="test over")


def refusal(path: str) -> InvalidEnvironment:
    with pytest.raises(InvalidEnvironment) as caught:
        netns_file.check_netns(path)
    assert caught.value.cni_code == 4
    assert repr(path) in str(caught.value)
    assert str(caught.value).startswith("environment variable CNI_NETNS ")
    return caught.value


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every path ``os.open`` is asked for during the test."""
    seen: list[str] = []
    real = os.open

    def recording(path: str, flags: int, *args: int, **kwargs: int) -> int:
        seen.append(os.fspath(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", recording)
    return seen


def test_a_fifo_is_refused_without_being_opened(fifo: str, opened: list[str]) -> None:
    errors: list[BaseException] = []

    def check() -> None:
        try:
            netns_file.check_netns(fifo)
        except BaseException as exc:
            errors.append(exc)

    # In a thread: a blocking open would hang here, so the test bounds it and then frees the reader.
    thread = threading.Thread(target=check, daemon=True)
    thread.start()
    thread.join(10)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("checking a FIFO blocked")
    assert fifo not in opened
    assert isinstance(errors[0], InvalidEnvironment)
    assert errors[0].cni_code == 4
    assert str(errors[0]) == f"environment variable CNI_NETNS {fifo!r} is a FIFO (named pipe), not a network namespace"


def test_a_directory_is_refused(tmp_path: Path, opened: list[str]) -> None:
    assert "is a directory" in str(refusal(str(tmp_path)))
    assert opened == []


def test_a_character_device_is_refused_without_being_opened(opened: list[str]) -> None:
    assert "is a character device" in str(refusal("/dev/null"))
    assert opened == []


def test_a_unix_socket_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(path)
        assert "is a socket" in str(refusal(path))


def test_a_regular_file_that_is_no_namespace_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plain"
    path.write_text("net:[4026531840]\n")
    assert "is a regular file, not a network namespace" in str(refusal(str(path)))


@pytest.mark.parametrize(("kind", "name"), [("mnt", "a mount namespace"), ("uts", "a UTS namespace")])
def test_a_namespace_of_another_kind_is_refused_naming_its_kind(kind: str, name: str) -> None:
    assert f"is {name}, not a network namespace" in str(refusal(f"/proc/self/ns/{kind}"))


def test_a_symlink_to_a_fifo_is_judged_by_what_it_points_at(fifo: str, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(fifo)
    assert "is a FIFO" in str(refusal(str(link)))


def test_a_missing_path_is_a_namespace_that_is_gone(tmp_path: Path) -> None:
    with pytest.raises(NamespaceGone) as caught:
        netns_file.check_netns(str(tmp_path / "gone"))
    assert caught.value.cni_code == 3


def test_a_path_through_a_file_is_refused_naming_the_error(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("")
    assert "cannot be examined: Not a directory" in str(refusal(str(tmp_path / "plain" / "net")))


def test_the_own_network_namespace_opens_close_on_exec() -> None:
    fd = netns_file.open_netns("/proc/self/ns/net")
    try:
        assert not os.get_inheritable(fd)
        assert os.readlink(f"/proc/self/fd/{fd}").startswith("net:[")
    finally:
        os.close(fd)


def test_file_kinds_never_a_namespace_are_named() -> None:
    assert netns_file.file_kind(os.stat("/dev/null").st_mode) == "a character device"
    assert netns_file.file_kind(os.stat("/proc/self/ns/net").st_mode) is None


async def test_the_node_actor_answers_a_fifo_at_once_and_keeps_serving(node: NodeHandle, fifo: str) -> None:
    with trio.fail_after(10):
        for _ in range(3):  # a blocked open would have wedged the worker on the first
            with pytest.raises(InvalidEnvironment, match="is a FIFO") as caught:
                await node.inspect_pod(fifo, "eth0")
            assert caught.value.cni_code == 4
        with pytest.raises(InvalidEnvironment, match="is a mount namespace"):
            await node.open_probe("/proc/self/ns/mnt", "lo", 0x0806)
        host = await node.inspect_host()
    assert host.link("lo") is not None


def test_a_path_holding_a_nul_is_an_environment_error_not_a_crash() -> None:
    # NB: os.stat raises ValueError on it, which once escaped the NodeActor and stopped the agent
    with pytest.raises(InvalidEnvironment, match="CNI_NETNS") as caught:
        netns_file.check_netns("/var/run/netns/a\x00b")
    assert caught.value.cni_code == 4
