"""ifacer's configuration: which VLAN and bond parents the node needs, Spiderpool's fields and rules."""

from __future__ import annotations

from typing import Any

import pytest

from spider.errors import InvalidNetConf
from spider.ifacer import BondConf, IfacerConf, parse_bond_options


def test_one_interface_and_a_vlan_makes_a_vlan_sub_interface() -> None:
    conf = IfacerConf.from_json({"interfaces": ["ens5"], "vlanID": 100})
    assert (conf.parent, conf.vlan_parent, conf.needs_bond) == ("ens5.100", "ens5", False)


def test_one_interface_without_a_vlan_needs_nothing() -> None:
    conf = IfacerConf.from_json({"interfaces": ["ens5"]})
    assert (conf.parent, conf.vlan_parent, conf.needs_bond) == ("ens5", None, False)


def test_two_interfaces_with_a_bond_make_the_bond_and_its_vlan() -> None:
    conf = IfacerConf.from_json({"interfaces": ["ens5", "ens6"], "vlanID": 7, "bond": {"mode": 1}})
    assert conf.bond == BondConf("sp_bond0", 1, ())
    assert (conf.parent, conf.vlan_parent, conf.needs_bond) == ("sp_bond0.7", "sp_bond0", True)


def test_two_interfaces_without_a_bond_need_nothing_as_in_spiderpool() -> None:
    conf = IfacerConf.from_json({"interfaces": ["ens5", "ens6"], "vlanID": 7})
    assert (conf.parent, conf.vlan_parent, conf.needs_bond) == (None, None, False)


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({}, "interfaces have at least one interface"),
        ({"interfaces": []}, "interfaces have at least one interface"),
        ({"interfaces": ["a/b"]}, "interfaces: 'a/b' is no interface name: it must not contain '/'"),
        ({"interfaces": [7]}, "interfaces must be interface names"),
        ({"interfaces": ["ñññññññññ"]}, "must be 1 to 15 bytes long"),
        ({"interfaces": ["a", "b"], "bond": {"name": "\udcff"}}, "bond.name: .* it must be UTF-8 text"),
        ({"interfaces": ["a", "b"], "bond": {"name": "a b"}}, "bond.name"),
        ({"interfaces": ["abcdefghijklmn"], "vlanID": 100}, "the VLAN interface 'abcdefghijklmn.100' must be 1 to 15"),
        ({"interfaces": ["ens5"], "vlanID": 4095}, "vlanID must be an integer from 0 to 4094"),
        ({"interfaces": ["ens5"], "vlanID": "7"}, "vlanID"),
        ({"interfaces": ["a", "b"], "bond": {"mode": 7}}, "bond.mode must be 0 to 6"),
        ({"interfaces": ["a", "b"], "bond": {"name": "x" * 16}}, "bond.name"),
        ({"interfaces": ["a", "b"], "bond": {"options": 5}}, "bond.options must be a string"),
    ],
)
def test_a_wrong_field_is_an_invalid_configuration(conf: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidNetConf, match=message):
        IfacerConf.from_json(conf)


def test_bond_options_become_kernel_attributes() -> None:
    options = parse_bond_options(
        "miimon=100; lacp_rate=fast;xmit_hash_policy=layer3+4;up_delay=200;"
        "arp_ip_target=[10.0.0.1,10.0.0.2];primary=ens5"
    )
    assert options == (
        ("miimon", 100),
        ("ad_lacp_rate", 1),
        ("xmit_hash_policy", 1),
        ("updelay", 200),
        ("arp_ip_target", ("10.0.0.1", "10.0.0.2")),
        ("primary", "ens5"),
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("miimon", "is not key=value"),
        ("miimon=fast", "miimon must be an integer from 0 to 4294967295"),
        ("miimon=4294967296", "miimon must be an integer from 0 to 4294967295"),
        ("miimon=²", "miimon must be an integer"),
        ("miimon=" + "9" * 5000, "miimon must be an integer"),
        ("lacp_rate=4294967296", "lacp_rate must be one of slow, fast"),
        ("lacp_rate=medium", "lacp_rate must be one of slow, fast"),
        ("arp_ip_target=[fd00::1]", "arp_ip_target must be IPv4"),
        ("frobnicate=1", "unknown option 'frobnicate'"),
        ("peer_notif_delay=5", "not supported"),
    ],
)
def test_bad_bond_options_are_named(text: str, message: str) -> None:
    with pytest.raises(InvalidNetConf, match=message):
        parse_bond_options(text)
