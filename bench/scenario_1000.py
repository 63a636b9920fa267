"""Spiderpool's own benchmark, simulated: 1000 pods on 10 nodes with exactly 1000 addresses, 10 concurrent
callers, through the real CNI shim, with Debian's host-local run through the same scenario in the same run.

    python -m bench.scenario_1000                        # embedded store, host-local beside it
    python -m bench.scenario_1000 --kubeconfig FILE      # against that Kubernetes API server instead
    python -m bench.scenario_1000 --fake-api             # against tests/fakeapi, started here, latency model on

Everything is ``spider loadtest``; this only fixes the scenario (reference §11.1).  ``--fake-api`` starts the
fake API server as a process of its own with a real API server's latencies (``--fake-latency``, default
``$SPIDER_FAKEAPI_LATENCY`` or ``measured``: ``tests/fakeapi/latency.py``), so that the write contention of
ten agents on one pool shows; what the server served (writes and 409 Conflicts per request kind) is printed
after the report and added to ``--json``.  ``--pods`` scales the scenario down (the pool keeps one address
per pod).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from actors.tools.loadtest.report import run_command
from actors.tools.loadtest.scenario import Comparison, Scenario
from bench.common import FAKE_API_LATENCY_ENV, fake_api_server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scenario_1000", description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--kubeconfig", type=Path, default=None, help="use this API server, not the embedded store")
    where.add_argument("--fake-api", action="store_true", help="start tests/fakeapi (latency model on) and use it")
    parser.add_argument("--fake-latency", default=os.environ.get(FAKE_API_LATENCY_ENV, "measured"), metavar="MODEL")
    parser.add_argument("--context", default=None)
    parser.add_argument("--via", choices=("shim", "api"), default="shim")
    parser.add_argument("--pods", type=int, default=1000, help="scale the scenario (default 1000)")
    parser.add_argument("--no-compare", action="store_true", help="skip host-local")
    parser.add_argument("--json", default=None, metavar="FILE")
    parser.add_argument("--plot", type=Path, default=None, metavar="FILE.png")
    args = parser.parse_args(argv)
    scenario = Scenario(nodes=10, pods=args.pods, callers=10, via=args.via)

    def run(kubeconfig: Path | None) -> int:
        return run_command(
            scenario,
            comparison=None if args.no_compare else Comparison.host_local(),
            kubeconfig=kubeconfig,
            context=args.context,
            json_to=args.json,
            plot_to=args.plot,
        )

    if not args.fake_api:
        return run(args.kubeconfig)
    with (
        tempfile.TemporaryDirectory(prefix="spider-fakeapi-") as directory,
        fake_api_server(Path(directory), args.fake_latency) as (kubeconfig, served),
    ):
        code = run(kubeconfig)
    print(f"fake API server ({args.fake_latency}): {json.dumps(served)}")
    if args.json and args.json != "-":
        report = json.loads(Path(args.json).read_text())
        report["fake_api"] = dict(served, model=args.fake_latency)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
