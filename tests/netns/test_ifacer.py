"""ifacer with real interfaces: VLAN and bond parents on the lab's host, made by the NodeActor.

Kernels without the ``8021q`` or ``bonding`` link types (such as the one CI runs on) skip the tests that need
them, with that reason; what ifacer sends the kernel is checked byte for byte in
``tests/node/test_netlink_requests.py`` either way, and the one test here that needs the link type to be
missing shows the error a user of such a kernel gets.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from tests.netns.coordinator_topology import CoordinatorLab, coordinator_lab, ip, why_not
from tests.support import run_plugin

WHY_NOT = why_not()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")]


def kernel_lacks(kind: str) -> str | None:
    """Why this kernel cannot make ``kind`` links (tried in a throw-away namespace), or ``None``."""
    if WHY_NOT is not None:
        return WHY_NOT
    probe = f"spkind{os.getpid()}"
    subprocess.run(["ip", "netns", "add", probe], check=True)
    try:
        if kind == "vlan":
            subprocess.run(["ip", "-n", probe, "link", "add", "p0", "type", "veth", "peer", "name", "p1"], check=True)
            argv = ["ip", "-n", probe, "link", "add", "link", "p0", "name", "p0.5", "type", "vlan", "id", "5"]
        else:
            argv = ["ip", "-n", probe, "link", "add", "x0", "type", kind]
        made = subprocess.run(argv, capture_output=True, text=True, check=False)
        if made.returncode != 0:
            return f"this kernel cannot make {kind} links ({made.stderr.strip()})"
        return None
    finally:
        subprocess.run(["ip", "netns", "del", probe], check=False)


NO_VLAN = kernel_lacks("vlan")
NO_BOND = kernel_lacks("bond")


@pytest.fixture
async def lab() -> AsyncIterator[CoordinatorLab]:
    async with coordinator_lab() as made:
        yield made


async def ifacer(lab: CoordinatorLab, command: str, **conf: Any) -> tuple[int, Any]:
    body = {"cniVersion": "1.0.0", "name": "underlay", "type": "ifacer", "ipam_unix_socket_path": str(lab.socket)}
    env = {**lab.env(command, "pod"), "CNI_NETNS": "/var/run/netns/unused"}
    return await run_plugin(lab.bin_dir / "ifacer", env, {**body, **conf})


def link(lab: CoordinatorLab, name: str) -> dict[str, Any] | None:
    found = json.loads(ip("-j", "-d", "link", "show", netns=lab.host))
    return next((x for x in found if x["ifname"] == name), None)


@pytest.mark.skipif(NO_VLAN is not None, reason=NO_VLAN or "")
async def test_ifacer_makes_a_vlan_sub_interface_once_and_keeps_it_on_del(lab: CoordinatorLab) -> None:
    with trio.fail_after(30):
        assert (await ifacer(lab, "ADD", interfaces=["up0"], vlanID=100))[0] == 0
        assert (await ifacer(lab, "ADD", interfaces=["up0"], vlanID=100))[0] == 0
        assert (await ifacer(lab, "DEL", interfaces=["up0"], vlanID=100))[0] == 0
    made = link(lab, "up0.100")
    assert made is not None
    assert made["linkinfo"]["info_kind"] == "vlan"
    assert "UP" in made["flags"]


@pytest.mark.skipif(NO_VLAN is not None, reason=NO_VLAN or "")
async def test_a_second_vlan_interface_with_the_same_id_is_refused(lab: CoordinatorLab) -> None:
    ip("link", "add", "link", "up0", "name", "other.7", "type", "vlan", "id", "7", netns=lab.host)
    with trio.fail_after(30):
        code, error = await ifacer(lab, "ADD", interfaces=["up0"], vlanID=7)
    assert code != 0
    assert error["code"] == 7
    assert "same vlanId 7" in error["msg"]


@pytest.mark.skipif(NO_BOND is not None, reason=NO_BOND or "")
async def test_ifacer_bonds_two_interfaces_and_puts_the_vlan_on_the_bond(lab: CoordinatorLab) -> None:
    for n in (1, 2):
        ip("link", "add", f"nic{n}", "type", "veth", "peer", "name", f"nic{n}-peer", netns=lab.host)
    conf = {"interfaces": ["nic1", "nic2"], "bond": {"name": "sp_bond0", "mode": 1, "options": "miimon=100"}}
    with trio.fail_after(30):
        code, result = await ifacer(lab, "ADD", **conf)
    assert code == 0, result
    bond = link(lab, "sp_bond0")
    assert bond is not None
    assert bond["linkinfo"]["info_kind"] == "bond"
    assert {link(lab, f"nic{n}")["master"] for n in (1, 2)} == {"sp_bond0"}  # type: ignore[index]


@pytest.mark.skipif(NO_VLAN is None, reason="this kernel can make VLAN links: the error path needs one that cannot")
async def test_on_a_kernel_without_vlans_ifacer_says_so_and_changes_nothing(lab: CoordinatorLab) -> None:
    before = sorted(x["ifname"] for x in json.loads(ip("-j", "link", netns=lab.host)))
    with trio.fail_after(30):
        code, error = await ifacer(lab, "ADD", interfaces=["up0"], vlanID=100)
    assert code != 0
    assert error["code"] == 5
    assert "cannot make that link type" in error["msg"]
    assert sorted(x["ifname"] for x in json.loads(ip("-j", "link", netns=lab.host))) == before


async def test_ifacer_with_one_interface_and_no_vlan_has_nothing_to_do(lab: CoordinatorLab) -> None:
    with trio.fail_after(30):
        code, result = await ifacer(lab, "ADD", interfaces=["up0"])
    assert code == 0
    assert result["cniVersion"] == "1.0.0"


async def test_ifacer_refuses_an_interface_the_node_does_not_have(lab: CoordinatorLab) -> None:
    with trio.fail_after(30):
        code, error = await ifacer(lab, "ADD", interfaces=["ens99"], vlanID=3)
    assert code != 0
    assert error["code"] == 7
    assert "'ens99' does not exist on the node" in error["msg"]


async def test_a_bond_option_wider_than_its_netlink_field_is_code_7_and_the_agent_serves_on(
    lab: CoordinatorLab,
) -> None:
    # NB: use_carrier is 8 bits: pyroute2's struct.error once escaped the NodeActor and stopped the agent
    bond = {"name": "bond9", "mode": 1, "options": "use_carrier=256"}
    with trio.fail_after(30):
        code, error = await ifacer(lab, "ADD", interfaces=["up0", "sw-gw0"], bond=bond)
        assert (code, error["code"]) == (1, 7)
        assert "does not fit its netlink field" in error["msg"]
        code, error = await ifacer(lab, "ADD", interfaces=["ens99"], vlanID=3)
    assert (code, error["code"]) == (1, 7), "the agent still answers"
    assert link(lab, "bond9") is None
