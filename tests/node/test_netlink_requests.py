"""The netlink requests the NodeActor builds, checked as the bytes pyroute2 sends, on its mock netlink engine
(no privileges, no kernel support needed: this kernel cannot make VLAN or bond links at all)."""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from pyroute2 import IPRoute, config
from pyroute2.iproute.ipmock import IPEngine
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nfnetlink.nftsocket import nft_rule_msg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from actors.node import netlink, parents
from spider.coordinator.errors import InterfaceSetupFailed
from spider.errors import InvalidNetConf
from spider.ifacer import IfacerConf


class Recorder:
    """A mock ``IPRoute`` and every message it was sent."""

    def __init__(self, ipr: IPRoute, sent: list[bytes]) -> None:
        self.ipr, self.sent = ipr, sent

    def links_added(self) -> list[Any]:
        out = []
        for data in self.sent:
            msg = ifinfmsg(data)
            msg.decode()
            if msg["header"]["type"] == 16 and msg["header"]["flags"] & 0x400:  # RTM_NEWLINK, NLM_F_CREATE
                out.append(msg)
        return out

    def links_deleted(self) -> list[int]:
        """The indexes of the links deleted (RTM_DELLINK)."""
        out = []
        for data in self.sent:
            msg = ifinfmsg(data)
            msg.decode()
            if msg["header"]["type"] == 17:
                out.append(msg["index"])
        return out


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    sent: list[bytes] = []
    handle = IPEngine.nl_handle

    def spy(self: IPEngine, data: bytes) -> Any:
        sent.append(bytes(data))
        return handle(self, data)

    monkeypatch.setattr(IPEngine, "nl_handle", spy)
    monkeypatch.setattr(config, "mock_netlink", True)
    ipr = IPRoute()
    monkeypatch.setattr(config, "mock_netlink", False)  # NB: a global flag: only this socket is a mock
    engine = ipr.asyncore.use_socket
    try:
        yield Recorder(ipr, sent)
    finally:
        ipr.close()
        engine.loopback_r.close()  # the mock engine leaves its socket pair open otherwise
        engine.loopback_w.close()


def test_a_vlan_request_names_its_parent_and_vlan_id(recorder: Recorder) -> None:
    recorder.ipr.link("add", **parents.vlan_request("eth0.100", 2, 100))
    (msg,) = recorder.links_added()
    info = msg.get_attr("IFLA_LINKINFO")
    assert msg.get_attr("IFLA_IFNAME") == "eth0.100"
    assert msg.get_attr("IFLA_LINK") == 2
    assert info.get_attr("IFLA_INFO_KIND") == "vlan"
    assert info.get_attr("IFLA_INFO_DATA").get_attr("IFLA_VLAN_ID") == 100


def test_a_bond_request_carries_its_mode_and_options_with_interfaces_as_indexes(recorder: Recorder) -> None:
    options = [("miimon", 100), ("ad_lacp_rate", 1), ("arp_ip_target", ("10.0.0.1",)), ("primary", "eth0")]
    recorder.ipr.link("add", **parents.bond_request("sp_bond0", 4, options, {"eth0": 2}))
    (msg,) = recorder.links_added()
    data = msg.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
    assert data.get_attr("IFLA_BOND_MODE") == 4
    assert data.get_attr("IFLA_BOND_MIIMON") == 100
    assert data.get_attr("IFLA_BOND_AD_LACP_RATE") == 1
    assert data.get_attr("IFLA_BOND_ARP_IP_TARGET") == ["10.0.0.1"]
    assert data.get_attr("IFLA_BOND_PRIMARY") == 2


def test_a_bond_option_naming_an_interface_outside_the_bond_is_refused() -> None:
    with pytest.raises(InvalidNetConf, match="not one of the interfaces"):
        parents.bond_request("sp_bond0", 1, [("primary", "ens9")], {"eth0": 2})


