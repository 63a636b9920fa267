"""The controller's leading work on SpiderSubnet auto pools: one pool per application NIC and family (§7.1).

Owns ``ApplicationController``: informers on Deployment, ReplicaSet, StatefulSet, DaemonSet, Job and CronJob
(top-level objects only: one with a controller owner is managed through its owner), on SpiderIPPool and on
SpiderSubnet; a de-duplicating work queue; one worker that, for each application whose pod template carries
``ipam.spidernet.io/subnet(s)``:

- finds its pool by the labels naming subnet, application kind/namespace/name, NIC and family (so a pool kept
  with ``ippool-reclaim: "false"`` is re-used by a new application of the same kind and name, its UID label
  rewritten; another kind gets a pool of its own), and creates it when there is none;
- sizes it (``ippool-ip-number``, replicas per kind): growth asks the subnet's SubnetActor first (the promise is
  durable in the subnet's status before the pool holds it), shrink writes the pool first (guarded by its
  resourceVersion, so an address an agent just handed out is never taken away) and then the subnet (its entry
  trimmed only once the last claim is older than ``claim_window``: the application is sized again then);
- on the application's deletion (also when one of its name is made again before that is handled) deletes its
  ``ippool-reclaim`` pools (each goes once its addresses are released: the reconciler keeps its finalizer until
  then); the subnet's entry goes with the pool.

It also adopts manual pools inside a subnet (controller ownerRef, owner label, gateway and routes inherited)
and, on every resync, deletes reclaim pools whose application is gone (a third-party application's, such as
a KubeVirt VirtualMachine, read from the store by the kind its labels name) and forgets subnet entries whose
pool and application are both gone (I00022).  An entry is forgotten only when a fresh read finds no pool of
its name and, for a third-party application (whose agent records the entry before it creates the pool), once
it is older than ``claim_window``; the release is refused when the entry was claimed again meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import attrs
import trio

from actors.controller.workqueue import WorkQueue
from actors.ipam.subnet import SubnetRegistry
from actors.stores.informer import inform_each
from actors.stores.port import AlreadyExists, Conflict, NotFound, Obj, Store, WatchEvent
from spider.addr import IPSet
from spider.autopool import (
    ANNO_IP_NUMBER,
    BUILTIN_KINDS,
    LABEL_APP_GV,
    LABEL_APP_KIND,
    LABEL_APP_NAME,
    LABEL_APP_NAMESPACE,
    LABEL_APP_UID,
    LABEL_RECLAIM,
    AppRef,
    SubnetClaim,
    auto_pool_name,
    auto_pool_object,
    desired_ip_count,
    ip_number_text,
    is_auto_pool,
    named_for,
    parse_application,
    pod_template_annotations,
    pool_reclaims,
    replicas_of,
    reuse_labels,
    subnet_claims,
)
from spider.errors import SpiderError, TransientError
from spider.kinds import SPIDER_API_VERSION, kind_info
from spider.pool import IPPool, decode_allocated
from spider.subnet import Controlled, FreeIPsNotEnough, InsufficientSubnetIPs, decode_controlled, parse_rfc3339, shrink
from spider.validation import LABEL_OWNER_SUBNET, ip_version
from spider.workload import controller_of

log = logging.getLogger(__name__)

POOL = "SpiderIPPool"
SUBNET = "SpiderSubnet"
RETRY_DELAYS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
"""Seconds before an application or pool whose sync failed is tried again, per consecutive failure."""
RECHECK = 1.0
"""Seconds before the sweep looks again at an entry whose guarded release was refused."""

Key = tuple[str, str, str]  # (kind, namespace, name); ("", "", "") is the sweep
SWEEP: Key = ("", "", "")


@attrs.frozen
class ApplicationSettings:
    """The controller's SpiderSubnet switches (Spiderpool's ``spiderpool-conf``)."""

    enable_spider_subnet: bool = True
    """[enableSpiderSubnet]"""
    enable_auto_pool: bool = True
    """[enableAutoPoolForApplication] Off: no auto pool is created (I00024)."""
    default_redundant: int = 0
    """[clusterSubnetAutoPoolDefaultRedundantIPNumber] Spare addresses when an application names no
    ``ippool-ip-number`` (Spiderpool's effective default is 0: its Helm chart writes another key)."""
    resync_period: float = 300.0
    claim_window: float = 60.0
    """Seconds an agent may take between recording a third-party pool's addresses in the subnet and creating
    the pool (a read and a create, each waiting out a store outage); a third-party entry without a pool is
    forgotten only once it is older than this (its ``claimedAt``, or when this controller first saw it)."""

    @property
    def enabled(self) -> bool:
        """Whether this work runs at all."""
        return self.enable_spider_subnet and self.enable_auto_pool


@attrs.define
class ApplicationStats:
    """What the controller did, for tests and logs."""

    syncs: int = 0
    created: int = 0
    resized: int = 0
    deleted: int = 0
    adopted: int = 0
    released: int = 0
    failures: int = 0


@attrs.define(eq=False)
class ApplicationController:
    """Creates, sizes and reclaims auto pools; run with ``await nursery.start(c.run)``."""

    store: Store
    subnets: SubnetRegistry
    settings: ApplicationSettings = attrs.field(factory=ApplicationSettings)
    stats: ApplicationStats = attrs.field(factory=ApplicationStats)
    _cache: dict[str, dict[tuple[str, str], Obj]] = attrs.field(factory=dict)
    _gone: dict[Key, dict[str, Obj]] = attrs.field(factory=dict)
    """Deleted applications whose pools are not reclaimed yet: key -> UID -> the last copy seen (one key may
    name several: deleted and made again before the worker got to it)."""
    _queue: WorkQueue[Key] = attrs.field(factory=lambda: WorkQueue.open(RETRY_DELAYS))
    _listed: set[str] = attrs.field(factory=set)
    _all_listed: trio.Event = attrs.field(factory=trio.Event)
    clock: Callable[[], float] = time.time
    """Wall-clock seconds, compared with entries' ``claimedAt``."""
    _first_seen: dict[tuple[str, str], float] = attrs.field(factory=dict)
    """(subnet, pool) -> when a third-party entry without ``claimedAt`` and without a pool was first seen."""
    _later: dict[Key, float] = attrs.field(factory=dict)
    """Keys to look at again in so many seconds (an entry now too young to forget or to trim is old enough
    then): the worker queues them once the key at hand is done."""
    _unserved: set[tuple[str, str]] = attrs.field(factory=set)
    """Third-party kinds this store cannot read (logged once each)."""

    @property
    def kinds(self) -> tuple[str, ...]:
        """Every kind this controller informs on."""
        return (*BUILTIN_KINDS, POOL, SUBNET)

    @property
    def idle(self) -> bool:
        """Nothing queued (for tests)."""
        return not self._queue

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Inform, and work the queue until cancelled; started once every kind is listed."""
        self._cache = {kind: {} for kind in self.kinds}
        async with trio.open_nursery() as nursery:
            inform_each(nursery, self.store, self.kinds, on_list=self._on_list, on_event=self._on_event,
                        resync_period=self.settings.resync_period, delay=self._queue.delay,
                        who="applications")  # fmt: skip
            nursery.start_soon(self._work, nursery)
            await self._all_listed.wait()
            task_status.started()

    # --- informers ---------------------------------------------------------------------------------------

    def _on_list(self, kind: str, items: list[Obj]) -> None:
        old = self._cache[kind]
        self._cache[kind] = {_key(obj): obj for obj in items}
        for key, obj in old.items():
            new = self._cache[kind].get(key)
            if new is None or _uid(new) != _uid(obj):  # NB: gone, or made again (another UID) unseen
                self._changed(kind, obj, deleted=True)
        for obj in items:
            self._changed(kind, obj)
        self._listed.add(kind)
        if self._listed >= set(self.kinds):
            self._all_listed.set()
        self._queue.add(SWEEP)  # NB: every listing (and so every resync) sweeps

    def _on_event(self, kind: str, event: WatchEvent) -> None:
        key = _key(event.object)
        old = self._cache[kind].get(key)
        if event.type == "DELETED":
            self._cache[kind].pop(key, None)
        else:
            self._cache[kind][key] = event.object
        if old is not None and _uid(old) != _uid(event.object):  # NB: its DELETED event not seen
            self._changed(kind, old, deleted=True)
        self._changed(kind, event.object, deleted=event.type == "DELETED")

    def _changed(self, kind: str, obj: Obj, *, deleted: bool = False) -> None:
        ns, name = _key(obj)
        if kind in BUILTIN_KINDS:
            if deleted:
                self._gone.setdefault((kind, ns, name), {})[_uid(obj)] = obj
            self._queue.add((kind, ns, name))
        elif kind == POOL:
            self._queue.add((POOL, "", name))

    # --- the worker --------------------------------------------------------------------------------------

    async def _work(self, nursery: trio.Nursery) -> None:
        while True:
            key = await self._queue.get()
            if not self._listed >= self._needs(key):
                self._queue.failed(nursery, key)  # NB: later each time: a kind may stay unlistable for long
                continue
            self.stats.syncs += 1
            try:
                if key == SWEEP:
                    await self._sweep()
                elif key[0] == POOL:
                    await self._sync_pool(key[2])
                else:
                    await self._sync_app(key)
            except (TransientError, Conflict, InsufficientSubnetIPs, FreeIPsNotEnough, AlreadyExists) as exc:
                self.stats.failures += 1
                log.info("auto pools of %s: %s; retrying", "/".join(k for k in key if k) or "sweep", exc)
                self._queue.failed(nursery, key)
            except SpiderError as exc:
                self.stats.failures += 1
                log.warning("auto pools of %s: %s", "/".join(k for k in key if k) or "sweep", exc)
            else:
                self._queue.succeeded(key)
            for later, delay in self._later.items():
                self._queue.later(nursery, later, delay)
            self._later.clear()

    def _needs(self, key: Key) -> set[str]:
        """The kinds that must be listed before ``key`` is worked on: the pools and subnets, and for an
        application its own kind.  One kind the cluster cannot list must not hold up the others' work: a pool
        reads no application, and the sweep judges only the applications of kinds listed."""
        return {POOL, SUBNET, key[0]} if key[0] in BUILTIN_KINDS else {POOL, SUBNET}

    # --- applications ------------------------------------------------------------------------------------

    async def _sync_app(self, key: Key) -> None:
        kind, ns, name = key
        obj = self._cache[kind].get((ns, name))
        gone = self._gone.get(key, {})
        for uid, old in list(gone.items()):  # NB: also when made again meanwhile (events merged in the queue)
            if obj is None or uid != _uid(obj):
                await self._reclaim(AppRef.from_object(_with_type(kind, old)))
            del gone[uid]  # NB: only once reclaimed: a failed reclaim is retried with it
        if not gone:
            self._gone.pop(key, None)
        if obj is None or not self.settings.enabled or controller_of(obj) is not None:
            return
        obj = _with_type(kind, obj)
        try:
            claims = subnet_claims(pod_template_annotations(obj))
        except SpiderError as exc:
            log.warning("%s %s/%s: %s", kind, ns, name, exc)
            return
        app = AppRef.from_object(obj)
        replicas = replicas_of(obj)
        for claim in claims:
            for version in claim.versions:
                await self._size(app, claim, version, replicas)

    async def _size(self, app: AppRef, claim: SubnetClaim, version: int, replicas: int) -> None:
        subnet_name = claim.subnet(version)
        assert subnet_name is not None
        subnet = self._cache[SUBNET].get(("", subnet_name))
        if subnet is None:
            raise NotFoundSubnet(subnet=subnet_name, app=app.application)
        desired = desired_ip_count(claim.ip_number, replicas, self.settings.default_redundant)
        pool = await self._find_pool(app, claim.interface, version, subnet_name)
        handle = self.subnets.get(subnet_name)
        if pool is None:
            name = auto_pool_name(app, claim.interface, version)
            ips = await handle.claim(name, app.application, desired, IPSet(version))
            body = auto_pool_object(
                app,
                claim.interface,
                version,
                subnet,
                ips.to_strings(),
                ip_number_text(claim.ip_number, self.settings.default_redundant),
                claim.reclaim,
            )
            await self.store.create(body)
            self.stats.created += 1
            log.info("auto pool %s created for %s with %d IPs", name, app.application, ips.count)
            return
        name = str(pool["metadata"]["name"])
        current = IPPool.from_object(pool).ips
        labels = dict(pool["metadata"].get("labels") or {})
        new_labels = {**labels, LABEL_APP_UID: app.uid, LABEL_RECLAIM: "true" if claim.reclaim else "false"}
        annotations = dict(pool["metadata"].get("annotations") or {})
        annotations[ANNO_IP_NUMBER] = ip_number_text(claim.ip_number, self.settings.default_redundant)
        meta_changed = new_labels != labels or annotations != (pool["metadata"].get("annotations") or {})
        if current.count < desired:
            ips = await handle.claim(name, app.application, desired, current)
        elif current.count > desired:
            allocated = IPSet.of(version, decode_allocated(version, (pool.get("status") or {}).get("allocatedIPs")))
            ips = shrink(name, current, allocated, desired)
        else:
            ips = current
        if ips != current or meta_changed:
            meta = {**pool["metadata"], "labels": new_labels, "annotations": annotations}
            await self.store.update({**pool, "metadata": meta, "spec": {**pool["spec"], "ips": ips.to_strings()}})
            if ips != current:
                self.stats.resized += 1
                log.info(
                    "auto pool %s of %s resized from %d to %d IPs", name, app.application, current.count, ips.count
                )
        # NB: after a shrink, or to repair an interrupted one; not of a claim younger than the claim window, which
        # may be another (deposed) leader's resize whose pool write is still on its way: that is trimmed later
        await handle.record(name, app.application, ips, trim_after=self.settings.claim_window)
        self._trim_later(app, subnet_name, name, ips)

    def _trim_later(self, app: AppRef, subnet: str, pool: str, ips: IPSet) -> None:
        """Size ``app`` again once the young claim its subnet entry keeps beyond ``ips`` may be trimmed."""
        cached = self._cache[SUBNET].get(("", subnet))
        entry = _entries(cached).get(pool) if cached is not None else None
        if entry is None or entry.claimed_at is None or entry.ips.issubset(ips):
            return
        claimed = parse_rfc3339(entry.claimed_at)
        wait = None if claimed is None else claimed + self.settings.claim_window - self.clock()
        if wait is not None and wait > 0:
            self._again((app.kind, app.namespace, app.name), wait + 1.0)  # NB: claimedAt is to the second

    async def _find_pool(self, app: AppRef, nic: str, version: int, subnet: str) -> Obj | None:
        labels = reuse_labels(app, nic, version, subnet)
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        pools = [p for p in (await self.store.list(POOL, label_selector=selector)).items if _reusable(p, app)]
        if len(pools) > 1:
            names = sorted(str(p["metadata"]["name"]) for p in pools)
            raise AmbiguousAutoPool(app=app.application, pools=tuple(names))
        if not pools:
            others = (await self.store.list(POOL, label_selector=_selector_without_subnet(labels))).items
            for other in others:
                if not _reusable(other, app):
                    continue
                log.warning(
                    "ApplicationSubnetChanged: %s had auto pool %s from SpiderSubnet %s, now asks for %s",
                    app.application,
                    other["metadata"]["name"],
                    (other["metadata"].get("labels") or {}).get(LABEL_OWNER_SUBNET),
                    subnet,
                )
                raise ApplicationSubnetChanged(app=app.application, subnet=subnet)
        return pools[0] if pools else None

    async def _reclaim(self, app: AppRef) -> None:
        """Delete the application's ``ippool-reclaim`` pools (they go once their addresses are released)."""
        selector = f"{LABEL_APP_UID}={app.uid},{LABEL_RECLAIM}=true"
        for pool in (await self.store.list(POOL, label_selector=selector)).items:
            await self._delete_pool(pool)

    async def _delete_pool(self, pool: Obj) -> None:
        if (pool.get("metadata") or {}).get("deletionTimestamp"):
            return
        try:
            await self.store.delete(POOL, str(pool["metadata"]["name"]))
        except NotFound:
            return
        self.stats.deleted += 1
        log.info("auto pool %s deleted with its application", pool["metadata"]["name"])

    # --- pools: adoption and release ---------------------------------------------------------------------

    async def _sync_pool(self, name: str) -> None:
        pool = self._cache[POOL].get(("", name))
        if pool is None:
            for subnet in list(self._cache[SUBNET].values()):
                entry = _entries(subnet).get(name)
                if entry is not None:
                    await self._forget(subnet, name, entry)
            return
        if not self.settings.enable_spider_subnet or is_auto_pool(pool):
            return
        if (pool.get("metadata") or {}).get("deletionTimestamp") or controller_of(pool) is not None:
            return
        cidr = str((pool.get("spec") or {}).get("subnet", ""))
        subnets = [s for s in self._cache[SUBNET].values() if (s.get("spec") or {}).get("subnet") == cidr]
        owner = subnets[0] if subnets else None
        if owner is None or (owner.get("metadata") or {}).get("deletionTimestamp"):
            return
        await self._adopt(pool, owner)

    async def _adopt(self, pool: Obj, subnet: Obj) -> None:
        """A manual pool inside a subnet: controller ownerRef, owner label, gateway and routes inherited."""
        meta = dict(pool["metadata"])
        smeta = subnet["metadata"]
        owner = {
            "apiVersion": SPIDER_API_VERSION,
            "kind": SUBNET,
            "name": smeta["name"],
            "uid": smeta.get("uid", ""),
            "controller": True,
            "blockOwnerDeletion": True,
        }
        meta["ownerReferences"] = [*(meta.get("ownerReferences") or []), owner]
        meta["labels"] = {**(meta.get("labels") or {}), LABEL_OWNER_SUBNET: smeta["name"]}
        spec = dict(pool.get("spec") or {})
        sspec = subnet.get("spec") or {}
        if spec.get("gateway") is None and sspec.get("gateway") is not None:
            spec["gateway"] = sspec["gateway"]
        if spec.get("routes") is None and sspec.get("routes") is not None:
            spec["routes"] = sspec["routes"]
        await self.store.update({**pool, "metadata": meta, "spec": spec})
        self.stats.adopted += 1
        log.info("pool %s adopted by SpiderSubnet %s", meta["name"], smeta["name"])

    # --- sweep -------------------------------------------------------------------------------------------

    async def _sweep(self) -> None:
        """Reclaim pools whose application is gone (or is another one now); forget entries nobody holds.  Pools
        and entries of a kind not listed (yet) are left alone: whether their application is gone is unknown."""
        apps: dict[tuple[str, str, str], str] = {}
        for kind in BUILTIN_KINDS:
            for (ns, name), obj in self._cache[kind].items():
                apps[(kind, ns, name)] = str((obj.get("metadata") or {}).get("uid", ""))
        for pool in list(self._cache[POOL].values()):
            labels = (pool.get("metadata") or {}).get("labels") or {}
            if not is_auto_pool(pool) or not pool_reclaims(pool):
                continue
            kind = str(labels.get(LABEL_APP_KIND, ""))
            app_key = (kind, str(labels.get(LABEL_APP_NAMESPACE, "")), str(labels.get(LABEL_APP_NAME, "")))
            if not _builtin(str(labels.get(LABEL_APP_GV, "")), kind):
                await self._reclaim_third_party(pool, labels)
            elif kind in self._listed and apps.get(app_key) != labels.get(LABEL_APP_UID) and not _allocated(pool):
                await self._delete_pool(pool)
        pools = {name for (_, name) in self._cache[POOL]}
        absent: set[tuple[str, str]] = set()
        for subnet in list(self._cache[SUBNET].values()):
            for pool_name, entry in _entries(subnet).items():
                if pool_name in pools or entry.application is None:
                    continue
                absent.add((_name(subnet), pool_name))
                parsed = parse_application(entry.application)
                builtin = parsed is not None and _builtin(parsed[0], parsed[1])
                if parsed is not None and builtin and parsed[1] not in self._listed:
                    continue
                uid = apps.get((parsed[1], parsed[2], parsed[3])) if parsed is not None else None
                if builtin and uid and named_for(pool_name, uid):
                    continue  # NB: recorded just before its pool is created (not an earlier same-name app's pool)
                await self._forget(subnet, pool_name, entry)
        self._first_seen = {key: seen for key, seen in self._first_seen.items() if key in absent}

    def _again(self, key: Key, delay: float) -> None:
        """Queue ``key`` again in ``delay`` seconds (or sooner, when asked before)."""
        self._later[key] = min(self._later.get(key, delay), delay)

    async def _forget(self, subnet: Obj, pool_name: str, entry: Controlled) -> None:
        """Forget the subnet's entry for a pool the cache does not hold, once that is safe: a fresh read finds
        no such pool, and (a third-party application's, which an agent records before it creates the pool)
        the entry is older than ``claim_window``.  The release is refused when the entry was claimed again
        meanwhile (``claimedAt`` changed: an agent is making the pool anew)."""
        key = (_name(subnet), pool_name)
        parsed = parse_application(entry.application) if entry.application else None
        if entry.application is not None and not (parsed is not None and _builtin(parsed[0], parsed[1])):
            now = self.clock()
            claimed = parse_rfc3339(entry.claimed_at) if entry.claimed_at else None
            since = claimed if claimed is not None else self._first_seen.setdefault(key, now)
            wait = since + self.settings.claim_window - now
            if wait > 0:
                self._again(SWEEP, wait)
                return
        try:
            await self.store.get(POOL, pool_name)
            return  # NB: the cache is behind (a DELETED event for an older pool of this name)
        except NotFound:
            pass
        handle = self.subnets.get(key[0])
        if await handle.release(pool_name, unless_claimed_since=entry.claimed_at or ""):
            self._first_seen.pop(key, None)
            self.stats.released += 1
            log.info("SpiderSubnet %s: forgot %s of %s", key[0], pool_name, entry.application or "a manual pool")
        else:  # NB: claimed again, or our copy of the subnet is behind: look again soon
            self._again(SWEEP, RECHECK)

    async def _reclaim_third_party(self, pool: Obj, labels: dict[str, str]) -> None:
        """Delete a reclaim pool of a third-party application whose owner is gone or is another one (another
        UID).  The owner is read from the store by the kind the labels name; a kind the store cannot serve
        (unknown, or known under another group/version) keeps the pool, logged once per kind."""
        gv, kind = str(labels.get(LABEL_APP_GV, "")), str(labels.get(LABEL_APP_KIND, ""))
        try:
            info = kind_info(kind)
        except SpiderError:
            info = None
        if info is None or f"{info.group}_{info.version}" != gv:
            if (gv, kind) not in self._unserved:
                self._unserved.add((gv, kind))
                log.warning("auto pools of %s %s are kept: this store cannot read that kind", gv, kind)
            return
        try:
            owner = await self.store.get(
                kind, str(labels.get(LABEL_APP_NAME, "")), str(labels.get(LABEL_APP_NAMESPACE, ""))
            )
        except NotFound:
            owner = None
        except SpiderError as exc:
            if (gv, kind) not in self._unserved:
                self._unserved.add((gv, kind))
                log.warning("auto pools of %s %s are kept: reading their owners failed: %s", gv, kind, exc)
            return
        if owner is None or str((owner.get("metadata") or {}).get("uid", "")) != labels.get(LABEL_APP_UID):
            await self._delete_pool(pool)


@attrs.define(auto_exc=True, kw_only=True)
class ApplicationSubnetChanged(SpiderError):
    """An application asks for another subnet than its auto pool is from (Spiderpool's event)."""

    app: str
    subnet: str

    def __str__(self) -> str:
        return f"ApplicationSubnetChanged: {self.app} already has an auto pool from another subnet than {self.subnet}"


@attrs.define(auto_exc=True, kw_only=True)
class AmbiguousAutoPool(SpiderError):
    """More than one auto pool matches one application NIC and family."""

    app: str
    pools: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.app}: more than one auto pool matches: {', '.join(self.pools)}"


