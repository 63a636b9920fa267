"""Tests that ping skip, with the reason, where ``ping`` is missing, instead of failing as unreachable; proved by
hiding ``ping`` from the ``PATH`` (nothing is uninstalled)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.netns.coordinator_topology import why_not
from tests.netns.reachability import PING_MISSING, path_without_ping, require_ping
from tests.support import ROOT

WHY_NOT = why_not()

PINGING_TESTS = [
    "tests/netns/test_coordinator.py::test_an_underlay_pod_reaches_its_host_another_pod_and_a_service_through_the_host",
    "tests/netns/test_coordinator.py::test_a_dual_stack_pod_reaches_the_host_over_both_families",
    "tests/netns/test_macvlan.py::test_two_macvlan_pods_reach_each_other",
    "tests/netns/test_probing.py::test_an_unsolicited_advertisement_updates_a_neighbours_cache",
    "tests/netns/test_demo.py::test_the_demo_gives_real_pods_addresses_that_ping_each_other_and_their_host_and_cleans_up",
]


def test_a_path_without_ping_keeps_every_other_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hidden = path_without_ping(tmp_path / "bin")
    monkeypatch.setenv("PATH", hidden)
    assert shutil.which("ping") is None
    assert shutil.which("sh") is not None


def test_require_ping_skips_with_the_reason_when_ping_is_not_on_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", path_without_ping(tmp_path / "bin"))
    with pytest.raises(pytest.skip.Exception, match="apt-get install iputils-ping"):
        require_ping()


@pytest.mark.netns
@pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")
def test_every_pinging_test_is_skipped_with_the_reason_when_ping_is_hidden(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": path_without_ping(tmp_path / "bin")}
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *PINGING_TESTS]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(PINGING_TESTS)} skipped" in done.stdout, done.stdout
    assert done.stdout.count(PING_MISSING) == len(PINGING_TESTS), done.stdout
    assert "passed" not in done.stdout
    assert "failed" not in done.stdout
