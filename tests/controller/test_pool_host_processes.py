"""The pool host with real processes: three ``spider agent`` processes and two ``spider controller`` processes
on the fake API server, a burst of ADDs through the installed plugin, and while it runs the leader is killed,
its pool-host port refuses, both controllers host at once, or the API server restarts.

Whatever happens, safety never depends on the host: no address is handed out twice, every ADD is answered
(an address, or CNI 11 at worst), the pods' DELs leave the pool empty and the store consistent; and what the
host and the agents' fallback did is visible in their ``GET /v1/spider/stats``.

The controllers are the load test's ``ControllerProcess`` with a Pod of their own (``127.0.0.2`` and
``127.0.0.3``, one pool-host port), so the agents find the leader's pool host from the Lease as in a cluster;
the agents are its ``AgentFleet``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from actors.ipam.check import check_store
from actors.stores.port import NotFound, Store
from actors.stores.selection import StoreSettings
from actors.tools.loadtest.fleet import (
    AgentFleet,
    AgentToken,
    ControllerProcess,
    TcpClient,
    forwarded_totals,
    free_port,
    get_json,
    log_tail,
    opened_store,
    request_agent_token,
    start_process,
    supported_flags,
)
from actors.tools.manifests import apply
from tests.controller.support import eventually
from tests.fakeapi import FakeApiServer, ServedInThread, served_in_thread
from tests.support import cni_env, installed_shim, netconf, pod_args, pod_spec, pool_object, run_plugin, short_tmp

pytestmark = pytest.mark.slow

NS = "kube-system"
"""The controllers' namespace: their Lease, Pods and the CA ConfigMap."""
ACCOUNT = "spider-ph-agent"
LEASE = "spider-ph"
POOL = pool_object("burst", "10.60.0.0/24", ["10.60.0.10-10.60.0.129"])  # 120 addresses
ELECTION = ("--lease-duration", "2", "--renew-deadline", "1.5", "--retry-period", "0.2")
NODES = 3
PODS = 45
CONCURRENCY = 6
TIMEOUT = 80


@attrs.define
class Replica(ControllerProcess):
    """One of the two controllers: the load test's controller with a Pod of its own (``name``, IP ``host``), a
    Lease it may share with the other, a fast election and ``extra`` flags."""

    name: str = "a"
    lease: str = LEASE
    extra: tuple[str, ...] = ()
    fixed: bool = False
    """The agents are told its address (``--pool-host``) instead of finding the Lease holder's Pod."""

    @property
    def lease_name(self) -> str:
        return self.lease

    @property
    def identity(self) -> str:
        return f"{self.name}_1"  # NB: <pod name>_<random>: the agents read Pod ``name``'s IP

    @property
    def log(self) -> Path:
        return self.dir / f"controller-{self.name}.log"

    @property
    def hosts_pools(self) -> bool:
        return "--no-pool-host" not in self.extra

    def command(self, known: frozenset[str] = frozenset()) -> list[str]:
        return [*super().command(known), *ELECTION, *self.extra]

    def agent_flags(self, known: frozenset[str]) -> list[str]:
        flags = super().agent_flags(known)
        if not self.fixed and "--pool-host" in flags:
            at = flags.index("--pool-host")
            del flags[at : at + 2]
        return flags

    async def leader_info(self) -> dict[str, Any]:
        info = await get_json(TcpClient(Path(), address=(self.host, self.health_port)), "/v1/runtime/leader", 2.0)
        return info if isinstance(info, dict) else {}

    async def start_standby(self, patience: float = 60.0) -> None:
        """Start it and wait until it knows who leads (it does not)."""
        self.process = await start_process(self.command(await supported_flags("controller")), self.log)
        with trio.fail_after(patience):
            while not (await self.leader_info()).get("leader"):
                assert self.running, log_tail(self.log)
                await trio.sleep(0.1)

    async def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        await self.process.wait()


@attrs.define
class Agents(AgentFleet):
    """The agents, node ``n`` told about controller ``hosts[n % len(hosts)]`` (``pool_host``: any of them, so
    that the fleet asks which options the agent knows)."""

    hosts: Sequence[Replica] = ()

    def command(self, node: int, known: frozenset[str] = frozenset()) -> list[str]:
        plain = AgentFleet(self.dir, self.nodes, self.store).command(node)
        return [*plain, *self.hosts[node % len(self.hosts)].agent_flags(known)]


