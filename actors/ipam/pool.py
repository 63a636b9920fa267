"""PoolActor: the one task that allocates from and releases to one SpiderIPPool in this process.

Owns the pool's cached ledger and the group commit (DESIGN §4): it drains every queued request, folds them
through the pure ``PoolLedger``, writes the pool status **once**, and only then answers.  How it writes
depends on the store:
- one with a write lock of its own (the embedded file, ``update_status_atomically``): the batch is folded and
  written inside that one transaction, against the pool as stored; agents sharing the file never conflict;
- any other (the API server): the write is guarded by the resourceVersion the ledger was read at; on a
  conflict it re-reads and re-applies the same batch, with jittered backoff, until a time budget runs out,
  then the whole batch fails with ``StaleWrite`` (CNI 11).  A batch that writes nothing is answered only after
  a read confirms the ledger is still current (a read of the pool's metadata alone: its resourceVersion).
An ADD's last look (``Verify``) knows the version its record was written at (``Allocation.recorded_at``): while
the pool is still at it, that same cheap read answers it, without the records.  On the pool host, looks that
agents forward skip the mailbox (``PoolActor.look``): one such read, shared by every look that arrived while
the previous one was under way, answers each whose pool is still at its version or has since been moved on
only by this actor's own writes of allocations (``OwnWrites``, in ``actors.ipam.looks``), which drop no
record; so the looks of every node cost one read, and never wait for (or split) the batches that write.  The
host knows which nodes its last write will hear looks from (each node it answered an allocation,
``AwaitedLooks``): the first look to arrive waits, briefly, for one from each of the others, so that one read
answers them all rather than one read for the first and another for the rest.  It batches the requests of
every node, waiting (``linger``) for the nodes of its last batches while they are due (``DUE_PACES``).
Either way a ledger another agent has overtaken is levelled with the stored pool (``PoolLedger.catch_up``),
not decoded anew.  No address leaves the actor before it is durable; pools serialize independently.

Also owns ``PoolRegistry``, the process's pool actors: started (under the supervisor) by the first request
for a pool the store holds, stopped when idle or when their pool is gone, so memory follows the pools in use;
and the rule that a big pool is decoded in a worker thread, not the trio thread (``OFF_LOOP_BYTES``).  A
registry may be given a ``route`` (``actors.ipam.remote.PoolForwarder``): its handles then send there, and the
route serves what it cannot forward with this registry's actors.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import attrs
import outcome
import trio

from actors.ipam.looks import AwaitedLooks, OwnWrites
from actors.runtime.fresh import FreshRead
from actors.runtime.mailbox import Paces, Reply, drain, gather
from actors.runtime.supervisor import Supervisor
from actors.stores.port import AtomicStatusUpdate, Conflict, NotFound, Obj, Store
from spider.addr import IPSet
from spider.errors import ActorUnavailable, PoolNotFound, PoolTooLarge, RequestExpired, SpiderError, StaleWrite
from spider.pool import KIND, Owner, PoolLedger, Record, ReservedIP, Route, reserved_set

log = logging.getLogger(__name__)

DEFAULT_MAX_STATUS_BYTES = 1 << 20
"""The agent's default pool status-size cap (1 MiB): well under etcd's 1.5 MiB object limit, with room for the
spec and metadata; the same for the embedded store, so a pool behaves alike on both (docs/operations.md)."""
DEFAULT_IDLE_TIMEOUT = 300.0
"""Seconds a pool actor may go without a request before it stops and frees its ledger."""
OFF_LOOP_BYTES = 32_768
"""A pool whose ``allocatedIPs`` text is longer than this (a few hundred records) is decoded in a worker thread,
not in the trio thread (see docs/benchmarks.md, "Loop stall"); a smaller one decodes faster than a thread wakes."""


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
    recorded_at: str = attrs.field(default="", eq=False)
    """The pool's resourceVersion whose status holds this record (the write, or the read, it was answered
    after): while the pool is still at it, the record still stands (``Verify``); ``""``: unknown."""

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
    sent_at: float = attrs.field(factory=trio.current_time, eq=False)
    """When it was queued (trio clock): its wait in the mailbox is measured from here (``PoolActor.on_wait``)."""
    sender: str = attrs.field(default="", eq=False)
    """The node that forwarded it to the pool host (``""``: asked in this process): the host waits for nodes."""
    expires: float | None = attrs.field(default=None, eq=False)
    """Trio time after which nobody waits for the answer (a forwarded batch: the agent's budget): not applied
    when folded later (``RequestExpired``).  ``None``: always applied."""


@attrs.frozen
class Release:
    """Free the address an owner key holds; with a container ID, only if that sandbox holds it."""

    key: tuple[str, str]
    container_id: str
    reply: Reply[str | None]
    sent_at: float = attrs.field(factory=trio.current_time, eq=False)
    sender: str = attrs.field(default="", eq=False)
    """The node that forwarded it to the pool host (``""``: asked in this process): the host waits for nodes."""
    expires: float | None = attrs.field(default=None, eq=False)
    """Trio time after which nobody waits for the answer (a forwarded batch: the agent's budget): not applied
    when folded later (``RequestExpired``).  ``None``: always applied."""


@attrs.frozen
class ReleaseIPs:
    """Free addresses whose records still name the given pod UID (GC), or still are the given record (reclaim)."""

    ips: tuple[tuple[str, str | Record], ...]  # (ip, podUid or the exact record)
    reply: Reply[int]
    sent_at: float = attrs.field(factory=trio.current_time, eq=False)
    sender: str = attrs.field(default="", eq=False)
    """The node that forwarded it to the pool host (``""``: asked in this process): the host waits for nodes."""
    expires: float | None = attrs.field(default=None, eq=False)
    """Trio time after which nobody waits for the answer (a forwarded batch: the agent's budget): not applied
    when folded later (``RequestExpired``).  ``None``: always applied."""


@attrs.frozen
class Adopt:
    """Hand an address held by an earlier pod (``previous_uid``) of a fixed-IP workload to ``owner``."""

    ip: str
    previous_uid: str
    owner: Owner
    reply: Reply[bool]
    sender: str = attrs.field(default="", eq=False)
    """The node that forwarded it to the pool host (``""``: asked in this process): the host waits for nodes."""
    expires: float | None = attrs.field(default=None, eq=False)
    """Trio time after which nobody waits for the answer (a forwarded batch: the agent's budget): not applied
    when folded later (``RequestExpired``).  ``None``: always applied."""


@attrs.frozen
class Inspect:
    """A snapshot of the ledger as last persisted."""

    reply: Reply[PoolLedger]


@attrs.frozen
class Verify:
    """Whether the owner key still holds this address in the pool as stored now (an ADD's last look)."""

    ip: str
    key: tuple[str, str]
    reply: Reply[bool]
    recorded_at: str = ""
    """``Allocation.recorded_at``: when the pool is still at that version, the answer is yes without reading
    (or decoding) its records."""
    sender: str = attrs.field(default="", eq=False)
    """The node that forwarded it to the pool host (``""``: asked in this process)."""


PoolMsg = Allocate | Release | ReleaseIPs | Adopt | Inspect | Verify


@attrs.define
class PoolStatistics:
    """Counters a pool actor keeps for metrics and benchmarks."""

    requests: int = 0
    batches: int = 0
    writes: int = 0
    conflicts: int = 0
    largest_batch: int = 0
    looks: int = 0
    """``Verify`` requests (an ADD's last look, a read): not counted in ``requests`` and ``batches``."""
    allocation_conflicts: int = 0
    """Lost write races of batches that held an allocation (``conflicts`` counts every lost race)."""
    release_conflicts: int = 0
    """Lost write races of batches that held a release."""
    version_reads: int = 0
    """Reads of the pool's version that answered the looks the pool host was sent (``PoolActor.look``): one
    per write when every look of the write shares it (``AwaitedLooks``)."""


def is_big(stored: Obj) -> bool:
    """Whether decoding this stored pool would stall the trio loop (``OFF_LOOP_BYTES``)."""
    return len(str((stored.get("status") or {}).get("allocatedIPs") or "")) > OFF_LOOP_BYTES


async def decode_ledger(stored: Obj) -> PoolLedger:
    """``PoolLedger.from_object``, in a worker thread when the pool is big (for readers outside the actor)."""
    if not is_big(stored):
        return PoolLedger.from_object(stored)
    return await trio.to_thread.run_sync(PoolLedger.from_object, stored)


class PoolRoute(Protocol):
    """Where a registry's handles send their requests instead of its own actors (``actors.ipam.remote``)."""

    async def deliver(self, name: str, msg: PoolMsg, /) -> None:
        """Queue ``msg`` for pool ``name`` somewhere that will answer it."""


class PoolMailbox(Protocol):
    """Where a handle puts requests: the actor's own channel, or the registry, which finds the actor."""

    async def send(self, msg: PoolMsg, /) -> None:
        """Queue one request; ``trio.BrokenResourceError`` or ``trio.ClosedResourceError`` when nobody serves it."""


@attrs.frozen
class PoolHandle:
    """The only thing other tasks hold: sends requests to the actor and awaits the answers."""

    name: str
    _mailbox: PoolMailbox

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

    async def release_ips(self, ips: tuple[tuple[str, str | Record], ...]) -> int:
        """Free each ``(ip, podUid)`` whose record still names that UID, or ``(ip, record)`` whose record still is
        exactly that one; returns how many were freed."""
        reply = Reply[int].open()
        await self._send(ReleaseIPs(ips, reply))
        return await reply.wait()

    async def adopt(self, ip: str, previous_uid: str, owner: Owner) -> bool:
        """Re-own a fixed address for the workload's new pod; ``False`` when it is gone or someone else's."""
        reply = Reply[bool].open()
        await self._send(Adopt(ip, previous_uid, owner, reply))
        return await reply.wait()

    async def verify(self, ip: str, key: tuple[str, str], recorded_at: str = "") -> bool:
        """Whether ``key`` still holds ``ip`` in the pool as stored now (read afresh, not from this actor's ledger);
        ``recorded_at``: a version known to hold the record (``Allocation.recorded_at``), which spares the read
        of the records while the pool is still at it."""
        reply = Reply[bool].open()
        await self._send(Verify(ip, key, reply, recorded_at))
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


LINGER_MEMORY = 8
"""How many recent batch sizes a lingering actor remembers: it expects as many requests as the largest held."""
SENDER_MEMORY = 2
"""How many recent batches a lingering pool host remembers the nodes of: it waits for every one of them."""
QUIET_SHARE = 0.2
"""Once all but a tenth (at least all but one) of the nodes a pool host waits for are in, it waits only while
requests keep coming, each within this share of its linger (50 ms of 0.25 s): the node or two still missing are
then busy with a request of the round before (an ADD's endpoint or last look, a slow plugin start), and what
they send next cannot come before this batch is written; waiting out the whole linger for them cost every
request in the batch a quarter of a second (``docs/benchmarks.md``).  Not sooner: two groups of nodes out of
step must still wait for each other, to meet again in one write.  In the traced 1000-pod runs, once nine of ten
were in, the tenth, when it came, always came within 50 ms."""
DUE_PACES = 1.5
"""A pool host waits for a node of its last batches only while the node is due: this many of its pace (the time
between its last two batches' requests) past its last request, at most a linger past it (``Paces``); then only
while requests keep coming, each within the quiet pause (``QUIET_SHARE``).  So the last batch of a burst does
not wait out the linger for nodes that are done; two groups out of step, each due within its own pace, still
meet.  The first forwarded request, or the first after a lull (every node of late overdue), may begin a burst:
its batch takes every request that comes within the quiet pause of the one before, so that it holds the
burst's whole first wave, not just the nodes that happened to arrive first."""


def _looks_to_come(
    batch: list[PoolMsg], results: list[tuple[outcome.Outcome[Any], bool]]
) -> dict[str, set[tuple[str, str]]]:
    """Per node, the owner keys of the allocations a batch answered it: each of those ADDs will send its look."""
    nodes: dict[str, set[tuple[str, str]]] = {}
    for msg, (result, _) in zip(batch, results, strict=True):
        if isinstance(msg, Allocate) and msg.sender and isinstance(result, outcome.Value):
            nodes.setdefault(msg.sender, set()).add(msg.owner.key)
    return nodes


def _missing_due(paces: Paces, expected: frozenset[str], cap: float, batch: list[PoolMsg]) -> float:
    """Until when the nodes of ``expected`` that ``batch`` has nothing from yet are due (``DUE_PACES``)."""
    return paces.until(expected - {_sender(msg) for msg in batch}, cap)


def _sender(msg: PoolMsg) -> str:
    return str(getattr(msg, "sender", ""))


def _senders(batch: list[PoolMsg]) -> int:
    """How many nodes the requests of a batch came from (those asked in this process not counted)."""
    return len({_sender(msg) for msg in batch} - {""})


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
    idle_timeout: float | None = None
    """Seconds without a request after which ``run`` closes the mailbox, drops the ledger and returns (the
    registry starts a successor on the next request).  ``None``: serve until the mailbox is closed."""
    linger: float = 0.0
    """At most the seconds the actor waits, once busy, so that requests arriving from many nodes share one
    write (the pool host); it writes as soon as they are in.  Forwarded requests name their node (``sender``):
    the actor waits for a request from every node its last ``SENDER_MEMORY`` batches came from while the node is
    due (``DUE_PACES``), so two groups of nodes that fell out of step meet again in one write; the first
    forwarded request, or the first after a lull, waits only while more keep coming (``quiet_share``).
    Otherwise it waits for as many requests as the largest of its last ``LINGER_MEMORY`` batches held, and a
    lone request is never held.  Nor is a batch that begins with a read (``Verify``, ``Inspect``).  0: drain at
    once."""
    quiet_share: float = QUIET_SHARE
    """A pool host that has all but a tenth of the nodes it waits for, or is past their due time, or may be at
    the start of a burst, waits only while requests keep coming, each within this share of ``linger``."""
    gone: bool = False
    """The last batch found the pool deleted: ``run`` returns as soon as the mailbox is empty."""
    stats: PoolStatistics = attrs.field(factory=PoolStatistics)
    on_wait: Callable[[PoolMsg, float], None] | None = None
    """Told each request's wait in the mailbox (seconds from ``sent_at`` to its batch), for the metrics."""
    own_writes: OwnWrites = attrs.field(factory=OwnWrites)
    awaited_looks: AwaitedLooks = attrs.field(factory=AwaitedLooks)
    _ledger: PoolLedger | None = None
    _version: str = ""
    _stale: PoolLedger | None = None
    """The ledger a lost write race left behind: never served, only lends its decoded records to the re-read."""
    _versions: FreshRead[str] | None = None
    """The shared reads of the pool's version that ``look`` answers with."""
    _reserved_early: list[ReservedIP] | None = None
    """The SpiderReservedIPs, read while the batch about to be folded was gathering (``linger``)."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the mailbox until every handle is closed (the graceful drain), the actor has been idle for
        ``idle_timeout`` or its pool is gone (then the mailbox is closed first), or we are cancelled."""
        task_status.started()
        try:
            await self._serve()
        except BaseException:  # NB: cancelled (the host steps down) or crashed: nobody may wait forever
            self._refuse_queued()
            raise

    def _refuse_queued(self) -> None:
        """Answer every request still queued ``ActorUnavailable`` (its sender serves it elsewhere)."""
        with contextlib.suppress(trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            while True:
                self.mailbox.receive_nowait().reply.error(ActorUnavailable(actor=f"pool/{self.name}"))

    async def _serve(self) -> None:
        recent: collections.deque[int] = collections.deque([1], maxlen=LINGER_MEMORY)
        nodes: collections.deque[frozenset[str]] = collections.deque(maxlen=SENDER_MEMORY)
        paces = Paces(DUE_PACES)
        while (first := await self._next()) is not None:
            self.gone = False
            batch = [first]
            count: Callable[[list[PoolMsg]], int] = len
            expect, nearly, due = max(recent), None, None  # NB: the largest of late, see LINGER_MEMORY
            if all(nodes) and (nodes or _sender(first)):  # NB: forwarded: the nodes of late, however many each sends
                expected, count = frozenset().union(*nodes), _senders
                due = functools.partial(_missing_due, paces, expected, self.linger)
                if due(batch) > trio.current_time():
                    expect = len(expected)
                    nearly = expect - max(1, expect // 10)
                else:  # NB: the first, or after a lull (every node of late overdue): a burst may begin, take its wave
                    expect = self.max_batch
            try:
                # NB: under load only; a lone request asked in this process is never delayed (a forwarded one only by
                # the quiet pause after a lull), nor a read (a look the host's ``look`` left here: it writes nothing,
                # so it has nothing to share)
                if expect > 1 and self.linger > 0 and not isinstance(first, Verify | Inspect):
                    await self._gather(batch, expect, count, nearly, due)
                else:
                    batch = drain(self.mailbox, first, self.max_batch)
            except BaseException:  # cancelled while lingering: nobody may wait forever
                for msg in batch:
                    msg.reply.error(ActorUnavailable(actor=f"pool/{self.name}"))
                raise
            looks = sum(isinstance(msg, Verify) for msg in batch)
            for msg in batch:
                if isinstance(msg, Release):  # NB: an ADD giving back what it got: it will not look
                    self.awaited_looks.forget(msg.key)
            now = trio.current_time()
            if looks < len(batch):  # NB: a batch of looks alone says nothing of the writes to wait for
                recent.append(len(batch))
                nodes.append(frozenset({_sender(msg) for msg in batch} - {""}))
                came = [
                    (_sender(m), getattr(m, "sent_at", now)) for m in batch if _sender(m) and not isinstance(m, Verify)
                ]
                paces.note(came, keep=frozenset().union(*nodes))
            self.stats.looks += looks
            self.stats.requests += len(batch) - looks
            self.stats.batches += looks < len(batch)
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch) - looks)
            if self.on_wait is not None:
                for msg in batch:
                    self.on_wait(msg, now - getattr(msg, "sent_at", now))
            try:
                await self._commit(batch)
            except BaseException:
                self._ledger = None  # NB: it may hold this batch unwritten; whoever runs next must re-read
                raise
            finally:  # crash or cancel: nobody may wait forever
                self._reserved_early = None  # NB: this batch's alone
                for msg in batch:
                    msg.reply.error(ActorUnavailable(actor=f"pool/{self.name}"))

    async def _gather(
        self,
        batch: list[PoolMsg],
        expect: int,
        count: Callable[[list[PoolMsg]], int],
        nearly: int | None,
        due: Callable[[list[PoolMsg]], float] | None,
    ) -> None:
        """Linger for the rest of a batch (``linger``; once ``nearly`` are in, or past ``due``, only while more
        keep coming: see ``QUIET_SHARE`` and ``DUE_PACES``); the SpiderReservedIPs a batch of allocations avoids
        are read meanwhile, not after it."""
        self._reserved_early = None
        quiet = self.linger * self.quiet_share
        async with trio.open_nursery() as nursery:
            if isinstance(batch[0], Allocate):
                nursery.start_soon(self._read_reservations_early)
            await gather(
                self.mailbox, batch, self.max_batch, expect=expect, within=self.linger, count=count, nearly=nearly,
                quiet=quiet, due=due,
            )  # fmt: skip

    async def _next(self) -> PoolMsg | None:
        """The next request, or ``None`` to stop: the mailbox is closed, or it stayed empty for ``idle_timeout``
        (at once when the pool is gone).  Stopping closes the mailbox in the same step as finding it empty (no
        checkpoint between), so a request is either queued here and served, or refused to its sender, whose
        registry hands it to a successor; the ledger is dropped with the actor."""
        wait = 0.0 if self.gone else self.idle_timeout
        try:
            if wait is None:
                return await self.mailbox.receive()
            with trio.move_on_after(wait):
                return await self.mailbox.receive()
            return self.mailbox.receive_nowait()
        except trio.EndOfChannel:
            return None
        except trio.WouldBlock:
            self.mailbox.close()
            self._ledger = self._stale = None
            return None

    async def prime(self, stored: Obj) -> None:
        """Start from the pool as just read (by the registry, which read it to know it exists)."""
        self._ledger = await self._read_off_loop(stored)
        self._version = stored["metadata"]["resourceVersion"]

    async def _fetch(self) -> Obj:
        try:
            return await self.store.get(KIND, self.name)
        except NotFound:  # the domain error, not the store's (CNI 101, not 999)
            self.gone = True
            raise PoolNotFound(pool=self.name) from None

    async def _load(self) -> None:
        obj = await self._fetch()
        self._ledger = await self._read_off_loop(obj)
        self._version = obj["metadata"]["resourceVersion"]

    async def _read_off_loop(self, stored: Obj) -> PoolLedger:
        """``_read``, in a worker thread for a big pool: decoding 20,000 records takes a quarter of a second."""
        if not is_big(stored):
            return self._read(stored)
        return await trio.to_thread.run_sync(self._read, stored)  # NB: the actor awaits it: nothing else runs _read

    def _read(self, stored: Obj) -> PoolLedger:
        """A ledger of the stored pool; one a lost race left behind is levelled with it, not decoded anew."""
        stale, self._stale = self._stale, None
        return stale.catch_up(stored) if stale is not None else PoolLedger.from_object(stored)

    async def _current_version(self) -> str:
        """The pool's resourceVersion as stored now: a read of its metadata alone, not of its records."""
        try:
            return str((await self.store.get_metadata(KIND, self.name))["resourceVersion"])
        except NotFound:  # the domain error, not the store's (CNI 101, not 999)
            self.gone = True
            raise PoolNotFound(pool=self.name) from None

    async def _version_for_looks(self) -> str:
        self.stats.version_reads += 1
        return await self._current_version()

    async def _confirm_looks(self, batch: list[PoolMsg]) -> list[PoolMsg]:
        """A batch of looks (``Verify``) that each know a version holding their record: those the pool is still
        at are answered yes after one read of the pool's version alone; returns what is left to answer from
        the records (everything, for any other batch).  When something is left and the ledger is older than
        the pool, the ledger is set aside to be levelled with the pool on the next read, not checked again."""
        if not batch or not all(isinstance(msg, Verify) and msg.recorded_at for msg in batch):
            return batch
        try:
            current = await self._current_version()
        except SpiderError as exc:
            for msg in batch:
                msg.reply.error(exc)
            return []
        rest: list[PoolMsg] = []
        for msg in batch:
            assert isinstance(msg, Verify)
            if msg.recorded_at == current:
                msg.reply.resolve(outcome.Value(True))
            else:
                rest.append(msg)
        if rest and self._ledger is not None and self._version != current:
            self._stale, self._ledger = self._ledger, None
        return rest

    async def look(self, looks: list[Verify]) -> list[Verify]:
        """Answer last looks outside the mailbox, from the caller's task: after one read of the pool's version
        (made after this call began, shared with concurrent callers), each look whose version the pool is still
        at, or has left only through ``own_writes`` that kept every record, is answered yes.  Returns the rest
        (no version, another writer came between, the read failed) for the mailbox, where the ledger answers."""
        if self._versions is None:
            self._versions = FreshRead(self._version_for_looks)
        await self.awaited_looks.arrive(looks)
        try:
            current = await self._versions.read()
        except SpiderError:
            return looks
        rest = []
        for msg in looks:
            if msg.recorded_at and self.own_writes.kept_since(msg.recorded_at, current):
                self.stats.looks += 1
                msg.reply.resolve(outcome.Value(True))
            else:
                rest.append(msg)
        return rest

    async def _answers_need_a_fresh_ledger(self, batch: list[PoolMsg]) -> bool:
        """For a batch that writes nothing: whether its answers came from a ledger that is out of date.

        An address handed out without a write must not come from a ledger another process has since changed
        (GC freed it, someone else took it); a failure (exhausted) must not either, nor a ``Verify``'s answer;
        nor "nothing to free" (another writer, such as the pool host or another agent, may have given the owner
        its address since this ledger was read).
        """
        if not any(isinstance(msg, Allocate | Adopt | Verify | Release | ReleaseIPs) for msg in batch):
            return False
        return await self._current_version() != self._version

    async def _reservations(self) -> list[ReservedIP]:
        """SpiderReservedIPs apply to every pool of their family at allocation time: read them per batch."""
        parsed = []
        for obj in (await self.store.list("SpiderReservedIP")).items:
            try:
                parsed.append(ReservedIP.from_object(obj))
            except SpiderError as exc:  # admission keeps bad ones out; one that slipped in must not stop us
                log.warning("ignoring invalid SpiderReservedIP: %s", exc)
        return parsed

    async def _read_reservations_early(self) -> None:
        with contextlib.suppress(SpiderError):  # NB: then the batch reads them, and fails as it would have
            self._reserved_early = await self._reservations()

    async def _batch_reservations(self, batch: list[PoolMsg]) -> list[ReservedIP] | None:
        """The SpiderReservedIPs a batch of allocations must avoid, as read since its first request came: what
        was read while it gathered, once; a re-fold after a lost race reads anew.  ``None`` for a batch without
        one, unless it writes and the ledger has never had them: its counts would leave them out, and the
        controller's reconciler would write them back (each release a write too many, and a conflict)."""
        early, self._reserved_early = self._reserved_early, None
        if not any(isinstance(msg, Allocate) for msg in batch):
            known = self._ledger is not None and self._ledger.reserved_known
            if known or all(isinstance(msg, Inspect | Verify) for msg in batch):
                return None
        return early if early is not None else await self._reservations()

    async def _commit(self, batch: list[PoolMsg]) -> None:
        batch = await self._confirm_looks(batch)
        if not batch:
            return
        atomically = getattr(self.store, "update_status_atomically", None)
        if atomically is not None and not all(isinstance(msg, Inspect | Verify) for msg in batch):
            await self._commit_atomically(batch, atomically)
        else:  # NB: also a batch of snapshots and looks only: it writes nothing, so it need not take the file's lock
            await self._commit_optimistically(batch)

    async def _commit_atomically(self, batch: list[PoolMsg], atomically: AtomicStatusUpdate) -> None:
        """A store that can (the embedded one) reads, folds and writes the batch under its write lock: one
        write, never a conflict, and the answers always come from the stored pool as it is now."""
        results: list[tuple[outcome.Outcome[Any], bool]] = []
        now = trio.current_time()
        try:
            reserved = await self._batch_reservations(batch)  # NB: a store hiccup fails this batch, not the actor
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
            results[:] = self._fold(ledger, batch, now)
            return ledger.to_status() if any(changed for _, changed in results) else None

        try:
            written = await atomically(KIND, self.name, change)
        except SpiderError as exc:
            self._ledger = None  # NB: it may hold the batch unwritten
            self.gone = isinstance(exc, NotFound)
            error = PoolNotFound(pool=self.name) if self.gone else exc
            for msg in batch:
                msg.reply.error(error)
            return
        if written["metadata"]["resourceVersion"] != self._version:
            self.stats.writes += 1
            self._version = written["metadata"]["resourceVersion"]
        for msg, (result, _) in zip(batch, results, strict=True):
            msg.reply.resolve(self._recorded(result))

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
                if (reserved := await self._batch_reservations(batch)) is not None:
                    self._ledger.set_reserved(reserved_set(self._ledger.pool.version, reserved))
                results = self._fold(self._ledger, batch, trio.current_time())
                if any(changed for _, changed in results):
                    before = self._version
                    await self._write(self._ledger)
                    self.own_writes.add(before, self._version, all(isinstance(m, Allocate | Verify) for m in batch))
                elif not loaded_now and await self._answers_need_a_fresh_ledger(batch):
                    self._stale, self._ledger = self._ledger, None
                    continue
            except Conflict:
                self.stats.conflicts += 1
                self.stats.allocation_conflicts += any(isinstance(msg, Allocate) for msg in batch)
                self.stats.release_conflicts += any(isinstance(msg, Release | ReleaseIPs) for msg in batch)
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
                msg.reply.resolve(self._recorded(result))  # only now: the write is durable
            if any(changed for _, changed in results):
                self.awaited_looks.expect(self._version, _looks_to_come(batch, results))
            return

    def _recorded(self, result: outcome.Outcome[Any]) -> outcome.Outcome[Any]:
        """An allocation's answer, stamped with the version of the pool it is recorded in (the one just written
        or confirmed current)."""
        if isinstance(result, outcome.Value) and isinstance(result.value, Allocation):
            return outcome.Value(attrs.evolve(result.value, recorded_at=self._version))
        return result

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
            self.gone = True
            raise PoolNotFound(pool=self.name) from None
        self._version = written["metadata"]["resourceVersion"]

    def _cooldown(self, ledger: PoolLedger) -> float:
        return ledger.pool.cooldown if ledger.pool.cooldown is not None else self.default_cooldown

    def _fold(self, ledger: PoolLedger, batch: list[PoolMsg], now: float) -> list[tuple[outcome.Outcome[Any], bool]]:
        """Fold a batch in order; a new record that would push the status past ``max_status_bytes`` is refused
        (counting what the batch adds, not what it frees: the bound holds whatever order the writes land in),
        unless forgetting the last holders of addresses whose rest is over makes room: history never takes
        the place of a record.  It forgets a sixteenth of the limit at a time, so that a pool at its limit
        does not sort its released addresses for every allocation.  A request past its ``expires`` at ``now``
        (trio time: the caller's, a fold may run in a worker thread) is answered ``RequestExpired`` and not
        applied; every re-fold after a lost write race checks again, so a late batch never lands."""
        limit = self.max_status_bytes
        room = 0 if limit is None else limit - ledger.status_bytes()
        results: list[tuple[outcome.Outcome[Any], bool]] = []
        for msg in batch:
            if (expires := getattr(msg, "expires", None)) is not None and now > expires:
                results.append((outcome.Error(RequestExpired(pool=self.name)), False))
                continue
            if limit is not None and isinstance(msg, Allocate) and ledger.lookup(msg.owner.key) is None:
                need = ledger.record_bytes(msg.owner)
                if need > room and ledger.released:
                    short, wall = need - room, self.clock()  # NB: not ``now``, the trio time expiries compare with
                    cooldown = self._cooldown(ledger)
                    room += ledger.forget_rested(short + limit // 16, now=wall, cooldown=cooldown, at_least=short)
                if need > room:
                    too_large = PoolTooLarge(pool=self.name, records=len(ledger.records), limit=limit)
                    results.append((outcome.Error(too_large), False))
                    continue
                room -= need
            results.append(self._apply(ledger, msg))
        return results

    def _address(self, ledger: PoolLedger, text: str) -> int | None:
        """An address a request names, or ``None`` (logged) when it cannot be one of this pool's: an endpoint
        edited by hand or a client's mistake must cost that request its effect, never the actor."""
        ip = ledger.parse(text)
        if ip is None:
            log.warning("pool %s: %r is not an IPv%d address: nobody holds it here", self.name, text,
                        ledger.pool.version)  # fmt: skip
        return ip

    def _addresses(
        self, ledger: PoolLedger, ips: tuple[tuple[str, str | Record], ...]
    ) -> Iterator[tuple[int, str | Record]]:
        for text, holder in ips:
            if (ip := self._address(ledger, text)) is not None:
                yield ip, holder

    def _apply(self, ledger: PoolLedger, msg: PoolMsg) -> tuple[outcome.Outcome[Any], bool]:
        """Fold one request into the ledger; domain errors become values, bugs stay exceptions."""
        try:
            match msg:
                case Allocate(owner=owner, avoid=avoid):
                    held = ledger.lookup(owner.key) is not None
                    ip, changed = ledger.allocate(owner, now=self.clock(), cooldown=self._cooldown(ledger), avoid=avoid)
                    pool = ledger.pool
                    return outcome.Value(
                        Allocation(pool.name, pool.version, ledger.address(ip), pool.gateway, pool.routes, not held)
                    ), changed
                case Release(key=key, container_id=container_id):
                    freed = ledger.release(key, container_id, now=self.clock())
                    return outcome.Value(None if freed is None else ledger.address(freed)), freed is not None
                case ReleaseIPs(ips=ips):
                    now = self.clock()
                    count = sum(ledger.release_ip(ip, uid, now=now) for ip, uid in self._addresses(ledger, ips))
                    return outcome.Value(count), count > 0
                case Adopt(ip=text, previous_uid=previous_uid, owner=owner):
                    address = self._address(ledger, text)
                    held, changed = (False, False) if address is None else ledger.adopt(address, previous_uid, owner)
                    return outcome.Value(held), changed
                case Verify(ip=text, key=key):
                    address = self._address(ledger, text)
                    return outcome.Value(address is not None and ledger.lookup(key) == address), False
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


@attrs.define
class PoolRegistry:
    """The pool actors of this process: one supervised PoolActor per pool, started by the first request for it.

    ``get`` hands out a handle without starting anything.  A request through it finds the pool's running actor
    or starts one, but only after reading the pool: a name the store does not hold raises ``PoolNotFound`` to
    the sender and leaves nothing behind.  An actor idle for ``idle_timeout`` seconds, or whose pool was
    deleted, stops (under the supervisor) and frees its ledger; a request that reaches it as it stops is
    refused by its closed mailbox and handed to a successor, so none is lost or served twice.
    """

    store: Store
    supervisor: Supervisor
    default_cooldown: float = 0.0
    """Seconds released addresses rest before reuse, for pools that do not say (``--release-cooldown``)."""
    conflict_budget: float = 20.0
    """Seconds a pool's batch may keep losing write races before it fails with CNI 11 (``--conflict-budget``)."""
    max_status_bytes: int | None = None
    """Each pool's status-size cap (``PoolActor.max_status_bytes``, ``--max-pool-status-bytes``)."""
    idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT
    """Seconds an actor may go without a request before it stops; ``None``: actors run until the process ends."""
    max_batch: int = 256
    linger: float = 0.0
    """Each actor's ``PoolActor.linger`` (the pool host's ``--pool-host-linger``)."""
    route: PoolRoute | None = None
    """Where handles send requests (the pool host's forwarder); ``None``: this registry's own actors."""
    on_wait: Callable[[PoolMsg, float], None] | None = None
    """Each actor's ``PoolActor.on_wait`` (the IPAM service's meter)."""
    actors: dict[str, PoolActor] = attrs.field(factory=dict)
    """The running actors, by pool."""
    _mailboxes: dict[str, trio.MemorySendChannel[PoolMsg]] = attrs.field(factory=dict)
    _starting: dict[str, trio.Event] = attrs.field(factory=dict)
    _stats: dict[str, PoolStatistics] = attrs.field(factory=dict)
    """Per pool, kept across an idle actor's restarts (counters only grow); dropped with a deleted pool."""

    async def get(self, name: str) -> PoolHandle:
        """The pool's handle; its actor is started (or found) by the first request sent through it."""
        return PoolHandle(name, _RegisteredMailbox(self, name))

    def statistics(self) -> dict[str, dict[str, int]]:
        """Per pool: requests, batches, writes, conflicts (and of them, allocations' and releases'), largest
        batch, looks."""
        return {name: attrs.asdict(stats) for name, stats in self._stats.items()}

    async def deliver(self, name: str, msg: PoolMsg) -> None:
        """Queue ``msg`` for the pool's actor, starting one if none runs; ``PoolNotFound`` for an unknown pool."""
        while True:
            mailbox = await self._mailbox_of(name)
            try:
                await mailbox.send(msg)
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._retire(name, mailbox)  # NB: it stopped (idle, pool gone) after we found it: a successor serves

    async def deliver_all(self, name: str, msgs: list[PoolMsg]) -> None:
        """Queue every message in one step when the mailbox has room (so the actor folds them into one batch);
        last looks that know their version go to the running actor's ``look`` first, after the rest is queued
        (the pool host: the looks of every node share one read and never split a batch that writes)."""
        actor = self.actors.get(name)
        looks: list[Verify] = []
        rest: list[PoolMsg] = []
        for msg in msgs:
            if actor is not None and isinstance(msg, Verify) and msg.recorded_at:
                looks.append(msg)
            else:
                rest.append(msg)
        if actor is not None and looks:
            await self._queue_all(name, rest)
            rest = list(await actor.look(looks))
        await self._queue_all(name, rest)

    async def _queue_all(self, name: str, msgs: list[PoolMsg]) -> None:
        pending = list(msgs)
        while pending:
            mailbox = await self._mailbox_of(name)
            try:
                while pending:
                    try:
                        mailbox.send_nowait(pending[0])
                    except trio.WouldBlock:
                        await mailbox.send(pending[0])
                    pending.pop(0)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._retire(name, mailbox)

    async def _mailbox_of(self, name: str) -> trio.MemorySendChannel[PoolMsg]:
        while (mailbox := self._mailboxes.get(name)) is None:
            starting = self._starting.get(name)
            if starting is None:
                return await self._start(name)
            await starting.wait()  # NB: that start may have failed (no such pool): then we try ourselves
        return mailbox

    async def _start(self, name: str) -> trio.MemorySendChannel[PoolMsg]:
        self._starting[name] = done = trio.Event()
        try:
            try:
                stored = await self.store.get(KIND, name)
            except NotFound:
                raise PoolNotFound(pool=name) from None
            send, recv = trio.open_memory_channel[PoolMsg](self.max_batch)
            actor = PoolActor(
                name,
                self.store,
                recv,
                self.max_batch,
                conflict_budget=self.conflict_budget,
                default_cooldown=self.default_cooldown,
                max_status_bytes=self.max_status_bytes,
                idle_timeout=self.idle_timeout,
                linger=self.linger,
                stats=self._stats.setdefault(name, PoolStatistics()),
                on_wait=self.on_wait,
            )
            await actor.prime(stored)
            self._mailboxes[name], self.actors[name] = send, actor
            try:
                await self.supervisor.start(f"pool/{name}", functools.partial(self._serve, name, actor, send))
            except BaseException:
                self._retire(name, send)
                raise
            return send
        finally:
            del self._starting[name]
            done.set()

    async def _serve(
        self,
        name: str,
        actor: PoolActor,
        mailbox: trio.MemorySendChannel[PoolMsg],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """The supervised child: the actor's ``run`` (again after a transient failure) and, when it returns
        (idle, or its pool gone), forgetting it in the same step, so the next request starts a successor."""
        await actor.run(task_status=task_status)
        self._retire(name, mailbox)
        if actor.gone:
            self._stats.pop(name, None)
            log.info("pool %s is gone from the store; its actor stopped", name)

    def _retire(self, name: str, mailbox: trio.MemorySendChannel[PoolMsg]) -> None:
        """Forget the actor behind ``mailbox`` if it is still the pool's current one."""
        if self._mailboxes.get(name) is mailbox:
            del self._mailboxes[name]
            del self.actors[name]
        mailbox.close()


@attrs.frozen
class _RegisteredMailbox:
    """A handle's way to a pool actor of the registry, whichever one runs now."""

    registry: PoolRegistry
    name: str

    async def send(self, msg: PoolMsg, /) -> None:
        """Hand ``msg`` to the registry's route, or to the pool's current actor (starting one if needed)."""
        if self.registry.route is not None:
            await self.registry.route.deliver(self.name, msg)
        else:
            await self.registry.deliver(self.name, msg)
