"""IP garbage collection on the leading controller (reference §3): addresses whose pod went without a CNI DEL.

Owns ``IpGarbageCollector``, run while leading, and ``collect_once``, the ``spider gc`` one-shot:
- a Pod informer and a Node informer (``actors.stores.informer``) keep what the rules read; host-network pods
  are never traced;
- the trace path: a Pod deleted, newly terminating or newly finished is traced until its deadline
  (``spider.gc.trace_deadline``); every trace gap the due ones are looked at: their endpoint's records are
  judged like scan-all's;
- scan-all: once the Pod informer has listed, then every ``GcSettings.interval``, every record of every pool is
  judged with ``spider.gc.decide``; a record to trace joins the trace path, one to release becomes a candidate;
- a candidate is released only when seen twice, at least a trace gap apart (``spider.gc.Observations``; a
  scan that finds new candidates looks at just those again a gap later), then judged a last time from afresh
  reads of its Pod and endpoint (never the informer's copy), so a record naming a live pod's UID is never
  released (the pod of that UID is also looked up under any name, through the informer's UID index and one
  fresh read by name: a KubeVirt VM's records name the VMI, not its launcher pod); a record whose endpoint says
  its pod was served without a Pod object is left to its CNI DEL, and one no endpoint accounts for is kept while
  its ADD may be in flight unless the informer saw its pod go (``spider.gc.decide``); the release goes through
  the pool's actor (the controller's hosted ones, else a registry of our own) as ``ReleaseIPs`` of the exact
  record: the actor frees it only if the pool, read at the resourceVersion it writes with, still holds that very
  record, so a fresh ADD that took the address meanwhile is never undone;
- an endpoint recording the same pod UID is dropped with it (finalizer removed, then deleted, both guarded by
  its resourceVersion);
- outdated endpoints (``GcSettings.clean_outdated_endpoints``, Spiderpool's ``enableCleanOutdatedEndpoint``):
  an endpoint no record of a complete scan named is a candidate too, dropped only when seen at the same
  resourceVersion twice a trace gap apart, then judged from afresh reads (``spider.gc.judge_endpoint``: none
  of its pools names it, no pod of its UID lives), and dropped guarded by that resourceVersion.
Counters for readiness, ``GET /v1/spider/stats`` and metrics: ``released``, ``failures``, ``scans``, ``synced``,
``outdated_dropped``.
Errors are logged and counted, never raised out of the leading work.
"""

from __future__ import annotations

import collections
import functools
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import trio

from actors.controller.workqueue import backoff
from actors.ipam.pool import PoolRegistry, decode_ledger
from actors.runtime.supervisor import Supervisor
from actors.stores.informer import inform_each
from actors.stores.port import Conflict, NotFound, Obj, Store, WatchEvent
from spider.addr import int_to_ip
from spider.endpoint import KIND as ENDPOINT
from spider.endpoint import Endpoint, readable
from spider.errors import AllocationError, SpiderError
from spider.gc import (
    Action,
    GcDecision,
    GcSettings,
    Observations,
    Trigger,
    decide,
    finished,
    host_network,
    judge_endpoint,
    keeps_addresses,
    node_ready,
    pod_uid,
    static_owner,
    trace_deadline,
    trace_trigger,
)
from spider.pool import KIND as POOL
from spider.pool import RECLAIM_AFTER, PoolLedger, Record
from spider.workload import controller_of, is_vmi, kubevirt_keeps, statefulset_keeps

log = logging.getLogger(__name__)

RETRY_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0)
"""Seconds before an informer whose listing failed lists again, growing per consecutive failure."""
RESYNC = 300.0
"""Seconds between the informers' full re-lists."""

Key = tuple[str, int]
"""(pool, address as an integer)."""
EndpointKey = tuple[str, str]
"""(namespace, name) of a SpiderEndpoint."""


@attrs.frozen
class Release:
    """One address GC gave back, and why."""

    pool: str
    ip: str
    pod: str
    pod_uid: str
    reason: str
    endpoint_dropped: bool = False


@attrs.frozen
class Candidate:
    """A record judged releasable: where it is, the record as judged, and the verdict."""

    pool: str
    version: int
    ip: int
    record: Record
    decision: GcDecision
    vm: bool = False
    """The record is a KubeVirt VM's (its endpoint or pod names a VMI as owner)."""

    @property
    def key(self) -> Key:
        """(pool, address)."""
        return self.pool, self.ip

    @property
    def address(self) -> str:
        """The bare address."""
        return int_to_ip(self.ip, self.version)


