"""Spiderpool's own benchmark, simulated: 1000 pods on 10 nodes with exactly 1000 addresses, 10 concurrent
callers, through the real CNI shim, with Debian's host-local run through the same scenario in the same run.

    python -m bench.scenario_1000                        # embedded store, host-local beside it
    python -m bench.scenario_1000 --kubeconfig FILE      # against that Kubernetes API server instead

Everything is ``spider loadtest``; this only fixes the scenario (reference §11.1).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from actors.tools.loadtest.report import run_command
from actors.tools.loadtest.scenario import Comparison, Scenario


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scenario_1000", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeconfig", type=Path, default=None, help="use this API server, not the embedded store")
    parser.add_argument("--context", default=None)
    parser.add_argument("--via", choices=("shim", "api"), default="shim")
    parser.add_argument("--no-compare", action="store_true", help="skip host-local")
    parser.add_argument("--json", default=None, metavar="FILE")
    parser.add_argument("--plot", type=Path, default=None, metavar="FILE.png")
    args = parser.parse_args(argv)
    scenario = Scenario(nodes=10, pods=1000, callers=10, via=args.via)
    return run_command(
        scenario,
        comparison=None if args.no_compare else Comparison.host_local(),
        kubeconfig=args.kubeconfig,
        context=args.context,
        json_to=args.json,
        plot_to=args.plot,
    )


if __name__ == "__main__":
    sys.exit(main())
