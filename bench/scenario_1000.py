"""Spiderpool's own benchmark, simulated: 1000 pods on 10 nodes with exactly 1000 addresses, 10 concurrent
callers, through the real CNI shim, with Debian's host-local run through the same scenario in the same run.

    python -m bench.scenario_1000                        # embedded store, host-local beside it
    python -m bench.scenario_1000 --kubeconfig FILE      # against that Kubernetes API server instead
    python -m bench.scenario_1000 --fake-api             # against tests/fakeapi, started here, latency model on
    python -m bench.scenario_1000 --fake-api --no-controller   # the agents' fallback alone, no pool host

Everything is ``spider loadtest``; this only fixes the scenario (reference §11.1).  With a Kubernetes API
server a controller runs beside the agents, as in a cluster, and its leader hosts the pool; ``--no-controller``
measures the agents' own pool actors alone.  After the report it prints, per phase, the pool writes, conflicts
and batch sizes of the pool host and of the agents apart, and adds them to ``--json`` (``pool_writes``).

``--fake-api`` starts the fake API server as a process of its own with a real API server's latencies
(``--fake-latency``, default ``$SPIDER_FAKEAPI_LATENCY`` or ``measured``: ``tests/fakeapi/latency.py``), so that
the write contention of ten agents on one pool shows, speaking HTTPS as a real one does (``--fake-plain-http``:
without TLS); what the server served (writes and 409 Conflicts per request kind) is printed after the report and
added to ``--json``.  ``--pods`` scales the scenario down (the pool keeps one address per pod).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from actors.tools.loadtest.report import pool_writes, run_command
from actors.tools.loadtest.scenario import Comparison, Scenario
from bench.common import FAKE_API_LATENCY_ENV, fake_api_server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scenario_1000", description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--kubeconfig", type=Path, default=None, help="use this API server, not the embedded store")
    where.add_argument("--fake-api", action="store_true", help="start tests/fakeapi (latency model on) and use it")
    parser.add_argument("--fake-latency", default=os.environ.get(FAKE_API_LATENCY_ENV, "measured"), metavar="MODEL")
    parser.add_argument(
        "--fake-plain-http", action="store_true", help="the fake API server without TLS (a real one speaks HTTPS)"
    )
    parser.add_argument("--context", default=None)
    parser.add_argument("--via", choices=("shim", "api"), default="shim")
    parser.add_argument("--pods", type=int, default=1000, help="scale the scenario (default 1000)")
    parser.add_argument("--no-compare", action="store_true", help="skip host-local")
    parser.add_argument("--json", default=None, metavar="FILE")
    parser.add_argument("--plot", type=Path, default=None, metavar="FILE.png")
    parser.add_argument(
        "--no-controller", action="store_true", help="start no controller (no pool host): the agents' fallback"
    )
    parser.add_argument(
        "--controller-arg",
        action="append",
        default=[],
        metavar="OPTION",
        help="an option for the controller, as given, e.g. --controller-arg=--pool-host-linger=0.02 (repeatable)",
    )
    args = parser.parse_args(argv)
    scenario = Scenario(nodes=10, pods=args.pods, callers=10, via=args.via)

    with tempfile.TemporaryDirectory(prefix="spider-bench-") as directory:
        json_to = args.json if args.json and args.json != "-" else str(Path(directory) / "report.json")

        def run(kubeconfig: Path | None) -> int:
            return run_command(
                scenario,
                comparison=None if args.no_compare else Comparison.host_local(),
                kubeconfig=kubeconfig,
                context=args.context,
                json_to=json_to,
                plot_to=args.plot,
                controller=not args.no_controller,
                controller_args=args.controller_arg,
            )

        served: dict[str, Any] | None = None
        if not args.fake_api:
            code = run(args.kubeconfig)
        else:
            tls = not args.fake_plain_http
            with fake_api_server(Path(directory), args.fake_latency, tls=tls) as (kubeconfig, served):
                code = run(kubeconfig)
        report = json.loads(Path(json_to).read_text())
    ours = report["targets"][0]
    report["pool_writes"] = pool_writes(ours)
    report["controller"] = "none (--no-controller)" if args.no_controller else "started with a Kubernetes store"
    print_pool_writes(report["pool_writes"])
    if served is not None:
        print(f"fake API server ({args.fake_latency}): {json.dumps(served)}")
        report["fake_api"] = dict(served, model=args.fake_latency)
    if args.json == "-":
        print(json.dumps(report, indent=2))
    elif args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return code


def _counts(totals: dict[str, Any] | None) -> str:
    if not totals:
        return "-"
    share = f" ({totals['conflicts'] / totals['writes']:.0%})" if totals.get("writes") else ""
    return (
        f"{totals['writes']:,} writes, {totals['conflicts']:,} conflicts{share}, {totals['batches']:,} batches "
        f"(mean {totals['mean_batch']:.1f}, largest {totals['largest_batch']})"
    )


def print_pool_writes(split: dict[str, dict[str, Any]]) -> None:
    """Per phase: the pool host's and the agents' pool writes, conflicts and batches, and the sum."""
    for phase, parts in split.items():
        print(f"{phase.upper()} pool host: {_counts(parts['host'])}")
        print(f"{phase.upper()} agents:    {_counts(parts['agents'])}")
        forwarded = parts.get("forwarded")
        if forwarded:
            print(
                f"{phase.upper()} forwarded: {forwarded['requests']:,} requests and "
                f"{forwarded.get('looks', 0):,} looks in {forwarded['calls']:,} calls, "
                f"{forwarded['fallback']:,} fell back"
            )
        host = parts.get("host") or {}
        if host.get("looks"):
            print(
                f"{phase.upper()} looks:     {host['looks']:,} answered by the pool host with "
                f"{host.get('version_reads', 0):,} reads of the pool's version"
            )
        print(f"{phase.upper()} all:       {parts['writes']:,} pool writes, {parts['conflicts']:,} conflicts")


if __name__ == "__main__":
    sys.exit(main())
