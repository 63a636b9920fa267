"""Supervision: keep actors running through transient failures and let bugs crash the process.

Owns ``Supervisor``: one nursery, one cancel scope per child.  A child that fails with a ``TransientError``
is restarted after a backoff delay, which grows while it keeps failing and starts over once a run has lasted
longer than all the delays together; any other exception is a bug and propagates (one-cancels-all), so the
process exits and its manager (kubelet, systemd, the test) restarts it with the store as the truth.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from spider.errors import TransientError

log = logging.getLogger(__name__)

FIBONACCI = (0.1, 0.1, 0.2, 0.3, 0.5, 0.8, 1.3, 2.1, 3.4, 5.5)

Runner = Callable[..., Awaitable[None]]


@attrs.define
class Supervisor:
    """Starts children in one nursery and restarts them on transient failures."""

    _nursery: trio.Nursery
    _scopes: dict[str, trio.CancelScope] = attrs.field(factory=dict)
    restarts: dict[str, int] = attrs.field(factory=dict)

    async def start(self, name: str, run: Runner, *, delays: tuple[float, ...] = FIBONACCI) -> Any:
        """Start ``run(task_status=...)`` under supervision; returns when it reports started."""
        return await self._nursery.start(self._keep_alive, name, run, delays)

    def stop(self, name: str, reason: str) -> None:
        """Cancel one child for good, with the reason shown in its ``Cancelled``."""
        scope = self._scopes.pop(name, None)
        if scope is not None:
            scope.cancel(reason=reason)

    def running(self, name: str) -> bool:
        """Whether a child of that name is supervised now."""
        return name in self._scopes

    async def _keep_alive(
        self,
        name: str,
        run: Runner,
        delays: tuple[float, ...],
        *,
        task_status: Any = trio.TASK_STATUS_IGNORED,
    ) -> None:
        status = _OnceStatus(task_status)
        with trio.CancelScope() as scope:
            self._scopes[name] = scope
            try:
                attempt = 0
                while True:
                    began = trio.current_time()
                    try:
                        await run(task_status=status)
                        return
                    except TransientError as exc:
                        if trio.current_time() - began > sum(delays):  # NB: a healthy run: the backoff starts over
                            attempt = 0
                        delay = delays[min(attempt, len(delays) - 1)]
                        attempt += 1
                        self.restarts[name] = self.restarts.get(name, 0) + 1
                        log.warning("actor %s failed (%s); restarting in %.1fs", name, exc, delay)
                        await trio.sleep(delay)
            finally:
                if self._scopes.get(name) is scope:
                    del self._scopes[name]


@attrs.define
class _OnceStatus:
    """Passes the first ``started()`` through to the starter; restarts report nothing more."""

    _inner: Any
    _done: bool = False

    def started(self, value: Any = None) -> None:
        if not self._done:
            self._done = True
            self._inner.started(value)
