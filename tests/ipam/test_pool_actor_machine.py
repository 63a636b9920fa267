"""Stateful: a live PoolActor on the embedded store, driven by Hypothesis rules, with another writer at work;
an ADD's last look, as the pool host answers it (``PoolActor.look``, then the mailbox), says yes only for a
record that stands in the stored pool.

pytest-trio cannot run a ``RuleBasedStateMachine`` and hypothesis-trio is unmaintained (STYLE §0.3), so trio
runs in a helper thread (``LiveActor``) and the synchronous rules call into it with ``trio.from_thread.run``.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import trio
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from actors.ipam.pool import PoolActor, PoolHandle, Verify, open_pool
from actors.runtime.mailbox import Reply
from actors.stores.sqlite import SqliteStore
from spider.addr import ip_to_int
from spider.errors import PoolExhausted
from spider.pool import KIND, Owner, PoolLedger
from tests.ipam.conftest import (
    POOL,
    TIMEOUT,
    InterferingStore,
    another_writer,
    foreign,
    owner,
    persisted,
    seed_pool,
)

T = TypeVar("T")
CAPACITY = 6
mine = st.builds(owner, st.integers(0, 9), container=st.sampled_from(["a", "b"]))
theirs = st.builds(foreign, st.integers(0, 3))


class LiveActor:
    """An embedded store, a seeded pool and its running actor, in a trio loop on a helper thread."""

    def __init__(self, directory: str) -> None:
        self._directory = Path(directory)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        if not self._ready.wait(TIMEOUT) or self._error is not None:
            raise RuntimeError("the actor did not start") from self._error

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:  # reported to the test thread, not lost in this one
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        async with await SqliteStore.open(self._directory / "store.db") as sqlite:
            await seed_pool(sqlite, ips=f"10.0.0.10-10.0.0.{10 + CAPACITY - 1}")
            self.sqlite, self.store = sqlite, InterferingStore(sqlite)
            self.handle: PoolHandle
            self.actor: PoolActor
            self.handle, self.actor = open_pool(POOL, self.store)
            self._stop = trio.Event()
            async with trio.open_nursery() as nursery:
                await nursery.start(self.actor.run)
                self.token = trio.lowlevel.current_trio_token()
                self._ready.set()
                await self._stop.wait()
                nursery.cancel_scope.cancel(reason="machine torn down")

    def call(self, afn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``afn(*args)`` in the actor's loop, bounded, and return its result here."""

        async def bounded() -> T:
            with trio.fail_after(TIMEOUT):
                return await afn(*args)

        return trio.from_thread.run(bounded, trio_token=self.token)

    def call_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in the actor's loop, between its steps."""
        return trio.from_thread.run_sync(fn, *args, trio_token=self.token)

    async def look(self, ip: str, key: tuple[str, str], recorded_at: str) -> bool:
        """An ADD's last look as the pool host answers a forwarded one: outside the mailbox, else through it."""
        msg = Verify(ip, key, Reply[bool].open(), recorded_at, sender="node-1")
        if await self.actor.look([msg]):
            return await self.handle.verify(ip, key, recorded_at)
        return await msg.reply.wait()

    async def free_behind_the_actors_back(self, ip: str, uid: str) -> None:
        """Another writer (the GC of another controller) frees this record."""
        stored = await self.sqlite.get(KIND, POOL)
        ledger = PoolLedger.from_object(stored)
        assert ledger.release_ip(ip_to_int(ip), uid)
        await self.sqlite.update_status({**stored, "status": ledger.to_status()})

    def close(self) -> None:
        trio.from_thread.run_sync(self._stop.set, trio_token=self.token)
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive()
        if self._error is not None:
            raise self._error


class PoolActorMachine(RuleBasedStateMachine):
    """Allocate, release, and let another writer take addresses; nothing lost, nothing doubled."""

    holders = Bundle("holders")

    def __init__(self) -> None:
        super().__init__()
        self._tmp = tempfile.TemporaryDirectory()
        self.live = LiveActor(self._tmp.name)
        self.mine: dict[tuple[str, str], str] = {}
        self.answered: dict[tuple[str, str], tuple[str, str]] = {}
        """Every owner's last allocation (address and recorded version), held still or not: what its look asks."""
        self.theirs: dict[tuple[str, str], str] = {}

    def stored(self) -> dict[tuple[str, str], str]:
        return self.live.call(persisted, self.live.sqlite)

    @rule(target=holders, who=mine)
    def allocate(self, who: Owner) -> Owner:
        try:
            got = self.live.call(self.live.handle.allocate, who)
        except PoolExhausted:
            assert who.key not in self.mine  # a holder always gets its address back
            assert len(self.stored()) == CAPACITY  # exhausted only when full
        else:
            assert self.mine.setdefault(who.key, got.ip) == got.ip  # a repeat returns the same address
            self.answered[who.key] = (got.ip, got.recorded_at)
        return who

    @rule(data=st.data())
    def last_look(self, data: st.DataObject) -> None:
        if not self.answered:
            return
        key = data.draw(st.sampled_from(sorted(self.answered)))
        ip, recorded_at = self.answered[key]
        answer = self.live.call(self.live.look, ip, key, recorded_at)
        assert answer == (self.stored().get(key) == ip)  # NB: released since, by us or another writer: no

    @rule(who=consumes(holders))
    def another_writer_frees_one_of_mine(self, who: Owner) -> None:
        ip = self.mine.pop(who.key, None)
        if ip is not None:
            self.live.call(self.live.free_behind_the_actors_back, ip, who.pod_uid)

    @rule(who=consumes(holders))
    def release(self, who: Owner) -> None:
        freed = self.live.call(self.live.handle.release, who.key)
        held = self.mine.pop(who.key, None)
        assert freed == (None if held is None else f"{held}/24")

    @rule(who=theirs)
    def another_writer_takes_an_address(self, who: Owner) -> None:
        ip = self.live.call(another_writer, self.live.sqlite, who)  # the actor's cached version is stale now
        if ip is not None:
            self.theirs[who.key] = ip

    @rule(who=theirs)
    def another_writer_races_the_next_write(self, who: Owner) -> None:
        self.live.call_sync(self.live.store.interfere, who)  # taken just before the actor's next write

    @invariant()
    def nothing_lost_nothing_doubled(self) -> None:
        stored = self.stored()
        raced = {key: ip for key, ip in self.live.store.taken.items() if ip is not None}
        assert stored == self.mine | self.theirs | raced  # the other writer's work survives too
        assert len(set(stored.values())) == len(stored)

    def teardown(self) -> None:
        try:
            self.live.close()
        finally:
            self._tmp.cleanup()


PoolActorMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=12, deadline=None, database=None)
TestPoolActorMachine = PoolActorMachine.TestCase
