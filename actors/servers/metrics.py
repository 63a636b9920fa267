"""``GET /metrics``: the agent's (port 5711) and the controller's (port 5721) Prometheus metrics.

Owns the metrics' names, types, labels and buckets, and their TCP server; the only module that imports
``prometheus_client``.  Switched as Spiderpool switches them (reference §8, §12.2): served only when
``SPIDERPOOL_ENABLED_METRIC`` is true (``--metrics``), the ``spiderpool_debug_*`` ones only with
``SPIDERPOOL_ENABLED_DEBUG_METRIC`` (``--debug-metrics``); bound like the health server, to ``$POD_IP`` when
set, else every address.  Served through ``actors.servers.httpserver``, so a hostile client is answered and
the port serves on.

Every value is read when scraped from counters the processes keep anyway (pull, not push): the IPAM service's
meter (``actors.ipam.metering``: counts, failures by Spiderpool's error buckets, durations, queue waits), the
pool actors' ``PoolStatistics``, the forwarder's and the pool host's counters, the reconciler's cache of pools
and subnets, and the GC's counters.  Spiderpool's names (§8.1, snake_case as documented; counters get
``_total`` in the exposition) and histogram buckets (0.1 … 15 s):

- agent: ``spiderpool_ipam_{allocation,release}_counts``, ``…_failure_counts``,
  ``…_update_ippool_conflict_counts``, ``…_err_<bucket>_counts``, ``…_{average,max,min,latest}_duration_seconds``
  and ``…_duration_seconds`` (histogram), the same for ``…_limit_duration_seconds`` (a pool request's wait in
  its PoolActor's mailbox, our limiter); debug: ``spiderpool_debug_auto_pool_waited_for_available_counts``;
- controller: ``spiderpool_ip_gc_counts``, ``spiderpool_ip_gc_failure_counts``, while leading
  ``spiderpool_total_{ippool,subnet}_counts`` (from the reconciler's informer cache, so always current) and in
  debug ``spiderpool_debug_ippool_{total,available}_ip_counts{SpiderIPPool}`` and
  ``spiderpool_debug_subnet_{ippool,total_ip,available_ip}_counts{SpiderSubnet}`` (gauges, as documented);
  the conflict counters of the pools it hosts.
- ours (``spider_*``): per pool the group commit's ``spider_pool_requests``, ``…_batches``, ``…_writes``,
  ``…_write_conflicts`` counters and ``spider_pool_largest_batch``; the agent's forwarding to the pool host
  (``spider_pool_host_forwarded_requests``, ``…_forwarded_looks``, ``…_forward_calls``,
  ``…_fallback_requests``), the pool host's
  ``spider_pool_host_batches`` and ``…_refused``; the GC's ``spider_gc_released``, ``…_failures``,
  ``…_scans``, ``…_outdated_endpoints_dropped``.

Other parts of the agent add families without importing this library (RDMA: ``AgentMetrics.add_source``): a
source is a function returning samples (``name``, ``documentation``, ``type`` "counter" or "gauge",
``labels``, ``value``), turned into families at each scrape.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

import attrs
import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from actors.ipam.metering import ALLOCATION_ERRORS, RELEASE_ERRORS, Latency, OperationMeter
from actors.ipam.pool import PoolRegistry
from actors.ipam.remote import PoolForwarder
from actors.servers.agent_api import AgentApi
from actors.servers.httpserver import GET_BODY, READ_TIMEOUT, HttpServer, Request, Response, bound_port, json_response
from actors.servers.pool_host import PoolHost
from actors.stores.port import Obj

log = logging.getLogger(__name__)

AGENT_PORT = 5711
"""The agent's metrics port (``SPIDERPOOL_METRIC_HTTP_PORT``)."""
CONTROLLER_PORT = 5721
"""The controller's metrics port."""
PATH = "/metrics"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The text exposition format every Prometheus reads (our names need none of 1.0.0's escaping)."""
ENABLED_ENV = "SPIDERPOOL_ENABLED_METRIC"
DEBUG_ENV = "SPIDERPOOL_ENABLED_DEBUG_METRIC"
RDMA_ENV = "SPIDERPOOL_ENABLED_RDMA_METRIC"
PORT_ENV = "SPIDERPOOL_METRIC_HTTP_PORT"
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
"""The names every Prometheus reads in the text format (newer clients would accept more, quoted)."""
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
"""What Go's ``strconv.ParseBool`` takes for true (Spiderpool reads its switches with it)."""


def env_flag(value: str | None) -> bool:
    """Whether an environment switch is on, read as Spiderpool reads it (``true``, ``1``, ``t``, …)."""
    return (value or "").strip() in _TRUE


def default_host(environ: Mapping[str, str] | None = None) -> str | None:
    """``$POD_IP`` when set (the downward API), else ``None``: every address, as the health servers bind."""
    env = os.environ if environ is None else environ
    return env.get("POD_IP") or None


@attrs.frozen
class MetricsSettings:
    """Whether and where ``GET /metrics`` is served."""

    enabled: bool = False
    """Serve it (``SPIDERPOOL_ENABLED_METRIC``; off by default, as Spiderpool)."""
    debug: bool = False
    """Add the ``spiderpool_debug_*`` metrics (``SPIDERPOOL_ENABLED_DEBUG_METRIC``)."""
    host: str | None = attrs.field(factory=default_host)
    """``$POD_IP`` when set; ``None`` binds every address."""
    port: int = AGENT_PORT
    read_timeout: float = READ_TIMEOUT
    """Seconds a scraper may take to send one request; an idle connection is closed after it."""


class Sample(Protocol):
    """One value of a family another part of the process exports (an RDMA counter of one interface)."""

    @property
    def name(self) -> str: ...
    @property
    def documentation(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def labels(self) -> Mapping[str, str]: ...
    @property
    def value(self) -> float: ...


SampleSource = Callable[[], Iterable[Sample]]
"""A function returning the current samples of some families; called at each scrape."""


def sample_families(samples: Iterable[Sample]) -> Iterator[Metric]:
    """Families of samples grouped by name; a family's labels are the union of its samples' (missing: "").

    A counter's name may end in ``_total`` or not: the exposition has it once either way.  A family that is not
    a valid metric (a bad name, mixed types) is logged and left out; the others are served.
    """
    grouped: dict[str, list[Sample]] = {}
    for sample in samples:
        grouped.setdefault(sample.name, []).append(sample)
    for name, group in grouped.items():
        kinds = {s.type for s in group}
        try:
            if len(kinds) != 1 or not kinds <= {"counter", "gauge"}:
                raise ValueError(f"samples of types {sorted(kinds)}; want all 'counter' or all 'gauge'")
            labels = sorted({key for s in group for key in s.labels})
            if not _METRIC_NAME.fullmatch(name):
                raise ValueError("not a metric name")
            if bad := [key for key in labels if not _LABEL_NAME.fullmatch(key) or key.startswith("__")]:
                raise ValueError(f"not label names: {bad}")
            family: CounterMetricFamily | GaugeMetricFamily
            if kinds == {"counter"}:
                family = CounterMetricFamily(name, group[0].documentation, labels=labels)
            else:
                family = GaugeMetricFamily(name, group[0].documentation, labels=labels)
            for s in group:
                family.add_metric([str(s.labels.get(key, "")) for key in labels], float(s.value))
        except (ValueError, TypeError) as exc:
            log.warning("metrics: family %r left out of the scrape: %s", name, exc)
            continue
        yield family


class _Families:
    """A prometheus ``Collector`` that asks a function for its families at each scrape."""

    def __init__(self, families: Callable[[], Iterable[Metric]]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        """The families as they are now."""
        return list(self._families())


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _histogram(name: str, documentation: str, latency: Latency) -> HistogramMetricFamily:
    buckets = [("+Inf" if bound == math.inf else repr(float(bound)), float(n)) for bound, n in latency.cumulative()]
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=latency.total)


def _running(prefix: str, what: str, latency: Latency) -> Iterator[Metric]:
    """The ``{average,max,min,latest}`` gauges of a duration (none before the first), then its histogram."""
    if latency.count:
        yield _gauge(f"{prefix}_average_{what}", f"mean of {what}", latency.average)
        yield _gauge(f"{prefix}_max_{what}", f"longest of {what}", latency.most)
        yield _gauge(f"{prefix}_min_{what}", f"shortest of {what}", latency.least)
        yield _gauge(f"{prefix}_latest_{what}", f"last of {what}", latency.latest)
    yield _histogram(f"{prefix}_{what}", what.replace("_", " "), latency)


def operation_families(verb: str, meter: OperationMeter, buckets: tuple[str, ...], conflicts: int) -> Iterator[Metric]:
    """Spiderpool's ``spiderpool_ipam_<verb>_*`` families of one kind of request (``allocation``, ``release``)."""
    prefix = f"spiderpool_ipam_{verb}"
    yield _counter(f"{prefix}_counts", f"IPAM {verb} requests", meter.total)
    yield _counter(f"{prefix}_failure_counts", f"IPAM {verb} requests that failed", meter.failures)
    yield _counter(
        f"{prefix}_update_ippool_conflict_counts", f"IPPool status writes of {verb}s that lost a race", conflicts
    )
    for bucket in buckets:
        yield _counter(f"{prefix}_err_{bucket}_counts", f"IPAM {verb} failures: {bucket}", meter.errors[bucket])
    yield from _running(prefix, "duration_seconds", meter.duration)
    yield from _running(prefix, "limit_duration_seconds", meter.queued)


def pool_families(statistics: Mapping[str, Mapping[str, int]]) -> Iterator[Metric]:
    """Ours: the group commit of each pool actor of this process (``PoolStatistics``), labelled ``pool``."""
    counters = {
        "requests": ("spider_pool_requests", "pool requests served by this process's actor"),
        "batches": ("spider_pool_batches", "group commits (batches of requests) of the pool's actor"),
        "writes": ("spider_pool_writes", "pool status writes"),
        "conflicts": ("spider_pool_write_conflicts", "pool status writes that lost a race and were retried"),
        "looks": ("spider_pool_looks", "ADDs' last looks the pool's actor answered"),
        "version_reads": ("spider_pool_version_reads", "reads of the pool's version that answered forwarded looks"),
    }
    for key, (name, documentation) in counters.items():
        family = CounterMetricFamily(name, documentation, labels=["pool"])
        for pool, stats in sorted(statistics.items()):
            family.add_metric([pool], stats.get(key, 0))
        yield family
    largest = GaugeMetricFamily("spider_pool_largest_batch", "most requests in one group commit", labels=["pool"])
    for pool, stats in sorted(statistics.items()):
        largest.add_metric([pool], stats.get("largest_batch", 0))
    yield largest


def _summed(statistics: Mapping[str, Mapping[str, int]], key: str) -> int:
    return sum(stats.get(key, 0) for stats in statistics.values())


class AgentMetrics:
    """The agent's metrics, read from its API's IPAM service and pool actors at each scrape."""

    def __init__(self, api: AgentApi, *, debug: bool = False) -> None:
        self.api = api
        self.debug = debug
        self.registry = CollectorRegistry()
        self._sources: list[SampleSource] = []
        self.registry.register(_Families(self.families))

    def add_source(self, source: SampleSource) -> None:
        """Serve the samples ``source`` returns at each scrape too (RDMA counters); a source that fails is
        logged and skipped for that scrape."""
        self._sources.append(source)

    def families(self) -> Iterator[Metric]:
        """Every family, as of now."""
        ipam = self.api.ipam
        pools = ipam.pools.statistics()
        meter = ipam.meter
        yield from operation_families(
            "allocation", meter.allocation, ALLOCATION_ERRORS, _summed(pools, "allocation_conflicts")
        )
        yield from operation_families("release", meter.release, RELEASE_ERRORS, _summed(pools, "release_conflicts"))
        if self.debug:
            yield _counter(
                "spiderpool_debug_auto_pool_waited_for_available_counts",
                "ADDs that waited for an auto-created IPPool",
                meter.auto_pool_waits,
            )
        yield from pool_families(pools)
        route = ipam.pools.route
        if isinstance(route, PoolForwarder):
            stats = route.stats
            yield _counter("spider_pool_host_forwarded_requests", "pool requests sent to the pool host", stats.requests)
            yield _counter("spider_pool_host_forwarded_looks", "ADDs' last looks the pool host answered", stats.looks)
            yield _counter("spider_pool_host_forward_calls", "HTTP calls to the pool host", stats.calls)
            yield _counter(
                "spider_pool_host_fallback_requests",
                "pool requests served by this agent because the pool host did not",
                stats.fallback,
            )
        for source in self._sources:
            try:
                samples = list(source())
            except Exception:  # one broken source must not cost the scrape
                log.exception("metrics: a sample source failed; its families are left out of this scrape")
                continue
            yield from sample_families(samples)

    def render(self) -> bytes:
        """The exposition text of every family."""
        return generate_latest(self.registry)


class CachedObjects(Protocol):
    """What the controller's reconciler holds: the pools and subnets as last listed and watched."""

    def cached(self, kind: str) -> list[Obj]:
        """The cached objects of one kind."""


class ControllerView(Protocol):
    """What the controller's metrics read of ``actors.controller.main.Controller`` (which may not be imported
    here: it stands above the servers).  Its GC (``Controller.gc``, with ``released``, ``failures``, ``scans``,
    ``outdated_dropped``) is read with defaults, so a controller without one exports zeros."""

    @property
    def pools(self) -> PoolRegistry | None: ...
    @property
    def pool_host(self) -> PoolHost | None: ...
    @property
    def reconciler(self) -> CachedObjects | None: ...


def _status(obj: Obj) -> dict[str, Any]:
    status = obj.get("status")
    return status if isinstance(status, dict) else {}


def _count(status: Mapping[str, Any], key: str) -> int:
    value = status.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _controlled_pools(status: Mapping[str, Any]) -> int:
    raw = status.get("controlledIPPools")
    try:
        data = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return 0
    return len(data) if isinstance(data, dict) else 0


class ControllerMetrics:
    """The controller's metrics: GC, pool and subnet totals (while leading), the pool host and hosted pools."""

    def __init__(self, controller: ControllerView, *, debug: bool = False) -> None:
        self.controller = controller
        self.debug = debug
        self.registry = CollectorRegistry()
        self.registry.register(_Families(self.families))

    def families(self) -> Iterator[Metric]:
        """Every family, as of now."""
        gc = getattr(self.controller, "gc", None)
        released, failures, scans = (int(getattr(gc, key, 0) or 0) for key in ("released", "failures", "scans"))
        yield _counter("spiderpool_ip_gc_counts", "addresses released by the IP garbage collector", released)
        yield _counter("spiderpool_ip_gc_failure_counts", "IP garbage collector releases that failed", failures)
        yield _counter("spider_gc_released", "addresses released by the IP garbage collector", released)
        yield _counter("spider_gc_failures", "IP garbage collector releases that failed", failures)
        yield _counter("spider_gc_scans", "scans of every pool by the IP garbage collector", scans)
        yield _counter(
            "spider_gc_outdated_endpoints_dropped",
            "SpiderEndpoints no pool record named, dropped by the IP garbage collector",
            int(getattr(gc, "outdated_dropped", 0) or 0),
        )
        reconciler = self.controller.reconciler
        if reconciler is not None:  # NB: only the leader keeps the informers: a standby says nothing
            pools = reconciler.cached("SpiderIPPool")
            subnets = reconciler.cached("SpiderSubnet")
            yield _gauge("spiderpool_total_ippool_counts", "SpiderIPPools in the cluster", len(pools))
            yield _gauge("spiderpool_total_subnet_counts", "SpiderSubnets in the cluster", len(subnets))
            if self.debug:
                yield from _debug_families(pools, subnets)
        registry = self.controller.pools
        hosted = registry.statistics() if registry is not None else {}
        yield _counter(
            "spiderpool_ipam_allocation_update_ippool_conflict_counts",
            "IPPool status writes of allocations that lost a race (pools hosted here)",
            _summed(hosted, "allocation_conflicts"),
        )
        yield _counter(
            "spiderpool_ipam_release_update_ippool_conflict_counts",
            "IPPool status writes of releases that lost a race (pools hosted here)",
            _summed(hosted, "release_conflicts"),
        )
        yield from pool_families(hosted)
        host = self.controller.pool_host
        if host is not None:
            yield _counter("spider_pool_host_batches", "batches the pool host served", host.batches)
            yield _counter("spider_pool_host_refused", "batches the pool host refused (401, 403, 421)", host.refused)

    def render(self) -> bytes:
        """The exposition text of every family."""
        return generate_latest(self.registry)


def _debug_families(pools: list[Obj], subnets: list[Obj]) -> Iterator[Metric]:
    """Spiderpool's debug gauges per pool and per subnet, from their status counts."""
    pool_total = GaugeMetricFamily(
        "spiderpool_debug_ippool_total_ip_counts", "IPs of the pool", labels=["SpiderIPPool"]
    )
    pool_free = GaugeMetricFamily(
        "spiderpool_debug_ippool_available_ip_counts", "IPs of the pool not allocated", labels=["SpiderIPPool"]
    )
    for pool in pools:
        name, status = str(pool.get("metadata", {}).get("name", "")), _status(pool)
        total = _count(status, "totalIPCount")
        pool_total.add_metric([name], total)
        pool_free.add_metric([name], max(total - _count(status, "allocatedIPCount"), 0))
    subnet_pools = GaugeMetricFamily(
        "spiderpool_debug_subnet_ippool_counts", "IPPools of the subnet", labels=["SpiderSubnet"]
    )
    subnet_total = GaugeMetricFamily(
        "spiderpool_debug_subnet_total_ip_counts", "IPs of the subnet", labels=["SpiderSubnet"]
    )
    subnet_free = GaugeMetricFamily(
        "spiderpool_debug_subnet_available_ip_counts", "IPs of the subnet no IPPool holds", labels=["SpiderSubnet"]
    )
    for subnet in subnets:
        name, status = str(subnet.get("metadata", {}).get("name", "")), _status(subnet)
        total = _count(status, "totalIPCount")
        subnet_pools.add_metric([name], _controlled_pools(status))
        subnet_total.add_metric([name], total)
        subnet_free.add_metric([name], max(total - _count(status, "allocatedIPCount"), 0))
    yield from (pool_total, pool_free, subnet_pools, subnet_total, subnet_free)


@attrs.define(eq=False)
class MetricsServer:
    """Serves ``GET /metrics`` on TCP; run with ``await nursery.start(server.serve)``."""

    render: Callable[[], bytes]
    settings: MetricsSettings = attrs.field(factory=MetricsSettings)
    name: str = "metrics"
    port: int | None = None
    """The bound port, once serving (useful after binding port 0)."""
    scrapes: int = 0
    _server: HttpServer = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._server = HttpServer(self.handle, self.name, read_timeout=self.settings.read_timeout, max_body=GET_BODY)

    @property
    def server(self) -> HttpServer:
        """The HTTP server (its counters say what it survived)."""
        return self._server

    async def handle(self, request: Request) -> Response:
        """The HTTP handler: the exposition on ``GET /metrics``, 404 or 405 otherwise."""
        if request.path != PATH:
            return json_response(404, f"no route for {request.method} {request.path}")
        if request.method != "GET":
            return json_response(405, "metrics take GET")
        self.scrapes += 1
        return Response(200, self.render(), content_type=CONTENT_TYPE)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind (``settings.host`` or every address) and serve until cancelled."""
        listeners = await trio.open_tcp_listeners(self.settings.port, host=self.settings.host)
        self.port = bound_port(listeners[0])
        where = self.settings.host or "every address"
        log.info("%s on %s port %d%s", self.name, where, self.port, " (with debug metrics)" * self.settings.debug)
        await self._server.serve(listeners, task_status=task_status)
