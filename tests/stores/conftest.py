"""Store backends for the contract tests: each ``backend`` fixture param is one ``Store`` implementation.

The contract tests (``test_contract.py``) see only the ``Store`` port and this module's ``Backend``.  To add a
backend (the in-process fake API server; a real cluster when ``SPIDER_TEST_KUBECONFIG`` is set), write a class
with the ``Backend`` methods and add its factory to ``BACKENDS``; a factory may ``pytest.skip``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Protocol

import attrs
import pytest

from actors.stores.port import Store, WatchEvent
from actors.stores.sqlite import SqliteStore
from tests.stores.kube_backends import KubeFakeBackend, kube_real_backend, real_cluster_kubeconfig


class Backend(Protocol):
    """One store implementation, as the contract tests drive it."""

    async def open(self) -> Store:
        """A new client on the backend's one shared storage (another connection, as another process has)."""
        ...

    async def compact(self, store: Store) -> None:
        """Forget all watch history up to now, so a watch from an earlier version gets ``Gone``.

        A backend that cannot force this (a real cluster) calls ``pytest.skip``.
        """
        ...

    async def aclose(self) -> None:
        """Close every client ``open`` returned."""
        ...


@attrs.define
class SqliteBackend:
    """The embedded store: a fresh SQLite file per test."""

    path: Path
    opened: list[SqliteStore] = attrs.Factory(list)

    async def open(self) -> Store:
        store = await SqliteStore.open(self.path)
        self.opened.append(store)
        return store

    async def compact(self, store: Store) -> None:
        assert isinstance(store, SqliteStore)
        await store.compact(keep=0)

    async def aclose(self) -> None:
        for store in self.opened:
            await store.aclose()


BACKENDS: dict[str, Callable[[Path], Backend]] = {
    "sqlite": lambda tmp_path: SqliteBackend(tmp_path / "state" / "store.db"),
    # The Kubernetes store on the fake API server (tests/fakeapi), always; on a real cluster when
    # $SPIDER_TEST_KUBECONFIG names one (tests/stores/kube_backends.py).
    "kube-fake": lambda tmp_path: KubeFakeBackend(tmp_path),
}
if real_cluster_kubeconfig() is not None:
    BACKENDS["kube-real"] = kube_real_backend


@pytest.fixture(params=sorted(BACKENDS))
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """Each backend in turn."""
    made = BACKENDS[request.param](tmp_path)
    try:
        yield made
    finally:
        await made.aclose()


@pytest.fixture
async def store(backend: Backend) -> Store:
    """A client of the backend under test."""
    return await backend.open()


async def take(events: AsyncIterator[WatchEvent], n: int) -> list[WatchEvent]:
    """The next ``n`` events of a watch; then the watch is closed."""
    seen: list[WatchEvent] = []
    try:
        async for event in events:
            seen.append(event)
            if len(seen) == n:
                break
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
    return seen
