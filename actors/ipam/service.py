"""The agent's IPAM service: allocate and release a pod's addresses across pools, keep its SpiderEndpoint.

Owns the request flow of Spiderpool's agent (reference §2.1, §2.13) on top of the PoolActors, each request
in three steps:
- gather: read once every fact the request depends on (the Pod, its Namespace and Node, the workload chain,
  the SpiderEndpoint, the pools' specs) into one frozen facts object (``spider.plan.AddFacts``,
  ``ReleaseFacts``); the endpoint is read beside the Pod and its owners, not after them;
- decide: one call into the pure ``spider.plan`` (``decide_add``, ``decide_release``) gives the plan of the
  whole request, or the domain error to raise before anything is touched;
- act: carry the plan out through the pool actors and write the endpoint.
What the acts guarantee:
- ``allocate``: idempotent by pod UID and interface; all-or-nothing across families and NICs (giving back
  only what this call took, also when cancelled, retried within ``undo_budget``), then the SpiderEndpoint
  and Spiderpool's ``IpamAddResponse``;
- ``release``: from stored state alone (the endpoint), only what the same pod UID and sandbox hold (a
  deleted KubeVirt VM's endpoint: whichever launcher pod's DEL; CNI GC: only the interfaces it names); with
  no endpoint, the pool records that name the sandbox (what a failed or interrupted ADD left);
- ``release_ips``, ``endpoint``: the batch release and the workload-endpoint read of the agent API;
- ``pools``: the registry of supervised PoolActors (``actors.ipam.pool.PoolRegistry``), one per pool in use;
- short-lived caches of what changes rarely and is read on every ADD: the pools' specs and the pod's
  Namespace and Node (``IpamSettings``); the Pod itself is always read afresh.
It never touches a database or socket directly: everything goes through the ``Store`` port.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import attrs
import outcome
import trio

from actors.ipam.autopools import AutoPools, AutoPoolSettings
from actors.ipam.metering import IpamMeter
from actors.ipam.pool import Allocation, PoolRegistry
from actors.runtime.turns import Turns
from actors.stores.port import AlreadyExists, Conflict, NotFound, Obj, Store
from spider.addr import parse_ip, parse_network
from spider.endpoint import KIND as ENDPOINT
from spider.endpoint import Endpoint, NicAllocation
from spider.errors import (
    AddAbandoned,
    AllocationError,
    ConflictReleaseForbidden,
    NoAvailablePool,
    PoolExhausted,
    PoolNotFound,
    SpiderError,
    StaleWrite,
    TransientError,
)
from spider.ipam_request import AddRequest, DelRequest
from spider.overlap import Footprint, contested
from spider.plan import (
    AddFacts,
    AddPlan,
    FamilyPlan,
    ReleaseFacts,
    Sandbox,
    adopted,
    decide_add,
    decide_release,
    sandbox_holdings,
)
from spider.pool import ADD_WINDOW, IPPool, Owner, Route
from spider.pool import KIND as POOL
from spider.selection import PodContext
from spider.workload import (
    STATIC_KINDS,
    Workload,
    controller_of,
    is_vmi,
    kubevirt_keeps,
    next_hop,
    statefulset_keeps,
)

log = logging.getLogger(__name__)
_T = TypeVar("_T")


@attrs.frozen
class NicResult:
    """What one interface got on one ADD."""

    nic: str
    allocations: tuple[Allocation, ...]
    clean_gateway: bool
    routes: tuple[Route, ...]

    def to_api(self) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
        """This NIC's part of ``IpamAddResponse``: ``ips`` and ``routes``."""
        ips = []
        routes = []
        for a in self.allocations:
            ip: dict[str, Any] = {
                "version": a.version,
                "address": a.address,
                "nic": self.nic,
                "ipPool": a.pool,
                "vlan": 0,
            }
            if a.gateway:
                ip["gateway"] = a.gateway
            ips.append(ip)
            if a.gateway and not self.clean_gateway:
                routes.append({"ifName": self.nic, "dst": "0.0.0.0/0" if a.version == 4 else "::/0", "gw": a.gateway})
        routes += [{"ifName": self.nic, "dst": r.dst, "gw": r.gw} for r in self.routes]
        return ips, routes


def add_response(results: Sequence[NicResult]) -> dict[str, Any]:
    """Spiderpool's ``IpamAddResponse`` for every NIC of one call."""
    ips: list[dict[str, Any]] = []
    routes: list[dict[str, str]] = []
    for r in results:
        i, rt = r.to_api()
        ips += i
        routes += rt
    return {"ips": ips, "routes": routes}


