"""``spider loadtest``: its pure parts (address plan, churn, outcome classification, the double-allocation
detector, percentiles) and whole runs with real agent processes, the real shim and Debian's host-local, whose
correctness checks must all pass.  Times are reported, never asserted."""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from actors.stores.port import AlreadyExists
from actors.tools.loadtest.checks import check_no_double, overlapping_holders
from actors.tools.loadtest.drivers import api_answer, cni_answer
from actors.tools.loadtest.report import build_report, machine, percentile, run_command, summarize
from actors.tools.loadtest.run import run_loadtest
from actors.tools.loadtest.scenario import HOST_LOCAL, AddressPlan, Check, Comparison, Op, PodRef, Scenario, TargetRun
from tests.support import ROOT, short_tmp

needs_host_local = pytest.mark.skipif(not HOST_LOCAL.is_file(), reason="Debian's host-local is not installed")


def op(kind: str, index: int, start: float, end: float, address: str = "", ok: bool = True, inc: int = 0) -> Op:
    return Op(kind, PodRef(index, inc, "run"), 0, start, end, ok, address)  # type: ignore[arg-type]


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


@pytest.mark.slow
async def test_a_kubernetes_api_server_named_by_kubeconfig_is_used_instead_of_the_embedded_store() -> None:
    from actors.stores.kube import KubeStore
    from tests.fakeapi import FakeApiServer, ServedInThread

    with short_tmp() as d:
        host = await trio.to_thread.run_sync(lambda: ServedInThread(FakeApiServer()).start())
        try:
            kubeconfig = host.server.kubeconfig(d / "kubeconfig")
            store = await KubeStore.open(kubeconfig)
            try:
                with contextlib.suppress(AlreadyExists):
                    await store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
            finally:
                await store.aclose()
            scenario = Scenario(nodes=2, pods=12, callers=3, via="api", churn=0.25)
            with trio.fail_after(180):
                (run,) = await run_loadtest(scenario, d, kubeconfig=kubeconfig)
            served = [path for method, path in host.server.log if method == "PUT" and "spiderippools" in path]
        finally:
            await trio.to_thread.run_sync(host.stop)
    assert_all_checks_pass([run])
    assert not (d / "store.db").exists()
    assert served, "no pool status was written through the API server"


def test_a_report_says_where_and_when_it_was_measured() -> None:
    scenario = Scenario(nodes=1, pods=1)
    from datetime import UTC, datetime

    run = TargetRun("x", [op("add", 0, 0.0, 0.01, "10.0.0.2"), op("del", 0, 0.02, 0.03)], {}, [Check("c", True, "")])
    run.phases = {"add": (0.0, 0.01), "del": (0.02, 0.03)}
    report = build_report(
        scenario, [run], store="embedded", machine=machine(), load_after=(0.1, 0.2, 0.3), started=datetime.now(UTC)
    )
    assert report["date"].endswith("+00:00")
    assert report["machine"]["load_after"] == [0.1, 0.2, 0.3]
    assert {"host", "cores", "cpu", "memory_gib", "load", "python"} <= set(report["machine"])
    assert report["targets"][0]["phases"]["add"]["per_s"] == pytest.approx(100.0)
