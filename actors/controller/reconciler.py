"""The controller's leading work on pools and subnets: status counts and finalizers, kept by watches.

Owns ``PoolReconciler``, an informer-and-workqueue loop in the shape of a client-go controller:

- one informer task per watched kind (SpiderIPPool, SpiderSubnet, SpiderReservedIP) lists the kind into a
  cache, then follows the store's watch from the list's version; a ``Gone`` (version too old) or a store
  failure re-lists, and every ``resync_period`` it re-lists anyway, so a missed event is repaired; each kind
  on its own, so one that cannot be listed (its CRD missing) holds back only the keys whose rules read it
  (``NEEDS``), and ``run`` reports started once every kind has been listed;
- every change queues the keys it affects (a pool; the subnets with its ``spec.subnet``; every pool when a
  reservation changes) in a de-duplicating queue (``actors.controller.workqueue``);
- one worker takes keys and applies the pure rules of ``spider.reconcile`` to the cached object.

It must not fight the agents' PoolActors, which write pool status with group commit: it writes only when
a rule says something differs, every write carries the cached object's resourceVersion (a write based on a
stale copy fails with ``Conflict`` and is retried after the watch has brought the newer copy), it never
changes ``allocatedIPs``, and it computes the counts with the same rules as ``PoolLedger.to_status``.
"""

from __future__ import annotations

import logging

import attrs
import trio

from actors.controller.workqueue import RETRY_DELAYS, WorkQueue
from actors.stores.informer import inform_each
from actors.stores.port import Conflict, NotFound, Obj, Store, WatchEvent
from spider.errors import InvalidSpec, SpiderError, TransientError
from spider.pool import PoolLedger, ReservedIP
from spider.reconcile import (
    pool_finalizers,
    pool_status,
    same_subnet,
    subnet_finalizers,
    subnet_status,
    terminating,
)

log = logging.getLogger(__name__)

POOL = "SpiderIPPool"
SUBNET = "SpiderSubnet"
RESERVED = "SpiderReservedIP"
WATCHED = (POOL, SUBNET, RESERVED)
NEEDS = {POOL: {POOL, RESERVED}, SUBNET: {SUBNET, POOL}}
"""The kinds whose listing a kind's rules read (a pool's free count excludes reservations)."""
DEFAULT_RESYNC = 300.0
"""Seconds between full re-lists (Spiderpool's pool and subnet informers resync every 300 s)."""
KEPT_LEDGERS = 32
"""Pools whose ledgers the reconciler keeps between writes (the ones written last): a busy pool is levelled,
not decoded, on every write; a quiet one is decoded again when it changes."""
Key = tuple[str, str]


@attrs.define
class ReconcilerStats:
    """What the reconciler did, for tests, logs and metrics."""

    reconciles: int = 0
    status_writes: int = 0
    finalizer_writes: int = 0
    conflicts: int = 0
    lists: int = 0


