"""The agent's side of SpiderSubnet: find a pod's auto-created pools before its pools are chosen (reference §7.1).

Owns the gather step of an ADD whose pod carries ``ipam.spidernet.io/subnet`` or ``subnets`` (feature on):
- the pod's top-level controller, walked through the store as Spiderpool's ``GetPodTopController`` does
  (ReplicaSet -> Deployment, Job -> CronJob; a third-party owner is taken as it is), and its replicas;
- for a built-in kind (Deployment, ReplicaSet, StatefulSet, DaemonSet, Job, CronJob), whose pools the
  controller makes: the wait, as Spiderpool's ``findAppAutoPool``, until exactly one pool carries the
  application's labels (subnet, group/version, kind, namespace, name, UID, interface, family) **and** holds
  exactly the desired number of addresses; polled ``wait_retries`` times, ``wait_interval`` seconds apart
  (``SPIDERPOOL_WAIT_SUBNET_POOL_MAX_RETRIES``, ``SPIDERPOOL_WAIT_SUBNET_POOL_TIME_IN_SECOND``); two pools
  for one application is an error;
- for a third-party controller (OpenKruise, KubeVirt, ...), whose pools nobody else makes: the pool itself, at
  the first allocation, with the fixed size ``ippool-ip-number`` gives (``applyThirdControllerAutoPool``):
  a retained pool of the same kind, namespace and name is re-used (its labels take the new UID), a new one
  takes the lowest free addresses of the subnet through ``SubnetRanges`` (the subnet's status, written with
  its resourceVersion guard), and a lost race (Conflict, AlreadyExists) is tried again after a pause.
The answer is the pod context with ``app`` and ``auto_pools`` filled in, and the pools found, for
``spider.selection`` to choose from as if the pod had named them.  Everything else (which annotation wins, the
refusals for orphan pods and a disabled auto-pool feature, the auto pools' pod affinity) is decided by the
pure ``spider.selection``; the names, labels and sizes by ``spider.autopool``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import attrs
import trio

from actors.ipam.subnet import Claim, Record, SubnetActor, SubnetMsg, SubnetRegistry
from actors.runtime.mailbox import Reply
from actors.stores.port import AlreadyExists, Conflict, NotFound, Obj, Store
from spider.addr import IPSet
from spider.autopool import (
    ANNO_IP_NUMBER,
    BUILTIN_KINDS,
    LABEL_APP_UID,
    LABEL_RECLAIM,
    AppRef,
    SubnetClaim,
    auto_pool_name,
    auto_pool_object,
    auto_pool_selector,
    desired_ip_count,
    pool_reclaims,
    replicas_of,
    reuse_labels,
)
from spider.errors import AutoPoolNotReady, InvalidInput, NoAvailablePool, SpiderError
from spider.pool import KIND as POOL
from spider.pool import IPPool, decode_allocated
from spider.selection import PodContext, subnet_claim
from spider.subnet import KIND as SUBNET_KIND
from spider.subnet import shrink
from spider.workload import controller_of, next_hop

log = logging.getLogger(__name__)

ENV_WAIT_RETRIES = "SPIDERPOOL_WAIT_SUBNET_POOL_MAX_RETRIES"
ENV_WAIT_INTERVAL = "SPIDERPOOL_WAIT_SUBNET_POOL_TIME_IN_SECOND"


@attrs.frozen
class AutoPoolSettings:
    """The agent's SpiderSubnet switches (Spiderpool's ``spiderpool-conf`` keys and agent environment)."""

    enable_spider_subnet: bool = True
    """[enableSpiderSubnet] Off: subnet annotations are ignored; the pod's next pool source decides."""
    enable_auto_pool: bool = True
    """[enableAutoPoolForApplication] Off (subnets on): subnet annotations are refused (I00024)."""
    wait_retries: int = 25
    """``SPIDERPOOL_WAIT_SUBNET_POOL_MAX_RETRIES``: looks for an application's auto pool before giving up."""
    wait_interval: float = 2.0
    """``SPIDERPOOL_WAIT_SUBNET_POOL_TIME_IN_SECOND``: seconds between two looks."""
    default_redundant: int = 0
    """[clusterSubnetAutoPoolDefaultRedundantIPNumber] Spare addresses of a pool whose application says no
    ``ippool-ip-number``; must equal the controller's (Spiderpool's effective default is 0)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **switches: Any) -> AutoPoolSettings:
        """The wait from the agent's environment (Spiderpool's variables and defaults), the switches as given.

        ``InvalidInput`` for a value that is not a number (retries at least 1, interval at least 0).
        """
        env = os.environ if env is None else env
        try:
            retries = int(env.get(ENV_WAIT_RETRIES, "25"))
            interval = float(env.get(ENV_WAIT_INTERVAL, "2"))
        except ValueError as exc:
            raise InvalidInput(reason=f"{ENV_WAIT_RETRIES} / {ENV_WAIT_INTERVAL}: {exc}") from None
        if retries < 1 or interval < 0:
            raise InvalidInput(reason=f"{ENV_WAIT_RETRIES} must be >= 1 and {ENV_WAIT_INTERVAL} >= 0")
        return cls(wait_retries=retries, wait_interval=interval, **switches)


class SubnetRanges(Protocol):
    """Where a third-party application's pool gets its addresses: the subnet's lowest free ones, recorded in its
    ``controlledIPPools`` before the pool is written (Spiderpool's ``preAllocateIPsFromSubnet``)."""

    async def take(self, subnet: str, pool: str, app: AppRef, count: int, current: IPSet, allocated: IPSet) -> IPSet:
        """``pool``'s addresses from now on, ``count`` of them, durable in the subnet's status: its ``current``
        ones kept (growth) or only unallocated ones given back (shrink), then the ones the subnet already
        records for it (a retried creation), then the lowest free."""
        ...


@attrs.define
class ActorRanges:
    """``SubnetRanges`` through SubnetActors (``actors.ipam.subnet``): every claim of one subnet in this process
    goes through its one actor, which writes the subnet's status with the store's guard (so agents on other
    nodes and the controller, each with their own actor, never hand out one address twice)."""

    store: Store
    registry: SubnetRegistry | None = None
    """The process's subnet actors; ``None``: a one-off actor per claim on ``store`` (no nursery to keep one)."""

    async def take(self, subnet: str, pool: str, app: AppRef, count: int, current: IPSet, allocated: IPSet) -> IPSet:
        """See ``SubnetRanges.take``."""
        if current.count > count:
            kept = shrink(pool, current, allocated, count)
            await self._send(subnet, lambda reply: Record(pool, app.application, kept, reply))
            return kept
        taken: IPSet = await self._send(subnet, lambda reply: Claim(pool, app.application, count, current, reply))
        return taken

    async def _send(self, subnet: str, make: Callable[[Reply[Any]], SubnetMsg]) -> Any:
        reply = Reply[Any].open()
        if self.registry is not None:
            await self.registry.deliver(subnet, make(reply))
            return await reply.wait()  # NB: Any: an IPSet for a claim, a bool for a record
        send, receive = trio.open_memory_channel[SubnetMsg](1)
        send.send_nowait(make(reply))
        send.close()
        await SubnetActor(subnet, self.store, receive).run()  # NB: serves the one claim, then its mailbox ends
        return await reply.wait()


@attrs.frozen
class Found:
    """What the lookup adds to one ADD's facts."""

    context: PodContext
    """The pod context with its top-level controller and the auto pools by ``(interface, version)``."""
    pools: dict[str, IPPool] = attrs.field(factory=dict)
    """The auto pools found, as read just now (newer than the agent's listing of every pool)."""


@attrs.define
class AutoPools:
    """Finds (or, for third-party controllers, makes) the auto-created pools of one pod's ADD."""

    store: Store
    settings: AutoPoolSettings = attrs.field(factory=AutoPoolSettings)
    ranges: SubnetRanges | None = None
    """How third-party applications' pools get addresses; ``None``: one-off SubnetActors on ``store``."""
    on_wait: Callable[[], None] | None = None
    """Called once per wait for a controller's pool that has to look again (``IpamMeter.auto_pool_waited``)."""

    def __attrs_post_init__(self) -> None:
        if self.ranges is None:
            self.ranges = ActorRanges(self.store)

    def switched(self, context: PodContext) -> PodContext:
        """The pod context with this agent's feature switches."""
        return attrs.evolve(
            context,
            enable_spider_subnet=self.settings.enable_spider_subnet,
            enable_auto_pool=self.settings.enable_auto_pool,
        )

    async def find(self, context: PodContext, pod: Obj | None, nic: str) -> Found:
        """The auto pools of ``nic``'s families, once they are ready; nothing to do without subnet annotations.

        Raises what ``spider.selection.subnet_claim`` refuses, ``InvalidInput`` for a third-party application
        without a fixed ``ippool-ip-number``, ``NoAvailablePool`` for two pools of one application, and
        ``AutoPoolNotReady`` when the wait runs out.
        """
        context = self.switched(context)
        if not context.uses_subnets or not context.enable_auto_pool:
            return Found(context)  # NB: selection answers (other sources, or the auto-pool refusal)
        found_app, app_obj = await self.top_controller(pod, context.namespace)
        context = attrs.evolve(context, app=found_app)
        claim = subnet_claim(context, nic)  # NB: refuses orphan pods before anything is read or made
        app = context.top_controller
        if app.builtin:
            if app_obj is None:
                reason = f"the pod's controller {app.kind} {app.namespace}/{app.name} does not exist"
                raise NoAvailablePool(nic=nic, version=claim.versions[0], reason=reason)
            desired = desired_ip_count(claim.ip_number, replicas_of(app_obj), self.settings.default_redundant)
        else:
            desired = third_party_size(app, claim.ip_number)
        pools: dict[int, IPPool] = {}
        failures: list[SpiderError] = []

        async def one(version: int) -> None:
            subnet = claim.subnet(version)
            assert subnet is not None
            try:
                if app.builtin:
                    pools[version] = await self._wait_for(app, nic, version, subnet, desired)
                else:
                    pools[version] = await self._third_party(app, nic, version, subnet, desired, claim)
            except SpiderError as exc:
                failures.append(exc)

        async with trio.open_nursery() as nursery:
            for version in claim.versions:
                nursery.start_soon(one, version)
        if failures:
            raise failures[0]
        auto = {(nic, version): pool.name for version, pool in pools.items()}
        return Found(attrs.evolve(context, auto_pools=auto), {p.name: p for p in pools.values()})

    async def top_controller(self, pod: Obj | None, namespace: str) -> tuple[AppRef | None, Obj | None]:
        """The pod's top-level controller and its object (``None`` for a third-party one, which this store may
        not know); ``(None, None)`` for an orphan pod.  ReplicaSet -> Deployment, Job -> CronJob, as Spiderpool."""
        ctrl = controller_of(pod) if pod is not None else None
        if ctrl is None:
            return None, None
        obj: Obj | None = None
        while ctrl.kind in BUILTIN_KINDS and not ctrl.third_party:
            obj = await self._get(ctrl.kind, ctrl.name, namespace)
            parent = controller_of(obj) if obj is not None and next_hop(ctrl) else None
            if parent is None or parent.kind not in ("Deployment", "CronJob"):
                break
            ctrl = parent
        if obj is not None and (obj.get("metadata") or {}).get("name") == ctrl.name:
            uid = str((obj.get("metadata") or {}).get("uid") or ctrl.uid)
            return AppRef(ctrl.api_version, ctrl.kind, namespace, ctrl.name, uid), obj
        return AppRef(ctrl.api_version, ctrl.kind, namespace, ctrl.name, ctrl.uid), None

    async def _get(self, kind: str, name: str, namespace: str) -> Obj | None:
        try:
            return await self.store.get(kind, name, namespace)
        except NotFound:
            return None

    async def _wait_for(self, app: AppRef, nic: str, version: int, subnet: str, desired: int) -> IPPool:
        """The controller's pool for this application, NIC and family, once it holds exactly ``desired``."""
        selector = auto_pool_selector(app, nic, version, subnet)
        seen = "none found"
        for attempt in range(1, self.settings.wait_retries + 1):
            items = (await self.store.list(POOL, label_selector=selector)).items
            if len(items) > 1:
                names = sorted(str(i["metadata"]["name"]) for i in items)
                reason = (
                    f"it's invalid for '{app.kind}/{app.namespace}/{app.name}' corresponding SpiderSubnet "
                    f"'{subnet}' owns multiple matchLabels '{selector}' corresponding IPPools {names} for one "
                    "specify application"
                )
                raise NoAvailablePool(nic=nic, version=version, reason=reason)
            if items:
                pool = IPPool.from_object(items[0])
                size = len(pool.ips.difference(pool.exclude_ips))
                if size == desired and not pool.terminating:
                    return pool
                seen = f"IPPool {pool.name!r} holds {size} IPs, not the desired {desired}"
            if attempt < self.settings.wait_retries:
                log.info("auto pool of %s/%s/%s (%s): %s; looking again", app.kind, app.namespace, app.name, nic, seen)
                if attempt == 1 and self.on_wait is not None:
                    self.on_wait()
                await trio.sleep(self.settings.wait_interval)
        tried = f"{self.settings.wait_retries} looks {self.settings.wait_interval:g} s apart"
        raise AutoPoolNotReady(selector=selector, reason=f"{seen} after {tried}")

    async def _third_party(
        self, app: AppRef, nic: str, version: int, subnet: str, desired: int, claim: SubnetClaim
    ) -> IPPool:
        """A third-party application's pool: found (a retained one re-used) and sized, or made; lost races
        (another node's agent making the same pool) are tried again ``wait_retries`` times."""
        selector = ",".join(f"{k}={v}" for k, v in sorted(reuse_labels(app, nic, version, subnet).items()))
        last = "not tried"
        for attempt in range(1, self.settings.wait_retries + 1):
            items = (await self.store.list(POOL, label_selector=selector)).items
            mine = next((i for i in items if _reusable(i, app)), None)
            try:
                return IPPool.from_object(await self._apply(mine, app, nic, version, subnet, desired, claim))
            except (Conflict, AlreadyExists) as exc:
                last = f"{type(exc).__name__}: {exc}"
                log.info("auto pool of %s/%s/%s (%s) lost a race: %s", app.kind, app.namespace, app.name, nic, last)
            if attempt < self.settings.wait_retries:
                await trio.sleep(self.settings.wait_interval)
        raise AutoPoolNotReady(selector=selector, reason=f"making it kept losing races ({last})")

    async def _apply(
        self,
        pool: Obj | None,
        app: AppRef,
        nic: str,
        version: int,
        subnet: str,
        desired: int,
        claim: SubnetClaim,
    ) -> Obj:
        """Make the pool, or bring a found one to this application (labels) and ``desired`` addresses."""
        assert self.ranges is not None
        name = str(pool["metadata"]["name"]) if pool is not None else auto_pool_name(app, nic, version)
        current, allocated = IPSet(version), IPSet(version)
        if pool is not None:
            parsed = IPPool.from_object(pool)
            current = parsed.ips.difference(parsed.exclude_ips)
            labels = (pool.get("metadata") or {}).get("labels") or {}
            if current.count == desired and labels.get(LABEL_APP_UID) == app.uid:
                return pool
            records = decode_allocated(version, (pool.get("status") or {}).get("allocatedIPs"))
            allocated = IPSet.of(version, records)
        if pool is None:  # NB: the promise first (durable in the subnet's status), then the pool
            ips = await self.ranges.take(subnet, name, app, desired, current, allocated)
            subnet_obj = await self.store.get(SUBNET_KIND, subnet)
            fresh = auto_pool_object(app, nic, version, subnet_obj, ips.to_strings(), str(desired), claim.reclaim)
            log.info("making auto pool %s for %s/%s/%s: %d IPs", name, app.kind, app.namespace, app.name, desired)
            return await self.store.create(fresh)
        log.info("re-using auto pool %s for %s/%s/%s: %d IPs", name, app.kind, app.namespace, app.name, desired)
        if current.count > desired:  # NB: shrink: the pool first (guarded: an address handed out meanwhile
            kept = shrink(name, current, allocated, desired)  # makes it conflict), then the subnet's record
            written = await self.store.update(_taken_over(pool, app, claim, desired, kept))
            await self.ranges.take(subnet, name, app, desired, kept, allocated)
            return written
        ips = await self.ranges.take(subnet, name, app, desired, current, allocated)
        return await self.store.update(_taken_over(pool, app, claim, desired, ips))


def _taken_over(pool: Obj, app: AppRef, claim: SubnetClaim, desired: int, ips: IPSet) -> Obj:
    """A found pool rewritten for ``app``: its UID and reclaim labels, its size annotation, its addresses."""
    changed = dict(pool)
    meta = changed["metadata"] = dict(pool["metadata"])
    meta["labels"] = {**(meta.get("labels") or {}), LABEL_APP_UID: app.uid}
    meta["labels"][LABEL_RECLAIM] = "true" if claim.reclaim else "false"
    meta["annotations"] = {**(meta.get("annotations") or {}), ANNO_IP_NUMBER: str(desired)}
    changed["spec"] = {**pool["spec"], "ips": ips.to_strings()}
    return changed


def third_party_size(app: AppRef, ip_number: str | None) -> int:
    """A third-party application's pool size: only a fixed ``ippool-ip-number`` ("N") is accepted (T00002)."""
    if ip_number is None or ip_number.strip().startswith("+"):
        raise InvalidInput(
            reason=f"{app.kind}/{app.namespace}/{app.name} only supports fixed auto-created IPPool IP Number"
        )
    return desired_ip_count(ip_number, 0, 0)


def _reusable(pool: Obj, app: AppRef) -> bool:
    """A found pool of the same kind, namespace and name serves ``app`` unless it goes with its old application
    (``ippool-reclaim`` true and another UID: Spiderpool's ``applyThirdControllerAutoPool``)."""
    labels = (pool.get("metadata") or {}).get("labels") or {}
    if (pool.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return labels.get(LABEL_APP_UID) == app.uid or not pool_reclaims(pool)
