"""What ``spider loadtest`` shows: the live progress bar, the summary numbers, the table, the JSON and the plot.

Owns turning the timed calls of a run (``actors.tools.loadtest.run``) into numbers (wall time per phase,
calls per second, latency percentiles, failures by reason, pool writes, conflicts and batch sizes of the pool
host (the controller) and of the agents' own pool actors apart, what the agents forwarded or fell back on,
CPU per part of the run, memory, what cleaning up did) and ratios against a comparison plugin, and showing
them: a rich progress bar on stderr while the test runs, a table at the end, ``--json`` for machines,
``--plot FILE.png`` (matplotlib, imported only when asked for).
It measures nothing itself, except where it ran (``machine``).
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import attrs
import trio
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from actors.tools.loadtest.cpu import PARTS
from actors.tools.loadtest.fleet import work_dir
from actors.tools.loadtest.run import run_loadtest
from actors.tools.loadtest.scenario import Comparison, Scenario, TargetRun

T = TypeVar("T")
ADD_KINDS = ("add", "churn-add")
DEL_KINDS = ("del", "churn-del")


def machine() -> dict[str, Any]:
    """Where a result was measured: host, cores, memory, CPU model, load, Python."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    with suppress(OSError, ValueError, IndexError):
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "host": os.uname().nodename,
        "cores": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "load": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
        "kernel": os.uname().release,
    }


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation between closest ranks; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency(values: Sequence[float]) -> dict[str, float]:
    """Median, p90, p99, mean and max of latencies given in seconds, in milliseconds."""
    if not values:
        return {"count": 0}
    ms = [v * 1000 for v in values]
    return {
        "count": len(ms),
        "p50_ms": round(percentile(ms, 50), 3),
        "p90_ms": round(percentile(ms, 90), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "mean_ms": round(sum(ms) / len(ms), 3),
        "max_ms": round(max(ms), 3),
    }


def with_mean_batch(totals: dict[str, int]) -> dict[str, Any]:
    """Pool actor counters with the mean batch (requests per batch) added."""
    batches = totals.get("batches", 0)
    return totals | {"mean_batch": round(totals.get("requests", 0) / batches, 2) if batches else 0}


def pool_writes(target: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per phase, the pool host's and the agents' writes, conflicts and batches side by side, and their sum:
    ``{"add": {"host": {...} or None, "agents": {...}, "writes": n, "conflicts": n}, ...}``."""
    out: dict[str, dict[str, Any]] = {}
    for phase in ("add", "del"):
        agents = target.get("store", {}).get(phase)
        host = target.get("host", {}).get(phase)
        if agents is None and host is None:
            continue
        parts = [x for x in (agents, host) if x]
        out[phase] = {
            "host": host,
            "agents": agents,
            "writes": sum(x.get("writes", 0) for x in parts),
            "conflicts": sum(x.get("conflicts", 0) for x in parts),
        }
        if target.get("forwarded", {}).get(phase) is not None:
            out[phase]["forwarded"] = target["forwarded"][phase]
    return out


def summarize(run: TargetRun) -> dict[str, Any]:
    """One target's numbers: phases, latency per kind of call, failures by reason, store, memory, checks."""
    phases: dict[str, Any] = {}
    for name, (start, end) in run.phases.items():
        wall = end - start
        kinds = ADD_KINDS if name == "add" else DEL_KINDS
        in_phase = [op for op in run.ops if start <= op.start <= end]
        done = sum(1 for op in in_phase if op.ok and op.kind in kinds)
        allocations = sum(1 for op in in_phase if op.ok and op.kind in ADD_KINDS)
        phases[name] = {
            "wall_s": round(wall, 3),
            "calls": len(in_phase),
            "failed": sum(1 for op in in_phase if not op.ok),
            "per_s": round(done / wall, 1) if wall > 0 else None,
            "allocations": allocations,
        }
    total = sum(p["wall_s"] for p in phases.values())
    out: dict[str, Any] = {
        "name": run.name,
        "phases": phases,
        "total_wall_s": round(total, 3),
        "allocations_per_s": phases.get("add", {}).get("per_s"),
        "latency": {
            kind: latency([op.latency for op in run.ops if op.kind == kind])
            for kind in ("add", "churn-del", "churn-add", "del")
            if any(op.kind == kind for op in run.ops)
        },
        "failures": dict(Counter(op.reason for op in run.ops if not op.ok).most_common()),
        "checks": [attrs.asdict(c) for c in run.checks],
        "ok": run.ok,
    }
    if run.store:
        out["store"] = {phase: with_mean_batch(totals) for phase, totals in run.store.items()}
    if run.host:
        out["host"] = {phase: with_mean_batch(totals) for phase, totals in run.host.items()}
    if run.forwarded:
        out["forwarded"] = dict(run.forwarded)
    if run.controller:
        out["controller"] = dict(run.controller)
    if run.cleanup:
        out["cleanup"] = list(run.cleanup)
    if run.cpu:
        out["cpu"] = {phase: dict(parts) for phase, parts in run.cpu.items()}
    if run.agents:
        out["agents"] = {
            "count": len(run.agents),
            "max_rss_mib": round(max(a["rss_kib"] for a in run.agents) / 1024, 1),
            "max_peak_rss_mib": round(max(a["peak_rss_kib"] for a in run.agents) / 1024, 1),
            "mean_rss_mib": round(sum(a["rss_kib"] for a in run.agents) / len(run.agents) / 1024, 1),
        }
    return out


def ratios(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, float | None]:
    """Ours divided by theirs: wall time per phase and in total, ADD latency; above 1 means we are slower."""

    def div(a: float | None, b: float | None) -> float | None:
        return round(a / b, 2) if a is not None and b and not math.isnan(a) and not math.isnan(b) else None

    out: dict[str, float | None] = {}
    for phase in ours["phases"]:
        if phase in theirs["phases"]:
            out[f"{phase}_wall"] = div(ours["phases"][phase]["wall_s"], theirs["phases"][phase]["wall_s"])
    out["total_wall"] = div(ours["total_wall_s"], theirs["total_wall_s"])
    for q in ("p50_ms", "p99_ms"):
        out[f"add_{q.removesuffix('_ms')}"] = div(
            ours["latency"].get("add", {}).get(q), theirs["latency"].get("add", {}).get(q)
        )
    return out


def build_report(
    scenario: Scenario,
    runs: Sequence[TargetRun],
    *,
    store: str,
    machine: dict[str, Any],
    load_after: Sequence[float],
    started: datetime,
) -> dict[str, Any]:
    """The whole result, as ``--json`` prints it."""
    summaries = [summarize(r) for r in runs]
    report: dict[str, Any] = {
        "date": started.astimezone(UTC).isoformat(timespec="seconds"),
        "machine": machine | {"load_after": [round(x, 2) for x in load_after]},
        "scenario": attrs.asdict(scenario) | {"addresses": scenario.addresses, "churned": len(scenario.churned)},
        "store": store,
        "targets": summaries,
        "ok": all(r.ok for r in runs),
    }
    if len(summaries) > 1:
        report["ratio"] = ratios(summaries[0], summaries[1])
    return report


def _num(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def _conflicts(totals: dict[str, Any] | None) -> str:
    if not totals:
        return "-"
    share = f" ({totals['conflicts'] / totals['writes']:.0%})" if totals.get("writes") else ""
    return f"{totals['conflicts']:,}{share}"


def print_summary(console: Console, report: dict[str, Any]) -> None:
    """The summary table, the checks, and the failures by reason."""
    s = report["scenario"]
    targets = report["targets"]
    where = f"pool of {s['addresses']} addresses"
    if s.get("apps"):
        where = (
            f"{s['apps']} applications of {s['pods'] // s['apps']} replicas, each from its own auto pool of a "
            f"SpiderSubnet of {s['addresses']} addresses (pool wait {s['wait_interval']:g} s)"
        )
    console.print(
        f"[bold]{s['pods']} pods[/] on {s['nodes']} nodes, {s['callers']} callers, {where}, via {s['via']}"
        + (f", churn {s['churn']:.0%} ({s['churned']} pods)" if s["churned"] else "")
        + f"; store: {report['store']}; load {report['machine']['load']} -> {report['machine']['load_after']}",
        highlight=False,
    )
    for t in targets:
        controller = t.get("controller")
        if controller:
            console.print(f"{t['name']}: controller {_describe_controller(controller)}", highlight=False)
    compared = len(targets) > 1
    table = Table("", *(t["name"] for t in targets), *(["ours / theirs"] if compared else []), header_style="bold")
    ratio = report.get("ratio", {})

    def row(label: str, key: str | None, values: list[str]) -> None:
        extra = [_num(ratio.get(key), 2) + "x" if key and ratio.get(key) is not None else ""] if compared else []
        table.add_row(label, *values, *extra)

    for phase in ("create", "add", "del", "reclaim"):
        if phase not in ("add", "del") and not any(phase in t["phases"] for t in targets):
            continue  # NB: the SpiderSubnet scenario's phases (objects written; pools reclaimed)
        row(
            f"{phase.upper()} phase wall (s)",
            f"{phase}_wall",
            [_num(t["phases"].get(phase, {}).get("wall_s"), 2) for t in targets],
        )
    row("total wall (s)", "total_wall", [_num(t["total_wall_s"], 2) for t in targets])
    row("allocations / s", None, [_num(t["phases"].get("add", {}).get("per_s")) for t in targets])
    row("releases / s", None, [_num(t["phases"].get("del", {}).get("per_s")) for t in targets])
    for kind in ("add", "churn-del", "churn-add", "del"):
        if not any(kind in t["latency"] for t in targets):
            continue
        for q in ("p50", "p90", "p99"):
            key = f"add_{q}" if kind == "add" and q != "p90" else None
            row(
                f"{kind.upper()} latency {q} (ms)",
                key,
                [_num(t["latency"].get(kind, {}).get(f"{q}_ms")) for t in targets],
            )
    row("failed calls", None, [_num(sum(t["failures"].values())) for t in targets])
    for phase in ("add", "del"):
        upper = phase.upper()
        for who, key in (("host", "host"), ("agents", "store")):
            if not any(key in t for t in targets):
                continue
            if who == "agents" and not any("host" in t or t.get("controller", {}).get("started") for t in targets):
                who = ""  # NB: no controller: every pool write is an agent's
            label = f" ({who})" if who else ""
            counts = [t.get(key, {}).get(phase) for t in targets]
            row(f"pool writes {upper}{label}", None, [_num(x["writes"]) if x else "-" for x in counts])
            row(f"write conflicts {upper}{label}", None, [_conflicts(x) for x in counts])
            row(
                f"batches {upper}{label} (mean / largest)",
                None,
                [f"{x['batches']:,} ({x['mean_batch']:.1f} / {x['largest_batch']})" if x else "-" for x in counts],
            )
        if any(t.get("controller", {}).get("started") for t in targets) and not any("host" in t for t in targets):
            row(f"pool writes {upper} (host)", None, ["-" if "controller" in t else "" for t in targets])
        forwarded = [t.get("forwarded", {}).get(phase) for t in targets]
        if any(forwarded):
            row(
                f"forwarded {upper}: requests / looks / calls / fell back",
                None,
                [
                    f"{x['requests']:,} / {x.get('looks', 0):,} / {x['calls']:,} / {x['fallback']:,}" if x else "-"
                    for x in forwarded
                ],
            )
        hosts = [t.get("host", {}).get(phase) for t in targets]
        if any(x and x.get("looks") for x in hosts):
            row(
                f"last looks {upper} (host): answered / reads of the pool's version",
                None,
                [f"{x.get('looks', 0):,} / {x.get('version_reads', 0):,}" if x else "-" for x in hosts],
            )
    for phase in ("add", "del"):
        spent = [t.get("cpu", {}).get(phase) for t in targets]
        if any(spent):
            row(
                f"CPU {phase.upper()} (s): plugins / agents / controller / load test / rest",
                None,
                [" / ".join(_num(x[part], 1) for part in (*PARTS, "rest")) if x else "-" for x in spent],
            )
    if any("agents" in t for t in targets):
        row(
            "agent RSS max (MiB)",
            None,
            [_num(t["agents"]["max_rss_mib"]) if "agents" in t else "-" for t in targets],
        )
    console.print(table)

    checks = Table("target", "check", "", "detail", header_style="bold", box=None)
    for t in targets:
        for c in t["checks"]:
            checks.add_row(t["name"], c["name"], "[green]ok[/]" if c["ok"] else "[red]FAILED[/]", c["detail"])
    console.print(checks)
    for t in targets:
        if t["failures"]:
            failures = Table(f"{t['name']}: failure", "calls", header_style="bold", box=None)
            for reason, count in t["failures"].items():
                failures.add_row(reason, str(count))
            console.print(failures)
    for t in targets:
        for note in t.get("cleanup", []):
            console.print(f"{t['name']}: cleanup: {note}", highlight=False)
    console.print("[bold green]all checks passed[/]" if report["ok"] else "[bold red]some checks FAILED[/]")


def _describe_controller(controller: dict[str, Any]) -> str:
    if not controller.get("started"):
        return f"not started ({controller.get('why', '')})"
    where = f"started, Lease {controller.get('lease')}"
    if controller.get("agent_token_problem"):
        where += f"; the agents have no token, so forward nothing ({controller['agent_token_problem']})"
    if not controller.get("stats"):
        return f"{where}; it reports no pool host counters (GET /v1/spider/stats)"
    leader = controller.get("leader")
    leading = "leading" if leader is True else "NOT leading" if leader is False else "leadership unknown"
    rss = controller.get("rss_kib")
    return f"{where}, {leading}" + (f", RSS {rss / 1024:.1f} MiB" if rss else "")


def plot(runs: Sequence[TargetRun], path: Path, title: str) -> None:
    """A PNG: completed allocations over time (left) and the ADD latency histogram (right), every target."""
    try:
        import matplotlib  # NB: lazily: only --plot needs it, and it takes a second to import

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install 'spider-ipam[loadtest]'") from None
    fig, (timeline, histogram) = plt.subplots(1, 2, figsize=(13, 5))
    latencies_ms: list[list[float]] = []
    for run in runs:
        start = run.phases["add"][0]
        adds = sorted(op.end - start for op in run.ops if op.ok and op.kind in ADD_KINDS)
        dels = sorted(op.end - start for op in run.ops if op.ok and op.kind == "del")
        (line,) = timeline.plot(adds, range(1, len(adds) + 1), label=f"{run.name} ADD")
        if dels:
            timeline.plot(dels, range(1, len(dels) + 1), linestyle=":", color=line.get_color(), label=f"{run.name} DEL")
        latencies_ms.append([op.latency * 1000 for op in run.ops if op.kind in ADD_KINDS])
    timeline.set_xlabel("seconds since the first ADD")
    timeline.set_ylabel("calls completed")
    timeline.set_title("completed allocations (and releases)")
    timeline.legend()
    timeline.grid(alpha=0.3)
    everything = [v for values in latencies_ms for v in values if v > 0]
    if everything:
        low, high = min(everything), max(everything)
        bins = [low * (high / low) ** (i / 40) for i in range(41)] if high > low else 10
        for run, values in zip(runs, latencies_ms, strict=True):
            histogram.hist(values, bins=bins, alpha=0.55, label=run.name)
        histogram.set_xscale("log")
    histogram.set_xlabel("ADD latency (ms, log scale)")
    histogram.set_ylabel("calls")
    histogram.set_title("ADD latency")
    histogram.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@attrs.define
class LiveProgress:
    """A rich progress bar per target and phase, on stderr; silent when stderr is not a terminal."""

    console: Console = attrs.field(factory=lambda: Console(stderr=True))
    enabled: bool = True
    _progress: Progress | None = None
    _tasks: dict[tuple[str, str], tuple[TaskID, float]] = attrs.field(factory=dict)
    _done: Counter[tuple[str, str]] = attrs.field(factory=Counter)

    def __enter__(self) -> LiveProgress:
        if self.enabled and self.console.is_terminal:
            self._progress = Progress(
                TextColumn("{task.description:<22}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:>7} calls/s"),
                TimeElapsedColumn(),
                console=self.console,
            )
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def announce(self, target: str, phase: str, total: int) -> None:
        """A new bar for ``target``'s ``phase`` of ``total`` calls."""
        if self._progress is not None:
            task = self._progress.add_task(f"{target} {phase.upper()}", total=total, rate="")
            self._tasks[(target, phase)] = (task, time.monotonic())

    def advance(self, target: str, phase: str) -> None:
        """One call of that phase is done."""
        if self._progress is None or (target, phase) not in self._tasks:
            return
        task, started = self._tasks[(target, phase)]
        self._done[(target, phase)] += 1
        elapsed = time.monotonic() - started
        rate = f"{self._done[(target, phase)] / elapsed:,.0f}" if elapsed > 0 else ""
        self._progress.update(task, advance=1, rate=rate)


class Terminated(Exception):
    """The run was stopped by SIGTERM (after cleaning up)."""


async def stopped_by_sigterm(run: Callable[[], Awaitable[T]]) -> T:
    """``run()``, cancelled by SIGTERM so that its cleanup runs (the default handler would exit at once);
    ``Terminated`` then.  Outside the main thread (no signals there) just ``run()``."""
    if threading.current_thread() is not threading.main_thread():
        return await run()
    result: list[T] = []
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return

            async def body() -> None:
                result.append(await run())
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            nursery.start_soon(body)
    if not result:
        raise Terminated("stopped by SIGTERM")
    return result[0]


def run_command(
    scenario: Scenario,
    *,
    comparison: Comparison | None = None,
    kubeconfig: Path | None = None,
    context: str | None = None,
    json_to: str | None = None,
    plot_to: Path | None = None,
    keep: bool = False,
    out: Console | None = None,
    controller: bool = True,
    controller_args: Sequence[str] = (),
) -> int:
    """``spider loadtest``: run, then print the table (or JSON), write the plot; exit 1 when a check failed.

    With a Kubernetes store, ``controller`` starts ``spider controller`` beside the agents (``False``: the
    agents' fallback alone).  SIGTERM, like Ctrl-C, stops the run and cleans up before exiting (143)."""
    out = out or Console(width=None if sys.stdout.isatty() else 140)
    started = datetime.now(UTC)
    where = f"kubernetes ({kubeconfig})" if kubeconfig else "embedded (SQLite WAL)"
    before = machine()
    try:
        with work_dir(keep) as directory, LiveProgress() as live:
            runs = trio.run(
                partial(
                    stopped_by_sigterm,
                    partial(
                        run_loadtest,
                        scenario,
                        directory,
                        comparison=comparison,
                        kubeconfig=kubeconfig,
                        context=context,
                        announce=live.announce,
                        advance=live.advance,
                        controller=controller,
                        controller_args=tuple(controller_args),
                    ),
                )
            )
            if keep:
                live.console.print(f"work directory kept: {directory}", highlight=False)
    except Terminated as exc:  # NB: after the cleanup; one line, and the shell's code for a SIGTERM
        print(f"spider loadtest: {exc}, after cleaning up", file=sys.stderr)
        return 128 + signal.SIGTERM
    report = build_report(scenario, runs, store=where, machine=before, load_after=os.getloadavg(), started=started)
    if json_to == "-":
        print(json.dumps(report, indent=2))
    else:
        print_summary(out, report)
        if json_to:
            Path(json_to).write_text(json.dumps(report, indent=2) + "\n")
    if plot_to is not None:
        s = report["scenario"]
        title = f"{s['pods']} pods, {s['nodes']} nodes, {s['callers']} callers, {s['addresses']} addresses ({where})"
        plot(runs, plot_to, title)
    return 0 if report["ok"] else 1
