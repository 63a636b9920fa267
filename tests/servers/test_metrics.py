"""The agent's ``GET /metrics`` (port 5711): Spiderpool's names, types and buckets, counted from real ADDs and
DELs through the agent API; the switches; the sample sources (RDMA); and the port under hostile clients."""

from __future__ import annotations

import http.client
import math
import random
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from actors.agent import AgentSettings, open_agent
from actors.ipam.autopools import ActorRanges, AutoPoolSettings
from actors.ipam.metering import DURATION_BUCKETS, Latency, OperationMeter, error_bucket
from actors.ipam.remote import HostLocator, PoolForwarder
from actors.ipam.service import IpamSettings
from actors.servers.agent_api import AgentApi
from actors.servers.httpserver import MAX_BODY
from actors.servers.metrics import MetricsServer, MetricsSettings, env_flag, sample_families
from actors.stores.sqlite import SqliteStore
from actors.stores.validating import ValidatingStore
from actors.tools.cli import build_parser
from actors.tools.manifests import apply
from spider.addr import IPSet
from spider.autopool import AppRef, auto_pool_name, auto_pool_object
from spider.errors import (
    ActorUnavailable,
    InvalidInput,
    MalformedRequest,
    NoAvailablePool,
    PoolExhausted,
    PoolNotFound,
    PoolTooLarge,
    StaleWrite,
)
from tests.ipam.test_subnet_agent import app, owner, sub
from tests.ipam.test_subnet_agent import pod as subnet_pod
from tests.ipam.test_subnet_agent import subnet as subnet_object
from tests.servers.test_agent_api import add_args, del_args
from tests.support import exchange, http_call, pool_object, short_tmp

TIMEOUT = 30
POOL = pool_object("m4", "10.7.0.0/24", ["10.7.0.10-10.7.0.11"], gateway="10.7.0.1", default=True)
"""Two addresses: the third ADD fails with the pool used out."""


@attrs.frozen
class Agent:
    api: AgentApi
    port: int
    socket: Path

    async def scrape(self) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        return await scrape(self.port)


