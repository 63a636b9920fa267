"""The SpiderSubnet scenario of ``spider loadtest``: N applications of R replicas, each from its own auto pool.

Owns the run of ``Scenario(apps=N)`` on the embedded store: one SpiderSubnet holding the applications' addresses
(each application's replicas plus ``redundant`` spare ones), ``spider controller`` started on the same store file
(its leader makes one auto pool per Deployment from the subnet and reclaims it), one ``spider agent`` per node
told to look for an application's pool every ``wait_interval`` seconds.  Phases, timed: ``add`` (the
applications rolled out one after the other: each one's Deployment, ReplicaSet and Pod objects written, the pods
annotated ``ipam.spidernet.io/subnet`` and owned by the ReplicaSet; every pod's ADD, through the plugin or the
agent API, sent as soon as its Pod object exists, with no pool named: the agent finds the application's pool,
waiting for the controller to make it as Spiderpool's does), ``del`` (each pod's Pod object deleted, then
its DEL, as a kubelet tears a deleted pod down: a DEL of a live pod keeps its address), ``reclaim`` (the
ReplicaSets and Deployments deleted; ends when every auto pool is gone and the subnet hands out nothing).
Checks, besides no address twice and every call served: each pod's address from its own application's pool,
the subnet handing out exactly N x (R + redundant) in N pools while they run, the store consistent, nothing
leaked after DEL, everything reclaimed after.

The run's pods carry the UIDs the store gave their Pod objects (the controller's IP GC would release an address
recorded under another UID), so the calls go through ``StoredUids``, which sends each pod's stored UID.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence, Set
from contextlib import suppress
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import attrs
import trio

from actors.ipam.autopools import ENV_WAIT_INTERVAL, ENV_WAIT_RETRIES
from actors.ipam.check import check_store
from actors.stores.port import NotFound, Obj, Store
from actors.stores.selection import StoreSettings
from actors.tools.launcher import install_cni
from actors.tools.loadtest.checks import check_no_double, check_served
from actors.tools.loadtest.drivers import (
    Answer,
    ApiTarget,
    PluginTarget,
    Recorder,
    Target,
    spider_netconfs,
)
from actors.tools.loadtest.fleet import AgentFleet, ControllerProcess, forwarded_totals, opened_store, store_totals
from actors.tools.loadtest.scenario import NAMESPACE, AddressPlan, Check, Op, PodRef, Scenario, TargetRun
from actors.tools.manifests import apply
from spider.autopool import ANNO_SUBNET, LABEL_APP_NAME, is_auto_pool
from spider.endpoint import KIND as ENDPOINT
from spider.endpoint import Endpoint
from spider.errors import SpiderError
from spider.pool import KIND as POOL
from spider.pool import PoolLedger
from spider.subnet import KIND as SUBNET

OURS = "spider"
"""Our target's name, as ``actors.tools.loadtest.run`` names it."""
RECLAIM_PATIENCE = 300.0
"""Seconds the reclaim phase waits for the controller to delete every pool and give the subnet back."""
CLEANUP_BUDGET = 120.0
"""Seconds for cleaning up a failed or interrupted run: releasing what pods still hold, stopping processes."""
DELETE_CALLERS = 10
"""Concurrent deleters of the applications' objects in the reclaim phase."""


def app_name(app: int) -> str:
    """Application ``app``'s Deployment name (its auto pool is ``auto4-<this>-eth0-...``)."""
    return f"lt-app-{app}"


def replica_set_name(app: int) -> str:
    """Application ``app``'s ReplicaSet name."""
    return f"{app_name(app)}-6f7c9"


def subnet_object(name: str, plan: AddressPlan) -> Obj:
    """The SpiderSubnet every application's pool takes its addresses from."""
    first, last = plan.pool.first, plan.pool.last
    return {
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": SUBNET,
        "metadata": {"name": name},
        "spec": {
            "subnet": str(plan.subnet),
            "gateway": str(plan.gateway),
            "ips": [f"{first}-{last}" if first != last else str(first)],
        },
    }


