"""The agent's IPAM service: allocate and release a pod's addresses across pools, keep its SpiderEndpoint.

Owns the request flow of Spiderpool's agent (reference §2.1, §2.13) on top of the PoolActors:
- ``allocate``: idempotent by pod UID and interface; picks pools by precedence and filters
  (``spider.selection``), asks each pool's actor, all-or-nothing across families and NICs (giving back only
  what this call took, also when cancelled), then records the SpiderEndpoint and answers with Spiderpool's
  ``IpamAddResponse``; a request whose pod UID is not the live pod's fails before touching anything;
- ``release``: from stored state alone (the endpoint), only what the same pod UID and sandbox hold;
- ``release_ips``, ``endpoint``: the batch release and the workload-endpoint read of the agent API;
- ``pools``: the registry that starts one supervised PoolActor per pool on first use;
- short-lived caches of what changes rarely and is read on every ADD: the pools' specs and the pod's
  Namespace and Node (``IpamSettings``); the Pod itself is always read afresh.
It never touches a database or socket directly: everything goes through the ``Store`` port.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import trio

from actors.ipam.pool import Allocation, PoolActor, PoolHandle, open_pool
from actors.runtime.supervisor import Supervisor
from actors.stores.port import AlreadyExists, Conflict, NotFound, Obj, Store
from spider.addr import parse_ip, parse_network
from spider.endpoint import KIND as ENDPOINT
from spider.endpoint import Endpoint, NicAllocation
from spider.errors import (
    AllocationError,
    NoAvailablePool,
    PodNotAlive,
    PoolExhausted,
    PoolNotFound,
    SpiderError,
    StaleWrite,
)
from spider.ipam_request import AddRequest, DelRequest
from spider.pool import KIND as POOL
from spider.pool import IPPool, Owner, Route, contested
from spider.selection import NicRequest, PodContext, candidates, custom_routes, requested_pools
from spider.workload import (
    KUBEVIRT_API,
    Controller,
    controller_of,
    kubevirt_keeps,
    next_hop,
    pod_not_alive,
    statefulset_keeps,
)

log = logging.getLogger(__name__)


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


@attrs.define
class PoolRegistry:
    """Starts one supervised PoolActor per pool on first use and hands out its handle."""

    store: Store
    supervisor: Supervisor
    handles: dict[str, PoolHandle] = attrs.field(factory=dict)
    actors: dict[str, PoolActor] = attrs.field(factory=dict)
    _starting: dict[str, trio.Event] = attrs.field(factory=dict)
    default_cooldown: float = 0.0
    """Seconds released addresses rest before reuse, for pools that do not say (``--release-cooldown``)."""
    conflict_budget: float = 20.0
    """Seconds a pool's batch may keep losing write races before it fails with CNI 11 (``--conflict-budget``)."""

    async def get(self, name: str) -> PoolHandle:
        """The handle of the pool's actor, starting the actor if needed."""
        handle = self.handles.get(name)
        if handle is not None:
            return handle
        if name in self._starting:
            await self._starting[name].wait()
            return self.handles[name]
        self._starting[name] = event = trio.Event()
        try:
            handle, actor = open_pool(name, self.store, default_cooldown=self.default_cooldown)
            actor.conflict_budget = self.conflict_budget
            await self.supervisor.start(f"pool/{name}", actor.run)
            self.handles[name], self.actors[name] = handle, actor
        finally:
            del self._starting[name]
            event.set()
        return handle

    def statistics(self) -> dict[str, dict[str, int]]:
        """Per pool: requests, batches, writes, conflicts, largest batch."""
        return {name: attrs.asdict(actor.stats) for name, actor in self.actors.items()}


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
    """Seconds an endpoint write may spend on conflicts before the request fails with CNI 11; also the most a
    failed or cancelled ADD spends giving back what it took (shielded from cancellation)."""
    pool_cache_ttl: float = 1.0
    """Seconds a listing of the pools' specs is reused.  Listing every pool (statuses and all) on every ADD
    costs more than the allocation itself once pools are large; a pool that is missing or filters the pod out
    is looked up again at once, so only a pool disabled or narrowed within this window can still be chosen."""
    context_cache_ttl: float = 1.0
    """Seconds a Namespace or Node read for a pod's context (labels and annotations for affinities and default
    pools) is reused: a burst of pods in one namespace on one node reads each once.  The Pod itself is always
    read afresh (its UID, annotations and phase decide the allocation)."""