@attrs.define
class Burst:
    """What each pod's ADD answered: ``(exit code, the plugin's output)``."""

    answers: dict[int, tuple[int, Any]] = attrs.field(factory=dict)

    def addresses(self) -> dict[int, str]:
        return {n: out["ips"][0]["address"].split("/")[0] for n, (code, out) in self.answers.items() if code == 0}

    def failures(self) -> dict[int, tuple[int, Any]]:
        return {n: answer for n, answer in self.answers.items() if answer[0] != 0}


@attrs.define
class Cluster:
    """The fake API server, the controllers, the agents, the installed plugin and an admin's store client."""

    api: ServedInThread
    dir: Path
    settings: StoreSettings
    admin: Store
    token: AgentToken
    port: int
    shim: Path
    controllers: list[Replica] = attrs.field(factory=list)
    fleet: Agents | None = None

    def replica(self, name: str, ip: str, **more: Any) -> Replica:
        replica = Replica(self.dir, self.settings, name, namespace=NS, host=ip, pool_host_port=self.port, name=name,
                          **more)  # fmt: skip
        replica.token = self.token
        self.controllers.append(replica)
        return replica

    async def pod_for(self, replica: Replica) -> None:
        """The controller's Pod, with its IP: where the agents look for the Lease holder's pool host."""
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": replica.name, "namespace": NS},
            "spec": pod_spec(),
        }
        created = await self.admin.create(pod)
        await self.admin.update_status({**created, "status": {"phase": "Running", "podIP": replica.host}})

    async def start_leader(self, replica: Replica) -> None:
        await self.pod_for(replica)
        await replica.start()
        if replica.hosts_pools:
            await self.pool_host_serving(replica)

    async def start_standby(self, replica: Replica) -> None:
        await self.pod_for(replica)
        await replica.start_standby()
        if replica.hosts_pools:
            await self.pool_host_serving(replica)

    async def pool_host_serving(self, replica: Replica) -> None:
        """Its pool host accepts connections and its CA is published, so the agents trust it from the start."""
        with trio.fail_after(30):
            while True:
                try:
                    await self.admin.get("ConfigMap", "spiderpool-ca", NS)
                    stream = await trio.open_tcp_stream(replica.host, replica.pool_host_port)
                    await stream.aclose()
                    return
                except (NotFound, OSError):
                    assert replica.running, log_tail(replica.log)
                    await trio.sleep(0.1)

    async def start_agents(self, hosts: Sequence[Replica]) -> Agents:
        self.fleet = Agents(self.dir, NODES, self.settings, pool_host=hosts[0], hosts=hosts)
        await self.fleet.start()
        return self.fleet

    def _call(self, command: str, n: int) -> Awaitable[tuple[int, Any]]:
        assert self.fleet is not None
        env = cni_env(command, f"ctr-{n}", "eth0", pod_args(f"pod-{n}", f"uid-{n}"))
        return run_plugin(self.shim, env, netconf(self.fleet.socket(n % NODES), default_ipv4_ippool=["burst"]))

    async def burst(
        self, pods: range, *, after: int = 0, meanwhile: Callable[[Burst], Awaitable[None]] | None = None
    ) -> Burst:
        """ADD every pod, ``CONCURRENCY`` at once; once ``after`` have been answered, ``meanwhile(burst)`` runs
        (the burst goes on)."""
        burst, limiter, enough = Burst(), trio.CapacityLimiter(CONCURRENCY), trio.Event()

        async def add(n: int) -> None:
            async with limiter:
                burst.answers[n] = await self._call("ADD", n)
            if len(burst.answers) >= after:
                enough.set()

        async def event() -> None:
            await enough.wait()
            if meanwhile is not None:
                await meanwhile(burst)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(event)
            for n in pods:
                nursery.start_soon(add, n)
        return burst

    async def delete_all(self, pods: Sequence[int]) -> None:
        """The runtime's DEL of every pod, whatever its ADD answered."""
        limiter, failed = trio.CapacityLimiter(CONCURRENCY), {}

        async def delete(n: int) -> None:
            async with limiter:
                code, out = await self._call("DEL", n)
            if code != 0:
                failed[n] = out

        async with trio.open_nursery() as nursery:
            for n in pods:
                nursery.start_soon(delete, n)
        assert not failed, failed

    async def records(self) -> dict[str, dict[str, Any]]:
        status = (await self.admin.get("SpiderIPPool", "burst")).get("status") or {}
        records: dict[str, dict[str, Any]] = json.loads(status.get("allocatedIPs") or "{}")
        return records

    async def agent_stats(self) -> list[dict[str, Any]]:
        assert self.fleet is not None
        return await self.fleet.statistics()