@attrs.frozen
class IpamSettings:
    """The agent's IPAM switches (Spiderpool's ``spiderpool-conf`` keys in brackets)."""

    enable_statefulset: bool = True
    """StatefulSet pods keep their addresses while their ordinal is valid [enableStatefulSet]."""
    enable_kubevirt_static_ip: bool = True
    """KubeVirt VM pods keep their addresses while the VM or VMI is valid [enableKubevirtStaticIP]."""
    agent_namespace: str = "kube-system"
    """The namespace of ``multusName`` entries and of the default network given without one."""
    cluster_network: str = ""
    """``MULTUS_CLUSTER_NETWORK``: the NetworkAttachmentDefinition of eth0 when a pod names none."""
    endpoint_budget: float = 10.0
    """Seconds an endpoint write may spend on conflicts before the request fails with CNI 11."""
    undo_budget: float = 10.0
    """Seconds a failed or cancelled ADD may spend giving back what it took, shielded from cancellation: each
    give-back is retried with backoff (an actor restarting, a store refusing a moment) until then; what is
    still held is logged (a warning naming pool, address and pod) and freed by the pod's DEL or the check."""
    release_conflict_ips: bool = True
    """``DELETE /v1/ipam/ips`` with ``isReleaseConflictIPs`` releases a stateless pod's addresses
    [``SPIDERPOOL_ENABLED_RELEASE_CONFLICT_IPS``]; off, it is refused with HTTP 521."""
    pool_cache_ttl: float = 1.0
    """Seconds a listing of the pools' specs is reused.  Listing every pool (statuses and all) on every ADD
    costs more than the allocation itself once pools are large; a pool that is missing or filters the pod out
    is looked up again at once, so only a pool disabled or narrowed within this window can still be chosen."""
    context_cache_ttl: float = 1.0
    """Seconds a Namespace or Node read for a pod's context (labels and annotations for affinities and default
    pools) is reused: a burst of pods in one namespace on one node reads each once.  The Pod itself is always
    read afresh (its UID, annotations and phase decide the allocation)."""
    auto_pools: AutoPoolSettings = attrs.field(factory=AutoPoolSettings)
    """SpiderSubnet: the feature switches and the wait for an application's auto-created pool."""