def scrape_sync(port: int, path: str = "/metrics") -> tuple[int, str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read().decode()
    finally:
        conn.close()


async def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """``{sample name: {sorted labels: value}}`` of one scrape, parsed by prometheus_client's own parser."""
    status, content_type, text = await trio.to_thread.run_sync(scrape_sync, port)
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def value(samples: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str, **labels: str) -> float:
    return samples[name][tuple(sorted(labels.items()))]


@asynccontextmanager
async def metered_agent(ipam: IpamSettings | None = None, **metrics: Any) -> AsyncIterator[Agent]:
    with short_tmp() as d:
        store = ValidatingStore(await SqliteStore.open(d / "store.db"))
        settings = AgentSettings(
            store_path=d / "store.db",
            socket_path=d / "agent.sock",
            node="node-1",
            grace=1,
            node_actor=False,
            metrics=MetricsSettings(**{"enabled": True, "host": "127.0.0.1", "port": 0, **metrics}),
            ipam=ipam if ipam is not None else IpamSettings(),
        )
        try:
            async with open_agent(settings, store) as api:
                await apply(store, POOL)
                assert api.metrics_port is not None
                yield Agent(api, api.metrics_port, settings.socket_path)
        finally:
            await store.aclose()


async def test_adds_and_dels_through_the_agent_api_are_counted_under_spiderpools_names() -> None:
    with trio.fail_after(TIMEOUT):
        async with metered_agent() as agent:
            path = agent.socket
            for i in range(3):  # the third finds the pool used out
                await http_call(path, "POST", "/v1/ipam/ip", add_args(f"web-{i}", f"uid-{i}", f"c{i}"))
            await http_call(path, "DELETE", "/v1/ipam/ip", del_args("web-0", "uid-0", "c0"))
            got = await agent.scrape()

    assert value(got, "spiderpool_ipam_allocation_counts_total") == 3
    assert value(got, "spiderpool_ipam_allocation_failure_counts_total") == 1
    assert value(got, "spiderpool_ipam_allocation_err_ip_used_out_counts_total") == 1
    for bucket in ("internal", "no_available_pool", "retries_exhausted"):
        assert value(got, f"spiderpool_ipam_allocation_err_{bucket}_counts_total") == 0
    assert value(got, "spiderpool_ipam_allocation_update_ippool_conflict_counts_total") == 0
    assert value(got, "spiderpool_ipam_release_counts_total") == 1
    assert value(got, "spiderpool_ipam_release_failure_counts_total") == 0
    assert value(got, "spiderpool_ipam_allocation_duration_seconds_count") == 3
    assert value(got, "spiderpool_ipam_release_duration_seconds_count") == 1
    les = [dict(labels)["le"] for labels in got["spiderpool_ipam_allocation_duration_seconds_bucket"]]
    assert les == [repr(float(b)) for b in DURATION_BUCKETS] + ["+Inf"]
    assert value(got, "spiderpool_ipam_allocation_duration_seconds_bucket", le="+Inf") == 3
    most = value(got, "spiderpool_ipam_allocation_max_duration_seconds")
    least = value(got, "spiderpool_ipam_allocation_min_duration_seconds")
    assert 0 <= least <= value(got, "spiderpool_ipam_allocation_average_duration_seconds") <= most
    # two successful ADDs and the failed one each queued one request at the pool's actor, the DEL one
    assert value(got, "spiderpool_ipam_allocation_limit_duration_seconds_count") == 3
    assert value(got, "spiderpool_ipam_release_limit_duration_seconds_count") == 1
    assert value(got, "spiderpool_ipam_allocation_latest_limit_duration_seconds") >= 0
    # ours: the group commit of the pool, and no debug metric without the switch
    assert value(got, "spider_pool_requests_total", pool="m4") == 4
    assert value(got, "spider_pool_writes_total", pool="m4") >= 3
    assert value(got, "spider_pool_largest_batch", pool="m4") >= 1
    assert value(got, "spider_pool_looks_total", pool="m4") == 2  # the two ADDs' last looks
    assert value(got, "spider_pool_version_reads_total", pool="m4") == 0  # no look was forwarded to it
    assert "spiderpool_debug_auto_pool_waited_for_available_counts_total" not in got
    assert "spider_pool_host_forwarded_requests_total" not in got  # an embedded store forwards nothing


async def test_an_agent_that_forwards_to_the_pool_host_reports_what_it_sent_and_what_it_served_itself() -> None:
    with trio.fail_after(TIMEOUT):
        async with metered_agent() as agent:
            registry = agent.api.ipam.pools
            forwarder = PoolForwarder(registry, HostLocator(registry.store, "kube-system"))
            forwarder.stats.requests, forwarder.stats.looks, forwarder.stats.calls = 12, 7, 3
            forwarder.stats.fallback = 2
            registry.route = forwarder
            got = await agent.scrape()
    assert value(got, "spider_pool_host_forwarded_requests_total") == 12
    assert value(got, "spider_pool_host_forwarded_looks_total") == 7
    assert value(got, "spider_pool_host_forward_calls_total") == 3
    assert value(got, "spider_pool_host_fallback_requests_total") == 2


@pytest.mark.parametrize(
    ("error", "bucket"),
    [
        (StaleWrite(kind="SpiderIPPool", name="p", sent_version="1"), "retries_exhausted"),
        (InvalidInput(reason="bad routes annotation"), "retries_exhausted"),  # ErrWrongInput counts there too
        (MalformedRequest(reason="not JSON"), "retries_exhausted"),
        (NoAvailablePool(nic="eth0", version=4, reason="none fits"), "no_available_pool"),
        (PoolNotFound(pool="gone"), "no_available_pool"),
        (PoolExhausted(pool="full", capacity=2), "ip_used_out"),
        (PoolTooLarge(pool="big", records=2, limit=1), "ip_used_out"),
        (ActorUnavailable(actor="pool/p"), "internal"),
        (RuntimeError("a bug"), "internal"),
    ],
)
def test_each_error_is_counted_in_spiderpools_bucket(error: BaseException, bucket: str) -> None:
    assert error_bucket(error) == bucket


async def test_a_release_error_without_a_release_bucket_counts_as_internal() -> None:
    meter = OperationMeter(("internal", "retries_exhausted"))
    with pytest.raises(PoolExhausted), meter.measure():
        raise PoolExhausted(pool="p", capacity=1)
    assert (meter.total, meter.failures, meter.errors) == (1, 1, {"internal": 1, "retries_exhausted": 0})


async def test_a_cancelled_request_is_timed_but_not_counted_as_failed() -> None:
    meter = OperationMeter()
    with trio.move_on_after(0.01), meter.measure():
        await trio.sleep_forever()
    assert (meter.total, meter.failures, meter.duration.count) == (1, 0, 1)


def test_a_duration_on_a_bucket_bound_counts_in_that_bucket_and_all_above() -> None:
    latency = Latency()
    for seconds in (0.1, 0.2, 15.0, 99.0):
        latency.observe(seconds)
    buckets = dict(latency.cumulative())
    assert (buckets[0.1], buckets[0.3], buckets[10.0], buckets[15.0], buckets[math.inf]) == (1, 2, 2, 3, 4)
    assert (latency.least, latency.most, latency.latest, latency.count) == (0.1, 99.0, 99.0, 4)
    assert latency.average == pytest.approx(114.3 / 4)


async def test_the_debug_metric_is_served_only_with_its_switch() -> None:
    with trio.fail_after(TIMEOUT):
        async with metered_agent(debug=True) as agent:
            agent.api.ipam.meter.auto_pool_waits += 2
            got = await agent.scrape()
    assert value(got, "spiderpool_debug_auto_pool_waited_for_available_counts_total") == 2


async def test_an_add_that_waits_for_its_auto_pool_counts_once_in_the_debug_metric() -> None:
    fast = IpamSettings(auto_pools=AutoPoolSettings(wait_retries=60, wait_interval=0.02))
    with trio.fail_after(TIMEOUT):
        async with metered_agent(fast, debug=True) as agent:
            store = agent.api.ipam.store
            await apply(store, subnet_object("s4", "10.50.0.0/24", "10.50.0.10-10.50.0.99", "10.50.0.1"))
            deploy = await store.create(app("Deployment", "late", replicas=2))
            rs = app("ReplicaSet", "late-7d4b9", replicas=2)
            rs["metadata"]["ownerReferences"] = [owner(deploy)]
            rs = await store.create(rs)
            uids = [(await store.create(subnet_pod(f"late-{i}", rs, sub("s4"))))["metadata"]["uid"] for i in (1, 2)]
            answers: list[tuple[int, Any, Any]] = []

            async def adding() -> None:
                answers.append(await http_call(agent.socket, "POST", "/v1/ipam/ip", add_args("late-1", uids[0], "c1")))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(adding)
                await trio.sleep(0.2)  # NB: the ADD has looked several times; the controller makes the pool only now
                assert answers == []
                ref = AppRef.from_object(deploy)
                name = auto_pool_name(ref, "eth0", 4)
                ips = await ActorRanges(store).take("s4", name, ref, 2, IPSet(4), IPSet(4))
                subnet_obj = await store.get("SpiderSubnet", "s4")
                await store.create(auto_pool_object(ref, "eth0", 4, subnet_obj, ips.to_strings(), "+0", True))
            assert answers[0][0] == 200, answers
            ready = await http_call(agent.socket, "POST", "/v1/ipam/ip", add_args("late-2", uids[1], "c2"))
            assert ready[0] == 200, ready  # NB: its pool was there at the first look: no wait
            got = await agent.scrape()
    assert value(got, "spiderpool_debug_auto_pool_waited_for_available_counts_total") == 1


async def test_metrics_are_off_unless_switched_on_as_in_spiderpool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_IP", raising=False)
    assert AgentSettings().metrics == MetricsSettings(enabled=False, debug=False, host=None, port=5711)
    with short_tmp() as d, trio.fail_after(TIMEOUT):
        settings = AgentSettings(store_path=d / "s.db", socket_path=d / "a.sock", node_actor=False)
        async with open_agent(settings) as api:
            assert api.metrics is None
            assert api.metrics_port is None


@pytest.mark.parametrize(("raw", "on"), [("true", True), ("1", True), ("T", True), ("", False), ("yes", False)])
def test_the_switches_are_read_as_go_reads_them(raw: str, on: bool) -> None:
    assert env_flag(raw) is on


def test_the_cli_switches_default_to_spiderpools_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPIDERPOOL_ENABLED_DEBUG_METRIC", raising=False)
    monkeypatch.setenv("SPIDERPOOL_ENABLED_METRIC", "true")
    monkeypatch.setenv("SPIDERPOOL_METRIC_HTTP_PORT", "9911")
    monkeypatch.setenv("POD_IP", "10.0.0.7")
    agent = build_parser().parse_args(["agent"])
    assert (agent.metrics, agent.debug_metrics, agent.metrics_port, agent.metrics_host) == (
        True,
        False,
        9911,
        "10.0.0.7",
    )
    controller = build_parser().parse_args(["controller", "--no-metrics", "--debug-metrics"])
    assert (controller.metrics, controller.debug_metrics) == (False, True)
    monkeypatch.delenv("SPIDERPOOL_METRIC_HTTP_PORT")
    monkeypatch.delenv("SPIDERPOOL_ENABLED_METRIC")
    assert build_parser().parse_args(["controller"]).metrics_port == 5721
    assert build_parser().parse_args(["agent"]).metrics is False


# --- sample sources (RDMA) ---------------------------------------------------------------------------------------


@attrs.frozen
class FakeSample:
    """The shape actors.node.rdma gives its samples."""

    name: str
    value: float
    labels: dict[str, str] = attrs.field(factory=dict)
    type: str = "counter"
    documentation: str = "a test counter"


async def test_a_sample_source_is_served_with_each_scrape_and_counters_get_total_once() -> None:
    reads = {"n": 0}

    def rdma() -> Iterable[FakeSample]:
        reads["n"] += 1
        return [
            FakeSample("rdma_rx_write_requests", 5 * reads["n"], {"ifname": "mlx0", "node_name": "n1"}),
            FakeSample("rdma_rx_write_requests", 7, {"ifname": "mlx1", "node_name": "n1", "is_root": "true"}),
            FakeSample("rdma_tx_pause_total", 3, {"priority": "0"}),
            FakeSample("rdma_vport_speed_mbps", 100000, {"ifname": "mlx0"}, type="gauge"),
        ]

    def broken() -> Iterable[FakeSample]:
        raise OSError("rdma tool missing")

    with trio.fail_after(TIMEOUT):
        async with metered_agent() as agent:
            assert agent.api.metrics is not None
            agent.api.metrics.add_source(broken)
            agent.api.metrics.add_source(rdma)
            first = await agent.scrape()
            second = await agent.scrape()

    assert value(first, "rdma_rx_write_requests_total", ifname="mlx0", node_name="n1", is_root="") == 5
    assert value(second, "rdma_rx_write_requests_total", ifname="mlx0", node_name="n1", is_root="") == 10
    assert value(second, "rdma_rx_write_requests_total", ifname="mlx1", node_name="n1", is_root="true") == 7
    assert value(second, "rdma_tx_pause_total", priority="0") == 3
    assert "rdma_tx_pause_total_total" not in second
    assert value(second, "rdma_vport_speed_mbps", ifname="mlx0") == 100000
    assert "spiderpool_ipam_allocation_counts_total" in second  # the broken source cost nothing else


def test_a_family_that_is_not_a_valid_metric_is_left_out_and_the_rest_served() -> None:
    samples = [
        FakeSample("bad name!", 1),
        FakeSample("mixed", 1),
        FakeSample("mixed", 2, {"a": "b"}, type="gauge"),
        FakeSample("bad_label", 1, {"not-a-label": "x"}),
        FakeSample("fine", 1),
    ]
    assert [family.name for family in sample_families(samples)] == ["fine"]


# --- the port under hostile clients -----------------------------------------------------------------------------


async def raw_exchange(port: int, data: bytes) -> bytes:
    return (await exchange("127.0.0.1", port, data, tls=False))[0]


async def test_the_metrics_port_survives_idle_slow_truncated_huge_and_random_clients() -> None:
    served = MetricsServer(
        lambda: b"# fine\n", MetricsSettings(enabled=True, host="127.0.0.1", port=0, read_timeout=0.5)
    )
    rng = random.Random(13)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(served.serve)
            port = served.port
            assert port is not None
            assert await raw_exchange(port, b"") == b""  # idle: closed after the read timeout
            slow = await raw_exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finishes its head
            assert slow.startswith(b"HTTP/1.1 408")
            truncated = await raw_exchange(port, b"GET /metr")  # then nothing: 408 after the read timeout
            assert truncated.startswith(b"HTTP/1.1 408")
            huge = f"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n".encode()
            assert (await raw_exchange(port, huge)).startswith(b"HTTP/1.1 413")
            assert (await raw_exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-A: \xff\xfe\r\n\r\n")).startswith(
                b"HTTP/1.1 200"
            )
            assert (await raw_exchange(port, b"\x00\xff garbage\r\n\r\n")).startswith(b"HTTP/1.1 400")
            answers: list[bytes] = []

            async def junk_client(junk: bytes) -> None:
                answers.append(await raw_exchange(port, junk))

            async with trio.open_nursery() as clients:  # twenty at once
                for _ in range(20):
                    clients.start_soon(junk_client, bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))))
            assert all(answer == b"" or answer.startswith(b"HTTP/1.1 ") for answer in answers)
            post = b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
            assert (await raw_exchange(port, post)).startswith(b"HTTP/1.1 405")
            assert (await raw_exchange(port, b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(b"HTTP/1.1 404")
            status, _, body = await trio.to_thread.run_sync(scrape_sync, port)
            assert (status, body) == (200, "# fine\n")  # and it still serves
            assert served.server.connection_errors == 0
            nursery.cancel_scope.cancel()


async def test_a_head_of_metrics_gets_the_head_of_the_scrape_without_its_body() -> None:
    served = MetricsServer(lambda: b"# fine\n", MetricsSettings(enabled=True, host="127.0.0.1", port=0))
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(served.serve)
            assert served.port is not None
            answer = await raw_exchange(served.port, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            nursery.cancel_scope.cancel()
    assert answer.startswith(b"HTTP/1.1 200")  # NB: once 405, where Spiderpool's promhttp handler answers
    assert b"Content-Length: 7\r\n" in answer
    assert answer.endswith(b"\r\n\r\n")
