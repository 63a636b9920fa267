"""The ``ifacer`` configuration: VLAN and bond parent interfaces the underlay CNI needs on the node.

Owns Spiderpool's ifacer rules (reference §6) without I/O: the fields (``interfaces``, ``vlanID``, ``bond``
with ``name``, ``mode`` and ``options``), their validation, the bond options string (``k=v;k=v``) and the
names of what must exist (``<parent>.<vlanID>``, the bond).  ``actors.node.netlink`` turns an ``IfacerConf`` into
netlink requests the NodeActor runs in the host namespace; interfaces are never removed (DEL is a no-op).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any, Final

import attrs

from spider import limits
from spider.errors import InvalidNetConf

DEFAULT_BOND_NAME: Final = "sp_bond0"
MAX_VLAN_ID: Final = 4094

# Bond options Spiderpool accepts (cmd/ifacer/cmd/utils.go), by the kernel's IFLA_BOND_* attribute they set.
_INT_OPTIONS: Final = {
    "ad_actor_sys_prio": "ad_actor_sys_prio",
    "ad_user_port_key": "ad_user_port_key",
    "all_slaves_active": "all_slaves_active",
    "arp_all_targets": "arp_all_targets",
    "arp_interval": "arp_interval",
    "downdelay": "downdelay",
    "lp_interval": "lp_interval",
    "miimon": "miimon",
    "min_links": "min_links",
    "packets_per_slave": "packets_per_slave",
    "resend_igmp": "resend_igmp",
    "tlb_dynamic_lb": "tlb_dynamic_lb",
    "up_delay": "updelay",
    "use_carrier": "use_carrier",
}
_NAMED_OPTIONS: Final[Mapping[str, tuple[str, Mapping[str, int]]]] = {
    "ad_select": ("ad_select", {"stable": 0, "bandwidth": 1, "count": 2}),
    "arp_validate": ("arp_validate", {"none": 0, "active": 1, "backup": 2, "all": 3, "filter": 4}),
    "fail_over_mac": ("fail_over_mac", {"none": 0, "active": 1, "follow": 2}),
    "lacp_rate": ("ad_lacp_rate", {"slow": 0, "fast": 1}),
    "primary_reselect": ("primary_reselect", {"always": 0, "better": 1, "failure": 2}),
    "xmit_hash_policy": (
        "xmit_hash_policy",
        {"layer2": 0, "layer3+4": 1, "layer2+3": 2, "encap2+3": 3, "encap3+4": 4, "vlan+srcmac": 5},
    ),
}
_LINK_OPTIONS: Final = {"active_slave": "active_slave", "primary": "primary"}
_UNSUPPORTED: Final = ("ad_actor_system", "peer_notif_delay")
_LIST: Final = re.compile(r"^\[(.*)\]$")


@attrs.frozen
class BondConf:
    """The ``bond`` section: a bond named ``name`` of every interface, in ``mode`` (0-6), with options."""

    name: str = DEFAULT_BOND_NAME
    mode: int = 0
    options: tuple[tuple[str, int | str | tuple[str, ...]], ...] = ()
    """``(attribute, value)``: an integer, an interface name (``active_slave``, ``primary``) or addresses."""


@attrs.frozen
class IfacerConf:
    """What ifacer must make sure exists on the node before the main CNI runs."""

    interfaces: tuple[str, ...]
    vlan_id: int = 0
    bond: BondConf | None = None

    @property
    def parent(self) -> str | None:
        """The interface the main CNI should use as its master, or ``None`` when ifacer has nothing to do."""
        if self.bond is not None and len(self.interfaces) >= 2:
            base = self.bond.name
        elif len(self.interfaces) == 1:
            base = self.interfaces[0]
        else:
            return None
        return f"{base}.{self.vlan_id}" if self.vlan_id else base

    @property
    def needs_bond(self) -> bool:
        return self.bond is not None and len(self.interfaces) >= 2

    @property
    def vlan_parent(self) -> str | None:
        """The link a VLAN sub-interface is made on, when one is needed."""
        if not self.vlan_id:
            return None
        if self.needs_bond:
            assert self.bond is not None
            return self.bond.name
        return self.interfaces[0] if len(self.interfaces) == 1 else None

    @classmethod
    def from_json(cls, conf: Mapping[str, Any]) -> IfacerConf:
        """Validate the plugin configuration; ``InvalidNetConf`` names the first wrong field."""
        interfaces = conf.get("interfaces")
        if not isinstance(interfaces, list) or not interfaces:
            raise InvalidNetConf(reason="interfaces have at least one interface")
        for name in interfaces:
            _check_name("interfaces", name)
        vlan_id = conf.get("vlanID", 0)
        if isinstance(vlan_id, bool) or not isinstance(vlan_id, int) or not 0 <= vlan_id <= MAX_VLAN_ID:
            raise InvalidNetConf(reason=f"vlanID must be an integer from 0 to {MAX_VLAN_ID}, not {vlan_id!r}")
        raw_bond = conf.get("bond")
        bond = None
        if raw_bond is not None:
            if not isinstance(raw_bond, dict):
                raise InvalidNetConf(reason="bond must be an object")
            name = raw_bond.get("name") or DEFAULT_BOND_NAME
            mode = raw_bond.get("mode", 0)
            _check_name("bond.name", name)
            if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 6:
                raise InvalidNetConf(reason=f"bond.mode must be 0 to 6 (balance-rr ... balance-alb), not {mode!r}")
            options = raw_bond.get("options") or ""
            if not isinstance(options, str):
                raise InvalidNetConf(reason="bond.options must be a string like 'miimon=100;lacp_rate=fast'")
            bond = BondConf(name, mode, parse_bond_options(options))
        made = cls(tuple(interfaces), vlan_id, bond)
        if made.vlan_parent is not None and (problem := limits.ifname_problem(made.parent or "")):
            raise InvalidNetConf(reason=f"the VLAN interface {made.parent!r} {problem}: choose a shorter parent name")
        return made


def _check_name(field: str, name: object) -> None:
    """``InvalidNetConf`` unless ``name`` is an interface name the kernel takes (``limits.ifname_problem``)."""
    if not isinstance(name, str):
        raise InvalidNetConf(reason=f"{field} must be interface names (strings), not {type(name).__name__}")
    if problem := limits.ifname_problem(name):
        raise InvalidNetConf(reason=f"{field}: {limits.preview(name)} is no interface name: it {problem}")


def _u32(text: str) -> int | None:
    """``text`` as a decimal number of at most 32 bits, or ``None``."""
    if not (text.isascii() and text.isdigit() and len(text) <= 10) or int(text) > limits.MAX_U32:
        return None
    return int(text)


def parse_bond_options(text: str) -> tuple[tuple[str, int | str | tuple[str, ...]], ...]:
    """``k=v;k=v`` into ``(attribute, value)`` pairs; ``InvalidNetConf`` for an unknown key or a bad value."""
    out: list[tuple[str, int | str | tuple[str, ...]]] = []
    for pair in (p.strip() for p in text.split(";")):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise InvalidNetConf(reason=f"bond.options: {pair!r} is not key=value")
        if key in _INT_OPTIONS:
            if (number := _u32(value)) is None:
                raise InvalidNetConf(
                    reason=f"bond.options: {key} must be an integer from 0 to {limits.MAX_U32}, not {value!r}"
                )
            out.append((_INT_OPTIONS[key], number))
        elif key in _NAMED_OPTIONS:
            attr, names = _NAMED_OPTIONS[key]
            if (given := _u32(value)) is not None:
                number = given
            elif value in names:
                number = names[value]
            else:
                raise InvalidNetConf(reason=f"bond.options: {key} must be one of {', '.join(names)}, not {value!r}")
            out.append((attr, number))
        elif key in _LINK_OPTIONS:
            out.append((_LINK_OPTIONS[key], value))
        elif key == "arp_ip_target":
            match = _LIST.match(value)
            items = [v.strip() for v in (match.group(1) if match else value).split(",") if v.strip()]
            try:
                targets = tuple(str(ipaddress.IPv4Address(v)) for v in items)
            except ValueError:
                raise InvalidNetConf(
                    reason=f"bond.options: arp_ip_target must be IPv4 addresses, not {value!r}"
                ) from None
            out.append(("arp_ip_target", targets))
        elif key in _UNSUPPORTED:
            raise InvalidNetConf(reason=f"bond.options: {key} is not supported by this agent")
        else:
            raise InvalidNetConf(reason=f"bond.options: unknown option {key!r}")
    return tuple(out)
