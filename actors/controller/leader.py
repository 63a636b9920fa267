"""Leader election on a ``coordination.k8s.io/v1`` Lease, with client-go's semantics, over the Store port.

Owns ``LeaderElector``: the campaign (acquire a Lease nobody holds or whose holder stopped renewing it),
the renewal every retry period, the end of leading work when renewal fails past the renew deadline, and
the release on a clean stop.  It works the same on the embedded store and on an API server, and it
interoperates with client-go candidates on the same Lease (same fields, same rules).

How a candidate judges expiry (client-go ``tryAcquireOrRenew``).  It never compares its clock with another
machine's: it remembers when *it* last saw the Lease record change, and considers the holder gone once that
record has not changed for ``leaseDurationSeconds`` of its own (trio) time.  ``renewTime`` and
``acquireTime`` are written for people and tools; nobody's decision depends on them.

Why one leader at a time.  Every Lease write is guarded by resourceVersion, so of two candidates racing for
an expired Lease only one write wins.  A leader leads only until ``renew_deadline`` after the *start* of its
last successful renewal (the work runs in a cancel scope with that deadline, pushed forward by every
renewal), and others wait ``lease_duration`` after *seeing* that renewal; ``renew_deadline <
lease_duration`` leaves the difference as margin for clock-rate skew and slow calls.  A leader that sees
another holder in the Lease stops at once.

The elector keeps who leads and whether the store answered its last Lease call; the controller's readiness
reports from that, so a probe (unauthenticated) never costs an API call.

Defaults are Spiderpool's: Lease ``spiderpool-controller-leases``, 15 s duration, 10 s renew deadline,
2 s retry period (reference §7.6).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import attrs
import trio

from actors.stores.port import AlreadyExists, Conflict, NotFound, Obj, Store
from spider.errors import SpiderError

log = logging.getLogger(__name__)

KIND = "Lease"
API_VERSION = "coordination.k8s.io/v1"
DEFAULT_LEASE_NAME = "spiderpool-controller-leases"
JITTER = 0.2
"""Candidates wait ``retry_period`` times 1 to 1.2 between attempts, so they do not all write at once."""
RELEASE_ATTEMPTS = 3
"""How often ``release`` reads the Lease and writes it empty while its writes conflict (a renewal given up on
may still land on the server after the read)."""


def microtime(now: datetime | None = None) -> str:
    """Kubernetes' MicroTime: RFC 3339 in UTC with microseconds (``2024-05-01T10:00:00.123456Z``)."""
    return (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@attrs.frozen
class LeaseRecord:
    """The election fields of a Lease's ``spec``."""

    holder: str = ""
    duration: int = 0
    """``leaseDurationSeconds`` as the holder wrote it; expiry is judged with the holder's own value."""
    acquire_time: str = ""
    renew_time: str = ""
    transitions: int = 0

    @classmethod
    def from_object(cls, obj: Obj) -> LeaseRecord:
        """The record of a stored Lease; missing or mistyped fields read as empty, as client-go reads them."""
        spec = obj.get("spec") or {}

        def integer(key: str) -> int:
            value = spec.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) else 0

        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            duration=integer("leaseDurationSeconds"),
            acquire_time=str(spec.get("acquireTime") or ""),
            renew_time=str(spec.get("renewTime") or ""),
            transitions=integer("leaseTransitions"),
        )

    def to_spec(self) -> dict[str, Any]:
        """The Lease ``spec`` (empty fields left out, as the API server's omitempty does)."""
        spec: dict[str, Any] = {
            "holderIdentity": self.holder,
            "leaseDurationSeconds": self.duration,
            "acquireTime": self.acquire_time,
            "renewTime": self.renew_time,
            "leaseTransitions": self.transitions,
        }
        return {k: v for k, v in spec.items() if v not in ("", None)}


@attrs.frozen
class LeaderSettings:
    """Which Lease, who we are, and the three durations of client-go's leader election."""

    namespace: str
    identity: str
    name: str = DEFAULT_LEASE_NAME
    lease_duration: int = 15
    """Seconds a candidate waits without seeing the record change before it takes the Lease over."""
    renew_deadline: float = 10.0
    """Seconds a leader keeps leading after the start of its last successful renewal."""
    retry_period: float = 2.0
    """Seconds between a leader's renewals, and between a candidate's attempts."""
    release_on_cancel: bool = True
    """Give the Lease up when stopped (a successor takes over within one retry period)."""

    def __attrs_post_init__(self) -> None:
        if not self.identity:
            raise ValueError("leader election needs a non-empty identity")
        if not self.namespace or not self.name:
            raise ValueError("leader election needs the Lease's namespace and name")
        if self.lease_duration < 1:
            raise ValueError("lease_duration must be at least 1 second (leaseDurationSeconds is an integer)")
        if not self.renew_deadline < self.lease_duration:
            raise ValueError("renew_deadline must be shorter than lease_duration")
        if not 0 < self.retry_period * (1 + JITTER) < self.renew_deadline:
            raise ValueError("retry_period (with jitter) must be positive and shorter than renew_deadline")


