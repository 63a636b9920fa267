"""Real interfaces: Debian's ``macvlan`` plugin calls our ``spiderpool`` IPAM, exactly as a container runtime
would, in network namespaces made by the test (a "host" with a veth as the macvlan parent, and pods)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import trio

from tests.netns.reachability import needs_ping
from tests.support import PLUGIN_DIR, RunningAgent, pod_args, pool_object, run_plugin, running_agent


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (CAP_NET_ADMIN) to make network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2 ('ip')"
    if not (PLUGIN_DIR / "macvlan").exists():
        return "needs Debian's containernetworking-plugins (/usr/lib/cni/macvlan)"
    probe = f"spprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, check=False)
    if made.returncode != 0:
        return f"cannot make network namespaces here: {made.stderr.decode().strip()}"
    subprocess.run(["ip", "netns", "del", probe], check=False)
    return None


WHY_NOT = _why_not()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")]


def ip(*args: str, netns: str | None = None) -> str:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    return subprocess.run(argv, capture_output=True, check=True, text=True).stdout


class Topology:
    """A host namespace with a veth pair (``up0`` is the macvlan parent) and pod namespaces."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.host = f"sphost-{tag}"
        self.pods: list[str] = []
        self._tag = tag
        ip("netns", "add", self.host)
        ip("link", "add", "up0", "type", "veth", "peer", "name", "up0-peer", netns=self.host)
        ip("link", "set", "up0", "up", netns=self.host)
        ip("link", "set", "up0-peer", "up", netns=self.host)

    def pod(self) -> str:
        name = f"sppod-{self._tag}-{len(self.pods)}"
        ip("netns", "add", name)
        self.pods.append(name)
        return name

    def close(self) -> None:
        for ns in [*self.pods, self.host]:
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


@pytest.fixture
def topology() -> Iterator[Topology]:
    topo = Topology()
    try:
        yield topo
    finally:
        topo.close()


@pytest.fixture
async def agent() -> AsyncIterator[RunningAgent]:
    async with running_agent() as running:
        yield running


def macvlan_conf(agent: RunningAgent, version: str = "1.0.0", **ipam: Any) -> dict[str, Any]:
    return {
        "cniVersion": version,
        "name": "underlay",
        "type": "macvlan",
        "master": "up0",
        "mode": "bridge",
        "ipam": {"type": "spiderpool", "ipam_unix_socket_path": str(agent.socket), **ipam},
    }


async def macvlan(
    topology: Topology, agent: RunningAgent, command: str, pod_ns: str, n: int, conf: dict[str, Any]
) -> tuple[int, Any]:
    """Run Debian's macvlan in the host namespace (where its parent lives), as a runtime would."""
    wrapper = agent.dir / f"macvlan-in-{topology.host}"
    if not wrapper.exists():
        wrapper.write_text(f"#!/bin/sh\nexec ip netns exec {topology.host} {PLUGIN_DIR}/macvlan\n")
        wrapper.chmod(0o755)
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": f"ctr-{pod_ns}",
        "CNI_NETNS": f"/var/run/netns/{pod_ns}",
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": pod_args(f"pod-{n}", f"uid-{pod_ns}"),
        "CNI_PATH": f"{agent.shim.parent}:{PLUGIN_DIR}",
    }
    return await run_plugin(wrapper, env, conf)


def addresses(netns: str) -> list[str]:
    data = json.loads(ip("-j", "addr", "show", "dev", "eth0", netns=netns))
    return sorted(f"{a['local']}/{a['prefixlen']}" for a in data[0]["addr_info"] if a.get("scope") == "global")


def default_routes(netns: str, family: str = "-4") -> list[str]:
    return [r.get("gateway", "") for r in json.loads(ip(family, "-j", "route", "show", "default", netns=netns))]


