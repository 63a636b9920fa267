"""Shared fresh reads: many tasks that each need a read made after they asked share one.

Owns ``FreshRead``.  A task that must see the state *as it is now* (after something it did) cannot take the
answer of a read that was already under way when it asked: that read may have been served before its own
change.  ``FreshRead.read`` therefore waits out a read under way, then makes one more, which every task that
asked meanwhile shares.  So N concurrent askers cost at most two reads (one when they ask at the same moment),
and each gets an answer read after it asked.  (The pool host answers the ADDs' last looks of every node this
way: ``actors.ipam.pool``.)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import attrs
import trio

T = TypeVar("T")


@attrs.define(eq=False)
class _Round(Generic[T]):
    done: trio.Event = attrs.Factory(trio.Event)
    answered: bool = False
    """``False`` when the task making the read was cancelled before it had an answer."""
    value: T | None = None
    error: Exception | None = None


@attrs.define(eq=False)
class FreshRead(Generic[T]):
    """``await read()``: what ``fetch`` returns when called after this call began, shared with concurrent
    callers.  An exception of ``fetch`` is raised to every caller of that round; a round whose reading task was
    cancelled is read again by the others."""

    fetch: Callable[[], Awaitable[T]]
    reads: int = 0
    """How many times ``fetch`` was called."""
    _next: _Round[T] | None = None
    """The round that starts when the one under way ends; callers arriving now join it."""
    _running: _Round[T] | None = None

    async def read(self) -> T:
        """A value read after this call began."""
        while True:
            round_ = self._next
            if round_ is None:
                self._next = round_ = _Round()
                try:
                    await trio.lowlevel.checkpoint()  # NB: let the callers of this same moment join this round
                    while self._running is not None:  # NB: it may have been sent before we asked: wait it out
                        await self._running.done.wait()
                    self._next, self._running = None, round_  # NB: no checkpoint between: later callers wait for us
                    self.reads += 1
                    try:
                        round_.value = await self.fetch()
                    except Exception as exc:
                        round_.error = exc
                    round_.answered = True
                finally:
                    if self._next is round_:
                        self._next = None
                    if self._running is round_:
                        self._running = None
                    round_.done.set()
            else:
                await round_.done.wait()
            if round_.error is not None:
                raise round_.error
            if round_.answered:
                return round_.value  # type: ignore[return-value]  # NB: T itself may include None
            # NB: whoever read for this round was cancelled before the answer came: read again


__all__ = ["FreshRead"]