def subnet_annotations(subnet: str) -> dict[str, str]:
    """What a pod (and its Deployment's template) says to get its address from ``subnet``'s auto pool."""
    return {ANNO_SUBNET: json.dumps({"ipv4": [subnet]})}


def _owned_by(kind: str, obj: Obj) -> list[dict[str, Any]]:
    meta = obj["metadata"]
    return [{"apiVersion": "apps/v1", "kind": kind, "name": meta["name"], "uid": meta["uid"], "controller": True}]


async def create_application(store: Store, scenario: Scenario, app: int, subnet: str, run: str) -> dict[int, str]:
    """Application ``app``'s Deployment, ReplicaSet and Pod objects (each pod on its node, not yet running);
    the stored UID of each of its pods, by pod index."""
    annotations = subnet_annotations(subnet)
    deployment = await store.create(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": app_name(app), "namespace": NAMESPACE},
            "spec": {"replicas": scenario.replicas, "template": {"metadata": {"annotations": annotations}}},
        }
    )
    replica_set = await store.create(
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": replica_set_name(app),
                "namespace": NAMESPACE,
                "ownerReferences": _owned_by("Deployment", deployment),
            },
            "spec": {"replicas": scenario.replicas},
        }
    )
    uids = {}
    for index in range(app * scenario.replicas, (app + 1) * scenario.replicas):
        pod = PodRef(index, 0, run)
        stored = await store.create(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": pod.name,
                    "namespace": NAMESPACE,
                    "annotations": annotations,
                    "ownerReferences": _owned_by("ReplicaSet", replica_set),
                },
                "spec": {"nodeName": f"node-{pod.node(scenario.nodes)}"},
            }
        )
        uids[index] = str(stored["metadata"]["uid"])
    return uids


async def rollout_phase(
    store: Store,
    scenario: Scenario,
    target: Target,
    recorder: Recorder,
    subnet: str,
    run: str,
    uids: dict[int, str],
) -> dict[int, PodRef]:
    """The applications rolled out one after the other, as a Deployment controller writes them, while
    ``callers`` concurrent callers ADD each pod as soon as its Pod object exists (its pool may not yet: the
    agent waits for it).  Fills ``uids`` (each pod's stored UID); returns the live pods."""
    send, receive = trio.open_memory_channel[PodRef](scenario.pods)
    live: dict[int, PodRef] = {}

    async def roll_out() -> None:
        async with send:
            for app in range(scenario.apps):
                uids.update(await create_application(store, scenario, app, subnet, run))
                for index in range(app * scenario.replicas, (app + 1) * scenario.replicas):
                    send.send_nowait(PodRef(index, 0, run))

    async def caller() -> None:
        async for pod in receive:
            if (await recorder.call("add", "add", pod, pod.node(scenario.nodes), target.add)).ok:
                live[pod.index] = pod

    async with trio.open_nursery() as nursery:
        nursery.start_soon(roll_out)
        for _ in range(min(scenario.callers, scenario.pods)):
            nursery.start_soon(caller)
    return live


async def delete_applications(store: Store, scenario: Scenario, deleted: Set[int]) -> None:
    """Every Pod object (but the ``deleted`` ones), ReplicaSet and Deployment of the run gone."""
    limiter = trio.CapacityLimiter(DELETE_CALLERS)

    async def one(app: int) -> None:
        async with limiter:
            for index in range(app * scenario.replicas, (app + 1) * scenario.replicas):
                if index not in deleted:
                    await _delete(store, "Pod", PodRef(index, 0, "").name)
            await _delete(store, "ReplicaSet", replica_set_name(app))
            await _delete(store, "Deployment", app_name(app))

    async with trio.open_nursery() as nursery:
        for app in range(scenario.apps):
            nursery.start_soon(one, app)


