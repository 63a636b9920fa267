"""The vocabulary of the plan: each netlink change the NodeActor can make, as a value (``Op``).

Owns one class per change (links, veth pairs, addresses, routes, policy rules, permanent neighbours, sysctls
and the nftables marking of replies), each naming the namespace it applies to (``side``).
``spider.coordinator.plan`` decides which ones and in what order; ``actors.node.netlink`` executes them.
"""

from __future__ import annotations

from typing import Final, Literal

import attrs

from spider.coordinator.observed import SCOPE_UNIVERSE, RouteEntry, RuleEntry

MARK: Final = 0x1
"""The fwmark of connections that arrived through ``veth0``: their replies leave through it again."""
NFT_TABLE: Final = "spider-coordinator"
"""The nftables table (family inet) in the pod that marks connections arriving through ``veth0``."""

Side = Literal["host", "pod"]


@attrs.frozen
class AddVeth:
    """Create ``pod_name`` in the pod with its peer ``host_name`` in the host namespace; both up, the host side
    marked with ``host_alias`` (its owner, which DEL checks before it deletes the host side)."""

    pod_name: str
    host_name: str
    mtu: int
    pod_mac: str
    host_mac: str
    host_alias: str
    side: Side = "pod"


@attrs.frozen
class SetLink:
    """Change one link: up, MAC address, transmit queue length (``None`` leaves it)."""

    side: Side
    name: str
    up: bool | None = None
    mac: str | None = None
    txqlen: int | None = None


@attrs.frozen
class DelLink:
    """Delete a link if it exists (a veth takes its peer with it)."""

    side: Side
    name: str


@attrs.frozen
class AddAddress:
    side: Side
    link: str
    address: str  # ip/prefix


@attrs.frozen
class AddRoute:
    """Add or replace a route (``replace`` makes ADD idempotent)."""

    side: Side
    dst: str
    dev: str
    table: int
    gateway: str | None = None
    src: str | None = None
    scope: int = SCOPE_UNIVERSE


@attrs.frozen
class DelRoutes:
    """Delete every route to ``dst`` in ``table`` (only through ``dev``, when given); missing is fine."""

    side: Side
    dst: str
    table: int
    dev: str | None = None


@attrs.frozen
class MoveRoute:
    """Move one observed route from its table to ``table`` (delete, then add the same route there)."""

    side: Side
    route: RouteEntry
    table: int


@attrs.frozen
class CopyRoute:
    """Add a copy of one observed route to ``table``."""

    side: Side
    route: RouteEntry
    table: int


@attrs.frozen
class AddRule:
    """Ensure a policy rule exists (added only when no equal rule is there)."""

    side: Side
    rule: RuleEntry


@attrs.frozen
class DelRule:
    """Delete rules equal to ``rule``; missing is fine."""

    side: Side
    rule: RuleEntry


@attrs.frozen
class DropRuleIfUnused:
    """Delete ``rule`` when ``rule.table`` has no route of its family left (checked at execution time)."""

    side: Side
    rule: RuleEntry


@attrs.frozen
class AddNeighbour:
    """A permanent neighbour entry ``ip`` -> ``mac`` on ``dev``."""

    side: Side
    dev: str
    ip: str
    mac: str


@attrs.frozen
class DelNeighbours:
    """Delete neighbour entries for ``ip`` (on ``dev`` only, when given); missing is fine."""

    side: Side
    ip: str
    dev: str | None = None


@attrs.frozen
class Sysctl:
    """Write ``value`` to ``/proc/sys/<key>`` inside the namespace (``key`` like ``net/ipv4/conf/all/rp_filter``)."""

    side: Side
    key: str
    value: int


@attrs.frozen
class MarkReplies:
    """In the pod: mark connections that arrive on ``dev`` and restore the mark on their replies (nftables)."""

    dev: str
    mark: int = MARK
    side: Side = "pod"


@attrs.frozen
class UnmarkReplies:
    """In the pod: remove the marking of ``MarkReplies`` if present."""

    side: Side = "pod"


Op = (
    AddVeth
    | SetLink
    | DelLink
    | AddAddress
    | AddRoute
    | DelRoutes
    | MoveRoute
    | CopyRoute
    | AddRule
    | DelRule
    | DropRuleIfUnused
    | AddNeighbour
    | DelNeighbours
    | Sysctl
    | MarkReplies
    | UnmarkReplies
)
