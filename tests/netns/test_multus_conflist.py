"""A generated NetworkAttachmentDefinition, run: the conflist of a macvlan SpiderMultusConfig executed the way
libcni executes a conflist (each plugin in order with the list's ``cniVersion`` and ``name``, the previous
plugin's result as ``prevResult``; DEL in reverse order with the cached result), with Debian's macvlan and
tuning plugins, our ``spiderpool`` IPAM and our coordinator, in the namespaces of ``coordinator_topology``.

Test-only change to the generated config: ``ipam_unix_socket_path`` is added to the ipam and coordinator
entries, since the lab's agent listens on a temporary socket, not the default one.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from spider.multus import mutate_multus_config, network_attachment, validate_multus_config
from tests.netns.coordinator_topology import (
    GATEWAY_V4,
    HOST_V4,
    SERVICE,
    CoordinatorLab,
    coordinator_lab,
    in_ns,
    ip,
    why_not,
)
from tests.support import PLUGIN_DIR, pool_object, run_plugin

WHY_NOT = why_not()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")]

POOL = pool_object("under-v4", "10.77.0.0/24", ["10.77.0.30-10.77.0.39"], gateway=GATEWAY_V4)
SMC = {
    "apiVersion": "spiderpool.spidernet.io/v2beta1",
    "kind": "SpiderMultusConfig",
    "metadata": {"name": "macvlan-up0", "namespace": "default", "uid": "u-1"},
    "spec": {
        "cniType": "macvlan",
        "macvlan": {"master": ["up0"], "ippools": {"ipv4": ["under-v4"]}},
        "chainCNIJsonData": ['{"type":"tuning","sysctl":{"net.core.somaxconn":"512"}}'],
        "coordinator": {"mode": "underlay", "podCIDRType": "none"},
    },
}


@pytest.fixture
async def lab() -> AsyncIterator[CoordinatorLab]:
    async with coordinator_lab() as made:
        await made.apply(POOL)
        await made.coordinator_synced()
        yield made


def generated_conflist(lab: CoordinatorLab) -> dict[str, Any]:
    smc = mutate_multus_config(SMC)
    validate_multus_config(smc)
    conflist: dict[str, Any] = json.loads(network_attachment(smc)["spec"]["config"])
    for plugin in conflist["plugins"]:
        if "ipam" in plugin:
            plugin["ipam"]["ipam_unix_socket_path"] = str(lab.socket)
        if plugin["type"] == "coordinator":
            plugin["ipam_unix_socket_path"] = str(lab.socket)
    return conflist


async def run_one(lab: CoordinatorLab, command: str, pod_ns: str, conf: dict[str, Any]) -> tuple[int, Any]:
    if conf["type"] == "macvlan":  # NB: its parent lives in the lab's host namespace
        return await lab.macvlan(command, pod_ns, conf)
    binary = lab.bin_dir / conf["type"]
    if not binary.exists():
        binary = PLUGIN_DIR / conf["type"]
    return await run_plugin(binary, lab.env(command, pod_ns), conf)


async def add_list(lab: CoordinatorLab, pod_ns: str, conflist: dict[str, Any]) -> Any:
    """libcni's AddNetworkList: each plugin in order, its result the next one's prevResult."""
    result = None
    for plugin in conflist["plugins"]:
        conf = {**plugin, "cniVersion": conflist["cniVersion"], "name": conflist["name"]}
        if result is not None:
            conf["prevResult"] = result
        code, result = await run_one(lab, "ADD", pod_ns, conf)
        assert code == 0, (plugin["type"], result)
    return result


async def del_list(lab: CoordinatorLab, pod_ns: str, conflist: dict[str, Any], cached: Any) -> None:
    """libcni's DelNetworkList: each plugin in reverse order, with the cached result as prevResult."""
    for plugin in reversed(conflist["plugins"]):
        conf = {**plugin, "cniVersion": conflist["cniVersion"], "name": conflist["name"], "prevResult": cached}
        code, answer = await run_one(lab, "DEL", pod_ns, conf)
        assert code == 0, (plugin["type"], answer)


async def allocated(lab: CoordinatorLab) -> int:
    pool = await lab.store.get("SpiderIPPool", "under-v4")
    return int((pool.get("status") or {}).get("allocatedIPCount") or 0)


async def test_a_generated_macvlan_conflist_gives_the_pod_its_address_and_routes_and_del_releases_it(
    lab: CoordinatorLab,
) -> None:
    conflist = generated_conflist(lab)
    assert [p["type"] for p in conflist["plugins"]] == ["macvlan", "tuning", "coordinator"]
    assert conflist["cniVersion"] == "0.3.1"
    pod = lab.pod()
    with trio.fail_after(60):
        result = await add_list(lab, pod, conflist)
        assert result["ips"][0]["address"] == "10.77.0.30/24"
        addresses = ip("-j", "addr", "show", "dev", "eth0", netns=pod)
        assert "10.77.0.30" in addresses
        default = json.loads(ip("-j", "route", "show", "default", netns=pod))
        assert [r["gateway"] for r in default] == [GATEWAY_V4]
        assert "veth0" in ip("link", netns=pod)  # the coordinator's veth to the host
        via_veth = json.loads(ip("-j", "route", "show", "dev", "veth0", netns=pod))
        assert any(r.get("dst") == HOST_V4 for r in via_veth), via_veth
        assert any(r.get("dst") == "10.96.0.0/16" for r in via_veth), (via_veth, SERVICE)
        assert in_ns(pod, "sysctl", "-n", "net.core.somaxconn").stdout.strip() == "512"  # the chained plugin ran
        assert await allocated(lab) == 1
        await del_list(lab, pod, conflist, result)
        assert await allocated(lab) == 0
        assert "eth0" not in ip("link", netns=pod)