async def _delete(store: Store, kind: str, name: str) -> None:
    with suppress(NotFound):
        await store.delete(kind, name, NAMESPACE)


async def del_phase_deleting_pods(
    store: Store, scenario: Scenario, target: Target, recorder: Recorder, live: Mapping[int, PodRef]
) -> set[int]:
    """DEL every live pod with ``callers`` concurrent callers, each pod's Pod object deleted just before its
    DEL (untimed), as a kubelet tears down a deleted pod: an agent keeps a live pod's addresses on DEL.
    The indexes of the pods whose objects were deleted."""
    send, receive = trio.open_memory_channel[PodRef](len(live))
    for index in sorted(live):
        send.send_nowait(live[index])
    send.close()
    deleted: set[int] = set()

    async def caller() -> None:
        async for pod in receive:
            await _delete(store, "Pod", pod.name)
            deleted.add(pod.index)
            await recorder.call("del", "del", pod, pod.node(scenario.nodes), target.delete)

    async with trio.open_nursery() as nursery:
        for _ in range(max(1, min(scenario.callers, len(live)))):
            nursery.start_soon(caller)
    return deleted


@attrs.frozen
class StoredPod(PodRef):
    """A pod as sent to the target: with the UID the store gave its Pod object."""

    stored_uid: str = ""

    @property
    def uid(self) -> str:
        """The Pod object's UID."""
        return self.stored_uid


@attrs.define
class StoredUids:
    """A target that is sent each pod with its Pod object's UID (the ops still record the run's ``PodRef``)."""

    inner: Target
    uids: Mapping[int, str]
    name: str = attrs.field(default=attrs.Factory(lambda self: self.inner.name, takes_self=True))
    """The inner target's name."""

    def _stored(self, pod: PodRef) -> StoredPod:
        return StoredPod(pod.index, pod.incarnation, pod.run, self.uids[pod.index])

    async def add(self, pod: PodRef, node: int) -> Answer:
        """ADD, with the stored UID."""
        return await self.inner.add(self._stored(pod), node)

    async def delete(self, pod: PodRef, node: int) -> Answer:
        """DEL, with the stored UID."""
        return await self.inner.delete(self._stored(pod), node)


async def auto_pools(store: Store) -> list[Obj]:
    """The auto pools that exist and are not being deleted."""
    pools = (await store.list(POOL)).items
    return [p for p in pools if is_auto_pool(p) and not (p.get("metadata") or {}).get("deletionTimestamp")]


async def handed_out(store: Store, subnet: str) -> int:
    """How many addresses the subnet has handed out to pools (its ``status.allocatedIPCount``)."""
    status = (await store.get(SUBNET, subnet)).get("status") or {}
    return int(status.get("allocatedIPCount", 0))


async def check_own_pools(store: Store, scenario: Scenario, uids: Mapping[int, str], ops: Sequence[Op]) -> Check:
    """After the ADDs: every pod's answered address is recorded for it in its own application's pool."""
    holders: dict[str, tuple[str, str]] = {}
    for obj in await auto_pools(store):
        app = str(obj["metadata"].get("labels", {}).get(LABEL_APP_NAME, ""))
        for ip, record in PoolLedger.from_object(obj).records.items():
            holders[str(IPv4Address(ip))] = (app, record.pod_uid)
    added = [op for op in ops if op.kind == "add" and op.ok]
    wrong = [
        op for op in added if holders.get(op.address) != (app_name(scenario.app_of(op.pod.index)), uids[op.pod.index])
    ]
    if not wrong:
        return Check("own-application-pool", True, f"{len(added)} pods, each from its own application's pool")
    examples = ", ".join(f"{op.pod.name} {op.address} in {holders.get(op.address, ('no pool',))[0]}" for op in wrong)
    return Check("own-application-pool", False, f"{len(wrong)} pods not from their own pool: {examples[:300]}")


