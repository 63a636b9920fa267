"""``spider demo`` with real interfaces: pods get addresses from macvlan + our IPAM, reach each other, a
Deployment's SpiderSubnet pool appears, grows and goes, and the demo leaves no namespace behind; without ``ping``
it says so, skips only the reachability step and passes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.netns.reachability import needs_ping, path_without_ping
from tests.netns.test_macvlan import WHY_NOT
from tests.support import ROOT

pytestmark = [pytest.mark.netns, pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")]


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def demo(env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "actors", "demo"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
        check=False,
    )


@needs_ping
def test_the_demo_gives_real_pods_addresses_that_ping_each_other_and_their_host_and_cleans_up() -> None:
    before = namespaces()
    done = demo()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Debian macvlan" in done.stdout
    assert done.stdout.count("reachable") == 6  # three pod-to-pod pings, then each pod to its host
    assert "then our coordinator" in done.stdout
    assert done.stdout.count("-> host (10.210.0.2): reachable") == 3  # only the coordinator's veth makes these
    assert "fd00:210::" in done.stdout  # the dual-stack pod
    scene = done.stdout.partition("SpiderSubnet: an application's own pool")[2]
    assert "its pool appears" in scene
    assert "the pool grows" in scene
    assert "the pool goes" in scene
    assert "demo passed" in done.stdout
    assert "not checked" not in done.stdout
    assert namespaces() == before


def test_without_ping_the_demo_says_so_skips_only_the_reachability_step_and_passes(tmp_path: Path) -> None:
    before = namespaces()
    done = demo({**os.environ, "PATH": path_without_ping(tmp_path / "bin"), "COLUMNS": "200"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Debian macvlan" in done.stdout  # the pods still got real interfaces
    assert "skipping the reachability step ('ping' is not installed: apt-get install iputils-ping)" in done.stdout
    assert "reachable" not in done.stdout
    assert "no reply" not in done.stdout
    assert "pools after DEL" in done.stdout
    assert "demo passed (reachability not checked: 'ping' is not installed" in done.stdout
    assert namespaces() == before
