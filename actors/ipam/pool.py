"""PoolActor: the one task that allocates from and releases to one SpiderIPPool in this process.

Owns the pool's cached ledger and the group commit (DESIGN §4): it drains every queued request, folds them
through the pure ``PoolLedger``, writes the pool status **once**, and only then answers.  How it writes
depends on the store:
- one with a write lock of its own (the embedded file, ``update_status_atomically``): the batch is folded and
  written inside that one transaction, against the pool as stored; agents sharing the file never conflict;
- any other (the API server): the write is guarded by the resourceVersion the ledger was read at; on a
  conflict it re-reads and re-applies the same batch, with jittered backoff, until a time budget runs out,
  then the whole batch fails with ``StaleWrite`` (CNI 11).  A batch that writes nothing is answered only after
  a read confirms the ledger is still current.
Either way a ledger another agent has overtaken is levelled with the stored pool (``PoolLedger.catch_up``),
not decoded anew.  No address leaves the actor before it is durable; pools serialize independently.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

import attrs
import outcome
import trio

from actors.runtime.mailbox import Reply, drain
from actors.stores.port import AtomicStatusUpdate, Conflict, NotFound, Obj, Store
from spider.addr import IPSet, ip_to_int
from spider.errors import ActorUnavailable, PoolNotFound, PoolTooLarge, SpiderError, StaleWrite
from spider.pool import KIND, Owner, PoolLedger, ReservedIP, Route, reserved_set

log = logging.getLogger(__name__)


@attrs.frozen
class Allocation:
    """An address handed out by a pool, with what the interface needs to use it."""

    pool: str
    version: int
    address: str  # ip/prefix
    gateway: str | None
    routes: tuple[Route, ...]
    fresh: bool = attrs.field(default=True, eq=False)
    """Taken by this request; ``False`` when the owner already held it (a repeated ADD): undo must not free it."""

    @property
    def ip(self) -> str:
        """The bare address."""
        return self.address.partition("/")[0]


@attrs.frozen
class Allocate:
    """Give ``owner`` an address (or the one it already holds)."""

    owner: Owner
    reply: Reply[Allocation]
    avoid: IPSet | None = None
    """Addresses this pool shares with an overlapping pool: never handed out (``spider.pool.contested``)."""


@attrs.frozen
class Release:
    """Free the address an owner key holds; with a container ID, only if that sandbox holds it."""

    key: tuple[str, str]
    container_id: str
    reply: Reply[str | None]


@attrs.frozen
class ReleaseIPs:
    """Free addresses whose records still name the given pod UID (consistency check, GC)."""

    ips: tuple[tuple[str, str], ...]  # (ip, podUid)
    reply: Reply[int]


@attrs.frozen
class Adopt:
    """Hand an address held by an earlier pod (``previous_uid``) of a fixed-IP workload to ``owner``."""

    ip: str
    previous_uid: str
    owner: Owner
    reply: Reply[bool]


@attrs.frozen
class Inspect:
    """A snapshot of the ledger as last persisted."""

    reply: Reply[PoolLedger]


PoolMsg = Allocate | Release | ReleaseIPs | Adopt | Inspect


@attrs.define
class PoolStatistics:
    """Counters a pool actor keeps for metrics and benchmarks."""

    requests: int = 0
    batches: int = 0
    writes: int = 0
    conflicts: int = 0
    largest_batch: int = 0


@attrs.frozen
class PoolHandle:
    """The only thing other tasks hold: sends requests to the actor and awaits the answers."""

    name: str
    _mailbox: trio.MemorySendChannel[PoolMsg]

    async def allocate(self, owner: Owner, avoid: IPSet | None = None) -> Allocation:
        """The owner's address in this pool; ``PoolExhausted`` and other domain errors raise here."""
        reply = Reply[Allocation].open()
        await self._send(Allocate(owner, reply, avoid))
        return await reply.wait()

    async def release(self, key: tuple[str, str], container_id: str = "") -> str | None:
        """Free the owner's address; returns it, or ``None`` when nothing matched."""
        reply = Reply[str | None].open()
        await self._send(Release(key, container_id, reply))
        return await reply.wait()

    async def release_ips(self, ips: tuple[tuple[str, str], ...]) -> int:
        """Free each ``(ip, podUid)`` whose record still names that UID; returns how many were freed."""
        reply = Reply[int].open()
        await self._send(ReleaseIPs(ips, reply))
        return await reply.wait()

    async def adopt(self, ip: str, previous_uid: str, owner: Owner) -> bool:
        """Re-own a fixed address for the workload's new pod; ``False`` when it is gone or someone else's."""
        reply = Reply[bool].open()
        await self._send(Adopt(ip, previous_uid, owner, reply))
        return await reply.wait()

    async def inspect(self) -> PoolLedger:
        """A copy of the ledger as the actor last persisted it."""
        reply = Reply[PoolLedger].open()
        await self._send(Inspect(reply))
        return await reply.wait()

    async def _send(self, msg: PoolMsg) -> None:
        try:
            await self._mailbox.send(msg)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ActorUnavailable(actor=f"pool/{self.name}") from None


