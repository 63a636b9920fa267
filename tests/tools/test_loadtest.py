"""``spider loadtest``: its pure parts (address plan, churn, outcome classification, the double-allocation
detector, percentiles, the pool host's and the agents' counters apart, which pools are leftovers) and whole runs
with real agent processes, the real shim and Debian's host-local, whose correctness checks must all pass; on the
fake API server with the controller, without it, after a crashed run, and failing midway, each leaving nothing
behind.  Times are reported, never asserted."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel
from rich.console import Console

from actors.servers.httpserver import HttpServer, Request, Response, bound_port, json_response
from actors.stores.kube import KubeStore
from actors.stores.port import AlreadyExists, ObjectList, Store
from actors.stores.selection import StoreSettings
from actors.stores.validating import ValidatingStore
from actors.tools.loadtest.checks import check_no_double, check_served, overlapping_holders
from actors.tools.loadtest.drivers import Answer, Recorder, api_answer, cni_answer
from actors.tools.loadtest.fleet import (
    AGENT_ACCOUNT,
    AGENT_TOKEN_SECONDS,
    LABEL,
    OWNER,
    AgentToken,
    ControllerProcess,
    TcpClient,
    forwarded_totals,
    get_json,
    is_leftover,
    owner,
    pool_object,
    remove_controller_objects,
    request_agent_token,
    store_totals,
)
from actors.tools.loadtest.report import (
    Terminated,
    build_report,
    machine,
    percentile,
    pool_writes,
    print_summary,
    run_command,
    stopped_by_sigterm,
    summarize,
)
from actors.tools.loadtest.run import LoadTest, run_loadtest
from actors.tools.loadtest.scenario import HOST_LOCAL, AddressPlan, Check, Comparison, Op, PodRef, Scenario, TargetRun
from actors.tools.manifests import apply
from spider.endpoint import KIND as ENDPOINT
from spider.kinds import FINALIZER
from spider.pool import KIND as POOL
from tests.fakeapi import FakeApiServer, ServedInThread
from tests.support import ROOT, short_tmp

needs_host_local = pytest.mark.skipif(not HOST_LOCAL.is_file(), reason="Debian's host-local is not installed")


def op(
    kind: str, index: int, start: float, end: float, address: str = "", ok: bool = True, inc: int = 0, reason: str = ""
) -> Op:
    return Op(kind, PodRef(index, inc, "run"), 0, start, end, ok, address, reason)  # type: ignore[arg-type]


# --- pure parts -------------------------------------------------------------------------------------------


def test_the_pool_has_exactly_one_address_per_pod_by_default() -> None:
    plan = AddressPlan.for_scenario(Scenario(nodes=10, pods=1000))
    assert plan.pool.size == 1000
    assert plan.subnet.prefixlen == 22
    assert plan.gateway not in range(int(plan.pool.first), int(plan.pool.last) + 1)
    assert plan.subnet.network_address < plan.pool.first
    assert plan.pool.last < plan.subnet.broadcast_address


def test_host_local_slices_cut_the_pool_into_disjoint_pieces_one_per_node() -> None:
    plan = AddressPlan.for_scenario(Scenario(nodes=3, pods=10))
    assert [s.size for s in plan.slices] == [4, 3, 3]
    assert plan.slices[0].first == plan.pool.first
    assert plan.slices[-1].last == plan.pool.last
    for a, b in zip(plan.slices, plan.slices[1:], strict=False):
        assert int(a.last) + 1 == int(b.first)


def test_a_pool_smaller_than_the_nodes_cannot_be_sliced() -> None:
    with pytest.raises(ValueError, match="non-empty slices"):
        AddressPlan.for_scenario(Scenario(nodes=4, pods=10, pool_size=3))


def test_churn_picks_the_asked_fraction_spread_over_the_pods() -> None:
    churned = Scenario(nodes=4, pods=200, churn=0.25).churned
    assert len(churned) == 50
    assert {i % 4 for i in churned} == {0, 1, 2, 3}
    assert Scenario(pods=10).churned == frozenset()


@pytest.mark.parametrize(
    ("field", "value"), [("nodes", 0), ("pods", 0), ("callers", 0), ("churn", 1.5), ("pool_size", 0)]
)
def test_a_nonsensical_scenario_is_refused(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        Scenario(**{field: value})  # type: ignore[arg-type]


def test_a_churned_pod_comes_back_as_a_new_pod() -> None:
    first, again = PodRef(7, 0, "r"), PodRef(7, 1, "r")
    assert (first.name, again.name) == ("lt-7", "lt-7-r1")
    assert first.uid != again.uid
    assert first.container_id != again.container_id


def test_cni_outcomes_are_classified_by_address_or_by_code_and_message() -> None:
    ok = cni_answer(0, b'{"cniVersion":"1.0.0","ips":[{"address":"10.1.0.5/24"}]}')
    assert (ok.ok, ok.address) == (True, "10.1.0.5")
    a = cni_answer(1, b'{"code":100,"msg":"pool \'p\' has no free address (capacity 12)"}')
    b = cni_answer(1, b'{"code":100,"msg":"pool \'p\' has no free address (capacity 99)"}')
    assert not a.ok
    assert a.reason == b.reason
    assert a.reason.startswith("CNI 100: ")
    assert cni_answer(2, b"", b"Traceback\nboom 42").reason == "exit 2: boom N"


def test_agent_api_failures_carry_their_cni_code() -> None:
    answer = api_answer(500, {"x-cni-code": "11"}, json.dumps("pool 'x': lost a race").encode())
    assert not answer.ok
    assert answer.reason == "CNI 11: pool 'x': lost a race"
    ok = api_answer(200, {}, json.dumps({"ips": [{"address": "10.0.0.9/16"}], "routes": []}).encode())
    assert (ok.ok, ok.address) == (True, "10.0.0.9")


def test_an_address_handed_to_a_second_pod_before_the_first_let_go_is_caught() -> None:
    ops = [
        op("add", 1, 0.0, 0.1, "10.0.0.2"),
        op("add", 2, 0.2, 0.3, "10.0.0.2"),  # pod 1 still holds it
        op("del", 1, 0.5, 0.6),
    ]
    assert [(a, p.index, q.index) for a, p, q in overlapping_holders(ops)] == [("10.0.0.2", 1, 2)]
    assert not check_no_double(ops).ok


def test_an_address_reused_after_its_release_was_sent_is_not_a_double() -> None:
    ops = [
        op("add", 1, 0.0, 0.1, "10.0.0.2"),
        op("del", 1, 0.2, 0.4),
        op("add", 2, 0.3, 0.5, "10.0.0.2"),  # answered after pod 1's DEL went out: a legitimate reuse
        op("churn-del", 2, 0.6, 0.7),
        op("churn-add", 2, 0.8, 0.9, "10.0.0.2", inc=1),
    ]
    assert overlapping_holders(ops) == []
    assert check_no_double(ops).ok


def test_a_double_hidden_behind_a_long_holder_is_still_caught() -> None:
    ops = [
        op("add", 1, 0.0, 0.1, "10.0.0.2"),  # held to the end
        op("add", 2, 0.2, 0.3, "10.0.0.2"),
        op("del", 2, 0.4, 0.5),
        op("add", 3, 0.6, 0.7, "10.0.0.2"),  # pod 2 let go, but pod 1 never did
    ]
    assert {q.index for _, _, q in overlapping_holders(ops)} == {2, 3}


def test_a_del_that_failed_or_timed_out_does_not_end_the_holding_of_an_address() -> None:
    ops = [
        op("add", 0, 0.0, 1.0, "10.0.0.2"),
        op("del", 0, 2.0, 2.1, ok=False, reason="CNI 11: lost a race"),  # the address is still held
        op("add", 1, 3.0, 4.0, "10.0.0.2"),
        op("add", 2, 0.0, 1.0, "10.0.0.3"),
        op("del", 2, 2.0, 2.2, ok=False, reason="timeout"),  # unknown: still held
        op("add", 3, 3.0, 4.0, "10.0.0.3"),
    ]
    assert [(a, p.index, q.index) for a, p, q in overlapping_holders(ops)] == [("10.0.0.2", 0, 1), ("10.0.0.3", 2, 3)]


def test_a_holding_ends_at_the_first_del_that_succeeded() -> None:
    ops = [
        op("add", 0, 0.0, 1.0, "10.0.0.2"),
        op("churn-del", 0, 2.0, 2.1, ok=False, reason="timeout"),
        op("del", 0, 3.0, 3.1),
        op("add", 1, 3.05, 4.0, "10.0.0.2"),  # answered after pod 0's successful DEL went out
    ]
    assert overlapping_holders(ops) == []


EXHAUSTED = "CNI 100: pool 'loadtest-N' has no free address (capacity N)"


def served(pods: int, pool_size: int | None, ops: list[Op]) -> Check:
    return check_served(Scenario(nodes=1, pods=pods, pool_size=pool_size), ops)


def test_a_pool_one_short_passes_when_only_the_extra_add_was_refused_for_want_of_an_address() -> None:
    ops = [op("add", i, i, i + 0.1, "10.0.0.2") for i in range(9)] + [op("add", 9, 9, 9.1, ok=False, reason=EXHAUSTED)]
    ops += [op("del", i, 20, 20.1) for i in range(10)]
    assert served(10, 9, ops).ok
    host_local = "CNI 999: failed to allocate for range N: no IP addresses available in range set: N.N.N.N-N.N.N.N"
    assert served(10, 9, [*ops[:9], op("add", 9, 9, 9.1, ok=False, reason=host_local), *ops[10:]]).ok


def test_a_pool_one_short_that_served_nothing_fails_every_call_served() -> None:
    refused = "connection: connection refused"
    ops = [op("add", i, i, i + 0.1, ok=False, reason=refused) for i in range(10)]
    ops += [op("del", i, 20, 20.1, ok=False, reason=refused) for i in range(10)]
    check = served(10, 9, ops)
    assert not check.ok
    assert "0 of 10 ADDs served, at least 9 expected" in check.detail


def test_a_pool_one_short_still_fails_on_a_refusal_that_is_not_exhaustion_or_on_a_failed_del() -> None:
    adds = [op("add", i, i, i + 0.1, "10.0.0.2") for i in range(9)]
    dels = [op("del", i, 20, 20.1) for i in range(10)]
    assert not served(10, 9, [*adds, op("add", 9, 9, 9.1, ok=False, reason="timeout"), *dels]).ok
    exhausted = [op("add", 9, 9, 9.1, ok=False, reason=EXHAUSTED)]
    assert not served(10, 9, adds + exhausted + dels[:-1] + [op("del", 9, 20, 20.1, ok=False, reason="timeout")]).ok


def test_a_pool_with_an_address_for_every_pod_fails_on_any_exhaustion() -> None:
    ops = [op("add", i, i, i + 0.1, "10.0.0.2") for i in range(9)] + [op("add", 9, 9, 9.1, ok=False, reason=EXHAUSTED)]
    ops += [op("churn-del", 0, 10, 10.1), op("add", 0, 11, 11.1, "10.0.0.3", inc=1)]
    assert not served(10, None, ops + [op("del", i, 20, 20.1) for i in range(10)]).ok


def test_a_pod_answered_twice_fails_every_call_served() -> None:
    ops = [op("add", 0, 0, 0.1, "10.0.0.2"), op("add", 0, 0, 0.2, "10.0.0.2"), op("del", 0, 1, 1.1)]
    check = served(1, None, ops)
    assert not check.ok
    assert "1 extra ADD answers" in check.detail


async def test_a_plugin_that_fails_every_call_on_a_pool_one_short_does_not_pass(tmp_path: Path) -> None:
    conf = tmp_path / "conf.json"
    conf.write_text('{"cniVersion": "1.0.0", "name": "x", "type": "false"}')
    test = LoadTest(Scenario(nodes=1, pods=10, callers=2, pool_size=9), tmp_path)
    with trio.fail_after(50):
        run = await test.run_comparison(Comparison.from_files(Path("/bin/false"), conf))
    assert not any(o.ok for o in run.ops)
    assert not run.ok


async def test_a_pod_whose_add_was_sent_may_hold_an_address_until_a_del_of_it_succeeded() -> None:
    answers = {0: Answer(True, "10.0.0.2"), 1: Answer(False, reason="timeout"), 2: Answer(False, reason="CNI 100: x")}

    async def add(pod: PodRef, node: int) -> Answer:
        if pod.index == 3:
            await trio.sleep_forever()  # cancelled on our side: the agent may still grant it
        return answers[pod.index]

    async def delete(pod: PodRef, node: int) -> Answer:
        return Answer(pod.index != 0, reason="" if pod.index else "timeout")

    recorder = Recorder(trio.current_time, lambda phase, n: None)
    for index in range(3):
        await recorder.call("add", "add", PodRef(index, 0, "r"), 0, add)
    with trio.move_on_after(0.01):
        await recorder.call("add", "add", PodRef(3, 0, "r"), 0, add)
    assert [p.index for p in recorder.holding()] == [0, 1, 2, 3]
    for index in range(4):
        await recorder.call("del", "del", PodRef(index, 0, "r"), 0, delete)
    assert [p.index for p in recorder.holding()] == [0], "its DEL timed out: it may still hold its address"


def test_percentiles_interpolate_between_ranks() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([3.0], 90) == 3.0
    assert math.isnan(percentile([], 50))


# --- whole runs -------------------------------------------------------------------------------------------


def assert_all_checks_pass(runs: list) -> None:  # type: ignore[type-arg]
    for run in runs:
        failed = [c for c in run.checks if not c.ok]
        assert not failed, (run.name, failed)


@pytest.mark.slow
@needs_host_local
async def test_200_pods_on_4_nodes_with_churn_through_the_shim_pass_every_check_beside_host_local() -> None:
    scenario = Scenario(nodes=4, pods=200, callers=8, churn=0.25)
    with short_tmp() as d, trio.fail_after(300):
        ours, theirs = await run_loadtest(scenario, d, comparison=Comparison.host_local())
    assert_all_checks_pass([ours, theirs])
    names = {c.name for c in ours.checks}
    assert names == {
        "no-address-twice",
        "every-call-served",
        "store-matches-replies",
        "consistent-after-add",
        "nothing-leaked",
        "consistent-after-del",
    }
    assert {c.name for c in theirs.checks} == {"no-address-twice", "every-call-served", "nothing-leaked"}
    for run in (ours, theirs):
        kinds = [o.kind for o in run.ops]
        assert kinds.count("add") == 200
        assert kinds.count("churn-del") == kinds.count("churn-add") == 50
        assert kinds.count("del") == 200
    # The agents' own counters arrived: every ADD and DEL went through a pool actor and was written.
    assert ours.store["add"]["requests"] >= 250
    assert ours.store["add"]["writes"] >= ours.store["add"]["batches"] > 0
    assert ours.store["del"]["requests"] >= 200
    assert len(ours.agents) == 4
    assert all(a["rss_kib"] > 0 for a in ours.agents)
    # Where the CPU went, per phase: the plugins exec'd through the shim, our four agents; host-local has no agent.
    for phase in ("add", "del"):
        assert ours.cpu[phase]["plugins"] > 0
        assert ours.cpu[phase]["agents"] > 0
        assert theirs.cpu[phase]["plugins"] > 0
        assert theirs.cpu[phase]["agents"] == theirs.cpu[phase]["controller"] == 0
        assert set(ours.cpu[phase]) == {"plugins", "agents", "controller", "load_test", "rest", "machine"}
    # Churned pods are re-created while others are still being added.
    last_first_add = max(o.end for o in ours.ops if o.kind == "add")
    assert min(o.start for o in ours.ops if o.kind == "churn-add") < last_first_add


async def test_a_pool_too_small_fails_the_extra_pods_with_exhaustion_and_leaks_nothing() -> None:
    scenario = Scenario(nodes=2, pods=24, callers=4, pool_size=20, via="api")
    with short_tmp() as d, trio.fail_after(120):
        (run,) = await run_loadtest(scenario, d)
    assert_all_checks_pass([run])
    failed = [o for o in run.ops if not o.ok]
    assert len(failed) == 4
    assert {o.kind for o in failed} == {"add"}
    assert len({o.reason for o in failed}) == 1
    assert failed[0].reason.startswith("CNI 100: ")
    summary = summarize(run)
    assert summary["failures"] == {failed[0].reason: 4}
    assert summary["phases"]["add"]["allocations"] == 20


@needs_host_local
async def test_the_command_prints_json_and_draws_the_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    scenario = Scenario(nodes=2, pods=16, callers=4, via="api", churn=0.25)
    plot, out = tmp_path / "lt.png", tmp_path / "lt.json"

    def run() -> int:
        return run_command(scenario, comparison=Comparison.host_local(), json_to=str(out), plot_to=plot)

    with trio.fail_after(120):
        code = await trio.to_thread.run_sync(run)
    assert code == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(out.read_text())
    assert report["ok"] is True
    assert [t["name"] for t in report["targets"]] == ["spider", "host-local"]
    assert set(report["ratio"]) >= {"add_wall", "del_wall", "total_wall", "add_p50"}
    ours = report["targets"][0]
    assert ours["latency"]["add"]["count"] == 16
    assert ours["latency"]["churn-add"]["count"] == 4
    assert ours["store"]["add"]["writes"] > 0
    assert report["machine"]["cores"] >= 1
    assert report["scenario"]["addresses"] == 16


def test_the_cli_refuses_two_comparisons_at_once() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "actors",
            "loadtest",
            "--compare",
            "host-local",
            "--compare-plugin",
            "/bin/true",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "exclude each other" in done.stderr


def test_the_cli_refuses_a_plugin_without_its_config() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "actors", "loadtest", "--compare-plugin", str(HOST_LOCAL)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "go together" in done.stderr


@needs_host_local
async def test_any_ipam_plugin_can_be_compared_with_a_templated_config() -> None:
    scenario = Scenario(nodes=2, pods=10, callers=2, via="api")
    conf = {
        "cniVersion": "1.0.0",
        "name": "loadtest",
        "type": "macvlan",
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "10.99.${NODE_INDEX}.0/24"}]],
            "dataDir": "${DIR}/data-${NODE}",
        },
    }
    with short_tmp() as d, trio.fail_after(120):
        path = d / "conf.json"
        path.write_text(json.dumps(conf))
        ours, theirs = await run_loadtest(scenario, d, comparison=Comparison.from_files(HOST_LOCAL, path))
        data_dirs = sorted(p.name for p in (d / "host-local").iterdir())
    assert_all_checks_pass([ours, theirs])
    assert theirs.name == "host-local"
    by_node = {o.node: o.address for o in theirs.ops if o.kind == "add"}
    assert by_node[0].startswith("10.99.0.")
    assert by_node[1].startswith("10.99.1.")
    assert data_dirs == ["data-node-0", "data-node-1"]


@contextlib.asynccontextmanager
async def fake_cluster(d: Path, server: FakeApiServer | None = None) -> AsyncIterator[tuple[Path, ServedInThread]]:
    """``server`` (a plain fake API server by default) in a thread of its own, with the ``default`` namespace;
    its kubeconfig."""
    host = await trio.to_thread.run_sync(lambda: ServedInThread(server or FakeApiServer()).start())
    try:
        kubeconfig = host.server.kubeconfig(d / "kubeconfig")
        store = await KubeStore.open(kubeconfig)
        try:
            with contextlib.suppress(AlreadyExists):
                await store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
        finally:
            await store.aclose()
        yield kubeconfig, host
    finally:
        await trio.to_thread.run_sync(host.stop)


@contextlib.asynccontextmanager
async def opened(kubeconfig: Path) -> AsyncIterator[Store]:
    store = await KubeStore.open(kubeconfig)
    try:
        yield store
    finally:
        await store.aclose()


async def load_test_objects(kubeconfig: Path) -> tuple[list[str], list[str]]:
    """The load test pools and the SpiderEndpoints in ``default`` still on the server."""
    async with opened(kubeconfig) as store:
        pools = [o["metadata"]["name"] for o in (await store.list(POOL, label_selector=f"{LABEL}=true")).items]
        endpoints = [o["metadata"]["name"] for o in (await store.list(ENDPOINT, namespace="default")).items]
    return pools, endpoints


@pytest.mark.slow
async def test_a_kubernetes_api_server_named_by_kubeconfig_is_used_instead_of_the_embedded_store() -> None:
    with short_tmp() as d:
        async with fake_cluster(d) as (kubeconfig, host):
            scenario = Scenario(nodes=2, pods=12, callers=3, via="api", churn=0.25)
            with trio.fail_after(180):
                (run,) = await run_loadtest(scenario, d, kubeconfig=kubeconfig)
                left = await load_test_objects(kubeconfig)
            served = [path for method, path in host.server.log if method == "PUT" and "spiderippools" in path]
            leases = [path for method, path in host.server.log if "/leases" in path]
    assert_all_checks_pass([run])
    assert not (d / "store.db").exists()
    assert served, "no pool status was written through the API server"
    # The controller ran as a cluster runs it, on a Lease of its own, and the run left nothing behind.
    assert run.controller["started"] is True
    assert run.controller["lease"].startswith("default/spider-lt-")
    assert leases, "the controller never campaigned"
    assert left == ([], [])
    assert any("deleted" in note for note in run.cleanup), run.cleanup
    # Pool writes were counted, by the pool host or (when it is absent or refuses) by the agents.
    assert run.store["add"]["writes"] + run.host.get("add", {}).get("writes", 0) > 0
    assert run.cpu["add"]["controller"] > 0, "the controller's CPU is counted"


@pytest.mark.slow
async def test_a_pool_left_terminating_by_a_crashed_run_does_not_make_the_next_run_fail() -> None:
    scenario = Scenario(nodes=2, pods=8, callers=2, via="api")
    with short_tmp() as d:
        async with fake_cluster(d) as (kubeconfig, _):
            # A run that crashed after deleting its pool: Terminating, our finalizer on, and with no controller
            # to remove it, holding the very range the next run asks for.
            crashed = pool_object("loadtest-crashed", AddressPlan.for_scenario(scenario))
            async with opened(kubeconfig) as raw:
                store = ValidatingStore(raw)
                await apply(store, crashed)
                await store.delete(POOL, "loadtest-crashed")
                assert FINALIZER in (await store.get(POOL, "loadtest-crashed"))["metadata"]["finalizers"]
            with trio.fail_after(180):
                (run,) = await run_loadtest(scenario, d, kubeconfig=kubeconfig, controller=False)
                left = await load_test_objects(kubeconfig)
    assert_all_checks_pass([run])
    assert "leftover pool loadtest-crashed: removed" in run.cleanup
    # Without a controller the harness removed its own pool's finalizer, once it saw the pool empty.
    assert run.controller["started"] is False
    assert run.host == {}
    assert run.store["add"]["writes"] > 0
    assert any("finalizer removed" in note for note in run.cleanup), run.cleanup
    assert left == ([], [])


@pytest.mark.slow
async def test_a_run_that_fails_midway_releases_what_its_pods_hold_and_leaves_nothing_behind() -> None:
    scenario = Scenario(nodes=2, pods=10, callers=2, via="api")

    def announce(target: str, phase: str, total: int) -> None:
        if phase == "del":
            raise RuntimeError("interrupted before the DEL phase")

    with short_tmp() as d:
        async with fake_cluster(d) as (kubeconfig, _):
            with trio.fail_after(240), pytest.raises(RuntimeError, match="interrupted"):
                await run_loadtest(scenario, d, kubeconfig=kubeconfig, announce=announce)
            with trio.fail_after(30):
                left = await load_test_objects(kubeconfig)
    assert left == ([], [])


# --- the pool host's counters, apart from the agents' ---------------------------------------------------------


def test_the_agents_forwarding_counters_are_summed_per_phase_and_absent_when_no_agent_has_them() -> None:
    assert forwarded_totals([{"pools": {}}], [{"pools": {}}]) is None
    before = [{"forwarded": {"requests": 1, "looks": 1, "calls": 1, "fallback": 0}}, {}]
    after = [{"forwarded": {"requests": 11, "looks": 4, "calls": 3, "fallback": 2}}, {"forwarded": {"requests": 5}}]
    assert forwarded_totals(before, after) == {"requests": 15, "looks": 3, "calls": 2, "fallback": 2}


def test_the_pool_actors_counters_are_summed_over_processes_and_pools_per_phase() -> None:
    before = [{"pools": {"a": {"writes": 1, "looks": 2, "version_reads": 1}}}, {"pools": {}}]
    after = [
        {"pools": {"a": {"writes": 5, "looks": 12, "version_reads": 3, "largest_batch": 4}}},
        {"pools": {"b": {"requests": 7, "batches": 2, "writes": 2, "largest_batch": 6}}},
    ]
    assert store_totals(before, after) == {
        "requests": 7,
        "batches": 2,
        "writes": 6,
        "conflicts": 0,
        "looks": 10,
        "version_reads": 2,
        "largest_batch": 6,
    }


def test_a_phases_largest_batch_is_its_own_not_the_largest_since_the_agent_started() -> None:
    # ADD had a batch of 40; DEL then served 2 requests in 2 batches: 1 each
    before = [{"pools": {"p": {"requests": 100, "batches": 5, "writes": 5, "largest_batch": 40}}}]
    after = [{"pools": {"p": {"requests": 102, "batches": 7, "writes": 7, "largest_batch": 40}}}]
    assert store_totals(before, after)["largest_batch"] == 1
    # 12 requests in 3 batches, none above 40: at most 10 (the others had one at least)
    after = [{"pools": {"p": {"requests": 112, "batches": 8, "writes": 8, "largest_batch": 40}}}]
    assert store_totals(before, after)["largest_batch"] == 10
    assert store_totals(before, before)["largest_batch"] == 0


class _Accounts:
    """A Kubernetes store's ServiceAccount deletion and its load test pools."""

    def __init__(self, pools: list[Any]) -> None:
        self.pools = pools
        self.deleted: list[tuple[str, str]] = []

    async def list(self, kind: str, **_: Any) -> ObjectList:
        return ObjectList(self.pools if kind == POOL else [], "1")

    async def delete_service_account(self, namespace: str, account: str) -> None:
        self.deleted.append((namespace, account))


