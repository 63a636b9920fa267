"""The actor runtime's messaging: bounded mailboxes and one-shot replies.

Owns ``Reply`` (the answer slot a requester awaits and an actor resolves without ever blocking), ``drain``
(the group-commit read of a mailbox), ``gather`` (the same, waiting a little for the senders it expects) and
``Paces`` (how long a sender is still worth waiting for).
An actor is a trio task that alone owns some state and reads its mailbox, a bounded trio memory channel;
other tasks hold a handle that sends messages carrying a ``Reply``.  Domain errors travel back inside the
reply as ``outcome.Error`` and are raised in the requester's task, so the actor keeps running (DESIGN §4).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Collection, Iterable
from typing import Generic, TypeVar

import attrs
import outcome
import trio

T = TypeVar("T")
M = TypeVar("M")


@attrs.define(eq=False)
class Reply(Generic[T]):
    """One-shot answer slot: the actor resolves it once, the requester awaits it once."""

    _send: trio.MemorySendChannel[outcome.Outcome[T]]
    _recv: trio.MemoryReceiveChannel[outcome.Outcome[T]]

    @classmethod
    def open(cls) -> Reply[T]:
        """A fresh slot with room for exactly one answer."""
        send, recv = trio.open_memory_channel[outcome.Outcome[T]](1)
        return cls(send, recv)

    def resolve(self, result: outcome.Outcome[T]) -> None:
        """Answer; never blocks.  A second answer, or a requester that gave up, is silently fine."""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, trio.WouldBlock):
            self._send.send_nowait(result)
        self._send.close()

    def value(self, value: T) -> None:
        """Answer with a value."""
        self.resolve(outcome.Value(value))

    def error(self, exc: BaseException) -> None:
        """Answer with an error, to be raised in the requester."""
        self.resolve(outcome.Error(exc))

    async def wait(self) -> T:
        """The answer, raising the error it carries; cancellable like any trio wait."""
        with self._recv:
            return (await self._recv.receive()).unwrap()


def drain(mailbox: trio.MemoryReceiveChannel[M], first: M, limit: int) -> list[M]:
    """``first`` plus whatever is already queued, up to ``limit`` messages, without waiting."""
    batch = [first]
    _take_queued(mailbox, batch, limit)
    return batch


def _take_queued(mailbox: trio.MemoryReceiveChannel[M], batch: list[M], limit: int) -> None:
    while len(batch) < limit:
        try:
            batch.append(mailbox.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):  # NB: closed and empty: the batch so far still counts
            break


async def gather(
    mailbox: trio.MemoryReceiveChannel[M],
    batch: list[M],
    limit: int,
    *,
    expect: int,
    within: float,
    count: Callable[[list[M]], int] = len,
    nearly: int | None = None,
    quiet: float = 0.0,
    due: Callable[[list[M]], float] | None = None,
) -> None:
    """Extend ``batch`` (which holds the first message) with what arrives until ``count(batch)`` (by default its
    length; say, the senders it holds) reaches ``expect`` or ``within`` seconds have passed, or, once it reached
    ``nearly`` or once the trio time ``due(batch)`` has passed (when the senders still missing were due), no
    message came for ``quiet`` seconds; then with whatever else is queued, up to ``limit`` messages.

    A group commit that lingers only while senders it expects (as many as last time) are still on their way:
    when they all came, the batch goes at once instead of at the end of the linger; when all but a few came and
    then nothing more, the few are taken to be busy elsewhere (the requests of a round that fell behind the
    rest, which cannot come before this batch is written) and the batch goes after a ``quiet`` pause; past
    ``due`` (when the senders it waits for were due: ``Paces``) it waits only while messages keep coming.
    ``batch`` is extended in place, so a caller cancelled meanwhile still holds (and can answer) every message
    taken from the mailbox.
    """
    with trio.move_on_after(within):
        while count(batch) < expect and len(batch) < limit:
            if nearly is not None and count(batch) >= nearly:
                until = trio.current_time() + quiet
            elif due is not None:
                until = max(due(batch), trio.current_time() + quiet)
            else:
                until = math.inf
            try:
                with trio.move_on_at(until) as pause:
                    batch.append(await mailbox.receive())
            except trio.EndOfChannel:  # NB: closed: what is queued is already in hand
                break
            if pause.cancelled_caught:
                break
    _take_queued(mailbox, batch, limit)


@attrs.define
class Paces:
    """When each sender's messages last came and how far apart its last two batches were (its pace), so that a
    ``gather`` waits for a sender only while it is due: ``share`` of its pace past its last message, and never
    more than a ``cap`` past it (nor more than that when its pace is not known yet).  A sender that is done (the
    end of a burst) or sent long ago (a lone message after a lull) is then not waited for at all."""

    share: float = 1.5
    _last: dict[str, float] = attrs.field(factory=dict)
    _pace: dict[str, float] = attrs.field(factory=dict)

    def note(self, arrivals: Iterable[tuple[str, float]], keep: Collection[str]) -> None:
        """One batch's ``(sender, time)`` pairs (a sender's first counts); senders not in ``keep`` are forgotten."""
        firsts: dict[str, float] = {}
        for sender, at in arrivals:
            firsts[sender] = min(at, firsts.get(sender, at))
        for sender, at in firsts.items():
            if (last := self._last.get(sender)) is not None and at > last:
                self._pace[sender] = at - last
            self._last[sender] = at
        for gone in self._last.keys() - set(keep):
            del self._last[gone]
            self._pace.pop(gone, None)

    def until(self, senders: Iterable[str], cap: float) -> float:
        """The latest time (trio clock) any of ``senders`` is still due: ``-inf`` for none, ``inf`` when one of
        them never sent (nothing says when it comes)."""
        due = -math.inf
        for sender in senders:
            last = self._last.get(sender, math.inf)
            due = max(due, last + min(cap, self.share * self._pace.get(sender, math.inf)))
        return due
