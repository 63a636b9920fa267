"""Reclaim and ADDs in flight (issue 16, finding 1): ``spider check --reclaim`` frees pool records no endpoint
accounts for, and an ADD writes its records first and its endpoint only after every NIC and family is done.
Records carry the start of their ADD (``addedAt``); reclaim leaves them alone for ``RECLAIM_AFTER``; an ADD
answers only within ``ADD_WINDOW`` and only addresses its pools still record as the pod's.

Most tests run on trio's autojump clock over ``MemoryStore`` (no worker threads), with the wall clock of the
records tied to it, so a seven-second write takes no time and every schedule is the one written down.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.ipam.check import Report, check_store
from actors.ipam.pool import open_pool
from actors.ipam.service import IpamService, IpamSettings, NicResult, PoolRegistry
from actors.runtime.supervisor import Supervisor
from actors.stores.port import Store
from actors.stores.retrying import DEFAULT_OUTAGE_BUDGET
from actors.stores.sqlite import SqliteStore
from spider.addr import int_to_ip
from spider.endpoint import KIND as ENDPOINT
from spider.errors import AddAbandoned, SpiderError
from spider.ipam_request import AddRequest, DelRequest
from spider.pool import ADD_WINDOW, CLOCK_SKEW, RECLAIM_AFTER, Owner, PoolLedger, Record
from spider.pool import KIND as POOL
from spider.subnet import rfc3339
from tests.ipam.memory_store import MemoryStore, SlowWrites, delays
from tests.support import pool_object

V4 = pool_object("v4", "10.30.0.0/24", ["10.30.0.10-10.30.0.19"])
V6 = pool_object("v6", "fd30::/64", ["fd30::10-fd30::19"])
EPOCH = 1_700_000_000.0
TIMEOUT = 3600  # virtual seconds under the autojump clock; real ones otherwise


def wall() -> float:
    """The records' wall clock, tied to trio's (virtual) clock."""
    return EPOCH + trio.current_time()


async def seeded(store: Store) -> Store:
    await store.create(V4)
    await store.create(V6)
    return store


def service(nursery: trio.Nursery, store: Store) -> IpamService:
    return IpamService(store, PoolRegistry(store, Supervisor(nursery)), "node-1", IpamSettings(), clock=wall)


def add(name: str, *, dual: bool = True) -> AddRequest:
    return AddRequest(
        f"ctr-{name}", "eth0", "/var/run/netns/x", "default", name, f"uid-{name}", ("v4",), ("v6",) if dual else ()
    )


def answered(results: list[NicResult]) -> list[str]:
    return [a.address for r in results for a in r.allocations]


async def holders(store: Store, pool: str) -> dict[str, str]:
    """``{address: pod UID}`` of a pool as stored."""
    ledger = PoolLedger.from_object(await store.get(POOL, pool))
    return {int_to_ip(ip, ledger.pool.version): r.pod_uid for ip, r in ledger.records.items()}


async def leak(store: Store, pool: str, ip: int, record: Record) -> None:
    """Write a record no endpoint accounts for (as an agent killed between its two writes leaves one)."""
    obj = await store.get(POOL, pool)
    ledger = PoolLedger.from_object(obj)
    ledger.records[ip] = record
    await store.update_status({**obj, "status": PoolLedger(ledger.pool, ledger.records).to_status()})


def test_the_add_window_covers_the_budgets_an_add_spends_after_it_starts() -> None:
    conflicts = open_pool("p", MemoryStore())[1].conflict_budget
    endpoint = IpamSettings().endpoint_budget
    # a pool write and an endpoint write may each ride out a store outage on top of their own budgets
    assert conflicts + endpoint + 2 * DEFAULT_OUTAGE_BUDGET <= ADD_WINDOW
    assert 2 * ADD_WINDOW + CLOCK_SKEW <= RECLAIM_AFTER


# --- finding 1, as reported ----------------------------------------------------------------------------------


async def test_a_dual_stack_add_whose_ipv6_write_outlasts_the_grace_keeps_its_ipv4_address_to_itself(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Pod A's IPv6 write takes 7 s; a reclaim with a 5 s grace runs in between and frees a real leak; pod B's ADD
    follows.  A and B get different IPv4 addresses, and both keep them."""
    store = SlowWrites(await seeded(MemoryStore()), delays({"v6": [7.0]}))
    await leak(store, "v4", 0x0A1E000B, Record("default/gone", "uid-gone", "eth0", "ctr-gone", "node-1", 0.0))
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            ipam = service(nursery, store)
            got: dict[str, list[str]] = {}
            reports: list[Report] = []

            async def pod_a() -> None:
                got["a"] = answered(await ipam.allocate(add("a")))

            async with trio.open_nursery() as pods:
                pods.start_soon(pod_a)
                await trio.sleep(1)
                assert "10.30.0.10" in await holders(store, "v4"), "A's IPv4 record is written, its IPv6 is not"
                reports.append(await check_store(store, reclaim=True, grace=5.0, clock=wall))
                assert "a" not in got, "the IPv6 write was meant to outlast the reclaim"
                got["b"] = answered(await ipam.allocate(add("b", dual=False)))
            nursery.cancel_scope.cancel(reason="test over")
    (report,) = reports
    assert [f.ip for f in report.reclaimed] == ["10.30.0.11"], "the real leak is reclaimed"
    assert [f.ip for f in report.left_alone] == ["10.30.0.10"], "A's record, its ADD in flight, is not"
    assert got["a"] == ["10.30.0.10/24", "fd30::10/64"]
    assert got["b"] == ["10.30.0.11/24"]
    assert await holders(store, "v4") == {"10.30.0.10": "uid-a", "10.30.0.11": "uid-b"}
    final = await check_store(store)
    assert final.consistent, final.findings


