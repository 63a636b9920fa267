"""What the IPAM service measures of its own requests: counts, failures by kind, durations, queue waits.

Owns ``IpamMeter`` (one per ``IpamService``): plain counters and running duration records that the metrics
(``actors.servers.metrics``, the only module that speaks Prometheus) read when they are scraped, so nothing
here knows any metrics library.  Each ADD and each DEL is measured once (``OperationMeter.measure``), and each
pool request's wait in its PoolActor's mailbox (Spiderpool's "limit" queue: the time before the pool's one
writer takes it into a batch) is recorded by the actor (``IpamMeter.queued``, ``PoolRegistry.on_wait``).

Failures are counted in Spiderpool's buckets (reference §2.15, §8.1; ``error_bucket``): a request's wrong
input counts as ``retries_exhausted``, as Spiderpool's ``gatherIPAMAllocationErrMetric`` counts it.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator
from contextlib import contextmanager

import attrs
import trio

from actors.ipam.pool import Allocate, PoolMsg, Release, ReleaseIPs
from spider.errors import InvalidInput, NoAvailablePool, PoolExhausted, PoolNotFound, PoolTooLarge, StaleWrite

DURATION_BUCKETS = (0.1, 0.3, 0.5, 1.0, 3.0, 5.0, 7.0, 10.0, 15.0)
"""Upper bounds (seconds) of every duration histogram: Spiderpool's, for all ``spiderpool_*`` histograms."""

INTERNAL = "internal"
NO_AVAILABLE_POOL = "no_available_pool"
RETRIES_EXHAUSTED = "retries_exhausted"
IP_USED_OUT = "ip_used_out"
ALLOCATION_ERRORS = (INTERNAL, NO_AVAILABLE_POOL, RETRIES_EXHAUSTED, IP_USED_OUT)
"""Spiderpool's allocation error buckets (``spiderpool_ipam_allocation_err_<bucket>_counts``)."""
RELEASE_ERRORS = (INTERNAL, RETRIES_EXHAUSTED)
"""Spiderpool's release error buckets (``spiderpool_ipam_release_err_<bucket>_counts``)."""


def error_bucket(exc: BaseException) -> str:
    """Spiderpool's error bucket of a failed request.

    ``retries_exhausted``: a pool write that kept losing races (``StaleWrite``, Spiderpool's
    ``ErrRetriesExhausted``) and wrong input (``InvalidInput``, ``ErrWrongInput``, counted there too);
    ``no_available_pool``: no pool fits the pod or a named pool does not exist (``ErrNoAvailablePool``);
    ``ip_used_out``: the pool is full or its records at their size cap (``ErrIPUsedOut``); anything else:
    ``internal``.
    """
    if isinstance(exc, StaleWrite | InvalidInput):
        return RETRIES_EXHAUSTED
    if isinstance(exc, NoAvailablePool | PoolNotFound):
        return NO_AVAILABLE_POOL
    if isinstance(exc, PoolExhausted | PoolTooLarge):
        return IP_USED_OUT
    return INTERNAL


@attrs.define
class Latency:
    """Durations seen so far: how many, their sum, the least, the most, the latest and a count per bucket."""

    bounds: tuple[float, ...] = DURATION_BUCKETS
    count: int = 0
    total: float = 0.0
    least: float = math.nan
    most: float = math.nan
    latest: float = math.nan
    per_bucket: list[int] = attrs.field()
    """Durations per bucket, not cumulative: ``per_bucket[i]`` are those in ``(bounds[i-1], bounds[i]]``, the
    last entry those over every bound."""

    @per_bucket.default
    def _empty(self) -> list[int]:
        return [0] * (len(self.bounds) + 1)

    def observe(self, seconds: float) -> None:
        """Record one duration."""
        self.count += 1
        self.total += seconds
        self.least = seconds if self.count == 1 else min(self.least, seconds)
        self.most = seconds if self.count == 1 else max(self.most, seconds)
        self.latest = seconds
        self.per_bucket[bisect.bisect_left(self.bounds, seconds)] += 1

    @property
    def average(self) -> float:
        """The mean duration; NaN before the first."""
        return self.total / self.count if self.count else math.nan

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, durations at or under it)`` per bound, then ``(inf, count)``: a histogram's buckets."""
        out = []
        running = 0
        for bound, n in zip((*self.bounds, math.inf), self.per_bucket, strict=True):
            running += n
            out.append((bound, running))
        return out


@attrs.define
class OperationMeter:
    """One kind of request (ADD or DEL): how many, how many failed and why, how long they took and queued."""

    buckets: tuple[str, ...] = ALLOCATION_ERRORS
    total: int = 0
    failures: int = 0
    errors: dict[str, int] = attrs.field()
    """Failures per Spiderpool bucket (``error_bucket``); a bucket not in ``buckets`` counts as ``internal``."""
    duration: Latency = attrs.field(factory=Latency)
    queued: Latency = attrs.field(factory=Latency)
    """Each pool request's wait in its actor's mailbox (Spiderpool's ``*_limit_duration_seconds``)."""

    @errors.default
    def _no_errors(self) -> dict[str, int]:
        return dict.fromkeys(self.buckets, 0)

    @contextmanager
    def measure(self) -> Iterator[None]:
        """Count one request, time it, and count its failure by bucket when it raises (a cancelled request is
        timed, not counted as failed: the process is stopping or the client gave up)."""
        started = trio.current_time()
        self.total += 1
        try:
            yield
        except Exception as exc:
            self.failures += 1
            bucket = error_bucket(exc)
            bucket = bucket if bucket in self.errors else INTERNAL
            self.errors[bucket] += 1
            raise
        finally:
            self.duration.observe(trio.current_time() - started)


@attrs.define
class IpamMeter:
    """What one IPAM service measured: its ADDs, its DELs, its waits for an auto-created pool."""

    allocation: OperationMeter = attrs.field(factory=lambda: OperationMeter(ALLOCATION_ERRORS))
    release: OperationMeter = attrs.field(factory=lambda: OperationMeter(RELEASE_ERRORS))
    auto_pool_waits: int = 0
    """ADDs that waited for a SpiderSubnet's auto-created pool (``spiderpool_debug_auto_pool_waited_for_available
    _counts``): counted by the auto-pool lookup when it has to wait."""

    def auto_pool_waited(self) -> None:
        """An ADD's auto-pool lookup did not find its pool ready at the first look and waits (``AutoPools.on_wait``)."""
        self.auto_pool_waits += 1

    def queued(self, msg: PoolMsg, seconds: float) -> None:
        """A pool request waited ``seconds`` in its actor's mailbox (``PoolRegistry.on_wait``)."""
        if isinstance(msg, Allocate):
            self.allocation.queued.observe(seconds)
        elif isinstance(msg, Release | ReleaseIPs):
            self.release.queued.observe(seconds)
