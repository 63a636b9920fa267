"""The pool host in one process: a controller on the fake API server hosting the pools, agents' registries
forwarding to it through ``PoolForwarder`` (HTTPS, the CA from the ConfigMap, a minted ServiceAccount token),
and what happens when it is not there, refuses, is slow, or is two."""

from __future__ import annotations

import json
import random
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from actors.controller.main import Controller, ControllerSettings, open_controller
from actors.ipam import remote
from actors.ipam.check import check_store
from actors.ipam.pool import PoolHandle, PoolRegistry
from actors.ipam.remote import (
    HostAddress,
    HostClient,
    HostLocator,
    HostRefused,
    PoolForwarder,
    ServiceAccountToken,
    decode_message,
)
from actors.runtime.supervisor import Supervisor
from actors.servers import pool_host
from actors.servers.httpserver import Response
from actors.servers.pool_host import MAX_BATCH_BYTES
from actors.stores.kube import KubeStore
from actors.stores.port import Store
from spider.errors import PoolExhausted
from spider.kinds import FINALIZER
from spider.pool import Owner
from spider.reconcile import pool_status
from tests.controller.support import eventually
from tests.fakeapi import Cost, FakeApiServer, LatencyModel
from tests.support import answer_status, exchange, pod_spec, pool_object

NS = "kube-system"
POOL = pool_object("shared", "10.40.0.0/24", ["10.40.0.10-10.40.0.69"])  # 60 addresses
TIMEOUT = 30


def owner(n: int) -> Owner:
    return Owner(f"uid-{n}", "eth0", "default", f"pod-{n}", f"ctr-{n}", "node-1")


@attrs.define
class Bench:
    api: FakeApiServer
    slow_api: FakeApiServer
    """Another frontend of the same cluster whose status writes take a second."""
    admin: KubeStore
    dir: Path
    nursery: trio.Nursery
    token_file: Path
    port: int = 0
    controllers: dict[str, Controller] = attrs.field(factory=dict)
    scopes: dict[str, trio.CancelScope] = attrs.field(factory=dict)

    async def store(self, *, slow: bool = False) -> KubeStore:
        api = self.slow_api if slow else self.api
        return await KubeStore.open(api.kubeconfig(self.dir / f"kubeconfig-{slow}"))

    async def controller(self, pod: str, ip: str, *, slow: bool = False, **more: Any) -> Controller:
        """A controller as Pod ``pod`` with IP ``ip`` (the Pod object is made for it), hosting on ``port``."""
        created = await self.admin.create(
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod, "namespace": NS}, "spec": pod_spec()}
        )
        await self.admin.update_status({**created, "status": {"phase": "Running", "podIP": ip}})
        settings = ControllerSettings(
            store_path=self.dir / "unused.db",
            namespace=NS,
            identity=f"{pod}_1",
            lease_duration=2,
            renew_deadline=1.5,
            retry_period=0.2,
            health_host="127.0.0.1",
            health_port=0,
            pool_host_host=ip,
            pool_host_port=self.port,
            **more,
        )
        store = await self.store(slow=slow)
        started = trio.Event()
        box: list[Controller] = []

        async def run(*, task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED) -> None:
            with trio.CancelScope() as scope:
                try:
                    async with open_controller(settings, store) as controller:
                        box.append(controller)
                        task_status.started(scope)
                        started.set()
                        await trio.sleep_forever()
                finally:
                    with trio.CancelScope(shield=True):
                        await store.aclose()

        self.scopes[pod] = await self.nursery.start(run)
        controller = self.controllers[pod] = box[0]
        if controller.settings.pool_host:
            await eventually(lambda: _true(controller.pool_host_port is not None), what="pool host listening")
        self.port = self.port or controller.pool_host_port or 0
        return controller

    async def agent(self, registry_store: Store, nursery: trio.Nursery, budget: float = 2.0) -> PoolForwarder:
        registry = PoolRegistry(registry_store, Supervisor(nursery))
        locator = HostLocator(registry_store, NS, port=self.port, refresh=0.2)
        forwarder = PoolForwarder(registry, locator, ServiceAccountToken(self.token_file), budget=budget)
        await nursery.start(forwarder.run)
        registry.route = forwarder
        return forwarder

    @asynccontextmanager
    async def hosted_agent(self, **more: Any) -> AsyncIterator[tuple[Controller, PoolForwarder, PoolHandle]]:
        """Controller ``ctl-a`` leading and hosting (``more``: its other settings), one agent that found it, and
        that agent's handle of the pool ``shared``; the agent stops at the end of the block."""
        controller = await self.controller("ctl-a", "127.0.0.2", **more)
        agent_store = await self.store()
        try:
            async with trio.open_nursery() as nursery:
                forwarder = await self.agent(agent_store, nursery)
                await hosted(forwarder, controller)
                yield controller, forwarder, await forwarder.local.get("shared")
                nursery.cancel_scope.cancel()
        finally:
            await agent_store.aclose()


