"""Suite-wide test configuration: Hypothesis profiles, the ``agent`` fixture, and skip reasons in trio tests.

``dev`` (the default) keeps property tests quick on a laptop; ``ci`` runs more examples and prints the blob
that reproduces a failure (``@reproduce_failure``).  Pick one with ``HYPOTHESIS_PROFILE=ci``.  Neither has a
deadline: timing varies too much on shared CI machines to make slow examples fail (attrs does the same).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Generator

import pytest
from hypothesis import settings

from tests.support import RunningAgent, running_agent

settings.register_profile("dev", deadline=None)
settings.register_profile("ci", deadline=None, max_examples=500, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture
async def agent() -> AsyncIterator[RunningAgent]:
    """An agent in this test's trio run, on a fresh embedded store, with the shim installed beside it."""
    async with running_agent() as running:
        yield running


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, object, object]:
    """Keep the reason of a ``pytest.skip`` raised inside a trio test.

    pytest-trio 0.8 finds the skip inside trio's exception group and skips again without a message, so the
    report said only "Skipped"; the original is still the new one's ``__context__``.
    """
    try:
        return (yield)
    except pytest.skip.Exception as skipped:
        original = skipped.__context__
        while isinstance(original, BaseExceptionGroup) and len(original.exceptions) == 1:
            original = original.exceptions[0]
        if not skipped.msg and isinstance(original, pytest.skip.Exception):
            raise original from None
        raise
