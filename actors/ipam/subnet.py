"""SubnetActor: the one task that hands a SpiderSubnet's addresses to its pools (DESIGN's third kind of actor).

Owns one subnet's ``controlledIPPools`` while the controller leads: it drains every queued request (claim
addresses for a pool, record a pool's ranges after a shrink or adoption, release a deleted pool's ranges),
folds them through the pure ``SubnetLedger`` against the subnet as stored, writes the status **once**, and
only then answers, so an address is promised to a pool only after the promise is durable.  Like PoolActor:
on a store with its own write lock (the embedded file) the batch is folded and written inside one
transaction; on any other the write is guarded by the resourceVersion it read, and a conflict re-reads and
re-folds the same batch until ``conflict_budget`` runs out (then ``StaleWrite``, retried by the caller).

Each batch reads the pools whose CIDR overlaps the subnet's (their addresses are never handed out again,
recorded or not yet: a manual pool created a moment ago counts) and the SpiderReservedIPs of its family; on
the embedded store it reads them inside the transaction that writes the status (``read_first``), so no pool
created in between is missed.

Also owns ``SubnetRegistry``: one supervised actor per subnet, started by the first request for it.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import outcome
import trio

from actors.runtime.mailbox import Reply, drain
from actors.runtime.supervisor import Supervisor
from actors.stores.port import AtomicStatusUpdate, Conflict, KindLister, NotFound, Obj, Store
from spider.addr import IPSet, parse_network
from spider.errors import ActorUnavailable, AllocationError, SpiderError, StaleWrite
from spider.overlap import Footprint
from spider.pool import IPPool, ReservedIP, reserved_set
from spider.subnet import KIND, SubnetLedger, rfc3339
from spider.validation import ip_version

log = logging.getLogger(__name__)


@attrs.frozen
class Claim:
    """Give ``pool`` ``count`` addresses, keeping its ``current`` ones (create or grow)."""

    pool: str
    application: str | None
    count: int
    current: IPSet
    reply: Reply[IPSet]


@attrs.frozen
class Record:
    """Set ``pool``'s entry to ``ips`` (after its spec shrank, or a manual pool is adopted); addresses claimed
    less than ``trim_after`` seconds ago stay recorded (``SubnetLedger.record``)."""

    pool: str
    application: str | None
    ips: IPSet
    reply: Reply[bool]
    trim_after: float = 0.0


@attrs.frozen
class Release:
    """Forget a deleted pool: its addresses are free again (unless claimed again since ``unless_claimed_since``,
    the entry's ``claimedAt`` as the sender saw it; ``None``: unconditionally)."""

    pool: str
    reply: Reply[bool]
    unless_claimed_since: str | None = None


@attrs.frozen
class Inspect:
    """The ledger as stored now."""

    reply: Reply[SubnetLedger]


SubnetMsg = Claim | Record | Release | Inspect


@attrs.frozen
class SubnetHandle:
    """What other tasks hold: sends requests to the subnet's actor and awaits the answers."""

    name: str
    _registry: SubnetRegistry

    async def claim(self, pool: str, application: str | None, count: int, current: IPSet) -> IPSet:
        """The addresses ``pool`` holds from now on (``count`` of them), durable in the subnet's status."""
        reply = Reply[IPSet].open()
        await self._registry.deliver(self.name, Claim(pool, application, count, current, reply))
        return await reply.wait()

    async def record(self, pool: str, application: str | None, ips: IPSet, *, trim_after: float = 0.0) -> bool:
        """Record ``pool`` as holding exactly ``ips`` (but what was claimed less than ``trim_after`` seconds ago);
        whether the status changed."""
        reply = Reply[bool].open()
        await self._registry.deliver(self.name, Record(pool, application, ips, reply, trim_after))
        return await reply.wait()

    async def release(self, pool: str, *, unless_claimed_since: str | None = None) -> bool:
        """Forget ``pool``'s entry (kept if claimed again since ``unless_claimed_since``); whether it went."""
        reply = Reply[bool].open()
        await self._registry.deliver(self.name, Release(pool, reply, unless_claimed_since))
        return await reply.wait()

    async def inspect(self) -> SubnetLedger:
        """The subnet's ledger as stored now."""
        reply = Reply[SubnetLedger].open()
        await self._registry.deliver(self.name, Inspect(reply))
        return await reply.wait()


@attrs.define
class SubnetActor:
    """Owns one subnet's hand-outs in this process; run it with ``nursery.start(actor.run)``."""

    name: str
    store: Store
    mailbox: trio.MemoryReceiveChannel[SubnetMsg]
    max_batch: int = 64
    conflict_budget: float = 10.0
    clock: Callable[[], str] = attrs.field(default=lambda: rfc3339(time.time()))
    """Wall-clock time of a claim, stamped on its entry (``claimedAt``)."""
    writes: int = 0
    batches: int = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the mailbox until it is closed or we are cancelled."""
        task_status.started()
        async for first in self.mailbox:
            batch = drain(self.mailbox, first, self.max_batch)
            self.batches += 1
            try:
                await self._commit(batch)
            finally:  # crash or cancel: nobody may wait forever
                for msg in batch:
                    msg.reply.error(ActorUnavailable(actor=f"subnet/{self.name}"))

    async def _context(self, subnet: Obj) -> tuple[Taken, IPSet]:
        """The addresses of every pool whose CIDR overlaps the subnet's, and the reserved ones of its family."""
        pools = (await self.store.list("SpiderIPPool")).items
        reservations = (await self.store.list("SpiderReservedIP")).items
        return taken_and_reserved(subnet, pools, reservations)

    def _fold(self, ledger: SubnetLedger, batch: list[SubnetMsg], taken: Taken, reserved: IPSet) -> list[Any]:
        taken = dict(taken)
        results: list[tuple[outcome.Outcome[Any], bool]] = []
        for msg in batch:
            try:
                match msg:
                    case Claim(pool=pool, application=app, count=count, current=current):
                        before = ledger.controlled.get(pool)
                        others = _union(ledger.version, (held for name, held in taken.items() if name != pool))
                        now = self.clock()
                        ips = ledger.claim(pool, app, count, current, taken=others, reserved=reserved, now=now)
                        results.append((outcome.Value(ips), ledger.controlled.get(pool) != before))
                        taken[pool] = taken.get(pool, IPSet(ledger.version)).union(ips)
                    case Record(pool=pool, application=app, ips=ips, trim_after=trim_after):
                        changed = ledger.record(pool, app, ips, now=self.clock(), trim_after=trim_after)
                        results.append((outcome.Value(changed), changed))
                    case Release(pool=pool, unless_claimed_since=since):
                        changed = ledger.release(pool, unless_claimed_since=since)
                        results.append((outcome.Value(changed), changed))
                    case Inspect():
                        results.append((outcome.Value(attrs.evolve(ledger, controlled=dict(ledger.controlled))), False))
            except SpiderError as exc:
                results.append((outcome.Error(exc), False))
        return results

    async def _commit(self, batch: list[SubnetMsg]) -> None:
        atomically: AtomicStatusUpdate | None = getattr(self.store, "update_status_atomically", None)
        deadline = trio.current_time() + self.conflict_budget
        delay = 0.005
        while True:
            try:
                results: list[Any] = []
                if atomically is not None:  # NB: the pools read in the transaction that records the hand-outs
                    await self._commit_atomically(atomically, batch, results)
                else:
                    stored = await self.store.get(KIND, self.name)
                    taken, reserved = await self._context(stored)
                    status = self._change(batch, taken, reserved, results, stored)
                    if status is not None:
                        await self.store.update_status({**stored, "status": status})
                if any(changed for _, changed in results):
                    self.writes += 1
            except Conflict:
                if trio.current_time() + delay > deadline:
                    stale = StaleWrite(kind=KIND, name=self.name, sent_version="")
                    for msg in batch:
                        msg.reply.error(stale)
                    return
                await trio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 0.5)
                continue
            except NotFound:
                for msg in batch:
                    msg.reply.error(SubnetNotFound(subnet=self.name))
                return
            except SpiderError as exc:
                for msg in batch:
                    msg.reply.error(exc)
                return
            for msg, (result, _) in zip(batch, results, strict=True):
                msg.reply.resolve(result)  # only now: the write is durable
            return

    async def _commit_atomically(
        self, atomically: AtomicStatusUpdate, batch: list[SubnetMsg], results: list[Any]
    ) -> None:
        """Fold and write under the embedded store's write lock, with the pools and reservations read under it
        too: a pool created a moment before cannot slip between the read and the write."""
        context: list[tuple[Taken, IPSet]] = []

        def read_first(every: KindLister) -> None:
            subnet = next((s for s in every(KIND) if _name(s) == self.name), None)
            if subnet is not None:
                context.append(taken_and_reserved(subnet, every("SpiderIPPool"), every("SpiderReservedIP")))

        def change(stored: Obj) -> Obj | None:
            taken, reserved = context[-1]
            return self._change(batch, taken, reserved, results, stored)

        await atomically(KIND, self.name, change, read_first=read_first)

    def _change(
        self, batch: list[SubnetMsg], taken: Taken, reserved: IPSet, results: list[Any], stored: Obj
    ) -> Obj | None:
        """Fold the batch into the subnet as ``stored``; the new status, or ``None`` when nothing changed."""
        ledger = SubnetLedger.from_object(stored)
        results[:] = self._fold(ledger, batch, taken, reserved)
        if not any(changed for _, changed in results):
            return None
        return ledger.to_status(stored.get("status"))