@pytest.mark.parametrize("made", [False, True])
async def test_the_agents_serviceaccount_goes_with_the_last_load_test_that_used_it(tmp_path: Path, made: bool) -> None:
    # NB: made=False: an earlier run that crashed made it; nobody else would ever delete it
    controller = ControllerProcess(tmp_path, StoreSettings(tmp_path / "db", tmp_path / "kc"), "r1")
    controller.token = AgentToken(tmp_path / "t", "default", AGENT_ACCOUNT, created_account=made)
    ours, crashed = _pool("loadtest-r1", deleting=True), _pool("loadtest-old", deleting=True)
    alone = _Accounts([ours, crashed])
    notes = await remove_controller_objects(alone, controller, "loadtest-r1")  # type: ignore[arg-type]
    assert alone.deleted == [("default", AGENT_ACCOUNT)]
    assert notes == [f"serviceaccount default/{AGENT_ACCOUNT}: deleted"]
    beside = _Accounts([ours, _pool("loadtest-live")])  # another run of this very process: running
    await remove_controller_objects(beside, controller, "loadtest-r1")  # type: ignore[arg-type]
    assert beside.deleted == ([("default", AGENT_ACCOUNT)] if made else [])


def _target(**extra: Any) -> dict[str, Any]:
    store = {"requests": 100, "batches": 80, "writes": 90, "conflicts": 9, "largest_batch": 3, "mean_batch": 1.25}
    base = {
        "name": "spider",
        "phases": {"add": {"wall_s": 1.0, "per_s": 100.0}, "del": {"wall_s": 1.0, "per_s": 100.0}},
        "total_wall_s": 2.0,
        "latency": {},
        "failures": {},
        "checks": [],
        "store": {"add": store, "del": store},
    }
    return base | extra