Work = Callable[[], Awaitable[None]]


@attrs.define(eq=False)
class LeaderElector:
    """Campaigns for one Lease; ``run(work)`` runs ``work`` whenever, and only while, this instance leads."""

    store: Store
    settings: LeaderSettings
    observed: LeaseRecord | None = None
    """The record as last read or written by us."""
    _observed_at: float = -math.inf
    """trio time at which ``observed`` last changed."""
    _lead_until: float = -math.inf
    _wrote_at: float = -math.inf
    """When our last write of the Lease was sent (trio time): no standby sees it, nor counts from it, before."""
    """trio time until which we lead: the start of the last successful renewal plus the renew deadline."""
    _scope: trio.CancelScope | None = None
    store_answered_at: float = -math.inf
    """trio time at which the store last answered one of our Lease attempts (a refusal is an answer too)."""
    store_problem: str | None = None
    """Why our last Lease attempt got no answer from the store; ``None`` once one is answered."""

    @property
    def leading(self) -> bool:
        """Whether this instance leads right now."""
        return trio.current_time() < self._lead_until

    @property
    def leader(self) -> str | None:
        """Who leads as far as we know: us, or a holder we saw renewing within its lease duration."""
        if self.leading:
            return self.settings.identity
        record = self.observed
        if record is None or not record.holder or record.holder == self.settings.identity:
            return None
        if self._observed_at + record.duration <= trio.current_time():
            return None
        return record.holder

    async def run(self, work: Work, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Campaign until cancelled: acquire, run ``work`` while leading, and campaign again if the lead is lost.

        ``work`` is cancelled when renewal fails past the renew deadline or someone else holds the Lease.
        If ``work`` returns, the Lease is released and ``run`` returns.  On cancellation the work is stopped
        first and then (``release_on_cancel``) the Lease is released, so a successor never overlaps us.
        """
        task_status.started()
        try:
            while True:
                await self._acquire()
                if await self._lead(work):
                    return
        finally:
            if self.settings.release_on_cancel:
                with trio.CancelScope(shield=True) as cleanup:
                    # NB: client-go's release has the renew deadline too; a retry period is too short for a slow server
                    cleanup.deadline = trio.current_time() + self.settings.renew_deadline
                    await self.release()

    async def _acquire(self) -> None:
        """Return once we hold the Lease, trying every retry period."""
        logged = False
        while True:
            if await self._attempt():
                self._lead_until = self._wrote_at + self.settings.renew_deadline
                log.info("%s: now leading (Lease %s)", self.settings.identity, self._where())
                return
            if not logged and self.leader:
                log.info("%s: %s leads; waiting to take over", self.settings.identity, self.leader)
                logged = True
            await trio.sleep(self.settings.retry_period * random.uniform(1, 1 + JITTER))

    async def _lead(self, work: Work) -> bool:
        """Run ``work`` while renewing; True when the work finished by itself."""
        finished = False

        async def lead() -> None:
            nonlocal finished
            await work()
            finished = True
            nursery.cancel_scope.cancel(reason="leading work finished")

        try:
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                nursery.cancel_scope.deadline = self._lead_until
                nursery.start_soon(self._renew, nursery.cancel_scope)
                nursery.start_soon(lead)
        finally:
            self._scope = None
        if finished:
            await self.release()
            return True
        self._lead_until = -math.inf
        log.warning("%s: stopped leading (Lease %s)", self.settings.identity, self._where())
        return False

    async def _renew(self, scope: trio.CancelScope) -> None:
        """Renew every retry period, counted from the start of the last attempt (a slow server's round trips must
        not push renewals apart); each success moves the lead deadline to when its write was sent plus the renew
        deadline: standbys count the Lease's duration from when they see that write, which is later."""
        began = trio.current_time()
        while True:
            await trio.sleep_until(began + self.settings.retry_period)
            while True:
                began = trio.current_time()
                if await self._attempt():
                    self._lead_until = self._wrote_at + self.settings.renew_deadline
                    scope.deadline = self._lead_until
                    break
                if self.observed is not None and self.observed.holder not in ("", self.settings.identity):
                    self._lead_until = -math.inf
                    scope.cancel(reason=f"Lease {self._where()} taken over by {self.observed.holder}")
                    return
                # NB: keep trying until the scope's deadline (the renew deadline) cancels us with the work.
                await trio.sleep_until(began + self.settings.retry_period)

    async def _attempt(self) -> bool:
        """One ``tryAcquireOrRenew``; store trouble counts as a failed attempt.  Either way the outcome is kept
        (``store_answered_at``, ``store_problem``): readiness reports the store from it, without a call of its own."""
        try:
            held = await self.try_acquire_or_renew()
        except SpiderError as exc:
            log.warning("%s: Lease %s: %s", self.settings.identity, self._where(), exc)
            self.store_problem = str(exc)
            return False
        self.store_answered_at, self.store_problem = trio.current_time(), None
        return held

    async def try_acquire_or_renew(self) -> bool:
        """Take or keep the Lease if it is free, expired (as we observed it) or ours; True when we hold it."""
        s = self.settings
        try:
            current = await self.store.get(KIND, s.name, s.namespace)
        except NotFound:
            stamp = microtime()
            mine = LeaseRecord(s.identity, s.lease_duration, stamp, stamp, 0)
            self._wrote_at = trio.current_time()
            try:
                await self.store.create(self._object(mine))
            except AlreadyExists:  # another candidate created it first
                return False
            self._observe(mine, trio.current_time())
            return True
        # NB: the clock is read after the answer, as client-go does: a slow read must not age the holder's renewal
        now = trio.current_time()
        record = LeaseRecord.from_object(current)
        if record != self.observed:
            self._observe(record, now)
        ours = record.holder == s.identity
        if record.holder and not ours and self._observed_at + record.duration > now:
            return False  # held, and renewed recently enough as far as we can tell
        stamp = microtime()
        mine = LeaseRecord(
            holder=s.identity,
            duration=s.lease_duration,
            acquire_time=record.acquire_time if ours and record.acquire_time else stamp,
            renew_time=stamp,
            transitions=record.transitions if ours else record.transitions + 1,
        )
        self._wrote_at = trio.current_time()
        try:
            await self.store.update(self._object(mine, current))
        except (Conflict, NotFound):  # someone else wrote it since we read it
            return False
        self._observe(mine, now)
        return True

    async def release(self) -> bool:
        """Give the Lease up if we hold it: an empty holder, so any candidate may take it at once."""
        self._lead_until = -math.inf
        if self._scope is not None:
            self._scope.cancel(reason="releasing the Lease")
        s = self.settings
        if self.observed is None or self.observed.holder != s.identity:
            return False  # NB: someone wrote the Lease after us (or we never held it): nothing of ours to give up
        failure: BaseException | None = None
        for _ in range(RELEASE_ATTEMPTS):
            try:
                current = await self.store.get(KIND, s.name, s.namespace)
                record = LeaseRecord.from_object(current)
                if record.holder != s.identity:
                    return False
                stamp = microtime()
                # Like client-go's release: no holder, a 1 s duration, the transition count kept.
                empty = LeaseRecord("", 1, stamp, stamp, record.transitions)
                await self.store.update(self._object(empty, current))
            except Conflict as exc:  # NB: a renewal we stopped waiting for may land after our read: read again
                failure = exc
                continue
            except (SpiderError, trio.ClosedResourceError) as exc:
                failure = exc
                break
            self._observe(empty, trio.current_time())
            log.info("%s: released Lease %s", s.identity, self._where())
            return True
        log.warning("%s: could not release Lease %s: %s", s.identity, self._where(), failure)
        return False

    def _observe(self, record: LeaseRecord, now: float) -> None:
        self.observed = record
        self._observed_at = now

    def _object(self, record: LeaseRecord, current: Obj | None = None) -> Obj:
        if current is None:
            return {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "metadata": {"name": self.settings.name, "namespace": self.settings.namespace},
                "spec": record.to_spec(),
            }
        # NB: keep the stored metadata (resourceVersion guards the write; labels and owners survive).
        return {**current, "spec": record.to_spec()}

    def _where(self) -> str:
        return f"{self.settings.namespace}/{self.settings.name}"