async def _true(value: bool) -> bool:
    return value


@asynccontextmanager
async def bench(tmp_path: Path) -> AsyncIterator[Bench]:
    async with trio.open_nursery() as nursery:
        api: FakeApiServer = await nursery.start(FakeApiServer().run)
        slow_latency = LatencyModel({"updateStatus": Cost(1000.0)})
        slow: FakeApiServer = await nursery.start(FakeApiServer(api.cluster, latency=slow_latency).run)
        admin = await KubeStore.open(api.kubeconfig(tmp_path / "admin.kubeconfig"))
        await admin.create(POOL)
        token_file = tmp_path / "token"
        token_file.write_text(api.cluster.mint_token(NS, "spiderpool-agent"))
        try:
            yield Bench(api, slow, admin, tmp_path, nursery, token_file)
        finally:
            await admin.aclose()
            nursery.cancel_scope.cancel()


async def hosted(forwarder: PoolForwarder, controller: Controller) -> None:
    await eventually(lambda: _true(controller.elector.leading), what="leading")
    await eventually(lambda: _true(forwarder.locator.holder == controller.settings.identity), what="host located")
    await eventually(lambda: _true(forwarder.host_available()), what="host available")


async def no_duplicates(store: Store) -> list[str]:
    pool = await store.get("SpiderIPPool", "shared")
    allocated = json.loads(pool["status"].get("allocatedIPs") or "{}")
    uids = [r["podUid"] for r in allocated.values()]
    assert len(uids) == len(set(uids)), "an owner holds two addresses"
    return sorted(allocated)


