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

from actors.node import netlink, parents
from actors.node.netlink import NetlinkWorker
from spider.coordinator.errors import InterfaceSetupFailed
from spider.errors import InvalidNetConf
from spider.ifacer import IfacerConf
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
    nic_pair(lab, "nic1")
    nic_pair(lab, "nic2")
    with trio.fail_after(30):
        code, error = await ifacer(lab, "ADD", interfaces=["nic1", "nic2"], bond=bond)
        assert (code, error["code"]) == (1, 7)
        assert "does not fit its netlink field" in error["msg"]
        code, error = await ifacer(lab, "ADD", interfaces=["ens99"], vlanID=3)
    assert (code, error["code"]) == (1, 7), "the agent still answers"
    assert link(lab, "bond9") is None


@pytest.mark.parametrize(
    ("bond", "why"),
    [("bad/name", "'/'"), ("ñññññññññ", "over 15 bytes"), ("a b", "whitespace"), ("x:1", "':'")],
)
async def test_a_bond_name_the_kernel_refuses_is_code_7_naming_the_field(
    lab: CoordinatorLab, bond: str, why: str
) -> None:
    with trio.fail_after(30):
        code, error = await ifacer(lab, "ADD", interfaces=["up0", "sw-gw0"], bond={"name": bond, "mode": 1})
    assert (code, error["code"]) == (1, 7), why
    assert "bond.name" in error["msg"]


async def test_a_vlan_interface_name_over_15_bytes_is_code_7(lab: CoordinatorLab) -> None:
    ip("link", "add", "abcdefghijklmn", "type", "veth", "peer", "name", "longpeer", netns=lab.host)
    with trio.fail_after(30):
        code, error = await ifacer(lab, "ADD", interfaces=["abcdefghijklmn"], vlanID=100)
    assert (code, error["code"]) == (1, 7)
    assert "'abcdefghijklmn.100' must be 1 to 15 bytes long" in error["msg"]


async def test_a_lone_surrogate_in_the_configuration_is_refused_and_the_agent_serves_on(lab: CoordinatorLab) -> None:
    # NB: JSON "\udcff" is no character: pyroute2 could not encode it as a name, and it once stopped the agent
    body = (
        b'{"cniVersion": "1.0.0", "name": "underlay", "type": "ifacer", "ipam_unix_socket_path": "%s",'
        b' "interfaces": ["up0", "sw-gw0"], "bond": {"name": "\\udcff", "mode": 1}}' % str(lab.socket).encode()
    )
    env = {**lab.env("ADD", "pod"), "CNI_NETNS": "/var/run/netns/unused"}
    with trio.fail_after(30):
        code, error = await run_plugin(lab.bin_dir / "ifacer", env, body)
        assert (code, error["code"]) == (1, 6), error
        code, error = await ifacer(lab, "ADD", interfaces=["ens99"], vlanID=3)
    assert (code, error["code"]) == (1, 7), "the agent still answers"


@pytest.mark.skipif(NO_VLAN is None, reason="this kernel can make VLAN links: the error path needs one that cannot")
async def test_a_vlan_the_kernel_cannot_make_leaves_a_down_parent_down(lab: CoordinatorLab) -> None:
    ip("link", "add", "nic5", "type", "veth", "peer", "name", "nic5p", netns=lab.host)
    with trio.fail_after(30):
        code, error = await ifacer(lab, "ADD", interfaces=["nic5"], vlanID=100)
    assert (code, error["code"]) == (1, 5), error
    assert "UP" not in link(lab, "nic5")["flags"]  # type: ignore[index]


class BondAsBridge:
    """The host's socket, making a bridge where ifacer asks for a bond: a bridge takes ports (and refuses a NIC
    that carries macvlans, EBUSY) as a bond does, and this kernel has bridges."""

    def __init__(self, ipr: Any) -> None:
        self.ipr = ipr

    def link(self, command: str, **kw: Any) -> Any:
        if command == "add" and kw.get("kind") == "bond":
            kw = {"ifname": kw["ifname"], "kind": "bridge"}
        return self.ipr.link(command, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ipr, name)


