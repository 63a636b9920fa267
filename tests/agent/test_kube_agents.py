"""Agents on many nodes meeting at one (fake) Kubernetes API server, as on a cluster: ``spider agent
--kubeconfig`` processes with different node names, ADDs through the installed shim, optimistic concurrency
on the pool's status as the only coordination; and a writer that always wins, so that conflicts outlast the
pool actor's time budget and ADD reports CNI code 11."""

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
from actors.stores.kube import KubeStore
from actors.tools.manifests import apply
from tests.fakeapi import FakeApiServer, ServedInThread, served_in_thread
from tests.support import ROOT, AgentProcess, cni_env, installed_shim, netconf, pod_args, pool_object, short_tmp

# 10.30.0.1 - 10.30.1.44 is exactly 300 addresses inside 10.30.0.0/23 (no network, broadcast or gateway).
POOL = pool_object("shared", "10.30.0.0/23", ["10.30.0.1-10.30.1.44"])


class KubeCluster:
    """A fake API server in a thread, agent processes using it through a kubeconfig, and the shim."""

    def __init__(self, d: Path, api: ServedInThread, nodes: int, *extra: str) -> None:
        self.dir, self.api = d, api
        self.kubeconfig = api.server.kubeconfig(d / "kubeconfig", token="agent")
        self.shim = installed_shim(d / "bin")
        flags = ("--kubeconfig", str(self.kubeconfig), *extra)
        self.agents = [
            # NB: --store names a file no agent opens: with --kubeconfig the objects live on the API server
            AgentProcess(d / "unused.db", d / f"a{i}.sock", f"node-{i}", d / f"a{i}.log", flags)
            for i in range(nodes)
        ]

    def start(self) -> None:
        for a in self.agents:
            a.start()

    def stop(self) -> None:
        for a in self.agents:
            if a.proc is not None:
                a.stop()

    async def store(self) -> KubeStore:
        return await KubeStore.open(self.kubeconfig)

    async def shim_call(self, command: str, n: int, limiter: trio.CapacityLimiter) -> tuple[int, Any]:
        """One plugin exec for pod ``n`` on the agent of its node."""
        agent = self.agents[n % len(self.agents)]
        env = cni_env(command, f"ctr-{n}", "eth0", pod_args(f"pod-{n}", f"uid-{n}"))
        conf = netconf(agent.socket_path, default_ipv4_ippool=[POOL["metadata"]["name"]])
        async with limiter:
            done = await trio.run_process(
                [str(self.shim)], stdin=json.dumps(conf).encode(), env=env, capture_stdout=True, check=False
            )
        out = done.stdout.strip()
        return done.returncode, (json.loads(out) if out else None)

    async def burst(self, command: str, pods: range, concurrency: int) -> dict[int, tuple[int, Any]]:
        limiter = trio.CapacityLimiter(concurrency)
        results: dict[int, tuple[int, Any]] = {}

        async def one(n: int) -> None:
            results[n] = await self.shim_call(command, n, limiter)

        async with trio.open_nursery() as nursery:
            for n in pods:
                nursery.start_soon(one, n)
        return results


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> Iterator[KubeCluster]:
    nodes, *extra = request.param
    with short_tmp() as d, served_in_thread(FakeApiServer(tokens={"agent"})) as api:
        c = KubeCluster(d, api, nodes, *extra)
        try:
            yield c
        finally:
            c.stop()


async def seed(cluster: KubeCluster) -> None:
    store = await cluster.store()
    try:
        await apply(store, dict(POOL))
    finally:
        await store.aclose()


def spider_check(cluster: KubeCluster) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "actors", "check", "--kubeconfig", str(cluster.kubeconfig)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.parametrize("cluster", [(3,)], indirect=True)
async def test_three_agents_on_one_api_server_hand_out_each_address_once(cluster: KubeCluster) -> None:
    await seed(cluster)
    await trio.to_thread.run_sync(cluster.start)
    with trio.fail_after(300):
        added = await cluster.burst("ADD", range(300), concurrency=60)
    failed = {n: r for n, r in added.items() if r[0] != 0}
    assert not failed, list(failed.items())[:3]
    addresses = [r[1]["ips"][0]["address"] for r in added.values()]
    assert len(addresses) == 300
    assert len(set(addresses)) == 300
    conflicts = await trio.to_thread.run_sync(cluster.api.call, lambda: cluster.api.server.answers[409])
    assert conflicts > 0, "the agents never raced for the pool; nothing was tested"

    with trio.fail_after(60):
        code, error = await cluster.shim_call("ADD", 300, trio.CapacityLimiter(1))
    assert code == 1
    assert error is not None
    assert error["code"] == 100  # the pool is exhausted, cleanly

    store = await cluster.store()
    try:
        status = (await store.get("SpiderIPPool", "shared"))["status"]
        records = json.loads(status["allocatedIPs"])
        assert status["allocatedIPCount"] == 300
        assert sorted(r["podUid"] for r in records.values()) == sorted(f"uid-{n}" for n in range(300))
        assert {r["node"] for r in records.values()} == {"node-0", "node-1", "node-2"}
        assert len((await store.list("SpiderEndpoint")).items) == 300
    finally:
        await store.aclose()
    checked = await trio.to_thread.run_sync(spider_check, cluster)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    with trio.fail_after(300):
        deleted = await cluster.burst("DEL", range(300), concurrency=60)
    assert all(code == 0 for code, _ in deleted.values())
    store = await cluster.store()
    try:
        status = (await store.get("SpiderIPPool", "shared"))["status"]
        assert status["allocatedIPCount"] == 0
        assert (await store.list("SpiderEndpoint")).items == []
        assert (await check_store(store)).consistent
    finally:
        await store.aclose()


@pytest.mark.parametrize("cluster", [(1, "--conflict-budget", "0.5")], indirect=True)
async def test_a_writer_that_always_wins_makes_add_fail_with_code_11_after_the_budget(cluster: KubeCluster) -> None:
    await seed(cluster)
    await trio.to_thread.run_sync(cluster.start)
    server = cluster.api.server
    # Before every write to the pool's status arrives, another writer updates the pool: every write conflicts.
    await trio.to_thread.run_sync(cluster.api.call, server.cluster.interfere.add, ("spiderippools", "shared"))
    puts_before = len(server.log)
    with trio.fail_after(60):
        start = trio.current_time()
        code, error = await cluster.shim_call("ADD", 1, trio.CapacityLimiter(1))
        elapsed = trio.current_time() - start
    assert code == 1
    assert error is not None
    assert error["code"] == 11, error
    assert "losing races" in error["msg"] + error.get("details", "")
    assert 0.25 <= elapsed < 5  # the actor gives up when its next backoff would overrun the 0.5 s budget
    status_writes = [t for m, t in server.log[puts_before:] if m == "PUT" and t.endswith("/shared/status")]
    assert len(status_writes) >= 3, "conflicts are retried within the budget"
    store = await cluster.store()
    try:
        status = (await store.get("SpiderIPPool", "shared")).get("status") or {}
        assert "uid-1" not in status.get("allocatedIPs", "")  # nothing was half-written
    finally:
        await store.aclose()

    # The other writer stops: the runtime's retry of the same ADD succeeds.
    await trio.to_thread.run_sync(cluster.api.call, server.cluster.interfere.clear)
    with trio.fail_after(60):
        code, result = await cluster.shim_call("ADD", 1, trio.CapacityLimiter(1))
    assert code == 0, result
    assert result["ips"][0]["address"].startswith("10.30.")
