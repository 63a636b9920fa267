"""What a pool actor knows of its own writes and of the last looks they will hear.

Owns ``OwnWrites`` (the versions one actor's last writes went from and to: whether the pool moved on only
through them) and ``AwaitedLooks`` (the pool host's wait for every node's last look of a write, so that one read
of the pool's version answers them all).  ``actors.ipam.pool`` uses both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import attrs
import trio


class Look(Protocol):
    """A forwarded last look (``actors.ipam.pool.Verify``), as far as ``AwaitedLooks`` reads it."""

    @property
    def sender(self) -> str: ...

    @property
    def recorded_at(self) -> str: ...


@attrs.define
class OwnWrites:
    """The last writes one actor made: for each, the version it was guarded by, the version it made, and whether
    it kept every record (a batch of allocations and reads: an ``Allocate`` adds a record or renews its owner's
    at the same address, never drops one)."""

    limit: int = 64
    _steps: dict[str, tuple[str, bool]] = attrs.field(factory=dict)

    def add(self, before: str, after: str, kept: bool) -> None:
        """Note a write that succeeded: guarded by ``before``, it made ``after``."""
        if len(self._steps) >= self.limit:
            del self._steps[next(iter(self._steps))]
        self._steps[before] = (after, kept)

    def kept_since(self, version: str, current: str) -> bool:
        """Whether the pool went from ``version`` to ``current`` through our own writes alone, each keeping every
        record (or did not move at all).  Each write was guarded by the version before it, so no one else wrote
        between two of them."""
        for _ in range(len(self._steps) + 1):
            if version == current:
                return True
            step = self._steps.get(version)
            if step is None or not step[1]:
                return False
            version = step[0]
        return False


@attrs.define
class AwaitedLooks:
    """The nodes a hosted pool's latest write will hear last looks from: each node it answered an allocation
    (an ADD looks once its endpoint is written).  A look of that write waits, at most ``within`` seconds from
    the first one's arrival, until a look has come from every one of those nodes, or their ADDs gave back
    their addresses, so that one read of the pool's version answers them all.  One look per node is all that
    can come at once: a node sends its looks at a pool one call at a time (``PoolForwarder``), so the rest of
    its looks follow the answer to this one.  Only ever a delay: looks that waited ``within`` read."""

    within: float = 0.05
    _version: str = ""
    _pending: dict[str, set[tuple[str, str]]] = attrs.field(factory=dict)
    """Per node no look has come from yet: the owner keys it was answered allocations for."""
    _all_in: trio.Event = attrs.field(factory=trio.Event)
    _deadline: float | None = None

    def expect(self, version: str, nodes: dict[str, set[tuple[str, str]]]) -> None:
        """A write made ``version``, answering allocations to these nodes' owner keys; the looks of the write
        before wait no longer."""
        self._all_in.set()
        self._version, self._pending, self._all_in, self._deadline = version, nodes, trio.Event(), None
        self._maybe_all_in()

    def forget(self, key: tuple[str, str]) -> None:
        """No look will come for ``key`` (its ADD gave the address back)."""
        for node, keys in list(self._pending.items()):
            keys.discard(key)
            if not keys:
                del self._pending[node]
        self._maybe_all_in()

    async def arrive(self, looks: Sequence[Look]) -> None:
        """These forwarded looks are in: return once a look of their write has come from every node awaited, or
        ``within`` after the first (at once for looks of another write)."""
        ours = [msg for msg in looks if msg.sender and self._version and msg.recorded_at == self._version]
        if not ours:
            return
        for msg in ours:
            self._pending.pop(msg.sender, None)
        self._maybe_all_in()
        if self._deadline is None:
            self._deadline = trio.current_time() + self.within
        with trio.move_on_at(self._deadline):  # NB: one deadline per write: a later look waits no longer
            await self._all_in.wait()

    def _maybe_all_in(self) -> None:
        if not self._pending:
            self._all_in.set()