@attrs.define
class Traced:
    """A pod on the trace path."""

    namespace: str
    name: str
    uid: str
    until: float
    reason: str
    endpoint_name: str
    failures: int = 0


def _split(pod: str) -> tuple[str, str]:
    namespace, _, name = pod.partition("/")
    return (namespace, name) if name else ("", namespace)


def _key_of(obj: Obj) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace", "")), str(meta.get("name", ""))


def _uid_of(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("uid", ""))


@attrs.define(eq=False)
class IpGarbageCollector:
    """Spiderpool's IP GC, safer; run with ``nursery.start_soon(gc.run)`` while leading."""

    store: Store
    settings: GcSettings = attrs.field(factory=GcSettings)
    pools: PoolRegistry | None = None
    """The pool actors releases go through: the controller's hosted ones; ``None``: ``run`` makes its own."""
    clock: Callable[[], float] = time.time
    """Wall-clock seconds: what the API's timestamps (``deletionTimestamp``, ``finishedAt``) are compared with."""
    released: int = 0
    """Addresses released so far."""
    failures: int = 0
    """Releases (and endpoint drops) that failed, and scans that could not read the store."""
    scans: int = 0
    """Scan-alls completed."""
    outdated_dropped: int = 0
    """Outdated endpoints dropped (``GcSettings.clean_outdated_endpoints``)."""
    deferred: int = 0
    """Due traced pods that found no free worker in their round (left to the next)."""
    synced: bool = False
    """The Pod informer has listed once (readiness waits for it on the leader)."""
    recent: collections.deque[Release] = attrs.field(factory=lambda: collections.deque(maxlen=100))
    """The last releases, newest last."""
    _pods: dict[tuple[str, str], Obj] = attrs.field(factory=dict)
    _by_uid: dict[str, tuple[str, str]] = attrs.field(factory=dict)
    """The informer's pods indexed by UID: ``(namespace, name)``."""
    _departed: dict[str, float] = attrs.field(factory=dict)
    """UIDs of pods the informer saw and then saw go, with the wall-clock time it saw them go (kept for
    ``RECLAIM_AFTER``: only a record that young may still be in flight, ``spider.gc.decide``'s ``pod_gone``)."""
    _nodes: dict[str, Obj] = attrs.field(factory=dict)
    _traced: dict[str, Traced] = attrs.field(factory=dict)
    _seen: Observations[Key, Record] = attrs.field(init=False)
    _outdated: Observations[EndpointKey, str] = attrs.field(init=False)
    """Endpoints no pool record named, with the resourceVersion they were seen at."""
    _events: tuple[trio.MemorySendChannel[tuple[Trigger, Obj]], trio.MemoryReceiveChannel[tuple[Trigger, Obj]]] = (
        attrs.field(factory=lambda: trio.open_memory_channel[tuple[Trigger, Obj]](math.inf))
    )
    _listed: trio.Event = attrs.field(factory=trio.Event)
    _workers: trio.CapacityLimiter = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._seen = Observations(self.settings.trace_gap)
        self._outdated = Observations(self.settings.trace_gap)
        self._workers = trio.CapacityLimiter(max(1, self.settings.workers))

    def statistics(self) -> dict[str, Any]:
        """The counters, for ``GET /v1/spider/stats``."""
        return {
            "enabled": self.settings.enabled,
            "synced": self.synced,
            "scans": self.scans,
            "released": self.released,
            "failures": self.failures,
            "traced": len(self._traced),
            "candidates": len(self._seen),
            "outdated_endpoints": len(self._outdated),
            "outdated_dropped": self.outdated_dropped,
        }

    # --- running while leading ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Inform, trace and scan until cancelled; started once the Pod informer has listed (at once when GC is
        switched off)."""
        if not self.settings.enabled:
            self.synced = True
            log.info("IP GC is switched off (SPIDERPOOL_GC_IP_ENABLED=false)")
            task_status.started()
            await trio.sleep_forever()
        async with trio.open_nursery() as nursery:
            if self.pools is None:
                self.pools = PoolRegistry(self.store, Supervisor(nursery))
            inform_each(nursery, self.store, ("Node", "Pod"), on_list=self._on_list, on_event=self._on_event,
                        resync_period=RESYNC, delay=functools.partial(backoff, RETRY_DELAYS),
                        who="ip gc")  # fmt: skip
            nursery.start_soon(self._trace_new)
            await self._listed.wait()
            self.synced = True
            task_status.started()
            nursery.start_soon(self._trace_due_loop)
            while True:
                await self.scan_and_collect()
                await trio.sleep(self.settings.interval)

    def _on_list(self, kind: str, items: list[Obj]) -> None:
        if kind == "Node":
            self._nodes = {_key_of(o)[1]: o for o in items}
            return
        fresh = {_key_of(o): o for o in items}
        for key, old in self._pods.items():  # NB: deleted while the watch was down: the DELETED we missed
            new = fresh.get(key)
            if new is None or _uid_of(new) != _uid_of(old):
                self._trace(trace_trigger(old, None), old)
        for key, new in fresh.items():
            self._trace(trace_trigger(self._pods.get(key), new), new)
        self._replace_pods(fresh)
        self._listed.set()

    def _on_event(self, kind: str, event: WatchEvent) -> None:
        obj = event.object
        if kind == "Node":
            if event.type == "DELETED":
                self._nodes.pop(_key_of(obj)[1], None)
            else:
                self._nodes[_key_of(obj)[1]] = obj
            return
        key = _key_of(obj)
        old = self._pods.get(key)
        if event.type == "DELETED":
            self._forget_pod(self._pods.pop(key, obj))
            self._trace(trace_trigger(obj, None), obj)
            return
        self._pods[key] = obj
        if old is not None and _uid_of(old) != _uid_of(obj):
            self._forget_pod(old)
            self._trace(trace_trigger(old, None), old)  # NB: re-created under the same name between two events
            old = None
        self._by_uid[_uid_of(obj)] = key
        self._trace(trace_trigger(old, obj), obj)

    def _replace_pods(self, fresh: dict[tuple[str, str], Obj]) -> None:
        """A new listing of the pods: those of the old one it lacks are gone."""
        uids = {_uid_of(o) for o in fresh.values()}
        for old in self._pods.values():
            if _uid_of(old) not in uids:
                self._forget_pod(old)
        self._pods = fresh
        self._by_uid = {_uid_of(o): key for key, o in fresh.items()}

    def _forget_pod(self, pod: Obj) -> None:
        """A pod the informer saw is gone: no longer indexed, and remembered as departed."""
        uid = _uid_of(pod)
        if uid and self._by_uid.get(uid) == _key_of(pod):
            del self._by_uid[uid]
        if uid:
            self._departed[uid] = self.clock()

    def _trace(self, trigger: Trigger | None, pod: Obj) -> None:
        if trigger is not None:
            self._events[0].send_nowait((trigger, pod))

    async def _trace_new(self) -> None:
        """Turn trace events into traced pods: their deadline needs the node's readiness and, for a StatefulSet
        or KubeVirt pod, whether the workload still wants its addresses (a read of the store)."""
        async for trigger, pod in self._events[1]:
            try:
                await self._start_tracing(trigger, pod)
            except SpiderError as exc:  # the workload could not be read: scan-all will judge the records
                log.warning("ip gc: cannot trace pod %s/%s: %s", *_key_of(pod), exc)

    async def _start_tracing(self, trigger: Trigger, pod: Obj) -> None:
        namespace, name = _key_of(pod)
        uid = str((pod.get("metadata") or {}).get("uid", ""))
        owner = static_owner(pod, self.settings)
        valid = None if owner is None else await self._static_valid(owner, namespace, name, {})
        node = str((pod.get("spec") or {}).get("nodeName", ""))
        trace = trace_deadline(
            pod,
            trigger,
            node_ready=node_ready(self._nodes.get(node)),
            static_valid=valid,
            settings=self.settings,
            now=self.clock(),
        )
        if trace is None:
            self._traced.pop(uid, None)
            return
        if uid not in self._traced and len(self._traced) >= self.settings.max_traced:
            log.warning("ip gc: %d pods traced already; %s/%s is left to scan-all", len(self._traced), namespace, name)
            return
        ctrl = controller_of(pod)
        endpoint_name = ctrl.name if ctrl is not None and is_vmi(ctrl) else name
        self._traced[uid] = Traced(namespace, name, uid, trace.until, trace.reason, endpoint_name)
        log.debug("ip gc: tracing %s/%s (%s) until %.0f: %s", namespace, name, uid, trace.until, trace.reason)

    async def _trace_due_loop(self) -> None:
        while True:
            await trio.sleep(self.settings.trace_gap)
            await self.trace_due()

    async def trace_due(self) -> None:
        """One round of the trace worker: judge the records of every traced pod whose deadline passed, ``workers``
        pods at once (Spiderpool's release workers).  As Spiderpool's channel to them, at most
        ``channel_buffer`` due pods wait for a worker, and each waits at most ``signal_timeout`` seconds for a
        place: a pod that finds none stays traced, for the next round."""
        now = self.clock()
        due = [(uid, traced) for uid, traced in self._traced.items() if traced.until <= now]
        if not due:
            return
        send, receive = trio.open_memory_channel[tuple[str, Traced]](self.settings.channel_buffer)
        async with trio.open_nursery() as nursery:
            for _ in range(max(1, self.settings.workers)):
                nursery.start_soon(self._trace_worker, receive.clone())
            await receive.aclose()
            async with send:
                for left, item in enumerate(due):
                    with trio.move_on_after(self.settings.signal_timeout):
                        await send.send(item)
                        continue
                    log.info("ip gc: %d traced pods found no free worker; left to the next round", len(due) - left)
                    self.deferred += len(due) - left
                    break

    async def _trace_worker(self, receive: trio.MemoryReceiveChannel[tuple[str, Traced]]) -> None:
        async with receive:
            async for uid, traced in receive:
                try:
                    done = await self._trace_one(traced)
                except SpiderError as exc:
                    self.failures += 1
                    traced.failures += 1
                    done = traced.failures > self.settings.max_retries
                    log.warning("ip gc: traced pod %s/%s: %s%s", traced.namespace, traced.name, exc,
                                "; left to scan-all" if done else "; trying again")  # fmt: skip
                if done and self._traced.get(uid) is traced:
                    del self._traced[uid]

    async def _trace_one(self, traced: Traced) -> bool:
        """Judge a due pod's records (those its endpoint lists); whether it needs no more tracing."""
        endpoint = await self._read_endpoint(traced.namespace, traced.endpoint_name)
        if endpoint is None or endpoint.uid != traced.uid:
            return True  # NB: nothing recorded for it, or a newer pod's: scan-all judges whatever is left
        waiting = False
        for entry in endpoint.nics:
            for _version, pool, address in entry.pools():
                found = await self._record_at(pool, address)
                if found is None or found[1].pod_uid != traced.uid:
                    continue
                ip, record, ledger_version = found
                candidate = await self._judge(pool, ledger_version, ip, record, None, {})
                if candidate is None:
                    continue
                if candidate.decision.action is Action.TRACE:
                    traced.until = candidate.decision.until or traced.until
                    waiting = True
                elif candidate.decision.releases:
                    waiting |= not await self._settle(candidate)
        return not waiting

    # --- scan-all ----------------------------------------------------------------------------------------

    async def scan_and_collect(self) -> list[Release]:
        """One scan-all; if it found new candidates, look at just those again a trace gap later."""
        before = len(self.recent)
        pending = await self.scan_all()
        if pending or self.pending_endpoints():
            await trio.sleep(self.settings.trace_gap)
            await self.look_again(pending)
        return list(self.recent)[before:] if len(self.recent) > before else []

    async def scan_all(self) -> set[Key]:
        """Judge every record of every pool; release the candidates seen a gap ago already; returns those still
        waiting for their second look.  With ``clean_outdated_endpoints`` the endpoints no record named are
        candidates too (``pending_endpoints`` those waiting)."""
        try:
            pools = (await self.store.list(POOL)).items
            parsed, unreadable = readable((await self.store.list(ENDPOINT)).items)
            endpoints = {(e.namespace, e.name): e for e in parsed}
            for error in unreadable:  # NB: its pod's records are judged as if it had none: by the pod's life
                log.warning("ip gc: %s", error)
        except SpiderError as exc:
            self.failures += 1
            log.warning("ip gc: scan-all cannot read the store: %s", exc)
            return set()
        now = self.clock()
        self._departed = {uid: at for uid, at in self._departed.items() if now - at < RECLAIM_AFTER}
        statics: dict[tuple[str, str, str, str], bool] = {}
        candidates: list[Candidate] = []
        named: set[EndpointKey] | None = set()
        """The endpoint names the records name; ``None``: a pool could not be read, so not known."""
        for obj in pools:
            name = _key_of(obj)[1]
            try:
                ledger = await decode_ledger(obj)
            except SpiderError as exc:
                log.warning("ip gc: skipping pool %s: %s", name, exc)
                named = None
                continue
            if named is not None:
                named.update(_split(record.pod) for record in ledger.records.values())
            for ip, record in ledger.holders():
                try:
                    candidate = await self._judge(name, ledger.pool.version, ip, record, endpoints, statics)
                except SpiderError as exc:  # a workload that could not be read: keep, judge again next time
                    log.warning("ip gc: %s in pool %s kept for now: %s", int_to_ip(ip, ledger.pool.version), name, exc)
                    continue
                if candidate is not None and candidate.decision.releases:
                    candidates.append(candidate)
        self._seen.keep_only({c.key for c in candidates})
        outdated: list[Endpoint] = []
        if self.settings.clean_outdated_endpoints and named is not None:
            outdated = [e for key, e in endpoints.items() if key not in named]
        self._outdated.keep_only({(e.namespace, e.name) for e in outdated})
        async with trio.open_nursery() as nursery:
            for candidate in candidates:
                nursery.start_soon(self._settle, candidate)
            for endpoint in outdated:
                nursery.start_soon(self._settle_endpoint, endpoint)
        pending = {c.key for c in candidates} & self._seen.pending()
        self.scans += 1
        log.info("ip gc: scan-all %d: %d pools, %d candidates (%d waiting for a second look), %d released so far",
                 self.scans, len(pools), len(candidates), len(pending), self.released)  # fmt: skip
        return pending

    def pending_endpoints(self) -> set[EndpointKey]:
        """The outdated endpoints seen once and waiting for their second look."""
        return self._outdated.pending()

    async def look_again(self, keys: set[Key]) -> None:
        """The second look at candidates seen once: each record read afresh from its pool, judged again; and
        each outdated endpoint waiting (``pending_endpoints``) read afresh."""
        async with trio.open_nursery() as nursery:
            for namespace, name in self.pending_endpoints():
                nursery.start_soon(self._look_again_at_endpoint, namespace, name)
        by_pool: dict[str, set[int]] = collections.defaultdict(set)
        for pool, ip in keys:
            by_pool[pool].add(ip)
        async with trio.open_nursery() as nursery:
            for pool, ips in by_pool.items():
                try:
                    ledger = await decode_ledger(await self.store.get(POOL, pool))
                except NotFound:
                    continue
                except SpiderError as exc:
                    self.failures += 1
                    log.warning("ip gc: cannot read pool %s again: %s", pool, exc)
                    continue
                for ip in ips:
                    record = ledger.records.get(ip)
                    if record is None:
                        self._seen.forget((pool, ip))
                        continue
                    try:
                        candidate = await self._judge(pool, ledger.pool.version, ip, record, None, {})
                    except SpiderError as exc:
                        log.warning("ip gc: %s in pool %s kept for now: %s", int_to_ip(ip, ledger.pool.version),
                                    pool, exc)  # fmt: skip
                        continue
                    if candidate is not None and candidate.decision.releases:
                        nursery.start_soon(self._settle, candidate)
                    else:
                        self._seen.forget((pool, ip))

    async def _look_again_at_endpoint(self, namespace: str, name: str) -> None:
        try:
            endpoint = await self._read_endpoint(namespace, name)
        except SpiderError as exc:
            self.failures += 1
            log.warning("ip gc: cannot read endpoint %s/%s again: %s", namespace, name, exc)
            return
        if endpoint is None:
            self._outdated.forget((namespace, name))
            return
        await self._settle_endpoint(endpoint)

    # --- judging one record ------------------------------------------------------------------------------

    async def _judge(
        self,
        pool: str,
        version: int,
        ip: int,
        record: Record,
        endpoints: Mapping[tuple[str, str], Endpoint] | None,
        statics: dict[tuple[str, str, str, str], bool],
        *,
        fresh: bool = False,
    ) -> Candidate | None:
        """Judge one record (``spider.gc.decide``) from the informer's pods (``fresh``: a read of the store) and
        the endpoints given (``None``: read the endpoint); a record to trace joins the trace path."""
        namespace, name = _split(record.pod)
        if fresh:
            pod = await self._get("Pod", name, namespace)
        else:
            pod = self._pods.get((namespace, name))
        if pod is not None and host_network(pod) and pod_uid(pod) == record.pod_uid:
            return None  # NB: a host-network pod of another UID does not hide an older pod's record: judge it
        if endpoints is None:
            endpoint = await self._read_endpoint(namespace, name)
        else:
            endpoint = endpoints.get((namespace, name))
        owner = static_owner(pod, self.settings) if pod is not None else None
        if owner is None and endpoint is not None and keeps_addresses(endpoint.owner_controller_type, self.settings):
            owner = (endpoint.owner_controller_type, endpoint.owner_controller_name)
        valid = None if owner is None else await self._static_valid(owner, namespace, name, statics)
        node = str(((pod or {}).get("spec") or {}).get("nodeName", "")) or record.node
        decision = decide(
            record,
            pod,
            endpoint,
            node_ready=node_ready(self._nodes.get(node)),
            static_valid=valid,
            settings=self.settings,
            now=self.clock(),
            pod_gone=record.pod_uid in self._departed and record.pod_uid not in self._by_uid,
        )
        if decision.action is Action.TRACE and pod is not None and decision.until is not None:
            uid = record.pod_uid
            if uid not in self._traced and len(self._traced) < self.settings.max_traced:
                ctrl = controller_of(pod)
                endpoint_name = ctrl.name if ctrl is not None and is_vmi(ctrl) else name
                self._traced[uid] = Traced(namespace, name, uid, decision.until, decision.reason, endpoint_name)
        return Candidate(
            pool, version, ip, record, decision, vm=owner is not None and owner[0] == "VirtualMachineInstance"
        )

    async def _static_valid(
        self, owner: tuple[str, str], namespace: str, pod_name: str, cache: dict[tuple[str, str, str, str], bool]
    ) -> bool:
        """Whether the StatefulSet (ordinal of ``pod_name``) or KubeVirt VMI still wants the addresses."""
        kind, name = owner
        key = (kind, namespace, name, pod_name if kind == "StatefulSet" else "")
        if key not in cache:
            if kind == "StatefulSet":
                cache[key] = statefulset_keeps(await self._get("StatefulSet", name, namespace), pod_name)
            else:
                vmi = await self._get("VirtualMachineInstance", name, namespace)
                vm_owner = controller_of(vmi) if vmi else None
                vm = await self._get("VirtualMachine", vm_owner.name if vm_owner else name, namespace)
                cache[key] = kubevirt_keeps(vmi, vm)
        return cache[key]

    # --- releasing ---------------------------------------------------------------------------------------

    async def _settle(self, candidate: Candidate) -> bool:
        """Note a candidate; when it was seen a gap ago already, judge it a last time from afresh reads and
        release it.  Whether it is done with (released, or found worth keeping)."""
        if not self._seen.note(candidate.key, candidate.record, trio.current_time()):
            return False
        async with self._workers:
            try:
                return await self._release(candidate)
            except SpiderError as exc:
                self.failures += 1
                log.warning("ip gc: releasing %s of pool %s failed: %s", candidate.address, candidate.pool, exc)
                return False

    async def _release(self, candidate: Candidate) -> bool:
        last = await self._judge(candidate.pool, candidate.version, candidate.ip, candidate.record, None, {},
                                 fresh=True)  # fmt: skip
        self._seen.forget(candidate.key)
        if last is None or not last.decision.releases:
            why = "host network" if last is None else last.decision.reason
            log.info("ip gc: %s of pool %s kept after all: %s", candidate.address, candidate.pool, why)
            return True
        namespace, name = _split(candidate.record.pod)
        alive = await self._pod_of_uid(candidate.record.pod_uid)
        if alive is not None and _key_of(alive) != (namespace, name) and not finished(alive):
            # NB: a KubeVirt VM's records name the VMI, not its launcher pod: look the UID up, not just the name
            log.info("ip gc: %s of pool %s kept after all: its pod %s (UID %s) is alive", candidate.address,
                     candidate.pool, _key_of(alive)[1], candidate.record.pod_uid)  # fmt: skip
            return True
        if last.vm and alive is None and (launcher := await self._launcher_alive(namespace, name)) is not None:
            log.info("ip gc: %s of pool %s kept after all: launcher pod %s of VM %s is alive", candidate.address,
                     candidate.pool, _key_of(launcher)[1], name)  # fmt: skip
            return True
        assert self.pools is not None, "run() or collect_once() sets the pool registry"
        try:
            handle = await self.pools.get(candidate.pool)
            freed = await handle.release_ips(((candidate.address, candidate.record),))
        except AllocationError:  # the pool is gone: nothing left to free there
            return True
        if not freed:
            log.info("ip gc: %s of pool %s changed meanwhile; kept", candidate.address, candidate.pool)
            return True
        dropped = False
        if last.decision.action is Action.RELEASE_AND_DROP_ENDPOINT:
            dropped = await self._drop_endpoint(candidate.record)
        self.released += 1
        record = candidate.record
        self.recent.append(
            Release(candidate.pool, candidate.address, record.pod, record.pod_uid, last.decision.reason, dropped)
        )
        log.info("ip gc: released %s of pool %s held by %s (UID %s)%s: %s", candidate.address, candidate.pool,
                 record.pod, record.pod_uid, ", endpoint dropped" if dropped else "", last.decision.reason)  # fmt: skip
        return True

    async def _launcher_alive(self, namespace: str, vmi: str) -> Obj | None:
        """A launcher pod of KubeVirt VMI ``vmi`` that still runs, read afresh: after a failed live migration the
        VM's records carry the gone target pod's UID while the source pod runs the VM on (until its DEL)."""
        for (ns, pod_name), pod in list(self._pods.items()):
            ctrl = controller_of(pod)
            if ns != namespace or ctrl is None or not is_vmi(ctrl) or ctrl.name != vmi or finished(pod):
                continue
            fresh = await self._get("Pod", pod_name, ns)
            if fresh is not None and _uid_of(fresh) == _uid_of(pod) and not finished(fresh):
                return fresh
        return None

    async def _settle_endpoint(self, endpoint: Endpoint) -> None:
        """Note an endpoint no record named; when it was seen at this very version a gap ago already, judge it a
        last time from afresh reads (its pools, the pod of its UID) and drop it."""
        key = (endpoint.namespace, endpoint.name)
        if not self._outdated.note(key, endpoint.resource_version, trio.current_time()):
            return
        async with self._workers:
            try:
                await self._drop_outdated(endpoint)
            except SpiderError as exc:
                self.failures += 1
                log.warning("ip gc: dropping outdated endpoint %s/%s failed: %s", *key, exc)
            finally:
                self._outdated.forget(key)

    async def _drop_outdated(self, seen: Endpoint) -> None:
        endpoint = await self._read_endpoint(seen.namespace, seen.name)
        if endpoint is None or endpoint.resource_version != seen.resource_version:
            return  # NB: gone, or written since (an ADD): the next scan-all looks afresh
        holder = f"{endpoint.namespace}/{endpoint.name}"
        named = False
        for pool in sorted({pool for entry in endpoint.nics for _version, pool, _address in entry.pools()}):
            obj = await self._get(POOL, pool)
            if obj is not None and any(r.pod == holder for r in (await decode_ledger(obj)).records.values()):
                named = True
                break
        pod = await self._pod_of_uid(endpoint.uid)
        verdict = judge_endpoint(endpoint, named_by_a_record=named, pod_of_its_uid=pod)
        if verdict.action is not Action.DROP_ENDPOINT:
            log.info("ip gc: endpoint %s kept after all: %s", holder, verdict.reason)
            return
        obj = endpoint.to_object()  # NB: carries the version judged: a write since makes both steps conflict
        obj["metadata"]["finalizers"] = []
        try:
            written = await self.store.update(obj)
            await self.store.delete(ENDPOINT, endpoint.name, endpoint.namespace,
                                    resource_version=written["metadata"]["resourceVersion"])  # fmt: skip
        except (NotFound, Conflict):
            log.info("ip gc: endpoint %s changed meanwhile; kept", holder)
            return
        self.outdated_dropped += 1
        log.info("ip gc: dropped outdated endpoint %s (UID %s): %s", holder, endpoint.uid, verdict.reason)

    async def _drop_endpoint(self, record: Record) -> bool:
        """Remove the endpoint's finalizer and delete it, if it still records the record's pod UID."""
        namespace, name = _split(record.pod)
        for _ in range(5):
            endpoint = await self._read_endpoint(namespace, name)
            if endpoint is None or endpoint.uid != record.pod_uid:
                return False
            obj = endpoint.to_object()
            obj["metadata"]["finalizers"] = []
            try:
                written = await self.store.update(obj)
                version = written["metadata"]["resourceVersion"]
                await self.store.delete(ENDPOINT, name, namespace, resource_version=version)
                return True
            except NotFound:
                return False
            except Conflict:
                await trio.sleep(0.05)
        self.failures += 1
        log.warning("ip gc: endpoint %s/%s kept changing; not dropped", namespace, name)
        return False

    # --- reads -------------------------------------------------------------------------------------------

    async def _get(self, kind: str, name: str, namespace: str = "") -> Obj | None:
        if not name:
            return None
        try:
            return await self.store.get(kind, name, namespace)
        except NotFound:
            return None

    async def _pod_of_uid(self, uid: str) -> Obj | None:
        """The Pod of this UID (whatever its name), or ``None``: found by the informer's UID index, then read
        afresh by name (the informer's copy may be stale: deleted, finished or re-created since).

        NB: a UID the index lacks is taken as gone, without a fresh look: the pod of a record named otherwise (a
        KubeVirt launcher pod) was made before its ADD wrote the record and the endpoint, and the record was
        judged releasable twice, a trace gap apart, from an informer (``spider gc``: a listing) that has listed
        since; a record no endpoint accounts for is kept while its ADD may be in flight whatever the index says.
        """
        where = self._by_uid.get(uid) if uid else None
        if where is None:
            return None
        pod = await self._get("Pod", where[1], where[0])
        return pod if pod is not None and _uid_of(pod) == uid else None

    async def _read_endpoint(self, namespace: str, name: str) -> Endpoint | None:
        """The endpoint as stored now; one that does not parse counts as none, as in scan-all (it accounts for
        nothing, so its pod's records are judged by the Pod alone)."""
        obj = await self._get(ENDPOINT, name, namespace)
        if obj is None:
            return None
        parsed, unreadable = readable([obj])
        for error in unreadable:
            log.info("ip gc: %s", error)
        return parsed[0] if parsed else None

    async def _record_at(self, pool: str, address: str) -> tuple[int, Record, int] | None:
        """The record of ``address`` in ``pool`` as stored now: the address as the pool's family reads it, the
        record and that family; ``None`` when there is none (an endpoint edited into nonsense, or naming an
        address of the other family, holds nothing here)."""
        obj = await self._get(POOL, pool)
        if obj is None:
            return None
        ledger: PoolLedger = await decode_ledger(obj)
        ip = ledger.parse(address.partition("/")[0])
        record = None if ip is None else ledger.records.get(ip)
        return None if ip is None or record is None else (ip, record, ledger.pool.version)

    # --- the one-shot --------------------------------------------------------------------------------------

    def load(self, pods: list[Obj], nodes: list[Obj]) -> None:
        """Take a listing of the pods and nodes (the one-shot has no informers); a pod of the previous listing
        this one lacks is gone."""
        self._replace_pods({_key_of(o): o for o in pods})
        self._nodes = {_key_of(o)[1]: o for o in nodes}


async def collect_once(
    store: Store, settings: GcSettings, *, gap: float | None = None, clock: Callable[[], float] = time.time
) -> list[Release]:
    """``spider gc``: one scan-all now, then, a trace gap (``gap``) later, the second look at what it found;
    returns what was released.  The same rules as the controller's, the same two observations.  ``clock``:
    wall-clock seconds (``IpGarbageCollector.clock``)."""
    if gap is not None:
        settings = attrs.evolve(settings, trace_gap=gap)
    gc = IpGarbageCollector(store, settings, clock=clock)

    async def listing() -> None:
        gc.load((await store.list("Pod")).items, (await store.list("Node")).items)

    async with trio.open_nursery() as nursery:
        gc.pools = PoolRegistry(store, Supervisor(nursery), idle_timeout=None)
        await listing()
        pending = await gc.scan_all()
        if pending or gc.pending_endpoints():
            await trio.sleep(settings.trace_gap)
            await listing()
            await gc.look_again(pending)
        nursery.cancel_scope.cancel(reason="gc done")
    return list(gc.recent)


def describe_releases(releases: list[Release], gap: float) -> list[str]:
    """What ``spider gc`` prints: one line per released address, and a summary."""
    lines = [
        f"released {r.ip} of pool {r.pool} held by {r.pod} (UID {r.pod_uid})"
        + (", endpoint dropped" if r.endpoint_dropped else "")
        + f": {r.reason}"
        for r in releases
    ]
    lines.append(f"{len(releases)} addresses released (each judged releasable twice, {gap:g} s apart)")
    return lines


async def gc_command(store: Store, *, gap: float | None = None) -> int:
    """``spider gc``: ``collect_once`` with the environment's settings, printing what went and why."""
    import os  # NB: the one-shot reads the controller's SPIDERPOOL_GC_* switches from its own environment

    settings = GcSettings.from_environ(os.environ)
    gap = settings.trace_gap if gap is None else gap
    for line in describe_releases(await collect_once(store, settings, gap=gap), gap):
        print(line)
    return 0