@attrs.frozen
class Workload:
    """What a pod belongs to, as far as its addresses are concerned."""

    kind: str = "Pod"
    name: str = ""
    static: bool = False
    """A StatefulSet or KubeVirt pod (feature on): its addresses outlive the pod."""
    keeps: bool = False
    """Static and still valid: a DEL keeps the addresses."""
    endpoint_name: str = ""
    """The SpiderEndpoint's (and pool records') name: the VMI's for KubeVirt, else the pod's."""


STATIC_KINDS = ("StatefulSet", "VirtualMachineInstance")


@attrs.define
class IpamService:
    """Allocation and release for the pods of one node."""

    store: Store
    pools: PoolRegistry
    node: str
    settings: IpamSettings = attrs.field(factory=IpamSettings)
    _pools_seen: dict[str, IPPool] = attrs.field(factory=dict)
    """The pools as last listed: pool choice reads them, and the overlap check (``contested``) too."""
    _pools_listed_at: float = float("-inf")
    _context_seen: dict[tuple[str, str], tuple[float, Obj | None]] = attrs.field(factory=dict)

    async def _get(self, kind: str, name: str, namespace: str = "") -> Obj | None:
        if not name:
            return None
        try:
            return await self.store.get(kind, name, namespace)
        except NotFound:
            return None

    async def _pod_context(self, namespace: str, name: str, uid: str) -> tuple[PodContext, Obj | None]:
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
        """Resolve the pod's top controller (reference §2.1 step 2) and whether its addresses are fixed."""
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
        if _is_vmi(ctrl):
            if self.settings.enable_kubevirt_static_ip:
                return Workload(ctrl.kind, ctrl.name, True, await self._vm_keeps(namespace, ctrl.name), ctrl.name)
            return Workload(ctrl.kind, ctrl.name, endpoint_name=ctrl.name)
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
        for obj in (await self.store.list(POOL)).items:
            try:
                pool = IPPool.from_object(obj)
            except SpiderError as exc:  # an invalid pool must not break allocation from the others
                log.warning("skipping invalid pool %s: %s", obj.get("metadata", {}).get("name"), exc)
                continue
            out[pool.name] = pool
        self._pools_seen = out
        return out

    async def allocate(self, req: AddRequest) -> list[NicResult]:
        """Every NIC's addresses for this ADD (usually one NIC); idempotent for the same pod UID and NIC.

        Follows Spiderpool's order (reference §2.1): a same-name endpoint of another UID is either a fixed-IP
        workload's (its addresses are re-owned, step 5) or a dead pod's (freed, step 6); a recorded NIC is
        returned again; anything else is allocated fresh, all-or-nothing across NICs and families.
        """
        ctx, pod = await self._pod_context(req.pod_namespace, req.pod_name, req.pod_uid)
        if pod is not None and (why := pod_not_alive(pod)) is not None:
            raise PodNotAlive(pod=f"{req.pod_namespace}/{req.pod_name}", reason=why)
        live_uid = (pod or {}).get("metadata", {}).get("uid", "")
        if req.pod_uid and live_uid and req.pod_uid != live_uid:  # a late ADD for a pod replaced since
            raise PodNotAlive(
                pod=f"{req.pod_namespace}/{req.pod_name}", reason=f"UID {req.pod_uid} was replaced by {live_uid}"
            )
        workload = await self._workload(pod, req.pod_namespace, req.pod_name)
        uid = ctx.uid or req.container_id
        ep_name = workload.endpoint_name or req.pod_name

        def owner_of(nic: str) -> Owner:
            return Owner(uid, nic, req.pod_namespace, ep_name, req.container_id, self.node)

        pools = await self._all_pools()
        obj = await self._get(ENDPOINT, ep_name, req.pod_namespace)
        endpoint = Endpoint.from_object(obj) if obj else None
        if endpoint is not None and endpoint.uid != uid:
            if workload.static:
                endpoint = await self._adopt(endpoint, ctx, req, owner_of, pools)
            else:  # a same-name pod that is gone (Spiderpool #1187): free what the old UID holds, start afresh
                await self._release_entries(endpoint, endpoint.nics, container_id="")
                await self._drop_endpoint(endpoint)
                endpoint = None

        if endpoint is not None and (entry := endpoint.nic(req.ifname)) is not None:
            # Repeated ADD (or re-owned fixed IPs): ask the recorded pools again; they return what is held.
            requests = [_recorded_request(e) for e in endpoint.nics if e.interface == entry.interface]
            if workload.static:
                requests = [_recorded_request(e) for e in endpoint.nics]
        else:
            requests = requested_pools(ctx, req.ifname, req.default_ipv4_pools, req.default_ipv6_pools)
            if endpoint is not None:  # NICs allocated by an earlier ADD of a multi-NIC pod keep theirs
                requests = [r for r in requests if endpoint.nic(r.nic) is None or r.nic == req.ifname]

        try:
            plans = _plans(requests, ctx, pools)
        except (PoolNotFound, NoAvailablePool):  # a pool made or changed a moment ago: look again before failing
            plans = _plans(requests, ctx, await self._all_pools(max_age=0))
        routes = custom_routes(ctx)  # NB: checked before anything is allocated, so bad input changes nothing
        made: list[tuple[str, Allocation]] = []
        results: dict[tuple[str, int], Allocation] = {}
        failures: list[SpiderError] = []

        async def one(r: NicRequest, version: int, found: list[IPPool]) -> None:
            # NB: siblings are never cancelled: a request already in a pool's mailbox is committed anyway, so
            # each one must finish and report before we know what to give back.
            try:
                await self._allocate_one(owner_of(r.nic), version, found, results, made)
            except SpiderError as exc:
                failures.append(exc)

        try:
            async with trio.open_nursery() as nursery:
                for r, version, found in plans:
                    nursery.start_soon(one, r, version, found)
        except BaseException:  # cancelled (agent drain): give back what was answered; the rest is GC's
            await self._undo(made, uid, req.container_id)
            raise
        if failures:
            await self._undo(made, uid, req.container_id)
            raise failures[0]
        nic_results = []
        for r in requests:
            allocs = tuple(results[(r.nic, v)] for v in (4, 6) if (r.nic, v) in results)
            if not allocs:
                continue
            clean = r.clean_gateway if r.clean_gateway is not None else req.clean_gateway
            extra = tuple(rt for rt in routes if any(_gw_in(rt.gw, a.address) for a in allocs))
            nic_results.append(NicResult(r.nic, allocs, clean, tuple(x for a in allocs for x in a.routes) + extra))
        try:
            await self._record(req, uid, ep_name, workload, nic_results, maybe_exists=endpoint is not None)
        except BaseException:
            await self._undo(made, uid, req.container_id)
            raise
        return nic_results

    async def _adopt(
        self,
        endpoint: Endpoint,
        ctx: PodContext,
        req: AddRequest,
        owner_of: Callable[[str], Owner],
        pools: dict[str, IPPool],
    ) -> Endpoint | None:
        """Fixed IPs (reference §2.1 steps 4-5): the new pod of a StatefulSet ordinal or VM takes over the
        addresses its predecessor held.  A NIC whose recorded pool is no longer a candidate for it is freed and
        allocated afresh; so is one whose record is gone.  Returns the re-owned endpoint (``None`` if empty).
        """
        kept: list[NicAllocation] = []
        for entry in endpoint.nics:
            wanted = _still_candidates(ctx, entry, req, pools)
            if not wanted:
                await self._release_entries(endpoint, [entry], container_id="")
                continue
            adopted = True
            for _version, pool, address in entry.pools():
                handle = await self.pools.get(pool)
                ip = address.partition("/")[0]
                adopted &= await handle.adopt(ip, endpoint.uid, owner_of(entry.interface))
            if adopted:
                kept.append(attrs.evolve(entry, container_id=req.container_id))
            else:
                await self._release_entries(endpoint, [entry], container_id="")
        renewed = attrs.evolve(endpoint, uid=owner_of("").pod_uid, node=self.node, nics=tuple(kept))
        await self._write_endpoint(renewed, exists=True)
        if not kept:
            return None
        return Endpoint.from_object(await self.store.get(ENDPOINT, endpoint.name, endpoint.namespace))

    async def _allocate_one(
        self,
        owner: Owner,
        version: int,
        found: list[IPPool],
        results: dict[tuple[str, int], Allocation],
        made: list[tuple[str, Allocation]],
    ) -> None:
        exhausted: list[PoolExhausted] = []
        for pool in found:
            handle = await self.pools.get(pool.name)
            try:
                allocation = await handle.allocate(owner, contested(pool, self._pools_seen.values()))
            except PoolExhausted as exc:
                exhausted.append(exc)
                continue
            results[(owner.nic, version)] = allocation
            made.append((owner.nic, allocation))
            return
        if len(exhausted) == 1:
            raise exhausted[0]
        raise NoAvailablePool(
            nic=owner.nic, version=version, reason=f"all IP addresses used out in pools {[e.pool for e in exhausted]}"
        )

    async def _undo(self, made: list[tuple[str, Allocation]], uid: str, container_id: str) -> None:
        """All-or-nothing: give back what this call took (only if the same sandbox still holds it).

        An address the owner held before this call (a repeated ADD, a re-owned fixed IP) stays held.  Runs
        shielded from the caller's cancellation, for at most ``endpoint_budget`` seconds (the pool actors may be
        going away too); whatever it could not give back is the GC's.
        """
        with trio.CancelScope(shield=True, deadline=trio.current_time() + self.settings.endpoint_budget):
            for nic, allocation in made:
                if not allocation.fresh:
                    continue
                handle = await self.pools.get(allocation.pool)
                with contextlib.suppress(SpiderError):  # the pool gone or its actor stopped: nothing to undo there
                    await handle.release((uid, nic), container_id)

    async def _record(
        self,
        req: AddRequest,
        uid: str,
        ep_name: str,
        workload: Workload,
        results: list[NicResult],
        *,
        maybe_exists: bool = True,
    ) -> None:
        """Add the NICs' allocations to the endpoint, creating it if needed.  ``maybe_exists=False`` (there was
        none a moment ago) tries the create first, without a read; ``AlreadyExists`` reads and merges."""
        deadline = trio.current_time() + self.settings.endpoint_budget
        while True:
            obj = await self._get(ENDPOINT, ep_name, req.pod_namespace) if maybe_exists else None
            maybe_exists = True
            endpoint = (
                Endpoint.from_object(obj)
                if obj
                else Endpoint(req.pod_namespace, ep_name, uid, self.node, (), workload.kind, workload.name)
            )
            endpoint = attrs.evolve(endpoint, node=self.node)
            for r in results:
                endpoint = endpoint.with_nic(_nic_allocation(r, req))
            if obj is not None and Endpoint.from_object(obj) == endpoint:
                return
            try:
                await self._write_endpoint(endpoint, exists=obj is not None)
                return
            except (Conflict, AlreadyExists):
                if trio.current_time() > deadline:
                    raise StaleWrite(
                        kind=ENDPOINT, name=f"{req.pod_namespace}/{ep_name}", sent_version=endpoint.resource_version
                    ) from None
                await trio.sleep(0.01)

    async def _write_endpoint(self, endpoint: Endpoint, *, exists: bool) -> None:
        if exists:
            await self.store.update(endpoint.to_object())
        else:
            await self.store.create(endpoint.to_object())

    async def release(self, req: DelRequest, *, keep_live: bool = True) -> list[str]:
        """Free what this pod's sandbox holds (all its NICs, as Spiderpool); returns the freed addresses.

        Works from stored state alone and succeeds when there is nothing to free.  A live pod keeps its
        addresses (sandbox re-creation); so does a StatefulSet pod whose ordinal is still valid and a KubeVirt
        VM pod whose VM is; a DEL from an older sandbox or an older pod of the same name frees nothing.
        """
        pod = await self._get("Pod", req.pod_name, req.pod_namespace)
        live = pod is not None and pod_not_alive(pod) is None and pod["metadata"].get("uid") == req.pod_uid
        if keep_live and live:
            return []
        workload = await self._workload(pod, req.pod_namespace, req.pod_name)
        obj = await self._get(ENDPOINT, workload.endpoint_name or req.pod_name, req.pod_namespace)
        if obj is None:
            return []
        endpoint = Endpoint.from_object(obj)
        if req.pod_uid and endpoint.uid != req.pod_uid:
            return []
        if endpoint.owner_controller_type in STATIC_KINDS:
            keeps = workload.keeps if workload.static else await self._static_keeps(endpoint)
            if keeps:
                return []  # the next pod of this ordinal / VM takes the same addresses
            freed = await self._release_entries(endpoint, endpoint.nics, container_id="")
            await self._drop_endpoint(endpoint)
            return freed
        mine = [n for n in endpoint.nics if not n.container_id or n.container_id == req.container_id]
        freed = await self._release_entries(endpoint, mine, req.container_id)
        await self._forget_entries(endpoint, {(n.interface, n.container_id) for n in mine})
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
        with the pod whose ADD failed because of it.
        """
        return await self.release(req, keep_live=False)

    async def endpoint(self, namespace: str, pod_name: str) -> Endpoint | None:
        """The SpiderEndpoint recording this pod's addresses, if any (a KubeVirt VM's pods share the VM's)."""
        pod = await self._get("Pod", pod_name, namespace)
        ctrl = controller_of(pod) if pod is not None else None
        name = pod_name
        if ctrl is not None and _is_vmi(ctrl):
            name = ctrl.name  # NB: as _workload names it, without walking other owners (once per pod, per CHECK)
        obj = await self._get(ENDPOINT, name, namespace)
        return Endpoint.from_object(obj) if obj else None

    async def pool_free(self, names: Sequence[str]) -> dict[str, int]:
        """Free addresses per pool, from the actors' ledgers."""
        out = {}
        for name in names:
            out[name] = (await (await self.pools.get(name)).inspect()).free
        return out