@attrs.define(eq=False)
class PoolReconciler:
    """Keeps pool and subnet status counts and finalizers; run with ``await nursery.start(r.run)``."""

    store: Store
    resync_period: float = DEFAULT_RESYNC
    retry_delays: tuple[float, ...] = RETRY_DELAYS
    stats: ReconcilerStats = attrs.field(factory=ReconcilerStats)
    _cache: dict[str, dict[str, Obj]] = attrs.field(factory=lambda: {kind: {} for kind in WATCHED})
    _queue: WorkQueue[Key] = attrs.field(
        default=attrs.Factory(lambda self: WorkQueue.open(self.retry_delays), takes_self=True)
    )
    _listed: set[str] = attrs.field(factory=set)
    _all_listed: trio.Event = attrs.field(factory=trio.Event)
    _complained: dict[Key, str] = attrs.field(factory=dict)
    _ledgers: dict[str, PoolLedger] = attrs.field(factory=dict)
    """The ledgers of the pools counted last (at most ``KEPT_LEDGERS``, the latest last), each levelled with its
    pool's next version rather than decoded anew."""

    @property
    def synced(self) -> bool:
        """Whether every watched kind has been listed at least once."""
        return self._listed == set(WATCHED)

    def cached(self, kind: str) -> list[Obj]:
        """The objects of a watched kind as last listed and watched (the controller's metrics count them)."""
        return list(self._cache.get(kind, {}).values())

    @property
    def idle(self) -> bool:
        """Whether nothing waits in the queue (for tests that wait for the reconciler to settle)."""
        return not self._queue

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """List every kind, follow the watches and reconcile until cancelled; started once all are listed.

        Each kind is informed on its own: one that cannot be listed (its CRD not installed yet) holds back
        only the objects whose rules need it, never the others.
        """
        async with trio.open_nursery() as nursery:
            inform_each(nursery, self.store, WATCHED, on_list=self._listed_kind, on_event=self._event,
                        resync_period=self.resync_period, delay=self._queue.delay, who="reconciler")  # fmt: skip
            nursery.start_soon(self._work, nursery)
            await self._all_listed.wait()
            task_status.started()

    # --- informers ---------------------------------------------------------------------------------------

    def _listed_kind(self, kind: str, items: list[Obj]) -> None:
        self.stats.lists += 1
        self._replace(kind, items)
        if kind not in self._listed:
            self._listed.add(kind)
            self._queue_waiting_for(kind)
            if self.synced:
                self._all_listed.set()

    def _queue_waiting_for(self, listed: str) -> None:
        """A kind's first listing: queue the objects whose rules were held back waiting for it."""
        for kind, needs in NEEDS.items():
            if listed in needs:
                for name in self._cache[kind]:
                    self._queue.add((kind, name))

    def _replace(self, kind: str, items: list[Obj]) -> None:
        old, new = self._cache[kind], {_name(obj): obj for obj in items}
        self._cache[kind] = new
        for name, obj in old.items():
            if name not in new:
                self._changed(kind, obj, obj, deleted=True)
        for obj in items:
            self._changed(kind, obj, old.get(_name(obj)))

    def _event(self, kind: str, event: WatchEvent) -> None:
        name = _name(event.object)
        old = self._cache[kind].get(name)
        if event.type == "DELETED":
            self._cache[kind].pop(name, None)
        else:
            self._cache[kind][name] = event.object
        self._changed(kind, event.object, old, deleted=event.type == "DELETED")

    def _changed(self, kind: str, obj: Obj, old: Obj | None, *, deleted: bool = False) -> None:
        """Queue every key whose desired state may depend on this object."""
        if kind == POOL:
            self._queue.add((POOL, _name(obj)))
            if not deleted and old is not None and old.get("spec") == obj.get("spec"):
                return  # NB: the agents' status writes (most events) cannot change any subnet's status
            cidrs = {_subnet_of(o) for o in (obj, old) if o is not None}
            for subnet in self._cache[SUBNET].values():
                if any(same_subnet(_subnet_of(subnet), cidr) for cidr in cidrs):
                    self._queue.add((SUBNET, _name(subnet)))
        elif kind == SUBNET:
            self._queue.add((SUBNET, _name(obj)))
        elif kind == RESERVED:  # free counts of every pool may change
            for name in self._cache[POOL]:
                self._queue.add((POOL, name))

    # --- the worker --------------------------------------------------------------------------------------

    async def _work(self, nursery: trio.Nursery) -> None:
        while True:
            key = await self._queue.get()
            self.stats.reconciles += 1
            try:
                await self._reconcile(key)
            except NotFound:
                pass  # deleted meanwhile; the watch brings the DELETED event
            except (Conflict, TransientError) as exc:
                if isinstance(exc, Conflict):
                    self.stats.conflicts += 1
                log.debug("%s %s: %s; retrying", *key, exc)
                self._queue.failed(nursery, key)
            except SpiderError as exc:  # refused (422 and the like): retrying the same write cannot help
                obj = self._cache[key[0]].get(key[1])
                if obj is not None:
                    self._complain(key, obj, exc)
            else:
                self._queue.succeeded(key)

    async def _reconcile(self, key: Key) -> None:
        kind, name = key
        obj = self._cache[kind].get(name)
        if obj is None and kind == POOL:
            self._ledgers.pop(name, None)
        if obj is None or not NEEDS[kind] <= self._listed:
            return  # NB: the listing still missing queues this key again when it arrives
        pools = list(self._cache[POOL].values())
        finalizers = pool_finalizers(obj) if kind == POOL else subnet_finalizers(obj, pools)
        if finalizers is not None:
            written = await self._write_finalizers(kind, obj, finalizers)
            if written is None:
                return
            obj = written
        try:
            if kind == POOL:
                previous = self._ledgers.pop(name, None)  # NB: levelled in place: never used again if this fails
                status, self._ledgers[name] = pool_status(obj, self._reservations(), previous)
                if len(self._ledgers) > KEPT_LEDGERS:  # NB: memory follows the pools being written, not all pools
                    del self._ledgers[next(iter(self._ledgers))]
            else:
                status = subnet_status(obj, pools)
        except InvalidSpec as exc:
            self._complain(key, obj, exc)
            return
        if status is not None:
            written = await self.store.update_status({**obj, "status": status})
            self.stats.status_writes += 1
            self._cache[kind][name] = written
            log.debug("%s %s: status %s", kind, name, {k: v for k, v in status.items() if k.endswith("Count")})

    async def _write_finalizers(self, kind: str, obj: Obj, finalizers: list[str]) -> Obj | None:
        """Write new finalizers (guarded by the cached resourceVersion); ``None`` when the object is gone."""
        name = _name(obj)
        written = await self.store.update({**obj, "metadata": {**obj["metadata"], "finalizers": finalizers}})
        self.stats.finalizer_writes += 1
        if terminating(obj) and not finalizers:
            self._cache[kind].pop(name, None)
            log.info("%s %s: drained; finalizer removed, deletion completes", kind, name)
            return None
        # NB: safe to cache: our write succeeded on the cached version, so the watch has nothing older pending.
        self._cache[kind][name] = written
        return written

    def _reservations(self) -> list[ReservedIP]:
        out = []
        for obj in self._cache[RESERVED].values():
            try:
                out.append(ReservedIP.from_object(obj))
            except InvalidSpec as exc:
                self._complain((RESERVED, _name(obj)), obj, exc)
        return out

    def _complain(self, key: Key, obj: Obj, exc: SpiderError) -> None:
        """Log a spec we cannot count once per version of the object, not on every resync."""
        version = str((obj.get("metadata") or {}).get("resourceVersion", ""))
        if self._complained.get(key) != version:
            self._complained[key] = version
            log.warning("%s %s: not maintained: %s", *key, exc)


def _name(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def _subnet_of(obj: Obj) -> str:
    return str((obj.get("spec") or {}).get("subnet", ""))
