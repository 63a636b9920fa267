"""Several agent processes (one per simulated node) sharing one store file, hammered through the real shim:
no address is ever handed out twice, exhaustion is clean, DEL empties the pool, and a SIGKILLed agent loses
nothing that ``spider check`` cannot account for."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from actors.ipam.check import check_store
from actors.stores.sqlite import SqliteStore
from actors.tools.manifests import apply
from spider.endpoint import Endpoint
from tests.support import (
    ROOT,
    AgentProcess,
    cni_env,
    installed_shim,
    netconf,
    pod_args,
    pool_object,
    short_tmp,
)

pytestmark = pytest.mark.slow


class Cluster:
    """N agent processes on one store file, and the installed shim."""

    def __init__(self, d: Path, nodes: int) -> None:
        self.dir = d
        self.store = d / "store.db"
        self.shim = installed_shim(d / "bin")
        self.agents = [AgentProcess(self.store, d / f"a{i}.sock", f"node-{i}", d / f"a{i}.log") for i in range(nodes)]

    def start(self) -> None:
        for a in self.agents:
            a.start()

    def stop(self) -> None:
        for a in self.agents:
            if a.proc is not None:
                a.stop()


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    with short_tmp() as d:
        c = Cluster(d, request.param)
        try:
            yield c
        finally:
            c.stop()


async def seed(store_path: Path, *objs: dict[str, Any]) -> None:
    store = await SqliteStore.open(store_path)
    try:
        for obj in objs:
            await apply(store, obj)
    finally:
        await store.aclose()


async def shim_call(
    cluster: Cluster, command: str, n: int, limiter: trio.CapacityLimiter, agent: int | None = None
) -> tuple[int, dict[str, Any] | None]:
    """One plugin exec for pod ``n`` on its node's agent."""
    a = cluster.agents[(n if agent is None else agent) % len(cluster.agents)]
    env = cni_env(command, f"ctr-{n}", "eth0", pod_args(f"pod-{n}", f"uid-{n}"))
    conf = netconf(a.socket_path, default_ipv4_ippool=["big"])
    async with limiter:
        done = await trio.run_process(
            [str(cluster.shim)], stdin=json.dumps(conf).encode(), env=env, capture_stdout=True, check=False
        )
    out = done.stdout.strip()
    return done.returncode, (json.loads(out) if out else None)


async def burst(cluster: Cluster, command: str, pods: range, concurrency: int) -> dict[int, tuple[int, Any]]:
    limiter = trio.CapacityLimiter(concurrency)
    results: dict[int, tuple[int, Any]] = {}

    async def one(n: int) -> None:
        results[n] = await shim_call(cluster, command, n, limiter)

    async with trio.open_nursery() as nursery:
        for n in pods:
            nursery.start_soon(one, n)
    return results


def run_check(cluster: Cluster, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "actors", "check", "--store", str(cluster.store), *extra],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )


# 10.20.0.1 - 10.20.3.232 is exactly 1000 addresses inside 10.20.0.0/22 (no network, broadcast or gateway).
BIG = pool_object("big", "10.20.0.0/22", ["10.20.0.1-10.20.3.232"])


@pytest.mark.parametrize("cluster", [10], indirect=True)
async def test_ten_agents_hand_out_a_1000_address_pool_exactly_once(cluster: Cluster) -> None:
    await seed(cluster.store, BIG)
    await trio.to_thread.run_sync(cluster.start)
    with trio.fail_after(600):
        added = await burst(cluster, "ADD", range(1000), concurrency=1000)
    failed = {n: r for n, r in added.items() if r[0] != 0}
    assert not failed, list(failed.items())[:3]
    addresses = [r[1]["ips"][0]["address"] for r in added.values() if r[1]]
    assert len(addresses) == 1000
    assert len(set(addresses)) == 1000

    with trio.fail_after(60):
        code, error = await shim_call(cluster, "ADD", 1000, trio.CapacityLimiter(1))
    assert code == 1
    assert error is not None
    assert error["code"] == 100
    assert "exhausted" in error["msg"]

    with trio.fail_after(600):
        deleted = await burst(cluster, "DEL", range(1000), concurrency=1000)
    assert all(code == 0 for code, _ in deleted.values())
    store = await SqliteStore.open(cluster.store)
    try:
        status = (await store.get("SpiderIPPool", "big"))["status"]
        assert status["allocatedIPCount"] == 0
        assert "allocatedIPs" not in status
        assert (await store.list("SpiderEndpoint")).items == []
        report = await check_store(store)
    finally:
        await store.aclose()
    assert report.consistent, report.findings