def _printed(target: dict[str, Any]) -> str:
    report = {
        "scenario": {"pods": 100, "nodes": 2, "callers": 2, "addresses": 100, "via": "api", "churned": 0},
        "store": "kubernetes",
        "machine": {"load": [0.0], "load_after": [0.0]},
        "targets": [target],
        "ok": True,
    }
    console = Console(record=True, width=200)
    print_summary(console, report)
    return console.export_text()


def test_the_report_shows_the_pool_hosts_writes_apart_from_the_agents() -> None:
    host = {"requests": 900, "batches": 40, "writes": 41, "conflicts": 1, "largest_batch": 60, "mean_batch": 22.5}
    host |= {"looks": 800, "version_reads": 41}
    target = _target(
        host={"add": host},
        forwarded={"add": {"requests": 900, "looks": 800, "calls": 300, "fallback": 100}},
        controller={"started": True, "lease": "default/spider-lt-x", "leader": True, "stats": True},
        cleanup=["pool loadtest-x: deleted (the controller removed its finalizer)"],
    )
    text = _printed(target)
    assert "pool writes ADD (host)" in text
    assert "pool writes ADD (agents)" in text
    assert "40 (22.5 / 60)" in text
    assert "900 / 800 / 300 / 100" in text
    assert "last looks ADD (host): answered / reads of the pool's version" in text
    assert "800 / 41" in text
    assert "controller started, Lease default/spider-lt-x, leading" in text
    assert "cleanup: pool loadtest-x: deleted" in text
    split = pool_writes(target)
    assert (split["add"]["writes"], split["add"]["conflicts"]) == (131, 10)
    assert split["del"]["host"] is None
    assert split["add"]["forwarded"] == {"requests": 900, "looks": 800, "calls": 300, "fallback": 100}