async def test_forwarded_allocations_from_many_callers_are_folded_into_few_writes(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with bench(tmp_path) as b, b.hosted_agent() as (controller, forwarder, handle):
            got: dict[int, str] = {}

            async def add(n: int) -> None:
                allocation = await handle.allocate(owner(n))
                assert await handle.verify(allocation.ip, owner(n).key, allocation.recorded_at)  # the last look
                got[n] = allocation.ip

            async with trio.open_nursery() as burst:
                for n in range(40):
                    burst.start_soon(add, n)
            assert len(set(got.values())) == 40
            assert (forwarder.stats.requests, forwarder.stats.looks) == (40, 40)
            assert forwarder.stats.fallback == 0
            assert forwarder.stats.calls < 80  # NB: queued requests share a call
            host = controller.stats()["pools"]["shared"]
            assert (host["requests"], host["looks"]) == (40, 40)
            assert host["writes"] < 40
            assert host["conflicts"] == 0
            assert forwarder.local.statistics() == {}  # nothing was written, or looked at, by the agent itself
            assert await no_duplicates(b.admin) == sorted(got.values())


async def test_a_host_that_knows_no_looks_still_takes_the_writes_and_the_agent_looks_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def older(raw: Any, sender: str = "", expires: float | None = None) -> Any:  # NB: before looks were forwarded
        if isinstance(raw, dict) and raw.get("op") == "verify":
            raise ValueError("unknown op 'verify'")
        return decode_message(raw, sender, expires)

    monkeypatch.setattr(pool_host, "decode_message", older)
    with trio.fail_after(TIMEOUT):
        async with bench(tmp_path) as b, b.hosted_agent() as (_controller, forwarder, handle):
            for n in range(5):
                allocation = await handle.allocate(owner(n))
                assert await handle.verify(allocation.ip, owner(n).key, allocation.recorded_at)
            assert (forwarder.stats.requests, forwarder.stats.looks, forwarder.stats.fallback) == (5, 0, 0)
            assert forwarder.host_available()  # NB: the refused looks did not stop the writes going there
            assert forwarder.local.statistics()["shared"]["looks"] == 5


class SlowToConnect(HostClient):
    """A host client whose connections take ``delay`` seconds to set up (a TLS handshake on a busy node)."""

    delay: float = 0.0

    async def post(self, *args: Any) -> bytes:
        await trio.sleep(self.delay)
        return await super().post(*args)


@pytest.mark.parametrize("connecting", [0.0, 0.4])
async def test_the_agent_asks_the_host_to_apply_nothing_after_what_is_left_of_half_its_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, connecting: float
) -> None:
    asked: list[Any] = []
    limit = pool_host._expiry

    def spy(within: Any, arrived: float) -> float | None:
        asked.append(within)
        return limit(within, arrived)

    monkeypatch.setattr(pool_host, "_expiry", spy)
    with trio.fail_after(TIMEOUT):
        async with bench(tmp_path) as b, b.hosted_agent() as (_controller, forwarder, handle):
            forwarder.client = SlowToConnect()
            forwarder.client.delay = connecting
            await handle.allocate(owner(1))
    (within,) = asked
    assert forwarder.budget / 2 - connecting - 0.5 < within <= forwarder.budget / 2 - connecting


