"""Leader election on a Lease: one leader at a time, takeover after the lease duration, release on stop.

Durations are real (SqliteStore works in threads, so a jumping clock would fire deadlines while a call is in
flight) and paced by the store: a 1 s lease, a 0.6 s renew deadline and a 0.1 s retry period on a quick one,
longer in proportion on a slow one (``pace``: an API server under load, or the fake API server with its latency
model on, ``SPIDER_FAKEAPI_LATENCY=measured*20``).  Nothing asserts how long something took: the tests check
who leads, in which order, and why a leader stopped; a time limit only bounds how long a test waits.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable

import attrs
import pytest
import trio

from actors.controller.leader import LeaderElector, LeaderSettings, LeaseRecord, microtime
from actors.stores.port import Conflict, NotFound, Obj, PassThrough, Store
from tests.controller.support import FaultyStore, eventually
from tests.ipam.memory_store import MemoryStore

# NB: a name of our own, never Spiderpool's Lease: these tests may run against a real cluster
NAMESPACE = "default"
MICROTIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
ROUND_TRIPS_PER_LEASE = 20
"""A renewal is two round trips; a lease of 20 leaves a renewal ten tries before the renew deadline."""


@attrs.frozen
class Pace:
    """The election's durations for one store: client-go's proportions (lease : renew : retry = 10 : 6 : 1)."""

    lease: int = 1
    name: str = attrs.field(factory=lambda: f"spider-test-lease-{secrets.token_hex(3)}")
    """The Lease's own name, one per test: on a real cluster the Lease outlives the test."""

    @property
    def renew(self) -> float:
        return 0.6 * self.lease

    @property
    def retry(self) -> float:
        return 0.1 * self.lease

    @property
    def patience(self) -> float:
        """How long a test waits for something that should happen within a few leases."""
        return 5.0 * self.lease + 5.0

    def settings(self, identity: str, *, release: bool = True) -> LeaderSettings:
        return LeaderSettings(
            namespace=NAMESPACE,
            identity=identity,
            name=self.name,
            lease_duration=self.lease,
            renew_deadline=self.renew,
            retry_period=self.retry,
            release_on_cancel=release,
        )


@pytest.fixture
async def pace(store: Store) -> AsyncIterator[Pace]:
    """Durations for this store: a 1 s lease, or longer when one read of the Lease is slow (the slowest of five).
    The test's Lease is deleted afterwards."""
    unpaced = Pace()
    slowest = 0.0
    with trio.fail_after(60):
        for _ in range(5):
            start = trio.current_time()
            with contextlib.suppress(NotFound):
                await store.get("Lease", unpaced.name, NAMESPACE)
            slowest = max(slowest, trio.current_time() - start)
    yield attrs.evolve(unpaced, lease=max(1, math.ceil(slowest * ROUND_TRIPS_PER_LEASE)))
    with trio.fail_after(60), contextlib.suppress(NotFound):
        await store.delete("Lease", unpaced.name, NAMESPACE)


async def write_holder(store: Store, pace: Pace, holder: str) -> None:
    """Set the Lease's holder as another client would: read, change, write; again when a renewal got in first."""
    while True:
        lease = await store.get("Lease", pace.name, NAMESPACE)
        lease["spec"]["holderIdentity"] = holder
        try:
            await store.update(lease)
            return
        except Conflict:
            continue