async def assert_safe_then_delete(cluster: Cluster, burst: Burst, pods: Sequence[int]) -> None:
    """Every ADD answered with an address or CNI 11, no address twice, each pod holding at most one address
    and the one it was answered with; then every pod's DEL leaves the pool and the endpoints empty."""
    assert sorted(burst.answers) == sorted(pods), "an ADD was not answered"
    failures = burst.failures()
    assert all(out is not None and out.get("code") == 11 for _, out in failures.values()), failures
    addresses = burst.addresses()
    assert len(set(addresses.values())) == len(addresses), "an address was handed out twice"
    records = await cluster.records()
    owners = [record["podUid"] for record in records.values()]
    assert len(owners) == len(set(owners)), "a pod holds two addresses"
    for n, address in addresses.items():
        assert records[address]["podUid"] == f"uid-{n}", (n, address, records.get(address))
    assert {record["podUid"] for record in records.values()} <= {f"uid-{n}" for n in pods}

    await cluster.delete_all(pods)
    assert await cluster.records() == {}
    assert (await cluster.admin.list("SpiderEndpoint", namespace="default")).items == []
    report = await check_store(cluster.admin)
    assert report.consistent, report.findings


@pytest.fixture
def api_server() -> Iterator[ServedInThread]:
    """A fake API server in a thread of its own (the agents and controllers are other processes)."""
    with served_in_thread(FakeApiServer()) as api:
        yield api


@asynccontextmanager
async def cluster_on(api: ServedInThread) -> AsyncIterator[Cluster]:
    """The pool, an agent token, a shared pool-host port; the controllers and agents the test starts are
    stopped on the way out."""
    with short_tmp() as d:
        settings = StoreSettings(d / "unused.db", api.server.kubeconfig(d / "kubeconfig"))
        async with opened_store(settings) as admin:
            await apply(admin, dict(POOL))
            token = await request_agent_token(admin, d, NS, ACCOUNT)  # NB: a TokenRequest, as the load test does
            cluster = Cluster(api, d, settings, admin, token, free_port(), installed_shim(d / "bin"))
            try:
                yield cluster
            finally:
                with trio.CancelScope(shield=True):
                    if cluster.fleet is not None:
                        await cluster.fleet.stop(grace=10)
                    for replica in cluster.controllers:
                        await replica.stop(grace=10)