async def test_a_connection_that_takes_half_the_budget_sends_nothing_and_the_agent_serves_the_batch(
    tmp_path: Path,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with bench(tmp_path) as b, b.hosted_agent() as (controller, forwarder, handle):
            forwarder.client = SlowToConnect()
            forwarder.client.delay = forwarder.budget / 2 + 0.1
            await handle.allocate(owner(1))
            assert (forwarder.stats.requests, forwarder.stats.fallback) == (0, 1)
            assert controller.pool_host is not None
            assert controller.pool_host.batches == 0


async def test_a_domain_error_comes_back_as_the_same_type_and_cni_code(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with bench(tmp_path) as b, b.hosted_agent() as (_controller, forwarder, handle):
            for n in range(60):
                await handle.allocate(owner(n))
            with pytest.raises(PoolExhausted) as raised:
                await handle.allocate(owner(99))
            assert raised.value.cni_code == 100
            assert forwarder.stats.fallback == 0
            assert await handle.release(("uid-3", "eth0")) == "10.40.0.13/24"
            assert await handle.release(("uid-3", "eth0")) is None  # released twice: nothing the second time


async def _post(b: Bench, controller: Controller, token: str | None) -> tuple[int, str]:
    ca = (await b.admin.get("ConfigMap", "spiderpool-ca", NS))["data"]["ca.crt"].encode()
    address = HostAddress(controller.settings.pool_host_host or "", b.port, ca)
    body = json.dumps({"messages": [{"op": "release", "key": ["uid-1", "eth0"], "containerID": ""}]}).encode()
    client = HostClient()
    try:
        await client.post(address, address.ssl_context(), "/v1/pools/shared", lambda: body, token or "")
    except HostRefused as exc:
        return exc.status, str(exc)
    finally:
        await client.aclose()
    return 200, ""


async def _settled(b: Bench, pool: str) -> bool:
    """The leader's reconciler has written what it writes to a new pool: the finalizer and the counts."""
    stored = await b.admin.get("SpiderIPPool", pool)
    return FINALIZER in stored["metadata"].get("finalizers", []) and pool_status(stored)[0] is None


async def test_a_missing_wrong_or_foreign_token_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with bench(tmp_path) as b:
            controller = await b.controller("ctl-a", "127.0.0.2")
            await eventually(lambda: _true(controller.elector.leading), what="leading")
            await eventually(lambda: _settled(b, "shared"), what="the reconciler's first writes")
            before = await b.admin.get("SpiderIPPool", "shared")
            assert (await _post(b, controller, None))[0] == 401
            assert (await _post(b, controller, "not-a-token"))[0] == 401
            other = b.api.cluster.mint_token(NS, "spiderpool-controller")
            assert (await _post(b, controller, other))[0] == 403
            assert (await _post(b, controller, b.api.cluster.mint_token("default", "spiderpool-agent")))[0] == 403
            after = await b.admin.get("SpiderIPPool", "shared")
            assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
            assert controller.pool_host is not None
            assert (controller.pool_host.batches, controller.pool_host.refused) == (0, 4)
            assert (await _post(b, controller, b.token_file.read_text()))[0] == 200


async def test_a_client_that_does_not_trust_the_ca_cannot_talk_to_the_host(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with bench(tmp_path) as b:
            controller = await b.controller("ctl-a", "127.0.0.2")
            context = ssl.create_default_context()  # NB: the system's CAs, not ours
            stream = await trio.open_ssl_over_tcp_stream("127.0.0.2", b.port, ssl_context=context)
            with pytest.raises(trio.BrokenResourceError):
                await stream.do_handshake()
            await trio.aclose_forcefully(stream)
            assert controller.pool_host is not None
            assert controller.pool_host.batches == 0


async def test_a_standby_answers_not_leading_and_the_agent_serves_locally(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with bench(tmp_path) as b:
            leader = await b.controller("ctl-a", "127.0.0.2")
            await eventually(lambda: _true(leader.elector.leading), what="leading")
            standby = await b.controller("ctl-b", "127.0.0.3")
            assert (await _post(b, standby, b.token_file.read_text()))[0] == 421
            agent_store = await b.store()
            async with trio.open_nursery() as nursery:
                forwarder = await b.agent(agent_store, nursery)
                forwarder.locator.refresh = 3600  # NB: it keeps believing the standby leads
                await eventually(lambda: _true(forwarder.locator.current is not None), what="located")
                forwarder.locator.current = attrs.evolve(forwarder.locator.current, host="127.0.0.3")
                handle = await forwarder.local.get("shared")
                assert (await handle.allocate(owner(1))).ip == "10.40.0.10"
                assert forwarder.stats.fallback == 1
                assert forwarder.stats.requests == 0
                assert forwarder.local.statistics()["shared"]["writes"] == 1
                nursery.cancel_scope.cancel()
            await agent_store.aclose()


async def test_an_unknown_or_refusing_host_leaves_every_request_to_the_local_actor(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with bench(tmp_path) as b:
            agent_store = await b.store()
            async with trio.open_nursery() as nursery:
                b.port = 1  # NB: nobody leads yet: no Lease at all
                forwarder = await b.agent(agent_store, nursery)
                handle = await forwarder.local.get("shared")
                assert (await handle.allocate(owner(1))).ip == "10.40.0.10"
                assert forwarder.stats.fallback == 1
                # a holder whose port refuses connections
                controller = await b.controller("ctl-a", "127.0.0.2", pool_host=False)
                await eventually(lambda: _true(controller.elector.leading), what="leading")
                await b.admin.create(
                    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "spiderpool-ca", "namespace": NS},
                     "data": {"ca.crt": "-----BEGIN CERTIFICATE-----\n"}}
                )  # fmt: skip
                await eventually(lambda: _true(forwarder.locator.holder is not None), what="holder seen")
                for n in range(2, 6):
                    await handle.allocate(owner(n))
                assert forwarder.stats.requests == 0
                assert forwarder.stats.fallback == 5
                assert len(await no_duplicates(b.admin)) == 5
                nursery.cancel_scope.cancel()
            await agent_store.aclose()


NONSENSE = {
    "nested": (200, b"[" * 100_000 + b"]" * 100_000),
    "not JSON": (200, b"\xff\xfe"),
    "a list": (200, b"[]"),
    "results that are a number": (200, b'{"results": 5}'),
    "too many results": (200, b'{"results": [1, 2, 3]}'),
    "an error nested deep": (500, b"[" * 100_000 + b"]" * 100_000),
    "an error of a megabyte": (503, json.dumps("x" * 2**20).encode()),
}


@pytest.mark.parametrize("answer", NONSENSE.values(), ids=NONSENSE.keys())
async def test_a_host_that_answers_nonsense_costs_time_not_an_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answer: tuple[int, bytes]
) -> None:
    async def nonsense(self: pool_host.PoolHost, request: Any) -> Response:
        return Response(*answer)

    monkeypatch.setattr(pool_host.PoolHost, "handle", nonsense)
    with trio.fail_after(TIMEOUT):
        async with bench(tmp_path) as b, b.hosted_agent() as (_controller, forwarder, handle):
            allocation = await handle.allocate(owner(1))  # served by the agent's own actor
            assert (forwarder.stats.requests, forwarder.stats.fallback) == (0, 1)
            assert not forwarder.host_available()  # and the host is left alone for a while
            assert await no_duplicates(b.admin) == [allocation.ip]


async def test_a_bug_in_forwarding_fails_that_batch_and_the_agent_serves_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(msg: Any) -> Any:
        raise RuntimeError("a bug")

    with trio.fail_after(TIMEOUT):
        async with bench(tmp_path) as b, b.hosted_agent() as (_controller, forwarder, handle):
            with monkeypatch.context() as patched:
                patched.setattr(remote, "encode_message", broken)
                with pytest.raises(remote.HostFailed, match="RuntimeError: a bug") as raised:
                    await handle.allocate(owner(1))
                assert raised.value.cni_code == 11  # NB: try again later: the retry is idempotent
            allocation = await handle.allocate(owner(1))  # the forwarder lives on, and the host serves
            assert forwarder.stats.requests == 1
            assert await no_duplicates(b.admin) == [allocation.ip]


async def test_a_host_that_answers_after_the_agent_gave_up_costs_no_address(tmp_path: Path) -> None:
    """The host's status writes take a second (its own API server frontend is slow); the agent gives up after
    half a second, serves the same ADDs itself, then the pods' DELs.  The host's late write carries the
    resourceVersion it read, so it conflicts; its conflict budget is over by then, so it re-reads nothing and
    writes nothing: every ADD answered once, no address held twice, nothing left behind."""
    with trio.fail_after(TIMEOUT):
        async with bench(tmp_path) as b:
            controller = await b.controller("ctl-a", "127.0.0.2", slow=True, pool_host_conflict_budget=0.25)
            agent_store = await b.store()
            async with trio.open_nursery() as nursery:
                forwarder = await b.agent(agent_store, nursery, budget=0.5)
                await hosted(forwarder, controller)
                handle = await forwarder.local.get("shared")
                got: dict[int, str] = {}

                async def add(n: int) -> None:
                    got[n] = (await handle.allocate(owner(n))).ip

                async with trio.open_nursery() as burst:
                    for n in range(5):
                        burst.start_soon(add, n)
                assert forwarder.stats.fallback == 5
                assert len(set(got.values())) == 5
                assert sorted(got.values()) == await no_duplicates(b.admin)
                for n in range(5):
                    assert await handle.release((f"uid-{n}", "eth0")) == f"{got[n]}/24"
                host = controller.stats()["pools"]
                await eventually(lambda: _true(controller.stats()["pools"]["shared"]["conflicts"] >= 1),
                                 within=10, what="the host's late write conflicted")  # fmt: skip
                await trio.sleep(1.5)  # NB: long enough for any retry the host might (wrongly) make to land
                assert await no_duplicates(b.admin) == []
                assert host["shared"]["requests"] == 5
                assert (await check_store(b.admin)).consistent
                nursery.cancel_scope.cancel()
            await agent_store.aclose()


async def test_a_request_the_host_let_expire_is_served_by_the_agent_in_its_budget(tmp_path: Path) -> None:
    """The host's status writes take a second; an agent with a 1.2 s budget asks it to apply its ADD within
    0.6 s.  Queued behind another pod's write, the host answers ``RequestExpired`` (unapplied): the agent serves
    the ADD itself, within its budget, instead of failing it with CNI 11."""
    with trio.fail_after(TIMEOUT):
        async with bench(tmp_path) as b:
            controller = await b.controller("ctl-a", "127.0.0.2", slow=True)
            stores = [await b.store(), await b.store()]
            async with trio.open_nursery() as nursery:
                patient = await b.agent(stores[0], nursery, budget=5.0)
                hurried = await b.agent(stores[1], nursery, budget=1.2)
                for forwarder in (patient, hurried):
                    await hosted(forwarder, controller)
                await eventually(lambda: _settled(b, "shared"), what="the reconciler's first writes")
                got: dict[int, str] = {}

                async def add(forwarder: PoolForwarder, n: int) -> None:
                    got[n] = (await (await forwarder.local.get("shared")).allocate(owner(n))).ip

                async with trio.open_nursery() as burst:
                    burst.start_soon(add, patient, 1)  # the host writes it for a second
                    await trio.sleep(0.3)
                    burst.start_soon(add, hurried, 2)  # waits behind that write past its 0.6 s
                assert hurried.stats.fallback == 1
                nursery.cancel_scope.cancel()
            for store in stores:
                await store.aclose()
            assert sorted(got.values()) == await no_duplicates(b.admin)
            assert len(set(got.values())) == 2


async def test_a_batch_after_an_idle_spell_is_still_served_by_the_host(tmp_path: Path) -> None:
    """The host closes a kept-alive connection that stays idle for its read timeout (30 s in production); the
    agent's next batch finds it closed before a byte of answer and sends again on a fresh connection, instead of
    taking a healthy host for a failed one (a batch served locally, and a growing backoff)."""
    read_timeout = 0.5
    with trio.fail_after(TIMEOUT):
        async with bench(tmp_path) as b:
            for i in range(3):
                await b.admin.create(pool_object(f"p{i}", f"10.5{i}.0.0/24", [f"10.5{i}.0.10-10.5{i}.0.69"]))
            async with b.hosted_agent(read_timeout=read_timeout) as (_controller, forwarder, _handle):
                handles = [await forwarder.local.get(f"p{i}") for i in range(3)]
                async with trio.open_nursery() as burst:  # NB: three pools at once: three connections kept
                    for i, handle in enumerate(handles):
                        burst.start_soon(handle.allocate, owner(10 + i))
                assert len(forwarder.client._idle) >= 2
                await trio.sleep(read_timeout * 3)  # a lull: the host closed them all
                for n in range(3):
                    await handles[0].allocate(owner(20 + n))
                    assert forwarder.host_available()
                assert forwarder.stats.fallback == 0
                assert forwarder.stats.requests == 6


async def test_two_controllers_hosting_at_once_cost_no_address(tmp_path: Path) -> None:
    """Split brain: the standby believes it leads too and hosts the same pool; agents forward to either.  The
    two hosts' writes race at the resourceVersion like any two writers: no owner holds two addresses, no address
    two owners, and every ADD is answered."""
    with trio.fail_after(TIMEOUT):
        async with bench(tmp_path) as b:
            first = await b.controller("ctl-a", "127.0.0.2")
            await eventually(lambda: _true(first.elector.leading), what="leading")
            second = await b.controller("ctl-b", "127.0.0.3")
            stores = [await b.store(), await b.store()]
            async with trio.open_nursery() as nursery:
                assert second.pool_host is not None
                second.pool_host.registry = PoolRegistry(stores[1], Supervisor(nursery), conflict_budget=1.0)
                forwarders = [await b.agent(s, nursery) for s in stores]
                for forwarder, ip in zip(forwarders, ("127.0.0.2", "127.0.0.3"), strict=True):
                    forwarder.locator.refresh = 3600
                    await eventually(lambda f=forwarder: _true(f.locator.current is not None), what="located")
                    forwarder.locator.current = attrs.evolve(forwarder.locator.current, host=ip)
                got: dict[int, str] = {}

                async def add(n: int) -> None:
                    handle = await forwarders[n % 2].local.get("shared")
                    got[n] = (await handle.allocate(owner(n))).ip

                async with trio.open_nursery() as burst:
                    for n in range(50):
                        burst.start_soon(add, n)
                assert len(got) == 50
                assert sorted(got.values()) == await no_duplicates(b.admin)
                assert second.pool_host.batches > 0
                for n in range(50):  # NB: the pods' DELs, through either host
                    await (await forwarders[(n + 1) % 2].local.get("shared")).release((f"uid-{n}", "eth0"))
                assert await no_duplicates(b.admin) == []
                assert (await check_store(b.admin)).consistent
                nursery.cancel_scope.cancel()
            for s in stores:
                await s.aclose()


async def test_an_api_server_restart_mid_burst_answers_every_add_and_leaves_nothing_behind(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with bench(tmp_path) as b, b.hosted_agent() as (_controller, _forwarder, handle):
            answers: dict[int, str | int] = {}

            async def add(n: int) -> None:
                try:
                    answers[n] = (await handle.allocate(owner(n))).ip
                except Exception as exc:
                    answers[n] = getattr(exc, "cni_code", 999)

            async with trio.open_nursery() as burst:
                for n in range(30):
                    burst.start_soon(add, n)
                    if n == 10:
                        b.api.go_down()
                        await trio.sleep(0.3)
                        await b.api.come_up(restarted=True)
            assert len(answers) == 30
            assert {a for a in answers.values() if isinstance(a, int)} <= {11}
            held = await no_duplicates(b.admin)
            ips = sorted(a for a in answers.values() if isinstance(a, str))
            assert set(ips) <= set(held)
            for n, _answer in answers.items():  # the DELs of every ADD, answered or not
                await handle.release((f"uid-{n}", "eth0"))
            assert await no_duplicates(b.admin) == []
            assert (await check_store(b.admin)).consistent


# --- hostile clients on the pool host's port ------------------------------------------------------------------

READ_TIMEOUT = 0.5
HOST_IP = "127.0.0.2"


async def _status_of(port: int, data: bytes) -> int:
    return answer_status((await exchange(HOST_IP, port, data))[0])


def _post_raw(body: bytes, token: str = "", *, length: int | None = None, extra: bytes = b"") -> bytes:
    auth = f"Authorization: Bearer {token}\r\n".encode() if token else b""
    size = len(body) if length is None else length
    head = f"POST /v1/pools/shared HTTP/1.1\r\nHost: h\r\nContent-Length: {size}\r\n".encode()
    return head + auth + extra + b"Connection: close\r\n\r\n" + body


async def test_the_pool_host_port_survives_idle_slow_and_hostile_clients_and_changes_nothing(tmp_path: Path) -> None:
    # NB: the guide's listener checks (idle, slow, truncated, huge, deeply nested, non-UTF-8, random), on TLS and
    # beneath it, by a stranger and by a client holding the agents' token; then the host still serves
    with trio.fail_after(4 * TIMEOUT):
        async with bench(tmp_path) as b, b.hosted_agent(read_timeout=READ_TIMEOUT) as (controller, _fwd, handle):
            port, token = b.port, b.token_file.read_text()
            await eventually(lambda: _settled(b, "shared"), what="the reconciler's first writes")
            before = await b.admin.get("SpiderIPPool", "shared")

            # beneath TLS: idle, not TLS at all, a torn handshake
            assert await exchange(HOST_IP, port, b"", tls=False) == (b"", True)  # closed after the read timeout
            for junk in (b"\x00\xff garbage\r\n\r\n", b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", b"\x16\x03\x01\x02"):
                answer, closed = await exchange(HOST_IP, port, junk, tls=False)
                assert closed
                assert not answer.startswith(b"HTTP")

            # over TLS, before any token is looked at
            assert await exchange(HOST_IP, port, b"") == (b"", True)  # a handshake, then idle: closed
            # truncated, then slow: refused on its head, before any of its body is waited for or held
            assert await _status_of(port, _post_raw(b"{", length=100)) == 401
            assert await _status_of(port, _post_raw(b"{" * 1000, length=MAX_BATCH_BYTES)) == 401
            assert await _status_of(port, _post_raw(b"{}", extra=b"X-A: \xff\xfe\r\n")) == 401
            assert await _status_of(port, _post_raw(b"{}", extra=b"Authorization: Bearer \xff\r\n")) == 401
            assert await _status_of(port, _post_raw(b"", length=64 * 2**20)) == 413  # huge
            garbage = random.Random(12)
            for _ in range(10):
                answer, closed = await exchange(HOST_IP, port, garbage.randbytes(garbage.randrange(1, 3000)))
                assert closed
                assert not answer or answer_status(answer) in (400, 404, 408, 413, 431)

            # with the agents' token: truncated and slow, over the bound; every malformed batch is a 400, none applied
            assert await _status_of(port, _post_raw(b"{", token, length=100)) == 408
            assert await _status_of(port, _post_raw(b"", token, length=MAX_BATCH_BYTES + 1)) == 413
            nested = b"[" * 100_000 + b"]" * 100_000
            wide_owner = {**attrs.asdict(owner(1)), "pod_uid": "u" * 10**6}
            wide = json.dumps({"messages": [{"op": "allocate", "owner": wide_owner}]}).encode()
            bodies = [nested, b"[]", b"\xff\xfe", b'{"messages": "x"}', b'{"messages": [], "sender": 5}', wide,
                      b'{"messages": [{"op": "allocate", "owner": {"pod_uid": [1]}}]}',
                      json.dumps({"messages": [{"op": "allocate", "owner": attrs.asdict(owner(1)),
                                                "avoid": {"version": 4, "ranges": [[1, 2**40]]}}]}).encode(),
                      json.dumps({"messages": [], "within": float("nan")}).encode()]  # fmt: skip
            for body in bodies:
                answer, closed = await exchange(HOST_IP, port, _post_raw(body, token))
                assert closed
                assert answer_status(answer) == 400, answer[:200]
            for name in ("", "Shared", "a/b", "%2e%2e", "x" * 254, "shared%3Fwatch=1"):
                head = f"POST /v1/pools/{name} HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {token}\r\n"
                assert await _status_of(port, head.encode() + b"Content-Length: 2\r\n\r\n{}") == 404, name
            empty = 0  # NB: {"messages": []} is a batch of nothing, and may come up
            for _ in range(40):
                body = json.dumps(_random_json(garbage, 4)).encode()
                status = await _status_of(port, _post_raw(body, token))
                assert status in (200, 400)
                empty += status == 200

            after = await b.admin.get("SpiderIPPool", "shared")
            assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
            assert controller.pool_host is not None
            assert controller.pool_host.batches == empty
            allocation = await handle.allocate(owner(1))  # and the host still serves
            assert await handle.verify(allocation.ip, owner(1).key, allocation.recorded_at)
            assert controller.stats()["pools"]["shared"]["requests"] == 1
            assert await no_duplicates(b.admin) == [allocation.ip]


def _random_json(rng: random.Random, depth: int) -> Any:
    """A random JSON value: what a confused or hostile client might post as a batch."""
    kind = rng.randrange(7 if depth else 4)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice([0, -1, 2**70, 1.5, "allocate", "", "messages"])
    if kind in (2, 3):
        return "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(8)))
    if kind == 4:
        return [_random_json(rng, depth - 1) for _ in range(rng.randrange(4))]
    keys = ["messages", "sender", "within", "op", "owner", "key", rng.choice("abc")]
    return {rng.choice(keys): _random_json(rng, depth - 1) for _ in range(rng.randrange(4))}