class Journal:
    """When each candidate's leading work ran, in trio time, and why it was stopped."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, float, float]] = []
        self.running: dict[str, float] = {}
        self.reasons: list[str] = []

    def work(self, identity: str) -> Callable[[], Awaitable[None]]:
        async def lead() -> None:
            self.running[identity] = trio.current_time()
            try:
                await trio.sleep_forever()
            except trio.Cancelled as exc:
                self.reasons.append(str(exc))
                raise
            finally:
                self.spans.append((identity, self.running.pop(identity), trio.current_time()))

        return lead

    def leads(self, identity: str) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return list(self.running) == [identity]

        return check

    def stopped(self, identity: str) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return identity not in self.running

        return check

    def assert_never_two_at_once(self) -> None:
        now = trio.current_time()
        spans = sorted([*self.spans, *((i, t, now) for i, t in self.running.items())], key=lambda s: s[1])
        for (a, _, a_end), (b, b_start, _) in itertools.pairwise(spans):
            assert a_end <= b_start, f"{a} still led at {a_end:.3f} when {b} started at {b_start:.3f}"


async def candidate(
    elector: LeaderElector, work: Callable[[], Awaitable[None]], *, task_status: trio.TaskStatus[trio.CancelScope]
) -> None:
    """Campaign in a scope the test can cancel, as a process that can be killed."""
    with trio.CancelScope() as scope:
        task_status.started(scope)
        await elector.run(work)


async def knows_leader(elector: LeaderElector, identity: str) -> bool:
    """Whether ``elector`` has seen ``identity`` hold the Lease within its lease duration."""
    return elector.leader == identity


async def lease_spec(store: Store, pace: Pace) -> dict[str, object]:
    spec: dict[str, object] = (await store.get("Lease", pace.name, NAMESPACE))["spec"]
    return spec


async def test_the_first_candidate_creates_the_lease_and_leads(store: Store, pace: Pace) -> None:
    journal = Journal()
    with trio.fail_after(2 * pace.patience):
        async with trio.open_nursery() as nursery:
            elector = LeaderElector(store, pace.settings("a"))
            await nursery.start(elector.run, journal.work("a"))
            await eventually(journal.leads("a"), within=pace.patience)
            assert elector.leading
            assert elector.leader == "a"
            spec = await lease_spec(store, pace)
            assert spec["holderIdentity"] == "a"
            assert spec["leaseDurationSeconds"] == pace.lease
            assert spec["leaseTransitions"] == 0
            assert MICROTIME.match(str(spec["acquireTime"]))
            assert MICROTIME.match(str(spec["renewTime"]))
            nursery.cancel_scope.cancel(reason="test over")


async def test_a_second_candidate_waits_while_the_leader_renews(store: Store, pace: Pace) -> None:
    journal = Journal()
    with trio.fail_after(2 * pace.patience):
        async with trio.open_nursery() as nursery:
            a, b = LeaderElector(store, pace.settings("a")), LeaderElector(store, pace.settings("b"))
            await nursery.start(a.run, journal.work("a"))
            await eventually(journal.leads("a"), within=pace.patience)
            first_renewal = (await lease_spec(store, pace))["renewTime"]
            await nursery.start(b.run, journal.work("b"))
            await trio.sleep(2.5 * pace.lease)  # long enough for b to take over, had a stopped renewing
            assert list(journal.running) == ["a"]
            assert b.leader == "a"  # a standby knows who leads (readiness needs that)
            assert not b.leading
            spec = await lease_spec(store, pace)
            assert spec["renewTime"] != first_renewal
            assert spec["leaseTransitions"] == 0
            nursery.cancel_scope.cancel(reason="test over")
        journal.assert_never_two_at_once()


async def test_a_second_candidate_takes_over_after_the_lease_duration_when_the_leader_dies(
    store: Store, pace: Pace
) -> None:
    journal = Journal()
    with trio.fail_after(3 * pace.patience):
        async with trio.open_nursery() as nursery:
            a, b = LeaderElector(store, pace.settings("a", release=False)), LeaderElector(store, pace.settings("b"))
            a_alive = await nursery.start(candidate, a, journal.work("a"))
            await eventually(journal.leads("a"), within=pace.patience)
            await nursery.start(b.run, journal.work("b"))
            await eventually(lambda: knows_leader(b, "a"), within=pace.patience)
            a_alive.cancel(reason="simulated crash: no release")
            assert b.leader == "a"  # a dead leader's lease is honoured: b has seen it renewed too recently
            assert not b.leading
            await eventually(journal.leads("b"), within=pace.patience)
            spec = await lease_spec(store, pace)
            assert spec["holderIdentity"] == "b"
            assert spec["leaseTransitions"] == 1
            nursery.cancel_scope.cancel(reason="test over")
        journal.assert_never_two_at_once()


async def test_a_released_lease_is_taken_over_without_waiting_for_it_to_expire(store: Store, pace: Pace) -> None:
    journal = Journal()
    # A lease far longer than the test may wait: b can only lead in time if a gave the Lease up.
    long = attrs.evolve(pace, lease=10 * pace.lease + 30)
    with trio.fail_after(3 * pace.patience):
        async with trio.open_nursery() as nursery:
            a = LeaderElector(store, attrs.evolve(long.settings("a"), retry_period=pace.retry))
            b = LeaderElector(store, attrs.evolve(long.settings("b"), retry_period=pace.retry))
            a_alive = await nursery.start(candidate, a, journal.work("a"))
            await eventually(journal.leads("a"), within=pace.patience)
            await nursery.start(b.run, journal.work("b"))
            await eventually(lambda: knows_leader(b, "a"), within=pace.patience)
            a_alive.cancel(reason="SIGTERM: stop and release")
            await eventually(journal.leads("b"), within=2 * pace.patience)
            spec = await lease_spec(store, pace)
            assert spec["holderIdentity"] == "b"
            assert spec["leaseTransitions"] == 1
            nursery.cancel_scope.cancel(reason="test over")
        journal.assert_never_two_at_once()


@attrs.define(eq=False)
class RenewalLandsLate(PassThrough):
    """The first time the Lease is written empty, a renewal its holder gave up waiting for lands first, after
    the release read the Lease: as a slow server commits a request whose client stopped waiting."""

    inner: Store
    name: str
    landed: int = 0

    async def update(self, obj: Obj) -> Obj:
        if obj["kind"] == "Lease" and not obj["spec"].get("holderIdentity") and not self.landed:
            self.landed += 1
            late = await self.inner.get("Lease", self.name, NAMESPACE)
            await self.inner.update({**late, "spec": {**late["spec"], "renewTime": microtime()}})
        return await self.inner.update(obj)


async def test_a_release_that_a_late_renewal_overtakes_reads_the_lease_again_and_releases(
    store: Store, pace: Pace
) -> None:
    late = RenewalLandsLate(store, pace.name)
    journal = Journal()
    with trio.fail_after(2 * pace.patience):
        async with trio.open_nursery() as nursery:
            a = LeaderElector(late, pace.settings("a", release=False))
            a_alive = await nursery.start(candidate, a, journal.work("a"))
            await eventually(journal.leads("a"), within=pace.patience)
            a_alive.cancel(reason="stop, and release below")
        assert await a.release()
    assert late.landed == 1
    assert not (await lease_spec(store, pace)).get("holderIdentity")


@pytest.mark.parametrize("fault", ["down", "hang"])
async def test_a_leader_cut_off_from_the_store_stops_before_anyone_else_starts(
    store: Store, pace: Pace, fault: str
) -> None:
    journal = Journal()
    cut = FaultyStore(store)
    with trio.fail_after(3 * pace.patience):
        async with trio.open_nursery() as nursery:
            a, b = LeaderElector(cut, pace.settings("a")), LeaderElector(store, pace.settings("b"))
            await nursery.start(a.run, journal.work("a"))
            await eventually(journal.leads("a"), within=pace.patience)
            await nursery.start(b.run, journal.work("b"))
            await eventually(lambda: knows_leader(b, "a"), within=pace.patience)
            setattr(cut, fault, True)
            await eventually(journal.stopped("a"), within=pace.patience)
            assert not a.leading
            await eventually(journal.leads("b"), within=pace.patience)
            assert not a.leading  # cut off, it cannot have won the Lease back
            nursery.cancel_scope.cancel(reason="test over")
        journal.assert_never_two_at_once()  # b started only after a had stopped


async def test_a_leader_that_sees_another_holder_stops_at_once(store: Store, pace: Pace) -> None:
    journal = Journal()
    # A renew deadline far longer than the test may wait: a stopping in time is a stop for the other holder.
    long = attrs.evolve(pace, lease=10 * pace.lease + 30)
    with trio.fail_after(3 * pace.patience):
        async with trio.open_nursery() as nursery:
            a = LeaderElector(store, attrs.evolve(long.settings("a"), retry_period=pace.retry))
            await nursery.start(a.run, journal.work("a"))
            await eventually(journal.leads("a"), within=pace.patience)
            await write_holder(store, pace, "intruder")  # as if a's renewals had stalled unnoticed
            await eventually(journal.stopped("a"), within=2 * pace.patience)
            assert any("taken over by intruder" in reason for reason in journal.reasons)
            assert a.leader == "intruder"
            nursery.cancel_scope.cancel(reason="test over")


async def test_leading_work_that_returns_releases_the_lease(store: Store, pace: Pace) -> None:
    done = trio.Event()

    async def work() -> None:
        done.set()

    with trio.fail_after(2 * pace.patience):
        elector = LeaderElector(store, pace.settings("a", release=False))
        await elector.run(work)  # returns: the work is over
        assert done.is_set()
        assert not elector.leading
        spec = await lease_spec(store, pace)
        assert spec.get("holderIdentity", "") == ""
        assert spec["leaseDurationSeconds"] == 1


async def test_only_one_of_three_candidates_leads_at_any_time_through_crashes(store: Store, pace: Pace) -> None:
    journal = Journal()

    async def someone_leads() -> bool:
        return len(journal.running) == 1

    with trio.fail_after(10 * pace.patience):
        async with trio.open_nursery() as nursery:
            alive: dict[str, tuple[trio.CancelScope, LeaderElector]] = {}
            for generation in range(4):
                for name in ("a", "b", "c"):
                    if not any(i.startswith(name) for i in alive):  # a killed candidate comes back as a new process
                        identity = f"{name}{generation}"
                        elector = LeaderElector(store, pace.settings(identity))
                        alive[identity] = (await nursery.start(candidate, elector, journal.work(identity)), elector)
                await eventually(someone_leads, within=pace.patience)
                (leader,) = journal.running
                await trio.sleep(2 * pace.retry)
                scope, elector = alive.pop(leader)
                crash = generation % 2 == 1  # odd generations die without releasing the Lease
                elector.settings = attrs.evolve(elector.settings, release_on_cancel=not crash)
                scope.cancel(reason="killed" if crash else "stopped")
                await eventually(journal.stopped(leader), within=pace.patience)
            await eventually(someone_leads, within=pace.patience)
            nursery.cancel_scope.cancel(reason="test over")
        journal.assert_never_two_at_once()
        assert len(journal.spans) == 5
        spec = await lease_spec(store, pace)
        assert spec["leaseTransitions"] == 4


@pytest.mark.parametrize(
    ("lease", "renew", "retry"),
    [(10, 10.0, 2.0), (10, 12.0, 2.0), (0, 0.5, 0.1), (10, 5.0, 4.5), (10, 5.0, 0.0)],
)
def test_lease_settings_refuse_durations_that_allow_two_leaders(lease: int, renew: float, retry: float) -> None:
    with pytest.raises(ValueError, match="must"):
        LeaderSettings(namespace="ns", identity="a", lease_duration=lease, renew_deadline=renew, retry_period=retry)


def test_a_lease_record_reads_what_client_go_writes() -> None:
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "spiderpool-controller-leases", "namespace": NAMESPACE, "resourceVersion": "7"},
        "spec": {
            "holderIdentity": "spiderpool-controller-7d9f_3c1e",
            "leaseDurationSeconds": 15,
            "acquireTime": "2024-05-01T10:00:00.000000Z",
            "renewTime": "2024-05-01T10:05:00.123456Z",
            "leaseTransitions": 3,
            "strategy": "OldestEmulationVersion",
        },
    }
    record = LeaseRecord.from_object(lease)
    assert record == LeaseRecord(
        "spiderpool-controller-7d9f_3c1e", 15, "2024-05-01T10:00:00.000000Z", "2024-05-01T10:05:00.123456Z", 3
    )
    assert record.to_spec() == {k: v for k, v in lease["spec"].items() if k != "strategy"}
    assert LeaseRecord.from_object({"spec": {"leaseDurationSeconds": "15", "leaseTransitions": True}}) == LeaseRecord()


@attrs.define(eq=False)
class SlowFirstRead(FaultyStore):
    """The first ``get`` takes ``delay`` seconds, and ``meanwhile`` runs just before it reads."""

    delay: float = 0.0
    meanwhile: Callable[[], Awaitable[object]] | None = None

    async def get(self, kind: str, name: str, namespace: str = "") -> dict[str, object]:
        if self.delay:
            delay, self.delay = self.delay, 0.0
            await trio.sleep(delay)
            if self.meanwhile is not None:
                await self.meanwhile()
        return await super().get(kind, name, namespace)


async def test_a_renewal_seen_by_a_slow_read_is_dated_when_the_read_returned(store: Store, pace: Pace) -> None:
    # b must not count the lease from when it *asked*: a renewed while b's read was under way
    lease, read = 2 * pace.lease, 1.5 * pace.lease
    a = LeaderElector(store, attrs.evolve(pace.settings("a"), lease_duration=lease))
    slow = SlowFirstRead(store, delay=read, meanwhile=a.try_acquire_or_renew)
    b = LeaderElector(slow, attrs.evolve(pace.settings("b"), lease_duration=lease))
    with trio.fail_after(4 * pace.patience):
        assert await a.try_acquire_or_renew()
        asked = trio.current_time()
        assert not await b.try_acquire_or_renew()
        # past a lease counted from the question, well within one counted from the renewal
        await trio.sleep_until(asked + lease + read / 2)
        assert not await b.try_acquire_or_renew()
        assert b.leader == "a"
        assert (await lease_spec(store, pace))["holderIdentity"] == "a"


@attrs.define(eq=False)
class SlowRoundTrips(PassThrough):
    """An API server answering each call ``way`` seconds after it is sent, its answer taking as long back."""

    inner: Store
    way: float

    async def _slowly(self, call: Callable[[], Awaitable[Obj]]) -> Obj:
        await trio.sleep(self.way)
        answer = await call()
        await trio.sleep(self.way)
        return answer

    async def get(self, kind: str, name: str, namespace: str = "") -> Obj:
        return await self._slowly(lambda: self.inner.get(kind, name, namespace))

    async def create(self, obj: Obj) -> Obj:
        return await self._slowly(lambda: self.inner.create(obj))

    async def update(self, obj: Obj) -> Obj:
        return await self._slowly(lambda: self.inner.update(obj))


async def test_a_slow_but_working_api_server_leaves_the_sole_leader_leading(autojump_clock: object) -> None:
    # NB: renewals were spaced a retry period after the last one ended and dated from its read: with 2.2 s per
    # call (a renewal is a read and a write) the sole leader stopped and restarted its work every 10 s
    journal = Journal()
    settings = LeaderSettings(namespace=NAMESPACE, identity="only", name="lease")  # Spiderpool's 15 / 10 / 2 s
    elector = LeaderElector(SlowRoundTrips(MemoryStore(), way=1.1), settings)
    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(elector.run, journal.work("only"))
            await trio.sleep(120)
            nursery.cancel_scope.cancel()
    assert [who for who, _, _ in journal.spans] == ["only"]  # NB: one span, ended by the test
