"""ifacer's parents on the node: the bond and the VLAN sub-interface that a pod's macvlan or ipvlan is made on.

Owns ``ensure_parents``, one transaction in the NodeActor's netlink thread (reference §6). It makes what
``IfacerConf`` asks for and is missing, and keeps what exists. It is whole or nothing. When a step fails (a
NIC busy with other pods' macvlans cannot be enslaved, a kernel without that link type), this call deletes
what it made and gives every NIC it changed back its master and its state. A refused ADD thus leaves the node
as it was, and a repeated ADD starts from there. The kernel is reached through the session's socket, and
``netlink.setup_errors`` names what it refused: no pyroute2 here.
"""

from __future__ import annotations

import functools
import logging
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from actors.node import netlink
from spider.coordinator.observed import Link
from spider.errors import InvalidNetConf
from spider.ifacer import IfacerConf

log = logging.getLogger(__name__)

Undo = list[Callable[[], None]]
"""What one call changed, as the steps that put it back (run newest first)."""


def vlan_request(name: str, parent_index: int, vlan_id: int) -> dict[str, Any]:
    """The ``IPRoute.link("add", ...)`` arguments of a VLAN sub-interface."""
    return {"ifname": name, "kind": "vlan", "link": parent_index, "vlan_id": vlan_id}


def bond_request(
    name: str, mode: int, options: Sequence[tuple[str, Any]], indexes: Mapping[str, int]
) -> dict[str, Any]:
    """The ``IPRoute.link("add", ...)`` arguments of a bond; interface-valued options become indexes."""
    request: dict[str, Any] = {"ifname": name, "kind": "bond", "bond_mode": mode}
    for attr, value in options:
        if attr in ("active_slave", "primary"):
            if value not in indexes:
                raise InvalidNetConf(reason=f"bond.options: {attr} names {value!r}, which is not one of the interfaces")
            value = indexes[value]
        elif attr == "arp_ip_target":
            value = list(value)
        request[f"bond_{attr}"] = value
    return request


def ensure_parents(session: netlink.Session, conf: IfacerConf) -> str | None:
    """Make sure the bond and the VLAN ``conf`` asks for exist and are up in the host namespace.

    Returns the name of the parent the main CNI should use. Existing interfaces are kept (set up when down).
    A different VLAN interface with the same VLAN ID is an error, as in Spiderpool (N00004), and so is a NIC
    that is already a port of another bond or bridge. On any error, what this call changed is put back.
    """
    undo: Undo = []
    try:
        with netlink.setup_errors(f"creating the parents of {conf.parent!r}"):
            ensure_with(session.host, conf, undo)
    except struct.error as exc:  # NB: a bond option wider than its netlink field (use_carrier is 8 bits)
        _roll_back(undo)
        raise InvalidNetConf(reason=f"bond.options: a value does not fit its netlink field ({exc})") from exc
    except BaseException:
        _roll_back(undo)
        raise
    return conf.parent


def ensure_with(ipr: Any, conf: IfacerConf, undo: Undo) -> None:
    """``ensure_parents`` on the socket ``ipr``, appending to ``undo`` how to put back each change it makes."""
    links = {link.name: link for link in netlink.list_links(ipr)}
    for name in conf.interfaces:
        if name not in links:
            raise InvalidNetConf(reason=f"interface {name!r} does not exist on the node")
    if conf.needs_bond:
        _ensure_bond(ipr, conf, links, undo)
    if conf.vlan_parent is not None:
        _ensure_vlan(ipr, conf, conf.vlan_parent, undo)


def _ensure_bond(ipr: Any, conf: IfacerConf, links: Mapping[str, Link], undo: Undo) -> None:
    assert conf.bond is not None
    bond = links.get(conf.bond.name)
    if bond is not None and bond.kind != "bond":
        raise InvalidNetConf(reason=f"interface {conf.bond.name!r} exists and is not a bond")
    names = {link.index: link.name for link in links.values()}
    for name in conf.interfaces:
        master = links[name].master
        if master is not None and (bond is None or master != bond.index):
            raise InvalidNetConf(
                reason=f"interface {name!r} is already a port of {names.get(master, master)!r}, "
                f"so it cannot be in the bond {conf.bond.name!r}"
            )
    if bond is None:
        indexes = {name: links[name].index for name in conf.interfaces}
        ipr.link("add", **bond_request(conf.bond.name, conf.bond.mode, conf.bond.options, indexes))
        index = netlink.index_of(ipr, conf.bond.name)
        undo.append(functools.partial(ipr.link, "del", index=index))
    else:
        index = bond.index
        if not bond.up:
            undo.append(functools.partial(ipr.link, "set", index=index, state="down"))
    for name in conf.interfaces:  # NB: on an existing bond, the ports it lacks (a bond made by hand)
        port = links[name]
        if port.master == index:
            continue
        undo.append(functools.partial(_give_back, ipr, port))
        ipr.link("set", index=port.index, state="down")
        ipr.link("set", index=port.index, master=index)
        ipr.link("set", index=port.index, state="up")
    ipr.link("set", index=index, state="up")


def _give_back(ipr: Any, port: Link) -> None:
    """Undo enslaving ``port``: out of the bond, and up or down as it was."""
    ipr.link("set", index=port.index, master=0)
    ipr.link("set", index=port.index, state="up" if port.up else "down")


def _ensure_vlan(ipr: Any, conf: IfacerConf, parent_name: str, undo: Undo) -> None:
    name = f"{parent_name}.{conf.vlan_id}"
    for msg in ipr.link("dump"):  # NB: first, as Spiderpool's checkInterfaceWithSameVlan: a refusal changes nothing
        if _vlan_id(msg) == conf.vlan_id and msg.get_attr("IFLA_IFNAME") != name:
            raise InvalidNetConf(
                reason=f"cannot have multiple different vlan interfaces with the same vlanId {conf.vlan_id} on "
                f"node at the same time ({msg.get_attr('IFLA_IFNAME')!r} exists)"
            )
    links = {link.name: link for link in netlink.list_links(ipr)}
    parent = links[parent_name]
    vlan = links.get(name)
    if vlan is None:
        ipr.link("add", **vlan_request(name, parent.index, conf.vlan_id))
        index = netlink.index_of(ipr, name)
        undo.append(functools.partial(ipr.link, "del", index=index))
    else:
        index = vlan.index
    if not parent.up:
        undo.append(functools.partial(ipr.link, "set", index=parent.index, state="down"))
        ipr.link("set", index=parent.index, state="up")
    ipr.link("set", index=index, state="up")


def _roll_back(undo: Undo) -> None:
    for step in reversed(undo):
        try:
            step()
        except Exception:  # NB: one step failing must not keep the others from putting back what they can
            log.warning("ifacer: could not put back a change of a failed ADD", exc_info=True)


def _vlan_id(msg: Any) -> int | None:
    info = msg.get_attr("IFLA_LINKINFO")
    if info is None or info.get_attr("IFLA_INFO_KIND") != "vlan":
        return None
    data = info.get_attr("IFLA_INFO_DATA")
    return None if data is None else data.get_attr("IFLA_VLAN_ID")
