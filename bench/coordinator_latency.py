"""How long the coordinator takes, measured with real namespaces (root only).

Runs N pods through the conflist [Debian macvlan + our spiderpool IPAM, our coordinator] in the test lab of
``tests/netns/coordinator_topology.py`` and prints the median and 95th percentile of each step as the runtime
sees it (plugin exec to exit), and an ADD with conflict and gateway detection on.  ``--host-routes N`` first
gives the host N routes in its main table, as a node that learns its fabric's routes by BGP has;
``--host-neighbours N`` N permanent neighbour entries on its underlay interface, as a node on a large L2
segment has.  Run it with::

    .venv/bin/python -m bench.coordinator_latency --pods 30 [--host-routes 50000] [--host-neighbours 20000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Awaitable
from typing import Any

import trio

from tests.netns.coordinator_topology import GATEWAY_V4, coordinator_lab
from tests.support import pool_object


def _summary(name: str, samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"{name:32} median {statistics.median(ordered) * 1000:7.1f} ms   p95 {p95 * 1000:7.1f} ms   n={len(ordered)}"


async def main(pods: int, host_routes: int, host_neighbours: int) -> None:
    async with coordinator_lab() as lab:
        lab.add_host_routes(host_routes)
        lab.add_host_neighbours(host_neighbours)
        await lab.apply(
            pool_object("bench", "10.77.0.0/16", ["10.77.1.0-10.77.9.255"], gateway=GATEWAY_V4, default=True)
        )
        await lab.coordinator_synced()
        steps: dict[str, list[float]] = {k: [] for k in ("macvlan ADD", "coordinator ADD", "coordinator DEL")}
        steps["coordinator ADD with detection"] = []
        failed: dict[str, list[str]] = {k: [] for k in steps}

        async def timed(step: str, call: Awaitable[tuple[int, Any]]) -> Any:
            start = time.perf_counter()
            code, result = await call
            steps[step].append(time.perf_counter() - start)
            if code != 0:  # NB: counted and shown, so a slow failure is visible beside the successes
                failed[step].append(f"{result.get('code')}: {result.get('msg')}")
            return result

        results = {}
        names = [lab.pod() for _ in range(pods)]
        for ns in names:
            made = await timed("macvlan ADD", lab.macvlan("ADD", ns, lab.macvlan_conf()))
            conf = {**lab.coordinator_conf(), "prevResult": made}
            await timed("coordinator ADD", lab.coordinator("ADD", ns, conf))
            results[ns] = made
        for ns in names[: max(1, pods // 3)]:
            conf = {**lab.coordinator_conf(detectIPConflict=True, detectGateway=True), "prevResult": results[ns]}
            await timed("coordinator ADD with detection", lab.coordinator("ADD", ns, conf))
        for ns in names:
            conf = {**lab.coordinator_conf(), "prevResult": results[ns]}
            await timed("coordinator DEL", lab.coordinator("DEL", ns, conf))
        for name, samples in steps.items():
            print(_summary(name, samples), f"  failed {len(failed[name])}", *sorted(set(failed[name]))[:1])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=30)
    parser.add_argument("--host-routes", type=int, default=0, help="routes in the host's main table first")
    parser.add_argument("--host-neighbours", type=int, default=0, help="neighbour entries on the host first")
    args = parser.parse_args()
    trio.run(main, args.pods, args.host_routes, args.host_neighbours)
