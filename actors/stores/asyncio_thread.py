"""The bridge from trio to asyncio: one asyncio event loop on a thread of its own, and trio tasks awaiting
coroutines on it (DESIGN §9).

kubernetes-asyncio is built on aiohttp, which needs asyncio (``actors.stores.kube`` is its only user).  One
asyncio loop runs on a dedicated daemon thread (``AsyncioThread``); a trio task submits a coroutine to it and
sleeps on a ``trio.Event`` that the coroutine's done-callback sets through the trio token, so the trio thread
never blocks.  Cancelling the trio task cancels the asyncio task and waits (briefly, shielded) for it to
finish, so a cancelled request leaves no half-read response behind; a value that arrives as the trio side
gives up (a watch's open response) goes to the caller's ``on_abandon`` to be closed, and a call in flight when
the loop closes raises ``trio.ClosedResourceError``.  This costs about 0.4 ms per request and leaves
``asyncio.new_event_loop()`` working in trio threads (pyroute2 needs it), which trio-asyncio does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import attrs
import trio

T = TypeVar("T")
CANCEL_GRACE = 5.0
"""Seconds a cancelled trio task waits for its asyncio task to finish cancelling."""


@attrs.define(eq=False)
class _Call(Generic[T]):
    """One coroutine submitted from trio: the asyncio task running it and the trio event set when it ends."""

    token: trio.lowlevel.TrioToken
    fn: Callable[..., Awaitable[T]]
    args: tuple[Any, ...]
    on_abandon: Callable[[T], object] | None = None
    """Loop thread: what to do with a value nobody will take (the trio side was cancelled), e.g. close it."""
    finished: trio.Event = attrs.Factory(trio.Event)
    task: asyncio.Task[T] | None = None
    abandoned: bool = False
    _handed_off: bool = False  # NB: cancel() and _done() may both see a finished task; hand its value off once

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Loop thread: run the coroutine as a task."""

        async def invoke() -> T:
            return await self.fn(*self.args)

        self.task = loop.create_task(invoke())
        self.task.add_done_callback(self._done)

    def cancel(self) -> None:
        """Loop thread: cancel the task (it was started: ``call_soon_threadsafe`` keeps submission order)."""
        self.abandoned = True
        if self.task is None:
            return
        if self.task.done():  # NB: it finished before the trio side saw it: its value is nobody's now
            self._abandon(self.task)
        else:
            self.task.cancel()

    def _done(self, task: asyncio.Task[T]) -> None:
        if self.abandoned:
            self._abandon(task)
        with contextlib.suppress(trio.RunFinishedError):  # NB: raised when nobody is waiting any more
            self.token.run_sync_soon(self.finished.set)

    def _abandon(self, task: asyncio.Task[T]) -> None:
        if self._handed_off or self.on_abandon is None or task.cancelled() or task.exception() is not None:
            return
        self._handed_off = True
        self.on_abandon(task.result())

    def result(self) -> T:
        """Trio thread, after ``finished``: the value, or the exception, of the coroutine."""
        assert self.task is not None
        if self.task.cancelled():  # the loop was stopped under it (``aclose``), not a trio cancellation
            raise trio.ClosedResourceError("the Kubernetes store was closed while the request was in flight")
        return self.task.result()


class AsyncioThread:
    """One asyncio event loop on a dedicated daemon thread, and the way trio tasks run coroutines on it."""

    def __init__(self, name: str = "spider-kube-asyncio") -> None:
        self._loop = asyncio.new_event_loop()
        self._closed = False
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            try:
                pending = asyncio.all_tasks(self._loop)
                for task in pending:
                    task.cancel()
                if pending:
                    self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                self._loop.run_until_complete(self._loop.shutdown_asyncgens())
                self._loop.run_until_complete(self._loop.shutdown_default_executor())
            finally:
                self._loop.close()

    async def run(
        self, fn: Callable[..., Awaitable[T]], *args: Any, on_abandon: Callable[[T], object] | None = None
    ) -> T:
        """``await fn(*args)`` on the asyncio loop; trio cancellation cancels the asyncio task.

        A value that arrives after the trio side was cancelled goes to ``on_abandon`` (on the loop thread).
        """
        if self._closed:
            raise trio.ClosedResourceError("the Kubernetes store is closed")
        call = _Call(trio.lowlevel.current_trio_token(), fn, args, on_abandon)
        self._loop.call_soon_threadsafe(call.start, self._loop)
        try:
            await call.finished.wait()
        except BaseException:  # cancelled: cancel the asyncio side too (or abandon its value), and let it finish
            # NB: also when ``finished`` is set already: the value arrived as we were cancelled, and is nobody's
            self.call_soon(call.cancel)
            with trio.CancelScope(shield=True), trio.move_on_after(CANCEL_GRACE):
                await call.finished.wait()
            raise
        return call.result()

    def call_soon(self, fn: Callable[..., object], *args: Any) -> None:
        """Run a plain function on the loop thread soon; nothing happens once the loop is gone."""
        with contextlib.suppress(RuntimeError):  # NB: raised once the loop is closed
            self._loop.call_soon_threadsafe(fn, *args)

    async def aclose(self) -> None:
        """Stop the loop (cancelling what still runs on it) and wait for the thread to end."""
        if self._closed:
            return
        self._closed = True
        self.call_soon(self._loop.stop)
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._thread.join)
