"""One sandbox's ADDs and DELs take turns in the agent: a runtime's retry of an ADD still under way, and a DEL that
overtakes its ADD (the runtime gave up on it), each wait for the call before them.  Both once cost an
address: the first ADD's undo freed what the retry answered (two pods on one address), and the DEL found
nothing yet, so what the ADD then recorded stayed held with no DEL to come."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
import trio

from actors.ipam.service import IpamService, IpamSettings, PoolRegistry
from actors.runtime.supervisor import Supervisor
from actors.stores.port import Obj, PassThrough, Store
from actors.stores.sqlite import SqliteStore
from spider.addr import int_to_ip
from spider.endpoint import KIND as ENDPOINT
from spider.errors import StoreUnavailable
from spider.ipam_request import AddRequest, DelRequest
from spider.pool import KIND, PoolLedger
from tests.ipam.conftest import TIMEOUT
from tests.support import pool_object

ADD = AddRequest("ctr-1", "eth0", "/x", "default", "p", "uid-p", ("v4",), ())


@attrs.define(eq=False)
class Gate(PassThrough):
    """Holds the first write of ``kind`` (``create`` or ``update_status``) until ``go``, then fails it when told
    to (an API server refusing that one write)."""

    inner: Store
    kind: str
    fail: bool = False
    entered: trio.Event = attrs.Factory(trio.Event)
    go: trio.Event = attrs.Factory(trio.Event)
    armed: bool = True

    async def _gate(self, obj: Obj) -> None:
        if obj["kind"] == self.kind and self.armed:
            self.armed = False
            self.entered.set()
            await self.go.wait()
            if self.fail:
                raise StoreUnavailable(reason="the API server refused this one write")

    async def create(self, obj: Obj) -> Obj:
        await self._gate(obj)
        return await self.inner.create(obj)

    async def update_status(self, obj: Obj) -> Obj:
        await self._gate(obj)
        return await self.inner.update_status(obj)


@pytest.fixture
async def v4(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = await SqliteStore.open(tmp_path / "store.db")
    await store.create(pool_object("v4", "10.30.0.0/24", ["10.30.0.10-10.30.0.19"]))
    try:
        yield store
    finally:
        await store.aclose()


async def held(store: Store) -> dict[str, str]:
    ledger = PoolLedger.from_object(await store.get(KIND, "v4"))
    return {int_to_ip(ip, 4): record.pod_uid for ip, record in ledger.records.items()}


async def test_a_retried_add_waits_for_the_first_whose_failure_then_frees_nothing_the_retry_answered(
    v4: SqliteStore,
) -> None:
    store = Gate(v4, ENDPOINT, fail=True)  # the first ADD's endpoint write is held, then refused
    failed: list[BaseException] = []
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            ipam = IpamService(store, PoolRegistry(store, Supervisor(nursery)), "node-1", IpamSettings())

            async def first() -> None:
                try:
                    await ipam.allocate(ADD)
                except StoreUnavailable as exc:
                    failed.append(exc)

            nursery.start_soon(first)
            await store.entered.wait()
            retried: list[str] = []
            answered_event = trio.Event()

            async def retry() -> None:
                (answer,) = await ipam.allocate(ADD)  # the runtime's retry of the same sandbox
                retried.append(answer.allocations[0].ip)
                answered_event.set()

            nursery.start_soon(retry)
            await trio.sleep(0.1)
            assert not retried, "the retry waits for the ADD under way"
            store.go.set()
            await answered_event.wait()
            (answered,) = retried
            assert await held(v4) == {answered: "uid-p"}
            (q,) = await ipam.allocate(AddRequest("ctr-2", "eth0", "/x", "default", "q", "uid-q", ("v4",), ()))
            assert q.allocations[0].ip != answered
            nursery.cancel_scope.cancel()
    assert failed
    endpoint = await v4.get(ENDPOINT, "p", "default")
    assert endpoint["status"]["current"]["ips"][0]["ipv4"] == f"{answered}/24"


async def test_a_del_that_overtakes_its_add_waits_for_it_and_frees_what_it_took(v4: SqliteStore) -> None:
    store = Gate(v4, KIND)  # the ADD's pool write is slow: the runtime gives up on it and sends the DEL
    freed: list[list[str]] = []
    deleted = trio.Event()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            ipam = IpamService(store, PoolRegistry(store, Supervisor(nursery)), "node-1", IpamSettings())
            nursery.start_soon(ipam.allocate, ADD)
            await store.entered.wait()

            async def delete() -> None:
                freed.append(await ipam.release(DelRequest("ctr-1", "eth0", "default", "p", "uid-p")))
                deleted.set()

            nursery.start_soon(delete)
            await trio.sleep(0.1)
            assert not freed, "the DEL waits for the ADD under way"
            store.go.set()
            await deleted.wait()
            nursery.cancel_scope.cancel()
    assert freed == [["10.30.0.10/24"]]
    assert await held(v4) == {}
    assert (await v4.list(ENDPOINT)).items == []


async def test_other_pods_do_not_wait_for_a_pods_turn(v4: SqliteStore) -> None:
    store = Gate(v4, ENDPOINT)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            ipam = IpamService(store, PoolRegistry(store, Supervisor(nursery)), "node-1", IpamSettings())
            done = trio.Event()

            async def first() -> None:
                await ipam.allocate(ADD)
                done.set()

            nursery.start_soon(first)
            await store.entered.wait()  # p's ADD is held
            (q,) = await ipam.allocate(AddRequest("ctr-2", "eth0", "/x", "default", "q", "uid-q", ("v4",), ()))
            assert q.allocations[0].ip == "10.30.0.11"
            store.go.set()
            await done.wait()
            nursery.cancel_scope.cancel()