@attrs.define
class PoolActor:
    """Owns one pool's ledger in this process; run it with ``nursery.start(actor.run)``."""

    name: str
    store: Store
    mailbox: trio.MemoryReceiveChannel[PoolMsg]
    max_batch: int = 256
    conflict_budget: float = 20.0
    """Seconds a batch may spend losing write races before it fails with ``StaleWrite`` (CNI 11)."""
    default_cooldown: float = 0.0
    """Seconds a released address rests before reuse, unless the pool says otherwise (0: reuse at once)."""
    clock: Callable[[], float] = time.time
    """Wall-clock seconds: release times are compared across agents on different machines."""
    max_status_bytes: int | None = None
    """The most the pool's ``allocatedIPs`` plus ``releasedIPs`` may take; an allocation that would pass it
    fails with ``PoolTooLarge`` (permanent).  ``None``: no limit (the embedded store holds any size)."""
    stats: PoolStatistics = attrs.field(factory=PoolStatistics)
    _ledger: PoolLedger | None = None
    _version: str = ""
    _stale: PoolLedger | None = None
    """The ledger a lost write race left behind: never served, only lends its decoded records to the re-read."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the mailbox until every handle is closed (the graceful drain) or we are cancelled."""
        task_status.started()
        async for first in self.mailbox:
            batch = drain(self.mailbox, first, self.max_batch)
            self.stats.requests += len(batch)
            self.stats.batches += 1
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
            try:
                await self._commit(batch)
            except BaseException:
                self._ledger = None  # NB: it may hold this batch unwritten; whoever runs next must re-read
                raise
            finally:  # crash or cancel: nobody may wait forever
                for msg in batch:
                    msg.reply.error(ActorUnavailable(actor=f"pool/{self.name}"))

    async def _fetch(self) -> Obj:
        try:
            return await self.store.get(KIND, self.name)
        except NotFound:  # the domain error, not the store's (CNI 101, not 999)
            raise PoolNotFound(pool=self.name) from None

    async def _load(self) -> None:
        obj = await self._fetch()
        self._ledger = self._read(obj)
        self._version = obj["metadata"]["resourceVersion"]

    def _read(self, stored: Obj) -> PoolLedger:
        """A ledger of the stored pool; one a lost race left behind is levelled with it, not decoded anew."""
        stale, self._stale = self._stale, None
        return stale.catch_up(stored) if stale is not None else PoolLedger.from_object(stored)

    async def _answers_need_a_fresh_ledger(self, batch: list[PoolMsg]) -> bool:
        """For a batch that writes nothing: whether its answers came from a ledger that is out of date.

        An address handed out without a write must not come from a ledger another process has since changed
        (GC freed it, someone else took it); a failure (exhausted) must not either.
        """
        if not any(isinstance(msg, Allocate | Adopt) for msg in batch):
            return False
        return bool((await self._fetch())["metadata"]["resourceVersion"] != self._version)

    async def _reservations(self) -> list[ReservedIP]:
        """SpiderReservedIPs apply to every pool of their family at allocation time: read them per batch."""
        parsed = []
        for obj in (await self.store.list("SpiderReservedIP")).items:
            try:
                parsed.append(ReservedIP.from_object(obj))
            except SpiderError as exc:  # admission keeps bad ones out; one that slipped in must not stop us
                log.warning("ignoring invalid SpiderReservedIP: %s", exc)
        return parsed

    async def _commit(self, batch: list[PoolMsg]) -> None:
        atomically = getattr(self.store, "update_status_atomically", None)
        if atomically is not None and not all(isinstance(msg, Inspect) for msg in batch):
            await self._commit_atomically(batch, atomically)
        else:  # NB: also a batch of snapshots only: it writes nothing, so it need not take the file's lock
            await self._commit_optimistically(batch)

    async def _commit_atomically(self, batch: list[PoolMsg], atomically: AtomicStatusUpdate) -> None:
        """A store that can (the embedded one) reads, folds and writes the batch under its write lock: one
        write, never a conflict, and the answers always come from the stored pool as it is now."""
        reserved = await self._reservations() if any(isinstance(msg, Allocate) for msg in batch) else None
        results: list[tuple[outcome.Outcome[Any], bool]] = []
        try:
            if self._ledger is None:  # NB: decode a big pool before taking the lock; the lock only catches up
                await self._load()
        except SpiderError as exc:
            for msg in batch:
                msg.reply.error(exc)
            return

        def change(stored: Obj) -> Obj | None:  # NB: in the store's worker thread; this actor is awaiting it
            version = stored["metadata"]["resourceVersion"]
            if self._ledger is None:
                self._ledger = self._read(stored)
            elif version != self._version:
                self._ledger = self._ledger.catch_up(stored)  # NB: another agent wrote: level with it
            self._version = version
            ledger = self._ledger
            if reserved is not None:
                ledger.set_reserved(reserved_set(ledger.pool.version, reserved))
            results[:] = self._fold(ledger, batch)
            return ledger.to_status() if any(changed for _, changed in results) else None

        try:
            written = await atomically(KIND, self.name, change)
        except SpiderError as exc:
            self._ledger = None  # NB: it may hold the batch unwritten
            error = PoolNotFound(pool=self.name) if isinstance(exc, NotFound) else exc
            for msg in batch:
                msg.reply.error(error)
            return
        if written["metadata"]["resourceVersion"] != self._version:
            self.stats.writes += 1
            self._version = written["metadata"]["resourceVersion"]
        for msg, (result, _) in zip(batch, results, strict=True):
            msg.reply.resolve(result)

    async def _commit_optimistically(self, batch: list[PoolMsg]) -> None:
        """Any store: fold the batch into the ledger and write it guarded by the version it was read at; on a
        conflict re-read and fold again, within ``conflict_budget``."""
        deadline = trio.current_time() + self.conflict_budget
        delay = 0.005
        while True:
            try:
                loaded_now = self._ledger is None
                if self._ledger is None:
                    await self._load()
                assert self._ledger is not None
                if any(isinstance(msg, Allocate) for msg in batch):
                    self._ledger.set_reserved(reserved_set(self._ledger.pool.version, await self._reservations()))
                results = self._fold(self._ledger, batch)
                if any(changed for _, changed in results):
                    await self._write(self._ledger)
                elif not loaded_now and await self._answers_need_a_fresh_ledger(batch):
                    self._stale, self._ledger = self._ledger, None
                    continue
            except Conflict:
                self.stats.conflicts += 1
                # NB: the ledger holds the failed batch; re-read and re-apply from scratch (reusing what still matches)
                self._stale, self._ledger = self._ledger, None
                if trio.current_time() + delay > deadline:
                    stale = StaleWrite(kind=KIND, name=self.name, sent_version=self._version)
                    for msg in batch:
                        msg.reply.error(stale)
                    return
                await trio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 0.5)
                continue
            except SpiderError as exc:  # pool gone, spec invalid, store down: the whole batch fails
                self._ledger = None
                for msg in batch:
                    msg.reply.error(exc)
                return
            for msg, (result, _) in zip(batch, results, strict=True):
                msg.reply.resolve(result)  # only now: the write is durable
            return

    async def _write(self, ledger: PoolLedger) -> None:
        body = {
            "apiVersion": "spiderpool.spidernet.io/v2beta1",
            "kind": KIND,
            "metadata": {"name": self.name, "resourceVersion": self._version},
            "status": ledger.to_status(),
        }
        self.stats.writes += 1
        try:
            written = await self.store.update_status(body)
        except NotFound:  # deleted since we read it: the domain error, not the store's (CNI 101, not 999)
            raise PoolNotFound(pool=self.name) from None
        self._version = written["metadata"]["resourceVersion"]

    def _fold(self, ledger: PoolLedger, batch: list[PoolMsg]) -> list[tuple[outcome.Outcome[Any], bool]]:
        """Fold a batch in order; a new record that would push the status past ``max_status_bytes`` is refused
        (counting what the batch adds, not what it frees: the bound holds whatever order the writes land in)."""
        limit = self.max_status_bytes
        room = 0 if limit is None else limit - ledger.status_bytes()
        results: list[tuple[outcome.Outcome[Any], bool]] = []
        for msg in batch:
            if limit is not None and isinstance(msg, Allocate) and ledger.lookup(msg.owner.key) is None:
                need = ledger.record_bytes(msg.owner)
                if need > room:
                    too_large = PoolTooLarge(pool=self.name, records=len(ledger.records), limit=limit)
                    results.append((outcome.Error(too_large), False))
                    continue
                room -= need
            results.append(self._apply(ledger, msg))
        return results

    def _apply(self, ledger: PoolLedger, msg: PoolMsg) -> tuple[outcome.Outcome[Any], bool]:
        """Fold one request into the ledger; domain errors become values, bugs stay exceptions."""
        try:
            match msg:
                case Allocate(owner=owner, avoid=avoid):
                    cooldown = ledger.pool.cooldown if ledger.pool.cooldown is not None else self.default_cooldown
                    held = ledger.lookup(owner.key) is not None
                    ip, changed = ledger.allocate(owner, now=self.clock(), cooldown=cooldown, avoid=avoid)
                    pool = ledger.pool
                    return outcome.Value(
                        Allocation(pool.name, pool.version, ledger.address(ip), pool.gateway, pool.routes, not held)
                    ), changed
                case Release(key=key, container_id=container_id):
                    freed = ledger.release(key, container_id, now=self.clock())
                    return outcome.Value(None if freed is None else ledger.address(freed)), freed is not None
                case ReleaseIPs(ips=ips):
                    now = self.clock()
                    count = sum(ledger.release_ip(ip_to_int(ip, ledger.pool.version), uid, now=now) for ip, uid in ips)
                    return outcome.Value(count), count > 0
                case Adopt(ip=ip, previous_uid=previous_uid, owner=owner):
                    held, changed = ledger.adopt(ip_to_int(ip, ledger.pool.version), previous_uid, owner)
                    return outcome.Value(held), changed
                case Inspect():
                    return outcome.Value(ledger.copy()), False
        except SpiderError as exc:
            return outcome.Error(exc), False
        raise AssertionError(f"unhandled message {msg!r}")


def open_pool(
    name: str, store: Store, *, max_batch: int = 256, default_cooldown: float = 0.0
) -> tuple[PoolHandle, PoolActor]:
    """A handle and its actor; the mailbox outlives any one ``run()``, so handles survive restarts."""
    send, recv = trio.open_memory_channel[PoolMsg](max_batch)
    return PoolHandle(name, send), PoolActor(name, store, recv, max_batch, default_cooldown=default_cooldown)
