"""One ``spider loadtest`` run: our agents through the scenario, then (optionally) a comparison plugin.

Owns the order of a run: on a Kubernetes store an earlier crashed run's leftovers removed and the controller
started (its leader hosts the pools; ``controller=False`` measures the agents' fallback alone), the pool
applied, the agents started, ADD timed then checked against the store, DEL (of every pod whose ADD was sent:
one that failed or timed out may still be granted) timed, the agents stopped so that they drain, then the store
checked for leaks; the agents' and the controller's counters snapshotted around each phase, and everything
cleaned up even when a phase fails or the run is interrupted, from the moment the pool is applied: what the
run's pods may still hold is released through the agents (started again if they drained and the pool still
holds some), the processes stopped, the pool and endpoints deleted and our finalizer gone (shielded, within a
time budget).
It uses the fleet, the drivers and the checks; it shows nothing (that is ``report``).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from actors.stores.port import NotFound, Store
from actors.stores.selection import StoreSettings
from actors.tools.launcher import install_cni
from actors.tools.loadtest import cpu
from actors.tools.loadtest.checks import (
    check_no_double,
    check_served,
    host_local_leaks,
    nothing_leaked,
    pool_matches_replies,
    store_consistent,
)
from actors.tools.loadtest.cpu import CpuSample
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
from actors.tools.loadtest.fleet import (
    AgentFleet,
    ControllerProcess,
    forwarded_totals,
    opened_store,
    pool_object,
    remove_controller_objects,
    remove_leftovers,
    remove_pool,
    request_agent_token,
    store_totals,
)
from actors.tools.loadtest.scenario import AddressPlan, Check, Comparison, PodRef, Scenario, TargetRun
from actors.tools.loadtest.subnet import SubnetLoadTest
from actors.tools.manifests import apply
from spider.errors import SpiderError
from spider.pool import KIND as POOL
from spider.reconcile import holds_addresses

OURS = "spider"
"""Our target's name in tables, plots and JSON (not ``spiderpool``: that reads as Spiderpool's own Go plugin)."""
RELEASE_BUDGET = 120.0
"""Seconds a failed or interrupted run may spend releasing what its pods still hold, through the agents."""
RELEASE_CALL_TIMEOUT = 30.0
"""Seconds one of those DELs may take at least (``--call-timeout`` may be shorter): they free, they are not timed."""
CLEANUP_BUDGET = 60.0
"""Seconds for the rest of the cleanup: stopping the processes, removing the pool, endpoints and finalizer."""


async def release_outstanding(target: Target, pods: Sequence[PodRef], nodes: int, callers: int) -> int:
    """DEL every pod in ``pods`` (concurrently, ``callers`` at a time); how many DELs succeeded."""
    released = 0
    queue = list(pods)

    async def caller() -> None:
        nonlocal released
        while queue:
            pod = queue.pop()
            try:
                if (await target.delete(pod, pod.node(nodes))).ok:
                    released += 1
            except (OSError, SpiderError):
                pass

    async with trio.open_nursery() as nursery:
        for _ in range(max(1, min(callers, len(pods)))):
            nursery.start_soon(caller)
    return released


def with_patience(target: Target) -> Target:
    """The same target, whose calls may take ``RELEASE_CALL_TIMEOUT`` at least (a new ``ApiTarget``: its
    caller closes it)."""
    if isinstance(target, ApiTarget):
        return ApiTarget(target.name, target.sockets, target.pool, max(target.timeout, RELEASE_CALL_TIMEOUT))
    if isinstance(target, PluginTarget):
        return attrs.evolve(target, timeout=max(target.timeout, RELEASE_CALL_TIMEOUT))
    return target


def controller_totals(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> dict[str, int] | None:
    """The pool host's counters over a phase; ``None`` without a controller or its counters."""
    if after is None or not isinstance(after.get("pools"), Mapping):
        return None
    return store_totals([before or {}], [after])


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
    controller: bool = True
    """With a Kubernetes store: start ``spider controller`` (its leader hosts the pools); ``False`` measures
    the agents' fallback alone.  The embedded store never has one (its write lock needs no pool host)."""
    controller_args: tuple[str, ...] = ()
    """Extra options for that controller (``--pool-host-linger=0.02``)."""

    @property
    def store_settings(self) -> StoreSettings:
        """The embedded store in the work directory, or the API server the kubeconfig names."""
        return StoreSettings(self.dir / "store.db", self.kubeconfig, context=self.context)

    def _recorder(self, target: str, t0: float) -> Recorder:
        def progress(phase: str, _: int) -> None:
            self.advance(target, phase)

        return Recorder(lambda: trio.current_time() - t0, progress)

    def _target(self, sockets: Sequence[Path], pool: str) -> Target:
        """Our agents, through the installed shim or straight through their API."""
        if self.scenario.via == "shim":
            shim = install_cni(self.dir / "bin")[0]
            return PluginTarget(OURS, shim, spider_netconfs(sockets, pool), self.scenario.call_timeout)
        return ApiTarget(OURS, sockets, pool, timeout=self.scenario.call_timeout)

    async def run_ours(self) -> TargetRun:
        """Our agents through the whole scenario, with the store checked after ADD and, once the agents have
        drained, after DEL."""
        scenario, plan = self.scenario, AddressPlan.for_scenario(self.scenario)
        pool = f"loadtest-{self.run_id}"
        settings = self.store_settings
        notes: list[str] = []
        controller = None
        if settings.kubernetes:
            controller = ControllerProcess(self.dir, settings, self.run_id, extra=self.controller_args)
        fleet = AgentFleet(self.dir, scenario.nodes, settings, pool_host=controller)
        sockets = [fleet.socket(n) for n in range(scenario.nodes)]
        target: Target | None = None
        recorder = self._recorder(OURS, trio.current_time())
        checks: list[Check] = []
        phases: dict[str, tuple[float, float]] = {}
        snapshots: list[tuple[list[dict[str, Any]], dict[str, Any] | None]] = []
        cpus: list[CpuSample] = []

        async def snapshot() -> None:
            host = await controller.statistics() if controller is not None else None
            snapshots.append((await fleet.statistics(), host))
            process = controller.process if controller is not None else None
            cpus.append(cpu.sample((p.pid for p in fleet.processes), process.pid if process else None))

        async with opened_store(settings) as store:
            if settings.kubernetes:
                notes += await remove_leftovers(store)
            try:
                # NB: the pool is applied inside: a run stopped from here on (even while the pool is being
                # written) removes it
                await apply(store, pool_object(pool, plan))
                if controller is not None:
                    try:
                        controller.token = await request_agent_token(store, self.dir, controller.namespace)
                    except (LookupError, SpiderError) as exc:
                        controller.token_problem = str(exc)
                target = self._target(sockets, pool)
                if controller is not None and self.controller:
                    await controller.start()
                await fleet.start()
                await snapshot()

                self.progress(OURS, "add", scenario.pods + 2 * len(scenario.churned))
                start = recorder.clock()
                live = await add_phase(scenario, target, recorder, self.run_id)
                phases["add"] = (start, recorder.clock())
                await snapshot()
                checks.append(await pool_matches_replies(store, pool, live, recorder.ops))
                checks.append(await store_consistent(store, pool, "after-add"))

                pods = recorder.holding()  # NB: the live pods, and those whose ADD failed: it may be granted
                self.progress(OURS, "del", len(pods))
                start = recorder.clock()
                await del_phase(scenario, target, recorder, pods)
                phases["del"] = (start, recorder.clock())
                await snapshot()
                await fleet.stop()  # NB: drained: a call that timed out on our side may still be written
                checks.append(await nothing_leaked(store, pool, self.run_id))
                checks.append(await store_consistent(store, pool, "after-del"))
            finally:
                with trio.CancelScope(shield=True):
                    notes += await self._clean_up(store, pool, target, recorder, fleet, controller)
                    if isinstance(target, ApiTarget):
                        await target.aclose()
        checks[:0] = [check_no_double(recorder.ops), check_served(scenario, recorder.ops)]
        agents = [s[0] for s in snapshots]
        hosts = [s[1] for s in snapshots]
        run = TargetRun(OURS, recorder.ops, phases, checks, agents=agents[-1], cleanup=notes)
        for n, phase in enumerate(("add", "del"), start=1):
            run.cpu[phase] = cpu.spent(cpus[n - 1], cpus[n])
            run.store[phase] = store_totals(agents[n - 1], agents[n])
            host = controller_totals(hosts[n - 1], hosts[n])
            if host is not None:
                run.host[phase] = host
            forwarded = forwarded_totals(agents[n - 1], agents[n])
            if forwarded is not None:
                run.forwarded[phase] = forwarded
        run.controller = self._controller_summary(controller, hosts[-1])
        return run

    def _controller_summary(
        self, controller: ControllerProcess | None, stats: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        if controller is None:
            return {"started": False, "why": "the embedded store needs no pool host"}
        if not self.controller:
            return {"started": False, "why": "--no-controller: the agents' fallback alone"}
        out: dict[str, Any] = {"started": True, "lease": f"{controller.namespace}/{controller.lease_name}"}
        out["agent_token"] = controller.token.user if controller.token else None
        if controller.token_problem:
            out["agent_token_problem"] = controller.token_problem
        if stats is None:
            return out | {"stats": None}
        return out | {"leader": stats.get("leader"), "rss_kib": stats.get("rss_kib"), "stats": True}

    async def _clean_up(
        self,
        store: Store,
        pool: str,
        target: Target | None,
        recorder: Recorder,
        fleet: AgentFleet,
        controller: ControllerProcess | None,
    ) -> list[str]:
        """Everything the run made, gone (shielded by the caller, each step within its budget); what was done."""
        notes = []
        held = recorder.holding()
        if held and target is not None and fleet.processes:
            with trio.move_on_after(RELEASE_BUDGET):
                notes.append(await self._release(store, pool, target, held, fleet))
        with trio.move_on_after(CLEANUP_BUDGET) as scope:
            await fleet.stop()
            if self.store_settings.kubernetes:
                try:
                    alive = controller is not None and controller.running
                    notes.append(await remove_pool(store, pool, endpoints_of=self.run_id, controller=alive))
                except (SpiderError, OSError) as exc:
                    notes.append(f"pool {pool}: not removed: {exc}")
            if controller is not None:
                await controller.stop()
                notes += await remove_controller_objects(store, controller, pool)
        if scope.cancelled_caught:
            notes.append(f"cleanup stopped after {CLEANUP_BUDGET:g} s: run again to remove the leftovers")
        if controller is not None:
            await controller.stop(grace=0)  # NB: a no-op unless the budget ran out before it stopped
        await fleet.stop(grace=0)
        return notes

    async def _release(self, store: Store, pool: str, target: Target, held: Sequence[PodRef], fleet: AgentFleet) -> str:
        """DEL every pod that may still hold an address (``Recorder.holding``), with the agents started again
        if they were stopped (drained) and the pool still holds some; what was done."""
        if not fleet.running:
            try:
                if not holds_addresses(await store.get(POOL, pool)):
                    return f"the agents drained; {len(held)} pods whose DEL failed hold nothing"
                await fleet.start()
            except NotFound:
                return f"pool {pool} gone: {len(held)} pods hold nothing"
            except (SpiderError, OSError, RuntimeError, trio.TooSlowError) as exc:
                return f"{len(held)} pods may still hold addresses: the agents did not start again: {exc}"
        patient = with_patience(target)
        try:
            released = await release_outstanding(patient, held, self.scenario.nodes, self.scenario.callers)
        finally:
            if isinstance(patient, ApiTarget):
                await patient.aclose()
        return f"released {released} of {len(held)} addresses the run's pods may still hold"

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
        cpus = [cpu.sample()]
        start = recorder.clock()
        live = await add_phase(scenario, target, recorder, self.run_id)
        phases["add"] = (start, recorder.clock())
        cpus.append(cpu.sample())
        self.progress(comparison.name, "del", len(live))
        pods = recorder.holding()
        start = recorder.clock()
        await del_phase(scenario, target, recorder, pods)
        phases["del"] = (start, recorder.clock())
        cpus.append(cpu.sample())
        checks = [check_no_double(recorder.ops), check_served(scenario, recorder.ops)]
        if comparison.config is None:
            checks.append(host_local_leaks(data_dirs))
        run = TargetRun(comparison.name, recorder.ops, phases, checks)
        run.cpu = {"add": cpu.spent(cpus[0], cpus[1]), "del": cpu.spent(cpus[1], cpus[2])}
        return run


async def run_loadtest(
    scenario: Scenario,
    directory: Path,
    *,
    comparison: Comparison | None = None,
    kubeconfig: Path | None = None,
    context: str | None = None,
    announce: Callable[[str, str, int], None] = lambda target, phase, total: None,
    advance: Callable[[str, str], None] = lambda target, phase: None,
    controller: bool = True,
    controller_args: tuple[str, ...] = (),
) -> list[TargetRun]:
    """Our agents through the scenario (with a Kubernetes store and ``controller``, the controller hosting the
    pools), then the comparison plugin (if any) through the same one.  With applications (``scenario.apps``):
    the SpiderSubnet scenario (``actors.tools.loadtest.subnet``), on the embedded store, without comparison."""
    if scenario.apps:
        if comparison is not None or kubeconfig is not None:
            raise ValueError("the SpiderSubnet scenario runs on the embedded store, without a comparison")
        subnet = SubnetLoadTest(scenario, directory, secrets.token_hex(4), announce, advance, controller_args)
        return [await subnet.run()]
    if comparison is not None and not comparison.plugin.is_file():
        raise FileNotFoundError(f"comparison plugin {comparison.plugin} does not exist")
    test = LoadTest(
        scenario,
        directory,
        kubeconfig,
        context,
        announce,
        advance,
        controller=controller,
        controller_args=controller_args,
    )
    runs = [await test.run_ours()]
    if comparison is not None:
        runs.append(await test.run_comparison(comparison))
    return runs