async def test_reclaim_leaves_a_live_pods_record_alone_and_frees_it_once_the_pod_is_gone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A record no endpoint accounts for, old enough, but whose Pod is stored with its UID and alive: the pod may
    be using the address (an endpoint entry withdrawn by a late ADD of an older sandbox), so reclaim leaves it
    to the pod's DEL, or to itself once the pod is gone.  A record of an older pod of the same name goes."""
    store = await seeded(MemoryStore())
    await trio.sleep(1000)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "live", "namespace": "default"}, "spec": {}}
    uid = (await store.create(pod))["metadata"]["uid"]
    old = wall() - RECLAIM_AFTER - 1
    await leak(store, "v4", 0x0A1E000A, Record("default/live", uid, "eth0", "ctr-l", "node-1", old))
    await leak(store, "v4", 0x0A1E000B, Record("default/live", "uid-of-an-older-live", "eth0", "ctr-o", "node-1", old))
    with trio.fail_after(TIMEOUT):
        first = await check_store(store, reclaim=True, clock=wall)
        assert [f.ip for f in first.held_by_live_pods] == ["10.30.0.10"]
        assert [f.ip for f in first.reclaimed] == ["10.30.0.11"]
        await store.delete("Pod", "live", "default")
        second = await check_store(store, reclaim=True, clock=wall)
    assert [f.ip for f in second.reclaimed] == ["10.30.0.10"]
    assert second.held_by_live_pods == ()
    assert await holders(store, "v4") == {}


