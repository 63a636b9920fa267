"""What the controller wants a pool's and a subnet's status and finalizers to be, as pure functions.

Owns the controller's rules (reference §1.1 "Controller", §1.2), each a function from stored objects to the
change to make, or ``None`` when there is nothing to change (so the controller writes only when something
differs and never fights the agents' PoolActors):

- ``pool_status``: ``totalIPCount`` (``ips - excludeIPs``, reserved IPs not subtracted, as Spiderpool),
  ``allocatedIPCount`` (the number of records in ``allocatedIPs``) and our ``freeIPCount`` (allocatable
  minus held, where reserved IPs are not allocatable).  ``allocatedIPs`` is never touched: it is the agents'.
- ``pool_finalizers``: add ``spiderpool.spidernet.io`` to a live pool; on a terminating pool remove it only
  once ``allocatedIPs`` is empty, so a pool with allocations stays Terminating until drained.
- ``subnet_status``: ``totalIPCount``, and ``controlledIPPools`` / ``allocatedIPCount`` from the pools with
  the same ``spec.subnet`` (each pool's ``ips`` that lie inside the subnet's ``ips - excludeIPs``).
- ``subnet_finalizers``: only ever removes ours from a terminating subnet that controls no pool (we do not
  add it: without auto pools nothing deletes a subnet's pools for it, so it would keep the subnet forever).

Counts are capped at 2**63 - 1 as Spiderpool caps them (int64 in the CRD), so a whole IPv6 /64 has a count.
Pure: no I/O; objects are the store's JSON-shaped dicts and are never mutated.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from spider import limits
from spider.addr import IPSet, parse_network
from spider.errors import InvalidSpec
from spider.kinds import FINALIZER
from spider.pool import MAX_COUNT, IPPool, PoolLedger, ReservedIP, reserved_set

SUBNET = "SpiderSubnet"

Obj = Mapping[str, Any]


def size(ips: IPSet) -> int:
    """How many addresses a set holds, capped at ``MAX_COUNT`` (``len()`` overflows on large IPv6 sets)."""
    return min(ips.count, MAX_COUNT)


def _meta(obj: Obj) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _status(obj: Obj) -> dict[str, Any]:
    return dict(obj.get("status") or {})


def terminating(obj: Obj) -> bool:
    """Whether the object is being deleted (``metadata.deletionTimestamp`` is set)."""
    return bool(_meta(obj).get("deletionTimestamp"))


def holds_addresses(obj: Obj) -> bool:
    """Whether a pool's ``allocatedIPs`` has any record; a corrupt one counts as holding (never drop it)."""
    raw = (obj.get("status") or {}).get("allocatedIPs")
    if raw in (None, ""):
        return False
    try:
        data = json.loads(raw) if isinstance(raw, str) else raw
    except limits.MALFORMED:
        return True
    return not isinstance(data, dict) or bool(data)


COUNTS = ("allocatedIPCount", "totalIPCount", "freeIPCount")


def pool_counts(
    obj: Obj, reservations: Iterable[ReservedIP] = (), previous: PoolLedger | None = None
) -> tuple[dict[str, int], PoolLedger]:
    """``allocatedIPCount``, ``totalIPCount`` and ``freeIPCount`` of a stored pool, and its ledger; ``InvalidSpec``.

    NB: taken from ``PoolLedger.counts``, the very numbers the agents' PoolActors write, so the two can never
    disagree and fight.  ``previous``: the ledger this returned for an earlier version of the same pool, which
    is levelled with this one (``PoolLedger.catch_up``: the records a write left alone are not decoded again)
    and must not be used again.
    """
    pool = IPPool.from_object(obj)
    reserved = reserved_set(pool.version, reservations)
    try:
        if previous is None:
            ledger = PoolLedger.from_object(obj, reserved)
        else:
            ledger = previous.catch_up(obj)
            ledger.set_reserved(reserved)
    except InvalidSpec as exc:
        raise InvalidSpec(kind=exc.kind, name=pool.name, reason=exc.reason) from None
    return ledger.counts(), ledger


def pool_status(
    obj: Obj, reservations: Iterable[ReservedIP] = (), previous: PoolLedger | None = None
) -> tuple[dict[str, Any] | None, PoolLedger]:
    """The pool's status with the counts corrected, or ``None`` when they already agree, and the pool's ledger
    (``pool_counts``); ``InvalidSpec``.

    Every other key, ``allocatedIPs`` first of all, is kept exactly as stored.
    """
    status = _status(obj)
    counts, ledger = pool_counts(obj, reservations, previous)
    if all(status.get(key) == value for key, value in counts.items()):
        return None, ledger
    return {**status, **counts}, ledger


