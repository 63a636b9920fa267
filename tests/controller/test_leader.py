"""Leader election on a Lease: one leader at a time, takeover within the lease duration, release on stop.

Durations are short and real (SqliteStore works in threads, so a jumping clock would fire deadlines while a
call is in flight): a 1 s lease, a 0.6 s renew deadline, a 0.1 s retry period.
"""

from __future__ import annotations

import itertools
import re
import secrets
from collections.abc import Awaitable, Callable

import attrs
import pytest
import trio

from actors.controller.leader import LeaderElector, LeaderSettings, LeaseRecord
from actors.stores.port import Store
from tests.controller.support import FaultyStore, eventually

# NB: a name of our own, never Spiderpool's Lease: these tests may run against a real cluster
NAMESPACE, NAME = "default", f"spider-test-lease-{secrets.token_hex(3)}"
LEASE, RENEW, RETRY = 1, 0.6, 0.1
SLACK = 0.5  # seconds of scheduling and I/O noise allowed on a shared CI machine
MICROTIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def settings(identity: str, *, release: bool = True) -> LeaderSettings:
    return LeaderSettings(
        namespace=NAMESPACE,
        identity=identity,
        name=NAME,
        lease_duration=LEASE,
        renew_deadline=RENEW,
        retry_period=RETRY,
        release_on_cancel=release,
    )


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


async def lease_spec(store: Store) -> dict[str, object]:
    spec: dict[str, object] = (await store.get("Lease", NAME, NAMESPACE))["spec"]
    return spec


async def test_the_first_candidate_creates_the_lease_and_leads(store: Store) -> None:
    journal = Journal()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            elector = LeaderElector(store, settings("a"))
            await nursery.start(elector.run, journal.work("a"))
            await eventually(journal.leads("a"))
            assert elector.leading
            assert elector.leader == "a"
            spec = await lease_spec(store)
            assert spec["holderIdentity"] == "a"
            assert spec["leaseDurationSeconds"] == LEASE
            assert spec["leaseTransitions"] == 0
            assert MICROTIME.match(str(spec["acquireTime"]))
            assert MICROTIME.match(str(spec["renewTime"]))
            nursery.cancel_scope.cancel(reason="test over")


async def test_a_second_candidate_waits_while_the_leader_renews(store: Store) -> None:
    journal = Journal()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            a, b = LeaderElector(store, settings("a")), LeaderElector(store, settings("b"))
            await nursery.start(a.run, journal.work("a"))
            await eventually(journal.leads("a"))
            first_renewal = (await lease_spec(store))["renewTime"]
            await nursery.start(b.run, journal.work("b"))
            await trio.sleep(2.5 * LEASE)
            assert list(journal.running) == ["a"]
            assert b.leader == "a"  # a standby knows who leads (readiness needs that)
            assert not b.leading
            spec = await lease_spec(store)
            assert spec["renewTime"] != first_renewal
            assert spec["leaseTransitions"] == 0
            nursery.cancel_scope.cancel(reason="test over")
        journal.assert_never_two_at_once()


async def test_a_second_candidate_takes_over_within_the_lease_duration_when_the_leader_dies(store: Store) -> None:
    journal = Journal()
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            a, b = LeaderElector(store, settings("a", release=False)), LeaderElector(store, settings("b"))
            a_alive = await nursery.start(candidate, a, journal.work("a"))
            await eventually(journal.leads("a"))
            await nursery.start(b.run, journal.work("b"))
            await trio.sleep(0.3)
            killed = trio.current_time()
            a_alive.cancel(reason="simulated crash: no release")
            await eventually(journal.leads("b"), within=LEASE + 2 * RETRY + 3 * SLACK)
            took = trio.current_time() - killed
            # b waits out a full lease duration after a's last renewal, and not much longer
            assert LEASE - 2 * RETRY <= took <= LEASE + 2 * RETRY * 1.2 + SLACK
            spec = await lease_spec(store)
            assert spec["holderIdentity"] == "b"
            assert spec["leaseTransitions"] == 1
            nursery.cancel_scope.cancel(reason="test over")
        journal.assert_never_two_at_once()


async def test_a_released_lease_is_taken_over_within_one_retry_period(store: Store) -> None:
    journal = Journal()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            a, b = LeaderElector(store, settings("a")), LeaderElector(store, settings("b"))
            a_alive = await nursery.start(candidate, a, journal.work("a"))
            await eventually(journal.leads("a"))
            await nursery.start(b.run, journal.work("b"))
            await trio.sleep(0.3)
            stopped = trio.current_time()
            a_alive.cancel(reason="SIGTERM: stop and release")
            await eventually(journal.leads("b"), within=LEASE)
            assert trio.current_time() - stopped < RETRY * 1.2 + SLACK  # far sooner than a lease duration
            spec = await lease_spec(store)
            assert spec["holderIdentity"] == "b"
            assert spec["leaseTransitions"] == 1
            nursery.cancel_scope.cancel(reason="test over")
        journal.assert_never_two_at_once()