async def test_macvlan_pod_gets_the_address_and_gateway_and_del_returns_it(
    topology: Topology, agent: RunningAgent
) -> None:
    await agent.apply(
        pool_object("under-v4", "10.77.0.0/24", ["10.77.0.20-10.77.0.29"], gateway="10.77.0.1", default=True)
    )
    pod = topology.pod()
    with trio.fail_after(30):
        code, result = await macvlan(topology, agent, "ADD", pod, 0, macvlan_conf(agent))
    assert code == 0, result
    assert result["ips"][0]["address"] == "10.77.0.20/24"
    assert result["interfaces"][0]["sandbox"] == f"/var/run/netns/{pod}"
    assert addresses(pod) == ["10.77.0.20/24"]
    assert default_routes(pod) == ["10.77.0.1"]
    assert (await agent.pool_status("under-v4"))["allocatedIPCount"] == 1
    with trio.fail_after(30):
        code, _ = await macvlan(topology, agent, "DEL", pod, 0, macvlan_conf(agent))
    assert code == 0
    assert "eth0" not in ip("link", netns=pod)
    assert (await agent.pool_status("under-v4"))["allocatedIPCount"] == 0


@needs_ping
async def test_two_macvlan_pods_reach_each_other(topology: Topology, agent: RunningAgent) -> None:
    await agent.apply(
        pool_object("under-v4", "10.77.0.0/24", ["10.77.0.20-10.77.0.29"], gateway="10.77.0.1", default=True)
    )
    pods = [topology.pod(), topology.pod()]
    with trio.fail_after(30):
        for n, pod in enumerate(pods):
            assert (await macvlan(topology, agent, "ADD", pod, n, macvlan_conf(agent)))[0] == 0
    ping = subprocess.run(  # noqa: ASYNC221  (a test's one-off ping; nothing else runs meanwhile)
        ["ip", "netns", "exec", pods[0], "ping", "-c", "1", "-W", "2", "10.77.0.21"],
        capture_output=True,
        check=False,
    )
    assert ping.returncode == 0, ping.stdout.decode()


async def test_dual_stack_pool_pair_gives_both_families_and_del_returns_both(
    topology: Topology, agent: RunningAgent
) -> None:
    await agent.apply(
        pool_object("under-v4", "10.77.0.0/24", ["10.77.0.20-10.77.0.29"], gateway="10.77.0.1"),
        pool_object("under-v6", "fd77::/64", ["fd77::20-fd77::29"], gateway="fd77::1"),
    )
    pod = topology.pod()
    conf = macvlan_conf(agent, default_ipv4_ippool=["under-v4"], default_ipv6_ippool=["under-v6"])
    with trio.fail_after(30):
        code, result = await macvlan(topology, agent, "ADD", pod, 0, conf)
    assert code == 0, result
    assert sorted(i["address"] for i in result["ips"]) == ["10.77.0.20/24", "fd77::20/64"]
    assert addresses(pod) == ["10.77.0.20/24", "fd77::20/64"]
    assert default_routes(pod, "-4") == ["10.77.0.1"]
    assert default_routes(pod, "-6") == ["fd77::1"]
    with trio.fail_after(30):
        assert (await macvlan(topology, agent, "DEL", pod, 0, conf))[0] == 0
    assert (await agent.pool_status("under-v4"))["allocatedIPCount"] == 0
    assert (await agent.pool_status("under-v6"))["allocatedIPCount"] == 0


async def test_after_an_exhausted_add_the_runtimes_del_cleans_up_and_frees_nothing_else(
    topology: Topology, agent: RunningAgent
) -> None:
    await agent.apply(pool_object("tiny", "10.78.0.0/24", ["10.78.0.5"], default=True))
    first, second = topology.pod(), topology.pod()
    with trio.fail_after(30):
        assert (await macvlan(topology, agent, "ADD", first, 0, macvlan_conf(agent)))[0] == 0
        code, error = await macvlan(topology, agent, "ADD", second, 1, macvlan_conf(agent))
    assert code != 0
    assert error["code"] == 100
    with trio.fail_after(30):  # a runtime always follows a failed ADD with a DEL
        assert (await macvlan(topology, agent, "DEL", second, 1, macvlan_conf(agent)))[0] == 0
    assert "eth0" not in ip("link", netns=second)
    assert addresses(first) == ["10.78.0.5/24"]
    assert (await agent.pool_status("tiny"))["allocatedIPCount"] == 1
