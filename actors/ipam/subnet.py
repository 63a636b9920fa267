"""SubnetActor: the one task that hands a SpiderSubnet's addresses to its pools (DESIGN's third kind of actor).

Owns one subnet's ``controlledIPPools`` while the controller leads: it drains every queued request (claim
addresses for a pool, record a pool's ranges after a shrink or adoption, release a deleted pool's ranges),
folds them through the pure ``SubnetLedger`` against the subnet as stored, writes the status **once**, and
only then answers, so an address is promised to a pool only after the promise is durable.  Like PoolActor:
on a store with its own write lock (the embedded file) the batch is folded and written inside one
transaction; on any other the write is guarded by the resourceVersion it read, and a conflict re-reads and
re-folds the same batch until ``conflict_budget`` runs out (then ``StaleWrite``, retried by the caller).

Each batch reads the pools of the subnet's CIDR (their addresses are never handed out again, recorded or not
yet: a manual pool created a moment ago counts) and the SpiderReservedIPs of its family.

Also owns ``SubnetRegistry``: one supervised actor per subnet, started by the first request for it.
"""

from __future__ import annotations

import functools
import logging
import random
from typing import Any

import attrs
import outcome
import trio

from actors.runtime.mailbox import Reply, drain
from actors.runtime.supervisor import Supervisor
from actors.stores.port import AtomicStatusUpdate, Conflict, NotFound, Obj, Store
from spider.addr import IPSet
from spider.errors import ActorUnavailable, AllocationError, SpiderError, StaleWrite
from spider.pool import IPPool, ReservedIP, reserved_set
from spider.reconcile import same_subnet
from spider.subnet import KIND, SubnetLedger

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
    """Set ``pool``'s entry to ``ips`` (after its spec shrank, or a manual pool is adopted)."""

    pool: str
    application: str | None
    ips: IPSet
    reply: Reply[bool]


@attrs.frozen
class Release:
    """Forget a deleted pool: its addresses are free again."""

    pool: str
    reply: Reply[bool]


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

    async def record(self, pool: str, application: str | None, ips: IPSet) -> bool:
        """Record ``pool`` as holding exactly ``ips``; whether the status changed."""
        reply = Reply[bool].open()
        await self._registry.deliver(self.name, Record(pool, application, ips, reply))
        return await reply.wait()

    async def release(self, pool: str) -> bool:
        """Forget ``pool``'s entry; whether there was one."""
        reply = Reply[bool].open()
        await self._registry.deliver(self.name, Release(pool, reply))
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

    async def _context(self, subnet: Obj) -> tuple[IPSet, IPSet]:
        """The addresses of every pool of the subnet's CIDR, by pool, and the reserved ones of its family."""
        spec = subnet.get("spec") or {}
        version = int(spec.get("ipVersion") or 4)
        taken = IPSet(version)
        for pool in (await self.store.list("SpiderIPPool")).items:
            if not same_subnet(str((pool.get("spec") or {}).get("subnet", "")), str(spec.get("subnet", ""))):
                continue
            try:
                taken = taken.union(IPPool.from_object(pool).ips)
            except SpiderError:
                continue
        reservations = []
        for obj in (await self.store.list("SpiderReservedIP")).items:
            try:
                reservations.append(ReservedIP.from_object(obj))
            except SpiderError:
                continue
        return taken, reserved_set(version, reservations)

    def _fold(self, ledger: SubnetLedger, batch: list[SubnetMsg], taken: IPSet, reserved: IPSet) -> list[Any]:
        results: list[tuple[outcome.Outcome[Any], bool]] = []
        for msg in batch:
            try:
                match msg:
                    case Claim(pool=pool, application=app, count=count, current=current):
                        before = ledger.controlled.get(pool)
                        ips = ledger.claim(pool, app, count, current, taken=taken, reserved=reserved)
                        results.append((outcome.Value(ips), ledger.controlled.get(pool) != before))
                        taken = taken.union(ips)
                    case Record(pool=pool, application=app, ips=ips):
                        changed = ledger.record(pool, app, ips)
                        results.append((outcome.Value(changed), changed))
                    case Release(pool=pool):
                        changed = ledger.release(pool)
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
                stored = await self.store.get(KIND, self.name)
                taken, reserved = await self._context(stored)
                results: list[Any] = []
                if atomically is not None:
                    await atomically(KIND, self.name, functools.partial(self._change, batch, taken, reserved, results))
                else:
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

    def _change(
        self, batch: list[SubnetMsg], taken: IPSet, reserved: IPSet, results: list[Any], stored: Obj
    ) -> Obj | None:
        """Fold the batch into the subnet as ``stored``; the new status, or ``None`` when nothing changed."""
        ledger = SubnetLedger.from_object(stored)
        results[:] = self._fold(ledger, batch, taken, reserved)
        if not any(changed for _, changed in results):
            return None
        return ledger.to_status(stored.get("status"))


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
