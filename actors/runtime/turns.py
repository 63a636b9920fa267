"""Turns per key: tasks that act on the same thing (one pod's sandbox) take turns, others run freely.

Owns ``Turns``.  ``async with turns.of(key):`` runs its body while no other task is in a body of the same key,
in the order the tasks came (``trio.Lock`` is fair).  A key's lock exists only while some task holds or waits
for it, so a node's thousands of pods over a day leave nothing behind.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager

import attrs
import trio


@attrs.define(eq=False)
class _Turn:
    lock: trio.Lock = attrs.Factory(trio.Lock)
    users: int = 0
    """Tasks holding or waiting for the lock."""


@attrs.define(eq=False)
class Turns:
    """One turn at a time per key."""

    _turns: dict[Hashable, _Turn] = attrs.Factory(dict)

    @asynccontextmanager
    async def of(self, key: Hashable) -> AsyncIterator[None]:
        """Wait for ``key``'s turn (cancellable), hold it for the body."""
        turn = self._turns.setdefault(key, _Turn())
        turn.users += 1
        try:
            async with turn.lock:
                yield
        finally:
            turn.users -= 1
            if turn.users == 0:
                del self._turns[key]

    def __len__(self) -> int:
        """How many keys are held or waited for."""
        return len(self._turns)
