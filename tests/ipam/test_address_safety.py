"""Address safety of ADD and DEL (issue 11): a DEL without a pod UID never frees a live pod's addresses, and
whatever a failed or interrupted ADD left in the pools (records without an endpoint) a DEL of that sandbox
frees: after a store that fails between the pool write and the endpoint write, and after a SIGKILLed agent.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from actors.ipam.check import check_store
from actors.ipam.plugin import Plugin
from actors.ipam.service import IpamService, IpamSettings, PoolRegistry
from actors.runtime.supervisor import Supervisor
from actors.stores.port import Obj, Store
from actors.stores.sqlite import SqliteStore
from actors.tools.manifests import apply
from spider.endpoint import KIND as ENDPOINT
from spider.errors import StoreUnavailable
from spider.ipam_request import AddRequest, DelRequest
from spider.pool import KIND as POOL
from spider.pool import Owner, PoolLedger
from tests.controller.support import eventually
from tests.ipam.conftest import TIMEOUT, InterferingStore
from tests.support import AgentProcess, cni_env, installed_shim, netconf, pod_args, pool_object, short_tmp

V4 = pool_object("v4", "10.40.0.0/24", ["10.40.0.10-10.40.0.59"])
V6 = pool_object("v6", "fd40::/64", ["fd40::10-fd40::59"])


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """An embedded store with an IPv4 pool ``v4`` and an IPv6 pool ``v6``."""
    s = await SqliteStore.open(tmp_path / "store.db")
    await s.create(V4)
    await s.create(V6)
    try:
        yield s
    finally:
        await s.aclose()


def service(nursery: trio.Nursery, store: Store, **settings: Any) -> IpamService:
    return IpamService(store, PoolRegistry(store, Supervisor(nursery)), "node-1", IpamSettings(**settings))


async def records(store: Store, pool: str) -> dict[int, Any]:
    return dict(PoolLedger.from_object(await store.get(POOL, pool)).records)


async def live_pod(store: Store, name: str) -> str:
    """Create a running pod; returns the UID the store gave it."""
    meta = {"name": name, "namespace": "default", "finalizers": ["test/kubelet"]}  # a delete leaves it terminating
    obj = await store.create({"apiVersion": "v1", "kind": "Pod", "metadata": meta})
    return str(obj["metadata"]["uid"])


def add(name: str, uid: str, container: str = "ctr-1") -> AddRequest:
    return AddRequest(container, "eth0", "/var/run/netns/x", "default", name, uid, ("v4",), ("v6",))


# --- a DEL without a pod UID ------------------------------------------------------------------------------------


async def test_a_cni_del_without_a_pod_uid_keeps_a_live_pods_addresses(store: SqliteStore) -> None:
    uid = await live_pod(store, "web")
    conf = json.dumps(netconf("/unused", default_ipv4_ippool=["v4"])).encode()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            plugin = Plugin(service(nursery, store))
            added = await plugin.handle(cni_env("ADD", "ctr-1", "eth0", pod_args("web", uid)), conf)
            assert added.exit_code == 0, added.stdout
            no_uid = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=x"
            deleted = await plugin.handle(cni_env("DEL", "ctr-1", "eth0", no_uid), conf)
            assert deleted.exit_code == 0, deleted.stdout
            nursery.cancel_scope.cancel(reason="test over")
    assert [r.pod_uid for r in (await records(store, "v4")).values()] == [uid]
    assert len((await store.list(ENDPOINT)).items) == 1


async def test_a_del_without_a_pod_uid_frees_a_terminating_pods_addresses(store: SqliteStore) -> None:
    uid = await live_pod(store, "web")
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            ipam = service(nursery, store)
            await ipam.allocate(add("web", uid))
            await store.delete("Pod", "web", "default")  # terminating: the kubelet tears the sandbox down
            freed = await ipam.release(DelRequest("ctr-1", "eth0", "default", "web", ""))
            nursery.cancel_scope.cancel(reason="test over")
    assert sorted(freed) == ["10.40.0.10/24", "fd40::10/64"]
    assert await records(store, "v4") == {}
    assert (await store.list(ENDPOINT)).items == []


# --- records a failed ADD left without an endpoint --------------------------------------------------------------


async def test_a_del_frees_pool_records_of_its_sandbox_that_no_endpoint_lists(store: SqliteStore) -> None:
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            ipam = service(nursery, store)
            for pool in ("v4", "v6"):  # as an ADD that died before its endpoint write leaves them
                await (await ipam.pools.get(pool)).allocate(Owner("uid-a", "eth0", "default", "a", "ctr-a", "node-1"))
            await (await ipam.pools.get("v4")).allocate(Owner("uid-b", "eth0", "default", "b", "ctr-b", "node-1"))
            assert await ipam.release(DelRequest("ctr-old", "eth0", "default", "a", "uid-a")) == []
            freed = await ipam.release(DelRequest("ctr-a", "eth0", "default", "a", "uid-a"))
            nursery.cancel_scope.cancel(reason="test over")
    assert sorted(freed) == ["10.40.0.10/24", "fd40::10/64"]
    assert [r.pod_uid for r in (await records(store, "v4")).values()] == ["uid-b"]  # another pod's stays
    assert await records(store, "v6") == {}


async def test_a_del_leaves_a_live_pods_records_alone_even_without_an_endpoint(store: SqliteStore) -> None:
    uid = await live_pod(store, "web")
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            ipam = service(nursery, store)
            await (await ipam.pools.get("v4")).allocate(Owner(uid, "eth0", "default", "web", "ctr-1", "node-1"))
            assert await ipam.release(DelRequest("ctr-1", "eth0", "default", "web", uid)) == []
            nursery.cancel_scope.cancel(reason="test over")
    assert len(await records(store, "v4")) == 1


@attrs.define(eq=False)
class FailsAfterPoolWrite(InterferingStore):
    """Once a pool status write has gone through, every write fails (the API server went away) until
    ``heal()``: the ADD's endpoint write fails, and so does its undo."""

    broken: bool = False

    def heal(self) -> None:
        self.broken = False

    def _check(self) -> None:
        if self.broken:
            raise StoreUnavailable(reason="the test broke the store")

    async def update_status(self, obj: Obj) -> Obj:
        self._check()
        written = await self.inner.update_status(obj)
        self.broken = True
        return written

    async def create(self, obj: Obj) -> Obj:
        self._check()
        return await self.inner.create(obj)

    async def update(self, obj: Obj) -> Obj:
        self._check()
        return await self.inner.update(obj)


