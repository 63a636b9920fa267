"""What keeps a pool from handing out an address it lists: another pool that lists it too, or holds it.

Owns ``contested`` (the addresses a pool shares with the other pools of its family, which neither hands out)
and ``Footprint`` (what a stored pool that does not parse may still hold).  Admission keeps pools from
overlapping; this is what the agents and the SpiderSubnet do where admission was bypassed (the webhook off, two
creates racing).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from spider import limits
from spider.addr import IPSet, parse_network
from spider.errors import InvalidSpec
from spider.pool import IPPool, decode_allocated


@attrs.frozen
class Footprint:
    """What a stored pool that does not parse (a typo in one of its ``ips``, say) may still hold: nobody
    allocates from it, but its pods keep their addresses, which other pools must not hand out."""

    name: str
    version: int
    ips: IPSet
    """Its ``ips`` entries that parse, and every address it records."""

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> Footprint | None:
        """The footprint of a stored pool object; ``None`` when not even its family can be told."""
        spec, meta, status = (_mapping(obj.get(part)) for part in ("spec", "metadata", "status"))
        version = spec.get("ipVersion")
        if version not in (4, 6):
            try:
                version = parse_network(str(spec.get("subnet", "")), strict=False).version
            except limits.MALFORMED:
                return None
        held = IPSet(version)
        entries = spec.get("ips")
        for entry in entries if isinstance(entries, list) else ():
            try:
                held = held.union(IPSet.parse(version, [str(entry)]))
            except limits.MALFORMED:
                continue
        try:
            held = held.union(IPSet.of(version, decode_allocated(version, status.get("allocatedIPs"))))
        except (*limits.MALFORMED, InvalidSpec):
            pass
        return cls(str(meta.get("name", "")), version, held)


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def contested(pool: IPPool, others: Iterable[IPPool], unparsed: Iterable[Footprint] = ()) -> IPSet | None:
    """Addresses ``pool`` shares with another pool of its family (one being deleted too: it holds its addresses
    until its pods release them), or with what a pool that does not parse holds; ``None`` when it shares none.

    Admission keeps pools from overlapping, but it can be bypassed (a Kubernetes API server without our
    webhook, two creates racing).  Each pool keeps its own records, so a shared address could be handed out
    by both: neither pool hands these out (``spider check`` reports any that were, as ``held-twice``).
    """
    shared = IPSet(pool.version)
    for other in others:
        if other.name == pool.name or other.version != pool.version:
            continue
        if other.subnet.overlaps(pool.subnet):
            shared = shared.union(pool.total.intersection(other.total))
    for footprint in unparsed:
        if footprint.name != pool.name and footprint.version == pool.version:
            shared = shared.union(pool.total.intersection(footprint.ips))
    return shared or None