@pytest.mark.parametrize("fault", ["down", "hang"])
async def test_a_leader_cut_off_from_the_store_stops_before_anyone_else_starts(store: Store, fault: str) -> None:
    journal = Journal()
    cut = FaultyStore(store)
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            a, b = LeaderElector(cut, settings("a")), LeaderElector(store, settings("b"))
            await nursery.start(a.run, journal.work("a"))
            await eventually(journal.leads("a"))
            await nursery.start(b.run, journal.work("b"))
            await trio.sleep(0.35)
            setattr(cut, fault, True)
            since = trio.current_time()
            await eventually(journal.stopped("a"), within=RENEW + SLACK)
            # it led at most the renew deadline past its last successful renewal
            assert trio.current_time() - since <= RENEW + SLACK
            assert not a.leading
            await eventually(journal.leads("b"), within=LEASE + 2 * RETRY + 2 * SLACK)
            nursery.cancel_scope.cancel(reason="test over")
        journal.assert_never_two_at_once()


async def test_a_leader_that_sees_another_holder_stops_at_once(store: Store) -> None:
    journal = Journal()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            a = LeaderElector(store, settings("a"))
            await nursery.start(a.run, journal.work("a"))
            await eventually(journal.leads("a"))
            lease = await store.get("Lease", NAME, NAMESPACE)
            lease["spec"]["holderIdentity"] = "intruder"  # as if a's renewals had stalled unnoticed
            await store.update(lease)
            await eventually(journal.stopped("a"), within=2 * RETRY + SLACK)
            assert any("taken over by intruder" in reason for reason in journal.reasons)
            assert a.leader == "intruder"
            nursery.cancel_scope.cancel(reason="test over")


async def test_leading_work_that_returns_releases_the_lease(store: Store) -> None:
    done = trio.Event()

    async def work() -> None:
        done.set()

    with trio.fail_after(10):
        elector = LeaderElector(store, settings("a", release=False))
        await elector.run(work)  # returns: the work is over
        assert done.is_set()
        assert not elector.leading
        spec = await lease_spec(store)
        assert spec.get("holderIdentity", "") == ""
        assert spec["leaseDurationSeconds"] == 1


async def test_only_one_of_three_candidates_leads_at_any_time_through_crashes(store: Store) -> None:
    journal = Journal()

    async def someone_leads() -> bool:
        return len(journal.running) == 1

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            alive: dict[str, tuple[trio.CancelScope, LeaderElector]] = {}
            for generation in range(4):
                for name in ("a", "b", "c"):
                    if not any(i.startswith(name) for i in alive):  # a killed candidate comes back as a new process
                        identity = f"{name}{generation}"
                        elector = LeaderElector(store, settings(identity))
                        alive[identity] = (await nursery.start(candidate, elector, journal.work(identity)), elector)
                await eventually(someone_leads, within=LEASE + 2 * RETRY + 2 * SLACK)
                (leader,) = journal.running
                await trio.sleep(0.2)
                scope, elector = alive.pop(leader)
                crash = generation % 2 == 1  # odd generations die without releasing the Lease
                elector.settings = attrs.evolve(elector.settings, release_on_cancel=not crash)
                scope.cancel(reason="killed" if crash else "stopped")
                await eventually(journal.stopped(leader))
            await eventually(someone_leads, within=LEASE + 2 * RETRY + 2 * SLACK)
            nursery.cancel_scope.cancel(reason="test over")
        journal.assert_never_two_at_once()
        assert len(journal.spans) == 5
        spec = await lease_spec(store)
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
        "metadata": {"name": NAME, "namespace": NAMESPACE, "resourceVersion": "7"},
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


async def test_a_renewal_seen_by_a_slow_read_is_dated_when_the_read_returned(store: Store) -> None:
    # b must not count the lease from when it *asked*: a renewed while b's read was under way
    lease, read = 2, 1.5
    a = LeaderElector(store, attrs.evolve(settings("a"), lease_duration=lease))
    slow = SlowFirstRead(store, delay=read, meanwhile=a.try_acquire_or_renew)
    b = LeaderElector(slow, attrs.evolve(settings("b"), lease_duration=lease))
    with trio.fail_after(10):
        assert await a.try_acquire_or_renew()
        asked = trio.current_time()
        assert not await b.try_acquire_or_renew()
        # past a lease counted from the question, well within one counted from the renewal
        await trio.sleep_until(asked + lease + read / 2)
        assert not await b.try_acquire_or_renew()
        assert b.leader == "a"
        assert (await lease_spec(store))["holderIdentity"] == "a"