async def test_an_add_whose_endpoint_write_and_undo_fail_leaves_nothing_its_del_cannot_free(
    store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    faulty = FailsAfterPoolWrite(store)
    request = AddRequest("ctr-1", "eth0", "/var/run/netns/x", "default", "web", "uid-web", ("v4",), ())
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            ipam = service(nursery, faulty, undo_budget=0.3, endpoint_budget=0.3)
            with caplog.at_level(logging.WARNING), pytest.raises(StoreUnavailable):
                await ipam.allocate(request)
            assert len(await records(store, "v4")) == 1, "the undo was meant to fail too"
            faulty.heal()
            freed = await ipam.release(DelRequest("ctr-1", "eth0", "default", "web", "uid-web"))
            nursery.cancel_scope.cancel(reason="test over")
    assert freed == ["10.40.0.10/24"]
    assert await records(store, "v4") == {}
    assert (await store.list(ENDPOINT)).items == []
    report = await check_store(store)
    assert report.consistent, report.findings
    undo = [r.getMessage() for r in caplog.records if "could not undo" in r.getMessage()]
    assert len(undo) == 1
    assert "10.40.0.10" in undo[0]
    assert "pool v4" in undo[0]
    assert "default/web" in undo[0]


@attrs.define(eq=False)
class RefusesOneRelease(InterferingStore):
    """The first pool write after ``arm()`` fails with a transient error; the rest pass."""

    armed: bool = False

    def arm(self) -> None:
        self.armed = True

    async def update_status(self, obj: Obj) -> Obj:
        if self.armed:
            self.armed = False
            raise StoreUnavailable(reason="one refusal")
        return await self.inner.update_status(obj)

    async def create(self, obj: Obj) -> Obj:
        if obj["kind"] == ENDPOINT:
            self.arm()  # the endpoint write fails, and the first give-back with it
            raise StoreUnavailable(reason="endpoint refused")
        return await self.inner.create(obj)


async def test_the_undo_of_a_failed_add_retries_a_give_back_the_store_refused(store: SqliteStore) -> None:
    faulty = RefusesOneRelease(store)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            ipam = service(nursery, faulty, endpoint_budget=0.1)
            with pytest.raises(StoreUnavailable):
                await ipam.allocate(add("web", "uid-web"))
            nursery.cancel_scope.cancel(reason="test over")
    assert await records(store, "v4") == {}
    assert await records(store, "v6") == {}


@attrs.define(eq=False)
class RefusesPoolWrites(InterferingStore):
    """Pool status writes fail while ``refusing``; everything else passes."""

    refusing: bool = False

    async def update_status(self, obj: Obj) -> Obj:
        if self.refusing and obj["kind"] == POOL:
            raise StoreUnavailable(reason="pool writes refused")
        return await self.inner.update_status(obj)


async def test_a_del_whose_pool_write_failed_while_its_endpoint_went_frees_everything_when_retried(
    store: SqliteStore,
) -> None:
    faulty = RefusesPoolWrites(store)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            ipam = service(nursery, faulty)
            await ipam.allocate(add("web", "uid-web"))
            faulty.refusing = True  # the DEL's pool writes fail; its endpoint write, made at the same time, does not
            with pytest.raises(StoreUnavailable):
                await ipam.release(DelRequest("ctr-1", "eth0", "default", "web", "uid-web"))
            assert (await store.list(ENDPOINT)).items == []
            assert len(await records(store, "v4")) == len(await records(store, "v6")) == 1
            faulty.refusing = False  # the runtime retries the DEL: no endpoint now, the records name the sandbox
            freed = await ipam.release(DelRequest("ctr-1", "eth0", "default", "web", "uid-web"))
            nursery.cancel_scope.cancel(reason="test over")
    assert sorted(freed) == ["10.40.0.10/24", "fd40::10/64"]
    assert await records(store, "v4") == await records(store, "v6") == {}
    report = await check_store(store)
    assert report.consistent, report.findings


# --- a SIGKILLed agent ------------------------------------------------------------------------------------------

BIG = pool_object("big", "10.41.0.0/22", ["10.41.0.1-10.41.3.232"])


async def shim(agent: AgentProcess, shim_path: Path, command: str, n: int, limiter: trio.CapacityLimiter) -> int:
    env = cni_env(command, f"ctr-{n}", "eth0", pod_args(f"pod-{n}", f"uid-{n}"))
    conf = netconf(agent.socket_path, default_ipv4_ippool=["big"])
    async with limiter:
        done = await trio.run_process(
            [str(shim_path)], stdin=json.dumps(conf).encode(), env=env, capture_stdout=True, check=False
        )
    return done.returncode


@pytest.mark.slow
async def test_after_a_sigkill_mid_burst_deleting_every_pod_tried_empties_the_pool() -> None:
    with short_tmp() as d:
        seeded = await SqliteStore.open(d / "store.db")
        try:
            await apply(seeded, BIG)
        finally:
            await seeded.aclose()
        agent = AgentProcess(d / "store.db", d / "a.sock", "node-1", d / "a.log")
        shim_path = installed_shim(d / "bin")
        limiter = trio.CapacityLimiter(100)
        answered: dict[int, int] = {}

        async def one(n: int) -> None:
            answered[n] = await shim(agent, shim_path, "ADD", n, limiter)

        async def some_answered() -> bool:
            return sum(code == 0 for code in answered.values()) >= 20

        try:
            await trio.to_thread.run_sync(agent.start)
            with trio.fail_after(300):
                async with trio.open_nursery() as nursery:
                    for n in range(400):
                        nursery.start_soon(one, n)
                    await eventually(some_answered, within=120, what="the first answers")
                    await trio.to_thread.run_sync(agent.kill)
            assert any(code != 0 for code in answered.values()), "the kill landed after the burst"
            await trio.to_thread.run_sync(agent.start)
            with trio.fail_after(300):
                async with trio.open_nursery() as nursery:
                    deleted: dict[int, int] = {}

                    async def delete(n: int) -> None:
                        deleted[n] = await shim(agent, shim_path, "DEL", n, limiter)

                    for n in answered:
                        nursery.start_soon(delete, n)
            assert all(code == 0 for code in deleted.values())
        finally:
            await trio.to_thread.run_sync(agent.stop)
        store = await SqliteStore.open(d / "store.db")
        try:
            status = (await store.get(POOL, "big")).get("status") or {}
            endpoints = (await store.list(ENDPOINT)).items
            report = await check_store(store)
        finally:
            await store.aclose()
    assert status.get("allocatedIPCount", 0) == 0, status.get("allocatedIPs")
    assert endpoints == []
    assert report.consistent, report.findings


@attrs.define(eq=False)
class SlowFirstPoolWrite(InterferingStore):
    """The first pool status write takes five seconds (a slow API server)."""

    writing: trio.Event = attrs.field(factory=trio.Event)

    async def update_status(self, obj: Obj) -> Obj:
        if obj["kind"] == POOL and not self.writing.is_set():
            self.writing.set()
            await trio.sleep(5)
        return await super().update_status(obj)


async def test_an_add_cancelled_while_its_pool_writes_gives_the_address_back(store: SqliteStore) -> None:
    # NB: the agent's drain cancels an ADD whose request sits in a pool actor's batch: the actor commits it
    # anyway, and the ADD used to give back only what was answered before, leaving that address held
    slow = SlowFirstPoolWrite(store)
    with trio.fail_after(TIMEOUT + 10):
        async with trio.open_nursery() as nursery:
            ipam = service(nursery, slow)
            with trio.CancelScope() as request:
                nursery.start_soon(_cancel_when, slow.writing, request)
                await ipam.allocate(add("p", "uid-p"))
            assert request.cancelled_caught
            await trio.sleep(6)  # NB: the actor finishes the batch it holds (actors outlive the API)
            nursery.cancel_scope.cancel()
    assert (await store.list(ENDPOINT)).items == []
    assert await records(store, "v4") == {}
    assert await records(store, "v6") == {}


async def _cancel_when(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