def test_a_controller_without_pool_host_counters_shows_a_dash_not_a_crash() -> None:
    text = _printed(_target(controller={"started": True, "lease": "default/spider-lt-y", "stats": None}))
    host_rows = [line for line in text.splitlines() if "pool writes ADD (host)" in line]
    assert host_rows
    assert host_rows[0].split("(host)")[1].strip().strip("│ ") == "-"
    assert "reports no pool host counters" in text
    assert "fell back" not in text


def test_without_a_controller_every_pool_write_is_an_agents() -> None:
    text = _printed(_target(controller={"started": False, "why": "--no-controller: the agents' fallback alone"}))
    assert "pool writes ADD " in text
    assert "(host)" not in text
    assert "(agents)" not in text
    assert "controller not started (--no-controller" in text


async def test_the_controllers_counters_are_read_over_http_and_a_silent_one_reads_as_none() -> None:
    stats = {"leader": True, "pools": {"p": {"requests": 3, "batches": 1, "writes": 1, "conflicts": 0}}}

    async def handler(request: Request) -> Response:
        if request.path == "/v1/spider/stats":
            return json_response(200, stats)
        return json_response(404, "no such path")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            port = bound_port(listeners[0])
            await nursery.start(HttpServer(handler).serve, listeners)
            assert await get_json(TcpClient.for_url(f"http://127.0.0.1:{port}/"), "/v1/spider/stats") == stats
            assert await get_json(TcpClient.for_url(f"http://127.0.0.1:{port}/"), "/nothing") is None
            nursery.cancel_scope.cancel()
        assert await get_json(TcpClient.for_url(f"http://127.0.0.1:{port}/"), "/v1/spider/stats") is None