@attrs.define(auto_exc=True, kw_only=True)
class NotFoundSubnet(TransientError):
    """An application names a SpiderSubnet that does not exist (yet): retried."""

    subnet: str
    app: str

    def __str__(self) -> str:
        return f"SpiderSubnet {self.subnet!r} of {self.app} not found"


def _with_type(kind: str, obj: Obj) -> Obj:
    if obj.get("apiVersion") and obj.get("kind"):
        return obj
    return {**obj, "apiVersion": kind_info(kind).api_version, "kind": kind}


def _key(obj: Obj) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace", "")), str(meta.get("name", ""))


def _name(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def _uid(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("uid", ""))


def _entries(subnet: Obj) -> dict[str, Controlled]:
    version = ip_version(subnet.get("spec") or {})
    return decode_controlled(version, (subnet.get("status") or {}).get("controlledIPPools"))


def _builtin(gv_label: str, kind: str) -> bool:
    """A kind whose auto pools this controller makes (``apps``/``batch``), from an auto pool's labels."""
    return kind in BUILTIN_KINDS and gv_label.partition("_")[0] in ("apps", "batch")


def _allocated(pool: Obj) -> bool:
    return bool((pool.get("status") or {}).get("allocatedIPs"))


def _reusable(pool: Obj, app: AppRef) -> bool:
    """Whether ``app`` may take this pool of its kind, namespace and name: not Terminating, and kept by its
    application (``ippool-reclaim`` false) or already its own (I00015); a reclaim pool of an earlier application
    of the same name goes with that application, even when the new one is seen before the old one's deletion."""
    meta = pool.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return False
    return not pool_reclaims(pool) or (meta.get("labels") or {}).get(LABEL_APP_UID) == app.uid


def _selector_without_subnet(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != LABEL_OWNER_SUBNET)