def pool_finalizers(obj: Obj) -> list[str] | None:
    """The pool's new ``metadata.finalizers``, or ``None`` when they stay as they are."""
    finalizers = list(_meta(obj).get("finalizers") or [])
    if terminating(obj):
        if FINALIZER in finalizers and not holds_addresses(obj):
            return [f for f in finalizers if f != FINALIZER]
        return None
    if FINALIZER not in finalizers:
        return [*finalizers, FINALIZER]
    return None


def same_subnet(a: str, b: str) -> bool:
    """Whether two ``spec.subnet`` strings name the same network (``fd00::/64`` and ``fd00:0::/64`` do)."""
    try:
        return parse_network(a, strict=False) == parse_network(b, strict=False)
    except ValueError:
        return a == b


def _decode_controlled(raw: object) -> dict[str, Any]:
    if raw in (None, ""):
        return {}
    try:
        data = json.loads(raw) if isinstance(raw, str) else raw
    except limits.MALFORMED:
        return {}
    return data if isinstance(data, dict) else {}


def subnet_status(subnet: Obj, pools: Iterable[Obj]) -> dict[str, Any] | None:
    """The subnet's status with counts and ``controlledIPPools`` corrected, or ``None``; ``InvalidSpec``.

    A pool counts when its ``spec.subnet`` equals the subnet's; its entry is its ``ips`` inside the subnet's
    ``ips - excludeIPs``, its other keys (``application``, ``claimedAt``) kept.  Entries carrying an
    ``application`` (auto pools, owned by the SubnetActor) are kept even before their pool exists, because the
    SubnetActor records them first to reserve the IPs.
    """
    name = str(_meta(subnet).get("name", ""))
    try:
        parsed = IPPool.from_object(subnet)  # NB: a subnet's spec has the pool's address fields and rules
    except InvalidSpec as exc:
        raise InvalidSpec(kind=SUBNET, name=name, reason=exc.reason) from None
    available = parsed.total
    status = _status(subnet)
    previous = _decode_controlled(status.get("controlledIPPools"))
    controlled: dict[str, Any] = {}
    for pool in pools:
        spec = pool.get("spec") or {}
        if not same_subnet(str(spec.get("subnet", "")), str((subnet.get("spec") or {}).get("subnet", ""))):
            continue
        pool_name = str(_meta(pool).get("name", ""))
        try:
            ips = IPPool.from_object(pool).total.intersection(available)  # NB: its excludeIPs not, as Spiderpool
        except InvalidSpec:
            continue  # NB: a pool we cannot read holds nothing we can count; its own status says why
        stored = previous.get(pool_name)
        old: dict[str, Any] = stored if isinstance(stored, dict) else {}
        # NB: the old entry's other keys kept: its ``claimedAt`` keeps a young claim from being trimmed (a deposed
        # leader's resize may still be writing the pool: ``SubnetLedger.record``)
        entry = {**old, "ips": ips.to_strings()}
        if entry.get("application"):
            # NB: the SubnetActor records a growth before the pool holds it, and trims after a shrink
            with contextlib.suppress(*limits.MALFORMED):
                entry["ips"] = ips.union(IPSet.parse(parsed.version, old.get("ips") or [])).to_strings()
        controlled[pool_name] = entry
    for pool_name, old in previous.items():
        if pool_name not in controlled and isinstance(old, dict) and old.get("application"):
            controlled[pool_name] = old
    allocated = IPSet(parsed.version)
    for entry in controlled.values():
        try:
            allocated = allocated.union(IPSet.parse(parsed.version, entry.get("ips") or []))
        except limits.MALFORMED as exc:
            raise InvalidSpec(kind=SUBNET, name=name, reason=f"'status.controlledIPPools': {exc}") from None
    new = {**status, "totalIPCount": size(available), "allocatedIPCount": size(allocated)}
    new.pop("controlledIPPools", None)  # NB: Spiderpool leaves the field out (nil) when no pool is controlled
    if controlled and controlled == previous and "controlledIPPools" in status:
        new["controlledIPPools"] = status["controlledIPPools"]  # same content: keep the stored text as it is
    elif controlled:
        new["controlledIPPools"] = json.dumps(dict(sorted(controlled.items())), separators=(",", ":"))
    return None if new == status else new


def subnet_finalizers(subnet: Obj, pools: Iterable[Obj]) -> list[str] | None:
    """A terminating subnet's finalizers without ours once no pool with its ``spec.subnet`` is left; else ``None``."""
    finalizers = list(_meta(subnet).get("finalizers") or [])
    if not terminating(subnet) or FINALIZER not in finalizers:
        return None
    cidr = str((subnet.get("spec") or {}).get("subnet", ""))
    if any(same_subnet(str((p.get("spec") or {}).get("subnet", "")), cidr) for p in pools):
        return None
    return [f for f in finalizers if f != FINALIZER]