async def test_sigterm_stops_a_run_after_its_cleanup_ran() -> None:
    cleaned = []

    async def run() -> None:
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(0.01)
                cleaned.append(True)

    async def terminate_soon() -> None:
        await trio.sleep(0.1)
        os.kill(os.getpid(), signal.SIGTERM)

    ended = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(terminate_soon)
            try:
                await stopped_by_sigterm(run)
            except Terminated:
                ended.append("terminated")
    assert ended == ["terminated"]
    assert cleaned == [True]


async def test_a_run_that_ends_is_not_stopped_by_the_sigterm_watch() -> None:
    async def run() -> int:
        await trio.lowlevel.checkpoint()
        return 7

    with trio.fail_after(10):
        assert await stopped_by_sigterm(run) == 7


# --- which pools are an earlier run's leftovers ------------------------------------------------------------------


def _pool(name: str = "loadtest-abc", *, maker: str | None = None, deleting: bool = False, label: bool = True) -> Any:
    obj = pool_object(name, AddressPlan.for_scenario(Scenario(nodes=1, pods=4)))
    if not label:
        obj["metadata"]["labels"] = {}
    if maker is not None:
        obj["metadata"]["annotations"][OWNER] = maker
    if deleting:
        obj["metadata"]["deletionTimestamp"] = "2026-12-06T00:00:00Z"
    return obj


