"""A SpiderSubnet's addresses and the ranges it has handed to its pools (reference §1.2, §7.1).

Owns ``SubnetLedger``, the pure state a SubnetActor folds requests through: the subnet's usable addresses
(``ips - excludeIPs``), its ``controlledIPPools`` (per pool: the ranges it holds, for auto pools the
application, and our ``claimedAt``: when they were last claimed), the free set (usable minus every controlled
range, minus the addresses of every other pool of the subnet's CIDR, minus reserved addresses), pre-allocation
of the **lowest** free addresses (a pool's stale record re-used only where nothing else holds it now), growth
(old ranges kept, lowest free added), shrink (``shrink``: only unallocated addresses given back, lowest
first), a release that can refuse an entry claimed again since, and the status counts (``totalIPCount``,
``allocatedIPCount`` = addresses handed to pools).  Errors carry Spiderpool's texts.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from typing import Any

import attrs

from spider import limits
from spider.addr import IPSet
from spider.errors import AllocationError, InvalidSpec
from spider.pool import MAX_COUNT, IPPool

KIND = "SpiderSubnet"


@attrs.define(auto_exc=True, kw_only=True)
class InsufficientSubnetIPs(AllocationError):
    """The subnet has fewer free addresses than a pool needs (Spiderpool's text)."""

    subnet: str
    required: int
    left: int

    def __str__(self) -> str:
        return (
            f"insufficient subnet FreeIPs, required '{self.required}' but only left '{self.left}' "
            f"(SpiderSubnet {self.subnet})"
        )


@attrs.define(auto_exc=True, kw_only=True)
class FreeIPsNotEnough(AllocationError):
    """A pool cannot shrink that far: too few of its addresses are unallocated (``ErrFreeIPsNotEnough``)."""

    pool: str
    required: int
    free: int

    def __str__(self) -> str:
        return (
            f"IPPool available free IPs are not enough: IPPool {self.pool} must give back '{self.required}' "
            f"unallocated IPs but only has '{self.free}'"
        )


@attrs.frozen
class Controlled:
    """One entry of ``status.controlledIPPools``: the ranges a pool holds, and its application if auto."""

    ips: IPSet
    application: str | None = None
    claimed_at: str | None = None
    """When the addresses were last claimed (RFC 3339, UTC): an auto pool's are claimed before the pool is
    written, so a young entry without a pool may be a pool about to be created.  Our addition: Spiderpool
    ignores the key (and drops it when its own controller rewrites the entry)."""

    def to_json(self) -> dict[str, Any]:
        """The entry as Spiderpool stores it (plus ``claimedAt`` when known)."""
        out: dict[str, Any] = {"ips": self.ips.to_strings()}
        if self.application:
            out["application"] = self.application
        if self.claimed_at:
            out["claimedAt"] = self.claimed_at
        return out


def _younger(claimed_at: str | None, now: str | None, seconds: float) -> bool:
    """Whether a ``claimedAt`` is less than ``seconds`` before ``now`` (both RFC 3339); unknown: not younger."""
    claimed = parse_rfc3339(claimed_at) if claimed_at else None
    current = parse_rfc3339(now) if now else None
    return claimed is not None and current is not None and current - claimed < seconds


def rfc3339(epoch: float) -> str:
    """``epoch`` (seconds) as a Kubernetes timestamp, UTC, to the second (``2024-05-01T12:00:00Z``)."""
    return datetime.datetime.fromtimestamp(int(epoch), datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> float | None:
    """A Kubernetes timestamp as epoch seconds; ``None`` when it is not one."""
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def lowest(candidates: IPSet, count: int) -> IPSet:
    """The ``count`` lowest addresses of ``candidates`` (fewer when it holds fewer)."""
    taken: list[tuple[int, int]] = []
    left = count
    for start, end in candidates.ranges:
        if left <= 0:
            break
        stop = min(end, start + left - 1)
        taken.append((start, stop))
        left -= stop - start + 1
    return IPSet(candidates.version, tuple(taken))


def decode_controlled(version: int, raw: object) -> dict[str, Controlled]:
    """``status.controlledIPPools`` (a JSON string, or absent) as entries; unreadable entries are dropped."""
    if raw in (None, ""):
        return {}
    try:
        data = json.loads(raw) if isinstance(raw, str) else raw
    except limits.MALFORMED:
        return {}
    if not isinstance(data, dict):
        return {}
    out: dict[str, Controlled] = {}
    for pool, entry in data.items():
        if not isinstance(entry, dict):
            continue
        try:
            ips = IPSet.parse(version, entry.get("ips") or [])
        except limits.MALFORMED:
            continue
        app, claimed = entry.get("application"), entry.get("claimedAt")
        out[str(pool)] = Controlled(ips, str(app) if app else None, claimed if isinstance(claimed, str) else None)
    return out


def shrink(pool: str, current: IPSet, allocated: IPSet, count: int) -> IPSet:
    """``current`` cut down to ``count`` addresses, giving back only unallocated ones, the lowest first.

    ``FreeIPsNotEnough`` when more of them are allocated than ``count`` allows.
    """
    surplus = current.count - count
    if surplus <= 0:
        return current
    spare = current.difference(allocated)
    if spare.count < surplus:
        raise FreeIPsNotEnough(pool=pool, required=surplus, free=spare.count)
    return current.difference(lowest(spare, surplus))


@attrs.define
class SubnetLedger:
    """A subnet's usable addresses and its ``controlledIPPools``, as one SubnetActor holds them."""

    name: str
    version: int
    available: IPSet
    """``ips - excludeIPs``: every address the subnet may hand out."""
    controlled: dict[str, Controlled] = attrs.field(factory=dict)

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> SubnetLedger:
        """From a stored SpiderSubnet; ``InvalidSpec`` when its spec cannot be read."""
        name = str((obj.get("metadata") or {}).get("name", ""))
        try:
            parsed = IPPool.from_object(obj)  # NB: a subnet's spec has the pool's address fields and rules
        except InvalidSpec as exc:
            raise InvalidSpec(kind=KIND, name=name, reason=exc.reason) from None
        raw = (obj.get("status") or {}).get("controlledIPPools")
        return cls(name, parsed.version, parsed.total, decode_controlled(parsed.version, raw))

    def held(self, *, but: str | None = None) -> IPSet:
        """Every address recorded for a pool (except ``but``)."""
        out = IPSet(self.version)
        for pool, entry in self.controlled.items():
            if pool != but:
                out = out.union(entry.ips)
        return out

    def free(self, *, taken: IPSet | None = None, reserved: IPSet | None = None, but: str | None = None) -> IPSet:
        """Usable addresses no pool holds: minus every entry (except ``but``'s), ``taken`` (the addresses of
        pools of this CIDR, recorded or not yet) and ``reserved`` (SpiderReservedIPs)."""
        out = self.available.difference(self.held(but=but))
        for cut in (taken, reserved):
            if cut is not None:
                out = out.difference(cut)
        return out

    def claim(
        self,
        pool: str,
        application: str | None,
        count: int,
        current: IPSet,
        *,
        taken: IPSet | None = None,
        reserved: IPSet | None = None,
        now: str | None = None,
    ) -> IPSet:
        """Record ``pool`` with ``count`` addresses: its ``current`` ones kept, then the ones already recorded for
        it that nothing else holds now, then the lowest free; returns them, the entry stamped ``claimedAt`` =
        ``now``.  ``InsufficientSubnetIPs`` when the subnet cannot cover it.

        NB: an entry may be stale (its pool deleted, a manual pool created over its addresses since): its
        addresses are re-used only where no other entry, no pool in ``taken`` and no reservation holds them.
        """
        mine = current.intersection(self.available)
        entry = self.controlled.get(pool)
        others = None if taken is None else taken.difference(current)
        need = count - mine.count
        if need > 0 and entry is not None:
            recorded = self.free(taken=others, reserved=reserved, but=pool).intersection(entry.ips)
            mine = mine.union(lowest(recorded.difference(mine), need))
            need = count - mine.count
        if need > 0:
            free = self.free(taken=others, reserved=reserved, but=pool).difference(mine)
            if free.count < need:
                raise InsufficientSubnetIPs(subnet=self.name, required=count, left=free.count + mine.count)
            mine = mine.union(lowest(free, need))
        self.controlled[pool] = Controlled(mine, application, now)
        return mine

    def record(
        self, pool: str, application: str | None, ips: IPSet, *, now: str | None = None, trim_after: float = 0.0
    ) -> bool:
        """Set ``pool``'s entry to ``ips`` (after a shrink, or to adopt a manual pool); whether it changed.

        With ``trim_after`` (seconds), addresses the entry holds beyond ``ips`` are kept while its ``claimedAt``
        is younger than that at ``now``: a claim that recent may belong to a resize whose pool write is still on
        its way (a deposed leader's), and handing its addresses to another pool meanwhile would put them in two.
        """
        old = self.controlled.get(pool)
        if old is not None and trim_after > 0 and _younger(old.claimed_at, now, trim_after):
            ips = ips.union(old.ips)
        new = Controlled(ips.intersection(self.available), application, old.claimed_at if old else None)
        if self.controlled.get(pool) == new:
            return False
        self.controlled[pool] = new
        return True

    def release(self, pool: str, *, unless_claimed_since: str | None = None) -> bool:
        """Forget ``pool`` (deleted); its addresses are free again.  Whether it was forgotten.

        With ``unless_claimed_since`` (the ``claimedAt`` the caller saw, ``""`` for none), the entry is kept
        when it was claimed again since: an agent about to create the pool anew."""
        entry = self.controlled.get(pool)
        if entry is None:
            return False
        if unless_claimed_since is not None and (entry.claimed_at or "") != unless_claimed_since:
            return False
        del self.controlled[pool]
        return True

    def counts(self) -> dict[str, int]:
        """``totalIPCount`` and ``allocatedIPCount`` (addresses handed to pools, not to pods)."""
        return {
            "totalIPCount": min(self.available.count, MAX_COUNT),
            "allocatedIPCount": min(self.held().count, MAX_COUNT),
        }

    def to_status(self, previous: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The subnet's status (other fields of ``previous`` kept); ``controlledIPPools`` left out when empty."""
        out = {k: v for k, v in (previous or {}).items() if k != "controlledIPPools"}
        out.update(self.counts())
        if self.controlled:
            entries = {pool: self.controlled[pool].to_json() for pool in sorted(self.controlled)}
            out["controlledIPPools"] = json.dumps(entries, separators=(",", ":"))
        return out
