"""``spider loadtest`` stopped or slowed down on the fake API server: a run stopped while it adds, or while it
asks for the agents' token, or by SIGTERM through the CLI, and a run whose calls time out on our side while
the agents go on with them, each leaves nothing behind (no pool, Terminating or not; no endpoint; no Lease) and
does not break the next run; a run that served nothing does not pass its checks."""

from __future__ import annotations

import glob
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from actors.stores.kube import KubeStore
from actors.tools.loadtest.fleet import LABEL
from actors.tools.loadtest.run import run_loadtest
from actors.tools.loadtest.scenario import Scenario, TargetRun
from spider.endpoint import KIND as ENDPOINT
from spider.pool import KIND as POOL
from tests.fakeapi import FakeApiServer
from tests.fakeapi.latency import Cost, LatencyModel
from tests.fakeapi.server import Fault
from tests.support import ROOT, short_tmp
from tests.tools.test_loadtest import fake_cluster

NOTHING = {"pools": [], "endpoints": [], "leases": []}
SLOW_POOL_WRITES = LatencyModel({"updateStatus": Cost(400.0)})
"""Every pool status write takes 0.4 s: longer than the tests' ``--call-timeout``."""


async def left_behind(kubeconfig: Path) -> dict[str, list[Any]]:
    """The load test pools (with their deletion stamp, finalizers and count), endpoints and Leases still there."""
    store = await KubeStore.open(kubeconfig)
    try:
        pools = [
            (
                o["metadata"]["name"],
                o["metadata"].get("deletionTimestamp"),
                (o.get("status") or {}).get("allocatedIPCount"),
            )
            for o in (await store.list(POOL, label_selector=f"{LABEL}=true")).items
        ]
        endpoints = [o["metadata"]["name"] for o in (await store.list(ENDPOINT, namespace="default")).items]
        leases = [
            o["metadata"]["name"]
            for o in (await store.list("Lease", namespace="default")).items
            if o["metadata"]["name"].startswith("spider-lt-")
        ]
    finally:
        await store.aclose()
    return {"pools": pools, "endpoints": endpoints, "leases": leases}


def failed_checks(run: TargetRun) -> list[tuple[str, str]]:
    return [(c.name, c.detail) for c in run.checks if not c.ok]


async def stopped_during_add(scenario: Scenario, d: Path, kubeconfig: Path, controller: bool) -> None:
    """A run cancelled (as Ctrl-C and SIGTERM do) once its fifth ADD answered, the others still in flight."""
    with trio.CancelScope() as scope:
        answered = 0

        def advance(target: str, phase: str) -> None:
            nonlocal answered
            answered += 1
            if phase == "add" and answered == 5:
                scope.cancel(reason="stopped during ADD")

        with trio.fail_after(50):
            await run_loadtest(scenario, d, kubeconfig=kubeconfig, advance=advance, controller=controller)
    assert scope.cancelled_caught


@pytest.mark.parametrize("controller", [False, True])
async def test_a_run_stopped_during_add_releases_the_adds_in_flight_and_leaves_nothing_behind(controller: bool) -> None:
    # the agents finish the ADDs the stop cut off on our side: the cleanup must DEL those pods too, or the pool
    # keeps their addresses and stays Terminating with our finalizer
    scenario = Scenario(nodes=2, pods=40, callers=8, via="api")
    with short_tmp() as d:
        async with fake_cluster(d) as (kubeconfig, _):
            await stopped_during_add(scenario, d, kubeconfig, controller)
            with trio.fail_after(10):
                left = await left_behind(kubeconfig)
    assert left == NOTHING


async def test_after_a_run_stopped_during_add_the_next_run_passes_without_an_overlap() -> None:
    scenario = Scenario(nodes=2, pods=40, callers=8, via="api")
    with short_tmp() as d:
        async with fake_cluster(d) as (kubeconfig, _):
            await stopped_during_add(scenario, d, kubeconfig, controller=False)
            with trio.fail_after(50):
                (run,) = await run_loadtest(scenario, d, kubeconfig=kubeconfig, controller=False)
    assert not failed_checks(run)


async def test_a_run_stopped_while_asking_for_the_agents_token_removes_its_pool() -> None:
    server = FakeApiServer(faults=[Fault(method="POST", path_contains="/token", hang=True)])
    scenario = Scenario(nodes=2, pods=10, callers=2, via="api")
    with short_tmp() as d:
        async with fake_cluster(d, server) as (kubeconfig, _):
            with trio.move_on_after(3) as scope:
                await run_loadtest(scenario, d, kubeconfig=kubeconfig)
            assert scope.cancelled_caught
            with trio.fail_after(10):
                left = await left_behind(kubeconfig)
    assert left == NOTHING


