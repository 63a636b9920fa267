"""Whether these tests can check reachability: ``ping`` (iputils-ping) is a separate package from iproute2, so a
machine can build every namespace and still have nothing to ping with.

A test that pings carries ``@needs_ping``: without ``ping`` it is skipped with the reason before it builds anything,
instead of failing as "cannot reach its host".  ``path_without_ping`` makes a ``PATH`` that hides ``ping`` (every
other command of the real ``PATH`` stays), which is how the tests prove that skip path without uninstalling anything.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

PING_MISSING = "needs 'ping' to check reachability (apt-get install iputils-ping)"
PING_NAMES = frozenset({"ping", "ping4", "ping6"})

needs_ping = pytest.mark.usefixtures("ping_available")
"""Skip the test, with ``PING_MISSING`` as the reason, when ``ping`` is not on the ``PATH`` (see conftest)."""


def why_no_ping() -> str | None:
    """Why nothing here can ping, or ``None``.  ``ip netns exec`` looks ``ping`` up on this ``PATH``, as this does."""
    return None if shutil.which("ping") is not None else PING_MISSING


def require_ping() -> None:
    """Skip the running test when ``ping`` is missing."""
    reason = why_no_ping()
    if reason is not None:
        pytest.skip(reason)


def path_without_ping(into: Path) -> str:
    """A ``PATH`` of one directory, ``into``, holding links to every command on the current ``PATH`` but ping."""
    into.mkdir(parents=True, exist_ok=True)
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for entry in os.scandir(directory):
            link = into / entry.name
            if entry.name in PING_NAMES or link.exists() or link.is_symlink():
                continue  # the first directory on the PATH wins, as it does for a lookup
            if entry.is_file() and os.access(entry.path, os.X_OK):
                link.symlink_to(entry.path)
    return str(into)
