"""Route dumps of one table: the NodeActor's host socket has the kernel filter them (strict checking), and a
socket without strict checking (an older kernel) still gets the table's routes only, filtered in the agent."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from pyroute2 import IPRoute

from actors.node import netlink
from actors.node.netlink import NetlinkWorker, Session
from tests.netns.coordinator_topology import ip, why_not

WHY_NOT = why_not()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")]


@pytest.fixture
def host() -> Iterator[str]:
    """A namespace with 300 routes in main and two in table 500, through one veth."""
    name = f"sproutes-{uuid.uuid4().hex[:6]}"
    ip("netns", "add", name)
    try:
        ip("link", "add", "a0", "type", "veth", "peer", "name", "a1", netns=name)
        ip("link", "set", "a0", "up", netns=name)
        ip("addr", "add", "10.9.0.1/24", "dev", "a0", netns=name)
        for i in range(300):
            ip("route", "add", f"172.16.{i // 256}.{i % 256}/32", "via", "10.9.0.2", netns=name)
        for dst in ("10.77.0.20/32", "10.77.0.21/32"):
            ip("route", "add", dst, "dev", "a0", "table", "500", "scope", "link", netns=name)
        yield name
    finally:
        ip("netns", "del", name, check=False)


def dumps(session: Session) -> dict[str, Any]:
    """What the host socket's kernel sends for table 500, and what the agent keeps, strict or not."""
    kernel_sent = list(session.host.route("dump", family=socket.AF_INET, table=500, dump_filter=lambda _: True))
    loose = IPRoute()  # NB: no strict checking: the kernel sends every route
    try:
        loose_kept = netlink.route_messages(loose, socket.AF_INET, 500)
    finally:
        loose.close()
    return {
        "strict": session.host.status["strict_check"],
        "kernel_sent": len(kernel_sent),
        "kept": sorted(m.get_attr("RTA_DST") for m in netlink.route_messages(session.host, socket.AF_INET, 500)),
        "loose_kept": sorted(m.get_attr("RTA_DST") for m in loose_kept),
        "all": len(netlink.route_messages(session.host, socket.AF_INET)),
    }


async def test_a_tables_routes_are_filtered_by_the_kernel_and_by_the_agent_without_it(host: str) -> None:
    worker = NetlinkWorker(host)
    await worker.start()
    try:
        found = await worker.call(dumps)
    finally:
        worker.stop()
    assert found["strict"] is True
    assert found["kernel_sent"] == 2  # the kernel filtered: the other 300-odd routes never reached the agent
    assert found["kept"] == found["loose_kept"] == ["10.77.0.20", "10.77.0.21"]
    assert found["all"] > 300