async def test_reclaim_leaves_a_terminating_pods_record_alone_until_its_grace_is_over(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Its containers run with the address until then (preStop hooks, a long grace): the GC waits as long."""
    store = await seeded(MemoryStore())
    await trio.sleep(1000)
    meta = {"name": "going", "namespace": "default", "deletionTimestamp": rfc3339(wall() - 10)}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {**meta, "deletionGracePeriodSeconds": 600}, "spec": {}}
    uid = (await store.create(pod))["metadata"]["uid"]
    await leak(store, "v4", 0x0A1E000A, Record("default/going", uid, "eth0", "ctr-g", "node-1", wall() - 3600))
    with trio.fail_after(TIMEOUT):
        first = await check_store(store, reclaim=True, clock=wall)
        assert [f.ip for f in first.held_by_live_pods] == ["10.30.0.10"]
        assert first.reclaimed == ()
        await trio.sleep(600)
        second = await check_store(store, reclaim=True, clock=wall)
    assert [f.ip for f in second.reclaimed] == ["10.30.0.10"]
    assert await holders(store, "v4") == {}


async def test_reclaim_frees_a_stamped_leak_only_once_it_is_older_than_reclaim_after_and_an_unstamped_one_as_before(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = await seeded(MemoryStore())
    await trio.sleep(1000)
    young = Record("default/young", "uid-young", "eth0", "ctr-y", "node-1", wall() - RECLAIM_AFTER + 10)
    old = Record("default/old", "uid-old", "eth0", "ctr-o", "node-1", wall() - RECLAIM_AFTER - 1)
    unstamped = Record("default/spiderpool", "uid-sp")
    for ip, record in ((0x0A1E000A, young), (0x0A1E000B, old), (0x0A1E000C, unstamped)):
        await leak(store, "v4", ip, record)
    with trio.fail_after(TIMEOUT):
        first = await check_store(store, reclaim=True, clock=wall)
        assert sorted(f.ip for f in first.reclaimed) == ["10.30.0.11", "10.30.0.12"]
        assert [f.ip for f in first.left_alone] == ["10.30.0.10"]
        await trio.sleep(10)
        second = await check_store(store, reclaim=True, clock=wall)
    assert [f.ip for f in second.reclaimed] == ["10.30.0.10"]
    assert second.left_alone == ()
    assert await holders(store, "v4") == {}


async def test_reclaim_does_not_free_a_record_that_changed_between_its_two_scans(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A repeated ADD of the leaked record's pod stamps it anew (and writes the endpoint) during the grace."""
    store = await seeded(MemoryStore())
    await trio.sleep(1000)
    stale = Record("default/a", "uid-a", "eth0", "ctr-a", "node-1", wall() - RECLAIM_AFTER - 1)
    await leak(store, "v4", 0x0A1E000A, stale)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            ipam = service(nursery, store)
            reports: list[Report] = []

            async def reclaim() -> None:
                reports.append(await check_store(store, reclaim=True, grace=5.0, clock=wall))

            async with trio.open_nursery() as checks:
                checks.start_soon(reclaim)
                await trio.sleep(1)  # the first scan has seen the leak
                results = await ipam.allocate(add("a", dual=False))
            nursery.cancel_scope.cancel(reason="test over")
    assert answered(results) == ["10.30.0.10/24"]
    assert reports[0].reclaimed == ()
    assert await holders(store, "v4") == {"10.30.0.10": "uid-a"}


# --- the ADD's own guards --------------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite"])
async def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """Both pools on the in-memory store and on the embedded one."""
    store: Store = MemoryStore() if request.param == "memory" else await SqliteStore.open(tmp_path / "store.db")
    try:
        yield await seeded(store)
    finally:
        await store.aclose()


@attrs.define(eq=False)
class GatedEndpoints(SlowWrites):
    """``SlowWrites`` that holds the first endpoint write at its gate and lets the embedded store's pools keep their
    write lock (``update_status_atomically`` passes through)."""

    gated: str = ENDPOINT

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@asynccontextmanager
async def held_before_its_endpoint(
    store: GatedEndpoints, ipam: IpamService, req: AddRequest
) -> AsyncIterator[list[SpiderError]]:
    """Runs the ADD ``req`` until its records are written and its endpoint write is held at ``store``'s gate; the
    body runs then, and the gate opens at its end.  Yields the list that gets the ``AddAbandoned`` the ADD ends
    with (empty: it answered), filled once the ``async with`` is over."""
    errors: list[SpiderError] = []

    async def pod() -> None:
        try:
            await ipam.allocate(req)
        except AddAbandoned as exc:
            errors.append(exc)

    async with trio.open_nursery() as pods:
        pods.start_soon(pod)
        await store.entered.wait()
        yield errors
        store.gate.set()


async def test_an_add_whose_address_is_freed_and_taken_before_its_endpoint_is_written_answers_nothing(
    any_store: Store,
) -> None:
    store = GatedEndpoints(any_store)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            async with held_before_its_endpoint(store, service(nursery, store), add("a")) as errors:
                elsewhere, actor = open_pool("v4", any_store)  # another process: an older reclaim, say
                await nursery.start(actor.run)
                assert await elsewhere.release_ips((("10.30.0.10", "uid-a"),)) == 1
                b = await elsewhere.allocate(Owner("uid-b", "eth0", "default", "b", "ctr-b", "node-2"))
            nursery.cancel_scope.cancel(reason="test over")
    assert b.address == "10.30.0.10/24"
    assert "10.30.0.10/24 in pool v4 is no longer recorded as its own" in str(errors[0])
    assert errors[0].cni_code == 11
    assert await holders(any_store, "v4") == {"10.30.0.10": "uid-b"}
    assert await holders(any_store, "v6") == {}, "A's other address is given back"
    assert (await any_store.list(ENDPOINT)).items == [], "and its endpoint entry withdrawn"


async def test_an_add_whose_endpoint_another_pod_of_the_same_name_wrote_meanwhile_leaves_it_alone(
    any_store: Store,
) -> None:
    """Pod ``a`` (UID uid-a) is about to create its endpoint when a newer pod of the same name (uid-a2), served on
    another node, creates it first.  Merging uid-a's NIC into uid-a2's endpoint would replace uid-a2's entry: its
    address would be held in the pool by a pod whose endpoint no longer lists it, and uid-a's by a pod whose
    endpoint names another UID.  The older ADD gives back what it took and fails with "try again" (a retry
    decides afresh); the newer pod's endpoint and addresses are untouched."""
    store = GatedEndpoints(any_store)
    newer = AddRequest("ctr-a2", "eth0", "/var/run/netns/y", "default", "a", "uid-a2", ("v4",), ("v6",))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            async with held_before_its_endpoint(store, service(nursery, store), add("a")) as errors:
                other_node = IpamService(
                    any_store, PoolRegistry(any_store, Supervisor(nursery)), "node-2", IpamSettings(), clock=wall
                )
                theirs = answered(await other_node.allocate(newer))
            nursery.cancel_scope.cancel(reason="test over")
    (error,) = errors  # the older ADD fails, to be retried
    assert error.cni_code == 11
    assert "uid-a2" in str(error)
    assert await holders(any_store, "v4") == {theirs[0].partition("/")[0]: "uid-a2"}
    assert await holders(any_store, "v6") == {theirs[1].partition("/")[0]: "uid-a2"}
    (endpoint,) = (await any_store.list(ENDPOINT)).items
    assert endpoint["status"]["current"]["uid"] == "uid-a2"
    assert [ip["ipv4"] for ip in endpoint["status"]["current"]["ips"]] == [theirs[0]]


async def test_a_late_add_of_an_older_sandbox_leaves_the_newer_sandboxs_entry_alone(any_store: Store) -> None:
    """Sandbox ctr-a1's ADD has its address and is about to create the endpoint when the runtime gives up on it
    and starts sandbox ctr-a2 of the same pod, whose ADD takes the same address (the pod's) and is answered.
    Were ctr-a1's late ADD to write its entry over ctr-a2's and then fail its last look, it would withdraw it:
    the address would stay held for the pod with no endpoint listing it, and reclaim would free it under the
    live pod.  Instead it leaves the entry alone and fails; ctr-a2's DEL later frees everything."""
    store = GatedEndpoints(any_store)
    older, newer = add("a", dual=False), add("a", dual=False)
    newer = attrs.evolve(newer, container_id="ctr-a2")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            ipam = service(nursery, store)
            async with held_before_its_endpoint(store, ipam, older) as errors:
                live = answered(await ipam.allocate(newer))
            (error,) = errors
            assert error.cni_code == 11
            assert "written meanwhile for sandbox ctr-a2" in str(error)
            (endpoint,) = (await any_store.list(ENDPOINT)).items
            assert [(ip["interface"], ip["ipv4"]) for ip in endpoint["status"]["current"]["ips"]] == [("eth0", live[0])]
            assert await holders(any_store, "v4") == {live[0].partition("/")[0]: "uid-a"}
            assert await ipam.release(DelRequest("ctr-a2", "eth0", "default", "a", "uid-a")) == [live[0]]
            nursery.cancel_scope.cancel(reason="test over")
    assert await holders(any_store, "v4") == {}
    assert (await any_store.list(ENDPOINT)).items == []


async def test_an_add_that_outlasts_the_window_gives_everything_back_and_fails(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = SlowWrites(await seeded(MemoryStore()), delays({"v6": [ADD_WINDOW + 1]}))
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            ipam = service(nursery, store)
            with pytest.raises(AddAbandoned, match="longer than the 60 s"):
                await ipam.allocate(add("a"))
            nursery.cancel_scope.cancel(reason="test over")
    assert await holders(store, "v4") == {}
    assert await holders(store, "v6") == {}
    assert (await store.list(ENDPOINT)).items == []


async def test_the_records_of_an_add_carry_the_time_it_started(autojump_clock: trio.testing.MockClock) -> None:
    store = SlowWrites(await seeded(MemoryStore()), delays({"v6": [3.0]}))
    await trio.sleep(50)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            ipam = service(nursery, store)
            await ipam.allocate(add("a"))
            nursery.cancel_scope.cancel(reason="test over")
    for pool in ("v4", "v6"):
        (record,) = PoolLedger.from_object(await store.get(POOL, pool)).records.values()
        assert record.added_at == EPOCH + 50


# --- the model ---------------------------------------------------------------------------------------------------


@attrs.frozen
class PodPlan:
    """One pod of a schedule: when its ADD starts, whether dual-stack, when (after its answer) its DEL comes, and
    how long each of its endpoint writes takes."""

    name: str
    start: float
    dual: bool
    delete_after: float | None
    endpoint_writes: tuple[float, ...]


@attrs.frozen
class Schedule:
    """Pods, a reclaim every ``reclaim_every`` seconds (the first after ``reclaim_offset``), and how long each
    write of each pool takes, in order."""

    pods: tuple[PodPlan, ...]
    reclaim_every: float
    reclaim_offset: float
    pool_writes: dict[str, tuple[float, ...]]

    def slow(self) -> Callable[[str, str], float]:
        return delays(
            {
                **{p: list(w) for p, w in self.pool_writes.items()},
                **{p.name: list(p.endpoint_writes) for p in self.pods},
            }
        )


SLOW = st.sampled_from([0.0, 0.0, 0.0, 2.0, 7.0, 30.0, ADD_WINDOW + 5, RECLAIM_AFTER + 20])


@st.composite
def schedules(draw: st.DrawFn) -> Schedule:
    pods = draw(
        st.lists(
            st.builds(
                PodPlan,
                name=st.just(""),
                start=st.floats(0, 60),
                dual=st.booleans(),
                delete_after=st.one_of(st.none(), st.floats(0, 120)),
                endpoint_writes=st.lists(SLOW, max_size=3).map(tuple),
            ),
            min_size=2,
            max_size=7,
        )
    )
    every = draw(st.sampled_from([3.0, 8.0, 30.0]))
    return Schedule(
        tuple(attrs.evolve(p, name=f"pod-{i}") for i, p in enumerate(pods)),
        every,
        draw(st.floats(0, every)),
        {pool: tuple(draw(st.lists(SLOW, max_size=6))) for pool in ("v4", "v6")},
    )


@attrs.define
class Witness:
    """What the model saw: every answer, who was live when, and every breach of the rule."""

    live: dict[str, str] = attrs.field(factory=dict)
    """Address -> the live pod it was answered to (until that pod's DEL starts)."""
    kept: dict[str, set[str]] = attrs.field(factory=dict)
    """Pod UID -> the addresses it was answered and still holds (not deleted)."""
    twice: list[str] = attrs.field(factory=list)

    def answer(self, uid: str, addresses: list[str]) -> None:
        for address in addresses:
            ip = address.partition("/")[0]
            if ip in self.live:
                self.twice.append(f"{ip} answered to {uid} while {self.live[ip]} holds it")
            self.live[ip] = uid
        self.kept[uid] = {a.partition("/")[0] for a in addresses}

    def delete(self, uid: str) -> None:
        for ip in self.kept.pop(uid, set()):
            self.live.pop(ip, None)


async def run_schedule(schedule: Schedule) -> tuple[Witness, dict[str, str], Report]:
    """Run the schedule to its end on the autojump clock; what was answered, what is stored, and a last check."""
    memory = await seeded(MemoryStore())
    store = SlowWrites(memory, schedule.slow())
    witness = Witness()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            ipam = service(nursery, store)

            async def delete(request: AddRequest) -> None:
                """The runtime's DEL, after a failed ADD or when the pod goes; retried until it succeeds."""
                while True:
                    try:
                        await ipam.release(
                            DelRequest(request.container_id, "eth0", "default", request.pod_name, request.pod_uid)
                        )
                        return
                    except SpiderError:
                        await trio.sleep(1)

            async def pod(plan: PodPlan) -> None:
                await trio.sleep(plan.start)
                request = add(plan.name, dual=plan.dual)
                try:
                    results = await ipam.allocate(request)
                except SpiderError:
                    await delete(request)
                    return
                witness.answer(request.pod_uid, answered(results))
                if plan.delete_after is not None:
                    await trio.sleep(plan.delete_after)
                    witness.delete(request.pod_uid)
                    await delete(request)

            async def reclaim() -> None:
                await trio.sleep(schedule.reclaim_offset)
                while True:
                    await check_store(memory, reclaim=True, grace=5.0, clock=wall)
                    await trio.sleep(schedule.reclaim_every)

            nursery.start_soon(reclaim)
            async with trio.open_nursery() as pods:
                for plan in schedule.pods:
                    pods.start_soon(pod, plan)
            await trio.sleep(RECLAIM_AFTER + 1)  # every write still queued or slowed is done, and reclaimed if leaked
            nursery.cancel_scope.cancel(reason="schedule over")
    held = {ip: uid for pool in ("v4", "v6") for ip, uid in (await holders(memory, pool)).items()}
    return witness, held, await check_store(memory, clock=wall)


@settings(max_examples=60, deadline=None, database=None)
@given(schedules())
def test_no_schedule_of_slow_adds_and_reclaims_answers_an_address_to_two_live_pods_or_leaks_one(
    schedule: Schedule,
) -> None:
    witness, held, report = trio.run(run_schedule, schedule, clock=trio.testing.MockClock(autojump_threshold=0))
    assert witness.twice == []
    assert held == {ip: uid for uid, ips in witness.kept.items() for ip in ips}, "each pod holds what it was told"
    assert report.consistent, report.findings
