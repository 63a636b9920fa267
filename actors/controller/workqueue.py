"""The controllers' work queue: keys waiting to be reconciled, and the growing delays before a key that failed is
tried again (client-go's workqueue with its per-item rate limiter).

Owns ``WorkQueue``, used by every controller whose rules run per key (pools and subnets, SpiderMultusConfigs,
applications' auto pools), and ``backoff``, the delay schedule they and the informers share.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Generic, TypeVar

import attrs
import trio

K = TypeVar("K", bound=Hashable)

RETRY_DELAYS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
"""Seconds before a key whose reconcile failed is tried again, growing per consecutive failure of that key."""


def backoff(delays: Sequence[float], failures: int) -> float:
    """The delay after ``failures`` consecutive failures (the first after one; the last one from then on)."""
    return delays[min(max(failures, 1), len(delays)) - 1]


@attrs.define(eq=False)
class WorkQueue(Generic[K]):
    """Keys waiting to be reconciled, each queued at most once (client-go's "dirty" set).

    A key taken by the worker can be queued again at once, so a change made while it is being reconciled is not
    lost.  A key whose reconcile failed comes back after a delay that grows with its consecutive failures
    (``failed``) until one succeeds (``succeeded``).
    """

    _send: trio.MemorySendChannel[K]
    _recv: trio.MemoryReceiveChannel[K]
    delays: tuple[float, ...] = RETRY_DELAYS
    _queued: set[K] = attrs.field(factory=set)
    _failures: dict[K, int] = attrs.field(factory=dict)

    @classmethod
    def open(cls, delays: tuple[float, ...] = RETRY_DELAYS) -> WorkQueue[K]:
        """An empty queue (unbounded: it holds each key once, so at most one entry per object)."""
        send, recv = trio.open_memory_channel[K](math.inf)
        return cls(send, recv, delays)

    def add(self, key: K) -> None:
        """Queue ``key`` unless it is already waiting."""
        if key not in self._queued:
            self._queued.add(key)
            self._send.send_nowait(key)

    async def get(self) -> K:
        """The next key, waiting for one."""
        key = await self._recv.receive()
        self._queued.discard(key)
        return key

    def delay(self, failures: int) -> float:
        """This queue's delay after ``failures`` consecutive failures (``backoff``)."""
        return backoff(self.delays, failures)

    def failed(self, nursery: trio.Nursery, key: K) -> None:
        """``key`` failed once more: queue it again after the delay its consecutive failures have reached."""
        failures = self._failures[key] = self._failures.get(key, 0) + 1
        self.later(nursery, key, self.delay(failures))

    def succeeded(self, key: K) -> None:
        """``key`` was reconciled: its next failure waits the shortest delay again."""
        self._failures.pop(key, None)

    def later(self, nursery: trio.Nursery, key: K, delay: float) -> None:
        """Queue ``key`` in ``delay`` seconds."""
        nursery.start_soon(self._add_later, key, delay)

    async def _add_later(self, key: K, delay: float) -> None:
        await trio.sleep(delay)
        self.add(key)

    def __len__(self) -> int:
        return len(self._queued)