async def check_handed_out(store: Store, scenario: Scenario, subnet: str) -> Check:
    """While the pods run: one pool per application, and the subnet handed out exactly their addresses."""
    pools, handed = len(await auto_pools(store)), await handed_out(store, subnet)
    wanted = scenario.apps * (scenario.replicas + scenario.redundant)
    detail = f"{pools} pools for {scenario.apps} applications; the subnet handed out {handed}, wanted {wanted}"
    return Check("subnet-hands-out-exactly", pools == scenario.apps and handed == wanted, detail)


async def check_consistent(store: Store, label: str) -> Check:
    """``spider check`` on the whole store: every pool's counts equal its records, pools and endpoints agree."""
    report = await check_store(store)
    if not report.findings:
        return Check(f"consistent-{label}", True, "pool counts equal records; pools and endpoints agree")
    first = report.findings[0]
    return Check(f"consistent-{label}", False, f"{len(report.findings)} findings; e.g. {first.ip} {first.detail}")


async def check_nothing_leaked(store: Store, uids: Mapping[int, str]) -> Check:
    """After the DELs: no record left in any auto pool, no endpoint of the run's pods."""
    records = sum(len(PoolLedger.from_object(p).records) for p in await auto_pools(store))
    mine = set(uids.values())
    endpoints = [
        ep.name
        for ep in map(Endpoint.from_object, (await store.list(ENDPOINT, namespace=NAMESPACE)).items)
        if ep.uid in mine
    ]
    if records == 0 and not endpoints:
        return Check("nothing-leaked", True, "every auto pool empty, no endpoint left")
    return Check("nothing-leaked", False, f"{records} records left in auto pools, endpoints {endpoints[:3]}")


async def wait_reclaimed(store: Store, subnet: str, patience: float) -> bool:
    """Whether within ``patience`` seconds every auto pool is gone and the subnet hands out nothing."""
    with trio.move_on_after(patience):
        while True:
            if not (await store.list(POOL)).items and await handed_out(store, subnet) == 0:
                return True
            await trio.sleep(0.05)
    return False


async def check_reclaimed(store: Store, subnet: str) -> Check:
    """After the Deployments are deleted: no pool left, the subnet handing out nothing."""
    pools = [str(p["metadata"]["name"]) for p in (await store.list(POOL)).items]
    handed = await handed_out(store, subnet)
    ok = not pools and handed == 0
    return Check("reclaimed", ok, f"{len(pools)} pools left {pools[:3]}; the subnet hands out {handed}")