Taken = dict[str, IPSet]
"""The addresses of the pools a subnet must not hand to another pool, by pool name."""


def taken_and_reserved(subnet: Obj, pools: list[Obj], reservations: list[Obj]) -> tuple[Taken, IPSet]:
    """What a subnet may not hand out beyond its own entries: the addresses of every pool whose CIDR overlaps
    the subnet's, by pool (recorded or not yet: a manual pool created a moment ago counts; admission refuses a
    pool of another overlapping CIDR, but one may predate that rule or the subnet) and the reserved ones of its
    family.  A claim for a pool counts every pool's addresses but its own."""
    spec = subnet.get("spec") or {}
    version = ip_version(spec)  # NB: "or 4" once read an IPv6 subnet without ipVersion as IPv4
    try:
        cidr = parse_network(str(spec.get("subnet", "")), strict=False)
    except ValueError:
        cidr = None
    taken: Taken = {}
    for pool in pools:
        try:
            parsed = IPPool.from_object(pool)
        except SpiderError:  # NB: what a pool that does not parse holds (its pods keep it) is taken all the same
            footprint = Footprint.of(pool)
            if cidr is not None and footprint is not None and footprint.version == cidr.version == version:
                taken[footprint.name] = footprint.ips
            continue
        if cidr is not None and parsed.subnet.version == cidr.version == version and parsed.subnet.overlaps(cidr):
            taken[parsed.name] = parsed.ips
    held = []
    for obj in reservations:
        try:
            held.append(ReservedIP.from_object(obj))
        except SpiderError:
            continue
    return taken, reserved_set(version, held)


