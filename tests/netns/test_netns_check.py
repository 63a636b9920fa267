"""``CNI_NETNS`` against real namespaces: one made by ``ip netns add`` (a bind mount of an nsfs inode) and
``/proc/<pid>/ns/net`` of a process inside it are accepted; a FIFO is refused before the NodeActor's thread
sees it; and DEL with a FIFO still removes what ADD made on the host."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import attrs
import pytest
import trio

from actors.node import netns_file
from actors.node.actor import NodeHandle, open_node
from spider.coordinator.config import CoordinatorConf
from spider.coordinator.plan import TeardownSpec, host_veth_name
from spider.errors import InvalidEnvironment
from tests.netns.coordinator_topology import ip, why_not

WHY_NOT = why_not()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")]
CONTAINER = "0123456789abcdef"


@attrs.frozen
class Spaces:
    pod: str
    host: str

    @property
    def pod_path(self) -> str:
        return f"/var/run/netns/{self.pod}"


@pytest.fixture
def spaces() -> Iterator[Spaces]:
    tag = uuid.uuid4().hex[:6]
    made = Spaces(f"spnc-{tag}", f"spnh-{tag}")
    try:
        for ns in (made.pod, made.host):
            ip("netns", "add", ns)
        yield made
    finally:
        for ns in (made.pod, made.host):
            ip("netns", "del", ns, check=False)


@pytest.fixture
async def node(spaces: Spaces) -> AsyncIterator[NodeHandle]:
    handle, actor = open_node(spaces.host)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        yield handle
        nursery.cancel_scope.cancel(reason="test over")


@pytest.fixture
def fifo(tmp_path: Path) -> str:
    path = tmp_path / "netns"
    os.mkfifo(path)
    return str(path)


def test_a_namespace_made_by_ip_netns_add_is_a_network_namespace(spaces: Spaces) -> None:
    netns_file.check_netns(spaces.pod_path)


def test_the_namespace_of_a_process_inside_it_is_one_too(spaces: Spaces) -> None:
    inside = subprocess.Popen(
        ["ip", "netns", "exec", spaces.pod, "sh", "-c", "echo inside; exec sleep 30"], stdout=subprocess.PIPE
    )
    try:
        assert inside.stdout is not None
        assert inside.stdout.readline() == b"inside\n"  # it has entered the namespace
        path = f"/proc/{inside.pid}/ns/net"
        fd = netns_file.open_netns(path)
        try:
            assert os.fstat(fd).st_ino == os.stat(spaces.pod_path).st_ino
        finally:
            os.close(fd)
    finally:
        inside.kill()
        inside.communicate()


async def test_the_node_actor_enters_a_real_namespace_and_refuses_a_fifo(
    spaces: Spaces, node: NodeHandle, fifo: str
) -> None:
    with trio.fail_after(10):
        with pytest.raises(InvalidEnvironment, match="is a FIFO"):
            await node.inspect_pod(fifo, "lo")
        pod = await node.inspect_pod(spaces.pod_path, "lo", set_up=True)
    assert pod.link("lo") is not None
    assert pod.link("lo").up  # type: ignore[union-attr]


async def test_del_with_a_fifo_namespace_still_removes_the_host_veth(
    spaces: Spaces, node: NodeHandle, fifo: str
) -> None:
    veth = host_veth_name(CONTAINER)
    ip("link", "add", veth, "type", "veth", "peer", "name", "peer-of-veth", netns=spaces.host)
    spec = TeardownSpec(conf=CoordinatorConf.merge({}, None), container_id=CONTAINER, pod_ips=(), netns_exists=True)
    with trio.fail_after(10):
        plan = await node.teardown_pod(fifo, spec, (4,))
    assert plan.ops
    assert veth not in ip("link", netns=spaces.host)
