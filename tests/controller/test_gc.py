"""The leader's IP GC on each store: addresses of pods gone without a CNI DEL come back; fixed and fresh ones stay.

Real ADDs (``IpamService``) give the addresses; the GC runs with short gaps so that its two looks at a record
come quickly; what it did is read back from the store.
"""

from __future__ import annotations

import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from actors.controller.gc import IpGarbageCollector, Traced, collect_once
from actors.ipam.pool import PoolRegistry
from actors.ipam.service import IpamService
from actors.runtime.supervisor import Supervisor
from actors.servers.metrics import ControllerMetrics, MetricsSettings
from actors.stores.port import NotFound, Obj, Store
from actors.stores.selection import StoreSettings
from actors.stores.sqlite import SqliteStore
from actors.tools.cli import build_parser
from actors.tools.controller_args import controller_settings
from spider.endpoint import ANNO_POD_OBJECT, Endpoint
from spider.endpoint import KIND as ENDPOINT
from spider.gc import GcSettings
from spider.ipam_request import AddRequest
from spider.kinds import SPIDER_API_VERSION
from spider.pool import KIND as POOL
from spider.pool import RECLAIM_AFTER, PoolLedger
from spider.workload import KUBEVIRT_API
from tests.controller.support import eventually, pool
from tests.support import RunningAgent, http_call, pool_object

TIMEOUT = 30
NODE = "node-1"
FAST = GcSettings(interval=0.3, trace_gap=0.05)


def pod(name: str, *, owner: dict[str, Any] | None = None) -> Obj:
    meta: dict[str, Any] = {"name": name, "namespace": "default"}
    if owner is not None:
        meta["ownerReferences"] = [{**owner, "controller": True, "uid": "owner-uid"}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "pause"}]},
    }


async def running(store: Store, obj: Obj) -> Obj:
    """Create the pod and report it Running (what the kubelet does once the sandbox is up)."""
    created = await store.create(obj)
    status = {"phase": "Running", "podIP": "10.6.0.250", "podIPs": [{"ip": "10.6.0.250"}]}
    return await store.update_status({**created, "status": status})


async def add(ipam: IpamService, created: Obj, container: str = "ctr") -> str:
    """A CNI ADD for the pod: its address in pool ``gc``."""
    meta = created["metadata"]
    req = AddRequest(container, "eth0", "/var/run/netns/x", "default", meta["name"], meta["uid"], ("gc",), ())
    results = await ipam.allocate(req)
    return results[0].allocations[0].ip


async def holders(store: Store) -> dict[str, str]:
    """``{address: pod UID}`` of pool ``gc`` as stored."""
    ledger = PoolLedger.from_object(await store.get(POOL, "gc"))
    return {str(ip): rec.pod_uid for ip, rec in ((ledger.address(i).split("/")[0], r) for i, r in ledger.holders())}


