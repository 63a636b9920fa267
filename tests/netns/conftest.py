"""Fixtures of the network-namespace tests: ``ping_available``, which ``reachability.needs_ping`` applies."""

from __future__ import annotations

import pytest

from tests.netns.reachability import require_ping


@pytest.fixture
def ping_available() -> None:
    """Skip the test, with the reason, when ``ping`` is not installed."""
    require_ping()