def test_a_terminating_or_orphaned_load_test_pool_is_a_leftover_and_a_live_runs_is_not() -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    gone = f"{os.uname().nodename}:{int(dead.stdout)}"
    assert is_leftover(_pool(deleting=True))
    assert is_leftover(_pool(maker=gone))
    assert not is_leftover(_pool())  # made by this very process, which is running
    assert _pool()["metadata"]["annotations"][OWNER] == owner()
    assert not is_leftover(_pool(maker="another-host:1"))  # cannot tell: left alone
    assert not is_leftover(_pool(deleting=True, label=False))
    assert not is_leftover(_pool("someone-elses", deleting=True))


def test_a_report_says_where_and_when_it_was_measured() -> None:
    scenario = Scenario(nodes=1, pods=1)
    run = TargetRun("x", [op("add", 0, 0.0, 0.01, "10.0.0.2"), op("del", 0, 0.02, 0.03)], {}, [Check("c", True, "")])
    run.phases = {"add": (0.0, 0.01), "del": (0.02, 0.03)}
    report = build_report(
        scenario, [run], store="embedded", machine=machine(), load_after=(0.1, 0.2, 0.3), started=datetime.now(UTC)
    )
    assert report["date"].endswith("+00:00")
    assert report["machine"]["load_after"] == [0.1, 0.2, 0.3]
    assert {"host", "cores", "cpu", "memory_gib", "load", "python"} <= set(report["machine"])
    assert report["targets"][0]["phases"]["add"]["per_s"] == pytest.approx(100.0)