@attrs.define
class SubnetLoadTest:
    """One run of the SpiderSubnet scenario on the embedded store in ``dir``."""

    scenario: Scenario
    dir: Path
    run_id: str
    progress: Callable[[str, str, int], None] = lambda target, phase, total: None
    advance: Callable[[str, str], None] = lambda target, phase: None
    controller_args: tuple[str, ...] = ()
    """Extra options for the controller."""

    @property
    def subnet(self) -> str:
        """The run's SpiderSubnet."""
        return f"loadtest-{self.run_id}"

    def _spare_flags(self) -> tuple[str, ...]:
        redundant = self.scenario.redundant
        return ("--auto-pool-redundant-ips", str(redundant)) if redundant else ()

    async def run(self) -> TargetRun:
        """The whole scenario, checked; every process stopped at the end, even when a phase fails."""
        scenario, plan = self.scenario, AddressPlan.for_scenario(self.scenario)
        settings = StoreSettings(self.dir / "store.db", None)
        t0 = trio.current_time()
        recorder = Recorder(lambda: trio.current_time() - t0, lambda phase, _: self.advance(OURS, phase))
        controller = ControllerProcess(
            self.dir, settings, self.run_id, extra=self._spare_flags() + self.controller_args
        )
        fleet = AgentFleet(
            self.dir,
            scenario.nodes,
            settings,
            env={ENV_WAIT_INTERVAL: f"{scenario.wait_interval:g}", ENV_WAIT_RETRIES: str(scenario.wait_retries)},
            extra=self._spare_flags(),
        )
        sockets = [fleet.socket(n) for n in range(scenario.nodes)]
        inner: Target
        api: ApiTarget | None = None
        if scenario.via == "shim":
            shim = install_cni(self.dir / "bin")[0]
            inner = PluginTarget(OURS, shim, spider_netconfs(sockets, ""), scenario.call_timeout)
        else:
            inner = api = ApiTarget(OURS, sockets, "", timeout=scenario.call_timeout)
        uids: dict[int, str] = {}
        target = StoredUids(inner, uids)
        checks: list[Check] = []
        phases: dict[str, tuple[float, float]] = {}
        snapshots: list[list[dict[str, Any]]] = []
        notes: list[str] = []
        async with opened_store(settings) as store:
            try:
                await apply(store, subnet_object(self.subnet, plan))
                await controller.start()
                await fleet.start()
                snapshots.append(await fleet.statistics())

                self.progress(OURS, "add", scenario.pods)
                start = recorder.clock()
                live = await rollout_phase(store, scenario, target, recorder, self.subnet, self.run_id, uids)
                phases["add"] = (start, recorder.clock())
                snapshots.append(await fleet.statistics())
                checks.append(await check_own_pools(store, scenario, uids, recorder.ops))
                checks.append(await check_handed_out(store, scenario, self.subnet))
                checks.append(await check_consistent(store, "after-add"))

                self.progress(OURS, "del", len(live))
                start = recorder.clock()
                deleted = await del_phase_deleting_pods(store, scenario, target, recorder, live)
                phases["del"] = (start, recorder.clock())
                snapshots.append(await fleet.statistics())
                checks.append(await check_nothing_leaked(store, uids))
                checks.append(await check_consistent(store, "after-del"))

                start = recorder.clock()
                await delete_applications(store, scenario, deleted)
                await wait_reclaimed(store, self.subnet, RECLAIM_PATIENCE)
                phases["reclaim"] = (start, recorder.clock())
                checks.append(await check_reclaimed(store, self.subnet))
            finally:
                with trio.CancelScope(shield=True):
                    notes += await self._clean_up(target, recorder, fleet, controller)
                    if api is not None:
                        await api.aclose()
        checks[:0] = [check_no_double(recorder.ops), check_served(scenario, recorder.ops)]
        run = TargetRun(OURS, recorder.ops, phases, checks, agents=snapshots[-1], cleanup=notes)
        for n, phase in enumerate(("add", "del"), start=1):
            if n < len(snapshots):
                run.store[phase] = store_totals(snapshots[n - 1], snapshots[n])
                forwarded = forwarded_totals(snapshots[n - 1], snapshots[n])
                if forwarded is not None:
                    run.forwarded[phase] = forwarded
        run.controller = {
            "started": True,
            "lease": f"{controller.namespace}/{controller.lease_name}",
            "why": "SpiderSubnet: its leader makes and reclaims the applications' pools (no pool host: embedded store)",
        }
        return run

    async def _clean_up(
        self, target: Target, recorder: Recorder, fleet: AgentFleet, controller: ControllerProcess
    ) -> list[str]:
        """What a stopped run's pods still hold released through the agents, then every process stopped
        (the embedded store is thrown away with the work directory)."""
        notes = []
        with trio.move_on_after(CLEANUP_BUDGET) as scope:
            held = recorder.holding()
            if held and fleet.processes:
                released = 0
                for pod in held:
                    with suppress(OSError, SpiderError, KeyError):
                        released += (await target.delete(pod, pod.node(self.scenario.nodes))).ok
                notes.append(f"released {released} of {len(held)} addresses the run's pods still held")
            await fleet.stop()
            await controller.stop()
        if scope.cancelled_caught:
            notes.append(f"cleanup stopped after {CLEANUP_BUDGET:g} s")
        await controller.stop(grace=0)
        await fleet.stop(grace=0)
        return notes