@attrs.define
class IpamService:
    """Allocation and release for the pods of one node, each request as gather (the ``_gather_*`` reads and the
    caches behind them), decide (one call into ``spider.plan``), act (the pool actors, then the endpoint)."""

    store: Store
    pools: PoolRegistry
    node: str
    settings: IpamSettings = attrs.field(factory=IpamSettings)
    clock: Callable[[], float] = time.time
    """Wall-clock seconds: the ``addedAt`` of the records an ADD writes, compared by reclaim on any machine."""
    _pools_seen: dict[str, IPPool] = attrs.field(factory=dict)
    """The pools as last listed: pool choice reads them, and the overlap check (``contested``) too."""
    _pools_listed_at: float = float("-inf")
    _unparsed: tuple[Footprint, ...] = ()
    """What the pools of that listing that do not parse hold (``contested`` keeps it from other pools)."""
    _context_seen: dict[tuple[str, str], tuple[float, Obj | None]] = attrs.field(factory=dict)
    meter: IpamMeter = attrs.field(factory=IpamMeter)
    """What this service measured of its requests (``actors.servers.metrics`` reads it)."""
    auto_pools: AutoPools | None = None
    """Finds a pod's SpiderSubnet auto pools (``actors.ipam.autopools``); ``None``: one on ``store``."""
    _sandboxes: Turns = attrs.field(factory=Turns)
    """One ADD or DEL of a sandbox at a time, in the order they came: a runtime's retry of an ADD still under way
    (whose failure would undo what the retry answered), and a DEL that overtakes its ADD (which would find
    nothing yet, and the ADD's records would stay), each wait for the call before them."""

    def __attrs_post_init__(self) -> None:
        if self.pools.on_wait is None:  # NB: the pool actors report their requests' waits to this meter
            self.pools.on_wait = self.meter.queued
        if self.auto_pools is None:
            self.auto_pools = AutoPools(self.store, self.settings.auto_pools)
        if self.auto_pools.on_wait is None:  # NB: and its waits for an auto pool
            self.auto_pools.on_wait = self.meter.auto_pool_waited

    async def _get(self, kind: str, name: str, namespace: str = "") -> Obj | None:
        if not name:
            return None
        try:
            return await self.store.get(kind, name, namespace)
        except NotFound:
            return None

    async def _pod_context(self, namespace: str, name: str, uid: str) -> tuple[PodContext, Obj | None]:
        """Gather: the Pod (afresh) and what pool selection reads of it, its Namespace and its Node."""
        pod = await self._get("Pod", name, namespace)
        ns = await self._recent("Namespace", namespace)
        node = await self._recent("Node", self.node)
        pmeta = (pod or {}).get("metadata") or {}
        nmeta = (ns or {}).get("metadata") or {}
        ctx = PodContext(
            namespace=namespace,
            name=name,
            uid=uid or pmeta.get("uid", ""),
            node=self.node,
            labels=pmeta.get("labels") or {},
            annotations=pmeta.get("annotations") or {},
            namespace_labels={"kubernetes.io/metadata.name": namespace, **(nmeta.get("labels") or {})},
            namespace_annotations=nmeta.get("annotations") or {},
            node_labels={
                "kubernetes.io/hostname": self.node,
                **(((node or {}).get("metadata") or {}).get("labels") or {}),
            },
            agent_namespace=self.settings.agent_namespace,
            cluster_network=self.settings.cluster_network,
        )
        return ctx, pod

    async def _recent(self, kind: str, name: str) -> Obj | None:
        """A cluster-scoped context object (Namespace, Node) as read at most ``context_cache_ttl`` seconds ago."""
        now = trio.current_time()
        seen = self._context_seen.get((kind, name))
        if seen is not None and now - seen[0] <= self.settings.context_cache_ttl:
            return seen[1]
        obj = await self._get(kind, name)
        if len(self._context_seen) >= 4096:  # NB: many namespaces: forget the stale ones, keep it bounded
            limit = self.settings.context_cache_ttl
            self._context_seen = {k: v for k, v in self._context_seen.items() if now - v[0] <= limit}
        self._context_seen[(kind, name)] = (now, obj)
        return obj

    async def _workload(self, pod: Obj | None, namespace: str, name: str) -> Workload:
        """Gather: the pod's top controller (reference §2.1 step 2), walking the owner chain through the store
        with ``spider.workload``'s rules, and whether its addresses are fixed."""
        if pod is None:
            return Workload("Pod", name, endpoint_name=name)
        ctrl = controller_of(pod)
        if ctrl is None:
            return Workload("Pod", name, endpoint_name=name)
        while (hop := next_hop(ctrl)) is not None:  # ReplicaSet -> Deployment, Job -> CronJob
            owner = await self._get(hop, ctrl.name, namespace)
            parent = controller_of(owner) if owner else None
            if parent is None or parent.kind not in ("Deployment", "CronJob"):
                break
            ctrl = parent
        if ctrl.kind == "StatefulSet" and ctrl.group == "apps" and self.settings.enable_statefulset:
            sts = await self._get("StatefulSet", ctrl.name, namespace)
            return Workload(ctrl.kind, ctrl.name, True, statefulset_keeps(sts, name), name)
        if is_vmi(ctrl) and self.settings.enable_kubevirt_static_ip:
            return Workload(ctrl.kind, ctrl.name, True, await self._vm_keeps(namespace, ctrl.name), ctrl.name)
        # NB: without static IPs a VM's launcher pods are stateless pods, each with its own endpoint: one named after
        # the VMI made a migration's target take the source's endpoint for a dead pod's and free its address
        return Workload(ctrl.kind, ctrl.name, endpoint_name=name)

    async def _vm_keeps(self, namespace: str, vmi_name: str) -> bool:
        vmi = await self._get("VirtualMachineInstance", vmi_name, namespace)
        owner = controller_of(vmi) if vmi else None
        vm = await self._get("VirtualMachine", owner.name if owner else vmi_name, namespace)
        return kubevirt_keeps(vmi, vm)

    async def _static_keeps(self, endpoint: Endpoint) -> bool:
        """For a pod that is gone: whether its StatefulSet ordinal or VM is still valid."""
        if endpoint.owner_controller_type == "StatefulSet" and self.settings.enable_statefulset:
            sts = await self._get("StatefulSet", endpoint.owner_controller_name, endpoint.namespace)
            return statefulset_keeps(sts, endpoint.name)
        if endpoint.owner_controller_type == "VirtualMachineInstance" and self.settings.enable_kubevirt_static_ip:
            return await self._vm_keeps(endpoint.namespace, endpoint.name)
        return False

    async def _all_pools(self, *, max_age: float | None = None) -> dict[str, IPPool]:
        """Every usable pool's spec, listed at most ``pool_cache_ttl`` seconds ago (``max_age`` overrides)."""
        limit = self.settings.pool_cache_ttl if max_age is None else max_age
        if self._pools_seen and trio.current_time() - self._pools_listed_at <= limit:
            return self._pools_seen
        self._pools_listed_at = trio.current_time()
        out: dict[str, IPPool] = {}
        unparsed: list[Footprint] = []
        for obj in (await self.store.list(POOL)).items:
            try:
                pool = IPPool.from_object(obj)
            except SpiderError as exc:  # an invalid pool must not break allocation from the others
                log.warning("skipping invalid pool %s: %s", obj.get("metadata", {}).get("name"), exc)
                if (footprint := Footprint.of(obj)) is not None:  # NB: but what its pods hold stays theirs
                    unparsed.append(footprint)
                continue
            out[pool.name] = pool
        self._pools_seen, self._unparsed = out, tuple(unparsed)
        return out

    async def _gather_add(self, req: AddRequest) -> AddFacts:
        """Gather: the Pod (afresh), its Namespace and Node, its workload, its endpoint and the pools' specs; with
        SpiderSubnet annotations, the application's auto pools (``actors.ipam.autopools``: waits until ready)."""

        async def pod_side() -> tuple[tuple[PodContext, Obj | None], Workload]:
            ctx, pod = await self._pod_context(req.pod_namespace, req.pod_name, req.pod_uid)
            return (ctx, pod), await self._workload(pod, req.pod_namespace, req.pod_name)

        (ctx, pod), workload, endpoint = await self._beside_endpoint(pod_side, req.pod_namespace, req.pod_name)
        pools = await self._all_pools()
        assert self.auto_pools is not None
        if endpoint is not None and endpoint.uid == ctx.uid and endpoint.nic(req.ifname) is not None:
            ctx = self.auto_pools.switched(ctx)  # NB: a repeated ADD asks the recorded pools: nothing to find
        else:  # SpiderSubnet annotations: the application's auto pools, once ready (may wait for the controller)
            found = await self.auto_pools.find(ctx, pod, req.ifname)
            ctx, pools = found.context, {**pools, **found.pools} if found.pools else pools
        return AddFacts(req, self.node, ctx, pod, workload, endpoint, pools)

    async def _beside_endpoint(
        self, pod_side: Callable[[], Awaitable[tuple[_T, Workload]]], namespace: str, pod_name: str
    ) -> tuple[_T, Workload, Endpoint | None]:
        """``pod_side()`` (the Pod, then its workload: one read after another) and, at the same time, the endpoint
        named after the pod: the name it has for every workload but a KubeVirt VM's, whose endpoint is read once
        the workload names it (the guess is then dropped, whatever came of it).  A read at once sees nothing the
        reads one after the other would not: either may race a writer, and every write is guarded anyway.  The
        pod side's error wins, and stops the guessed read."""
        guessed: list[outcome.Outcome[Endpoint | None]] = []

        async def read_guessed() -> None:
            guessed.append(await outcome.acapture(self._read_endpoint, pod_name, namespace))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_guessed)
            side = await outcome.acapture(pod_side)  # NB: raised in here, an error would leave in an ExceptionGroup
            if isinstance(side, outcome.Error):
                nursery.cancel_scope.cancel(reason="the pod side failed")
        found, workload = side.unwrap()
        name = workload.endpoint_name or pod_name
        if name != pod_name:
            return found, workload, await self._read_endpoint(name, namespace)
        return found, workload, guessed[0].unwrap()

    async def _read_endpoint(self, name: str, namespace: str) -> Endpoint | None:
        obj = await self._get(ENDPOINT, name, namespace)
        return Endpoint.from_object(obj) if obj else None

    async def _decide_add(self, facts: AddFacts) -> tuple[AddFacts, AddPlan]:
        """Decide, once; a pool named but missing or filtered out may have been made or changed a moment ago:
        list the pools afresh and decide again before failing.  Raises the plan's error."""
        plan = decide_add(facts)
        if isinstance(plan.error, PoolNotFound | NoAvailablePool):
            facts = attrs.evolve(facts, pools=await self._all_pools(max_age=0))
            plan = decide_add(facts)
        if plan.error is not None:
            raise plan.error
        return facts, plan

    async def allocate(self, req: AddRequest) -> list[NicResult]:
        """Every NIC's addresses for this ADD (``_add``), counted and timed in ``meter``."""
        with self.meter.allocation.measure():
            async with self._sandboxes.of(_sandbox(req)):
                return await self._add(req)

    async def _add(self, req: AddRequest) -> list[NicResult]:
        """Every NIC's addresses for this ADD (usually one NIC); idempotent for the same pod UID and NIC.

        Gather (``_gather_add``), decide (``spider.plan.decide_add``: one plan, or the error, before anything
        is done), act: free a dead same-name pod's endpoint, re-own a fixed-IP predecessor's addresses,
        allocate every NIC and family all-or-nothing through the pool actors, record the endpoint, confirm.

        Every record it writes carries the time it started (``addedAt``), and it answers only within
        ``spider.pool.ADD_WINDOW`` of that time and only addresses the pools still record as the pod's after the
        endpoint is written; otherwise it gives back what it took and fails with ``AddAbandoned`` (CNI 11).
        ``spider check --reclaim`` leaves records alone for ``RECLAIM_AFTER``, so it never frees what an ADD
        answers.
        """
        facts, plan = await self._decide_add(await self._gather_add(req))
        if plan.free_first is not None:
            await self._release_entries(plan.free_first, plan.free_first.nics, container_id="")
            await self._drop_endpoint(plan.free_first)
        started, stamp = trio.current_time(), self.clock()  # NB: together, before the first record is written
        plan = _stamped(plan, stamp)
        if plan.adopt_from is not None:
            kept = await self._adopt(plan)
            if kept != plan.adopt:  # an adoption lost a race: decide again on the endpoint as rewritten
                renewed = adopted(plan.adopt_from, kept, plan.holder) if kept else None
                facts, plan = await self._decide_add(attrs.evolve(facts, endpoint=renewed))
                plan = _stamped(plan, stamp)
        return await self._allocate_planned(req, facts, plan, started)

    async def _allocate_planned(
        self, req: AddRequest, facts: AddFacts, plan: AddPlan, started: float
    ) -> list[NicResult]:
        """Act: every family of every NIC in parallel, all or nothing; then the endpoint; then the last look
        (``_confirm``).  ``started``: when the ADD started (``trio.current_time()``), for ``ADD_WINDOW``."""
        made: list[tuple[str, Allocation]] = []
        results: dict[tuple[str, int], Allocation] = {}
        failures: list[SpiderError] = []
        shields: list[trio.CancelScope] = []
        running = len(plan.families)
        all_reported = trio.Event()

        async def one(family: FamilyPlan) -> None:
            # NB: siblings are never cancelled, nor is one by our caller at once: a request already in a pool's
            # mailbox is committed anyway, so each one must finish and report before we know what to give back.
            nonlocal running
            with trio.CancelScope(shield=True) as shield:
                shields.append(shield)
                try:
                    await self._allocate_one(plan.owner(family.nic), family, facts.pools, results, made)
                except SpiderError as exc:
                    failures.append(exc)
            running -= 1
            if not running:
                all_reported.set()

        given_back = 0
        try:
            async with trio.open_nursery() as nursery:
                for family in plan.families:
                    nursery.start_soon(one, family)
                try:
                    await all_reported.wait()
                except trio.Cancelled:  # NB: the agent's drain: what is answered goes back now; the rest waits
                    for shield in shields:  # for its answer (bounded) and goes back after
                        shield.deadline = min(shield.deadline, trio.current_time() + self.settings.undo_budget)
                    given_back = len(made)
                    await self._undo(made[:given_back], plan)
                    raise
        except BaseException:  # cancelled: give back the rest (a request unanswered even then is GC's)
            await self._undo(made[given_back:], plan)
            raise
        if failures:
            await self._undo(made, plan)
            raise failures[0]
        nic_results = []
        # Custom routes as Spiderpool's groupCustomRoutes: each to the first NIC whose subnet holds its gateway, once.
        # A NIC answered from its endpoint entry (a later ADD of a NIC the first ADD allocated) keeps only those
        # its entry records: one the first ADD gave another NIC is not given (and installed) twice.
        pending = plan.routes
        for nic in plan.nics:
            allocs = tuple(results[(nic.nic, v)] for v in (4, 6) if (nic.nic, v) in results)
            if not allocs:
                continue
            held = facts.endpoint.nic(nic.nic) if nic.recorded and facts.endpoint is not None else None
            mine = [
                any(_gw_in(rt.gw, a.address) for a in allocs) and (held is None or rt in held.routes) for rt in pending
            ]
            extra = tuple(rt for rt, ok in zip(pending, mine, strict=True) if ok)
            pending = tuple(rt for rt, ok in zip(pending, mine, strict=True) if not ok)
            routes = tuple(x for a in allocs for x in a.routes) + extra
            nic_results.append(NicResult(nic.nic, allocs, nic.clean_gateway, routes))
        pod = f"{req.pod_namespace}/{req.pod_name}"
        try:
            _within_window(pod, started)  # NB: too late already: do not write the endpoint at all
            recorded = await self._record(req, plan, facts, nic_results)
        except BaseException:
            await self._undo(made, plan)
            raise
        try:
            await self._confirm(pod, plan, results, started)
        except SpiderError:
            await self._withdraw(recorded, {(r.nic, req.container_id) for r in nic_results})
            await self._undo(made, plan)
            raise
        except BaseException:
            await self._undo(made, plan)
            raise
        return nic_results

    async def _confirm(
        self, pod: str, plan: AddPlan, results: Mapping[tuple[str, int], Allocation], started: float
    ) -> None:
        """Act, last, once the endpoint is written: every address is still recorded as the pod's in its pool as
        stored now (nothing freed it meanwhile: a reclaim by an older version, a concurrent ADD's undo of the same
        pod), and the ADD is still within ``ADD_WINDOW``; ``AddAbandoned`` otherwise.  The window is checked
        last: nothing awaits between it and the answer."""
        lost: list[Allocation] = []
        failures: list[SpiderError] = []

        async def look(nic: str, allocation: Allocation) -> None:
            try:
                handle = await self.pools.get(allocation.pool)
                if not await handle.verify(allocation.ip, (plan.pod_uid, nic), allocation.recorded_at):
                    lost.append(allocation)
            except PoolNotFound:  # the pool is gone: so is the record
                lost.append(allocation)
            except SpiderError as exc:
                failures.append(exc)

        async with trio.open_nursery() as nursery:
            for (nic, _version), allocation in results.items():
                nursery.start_soon(look, nic, allocation)
        if lost:
            which = ", ".join(f"{a.address} in pool {a.pool}" for a in sorted(lost, key=lambda a: a.version))
            raise AddAbandoned(pod=pod, reason=f"{which} is no longer recorded as its own")
        if failures:
            raise failures[0]
        _within_window(pod, started)

    async def _withdraw(self, recorded: Endpoint, entries: set[tuple[str, str]]) -> None:
        """Take a failed ADD's ``(interface, container)`` entries out of the endpoint it wrote (best effort:
        what stays is dangling, and the pod's DEL drops it)."""
        try:
            await self._forget_entries(recorded, entries)
        except SpiderError as exc:
            log.warning(
                "could not withdraw %s from endpoint %s/%s: %s", sorted(entries), recorded.namespace, recorded.name, exc
            )

    async def _adopt(self, plan: AddPlan) -> tuple[NicAllocation, ...]:
        """Act on fixed IPs (reference §2.1 steps 4-5): the new pod of a StatefulSet ordinal or VM takes over
        the addresses its predecessor held; an entry the plan abandons (its pool no longer a candidate) or
        whose record is gone or someone else's is freed.  Rewrites the endpoint; returns the entries kept.
        """
        assert plan.adopt_from is not None
        endpoint = plan.adopt_from
        kept: list[NicAllocation] = []
        for entry in endpoint.nics:
            adopted_all, adopted_any = entry in plan.adopt, False
            for _version, pool, address in entry.pools() if adopted_all else ():
                handle = await self.pools.get(pool)
                ip = address.partition("/")[0]
                took = await handle.adopt(ip, endpoint.uid, plan.owner(entry.interface))
                adopted_all, adopted_any = adopted_all and took, adopted_any or took
            if adopted_all:
                kept.append(entry)
                continue
            await self._release_entries(endpoint, [entry], container_id="")
            if adopted_any:  # NB: a family taken over before another's was lost is the new pod's: free it as such
                await self._release_entries(adopted(endpoint, [entry], plan.holder), [entry], container_id="")
        await self._write_endpoint(adopted(endpoint, kept, plan.holder), exists=True)
        return tuple(kept)

    async def _allocate_one(
        self,
        owner: Owner,
        family: FamilyPlan,
        pools: Mapping[str, IPPool],
        results: dict[tuple[str, int], Allocation],
        made: list[tuple[str, Allocation]],
    ) -> None:
        exhausted: list[PoolExhausted] = []
        for pool in family.candidates:
            handle = await self.pools.get(pool.name)
            try:
                allocation = await handle.allocate(owner, contested(pool, pools.values(), self._unparsed))
            except PoolExhausted as exc:
                exhausted.append(exc)
                continue
            results[(owner.nic, family.version)] = allocation
            made.append((owner.nic, allocation))
            return
        if len(exhausted) == 1:
            raise exhausted[0]
        raise NoAvailablePool(
            nic=owner.nic,
            version=family.version,
            reason=f"all IP addresses used out in pools {[e.pool for e in exhausted]}",
        )

    async def _undo(self, made: list[tuple[str, Allocation]], plan: AddPlan) -> None:
        """All-or-nothing: give back what this call took (only if the same sandbox still holds it).

        An address the owner held before this call (a repeated ADD, a re-owned fixed IP) stays held.  Each
        give-back is retried with backoff (the actor restarting, the store refusing a moment); the whole undo
        runs shielded from the caller's cancellation for at most ``undo_budget`` seconds (the pool actors may
        be going away too).  What it could not give back is logged, naming pool, address and pod, for
        ``spider check`` and a later DEL (which finds the records by their sandbox) to free.
        """
        left = [(nic, a) for nic, a in made if a.fresh]
        with trio.CancelScope(shield=True, deadline=trio.current_time() + self.settings.undo_budget):
            for nic, allocation in list(left):
                if await self._give_back(allocation, (plan.pod_uid, nic), plan.holder.container_id):
                    left.remove((nic, allocation))
        for nic, allocation in left:
            log.warning(
                "could not undo %s from pool %s for pod %s/%s (uid %s, interface %s) within %ss",
                allocation.address,
                allocation.pool,
                plan.holder.namespace,
                plan.endpoint_name,
                plan.pod_uid,
                nic,
                self.settings.undo_budget,
            )

    async def _give_back(self, allocation: Allocation, key: tuple[str, str], container_id: str) -> bool:
        """Release one address taken by a failed ADD, retrying transient failures; ``False``: cannot."""
        delay = 0.01
        while True:
            try:
                await (await self.pools.get(allocation.pool)).release(key, container_id)
                return True
            except PoolNotFound:  # the pool is gone: nothing left to give back there
                return True
            except TransientError as exc:  # an actor restarting, a store refusing a moment: try again
                log.info("undo of %s in pool %s failed, retrying: %s", allocation.address, allocation.pool, exc)
            except SpiderError as exc:
                log.warning("undo of %s in pool %s failed: %s", allocation.address, allocation.pool, exc)
                return False
            await trio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def _record(self, req: AddRequest, plan: AddPlan, facts: AddFacts, results: list[NicResult]) -> Endpoint:
        """Add the NICs' allocations to the endpoint, creating it if needed; returns it as stored.  When the plan
        says there is none, the create is tried first, without a read; ``AlreadyExists`` reads and merges.
        With no Pod object found (``facts.pod``), the endpoint says so (``Endpoint.pod_object_absent``), so GC
        leaves the addresses to the pod's CNI DEL (the latest ADD decides: a Pod object made since clears it).

        What another ADD wrote since the facts were gathered is left alone (``AddAbandoned``, whose retry decides
        afresh): an endpoint of another UID (a pod of the same name), and an entry for one of these NICs naming
        another sandbox than this one or the one gathered (a newer sandbox of this pod, whose ADD was answered
        while this one, perhaps abandoned by the runtime, was under way).  Replacing either would leave an
        address held in its pool that no endpoint lists as its holder's, for reclaim to free under a live pod."""
        deadline = trio.current_time() + self.settings.endpoint_budget
        maybe_exists = plan.endpoint_exists
        namespace, ep_name, workload = req.pod_namespace, plan.endpoint_name, facts.workload
        gathered = facts.endpoint if facts.endpoint is not None and facts.endpoint.uid == plan.pod_uid else None
        while True:
            obj = await self._get(ENDPOINT, ep_name, namespace) if maybe_exists else None
            maybe_exists = True
            endpoint = (
                Endpoint.from_object(obj)
                if obj
                else Endpoint(namespace, ep_name, plan.pod_uid, self.node, (), workload.kind, workload.name)
            )
            _check_unchanged(req, plan, endpoint, gathered, results)
            endpoint = attrs.evolve(endpoint, node=self.node, pod_object_absent=facts.pod is None)
            for r in results:
                endpoint = endpoint.with_nic(_nic_allocation(r, req))
            if obj is not None and Endpoint.from_object(obj) == endpoint:
                return endpoint
            try:
                return Endpoint.from_object(await self._write_endpoint(endpoint, exists=obj is not None))
            except (Conflict, AlreadyExists):
                if trio.current_time() > deadline:
                    raise StaleWrite(
                        kind=ENDPOINT, name=f"{namespace}/{ep_name}", sent_version=endpoint.resource_version
                    ) from None
                await trio.sleep(0.01)

    async def _write_endpoint(self, endpoint: Endpoint, *, exists: bool) -> Obj:
        if exists:
            return await self.store.update(endpoint.to_object())
        return await self.store.create(endpoint.to_object())

    async def _gather_release(
        self, req: DelRequest, *, keep_live: bool, interfaces: frozenset[str] | None = None
    ) -> ReleaseFacts:
        """Gather: the Pod (afresh), its workload, its endpoint; for a fixed-IP endpoint whose pod is gone,
        whether its StatefulSet ordinal or VM is still valid."""

        async def pod_side() -> tuple[Obj | None, Workload]:
            pod = await self._get("Pod", req.pod_name, req.pod_namespace)
            return pod, await self._workload(pod, req.pod_namespace, req.pod_name)

        pod, workload, endpoint = await self._beside_endpoint(pod_side, req.pod_namespace, req.pod_name)
        static_keeps = False
        if endpoint is not None and endpoint.owner_controller_type in STATIC_KINDS and not workload.static:
            static_keeps = await self._static_keeps(endpoint)
        return ReleaseFacts(req, pod, workload, endpoint, static_keeps, keep_live, interfaces)

    async def release(
        self, req: DelRequest, *, keep_live: bool = True, interfaces: frozenset[str] | None = None
    ) -> list[str]:
        """Free what this pod's sandbox holds (``_release``), counted and timed in ``meter``."""
        with self.meter.release.measure():
            async with self._sandboxes.of(_sandbox(req)):
                return await self._release(req, keep_live=keep_live, interfaces=interfaces)

    async def _release(self, req: DelRequest, *, keep_live: bool, interfaces: frozenset[str] | None) -> list[str]:
        """Free what this pod's sandbox holds (all its NICs, as Spiderpool); returns the freed addresses.

        Gather (``_gather_release``), decide (``spider.plan.decide_release``), act.  Works from stored state
        alone and succeeds when there is nothing to free.  A live pod keeps its addresses (sandbox
        re-creation; a request without UID takes the Pod's; a pod in a terminal phase is not alive); so does
        a StatefulSet pod whose ordinal is still valid and a KubeVirt VM pod whose VM is; a DEL from an older
        sandbox or an older pod of the same name frees nothing, except that a deleted VM's endpoint goes with
        any of its launcher pods' DEL.  With no endpoint, the pool records naming this sandbox (a failed or
        interrupted ADD's) are freed.  ``interfaces`` (CNI GC of one network) frees only those NICs.
        """
        plan = decide_release(await self._gather_release(req, keep_live=keep_live, interfaces=interfaces))
        if plan.sweep is not None:
            return await self._free_sandbox(plan.sweep)
        endpoint = plan.endpoint
        if endpoint is None:
            return []
        freed: list[str] = []
        failures: list[SpiderError] = []

        async def release() -> None:
            freed.extend(await self._release_entries(endpoint, plan.free, plan.container_id))

        async def record() -> None:
            if plan.drop_endpoint:
                await self._drop_endpoint(endpoint)
            elif plan.forget is not None:
                await self._forget_entries(endpoint, set(plan.forget))

        async def one(step: Callable[[], Awaitable[None]]) -> None:
            try:
                await step()
            except SpiderError as exc:
                failures.append(exc)

        # NB: the pool writes and the endpoint's at once (the endpoint's while the pool host writes): each is
        # guarded on its own (a record is freed only while this sandbox holds it; the endpoint is rewritten at
        # the version read), and a DEL that fails half-way is retried: it frees what the endpoint still lists,
        # or, with the endpoint gone, the records that name the sandbox
        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, release)
            nursery.start_soon(one, record)
        if failures:
            raise failures[0]
        return freed

    async def _free_sandbox(self, sandbox: Sandbox) -> list[str]:
        """Free every pool record that names the sandbox, in every pool that lists one.

        One listing of the pools, read only where the container ID appears (rare: a DEL normally finds the
        endpoint); each record is freed by its pool's actor only if that sandbox still holds it.
        """
        freed: list[str] = []
        for obj in (await self.store.list(POOL)).items:
            name = obj.get("metadata", {}).get("name", "")
            try:
                keys = sandbox_holdings(obj, sandbox)
            except SpiderError as exc:
                log.warning("cannot look for sandbox %s in pool %s: %s", sandbox.container_id[:12], name, exc)
                continue
            for key in keys:
                try:
                    ip = await (await self.pools.get(name)).release(key, sandbox.container_id)
                except AllocationError:  # the pool is gone meanwhile
                    continue
                if ip:
                    log.info("freed %s in pool %s: left by an unfinished ADD of %s", ip, name, sandbox.pod)
                    freed.append(ip)
        return freed

    async def _release_entries(
        self, endpoint: Endpoint, entries: Sequence[NicAllocation], container_id: str
    ) -> list[str]:
        freed: list[str] = []
        for entry in entries:
            for _version, pool, _address in entry.pools():
                handle = await self.pools.get(pool)
                try:
                    ip = await handle.release((endpoint.uid, entry.interface), container_id)
                except AllocationError:  # the pool is gone: nothing left to free there
                    continue
                if ip:
                    freed.append(ip)
        return freed

    async def _forget_entries(self, endpoint: Endpoint, entries: set[tuple[str, str]]) -> None:
        """Remove these ``(interface, container)`` entries, deleting the endpoint when none remain.

        An entry a newer sandbox of the same pod wrote meanwhile (same interface, another container) stays.
        """
        deadline = trio.current_time() + self.settings.endpoint_budget
        current: Endpoint | None = endpoint  # NB: as the caller read it; a write based on it is guarded anyway
        while True:
            if current is None:
                obj = await self._get(ENDPOINT, endpoint.name, endpoint.namespace)
                if obj is None:
                    return
                current = Endpoint.from_object(obj)
            if current.uid != endpoint.uid:
                return
            kept = attrs.evolve(
                current, nics=tuple(n for n in current.nics if (n.interface, n.container_id) not in entries)
            )
            try:
                if kept.nics:
                    await self.store.update(kept.to_object())
                else:
                    await self._drop_endpoint(current)
                return
            except Conflict:
                if trio.current_time() > deadline:
                    raise StaleWrite(
                        kind=ENDPOINT,
                        name=f"{endpoint.namespace}/{endpoint.name}",
                        sent_version=current.resource_version,
                    ) from None
                if current is not endpoint:  # NB: our own read lost a race: let the other writer finish
                    await trio.sleep(0.01)
                current = None

    async def _drop_endpoint(self, endpoint: Endpoint) -> None:
        """Delete the endpoint (its finalizer first) as it was read.

        Gone already, or another pod's meanwhile: nothing to do.  Changed otherwise (an ADD recorded a NIC):
        ``Conflict``, for the caller to decide again.
        """
        deadline = trio.current_time() + self.settings.endpoint_budget
        current = endpoint
        while True:
            obj = current.to_object()
            obj["metadata"]["finalizers"] = []
            try:
                written = await self.store.update(obj)
                version = written["metadata"]["resourceVersion"]
                await self.store.delete(ENDPOINT, current.name, current.namespace, resource_version=version)
                return
            except NotFound:
                return
            except Conflict:
                fresh = await self._get(ENDPOINT, endpoint.name, endpoint.namespace)
                if fresh is None or (current := Endpoint.from_object(fresh)).uid != endpoint.uid:
                    return
                if current.nics != endpoint.nics or trio.current_time() > deadline:
                    raise
                await trio.sleep(0.01)

    async def release_ips(self, req: DelRequest) -> list[str]:
        """``DELETE /v1/ipam/ips``: free every NIC of the pod's sandbox (after a detected conflict).

        Unlike a DEL, a live pod's addresses go too (as in Spiderpool): a conflicting address must not stay
        with the pod whose ADD failed because of it.  A request that says ``isReleaseConflictIPs`` is refused
        (``ConflictReleaseForbidden``), as Spiderpool refuses it, when ``release_conflict_ips`` is off or the
        pod's addresses are fixed (a StatefulSet's or a KubeVirt VM's, those features on).
        """
        if req.release_conflict_ips:
            pod = f"{req.pod_namespace}/{req.pod_name}"
            if not self.settings.release_conflict_ips:
                raise ConflictReleaseForbidden(pod=pod, stateful=False)
            found = await self._get("Pod", req.pod_name, req.pod_namespace)
            if (await self._workload(found, req.pod_namespace, req.pod_name)).static:
                raise ConflictReleaseForbidden(pod=pod, stateful=True)
        return await self.release(req, keep_live=False)

    async def endpoint(self, namespace: str, pod_name: str) -> Endpoint | None:
        """The SpiderEndpoint recording this pod's addresses, if any (a KubeVirt VM's pods share the VM's)."""
        pod = await self._get("Pod", pod_name, namespace)
        ctrl = controller_of(pod) if pod is not None else None
        name = pod_name
        if ctrl is not None and is_vmi(ctrl) and self.settings.enable_kubevirt_static_ip:
            name = ctrl.name  # NB: as _workload names it, without walking other owners (once per pod, per CHECK)
        obj = await self._get(ENDPOINT, name, namespace)
        return Endpoint.from_object(obj) if obj else None

    async def pool_free(self, names: Sequence[str]) -> dict[str, int]:
        """Free addresses per pool, from the actors' ledgers."""
        out = {}
        for name in names:
            out[name] = (await (await self.pools.get(name)).inspect()).free
        return out