def test_the_controller_a_run_starts_gets_the_options_it_was_given_after_its_own(tmp_path: Path) -> None:
    from actors.stores.selection import StoreSettings
    from actors.tools.loadtest.fleet import ControllerProcess

    store = StoreSettings(tmp_path / "store.db", tmp_path / "kubeconfig")
    given = ControllerProcess(tmp_path, store, "r1", extra=("--pool-host-linger=0.02",)).command()
    assert given[-1] == "--pool-host-linger=0.02"  # NB: last, so it overrides any default the harness sets
    assert "--pool-host-linger=0.02" not in ControllerProcess(tmp_path, store, "r1").command()


# --- the SpiderSubnet scenario ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"apps": 3, "pods": 10}, "shared evenly"),
        ({"apps": 2, "pods": 10, "churn": 0.2}, "churn"),
        ({"apps": -1}, "at least 0"),
    ],
)
def test_a_subnet_scenario_whose_pods_no_application_can_own_is_refused(fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Scenario(**fields)


def test_a_subnet_scenario_plans_each_applications_replicas_and_spare_addresses() -> None:
    scenario = Scenario(nodes=2, pods=12, apps=3, redundant=2)
    assert scenario.replicas == 4
    assert [scenario.app_of(i) for i in (0, 3, 4, 11)] == [0, 0, 1, 2]
    assert scenario.addresses == 18
    assert AddressPlan.for_scenario(scenario).pool.size == 18


async def test_applications_from_one_subnet_through_the_shim_get_their_own_pools_and_give_everything_back() -> None:
    scenario = Scenario(nodes=2, pods=12, callers=4, apps=3, redundant=1, wait_interval=0.05)
    with short_tmp() as d, trio.fail_after(180):
        (run,) = await run_loadtest(scenario, d)
    assert_all_checks_pass([run])
    assert {c.name for c in run.checks} == {
        "no-address-twice",
        "every-call-served",
        "own-application-pool",
        "subnet-hands-out-exactly",
        "consistent-after-add",
        "nothing-leaked",
        "consistent-after-del",
        "reclaimed",
    }
    handed = next(c for c in run.checks if c.name == "subnet-hands-out-exactly")
    assert "handed out 15, wanted 15" in handed.detail  # NB: 3 x (4 replicas + 1 spare)
    kinds = [o.kind for o in run.ops]
    assert kinds.count("add") == kinds.count("del") == 12
    assert all(o.ok and o.address.startswith("10.233.0.") for o in run.ops if o.kind == "add")
    assert set(run.phases) == {"add", "del", "reclaim"}
    assert run.store["add"]["writes"] > 0
    assert run.store["del"]["writes"] > 0
    assert run.controller["started"] is True


def test_the_cli_runs_the_subnet_scenario_only_on_the_embedded_store(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "actors", "loadtest", "--subnet-apps", "2", "--kubeconfig", str(tmp_path / "kc")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "embedded store" in done.stderr


async def test_the_agents_token_is_asked_to_outlast_the_run(tmp_path: Path) -> None:
    # a TokenRequest's default is an hour: a longer run's pool host would refuse every agent from then on
    asked: list[tuple[str, str, bool, int]] = []

    class Tokens:
        async def request_token(self, namespace: str, account: str, *, create: bool, seconds: int) -> tuple[str, bool]:
            asked.append((namespace, account, create, seconds))
            return "a-token", True

    token = await request_agent_token(Tokens(), tmp_path, "default")  # type: ignore[arg-type]
    assert asked == [("default", token.account, True, AGENT_TOKEN_SECONDS)]
    assert AGENT_TOKEN_SECONDS >= 24 * 3600
    assert token.path.read_text() == "a-token"
    assert token.created_account
