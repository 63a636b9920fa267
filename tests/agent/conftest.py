"""An agent in this test's trio run, on a fresh embedded store, with the shim installed beside it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support import RunningAgent, running_agent


@pytest.fixture
async def agent() -> AsyncIterator[RunningAgent]:
    async with running_agent() as running:
        yield running
