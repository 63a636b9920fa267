"""Auto pools follow their applications: created, grown, shrunk and reclaimed (reference §7.1), on every store."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio

from actors.controller.applications import ApplicationController, ApplicationSettings
from actors.ipam.subnet import SubnetRegistry
from actors.runtime.supervisor import Supervisor
from actors.stores.port import Conflict, Invalid, NotFound, Obj, ObjectList, PassThrough, Store
from actors.stores.validating import ValidatingStore
from spider.addr import IPSet
from spider.autopool import LABEL_APP_UID, LABEL_RECLAIM, AppRef, SubnetClaim, auto_pool_name, auto_pool_object
from spider.errors import StoreUnavailable
from spider.pool import PoolLedger, Record
from spider.subnet import rfc3339
from tests.controller.support import eventually, subnet
from tests.controller.test_reconciler import has, reconciling

TIMEOUT = 30
SELECTOR = "ipam.spidernet.io/owner-application-name=web"


def deployment(replicas: int, *, kind: str = "Deployment", reclaim: bool = True, number: str = "") -> Obj:
    annotations = {"ipam.spidernet.io/subnet": json.dumps({"ipv4": ["s4"]})}
    if not reclaim:
        annotations["ipam.spidernet.io/ippool-reclaim"] = "false"
    if number:
        annotations["ipam.spidernet.io/ippool-ip-number"] = number
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"replicas": replicas, "template": {"metadata": {"annotations": annotations}}},
    }


@asynccontextmanager
async def controlling(store: Store, *, listed: bool = True, **options: Any) -> AsyncIterator[ApplicationController]:
    """The controller running on ``store``, once it listed every kind (``listed=False``: at once, as the
    controller process starts it)."""
    async with reconciling(store), trio.open_nursery() as nursery:
        # NB: wired as spider controller wires it: its pool writes go through admission
        controller = ApplicationController(
            ValidatingStore(store), SubnetRegistry(store, Supervisor(nursery)), **options
        )
        if listed:
            await nursery.start(controller.run)
        else:
            nursery.start_soon(controller.run)
        yield controller
        nursery.cancel_scope.cancel(reason="test over")


async def auto_pools(store: Store) -> list[Obj]:
    return list((await store.list("SpiderIPPool", label_selector=SELECTOR)).items)


def pool_with(store: Store, test: Callable[[list[Obj]], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return test(await auto_pools(store))

    return check


def controlled(obj: Obj) -> dict[str, Any]:
    return json.loads((obj.get("status") or {}).get("controlledIPPools") or "{}")


async def seed_subnet(store: Store) -> None:
    await store.create(subnet("s4", "10.6.0.0/24", ["10.6.0.1-10.6.0.10"], ipVersion=4, gateway="10.6.0.254"))


async def test_a_deployment_gets_a_pool_of_its_replicas_that_grows_shrinks_and_goes_with_it(
    private_store: Store,
) -> None:
    """The subnet's entry is trimmed after the shrink once the growth's claim is older than the claim window."""
    store = private_store
    await seed_subnet(store)
    with trio.fail_after(TIMEOUT):
        async with controlling(store, settings=ApplicationSettings(claim_window=1)):
            app = await store.create(deployment(2))
            await eventually(
                pool_with(store, lambda ps: len(ps) == 1 and ps[0]["spec"]["ips"] == ["10.6.0.1-10.6.0.2"])
            )
            (pool,) = await auto_pools(store)
            assert pool["metadata"]["name"].startswith("auto4-web-eth0-")
            assert pool["spec"]["gateway"] == "10.6.0.254"
            entry = controlled(await store.get("SpiderSubnet", "s4"))[pool["metadata"]["name"]]
            entry.pop("claimedAt", None)  # NB: ours, stamped by the claim
            assert entry == {"ips": ["10.6.0.1-10.6.0.2"], "application": "apps_v1_Deployment_default_web"}
            await store.update({**app, "spec": {**app["spec"], "replicas": 4}, "metadata": {**app["metadata"]}})
            await eventually(pool_with(store, lambda ps: ps[0]["spec"]["ips"] == ["10.6.0.1-10.6.0.4"]))
            app = await store.get("Deployment", "web", "default")
            await store.update({**app, "spec": {**app["spec"], "replicas": 1}})
            await eventually(pool_with(store, lambda ps: ps[0]["spec"]["ips"] == ["10.6.0.4"]))

            async def subnet_trimmed() -> bool:
                entries = controlled(await store.get("SpiderSubnet", "s4"))
                return [e["ips"] for e in entries.values()] == [["10.6.0.4"]]

            await eventually(subnet_trimmed)
            await store.delete("Deployment", "web", "default")
            await eventually(pool_with(store, lambda ps: ps == []))

            async def subnet_restored() -> bool:
                return controlled(await store.get("SpiderSubnet", "s4")) == {}

            await eventually(subnet_restored)


async def rewrite(store: Store, name: str, change: Callable[[Obj], Obj], *, status: bool = False) -> Obj:
    """Read pool ``name`` and write ``change(pool)``; again while a write lands between (a controller that was
    stopped may have sent it: a slow server still commits a request its client stopped waiting for)."""
    while True:
        changed = change(await store.get("SpiderIPPool", name))
        with contextlib.suppress(Conflict):
            return await (store.update_status(changed) if status else store.update(changed))


def a_pod_holds_an_address(pool: Obj) -> Obj:
    """The pool with an address held by a pod of ``web`` (so the pool cannot go yet)."""
    ledger = PoolLedger.from_object(pool)
    ledger.records[0x0A060001] = Record("default/web-0", "uid-web-0", "eth0", "ctr", "node-1")
    return {**pool, "status": ledger.to_status()}


async def web_with_its_pool(store: Store, replicas: int) -> Obj:
    """Subnet ``s4`` and Deployment ``web`` of ``replicas``, given its auto pool by a controller that then stops
    (a failover begins); the pool."""
    await seed_subnet(store)
    async with controlling(store):
        await store.create(deployment(replicas))
        await eventually(pool_with(store, lambda ps: len(ps) == 1))
    (pool,) = await auto_pools(store)
    return pool


async def test_an_earlier_applications_reclaim_pool_is_never_taken_over_by_a_new_one_of_its_name(
    private_store: Store,
) -> None:
    """``web`` (reclaim) is deleted and made again before the controller handles the deletion (a failover, or
    both events merged in its queue), while an old pod still holds an address in its pool: the new ``web`` gets
    a pool of its own, and the old one stays the old application's until it drains and goes, as Spiderpool
    re-uses only pools kept with ``ippool-reclaim: "false"`` (I00015)."""
    store = private_store
    with trio.fail_after(TIMEOUT):
        old = await web_with_its_pool(store, 2)
        old = await rewrite(store, old["metadata"]["name"], a_pod_holds_an_address, status=True)
        old_uid = old["metadata"]["labels"][LABEL_APP_UID]
        await store.delete("Deployment", "web", "default")  # no controller sees it
        uid = (await store.create(deployment(2)))["metadata"]["uid"]
        async with controlling(store):

            async def both_owned() -> bool:
                pools = await auto_pools(store)
                owners = {p["metadata"]["name"]: p["metadata"]["labels"][LABEL_APP_UID] for p in pools}
                return sorted(owners.values()) == sorted([old_uid, uid]) and owners[old["metadata"]["name"]] == old_uid

            await eventually(both_owned, what="a pool of the new application's own beside the old one's")


async def test_a_kept_pool_is_reused_by_the_same_kind_and_name_but_not_by_another_kind(private_store: Store) -> None:
    store = private_store
    await seed_subnet(store)
    with trio.fail_after(TIMEOUT):
        async with controlling(store):
            await store.create(deployment(2, reclaim=False))
            await eventually(pool_with(store, lambda ps: len(ps) == 1))
            (kept,) = await auto_pools(store)
            await store.delete("Deployment", "web", "default")
            again = await store.create(deployment(3, reclaim=False))
            uid = again["metadata"]["uid"]
            await eventually(
                pool_with(
                    store,
                    lambda ps: (
                        len(ps) == 1
                        and ps[0]["metadata"]["labels"]["ipam.spidernet.io/owner-application-uid"] == uid
                        and len(ps[0]["spec"]["ips"]) >= 1
                        and ps[0]["spec"]["ips"] == ["10.6.0.1-10.6.0.3"]
                    ),
                )
            )
            assert (await auto_pools(store))[0]["metadata"]["name"] == kept["metadata"]["name"]
            await store.create(deployment(1, kind="StatefulSet"))
            await eventually(pool_with(store, lambda ps: len(ps) == 2))
            names = {
                p["metadata"]["labels"]["ipam.spidernet.io/owner-application-kind"] for p in await auto_pools(store)
            }
            assert names == {"Deployment", "StatefulSet"}


async def test_a_subnet_too_small_creates_no_pool_until_it_has_room(private_store: Store) -> None:
    store = private_store
    await seed_subnet(store)
    with trio.fail_after(TIMEOUT):
        async with controlling(store) as controller:
            await store.create(deployment(2, number="20"))
            await eventually(lambda: _true(controller.stats.failures > 0))
            assert await auto_pools(store) == []
            app = await store.get("Deployment", "web", "default")
            meta = app["spec"]["template"]["metadata"]
            meta["annotations"]["ipam.spidernet.io/ippool-ip-number"] = "5"
            await store.update(app)
            await eventually(
                pool_with(store, lambda ps: len(ps) == 1 and ps[0]["spec"]["ips"] == ["10.6.0.1-10.6.0.5"])
            )


@pytest.mark.parametrize("unlistable", [set(), {"CronJob"}], ids=["every kind listed", "a kind unlistable"])
async def test_a_manual_pool_inside_a_subnet_is_adopted(private_store: Store, unlistable: set[str]) -> None:
    store = FailingLists(private_store, always=unlistable)
    await seed_subnet(store)
    with trio.fail_after(TIMEOUT):
        async with controlling(store, listed=not unlistable):
            await store.create(
                {
                    "apiVersion": "spiderpool.spidernet.io/v2beta1",
                    "kind": "SpiderIPPool",
                    "metadata": {"name": "manual"},
                    "spec": {"ipVersion": 4, "subnet": "10.6.0.0/24", "ips": ["10.6.0.9"]},
                }
            )

            async def adopted() -> bool:
                try:
                    pool = await store.get("SpiderIPPool", "manual")
                except NotFound:
                    return False
                refs = pool["metadata"].get("ownerReferences") or []
                return (
                    any(r.get("kind") == "SpiderSubnet" for r in refs) and pool["spec"].get("gateway") == "10.6.0.254"
                )

            await eventually(adopted)


async def _true(value: bool) -> bool:
    return value


async def test_i00022_dirty_subnet_records_of_gone_pools_and_applications_are_recycled(private_store: Store) -> None:
    store = private_store
    await seed_subnet(store)
    stored = await store.get("SpiderSubnet", "s4")
    dirty = {"auto4-old-eth0-12345": {"ips": ["10.6.0.1-10.6.0.3"], "application": "apps_v1_Deployment_default_old"}}
    await store.update_status({**stored, "status": {"controlledIPPools": json.dumps(dirty)}})
    with trio.fail_after(TIMEOUT):
        async with controlling(store):

            async def recycled() -> bool:
                return controlled(await store.get("SpiderSubnet", "s4")) == {}

            await eventually(recycled)
            await store.create(deployment(1))
            await eventually(pool_with(store, lambda ps: len(ps) == 1 and ps[0]["spec"]["ips"] == ["10.6.0.1"]))


async def test_i00019_turning_reclaim_on_makes_a_kept_pool_go_with_its_application(private_store: Store) -> None:
    store = private_store
    await seed_subnet(store)
    with trio.fail_after(TIMEOUT):
        async with controlling(store):
            app = await store.create(deployment(1, reclaim=False))
            await eventually(
                pool_with(store, lambda ps: len(ps) == 1 and ps[0]["metadata"]["labels"][LABEL_RECLAIM] == "false")
            )
            app = await store.get("Deployment", "web", "default")
            del app["spec"]["template"]["metadata"]["annotations"]["ipam.spidernet.io/ippool-reclaim"]
            await store.update(app)
            await eventually(pool_with(store, lambda ps: ps[0]["metadata"]["labels"][LABEL_RECLAIM] == "true"))
            await store.delete("Deployment", "web", "default")
            await eventually(pool_with(store, lambda ps: ps == []))


VM_APP = "kubevirt.io_v1_VirtualMachine_default_vm1"


async def record_entry(store: Store, pool: str, application: str, claimed_at: str | None) -> None:
    entry: dict[str, Any] = {"ips": ["10.6.0.1-10.6.0.2"], "application": application}
    if claimed_at is not None:
        entry["claimedAt"] = claimed_at
    stored = await store.get("SpiderSubnet", "s4")
    await store.update_status({**stored, "status": {"controlledIPPools": json.dumps({pool: entry})}})


async def sweeps(controller: ApplicationController, count: int) -> None:
    start = controller.stats.syncs

    async def done() -> bool:
        return controller.stats.syncs >= start + count

    await eventually(done, what=f"{count} more syncs")


async def test_a_third_party_entry_without_its_pool_is_forgotten_only_once_older_than_the_claim_window(
    private_store: Store,
) -> None:
    store = private_store
    await seed_subnet(store)
    now = [1_800_000_000.0]
    await record_entry(store, "auto4-vm1-eth0-abcde", VM_APP, rfc3339(now[0]))  # NB: an agent's, pool not made yet
    settings = ApplicationSettings(resync_period=0.1, claim_window=60)
    with trio.fail_after(TIMEOUT):
        async with controlling(store, settings=settings, clock=lambda: now[0]) as controller:
            await sweeps(controller, 6)
            assert "auto4-vm1-eth0-abcde" in controlled(await store.get("SpiderSubnet", "s4"))
            now[0] += 61

            async def forgotten() -> bool:
                return controlled(await store.get("SpiderSubnet", "s4")) == {}

            await eventually(forgotten)


async def test_a_third_party_entry_without_claimed_at_is_timed_from_when_the_controller_first_saw_it(
    private_store: Store,
) -> None:
    store = private_store
    await seed_subnet(store)
    now = [1_800_000_000.0]
    await record_entry(store, "auto4-vm1-eth0-abcde", VM_APP, None)
    settings = ApplicationSettings(resync_period=0.1, claim_window=60)
    with trio.fail_after(TIMEOUT):
        async with controlling(store, settings=settings, clock=lambda: now[0]) as controller:
            await sweeps(controller, 6)
            now[0] += 59
            await sweeps(controller, 6)
            assert "auto4-vm1-eth0-abcde" in controlled(await store.get("SpiderSubnet", "s4"))
            now[0] += 2

            async def forgotten() -> bool:
                return controlled(await store.get("SpiderSubnet", "s4")) == {}

            await eventually(forgotten)


async def test_a_deleted_event_seen_after_a_same_named_pool_was_made_again_keeps_its_entry(
    private_store: Store,
) -> None:
    store = private_store
    await seed_subnet(store)
    with trio.fail_after(TIMEOUT):
        async with controlling(store) as controller:
            await store.create(deployment(1))
            await eventually(pool_with(store, lambda ps: len(ps) == 1))
            (pool,) = await auto_pools(store)
            name = pool["metadata"]["name"]
            controller._cache["SpiderIPPool"].pop(("", name), None)  # NB: the DELETED of an older pool, late
            await controller._sync_pool(name)
            assert name in controlled(await store.get("SpiderSubnet", "s4"))


def virtual_machine(name: str) -> Obj:
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": "default"},
    }


async def vm_pool(
    store: Store, vm: str, uid: str, ip: str, *, reclaim: bool = True, kind: str = "VirtualMachine"
) -> str:
    api = "kubevirt.io/v1" if kind == "VirtualMachine" else "apps.kruise.io/v1alpha1"
    app = AppRef(api, kind, "default", vm, uid)
    body = auto_pool_object(app, "eth0", 4, await store.get("SpiderSubnet", "s4"), [ip], "1", reclaim)
    return str((await store.create(body))["metadata"]["name"])


async def test_a_third_party_applications_reclaim_pool_goes_when_its_owner_is_gone_or_another(
    private_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    store = private_store
    await seed_subnet(store)
    vm1 = await store.create(virtual_machine("vm1"))
    await store.create(virtual_machine("vm3"))
    mine = await vm_pool(store, "vm1", vm1["metadata"]["uid"], "10.6.0.1")
    stale = await vm_pool(store, "vm3", "uid-of-an-older-vm3", "10.6.0.2")
    retained = await vm_pool(store, "vm2", "uid-vm2", "10.6.0.3", reclaim=False)
    unknown = await vm_pool(store, "cs1", "uid-cs1", "10.6.0.4", kind="CloneSet")
    settings = ApplicationSettings(resync_period=0.1)

    async def names() -> set[str]:
        return {p["metadata"]["name"] for p in (await store.list("SpiderIPPool")).items}

    with trio.fail_after(TIMEOUT):
        async with controlling(store, settings=settings) as controller:

            async def stale_gone() -> bool:
                return stale not in await names()

            await eventually(stale_gone)
            await sweeps(controller, 6)
            assert await names() == {mine, retained, unknown}
            await store.delete("VirtualMachine", "vm1", "default")

            async def mine_gone() -> bool:
                return await names() == {retained, unknown}

            await eventually(mine_gone)
    unserved = [r for r in caplog.records if "CloneSet" in r.getMessage()]
    assert len(unserved) == 1


@attrs.define
class FailingReclaimLists(PassThrough):
    """The first ``failures`` lists of reclaim pools by application (``_reclaim``'s) fail as an unreachable
    server's would."""

    inner: Store
    failures: int = 1

    async def list(
        self, kind: str, *, namespace: str | None = None, label_selector: str = "", field_selector: str = ""
    ) -> ObjectList:
        if kind == "SpiderIPPool" and LABEL_RECLAIM in label_selector and self.failures > 0:
            self.failures -= 1
            raise StoreUnavailable(reason="connection refused")
        return await self.inner.list(
            kind, namespace=namespace, label_selector=label_selector, field_selector=field_selector
        )


async def test_a_reclaim_that_fails_once_is_retried_while_a_pod_still_holds_an_address(private_store: Store) -> None:
    """``web`` goes while an old pod still holds an address in its pool, so only the application's own reclaim
    deletes the pool (the sweep leaves a pool with addresses): the reclaim's first read fails, and it once
    forgot the application then, so the pool stayed forever."""
    with trio.fail_after(TIMEOUT):
        old = await web_with_its_pool(private_store, 2)

        name = old["metadata"]["name"]
        await rewrite(private_store, name, a_pod_holds_an_address, status=True)
        store = FailingReclaimLists(private_store)
        async with controlling(store, settings=ApplicationSettings(resync_period=0.2)) as controller:
            await store.delete("Deployment", "web", "default")
            await eventually(lambda: _true(store.failures == 0 and controller.stats.failures > 0))

            async def going() -> bool:
                return bool((await private_store.get("SpiderIPPool", name))["metadata"].get("deletionTimestamp"))

            await eventually(going, what="the pool deleted (it goes once its last address is released)")


@attrs.define
class BusyWorker(PassThrough):
    """The worker's read of the pools of application ``busy`` waits for ``go``: the worker is held busy."""

    inner: Store
    go: trio.Event = attrs.Factory(trio.Event)
    held: trio.Event = attrs.Factory(trio.Event)

    async def list(
        self, kind: str, *, namespace: str | None = None, label_selector: str = "", field_selector: str = ""
    ) -> ObjectList:
        if kind == "SpiderIPPool" and "owner-application-name=busy" in label_selector and not self.go.is_set():
            self.held.set()
            await self.go.wait()
        return await self.inner.list(
            kind, namespace=namespace, label_selector=label_selector, field_selector=field_selector
        )


async def test_an_application_made_again_before_the_worker_saw_it_go_has_its_old_reclaim_pool_deleted(
    private_store: Store,
) -> None:
    """``web`` is deleted and made again (a new UID) while the worker is busy, so both events are one key in its
    queue: the old ``web``'s reclaim pool is deleted all the same (Spiderpool deletes it on the deletion), though
    a pod still holds an address in it (so the sweep leaves it)."""
    await seed_subnet(private_store)
    store = BusyWorker(private_store)
    with trio.fail_after(TIMEOUT):
        async with controlling(store) as controller:
            await store.create(deployment(2))
            await eventually(pool_with(store, lambda ps: len(ps) == 1))
            old = (await auto_pools(store))[0]["metadata"]["name"]
            await rewrite(store, old, a_pod_holds_an_address, status=True)
            await store.create({**deployment(1), "metadata": {"name": "busy", "namespace": "default"}})
            await store.held.wait()
            await store.delete("Deployment", "web", "default")
            uid = (await store.create(deployment(2)))["metadata"]["uid"]

            async def made_again() -> bool:
                cached = controller._cache["Deployment"].get(("default", "web"))
                return cached is not None and cached["metadata"]["uid"] == uid

            await eventually(made_again, what="the controller saw web made again")
            store.go.set()
            await eventually(pool_with(store, lambda ps: len(ps) == 2), what="the new web's pool")
            deleting = has(store, "SpiderIPPool", old, lambda pool: bool(pool["metadata"].get("deletionTimestamp")))
            await eventually(deleting, what="the old web's reclaim pool deleted")


async def test_a_relist_that_finds_an_application_made_again_unseen_takes_it_for_the_old_ones_deletion(
    private_store: Store,
) -> None:
    old = await private_store.create(deployment(2))
    await private_store.delete("Deployment", "web", "default")
    new = await private_store.create(deployment(2))
    async with trio.open_nursery() as nursery:
        controller = ApplicationController(private_store, SubnetRegistry(private_store, Supervisor(nursery)))
        controller._cache = {kind: {} for kind in controller.kinds}
        controller._on_list("Deployment", [old])
        controller._on_list("Deployment", [new])  # NB: the watch was down meanwhile
        assert list(controller._gone[("Deployment", "default", "web")]) == [old["metadata"]["uid"]]


def x_name(app: AppRef) -> str:
    return auto_pool_name(app, "eth0", 4)


@attrs.define
class HeldPoolWrites(PassThrough):
    """Holds the first SpiderIPPool spec update until ``go`` is set: a deposed leader paused mid-resize."""

    inner: Store
    go: trio.Event = attrs.Factory(trio.Event)
    held: trio.Event = attrs.Factory(trio.Event)

    async def update(self, obj: Obj) -> Obj:
        if obj.get("kind") == "SpiderIPPool" and not self.go.is_set():
            self.held.set()
            await self.go.wait()
        return await self.inner.update(obj)


async def sized(controller: ApplicationController, app: AppRef, claim: SubnetClaim, replicas: int) -> None:
    """``_size``, again on ``Conflict`` as the work queue retries it (the reconciler writes the pool too)."""
    while True:
        with contextlib.suppress(Conflict):
            return await controller._size(app, claim, 4, replicas)
        await trio.sleep(0.01)


@pytest.mark.parametrize("paused", ["before admission", "after admission"])
async def test_a_deposed_leaders_late_resize_never_puts_an_address_in_two_pools(
    private_store: Store, paused: str
) -> None:
    """The old leader (its cache says 5 replicas) claims two more addresses for pool X and is paused before its
    write of X lands; the new leader (3 replicas) sizes X at its 3 addresses again, and another application
    claims two addresses.  Were the new leader to trim X's subnet entry back to 3, the other pool would take
    the two and the old leader's write of X (guarded by X's own version only) would put them in two pools.  The
    trim waits while the claim is younger than the claim window (the reconciler, which the leader runs too,
    keeps the entry's ``claimedAt``), so the other pool gets other addresses, and a write paused before
    admission is refused anyway when the entry no longer covers it."""
    store = private_store
    await seed_subnet(store)
    app = AppRef.from_object(await store.create(deployment(3)))
    claim = SubnetClaim("eth0", ("s4",))
    sub = await store.get("SpiderSubnet", "s4")
    with trio.fail_after(TIMEOUT):
        async with reconciling(store) as reconciler, trio.open_nursery() as nursery:
            writes = HeldPoolWrites(ValidatingStore(store)) if paused == "before admission" else HeldPoolWrites(store)
            old_store = writes if paused == "before admission" else ValidatingStore(writes)
            old = ApplicationController(old_store, SubnetRegistry(store, Supervisor(nursery)))
            new = ApplicationController(ValidatingStore(store), SubnetRegistry(store, Supervisor(nursery)))
            for leader in (old, new):
                leader._cache = {"SpiderSubnet": {("", "s4"): sub}}
            await sized(new, app, claim, 3)

            async def x_counted() -> bool:  # NB: the reconciler's writes of X land before the old leader reads X
                pool = await store.get("SpiderIPPool", x_name(app))
                return (pool.get("status") or {}).get("totalIPCount") == 3 and reconciler.idle

            await eventually(x_counted, what="X reconciled")
            done = trio.Event()

            async def late_resize() -> None:
                with contextlib.suppress(Invalid):
                    await old._size(app, claim, 4, 5)
                done.set()

            nursery.start_soon(late_resize)
            await writes.held.wait()

            async def claim_reconciled() -> bool:  # NB: the reconciler has seen the old leader's claim of 5
                entries = [controlled(s).get(x_name(app)) or {} for s in reconciler.cached("SpiderSubnet")]
                return reconciler.idle and [IPSet.parse(4, e.get("ips") or []).count for e in entries] == [5]

            await eventually(claim_reconciled, what="the reconciler done with the old leader's claim")
            await sized(new, app, claim, 3)
            other = AppRef("apps/v1", "Deployment", "default", "api", "0000-11111")
            got = await new.subnets.get("s4").claim("auto4-api-eth0-11111", other.application, 2, IPSet(4))
            await store.create(auto_pool_object(other, "eth0", 4, sub, got.to_strings(), "2", True))
            writes.go.set()
            await done.wait()
            nursery.cancel_scope.cancel(reason="test over")
    pools = {p["metadata"]["name"]: IPSet.parse(4, p["spec"]["ips"]) for p in (await store.list("SpiderIPPool")).items}
    x, y = pools.pop(x_name(app)), pools.pop("auto4-api-eth0-11111")
    assert not x.intersection(y), "no address in two pools"
    entries = controlled(await store.get("SpiderSubnet", "s4"))
    assert x.issubset(IPSet.parse(4, entries[x_name(app)]["ips"])), "X holds only what the subnet records for it"


async def test_the_entry_of_a_pool_gone_unseen_is_forgotten_though_an_application_of_its_name_exists(
    private_store: Store,
) -> None:
    """Application ``web`` and its pool go while no controller watches (a failover); ``web`` is made again (a
    new UID).  The subnet's entry for the old pool names an application that exists, but not that one: it is
    forgotten, and its addresses go back to the subnet."""
    store = private_store
    with trio.fail_after(TIMEOUT):
        old = await web_with_its_pool(store, 3)
        name = old["metadata"]["name"]
        await store.delete("Deployment", "web", "default")
        await rewrite(store, name, lambda pool: {**pool, "metadata": {**pool["metadata"], "finalizers": []}})
        await store.delete("SpiderIPPool", name)
        await store.create(deployment(3))
        async with controlling(store, settings=ApplicationSettings(resync_period=0.2)):

            async def forgotten() -> bool:
                return name not in controlled(await store.get("SpiderSubnet", "s4"))

            await eventually(forgotten, what="the gone pool's entry forgotten")
            await eventually(pool_with(store, lambda pools: len(pools) == 1 and pools[0]["metadata"]["name"] != name))


@attrs.define
class FailingLists(PassThrough):
    """Lists of ``always`` fail for good (a kind the cluster will not list)."""

    inner: Store
    always: set[str] = attrs.Factory(set)

    async def list(
        self, kind: str, *, namespace: str | None = None, label_selector: str = "", field_selector: str = ""
    ) -> ObjectList:
        if kind in self.always:
            raise StoreUnavailable(reason=f"{kind}: forbidden")
        return await self.inner.list(
            kind, namespace=namespace, label_selector=label_selector, field_selector=field_selector
        )


async def test_a_kind_the_cluster_will_not_list_holds_up_neither_the_others_pools_nor_their_reclaim(
    private_store: Store,
) -> None:
    await seed_subnet(private_store)
    store = FailingLists(private_store, always={"CronJob"})
    with trio.fail_after(TIMEOUT):
        async with controlling(store, listed=False):
            await store.create(deployment(2))
            await eventually(pool_with(store, lambda ps: len(ps) == 1))
            await store.delete("Deployment", "web", "default")
            await eventually(pool_with(store, lambda ps: ps == []))

            async def forgotten() -> bool:
                return controlled(await store.get("SpiderSubnet", "s4")) == {}

            await eventually(forgotten, what="the deleted pool's subnet entry forgotten")