def ensure(ipr: IPRoute, conf: IfacerConf) -> str | None:
    """ifacer's transaction (``parents.ensure_parents``) on the mock socket ``ipr``."""
    return parents.ensure_parents(netlink.Session(-1, ipr), conf)


def test_ensuring_a_vlan_parent_adds_it_once_and_brings_it_up(recorder: Recorder) -> None:
    conf = IfacerConf.from_json({"interfaces": ["eth0"], "vlanID": 100})
    assert ensure(recorder.ipr, conf) == "eth0.100"
    assert ensure(recorder.ipr, conf) == "eth0.100"  # exists: kept, not added again
    assert [m.get_attr("IFLA_IFNAME") for m in recorder.links_added()] == ["eth0.100"]
    assert "eth0.100" in {link.name for link in netlink.list_links(recorder.ipr) if link.up}


def test_a_parent_interface_that_does_not_exist_is_a_configuration_error(recorder: Recorder) -> None:
    with pytest.raises(InvalidNetConf, match="'ens9' does not exist on the node"):
        ensure(recorder.ipr, IfacerConf.from_json({"interfaces": ["ens9"], "vlanID": 5}))


def test_a_vlan_id_another_interface_has_is_refused_before_the_parent_is_touched(recorder: Recorder) -> None:
    # Spiderpool's CmdAdd runs checkInterfaceWithSameVlan before createVlanDevice, which sets the parent up
    ipr = recorder.ipr
    eth0 = ipr.link_lookup(ifname="eth0")[0]
    ipr.link("set", index=eth0, state="down")
    ipr.link("add", ifname="other.7", kind="vlan", link=eth0, vlan_id=7)
    with pytest.raises(InvalidNetConf, match="same vlanId 7"):
        ensure(ipr, IfacerConf.from_json({"interfaces": ["eth0"], "vlanID": 7}))
    assert not next(link for link in netlink.list_links(ipr) if link.name == "eth0").up


def test_a_vlan_whose_last_step_fails_is_deleted_and_its_parent_set_down_again(
    recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    ipr = recorder.ipr
    eth0 = ipr.link_lookup(ifname="eth0")[0]
    ipr.link("set", index=eth0, state="down")
    link = ipr.link

    def refuse_the_vlan_up(command: str, **kw: Any) -> Any:
        if command == "set" and kw.get("state") == "up" and kw.get("index") != eth0:
            raise NetlinkError(errno.ENOBUFS)
        return link(command, **kw)

    monkeypatch.setattr(ipr, "link", refuse_the_vlan_up)
    with pytest.raises(InterfaceSetupFailed, match="No buffer space"):
        ensure(ipr, IfacerConf.from_json({"interfaces": ["eth0"], "vlanID": 100}))
    made = ipr.link_lookup(ifname="eth0.100")[0]
    assert made in recorder.links_deleted()  # NB: the mock engine answers RTM_DELLINK but keeps the link
    assert not next(x for x in netlink.list_links(ipr) if x.name == "eth0").up


def test_the_reply_marking_rules_encode_as_nftables_expressions() -> None:
    pre, save, restore = netlink.mark_rules("veth0", 1)
    msg = nft_rule_msg()
    msg["attrs"] = [
        ("NFTA_RULE_TABLE", "t"),
        ("NFTA_RULE_CHAIN", "c"),
        ("NFTA_RULE_EXPRESSIONS", [expr for group in pre for expr in group]),
    ]
    msg.encode()
    decoded = nft_rule_msg(msg.data)
    decoded.decode()
    names = [e.get_attr("NFTA_EXPR_NAME") for e in decoded.get_attr("NFTA_RULE_EXPRESSIONS")]
    assert names == ["meta", "cmp", "ct", "bitwise", "cmp", "immediate", "meta"]
    assert [len(save), len(restore)] == [3, 2]
    mark = pre[5][0]["attrs"][1][1]["attrs"][1][1]["attrs"][0][1]
    assert mark == struct.pack("=I", 1)