def _sandbox(req: AddRequest | DelRequest) -> tuple[str, str, str]:
    """Whose calls take turns: one sandbox of one pod (each of its NICs' ADDs too).  Another sandbox of the pod
    does not wait: an older sandbox's late ADD leaves a newer sandbox's entry alone (``_record``)."""
    return (req.pod_namespace, req.pod_name, req.container_id)


def _stamped(plan: AddPlan, at: float) -> AddPlan:
    """The plan whose records say the ADD started at ``at`` (wall-clock seconds: their ``addedAt``)."""
    return attrs.evolve(plan, holder=attrs.evolve(plan.holder, added_at=at))


def _within_window(pod: str, started: float) -> None:
    """``AddAbandoned`` once the ADD that started at ``started`` (``trio.current_time()``) has outlasted
    ``ADD_WINDOW``: reclaim may free its records from then on."""
    took = trio.current_time() - started
    if took > ADD_WINDOW:
        reason = f"it took {took:.0f} s, longer than the {ADD_WINDOW:.0f} s within which its records are safe"
        raise AddAbandoned(pod=pod, reason=reason)


def _check_unchanged(
    req: AddRequest, plan: AddPlan, stored: Endpoint, gathered: Endpoint | None, results: Sequence[NicResult]
) -> None:
    """``AddAbandoned`` when the stored endpoint is another UID's, or names, for one of ``results``' NICs, a
    sandbox that is neither this request's nor the one the ADD gathered (``_record``)."""
    pod = f"{req.pod_namespace}/{req.pod_name}"
    if stored.uid != plan.pod_uid:
        reason = f"its endpoint {stored.namespace}/{stored.name} was written meanwhile for UID {stored.uid}"
        raise AddAbandoned(pod=pod, reason=reason)
    for r in results:
        entry = stored.nic(r.nic)
        if entry is None or entry.container_id == req.container_id:
            continue
        before = gathered.nic(r.nic) if gathered is not None else None
        if before is None or entry.container_id != before.container_id:
            reason = f"its endpoint's {r.nic} was written meanwhile for sandbox {entry.container_id[:12] or '(none)'}"
            raise AddAbandoned(pod=pod, reason=reason)


def _nic_allocation(r: NicResult, req: AddRequest) -> NicAllocation:
    v4 = next((a for a in r.allocations if a.version == 4), None)
    v6 = next((a for a in r.allocations if a.version == 6), None)
    return NicAllocation(
        interface=r.nic,
        ipv4=v4.address if v4 else None,
        ipv6=v6.address if v6 else None,
        ipv4_pool=v4.pool if v4 else None,
        ipv6_pool=v6.pool if v6 else None,
        ipv4_gateway=v4.gateway if v4 else None,
        ipv6_gateway=v6.gateway if v6 else None,
        clean_gateway=r.clean_gateway,
        routes=r.routes,
        container_id=req.container_id,
        network=req.network,
    )


def _gw_in(gw: str, address: str) -> bool:
    try:
        return parse_ip(gw) in parse_network(address, strict=False)
    except ValueError:
        return False


__all__ = ["IpamService", "NicResult", "PoolRegistry", "add_response"]