def _is_vmi(ctrl: Controller) -> bool:
    """A KubeVirt VirtualMachineInstance: its pods' addresses are recorded under the VMI's name."""
    return ctrl.kind == "VirtualMachineInstance" and ctrl.api_version == KUBEVIRT_API


def _recorded_request(entry: NicAllocation) -> NicRequest:
    """Ask again exactly the pools an endpoint entry records."""
    return NicRequest(
        entry.interface,
        (entry.ipv4_pool,) if entry.ipv4_pool else (),
        (entry.ipv6_pool,) if entry.ipv6_pool else (),
        entry.clean_gateway,
        "endpoint",
    )


def _plans(
    requests: Sequence[NicRequest], ctx: PodContext, pools: dict[str, IPPool]
) -> list[tuple[NicRequest, int, list[IPPool]]]:
    """For each NIC and family asked for, the candidate pools in order."""
    plans: list[tuple[NicRequest, int, list[IPPool]]] = []
    for r in requests:
        if r.source == "endpoint":
            for version, names in ((4, r.ipv4), (6, r.ipv6)):
                if names:
                    if names[0] not in pools:
                        raise PoolNotFound(pool=names[0])
                    plans.append((r, version, [pools[names[0]]]))
            continue
        for version in (4, 6):
            found = candidates(r, version, ctx, pools)
            if found:
                plans.append((r, version, found))
        if not any(p[0] is r for p in plans):
            raise NoAvailablePool(
                nic=r.nic, version=4, reason=f"no pool selection rules of any type are specified ({r.source})"
            )
    return plans


def _still_candidates(ctx: PodContext, entry: NicAllocation, req: AddRequest, pools: dict[str, IPPool]) -> bool:
    """Whether every pool an entry records is still a candidate for its NIC (pool annotation unchanged)."""
    try:
        requests = requested_pools(ctx, entry.interface, req.default_ipv4_pools, req.default_ipv6_pools)
    except SpiderError:
        return False
    request = next((r for r in requests if r.nic == entry.interface), None)
    if request is None:
        return False
    for version, pool, _ in entry.pools():
        try:
            names = [p.name for p in candidates(request, version, ctx, pools)]
        except SpiderError:
            return False
        if pool not in names:
            return False
    return True


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
