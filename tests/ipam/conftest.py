"""Fixtures and fakes for the actor tests: a real embedded store, a seeded pool, a running PoolActor.

``InterferingStore`` wraps any ``Store``.  It counts the actor's status writes, can play "another writer"
(a second ``PoolLedger`` for a foreign owner, written through the wrapped store just before the actor's next
write, so that write carries a stale resourceVersion and conflicts), and can hold the actor's writes at a
gate to cancel it mid-batch.  Helpers here are plain functions too, for the ``@given`` and state-machine
tests, which must not use sync fixtures (STYLE §0.4).
"""

from __future__ import annotations

import collections
import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from actors.ipam.pool import PoolActor, PoolHandle, open_pool
from actors.stores.port import Obj, PassThrough, Store
from actors.stores.sqlite import SqliteStore
from spider.addr import int_to_ip
from spider.errors import PoolExhausted
from spider.kinds import SPIDER_API_VERSION
from spider.pool import KIND, Owner, PoolLedger

TIMEOUT = 10  # seconds; an absolute bound on every test's I/O
POOL = "p"
SUBNET = "10.0.0.0/24"
IPS = "10.0.0.10-10.0.0.59"  # 50 addresses
CAPACITY = 50


def pool_object(name: str = POOL, *, subnet: str = SUBNET, ips: str = IPS) -> Obj:
    """A SpiderIPPool with no allocations."""
    return {
        "apiVersion": SPIDER_API_VERSION,
        "kind": KIND,
        "metadata": {"name": name},
        "spec": {"subnet": subnet, "ips": [ips], "gateway": str(ipaddress.ip_network(subnet)[1])},
    }


async def seed_pool(store: Store, name: str = POOL, *, subnet: str = SUBNET, ips: str = IPS) -> Obj:
    """Create the pool in the store."""
    return await store.create(pool_object(name, subnet=subnet, ips=ips))


def owner(i: int | str, *, nic: str = "eth0", container: str = "c") -> Owner:
    """An owner of this process's actor (pod ``default/pod-<i>``)."""
    return Owner(f"uid-{i}", nic, "default", f"pod-{i}", f"{container}-{i}", "node-a")


def foreign(i: int | str) -> Owner:
    """An owner served by another writer (another node's agent)."""
    return Owner(f"other-{i}", "eth0", "default", f"other-{i}", f"oc-{i}", "node-b")


async def persisted(store: Store, name: str = POOL) -> dict[tuple[str, str], str]:
    """The stored allocations as ``{owner key: bare address}``; asserts no address has two records."""
    ledger = PoolLedger.from_object(await store.get(KIND, name))
    by_owner: dict[tuple[str, str], str] = {}
    for ip, rec in ledger.records.items():
        key = (rec.pod_uid, rec.nic)
        assert key not in by_owner, f"{key} holds two addresses"
        by_owner[key] = int_to_ip(ip, ledger.pool.version)
    return by_owner


async def another_writer(store: Store, who: Owner, name: str = POOL) -> str | None:
    """Allocate for ``who`` the way another agent would: read, fold, write guarded by the version read.

    Returns the bare address, or ``None`` when the pool is full.
    """
    obj = await store.get(KIND, name)
    ledger = PoolLedger.from_object(obj)
    try:
        ip, changed = ledger.allocate(who)
    except PoolExhausted:
        return None
    if changed:
        body = {
            "apiVersion": SPIDER_API_VERSION,
            "kind": KIND,
            "metadata": {"name": name, "resourceVersion": obj["metadata"]["resourceVersion"]},
            "status": ledger.to_status(),
        }
        await store.update_status(body)
    return int_to_ip(ip, ledger.pool.version)


@attrs.define(eq=False)
class InterferingStore(PassThrough):
    """A ``Store`` wrapper that counts status writes and injects a conflicting writer on demand.

    ``interfere(*owners)``: before each of the actor's next ``len(owners)`` status writes, another writer
    allocates the next owner through the wrapped store, so that write conflicts.  ``interfere_forever(o)``:
    before *every* write, another writer refreshes ``o``'s record (a new container ID each time), so the
    actor never wins.  ``gate``: when set, each write reports ``entered`` and then waits for the gate.
    """

    inner: Store
    writes: int = 0
    """``update_status`` calls that reached this wrapper (the actor's writes, conflicting or not)."""
    taken: dict[tuple[str, str], str | None] = attrs.field(factory=dict)
    """What the other writer got, per foreign owner key (``None``: the pool was full)."""
    _pending: collections.deque[Owner] = attrs.field(factory=collections.deque)
    _forever: Owner | None = None
    gate: trio.Event | None = None
    entered: trio.Event = attrs.field(factory=trio.Event)

    def interfere(self, *owners: Owner) -> None:
        """Let another writer take an address for each owner, one just before each next write."""
        self._pending.extend(owners)

    def interfere_forever(self, who: Owner | None) -> None:
        """Let another writer modify the pool before every write from now on (``None``: stop)."""
        self._forever = who

    @property
    def pending(self) -> int:
        """Interferences not yet used."""
        return len(self._pending)

    async def update_status(self, obj: Obj) -> Obj:
        self.writes += 1
        if self.gate is not None:
            self.entered.set()
            await self.gate.wait()
        if self._pending:
            who = self._pending.popleft()
            self.taken[who.key] = await another_writer(self.inner, who, obj["metadata"]["name"])
        elif self._forever is not None:
            who = attrs.evolve(self._forever, container_id=f"{self._forever.container_id}-{self.writes}")
            self.taken[who.key] = await another_writer(self.inner, who, obj["metadata"]["name"])
        return await self.inner.update_status(obj)


@attrs.define(eq=False)
class CountsPoolReads(InterferingStore):
    """Counts the reads of the pool: whole (``get``) and of its metadata alone, each of which takes
    ``metadata_delay`` seconds (so that looks arriving meanwhile wait for the next read)."""

    whole: int = 0
    metadata: int = 0
    metadata_delay: float = 0.0

    async def get(self, kind: str, name: str, namespace: str = "") -> Obj:
        self.whole += kind == KIND
        return await super().get(kind, name, namespace)

    async def get_metadata(self, kind: str, name: str, namespace: str = "") -> dict[str, Any]:
        self.metadata += kind == KIND
        if self.metadata_delay:
            await trio.sleep(self.metadata_delay)
        return await super().get_metadata(kind, name, namespace)


@pytest.fixture
async def sqlite(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """The embedded store on a fresh file, with the pool seeded; closed after the test."""
    with trio.fail_after(TIMEOUT):
        s = await SqliteStore.open(tmp_path / "store.db")
        await seed_pool(s)
    try:
        yield s
    finally:
        await s.aclose()


@pytest.fixture
def store(sqlite: SqliteStore) -> InterferingStore:
    """The store the actor uses: the embedded one, counted, ready to be interfered with."""
    return InterferingStore(sqlite)


@pytest.fixture
async def pool(nursery: trio.Nursery, store: InterferingStore) -> tuple[PoolHandle, PoolActor]:
    """A running PoolActor for the seeded pool, and its handle."""
    handle, actor = open_pool(POOL, store)
    with trio.fail_after(TIMEOUT):
        await nursery.start(actor.run)
    return handle, actor


@pytest.fixture
def handle(pool: tuple[PoolHandle, PoolActor]) -> PoolHandle:
    """The running actor's handle."""
    return pool[0]
