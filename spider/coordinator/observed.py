"""What the NodeActor observes in a network namespace, as plain values the planner reads.

Owns ``NsView`` and its parts (``Link``, ``Address``, ``RouteEntry``, ``RuleEntry``, ``Neighbour``), the
kernel's constants they carry (main table, scopes) and ``family_of``, the address family of an address or CIDR.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

import attrs

MAIN_TABLE: Final = 254
SCOPE_UNIVERSE: Final = 0
SCOPE_LINK: Final = 253


def family_of(ip: str) -> int:
    """4 or 6 for an address or a CIDR."""
    return 6 if ":" in ip else 4


@attrs.frozen
class Link:
    """One interface in a namespace."""

    index: int
    name: str
    mac: str = ""
    up: bool = False
    kind: str = ""
    peer_index: int | None = None
    """``IFLA_LINK``: for a veth, the peer's index (in the other namespace when the peer lives there)."""
    broadcast: bool = True
    mtu: int = 1500
    alias: str = ""
    """``IFLA_IFALIAS``: on a host veth we made, its owner (``host_veth_owner``)."""
    master: int | None = None
    """``IFLA_MASTER``: the bond or bridge this link is a port of."""


@attrs.frozen
class Address:
    """One address on an interface (``link`` by name)."""

    link: str
    ip: str
    prefix: int
    scope: int = SCOPE_UNIVERSE

    @property
    def family(self) -> int:
        return family_of(self.ip)


@attrs.frozen
class RouteEntry:
    """One route as the kernel reports it; ``dst`` is ``None`` for a default route."""

    family: int
    table: int
    dst: str | None
    oif: str | None = None
    gateway: str | None = None
    scope: int = SCOPE_UNIVERSE
    src: str | None = None
    proto: int = 4  # static
    priority: int | None = None
    multipath_oifs: tuple[str, ...] = ()
    multipath_gateways: tuple[str | None, ...] = ()

    @property
    def destination(self) -> str:
        """``dst`` with the default spelled out."""
        if self.dst is not None:
            return self.dst
        return "0.0.0.0/0" if self.family == 4 else "::/0"


@attrs.frozen
class RuleEntry:
    """One policy routing rule (``src``/``dst`` are CIDRs or ``None``)."""

    family: int
    table: int
    priority: int | None = None
    src: str | None = None
    dst: str | None = None
    fwmark: int | None = None

    def same(self, other: RuleEntry) -> bool:
        """Whether two rules select the same packets into the same table (priority only when both set one)."""
        if (self.family, self.table, self.src, self.dst, self.fwmark or None) != (
            other.family,
            other.table,
            other.src,
            other.dst,
            other.fwmark or None,
        ):
            return False
        return self.priority is None or other.priority is None or self.priority == other.priority


@attrs.frozen
class Neighbour:
    """One neighbour entry."""

    link: str
    ip: str
    mac: str | None = None
    permanent: bool = False


@attrs.frozen
class NsView:
    """Links, addresses, routes, rules and neighbours of one namespace, as observed in one transaction."""

    links: tuple[Link, ...] = ()
    addresses: tuple[Address, ...] = ()
    routes: tuple[RouteEntry, ...] = ()
    rules: tuple[RuleEntry, ...] = ()
    neighbours: tuple[Neighbour, ...] = ()
    route_sources: Mapping[str, str] = attrs.field(factory=dict)
    """For each address asked about: the source address the kernel picks to reach it (``ip route get``)."""

    def link(self, name: str) -> Link | None:
        return next((link for link in self.links if link.name == name), None)

    def link_by_index(self, index: int) -> Link | None:
        return next((link for link in self.links if link.index == index), None)

    def addresses_of(self, name: str, families: Sequence[int] = (4, 6)) -> tuple[Address, ...]:
        """Global addresses on one link, of the given families."""
        return tuple(a for a in self.addresses if a.link == name and a.scope == SCOPE_UNIVERSE and a.family in families)

    def up_links(self) -> tuple[Link, ...]:
        """Links that are up, excluding loopback (Spiderpool's GetUPLinkList)."""
        return tuple(link for link in self.links if link.up and link.name != "lo" and link.kind != "loopback")