@pytest.mark.parametrize("cluster", [3], indirect=True)
async def test_a_sigkilled_agent_loses_nothing_that_check_cannot_account_for(cluster: Cluster) -> None:
    await seed(cluster.store, BIG)
    await trio.to_thread.run_sync(cluster.start)
    victim = cluster.agents[0]
    limiter = trio.CapacityLimiter(100)
    results: dict[int, tuple[int, Any]] = {}

    async def one(n: int) -> None:
        results[n] = await shim_call(cluster, "ADD", n, limiter)

    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            for n in range(600):
                nursery.start_soon(one, n)
            await trio.sleep(0.4)  # mid-burst
            await trio.to_thread.run_sync(victim.kill)
    killed = [n for n, r in results.items() if r[0] != 0]
    assert killed, "the kill landed after the burst; nothing was tested"
    assert all(r[1] is not None and r[1]["code"] == 11 for n, r in results.items() if r[0] != 0), (
        "failures must be 'try again'"
    )
    await trio.to_thread.run_sync(victim.start)

    store = await SqliteStore.open(cluster.store)
    try:
        status = (await store.get("SpiderIPPool", "big"))["status"]
        records = json.loads(status.get("allocatedIPs") or "{}")
        held = {rec["podUid"]: ip for ip, rec in records.items()}
        assert len(held) == len(records), "an address record per pod, no pod twice"
        succeeded = {f"uid-{n}": r[1]["ips"][0]["address"].partition("/")[0] for n, r in results.items() if r[0] == 0}
        for uid, ip in succeeded.items():
            assert held.get(uid) == ip, f"{uid} was told {ip} but the pool says {held.get(uid)}"
        report = await check_store(store)
        reclaimable = {f.ip for f in report.of("reclaimable")}
        # Killed after writing the endpoint but before answering: recorded whole, and the retry gets it back.
        recorded = {
            entry_ip.partition("/")[0]: endpoint.uid
            for endpoint in map(Endpoint.from_object, (await store.list("SpiderEndpoint")).items)
            for nic in endpoint.nics
            for _version, _pool, entry_ip in nic.pools()
        }
        unexplained = {ip for uid, ip in held.items() if uid not in succeeded} - reclaimable - set(recorded)
        assert not unexplained
        assert not report.of("held-twice")
        assert not report.of("dangling-endpoint")
    finally:
        await store.aclose()

    # The runtime retries the failed ADDs (same pod, same sandbox): each gets an address, none twice.
    with trio.fail_after(300):
        retried = {n: await shim_call(cluster, "ADD", n, limiter, agent=1) for n in killed}
    assert all(code == 0 for code, _ in retried.values())
    recorded_for = {uid: ip for ip, uid in recorded.items()}
    for n, (_, answer) in retried.items():
        if f"uid-{n}" in recorded_for:  # the retry gets back what was recorded for it
            assert answer["ips"][0]["address"].partition("/")[0] == recorded_for[f"uid-{n}"]
    result = await trio.to_thread.run_sync(run_check, cluster, "--reclaim")
    assert result.returncode == 0, result.stdout + result.stderr
    store = await SqliteStore.open(cluster.store)
    try:
        report = await check_store(store)
        status = (await store.get("SpiderIPPool", "big"))["status"]
    finally:
        await store.aclose()
    assert report.consistent, report.findings
    assert status["allocatedIPCount"] == 600
