"""One ``spider loadtest`` run: our agents through the scenario, then (optionally) a comparison plugin.

Owns the order of a run: the pool applied, the agents started, ADD timed then checked against the store, DEL
timed then checked for leaks, the agents' counters snapshotted around each phase, everything cleaned up even
when a phase fails.  It uses the fleet, the drivers and the checks; it shows nothing (that is ``report``).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

import attrs
import trio

from actors.stores.selection import StoreSettings
from actors.tools.launcher import install_cni
from actors.tools.loadtest.checks import (
    check_no_double,
    check_served,
    host_local_leaks,
    nothing_leaked,
    pool_matches_replies,
    store_consistent,
)
from actors.tools.loadtest.drivers import (
    ApiTarget,
    PluginTarget,
    Recorder,
    Target,
    add_phase,
    del_phase,
    host_local_netconfs,
    spider_netconfs,
    templated_netconfs,
)
from actors.tools.loadtest.fleet import AgentFleet, delete_pool, opened_store, pool_object, store_totals
from actors.tools.loadtest.scenario import AddressPlan, Check, Comparison, Scenario, TargetRun
from actors.tools.manifests import apply

OURS = "spider"
"""Our target's name in tables, plots and JSON (not ``spiderpool``: that reads as Spiderpool's own Go plugin)."""


@attrs.define
class LoadTest:
    """One ``spider loadtest`` run: our agents, then (optionally) a comparison, on the same scenario."""

    scenario: Scenario
    dir: Path
    kubeconfig: Path | None = None
    context: str | None = None
    progress: Callable[[str, str, int], None] = lambda target, phase, total: None
    """``progress(target, phase, total)`` announces a phase; ``advance(target, phase)`` ticks it."""
    advance: Callable[[str, str], None] = lambda target, phase: None
    run_id: str = attrs.field(factory=lambda: secrets.token_hex(4))

    @property
    def store_settings(self) -> StoreSettings:
        """The embedded store in the work directory, or the API server the kubeconfig names."""
        return StoreSettings(self.dir / "store.db", self.kubeconfig, context=self.context)

    def _recorder(self, target: str, t0: float) -> Recorder:
        def progress(phase: str, _: int) -> None:
            self.advance(target, phase)

        return Recorder(lambda: trio.current_time() - t0, progress)

    async def run_ours(self) -> TargetRun:
        """Our agents through the whole scenario, with the store checked after ADD and after DEL."""
        scenario, plan = self.scenario, AddressPlan.for_scenario(self.scenario)
        pool = f"loadtest-{self.run_id}"
        settings = self.store_settings
        async with opened_store(settings) as store:
            await apply(store, pool_object(pool, plan))
            fleet = AgentFleet(self.dir, scenario.nodes, settings)
            target: Target
            api: ApiTarget | None = None
            if scenario.via == "shim":
                shim = install_cni(self.dir / "bin")[0]
                conf = spider_netconfs([fleet.socket(n) for n in range(scenario.nodes)], pool)
                target = PluginTarget(OURS, shim, conf, scenario.call_timeout)
            else:
                target = api = ApiTarget(OURS, [fleet.socket(n) for n in range(scenario.nodes)], pool)
                api.timeout = scenario.call_timeout
            try:
                await fleet.start()
                t0 = trio.current_time()
                recorder = self._recorder(OURS, t0)
                checks: list[Check] = []
                phases: dict[str, tuple[float, float]] = {}
                snapshots = [await fleet.statistics()]

                self.progress(OURS, "add", scenario.pods + 2 * len(scenario.churned))
                start = recorder.clock()
                live = await add_phase(scenario, target, recorder, self.run_id)
                phases["add"] = (start, recorder.clock())
                snapshots.append(await fleet.statistics())
                checks.append(await pool_matches_replies(store, pool, live, recorder.ops))
                checks.append(await store_consistent(store, pool, "after-add"))

                self.progress(OURS, "del", len(live))
                start = recorder.clock()
                await del_phase(scenario, target, recorder, live)
                phases["del"] = (start, recorder.clock())
                snapshots.append(await fleet.statistics())
                checks.append(await nothing_leaked(store, pool, self.run_id))
                checks.append(await store_consistent(store, pool, "after-del"))
            finally:
                if api is not None:
                    await api.aclose()
                with trio.CancelScope(shield=True):
                    await fleet.stop()
                if settings.kubernetes:
                    with trio.CancelScope(shield=True):
                        await delete_pool(store, pool)
        checks[:0] = [check_no_double(recorder.ops), check_served(scenario, recorder.ops)]
        run = TargetRun(OURS, recorder.ops, phases, checks, agents=snapshots[-1])
        run.store = {"add": store_totals(snapshots[0], snapshots[1]), "del": store_totals(snapshots[1], snapshots[2])}
        return run

    async def run_comparison(self, comparison: Comparison) -> TargetRun:
        """The same scenario through another IPAM plugin, exec'd per call with a netconf per node."""
        scenario = self.scenario
        work = self.dir / comparison.name
        work.mkdir(parents=True, exist_ok=True)
        data_dirs = [work / f"node-{n}" for n in range(scenario.nodes)]
        if comparison.config is None:
            netconfs = host_local_netconfs(AddressPlan.for_scenario(scenario), data_dirs)
        else:
            netconfs = templated_netconfs(comparison.config, scenario.nodes, work)
        target = PluginTarget(comparison.name, comparison.plugin, netconfs, scenario.call_timeout)
        t0 = trio.current_time()
        recorder = self._recorder(comparison.name, t0)
        phases: dict[str, tuple[float, float]] = {}
        self.progress(comparison.name, "add", scenario.pods + 2 * len(scenario.churned))
        start = recorder.clock()
        live = await add_phase(scenario, target, recorder, self.run_id)
        phases["add"] = (start, recorder.clock())
        self.progress(comparison.name, "del", len(live))
        start = recorder.clock()
        await del_phase(scenario, target, recorder, live)
        phases["del"] = (start, recorder.clock())
        checks = [check_no_double(recorder.ops), check_served(scenario, recorder.ops)]
        if comparison.config is None:
            checks.append(host_local_leaks(data_dirs))
        return TargetRun(comparison.name, recorder.ops, phases, checks)


async def run_loadtest(
    scenario: Scenario,
    directory: Path,
    *,
    comparison: Comparison | None = None,
    kubeconfig: Path | None = None,
    context: str | None = None,
    announce: Callable[[str, str, int], None] = lambda target, phase, total: None,
    advance: Callable[[str, str], None] = lambda target, phase: None,
) -> list[TargetRun]:
    """Our agents through the scenario, then the comparison plugin (if any) through the same one."""
    if comparison is not None and not comparison.plugin.is_file():
        raise FileNotFoundError(f"comparison plugin {comparison.plugin} does not exist")
    test = LoadTest(scenario, directory, kubeconfig, context, announce, advance)
    runs = [await test.run_ours()]
    if comparison is not None:
        runs.append(await test.run_comparison(comparison))
    return runs