def totals(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> dict[str, int]:
    forwarded = forwarded_totals(before, after)
    assert forwarded is not None, "the agents report no forwarding counters"
    return forwarded


async def host_stats(replica: Replica) -> dict[str, Any]:
    """The controller's ``GET /v1/spider/stats`` on its health port."""
    stats = await replica.statistics()
    assert stats is not None, log_tail(replica.log)
    assert {"leader", "pools", "host"} <= set(stats)
    return stats


def hosted_requests(stats: dict[str, Any]) -> int:
    return int((stats["pools"].get("burst") or {}).get("requests", 0))


async def test_a_leader_killed_mid_burst_costs_no_address_and_its_successor_hosts_the_pools(
    api_server: ServedInThread,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with cluster_on(api_server) as c:
            leader, standby = c.replica("ph-a", "127.0.0.2"), c.replica("ph-b", "127.0.0.3")
            await c.start_leader(leader)
            await c.start_standby(standby)
            await c.start_agents([leader])
            before = await c.agent_stats()
            seen: list[dict[str, Any]] = []
            answered: list[int] = []

            async def kill_the_leader(burst: Burst) -> None:
                seen.append(await host_stats(leader))
                await leader.kill()
                answered.append(len(burst.answers))

            burst = await c.burst(range(PODS), after=PODS // 3, meanwhile=kill_the_leader)
            during = totals(before, await c.agent_stats())
            assert answered[0] < PODS, "the leader was killed after the burst"
            assert seen[0]["leader"] is True
            assert hosted_requests(seen[0]) > 0, seen[0]  # the leader hosted the start of the burst
            assert during["requests"] > 0, during
            assert during["fallback"] > 0, during  # and once it was killed the agents wrote themselves

            # The standby takes the Lease over; the agents find it there and forward to it.
            pods = list(range(PODS))

            async def standby_leads() -> bool:
                return bool((await host_stats(standby))["leader"])

            async def standby_hosts_more_adds() -> bool:
                more = await c.burst(range(len(pods), len(pods) + NODES))
                burst.answers.update(more.answers)
                pods.extend(sorted(more.answers))
                await trio.sleep(0.3)
                return hosted_requests(await host_stats(standby)) > 0

            await eventually(standby_leads, within=20, what="the standby took the Lease over")
            await eventually(standby_hosts_more_adds, within=20, what="the agents forwarded to the new leader")
            successor = await host_stats(standby)
            assert successor["host"]["batches"] > 0, successor
            assert totals(before, await c.agent_stats())["requests"] > during["requests"]
            await assert_safe_then_delete(c, burst, pods)


async def test_a_leader_whose_pool_host_refuses_leaves_every_write_to_the_agents(api_server: ServedInThread) -> None:
    """The leader runs without a pool host (its port refuses connections); one agent is pointed at the standby,
    which answers 421: every write falls back to the agents' own pool actors."""
    with trio.fail_after(TIMEOUT):
        async with cluster_on(api_server) as c:
            leader = c.replica("ph-a", "127.0.0.2", extra=("--no-pool-host",))
            standby = c.replica("ph-b", "127.0.0.3", fixed=True)
            await c.start_leader(leader)
            await c.start_standby(standby)
            await c.start_agents([leader, leader, standby])
            before = await c.agent_stats()
            burst = await c.burst(range(PODS))
            forwarded = totals(before, await c.agent_stats())
            assert forwarded["requests"] == 0, forwarded
            assert forwarded["fallback"] >= PODS, forwarded
            for agent in (await c.agent_stats())[:2]:
                assert agent["forwarded"]["fallback"] > 0, agent  # connection refused
            leading, refusing = await host_stats(leader), await host_stats(standby)
            assert leading["leader"] is True
            assert leading["host"] is None  # no pool host at all
            assert leading["pools"] == {}
            assert refusing["leader"] is False
            assert refusing["host"]["refused"] > 0, refusing  # 421: not leading
            assert refusing["host"]["batches"] == 0
            assert burst.failures() == {}
            await assert_safe_then_delete(c, burst, range(PODS))


async def test_two_controllers_hosting_at_once_cost_no_address(api_server: ServedInThread) -> None:
    """Split brain: each controller leads a Lease of its own and hosts the pool; the agents are split between
    them.  The two hosts' writes race at the resourceVersion like any two writers."""
    with trio.fail_after(TIMEOUT):
        async with cluster_on(api_server) as c:
            first = c.replica("ph-a", "127.0.0.2", lease="spider-ph-a", fixed=True)
            second = c.replica("ph-b", "127.0.0.3", lease="spider-ph-b", fixed=True)
            await c.start_leader(first)
            await c.start_leader(second)
            await c.start_agents([first, second])
            before = await c.agent_stats()
            burst = await c.burst(range(PODS))
            forwarded = totals(before, await c.agent_stats())
            assert forwarded["requests"] > 0, forwarded
            both = [await host_stats(first), await host_stats(second)]
            assert all(stats["leader"] for stats in both), both
            assert all(stats["host"]["batches"] > 0 for stats in both), both
            assert sum(hosted_requests(stats) for stats in both) >= forwarded["requests"]  # NB: >= a late answer
            await assert_safe_then_delete(c, burst, range(PODS))


async def test_an_api_server_restart_mid_burst_answers_every_add_and_leaves_nothing_behind(
    api_server: ServedInThread,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with cluster_on(api_server) as c:
            leader, standby = c.replica("ph-a", "127.0.0.2"), c.replica("ph-b", "127.0.0.3")
            await c.start_leader(leader)
            await c.start_standby(standby)
            await c.start_agents([leader])
            before = await c.agent_stats()

            answered: list[int] = []

            async def restart(burst: Burst) -> None:
                await trio.to_thread.run_sync(api_server.go_down)
                await trio.sleep(1.0)
                answered.append(len(burst.answers))
                await trio.to_thread.run_sync(functools.partial(api_server.come_up, restarted=True))

            burst = await c.burst(range(PODS), after=PODS // 3, meanwhile=restart)
            assert answered[0] < PODS, "the API server came back after the burst"
            forwarded = totals(before, await c.agent_stats())
            assert forwarded["requests"] > 0, forwarded
            hosts = [stats for stats in [await leader.statistics(), await standby.statistics()] if stats]
            assert sum(hosted_requests(stats) for stats in hosts) > 0, hosts
            await assert_safe_then_delete(c, burst, range(PODS))
