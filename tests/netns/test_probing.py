"""Conflict and gateway detection, and announcements, against real kernels: a pod namespace and a neighbour
namespace joined by a veth pair; the NodeActor (its host played by a third namespace) opens the probes."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator

import attrs
import pytest
import trio

from actors.node import probing
from actors.node.actor import NodeHandle, open_node
from spider.coordinator.config import DetectOptions
from spider.coordinator.errors import AddressConflict, GatewayUnreachable, NamespaceGone
from spider.coordinator.request import PrevIP
from tests.netns.coordinator_topology import in_ns, ip, why_not
from tests.netns.reachability import needs_ping

WHY_NOT = why_not()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")]


@attrs.frozen
class Pair:
    """``pod`` (eth0) and ``peer`` (peer0) on one wire; ``host`` plays the NodeActor's host."""

    pod: str
    peer: str
    host: str

    @property
    def pod_path(self) -> str:
        return f"/var/run/netns/{self.pod}"

    def mac(self, netns: str, link: str) -> str:
        return str(json.loads(ip("-j", "link", "show", link, netns=netns))[0]["address"])


@pytest.fixture
def pair() -> Iterator[Pair]:
    tag = uuid.uuid4().hex[:6]
    made = Pair(f"sppa-{tag}", f"sppb-{tag}", f"spph-{tag}")
    try:
        for ns in (made.pod, made.peer, made.host):
            ip("netns", "add", ns)
        ip("link", "add", "eth0", "type", "veth", "peer", "name", "peer0", "netns", made.peer, netns=made.pod)
        ip("link", "set", "eth0", "up", netns=made.pod)
        ip("link", "set", "peer0", "up", netns=made.peer)
        ip("addr", "add", "10.9.0.5/24", "dev", "peer0", netns=made.peer)
        ip("addr", "add", "fd09::5/64", "dev", "peer0", "nodad", netns=made.peer)
        yield made
    finally:
        for ns in (made.pod, made.peer, made.host):
            ip("netns", "del", ns, check=False)


@pytest.fixture
async def node(pair: Pair) -> AsyncIterator[NodeHandle]:
    handle, actor = open_node(pair.host)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        yield handle
        nursery.cancel_scope.cancel(reason="test over")


async def test_an_ipv4_address_another_host_answers_for_is_a_conflict(pair: Pair, node: NodeHandle) -> None:
    with trio.fail_after(5), pytest.raises(AddressConflict) as caught:
        await probing.detect(node, pair.pod_path, "eth0", [PrevIP(address="10.9.0.5/24")], conflict=True, gateway=False)
    assert caught.value.mac == pair.mac(pair.peer, "peer0")
    assert caught.value.cni_code == 105
    assert "10.9.0.5 is already in use by" in str(caught.value)


async def test_an_ipv6_address_another_host_defends_is_a_conflict(pair: Pair, node: NodeHandle) -> None:
    with trio.fail_after(5), pytest.raises(AddressConflict) as caught:
        await probing.detect(node, pair.pod_path, "eth0", [PrevIP(address="fd09::5/64")], conflict=True, gateway=False)
    assert caught.value.mac == pair.mac(pair.peer, "peer0")


async def test_free_addresses_pass_after_every_probe_window(pair: Pair, node: NodeHandle) -> None:
    ips = [PrevIP(address="10.9.0.6/24"), PrevIP(address="fd09::6/64")]
    start = trio.current_time()
    with trio.fail_after(5):
        await probing.detect(node, pair.pod_path, "eth0", ips, conflict=True, gateway=False)
    # three 100 ms windows per family, the families in parallel (Spiderpool's timings)
    assert 0.3 <= trio.current_time() - start < 1.0


async def test_a_gateway_that_answers_is_reachable_on_both_families(pair: Pair, node: NodeHandle) -> None:
    ips = [PrevIP(address="10.9.0.6/24", gateway="10.9.0.5"), PrevIP(address="fd09::6/64", gateway="fd09::5")]
    with trio.fail_after(5):
        await probing.detect(node, pair.pod_path, "eth0", ips, conflict=False, gateway=True)


@pytest.mark.parametrize(("address", "gateway"), [("10.9.0.6/24", "10.9.0.1"), ("fd09::6/64", "fd09::1")])
async def test_a_silent_gateway_is_unreachable_after_the_probe_windows(
    pair: Pair, node: NodeHandle, address: str, gateway: str
) -> None:
    options = DetectOptions(retries=2, timeout=0.05)
    start = trio.current_time()
    with trio.fail_after(5), pytest.raises(GatewayUnreachable, match=f"gateway {gateway} is unreachable"):
        await probing.detect(
            node,
            pair.pod_path,
            "eth0",
            [PrevIP(address=address, gateway=gateway)],
            conflict=False,
            gateway=True,
            options=options,
        )
    assert trio.current_time() - start >= 0.1


@needs_ping
async def test_an_unsolicited_advertisement_updates_a_neighbours_cache(pair: Pair, node: NodeHandle) -> None:
    ip("addr", "add", "fd09::6/64", "dev", "eth0", "nodad", netns=pair.pod)
    assert in_ns(pair.peer, "ping", "-6", "-c", "1", "-W", "2", "fd09::6").returncode == 0
    ip("link", "set", "eth0", "address", "0a:1b:00:00:00:06", netns=pair.pod)  # the kernel says nothing
    with trio.fail_after(5):
        assert await probing.announce(node, pair.pod_path, "eth0", ["fd09::6"]) == 1
    neigh = json.loads(ip("-j", "-6", "neigh", "show", "fd09::6", netns=pair.peer) or "[]")
    assert [n.get("lladdr") for n in neigh] == ["0a:1b:00:00:00:06"]


async def test_the_node_actor_answers_a_gone_namespace_with_an_error_and_keeps_serving(
    pair: Pair, node: NodeHandle
) -> None:
    with trio.fail_after(5):
        with pytest.raises(NamespaceGone) as caught:
            await node.inspect_pod("/var/run/netns/sp-no-such-pod", "eth0")
        assert caught.value.cni_code == 3
        view = await node.inspect_pod(pair.pod_path, "eth0")
    assert view.link("eth0") is not None
    assert view.link("lo") is not None


async def test_the_node_actor_sees_its_host_namespace_not_the_agents(pair: Pair, node: NodeHandle) -> None:
    ip("link", "add", "marker0", "type", "veth", "peer", "name", "marker1", netns=pair.host)
    with trio.fail_after(5):
        host = await node.inspect_host()
    assert {link.name for link in host.links} == {"lo", "marker0", "marker1"}


class GoneNode:
    """A node whose pod namespace went away after the coordinator looked at it."""

    async def open_probe(self, netns: str, ifname: str, ethertype: int) -> object:
        raise NamespaceGone(netns=netns)


async def test_a_namespace_gone_during_detection_is_its_own_error_not_a_group() -> None:
    # NB: only three errors were collected: any other (the namespace gone, a netlink timeout) left the nursery
    # as an ExceptionGroup, which the API answered 500 and the plugin reported as "agent unreachable"
    ips = [PrevIP(address="10.77.0.50/24", gateway="10.77.0.1"), PrevIP(address="fd77::50/64", gateway="fd77::1")]
    with pytest.raises(NamespaceGone) as caught:
        await probing.detect(GoneNode(), "/var/run/netns/gone", "net1", ips, conflict=True, gateway=True)  # type: ignore[arg-type]
    assert caught.value.cni_code == 3
