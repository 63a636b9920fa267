"""Controller tests run on every store backend of the contract tests (``tests.stores.conftest.BACKENDS``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from actors.stores.port import Store
from tests.stores.conftest import BACKENDS, Backend


@pytest.fixture(params=sorted(BACKENDS))
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """Each store backend in turn."""
    made = BACKENDS[request.param](tmp_path)
    try:
        yield made
    finally:
        await made.aclose()


@pytest.fixture
async def store(backend: Backend) -> Store:
    """A client of the backend under test."""
    return await backend.open()


@pytest.fixture
async def private_store(request: pytest.FixtureRequest, backend: Backend) -> Store:
    """A client of a backend this test has to itself: the reconciler acts on every pool it sees, so a real
    cluster (whose pools are someone's) is skipped."""
    if request.node.callspec.params.get("backend") == "kube-real":
        pytest.skip("the pool reconciler would act on every pool of the real cluster")
    return await backend.open()