@pytest.fixture
async def bridges_as_bonds(lab: CoordinatorLab, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[NetlinkWorker]:
    """A netlink worker in the lab's host whose ifacer transactions make and see bridges as bonds."""
    kind = netlink._kind
    monkeypatch.setattr(netlink, "_kind", lambda msg: "bond" if kind(msg) == "bridge" else kind(msg))
    worker = NetlinkWorker(lab.host)
    await worker.start()
    try:
        yield worker
    finally:
        worker.stop()


async def ensure_bonded(worker: NetlinkWorker, conf: dict[str, Any]) -> str | None:
    def transaction(session: netlink.Session) -> str | None:
        return parents.ensure_parents(netlink.Session(session.home_fd, BondAsBridge(session.host)), conf_)

    conf_ = IfacerConf.from_json(conf)
    with trio.fail_after(30):
        return await worker.call(transaction)


def nic_pair(lab: CoordinatorLab, name: str, *, up: bool = True) -> None:
    ip("link", "add", name, "type", "veth", "peer", "name", f"{name}p", netns=lab.host)
    if up:
        ip("link", "set", name, "up", netns=lab.host)


def two_nics_and_a_bridge(lab: CoordinatorLab, bridge: str, *, port: str) -> None:
    """``nic1`` and ``nic2``, up, and ``bridge`` with ``port`` in it."""
    nic_pair(lab, "nic1")
    nic_pair(lab, "nic2")
    ip("link", "add", bridge, "type", "bridge", netns=lab.host)
    ip("link", "set", port, "master", bridge, netns=lab.host)


async def test_a_bond_that_cannot_take_a_busy_nic_is_undone_and_the_busy_nic_stays_up(
    lab: CoordinatorLab, bridges_as_bonds: NetlinkWorker
) -> None:
    nic_pair(lab, "nic1", up=False)
    nic_pair(lab, "nic2")
    ip("link", "add", "link", "nic2", "name", "pods2", "type", "macvlan", "mode", "bridge", netns=lab.host)
    with pytest.raises(InterfaceSetupFailed, match="busy"):
        await ensure_bonded(bridges_as_bonds, {"interfaces": ["nic1", "nic2"], "bond": {"name": "sp_bond0"}})
    assert link(lab, "sp_bond0") is None
    nic1, nic2 = link(lab, "nic1"), link(lab, "nic2")
    assert nic1 is not None
    assert nic2 is not None
    assert ("master" not in nic1, "UP" in nic1["flags"]) == (True, False)
    assert ("master" not in nic2, "UP" in nic2["flags"]) == (True, True)  # its pods' macvlans still work


async def test_a_nic_that_is_a_port_of_another_bridge_is_refused_and_left_there(
    lab: CoordinatorLab, bridges_as_bonds: NetlinkWorker
) -> None:
    two_nics_and_a_bridge(lab, "br-storage", port="nic2")
    with pytest.raises(InvalidNetConf, match="'nic2' is already a port of 'br-storage'"):
        await ensure_bonded(bridges_as_bonds, {"interfaces": ["nic1", "nic2"], "bond": {"name": "sp_bond0"}})
    assert link(lab, "sp_bond0") is None
    assert link(lab, "nic2")["master"] == "br-storage"  # type: ignore[index]


async def test_a_bond_made_by_hand_gets_the_ports_it_lacks_and_keeps_the_ones_it_has(
    lab: CoordinatorLab, bridges_as_bonds: NetlinkWorker
) -> None:
    two_nics_and_a_bridge(lab, "sp_bond0", port="nic1")
    conf = {"interfaces": ["nic1", "nic2"], "bond": {"name": "sp_bond0"}}
    assert await ensure_bonded(bridges_as_bonds, conf) == "sp_bond0"
    assert await ensure_bonded(bridges_as_bonds, conf) == "sp_bond0"  # again: nothing to do
    assert {link(lab, n)["master"] for n in ("nic1", "nic2")} == {"sp_bond0"}  # type: ignore[index]
    assert "UP" in link(lab, "sp_bond0")["flags"]  # type: ignore[index]