async def run_on_slow_pool_writes(scenario: Scenario) -> tuple[TargetRun, dict[str, list[Any]]]:
    """``scenario`` without a controller on a fake API server whose pool writes outlast the calls' timeout;
    the run, and what it left behind."""
    with short_tmp() as d:
        async with fake_cluster(d, FakeApiServer(latency=SLOW_POOL_WRITES)) as (kubeconfig, _):
            with trio.fail_after(50):
                (run,) = await run_loadtest(scenario, d, kubeconfig=kubeconfig, controller=False)
            with trio.fail_after(10):
                return run, await left_behind(kubeconfig)


async def test_adds_that_time_out_on_our_side_but_are_granted_are_deleted_and_leave_nothing_behind() -> None:
    # NB: 0.3 s: the DEL phase ends after the ADDs' pool writes landed and before the DELs' (queued behind them):
    # the store is read for leaks only once the agents drained, else it would show the ADDs' records
    run, left = await run_on_slow_pool_writes(Scenario(nodes=2, pods=6, callers=6, via="api", call_timeout=0.3))
    assert {o.reason for o in run.ops} == {"timeout"}
    assert [o.kind for o in run.ops].count("del") == 6, "every pod whose ADD was sent is DELeted"
    assert [name for name, _ in failed_checks(run)] == ["every-call-served"]
    assert any(note.startswith("the agents drained") for note in run.cleanup), run.cleanup
    assert left == NOTHING


async def test_a_run_whose_every_call_timed_out_on_a_pool_one_short_does_not_pass() -> None:
    scenario = Scenario(nodes=2, pods=6, callers=6, via="api", call_timeout=0.2, pool_size=5)
    run, left = await run_on_slow_pool_writes(scenario)
    assert not any(o.ok for o in run.ops)
    assert "every-call-served" in dict(failed_checks(run))
    assert left == NOTHING


def commands_mentioning(text: str) -> list[list[str]]:
    """The command lines of the processes of this host that have ``text`` in one of their arguments."""
    found = []
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            args = [a.decode(errors="replace") for a in Path(path).read_bytes().split(b"\0")]
        except OSError:
            continue
        if any(text in arg for arg in args):
            found.append(args)
    return found


async def test_sigterm_through_the_cli_cleans_up_and_ends_with_one_line_and_143() -> None:
    with short_tmp() as d:
        async with fake_cluster(d) as (kubeconfig, host):
            cmd = [sys.executable, "-m", "actors", "loadtest", "--kubeconfig", str(kubeconfig), "--nodes", "2"]
            cmd += ["--pods", "200", "--callers", "8", "--via", "api", "--no-controller"]
            with (d / "stderr").open("wb") as err:
                proc = await trio.lowlevel.open_process(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
            try:
                with trio.fail_after(40):
                    while sum(1 for m, p in host.server.log if m == "POST" and "spiderendpoints" in p) < 10:
                        assert proc.poll() is None, (d / "stderr").read_text()
                        await trio.sleep(0.01)
                agents = [c for c in commands_mentioning(str(kubeconfig)) if "--socket" in c]
                proc.send_signal(signal.SIGTERM)
                with trio.fail_after(40):
                    await proc.wait()
            finally:
                if proc.poll() is None:
                    proc.kill()
            told = (d / "stderr").read_text()
            with trio.fail_after(10):
                left = await left_behind(kubeconfig)
            still = commands_mentioning(str(kubeconfig))
    assert proc.returncode == 143
    assert told.strip().splitlines() == ["spider loadtest: stopped by SIGTERM, after cleaning up"]
    assert still == [], "the agents were stopped"
    work = {Path(c[c.index("--socket") + 1]).parent for c in agents}
    assert len(work) == 1
    assert not work.pop().exists(), "the work directory was removed"
    assert left == NOTHING


@pytest.mark.slow
async def test_two_runs_in_a_row_with_the_controller_through_the_shim_both_pass_and_leave_nothing() -> None:
    scenario = Scenario(nodes=2, pods=20, callers=4, via="shim", churn=0.2)
    with short_tmp() as d:
        async with fake_cluster(d) as (kubeconfig, _):
            runs = []
            for _ in range(2):
                with trio.fail_after(50):
                    (run,) = await run_loadtest(scenario, d, kubeconfig=kubeconfig)
                runs.append(run)
            left = await left_behind(kubeconfig)
    assert [failed_checks(run) for run in runs] == [[], []]
    assert left == NOTHING