def released(store: Store, ip: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return ip not in await holders(store)

    return check


async def endpoint_exists(store: Store, name: str) -> bool:
    try:
        await store.get(ENDPOINT, name, "default")
    except NotFound:
        return False
    return True


@asynccontextmanager
async def cluster(store: Store, settings: GcSettings = FAST) -> AsyncIterator[tuple[IpamService, IpGarbageCollector]]:
    """Pool ``gc``, an agent's IPAM service, and the GC running (synced) for the body of the block."""
    await store.create(pool("gc", ips=["10.6.0.10-10.6.0.20"]))
    async with trio.open_nursery() as nursery:
        ipam = IpamService(store, PoolRegistry(store, Supervisor(nursery)), NODE)
        gc = IpGarbageCollector(store, settings)
        await nursery.start(gc.run)
        yield ipam, gc
        nursery.cancel_scope.cancel(reason="test over")


async def scans_after(gc: IpGarbageCollector, count: int) -> None:
    start = gc.scans

    async def check() -> bool:
        return gc.scans >= start + count

    await eventually(check, within=TIMEOUT, what=f"{count} more scans")


async def test_a_pod_deleted_without_a_cni_del_gets_its_address_back(private_store: Store) -> None:
    store = private_store
    with trio.fail_after(TIMEOUT):
        async with cluster(store) as (ipam, gc):
            created = await running(store, pod("lost"))
            ip = await add(ipam, created)
            # The node died: no CNI DEL ever comes, and the pod GC removes the Pod at once (grace 0), as every
            # Pod delete in this module does; a Pod deleted with a grace period stays terminating meanwhile.
            await store.delete("Pod", "lost", "default", grace_seconds=0)
            await eventually(released(store, ip), within=TIMEOUT, what="the address released")
            await eventually(lambda: _not(endpoint_exists(store, "lost")), within=TIMEOUT, what="endpoint dropped")
            await eventually(counted(gc), within=TIMEOUT, what="the release counted")
            assert gc.recent[-1].ip == ip
            assert gc.recent[-1].pod_uid == created["metadata"]["uid"]


async def test_an_endpoint_of_another_shape_does_not_stop_the_scan_of_the_others(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "store.db")  # NB: no CRD schema here to refuse such an object
    try:
        with trio.fail_after(TIMEOUT):
            async with cluster(store) as (ipam, gc):
                meta = {"name": "odd", "namespace": "default"}
                status = {"current": {"uid": "u", "node": "n", "ips": [{"interface": "eth0", "vlan": "x"}]}}
                odd = {"apiVersion": SPIDER_API_VERSION, "kind": ENDPOINT, "metadata": meta, "status": status}
                await store.create(odd)
                lost = await running(store, pod("lost"))
                ip = await add(ipam, lost)
                await store.delete("Pod", "lost", "default", grace_seconds=0)
                await eventually(released(store, ip), within=TIMEOUT, what="the address released beside the odd one")
                scans = gc.scans

                async def scanned_again() -> bool:
                    return gc.scans > scans + 1

                await eventually(scanned_again, within=TIMEOUT, what="two more scans")
                assert gc.failures == 0, "a scan failed to read the store"
    finally:
        await store.aclose()


def counted(gc: IpGarbageCollector) -> Callable[[], Awaitable[bool]]:
    """Whether the GC counted a release (it counts once the pool write and the endpoint drop answered)."""

    async def check() -> bool:
        return gc.released >= 1

    return check


async def _not(check: Awaitable[bool]) -> bool:
    return not await check


async def test_a_live_pod_keeps_its_address_through_many_scans(private_store: Store) -> None:
    store = private_store
    with trio.fail_after(TIMEOUT):
        async with cluster(store) as (ipam, gc):
            created = await running(store, pod("alive"))
            ip = await add(ipam, created)
            await scans_after(gc, 3)
            assert (await holders(store))[ip] == created["metadata"]["uid"]
            assert gc.released == 0


STATEFULSET = {
    "apiVersion": "apps/v1",
    "kind": "StatefulSet",
    "metadata": {"name": "web", "namespace": "default"},
    "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}}, "serviceName": "web", "template": {}},
}
WEB_0 = pod("web-0", owner={"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web"})


async def running_with_grace(store: Store, ipam: IpamService, name: str) -> tuple[Obj, str]:
    """A running pod with a grace period of a second, and its address."""
    short = pod(name)
    short["spec"]["terminationGracePeriodSeconds"] = 1
    created = await running(store, short)
    return created, await add(ipam, created)


async def test_a_pod_deleted_with_a_grace_period_gets_its_address_back_once_the_grace_has_passed(
    private_store: Store,
) -> None:
    store = private_store
    with trio.fail_after(TIMEOUT):
        async with cluster(store) as (ipam, _gc):
            created, ip = await running_with_grace(store, ipam, "slow")
            await store.delete("Pod", "slow", "default")  # no CNI DEL comes, and no kubelet confirms either
            try:  # NB: on an API server it stays, terminating; the embedded store has no kubelet to wait for
                left = await store.get("Pod", "slow", "default")
                assert left["metadata"]["deletionGracePeriodSeconds"] == 1
            except NotFound:
                pass
            await eventually(released(store, ip), within=TIMEOUT, what="the terminating pod's address released")
            assert created["metadata"]["uid"] not in (await holders(store)).values()


@pytest.mark.parametrize("edited", ["10.6.0.300/16", "fd00::5/64", "garbage"])
async def test_a_pod_whose_endpoint_was_edited_into_nonsense_still_gets_its_address_back(
    private_store: Store, edited: str
) -> None:
    store = private_store  # NB: the trace of such a pod once stopped the controller on a ValueError
    with trio.fail_after(TIMEOUT):
        async with cluster(store) as (ipam, gc):
            _, ip = await running_with_grace(store, ipam, "edited")
            endpoint = await store.get(ENDPOINT, "edited", "default")
            endpoint["status"]["current"]["ips"][0]["ipv4"] = edited
            await store.update(endpoint)
            await store.delete("Pod", "edited", "default")
            await eventually(released(store, ip), within=TIMEOUT, what="the edited pod's address released")
            scans = gc.scans

            async def scanning_on() -> bool:
                return gc.scans > scans

            await eventually(scanning_on, within=TIMEOUT, what="the GC scanning on")


async def test_a_statefulset_pod_keeps_its_address_while_its_ordinal_is_valid(private_store: Store) -> None:
    store = private_store
    with trio.fail_after(TIMEOUT):
        async with cluster(store) as (ipam, gc):
            made = await store.create(STATEFULSET)
            ip = await add(ipam, await running(store, WEB_0))
            await store.delete(
                "Pod", "web-0", "default", grace_seconds=0
            )  # no DEL: the next web-0 takes the same address
            await scans_after(gc, 3)
            assert ip in await holders(store)
            assert await endpoint_exists(store, "web-0")
            await store.update({**made, "spec": {**made["spec"], "replicas": 0}})  # scaled down: web-0 is invalid
            await eventually(released(store, ip), within=TIMEOUT, what="the scaled-down ordinal's address released")


async def test_with_statefulsets_switched_off_a_valid_ordinals_pod_is_stateless_to_gc(private_store: Store) -> None:
    store = private_store
    with trio.fail_after(TIMEOUT):
        async with cluster(store, attrs.evolve(FAST, statefulset=False)) as (ipam, _gc):
            await store.create(STATEFULSET)
            ip = await add(ipam, await running(store, WEB_0))
            await store.delete(
                "Pod", "web-0", "default", grace_seconds=0
            )  # no DEL, the ordinal still valid: released all the same
            await eventually(released(store, ip), within=TIMEOUT, what="the deleted pod's address released")


async def test_a_pod_re_created_under_the_same_name_keeps_its_fresh_address(private_store: Store) -> None:
    store = private_store
    with trio.fail_after(TIMEOUT):
        async with cluster(store) as (ipam, gc):
            first = await running(store, pod("same"))
            await add(ipam, first, "ctr-1")
            await store.delete("Pod", "same", "default", grace_seconds=0)  # no DEL for the first pod: GC traces it
            second = await running(store, pod("same"))
            new_ip = await add(ipam, second, "ctr-2")  # NB: may be the first pod's address again
            await scans_after(gc, 3)
            assert await holders(store) == {new_ip: second["metadata"]["uid"]}
            recorded = await store.get(ENDPOINT, "same", "default")
            assert recorded["status"]["current"]["uid"] == second["metadata"]["uid"]


async def test_a_host_network_pod_of_the_same_name_does_not_hide_the_old_pods_address(private_store: Store) -> None:
    """Pod ``same`` goes without a CNI DEL and comes back under the same name with ``hostNetwork``: GC skips
    host-network pods, but not the older pod's record behind one (it would stay for as long as the new pod)."""
    store = private_store
    with trio.fail_after(TIMEOUT):
        async with cluster(store) as (ipam, _gc):
            first = await running(store, pod("same"))
            ip = await add(ipam, first)
            await store.delete("Pod", "same", "default", grace_seconds=0)  # no DEL for the first pod
            host = pod("same")
            host["spec"]["hostNetwork"] = True
            await running(store, host)
            await eventually(released(store, ip), within=TIMEOUT, what="the older pod's address released")


async def test_spider_gc_releases_an_orphan_only_after_looking_twice(private_store: Store) -> None:
    store = private_store
    with trio.fail_after(TIMEOUT):
        await store.create(pool("gc", ips=["10.6.0.10-10.6.0.20"]))
        async with trio.open_nursery() as nursery:
            ipam = IpamService(store, PoolRegistry(store, Supervisor(nursery)), NODE)
            gone = await running(store, pod("gone"))
            gone_ip = await add(ipam, gone, "ctr-1")
            alive = await running(store, pod("alive"))
            alive_ip = await add(ipam, alive, "ctr-2")
            await store.delete("Pod", "gone", "default", grace_seconds=0)
            nursery.cancel_scope.cancel(reason="adds done")
        releases = await collect_once(store, GcSettings(), gap=0.05)
        assert [(r.ip, r.pod) for r in releases] == [(gone_ip, "default/gone")]
        assert list(await holders(store)) == [alive_ip]


# --- outdated endpoints (enableCleanOutdatedEndpoint) ------------------------------------------------------

CLEANING = attrs.evolve(FAST, clean_outdated_endpoints=True)


async def outdate(store: Store, ipam: IpamService, created: Obj) -> str:
    """Give the pod's address back in its pool but leave its endpoint: what an interrupted DEL leaves."""
    ip = await add(ipam, created)
    handle = await ipam.pools.get("gc")
    assert await handle.release_ips(((ip, created["metadata"]["uid"]),)) == 1
    assert ip not in await holders(store)
    return ip


async def dropped(gc: IpGarbageCollector) -> bool:
    """Whether the GC counted an outdated endpoint dropped (it counts once the delete answered)."""
    return gc.outdated_dropped >= 1


async def test_an_endpoint_no_pool_record_names_is_dropped_once_its_pod_is_gone_and_counted_in_the_metrics(
    private_store: Store,
) -> None:
    store = private_store
    with trio.fail_after(TIMEOUT):
        async with cluster(store, CLEANING) as (ipam, gc):
            created = await running(store, pod("outdated"))
            await outdate(store, ipam, created)
            await store.delete("Pod", "outdated", "default", grace_seconds=0)
            await eventually(lambda: dropped(gc), within=TIMEOUT, what="dropped")
            assert not await endpoint_exists(store, "outdated")
            assert gc.outdated_dropped == 1
            assert gc.released == 0
            view = types.SimpleNamespace(gc=gc, pools=None, pool_host=None, reconciler=None)
            text = ControllerMetrics(view).render().decode()
    assert "spider_gc_outdated_endpoints_dropped_total 1.0" in text.splitlines()


async def test_an_endpoint_no_pool_record_names_is_kept_while_a_pod_of_its_uid_lives(private_store: Store) -> None:
    store = private_store
    with trio.fail_after(TIMEOUT):
        async with cluster(store, CLEANING) as (ipam, gc):
            created = await running(store, pod("between"))  # NB: as between an ADD's pool write and its endpoint's
            await outdate(store, ipam, created)
            await scans_after(gc, 3)
            assert await endpoint_exists(store, "between")
            assert gc.outdated_dropped == 0


async def test_an_endpoint_no_pool_record_names_is_kept_when_cleaning_is_switched_off(private_store: Store) -> None:
    store = private_store
    with trio.fail_after(TIMEOUT):
        async with cluster(store) as (ipam, gc):
            created = await running(store, pod("left"))
            await outdate(store, ipam, created)
            await store.delete("Pod", "left", "default", grace_seconds=0)
            await scans_after(gc, 3)
            assert await endpoint_exists(store, "left")
            assert gc.outdated_dropped == 0


async def test_an_outdated_endpoint_rewritten_between_the_looks_is_kept(private_store: Store) -> None:
    store = private_store
    with trio.fail_after(TIMEOUT):
        await store.create(pool("gc", ips=["10.6.0.10-10.6.0.20"]))
        async with trio.open_nursery() as nursery:
            ipam = IpamService(store, PoolRegistry(store, Supervisor(nursery)), NODE)
            created = await running(store, pod("rewritten"))
            await outdate(store, ipam, created)
            await store.delete("Pod", "rewritten", "default", grace_seconds=0)
            gc = IpGarbageCollector(store, attrs.evolve(CLEANING, trace_gap=0.05))
            gc.pools = ipam.pools
            gc.load([], [])
            assert await gc.scan_all() == set()
            assert gc.pending_endpoints() == {("default", "rewritten")}
            obj = await store.get(ENDPOINT, "rewritten", "default")
            await store.update(
                {**obj, "metadata": {**obj["metadata"], "labels": {"touched": "yes"}}}
            )  # an ADD wrote it
            await trio.sleep(0.05)
            await gc.look_again(set())
            assert await endpoint_exists(store, "rewritten")
            await gc.scan_and_collect()  # seen at the new version twice: now it goes
            assert not await endpoint_exists(store, "rewritten")
            nursery.cancel_scope.cancel(reason="test over")


# --- safety ------------------------------------------------------------------------------------------------


async def test_a_kubevirt_pods_address_is_kept_while_its_launcher_pod_lives_under_another_name(
    private_store: Store,
) -> None:
    store = private_store
    owner = {"apiVersion": KUBEVIRT_API, "kind": "VirtualMachineInstance", "name": "vm1"}
    with trio.fail_after(TIMEOUT):
        await store.create(pool("gc", ips=["10.6.0.10-10.6.0.20"]))
        async with trio.open_nursery() as nursery:
            ipam = IpamService(store, PoolRegistry(store, Supervisor(nursery)), NODE)
            launcher = await running(store, pod("virt-launcher-vm1-abcde", owner=owner))
            ip = await add(ipam, launcher)  # NB: the record names the VMI, default/vm1, not the launcher pod
            obj = await store.get(ENDPOINT, "vm1", "default")  # as between the ADD's pool write and its endpoint's
            written = await store.update({**obj, "metadata": {**obj["metadata"], "finalizers": []}})
            await store.delete(ENDPOINT, "vm1", "default", resource_version=written["metadata"]["resourceVersion"])
            nursery.cancel_scope.cancel(reason="adds done")
        later = lambda: time.time() + RECLAIM_AFTER  # noqa: E731  NB: its ADD is long over: no in-flight keep
        assert await collect_once(store, GcSettings(), gap=0.05, clock=later) == []
        assert (await holders(store))[ip] == launcher["metadata"]["uid"]
        await store.delete("Pod", "virt-launcher-vm1-abcde", "default", grace_seconds=0)
        releases = await collect_once(store, GcSettings(), gap=0.05, clock=later)
        assert [r.ip for r in releases] == [ip]


# --- pods without a Pod object, ADDs in flight (issue 13) ---------------------------------------------------


def later() -> float:
    """Wall-clock seconds minutes after now: every ADD of the test is long over (no in-flight keep)."""
    return time.time() + RECLAIM_AFTER


def bare_add(name: str, uid: str, container: str = "c1") -> dict[str, Any]:
    """The agent API's ADD of a pod that has no Pod object in the store."""
    return {"containerID": container, "ifName": "eth0", "netNamespace": "/var/run/netns/x",
            "podNamespace": "default", "podName": name, "podUID": uid}  # fmt: skip


async def served(agent: RunningAgent, name: str, uid: str) -> str:
    """ADD through the real agent API; the address it answered (bare)."""
    status, body, _ = await http_call(agent.socket, "POST", "/v1/ipam/ip", bare_add(name, uid))
    assert status == 200, body
    return str(body["ips"][0]["address"]).partition("/")[0]


async def test_pods_served_without_a_pod_object_keep_their_addresses_through_gc_until_their_cni_del(
    agent: RunningAgent,
) -> None:
    store = agent.store
    with trio.fail_after(TIMEOUT):
        await agent.apply(pool_object("gc", "10.6.0.0/24", ["10.6.0.10-10.6.0.20"], default=True))
        web1 = await served(agent, "web-1", "uid-web-1")
        web2 = await served(agent, "web-2", "uid-web-2")
        recorded = await store.get(ENDPOINT, "web-1", "default")
        assert recorded["metadata"]["annotations"] == {ANNO_POD_OBJECT: "absent"}
        async with trio.open_nursery() as nursery:  # the controller's GC, minutes later, and `spider gc` beside it
            gc = IpGarbageCollector(store, FAST, clock=later)
            await nursery.start(gc.run)
            assert await collect_once(store, GcSettings(), gap=0.05, clock=later) == []
            await scans_after(gc, 3)
            nursery.cancel_scope.cancel(reason="gc looked")
        assert gc.released == 0
        assert await holders(store) == {web1: "uid-web-1", web2: "uid-web-2"}
        web3 = await served(agent, "web-3", "uid-web-3")
        assert web3 not in (web1, web2)
        status, _, _ = await http_call(agent.socket, "DELETE", "/v1/ipam/ip", {**bare_add("web-1", "uid-web-1")})
        assert status == 200
        assert await holders(store) == {web2: "uid-web-2", web3: "uid-web-3"}
        assert not await endpoint_exists(store, "web-1")


async def test_the_mark_is_what_keeps_a_bare_pods_address_from_gc(agent: RunningAgent) -> None:
    store = agent.store
    with trio.fail_after(TIMEOUT):
        await agent.apply(pool_object("gc", "10.6.0.0/24", ["10.6.0.10-10.6.0.20"], default=True))
        ip = await served(agent, "web-1", "uid-web-1")
        obj = await store.get(ENDPOINT, "web-1", "default")
        await store.update({**obj, "metadata": {**obj["metadata"], "annotations": {}}})  # as an older agent wrote it
        releases = await collect_once(store, GcSettings(), gap=0.05, clock=later)
        assert [(r.ip, r.reason) for r in releases] == [(ip, "the pod is gone")]


async def forget_endpoint(store: Store, name: str) -> None:
    """Delete the pod's endpoint: what a store holds between an ADD's pool write and its endpoint write."""
    obj = await store.get(ENDPOINT, name, "default")
    written = await store.update({**obj, "metadata": {**obj["metadata"], "finalizers": []}})
    await store.delete(ENDPOINT, name, "default", resource_version=written["metadata"]["resourceVersion"])


async def test_a_record_without_an_endpoint_is_kept_while_its_add_may_be_in_flight(private_store: Store) -> None:
    store = private_store
    with trio.fail_after(TIMEOUT):
        await store.create(pool("gc", ips=["10.6.0.10-10.6.0.20"]))
        async with trio.open_nursery() as nursery:
            ipam = IpamService(store, PoolRegistry(store, Supervisor(nursery)), NODE)
            ip = await add(ipam, {"metadata": {"name": "young", "uid": "uid-young"}})  # no Pod object
            await forget_endpoint(store, "young")
            nursery.cancel_scope.cancel(reason="adds done")
        assert await collect_once(store, GcSettings(), gap=0.05) == []
        assert ip in await holders(store)
        releases = await collect_once(store, GcSettings(), gap=0.05, clock=later)
        assert [(r.ip, r.reason) for r in releases] == [(ip, "neither the pod nor its endpoint exists")]


async def test_a_record_without_an_endpoint_goes_at_once_when_gc_saw_its_pod_deleted(private_store: Store) -> None:
    store = private_store
    with trio.fail_after(TIMEOUT):
        async with cluster(store) as (ipam, gc):
            created = await running(store, pod("seen"))
            ip = await add(ipam, created)
            await forget_endpoint(store, "seen")
            await scans_after(gc, 2)
            assert ip in await holders(store), "kept: its ADD may be in flight, and its pod lives"
            await store.delete("Pod", "seen", "default", grace_seconds=0)
            await eventually(released(store, ip), within=TIMEOUT, what="the address of the pod seen deleted")
            await eventually(counted(gc), within=TIMEOUT, what="the release counted")
            assert gc.recent[-1].pod_uid == created["metadata"]["uid"]


def test_spider_controller_switches_outdated_endpoint_cleaning_on_by_flag_or_spiderpools_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def cleaning(*argv: str) -> bool:
        args = build_parser().parse_args(["controller", *argv])
        settings = controller_settings(args, StoreSettings(), MetricsSettings())
        return bool(settings.gc.clean_outdated_endpoints)

    monkeypatch.delenv("SPIDERPOOL_ENABLE_CLEAN_OUTDATED_ENDPOINT", raising=False)
    assert not cleaning()
    assert cleaning("--clean-outdated-endpoints")
    monkeypatch.setenv("SPIDERPOOL_ENABLE_CLEAN_OUTDATED_ENDPOINT", "true")
    assert cleaning()


def test_spider_controller_takes_the_agents_statefulset_and_kubevirt_switches_for_its_gc(tmp_path: Path) -> None:
    def kept(*argv: str, conf: str = "") -> tuple[bool, bool]:
        (tmp_path / "conf.yml").write_text(conf)
        args = build_parser().parse_args(["controller", "--config-path", str(tmp_path / "conf.yml"), *argv])
        gc = controller_settings(args, StoreSettings(), MetricsSettings()).gc
        return gc.statefulset, gc.kubevirt

    assert kept() == (True, True)
    assert kept("--no-statefulset-ips") == (False, True)
    assert kept(conf="enableKubevirtStaticIP: false\n") == (True, False)
    assert kept("--kubevirt-ips", conf="enableStatefulSet: false\nenableKubevirtStaticIP: false\n") == (False, True)


# --- many workloads on one pool, scaling while GC runs (G00011, G00012) ------------------------------------


def workload(kind: str, name: str, api: str = "apps/v1", *, replicas: int | None = None, **meta: Any) -> Obj:
    """A workload object (StatefulSet, Deployment, ReplicaSet, Job) of namespace ``default``."""
    spec: dict[str, Any] = {"selector": {"matchLabels": {"app": name}}, "template": {}}
    if replicas is not None:
        spec["replicas"] = replicas
    if kind == "StatefulSet":
        spec["serviceName"] = name
    return {"apiVersion": api, "kind": kind, "metadata": {"name": name, "namespace": "default", **meta}, "spec": spec}


def owned_by(kind: str, name: str, api: str = "apps/v1") -> dict[str, Any]:
    """The owner reference fields ``pod`` takes."""
    return {"apiVersion": api, "kind": kind, "name": name}


async def scale(store: Store, name: str, replicas: int) -> None:
    """Set the StatefulSet's ``spec.replicas`` (read afresh, so the write is of the current version)."""
    sts = await store.get("StatefulSet", name, "default")
    await store.update({**sts, "spec": {**sts["spec"], "replicas": replicas}})


def long_ago() -> str:
    """An RFC 3339 time an hour ago: a finished container's ``finishedAt`` whose grace period is long over."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))


@attrs.define
class Tenants:
    """The pods of one pool as their kubelets see them: each started, answered, reported Running; and the checks
    made after every step (``no_conflict``, ``come_back``)."""

    store: Store
    ipam: IpamService
    gc: IpGarbageCollector
    live: dict[str, tuple[str, str]] = attrs.Factory(dict)
    """``{pod name: (UID, address answered)}`` of the pods that are alive."""

    async def start(self, name: str, owner: dict[str, Any] | None = None) -> str:
        """Create the pod (Pending, no podIPs), ADD it, then report it Running with the address answered: what
        the kubelet does, so GC never sees a new pod with other addresses while its ADD is under way."""
        obj = pod(name, owner=owner)
        obj["spec"]["terminationGracePeriodSeconds"] = 0
        created = await self.store.create(obj)
        ip = await add(self.ipam, created, f"ctr-{created['metadata']['uid']}")
        status = {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
        await self.store.update_status({**created, "status": status})
        self.live[name] = (created["metadata"]["uid"], ip)
        return ip

    async def lose(self, name: str) -> str:
        """Delete the pod without a CNI DEL (its node is lost); the address it had."""
        await self.store.delete("Pod", name, "default", grace_seconds=0)
        return self.live.pop(name)[1]

    async def finish(self, name: str) -> str:
        """Report the pod Succeeded, its container finished long ago (a Job's pod: the object stays); its address."""
        obj = await self.store.get("Pod", name, "default")
        done = {"terminated": {"exitCode": 0, "finishedAt": long_ago()}}
        status = {**obj["status"], "phase": "Succeeded", "containerStatuses": [{"name": "c", "state": done}]}
        await self.store.update_status({**obj, "status": status})
        return self.live.pop(name)[1]

    async def no_conflict(self) -> None:
        """No address answered to two live pods; each live pod's address is recorded, in the pool and in its
        endpoint, as that pod's (its UID)."""
        answered = sorted(ip for _uid, ip in self.live.values())
        assert len(set(answered)) == len(answered), f"an address answered to two live pods: {answered}"
        held = await holders(self.store)
        for name, (uid, ip) in self.live.items():
            assert held.get(ip) == uid, f"{name} (UID {uid}) lost {ip}: the pool records {held.get(ip)!r}"
            recorded = Endpoint.from_object(await self.store.get(ENDPOINT, name, "default"))
            assert recorded.uid == uid
            assert [(nic.ipv4 or "").partition("/")[0] for nic in recorded.nics] == [ip]

    async def come_back(self, ips: set[str]) -> None:
        """Wait until the pool holds none of ``ips``; fail when two whole scan-alls began and ended after this
        call (scan-all N+1 saw them, its second look released them) and one is still held.  Counts scans, not
        seconds."""
        start = self.gc.scans

        async def check() -> bool:
            scans = self.gc.scans  # NB: read before the pool: a release after this read is within the bound
            still = ips & set(await holders(self.store))
            assert not still or scans < start + 3, f"{sorted(still)} still held after two whole scan-alls"
            return not still

        await eventually(check, within=TIMEOUT, what=f"{sorted(ips)} back in the pool")

    async def nothing_leaked(self) -> None:
        """Wait until the pool holds exactly the live pods' addresses."""

        async def check() -> bool:
            return await holders(self.store) == {ip: uid for uid, ip in self.live.values()}

        await eventually(check, within=TIMEOUT, what="the pool holding just the live pods' addresses")


SCANNING = GcSettings(interval=0.5, trace_gap=0.05)
"""Scan-all twice a second: the bound ``Tenants.come_back`` counts in scans."""


async def test_two_statefulsets_scaling_on_one_pool_keep_their_ordinals_addresses_and_never_conflict(
    private_store: Store,
) -> None:
    store = private_store
    with trio.fail_after(TIMEOUT * 3):
        async with cluster(store, SCANNING) as (ipam, gc):
            pods = Tenants(store, ipam, gc)
            sets = {"a": owned_by("StatefulSet", "a"), "b": owned_by("StatefulSet", "b")}
            for name in sets:
                await store.create(workload("StatefulSet", name, replicas=3))
            first = {f"{s}-{i}": await pods.start(f"{s}-{i}", owner) for s, owner in sets.items() for i in range(3)}
            await pods.no_conflict()
            answered = dict(pods.live)

            await scale(store, "a", 1)  # scaled down while their node is lost: no CNI DEL for any of them
            await scale(store, "b", 2)
            for name in first:
                await pods.lose(name)
            await pods.come_back({first["a-1"], first["a-2"], first["b-2"]})
            await scans_after(gc, 1)
            kept = {ip: uid for name, (uid, ip) in answered.items() if name in ("a-0", "b-0", "b-1")}
            assert await holders(store) == kept, "the kept ordinals' addresses are held for them while they are away"
            for name in ("a-0", "b-0", "b-1"):  # the kept ordinals re-created elsewhere, with new UIDs
                assert await pods.start(name, sets[name[0]]) == first[name], f"{name} did not get its address back"
                await pods.no_conflict()

            await scale(store, "a", 3)  # up again: the scaled-away ordinals come back as new pods
            await scale(store, "b", 3)
            for name in ("a-1", "a-2", "b-2"):
                await pods.start(name, sets[name[0]])
                await pods.no_conflict()
            await scans_after(gc, 2)
            await pods.no_conflict()
            assert {name: pods.live[name][1] for name in ("a-0", "b-0", "b-1")} == {
                name: first[name] for name in ("a-0", "b-0", "b-1")
            }

            await scale(store, "b", 1)  # down and at once up again, racing GC's looks at b-1 and b-2
            lost = {name: await pods.lose(name) for name in ("b-1", "b-2")}
            await scale(store, "b", 3)
            for name in lost:
                await pods.start(name, sets["b"])
                await pods.no_conflict()
            await scans_after(gc, 3)
            await pods.no_conflict()
            await pods.nothing_leaked()


async def test_pods_of_every_workload_kind_competing_for_one_pool_get_orphans_back_and_never_conflict(
    private_store: Store,
) -> None:
    store = private_store
    with trio.fail_after(TIMEOUT * 3):
        async with cluster(store, SCANNING) as (ipam, gc):  # pool gc: 11 addresses, 10.6.0.10-10.6.0.20
            pods = Tenants(store, ipam, gc)
            deploy = await store.create(workload("Deployment", "app", replicas=2))
            rs = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "app", "uid": deploy["metadata"]["uid"]}
            await store.create(workload("ReplicaSet", "app-5d4f", ownerReferences=[{**rs, "controller": True}]))
            await store.create(workload("StatefulSet", "db", replicas=2))
            await store.create(workload("Job", "batch", "batch/v1"))
            of_app, of_db = owned_by("ReplicaSet", "app-5d4f"), owned_by("StatefulSet", "db")
            of_job = owned_by("Job", "batch", "batch/v1")

            # created: two Deployment pods, two StatefulSet pods, two Job pods, a bare pod
            created = [("app-5d4f-aaaaa", of_app), ("app-5d4f-bbbbb", of_app), ("db-0", of_db), ("db-1", of_db),
                       ("batch-ccccc", of_job), ("batch-ddddd", of_job), ("solo", None)]  # fmt: skip
            for name, owner in created:
                await pods.start(name, owner)
            await pods.no_conflict()
            db = {name: pods.live[name][1] for name in ("db-0", "db-1")}

            # the Job's pods finish: the objects stay, their addresses come back
            finished_ips = {await pods.finish("batch-ccccc"), await pods.finish("batch-ddddd")}
            await pods.come_back(finished_ips)
            await pods.no_conflict()

            # scaled up: two more Deployment pods and db-2, on the addresses just freed among others
            for name, owner in [("app-5d4f-eeeee", of_app), ("app-5d4f-fffff", of_app), ("db-2", of_db)]:
                await pods.start(name, owner)
            await pods.no_conflict()

            # scaled down without CNI DEL (lost node): the Deployment back to two, the StatefulSet back to two
            await scale(store, "db", 2)
            orphans = {await pods.lose("app-5d4f-aaaaa"), await pods.lose("app-5d4f-bbbbb"), await pods.lose("db-2")}
            await pods.come_back(orphans)
            await pods.no_conflict()

            # the StatefulSet's pods lost and re-created: same addresses; a new bare pod competes meanwhile
            for name in db:
                await pods.lose(name)
            await scans_after(gc, 2)  # away a while: GC looks at their records with no pod to be seen
            await pods.start("solo-2")
            for name in db:
                assert await pods.start(name, of_db) == db[name], f"{name} did not get its address back"
            await pods.no_conflict()

            # deleted without CNI DEL: the bare pod, the Deployment (its pods with it), the Job (its pods with it)
            orphans = {await pods.lose("solo"), await pods.lose("app-5d4f-eeeee"), await pods.lose("app-5d4f-fffff")}
            await store.delete("ReplicaSet", "app-5d4f", "default")
            await store.delete("Deployment", "app", "default")
            await store.delete("Pod", "batch-ccccc", "default", grace_seconds=0)
            await store.delete("Pod", "batch-ddddd", "default", grace_seconds=0)
            await store.delete("Job", "batch", "default")
            await pods.come_back(orphans)
            await pods.no_conflict()
            await pods.nothing_leaked()

            # every address not live is free again: the rest of the pool goes to new pods, each a distinct one
            free = 11 - len(pods.live)
            for i in range(free):
                await pods.start(f"filler-{i}")
            await pods.no_conflict()
            assert len(await holders(store)) == 11


@attrs.define(eq=False)
class HeldJudge(IpGarbageCollector):
    """Judges every traced pod only once ``judge`` is set, noting how many it judged at once."""

    judge: trio.Event = attrs.field(factory=trio.Event)
    judged: list[str] = attrs.field(factory=list)
    at_once: int = 0
    most_at_once: int = 0

    async def _trace_one(self, traced: Traced) -> bool:
        self.at_once += 1
        self.most_at_once = max(self.most_at_once, self.at_once)
        await self.judge.wait()
        self.at_once -= 1
        self.judged.append(traced.name)
        return True


async def test_due_traced_pods_are_judged_by_the_workers_at_once_and_those_finding_no_place_wait_a_round(
    private_store: Store,
) -> None:
    gc = HeldJudge(private_store, attrs.evolve(FAST, workers=2, channel_buffer=1, signal_timeout=0.2))
    for i in range(5):  # NB: five pods due at once, traced as the informer would have them
        gc._traced[f"uid-{i}"] = Traced("default", f"p{i}", f"uid-{i}", until=0.0, reason="test", endpoint_name=f"p{i}")
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(gc.trace_due)
            await trio.sleep(0.6)  # NB: two pods with the workers, one waiting for them; two gave up after 0.2 s
            assert (gc.most_at_once, gc.deferred) == (2, 2)
            gc.judge.set()
    assert sorted(gc.judged) == ["p0", "p1", "p2"]
    assert sorted(gc._traced) == ["uid-3", "uid-4"]  # still traced: judged in the next round


async def test_an_endpoint_naming_its_address_under_the_other_family_stops_nothing(private_store: Store) -> None:
    """An IPv4 address filed under ``ipv6``/``ipv6Pool`` (an edit by hand): tracing its gone pod once raised
    ``ValueError`` out of the collector, which stopped the controller (again after each restart)."""
    store = private_store
    with trio.fail_after(TIMEOUT):
        async with cluster(store) as (ipam, gc):
            ip = await add(ipam, await running(store, pod("swapped")))
            endpoint = await store.get(ENDPOINT, "swapped", "default")
            nic = endpoint["status"]["current"]["ips"][0]
            nic["ipv6"], nic["ipv6Pool"] = nic.pop("ipv4"), nic.pop("ipv4Pool")
            await store.update(endpoint)
            await store.delete("Pod", "swapped", "default", grace_seconds=0)
            await eventually(released(store, ip), within=TIMEOUT, what="released by scan-all")
            await scans_after(gc, 2)


async def test_a_gone_pods_address_is_released_though_its_endpoint_does_not_parse(tmp_path: Path) -> None:
    """The embedded store keeps what a CRD schema would refuse (``vlan: "x"``): scan-all took such an endpoint
    for none, but the last looks before a release raised on it, so the address was never released."""
    store = await SqliteStore.open(tmp_path / "store.db")
    try:
        with trio.fail_after(TIMEOUT):
            async with cluster(store) as (ipam, _gc):
                ip = await add(ipam, await running(store, pod("odd")))
                endpoint = await store.get(ENDPOINT, "odd", "default")
                endpoint["status"]["current"]["ips"][0]["vlan"] = "x"
                await store.update(endpoint)
                await store.delete("Pod", "odd", "default", grace_seconds=0)
                await eventually(released(store, ip), within=TIMEOUT, what="released")
    finally:
        await store.aclose()


async def test_a_failed_live_migrations_source_launcher_keeps_the_vms_address(tmp_path: Path) -> None:
    """The migration's target pod adopted the VM's record (its UID), the migration failed and the target went; the
    standalone VMI is then deleted while the source launcher pod still runs the VM (its shutdown grace).  GC
    once freed the address under it: nobody of the record's UID was alive."""
    store = await SqliteStore.open(tmp_path / "store.db")
    owner = {"apiVersion": KUBEVIRT_API, "kind": "VirtualMachineInstance", "name": "vm1"}
    vmi = {"apiVersion": KUBEVIRT_API, "kind": "VirtualMachineInstance",
           "metadata": {"name": "vm1", "namespace": "default"}, "spec": {}}  # fmt: skip
    try:
        with trio.fail_after(TIMEOUT):
            await store.create(pool("gc", ips=["10.6.0.10-10.6.0.20"]))
            await store.create(vmi)
            async with trio.open_nursery() as nursery:
                ipam = IpamService(store, PoolRegistry(store, Supervisor(nursery)), NODE)
                ip = await add(ipam, await running(store, pod("virt-launcher-vm1-aaaaa", owner=owner)), "ctr-a")
                target = await running(store, pod("virt-launcher-vm1-bbbbb", owner=owner))
                assert await add(ipam, target, "ctr-b") == ip  # the target takes the VM's address over
                nursery.cancel_scope.cancel(reason="adds done")
            await store.delete("Pod", "virt-launcher-vm1-bbbbb", "default", grace_seconds=0)
            await store.delete("VirtualMachineInstance", "vm1", "default", grace_seconds=0)
            later = lambda: time.time() + RECLAIM_AFTER  # noqa: E731
            assert await collect_once(store, GcSettings(), gap=0.05, clock=later) == []
            assert ip in await holders(store)
            await store.delete("Pod", "virt-launcher-vm1-aaaaa", "default", grace_seconds=0)  # the VM is down
            (released,) = await collect_once(store, GcSettings(), gap=0.05, clock=later)
            assert released.ip == ip
    finally:
        await store.aclose()