def _union(version: int, sets: Iterable[IPSet]) -> IPSet:
    out = IPSet(version)
    for one in sets:
        out = out.union(one)
    return out


def _name(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


@attrs.define(auto_exc=True, kw_only=True)
class SubnetNotFound(AllocationError):
    """The SpiderSubnet a request names does not exist."""

    subnet: str

    def __str__(self) -> str:
        return f"SpiderSubnet {self.subnet!r} not found"


@attrs.define
class SubnetRegistry:
    """The subnet actors of this process: one supervised SubnetActor per subnet, started by the first request."""

    store: Store
    supervisor: Supervisor
    conflict_budget: float = 10.0
    actors: dict[str, SubnetActor] = attrs.field(factory=dict)
    _mailboxes: dict[str, trio.MemorySendChannel[SubnetMsg]] = attrs.field(factory=dict)
    _lock: trio.Lock = attrs.field(factory=trio.Lock)

    def get(self, name: str) -> SubnetHandle:
        """The subnet's handle; its actor starts with the first request."""
        return SubnetHandle(name, self)

    async def deliver(self, name: str, msg: SubnetMsg) -> None:
        """Queue ``msg`` for the subnet's actor, starting one if none runs."""
        async with self._lock:
            mailbox = self._mailboxes.get(name)
            if mailbox is None:
                send, recv = trio.open_memory_channel[SubnetMsg](64)
                actor = SubnetActor(name, self.store, recv, conflict_budget=self.conflict_budget)
                await self.supervisor.start(f"subnet/{name}", actor.run)
                self._mailboxes[name], self.actors[name] = send, actor
                mailbox = send
        try:
            await mailbox.send(msg)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ActorUnavailable(actor=f"subnet/{name}") from None
