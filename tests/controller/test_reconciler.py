"""The controller's pool and subnet upkeep: counts, finalizers, drained deletion; no fight with the agents."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio

from actors.controller import reconciler as reconciler_module
from actors.controller.reconciler import PoolReconciler
from actors.ipam.pool import open_pool
from actors.stores.port import NotFound, Obj, ObjectList, Store
from spider.errors import StoreUnavailable
from spider.kinds import FINALIZER
from spider.pool import Owner
from tests.controller.support import FaultyStore, eventually, pool, reserved, subnet

TIMEOUT = 20


@asynccontextmanager
async def reconciling(store: Store, resync: float = 300.0) -> AsyncIterator[PoolReconciler]:
    """A reconciler running on ``store`` for the body of the block."""
    reconciler = PoolReconciler(store, resync_period=resync)
    async with trio.open_nursery() as nursery:
        await nursery.start(reconciler.run)
        yield reconciler
        nursery.cancel_scope.cancel(reason="test over")


def has(store: Store, kind: str, name: str, test: Callable[[Obj], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        try:
            return test(await store.get(kind, name))
        except NotFound:
            return False

    return check


def gone(store: Store, kind: str, name: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        try:
            await store.get(kind, name)
        except NotFound:
            return True
        return False

    return check


def status(obj: Obj) -> dict[str, Any]:
    result: dict[str, Any] = obj.get("status") or {}
    return result


def counted(obj: Obj) -> bool:
    return "totalIPCount" in status(obj)


async def settle(reconciler: PoolReconciler, quiet: float = 0.3) -> None:
    """Wait until the reconciler's queue stays empty for ``quiet`` seconds (its watches included); only for
    reconcilers whose resync period is longer than that."""
    while True:
        await eventually(lambda: _idle(reconciler))
        before = reconciler.stats.reconciles
        await trio.sleep(quiet)
        if reconciler.idle and reconciler.stats.reconciles == before:
            return


async def _idle(reconciler: PoolReconciler) -> bool:
    return reconciler.idle


async def test_a_new_pool_gets_its_counts_and_the_finalizer(private_store: Store) -> None:
    store = private_store
    with trio.fail_after(TIMEOUT):
        async with reconciling(store):
            await store.create(pool("p1", ips=["10.6.0.10-10.6.0.20"], gateway="10.6.0.10"))
            await eventually(has(store, "SpiderIPPool", "p1", counted))
            obj = await store.get("SpiderIPPool", "p1")
            assert obj["metadata"]["finalizers"] == [FINALIZER]
            # total: ips - excludeIPs (11); free: the gateway is never handed out
            assert status(obj) == {"allocatedIPCount": 0, "totalIPCount": 11, "freeIPCount": 10}


async def test_counts_follow_reservations_and_stay_spiderpools_total(private_store: Store) -> None:
    store = private_store
    with trio.fail_after(TIMEOUT):
        async with reconciling(store):
            await store.create(pool("p1", ips=["10.6.0.10-10.6.0.20"]))
            await eventually(has(store, "SpiderIPPool", "p1", counted))
            await store.create(reserved("r1", ["10.6.0.11-10.6.0.12", "10.6.1.1"]))
            await eventually(has(store, "SpiderIPPool", "p1", lambda o: status(o).get("freeIPCount") == 9))
            assert status(await store.get("SpiderIPPool", "p1"))["totalIPCount"] == 11  # reserved not subtracted
            await store.delete("SpiderReservedIP", "r1")
            await eventually(has(store, "SpiderIPPool", "p1", lambda o: status(o).get("freeIPCount") == 11))


async def test_a_wrong_allocated_count_is_corrected_without_touching_the_records(private_store: Store) -> None:
    store = private_store
    records = json.dumps(
        {"10.6.0.12": {"pod": "default/a", "podUid": "u-a"}, "10.6.0.10": {"pod": "x/b", "podUid": "u-b"}}
    )
    with trio.fail_after(TIMEOUT):
        created = await store.create(pool("p1"))
        # as a crashed or foreign writer might leave it: records and counts disagree, odd key order
        await store.update_status({**created, "status": {"allocatedIPs": records, "allocatedIPCount": 7}})
        async with reconciling(store):
            await eventually(has(store, "SpiderIPPool", "p1", lambda o: status(o).get("allocatedIPCount") == 2))
            got = status(await store.get("SpiderIPPool", "p1"))
            assert got["allocatedIPs"] == records  # byte for byte: never re-encoded, never dropped
            assert got["freeIPCount"] == 9
            assert got["totalIPCount"] == 11


async def test_counts_stay_right_for_pools_whose_ledgers_were_dropped_and_for_those_kept(
    private_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reconciler_module, "KEPT_LEDGERS", 2)
    store = private_store
    names = [f"p{i}" for i in range(4)]
    with trio.fail_after(TIMEOUT):
        async with reconciling(store) as reconciler:
            for name in names:
                await store.create(pool(name, ips=["10.6.0.10-10.6.0.20"]))
            for name in names:
                await eventually(has(store, "SpiderIPPool", name, counted))
            for held, name in enumerate(names, start=1):  # a foreign writer's records, with wrong counts
                stored = await store.get("SpiderIPPool", name)
                records = {f"10.6.0.{10 + i}": {"pod": f"default/{name}-{i}", "podUid": f"u-{i}"} for i in range(held)}
                await store.update_status({**stored, "status": {**status(stored), "allocatedIPs": json.dumps(records)}})
            for held, name in enumerate(names, start=1):
                await eventually(has(store, "SpiderIPPool", name, lambda o, n=held: status(o)["allocatedIPCount"] == n))
            await settle(reconciler)
            assert len(reconciler._ledgers) == 2
            for name in names:
                assert status(await store.get("SpiderIPPool", name))["freeIPCount"] == 11 - int(name[1:]) - 1


async def test_a_deleted_pool_without_allocations_goes_away(private_store: Store) -> None:
    store = private_store
    with trio.fail_after(TIMEOUT):
        async with reconciling(store):
            await store.create(pool("p1"))
            await eventually(has(store, "SpiderIPPool", "p1", lambda o: bool(o["metadata"].get("finalizers"))))
            await store.delete("SpiderIPPool", "p1")
            await eventually(gone(store, "SpiderIPPool", "p1"))


async def test_a_deleted_pool_with_allocations_stays_terminating_until_drained(private_store: Store) -> None:
    store = private_store
    with trio.fail_after(TIMEOUT):
        async with reconciling(store, resync=0.3), trio.open_nursery() as nursery:
            await store.create(pool("p1"))
            await eventually(has(store, "SpiderIPPool", "p1", lambda o: bool(o["metadata"].get("finalizers"))))
            handle, actor = open_pool("p1", store)
            await nursery.start(actor.run)
            owners = [Owner(pod_uid=f"u{i}", nic="eth0", namespace="default", name=f"pod{i}") for i in range(2)]
            for owner in owners:
                await handle.allocate(owner)
            await store.delete("SpiderIPPool", "p1")
            await trio.sleep(1.0)  # several resyncs: it must stay
            obj = await store.get("SpiderIPPool", "p1")
            assert obj["metadata"].get("deletionTimestamp")
            assert obj["metadata"]["finalizers"] == [FINALIZER]
            assert status(obj)["allocatedIPCount"] == 2
            await handle.release(owners[0].key)
            await trio.sleep(0.5)
            assert (await store.get("SpiderIPPool", "p1"))["metadata"]["finalizers"] == [FINALIZER]
            await handle.release(owners[1].key)  # the last record goes: so does the pool
            await eventually(gone(store, "SpiderIPPool", "p1"))
            nursery.cancel_scope.cancel(reason="test over")


async def test_the_controller_does_not_fight_the_pool_actors_group_commit(private_store: Store) -> None:
    store = private_store
    with trio.fail_after(TIMEOUT):
        async with reconciling(store) as reconciler, trio.open_nursery() as nursery:
            await store.create(pool("p1", ips=["10.6.0.1-10.6.0.200"]))
            await eventually(has(store, "SpiderIPPool", "p1", counted))
            await settle(reconciler)
            writes = reconciler.stats.status_writes + reconciler.stats.finalizer_writes
            handle, actor = open_pool("p1", store)
            await nursery.start(actor.run)
            owners = [Owner(pod_uid=f"u{i}", nic="eth0", namespace="default", name=f"pod{i}") for i in range(60)]
            async with trio.open_nursery() as burst:
                for owner in owners:
                    burst.start_soon(handle.allocate, owner)
            async with trio.open_nursery() as burst:
                for owner in owners[:20]:
                    burst.start_soon(handle.release, owner.key)
            await settle(reconciler)
            assert reconciler.stats.status_writes + reconciler.stats.finalizer_writes == writes  # agreed every time
            assert actor.stats.conflicts == 0  # and never made the actor re-read and retry
            got = status(await store.get("SpiderIPPool", "p1"))
            assert got["allocatedIPCount"] == len(json.loads(got["allocatedIPs"])) == 40
            assert got["freeIPCount"] == 200 - 40
            nursery.cancel_scope.cancel(reason="test over")


async def test_nothing_is_written_when_everything_already_agrees(private_store: Store) -> None:
    store = private_store
    with trio.fail_after(TIMEOUT):
        async with reconciling(store, resync=0.2) as reconciler:
            await store.create(pool("p1"))
            await store.create(subnet("s1"))
            await eventually(has(store, "SpiderIPPool", "p1", counted))
            await eventually(has(store, "SpiderSubnet", "s1", counted))
            await trio.sleep(0.5)  # its own writes come back through the watch; let them
            versions = [(await store.get(k, n))["metadata"]["resourceVersion"] for k, n in SOME]
            writes = reconciler.stats.status_writes, reconciler.stats.finalizer_writes
            lists = reconciler.stats.lists
            await trio.sleep(0.8)  # several full resyncs
            assert reconciler.stats.lists >= lists + 3
            assert [(await store.get(k, n))["metadata"]["resourceVersion"] for k, n in SOME] == versions
            assert (reconciler.stats.status_writes, reconciler.stats.finalizer_writes) == writes


SOME = (("SpiderIPPool", "p1"), ("SpiderSubnet", "s1"))


async def test_a_conflicting_write_is_retried(private_store: Store) -> None:
    faulty = FaultyStore(private_store, conflicts=3)
    with trio.fail_after(TIMEOUT):
        async with reconciling(faulty) as reconciler:
            await private_store.create(pool("p1"))
            await eventually(has(private_store, "SpiderIPPool", "p1", counted))
            assert reconciler.stats.conflicts == 3


async def test_a_watch_too_old_to_resume_is_followed_by_a_fresh_list(private_store: Store) -> None:
    faulty = FaultyStore(private_store, gone=3)
    with trio.fail_after(TIMEOUT):
        async with reconciling(faulty) as reconciler:
            await eventually(lambda: _true(lambda: faulty.gone == 0))
            await private_store.create(pool("p1"))
            await eventually(has(private_store, "SpiderIPPool", "p1", counted))
            assert reconciler.stats.lists >= 6  # three first lists, three re-lists after Gone


async def test_the_periodic_resync_repairs_what_a_watch_missed(private_store: Store) -> None:
    faulty = FaultyStore(private_store, deaf=True)
    with trio.fail_after(TIMEOUT):
        async with reconciling(faulty, resync=0.3):
            await private_store.create(pool("p1"))
            took = await eventually(has(private_store, "SpiderIPPool", "p1", counted))
            assert took <= 0.3 + 0.5


async def test_a_pool_with_an_unusable_spec_gets_its_finalizer_but_no_counts(private_store: Store) -> None:
    store = private_store
    with trio.fail_after(TIMEOUT):
        async with reconciling(store) as reconciler:
            await store.create(pool("bad", subnet="10.6.0.0/16", ips=["10.7.0.1"]))  # ips outside the subnet
            await store.create(pool("good"))
            await eventually(has(store, "SpiderIPPool", "good", counted))
            await settle(reconciler)
            bad = await store.get("SpiderIPPool", "bad")
            assert bad["metadata"]["finalizers"] == [FINALIZER]
            assert "totalIPCount" not in status(bad)
            await store.delete("SpiderIPPool", "bad")  # and it can still be deleted
            await eventually(gone(store, "SpiderIPPool", "bad"))


async def test_a_subnet_counts_the_addresses_of_the_pools_with_its_subnet(private_store: Store) -> None:
    store = private_store
    with trio.fail_after(TIMEOUT):
        async with reconciling(store):
            await store.create(subnet("s1", ips=["10.6.0.1-10.6.0.100"], excludeIPs=["10.6.0.50"]))
            await store.create(pool("a", ips=["10.6.0.10-10.6.0.20"]))
            await store.create(pool("b", ips=["10.6.0.45-10.6.0.55", "10.6.0.200"]))
            await store.create(pool("other", subnet="10.9.0.0/16", ips=["10.9.0.1-10.9.0.9"]))

            def controlled(obj: Obj) -> bool:
                return status(obj).get("allocatedIPCount") == 11 + 10

            await eventually(has(store, "SpiderSubnet", "s1", controlled))
            got = status(await store.get("SpiderSubnet", "s1"))
            assert got["totalIPCount"] == 99
            assert json.loads(got["controlledIPPools"]) == {
                "a": {"ips": ["10.6.0.10-10.6.0.20"]},
                "b": {"ips": ["10.6.0.45-10.6.0.49", "10.6.0.51-10.6.0.55"]},  # only what the subnet can give
            }
            await store.delete("SpiderIPPool", "a")
            await store.delete("SpiderIPPool", "b")
            await eventually(has(store, "SpiderSubnet", "s1", lambda o: status(o).get("allocatedIPCount") == 0))
            assert "controlledIPPools" not in status(await store.get("SpiderSubnet", "s1"))


async def _true(condition: Callable[[], bool]) -> bool:
    return condition()


@attrs.define(eq=False)
class WithoutCrd(FaultyStore):
    """A store that does not serve one kind (its CRD not installed) until ``install()``."""

    missing: str = ""

    async def list(
        self, kind: str, *, namespace: str | None = None, label_selector: str = "", field_selector: str = ""
    ) -> ObjectList:
        if kind == self.missing:
            raise StoreUnavailable(reason=f"the server does not serve {kind} (is its CRD installed?)")
        return await super().list(
            kind, namespace=namespace, label_selector=label_selector, field_selector=field_selector
        )

    def install(self) -> None:
        self.missing = ""


async def test_a_kind_that_cannot_be_listed_holds_back_only_what_needs_it(private_store: Store) -> None:
    store = WithoutCrd(private_store, missing="SpiderSubnet")
    reconciler = PoolReconciler(store)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reconciler.run)
            await store.create(subnet("s1", ips=["10.6.0.1-10.6.0.100"]))
            await store.create(pool("p1", ips=["10.6.0.10-10.6.0.20"]))
            await eventually(has(store, "SpiderIPPool", "p1", counted))  # pools go on without subnets
            assert not reconciler.synced
            assert "totalIPCount" not in status(await store.get("SpiderSubnet", "s1"))
            store.install()
            await eventually(has(store, "SpiderSubnet", "s1", lambda o: status(o).get("allocatedIPCount") == 11))
            assert reconciler.synced
            nursery.cancel_scope.cancel(reason="test over")
