"""``spider demo`` with real interfaces: pods get addresses from macvlan + our IPAM, reach each other, and the
demo leaves no namespace behind."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.netns.test_macvlan import WHY_NOT
from tests.support import ROOT

pytestmark = [pytest.mark.netns, pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")]


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_the_demo_gives_real_pods_addresses_that_ping_each_other_and_their_host_and_cleans_up() -> None:
    before = namespaces()
    done = subprocess.run(
        [sys.executable, "-m", "actors", "demo"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Debian macvlan" in done.stdout
    assert done.stdout.count("reachable") == 6  # three pod-to-pod pings, then each pod to its host
    assert "then our coordinator" in done.stdout
    assert done.stdout.count("-> host (10.210.0.2): reachable") == 3  # only the coordinator's veth makes these
    assert "fd00:210::" in done.stdout  # the dual-stack pod
    assert "demo passed" in done.stdout
    assert namespaces() == before
