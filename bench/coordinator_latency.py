"""How long the coordinator takes, measured with real namespaces (root only).

Runs N pods through the conflist [Debian macvlan + our spiderpool IPAM, our coordinator] in the test lab of
``tests/netns/coordinator_topology.py`` and prints the median and 95th percentile of each step as the runtime
sees it (plugin exec to exit), and an ADD with conflict and gateway detection on.  Run it with::

    .venv/bin/python -m bench.coordinator_latency --pods 30
"""

from __future__ import annotations

import argparse
import statistics
import time

import trio

from tests.netns.coordinator_topology import GATEWAY_V4, coordinator_lab
from tests.support import pool_object


def _summary(name: str, samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"{name:32} median {statistics.median(ordered) * 1000:7.1f} ms   p95 {p95 * 1000:7.1f} ms   n={len(ordered)}"


async def main(pods: int) -> None:
    async with coordinator_lab() as lab:
        await lab.apply(
            pool_object("bench", "10.77.0.0/16", ["10.77.1.0-10.77.9.255"], gateway=GATEWAY_V4, default=True)
        )
        await lab.coordinator_synced()
        steps: dict[str, list[float]] = {k: [] for k in ("macvlan ADD", "coordinator ADD", "coordinator DEL")}
        detect: list[float] = []
        results = {}
        names = [lab.pod() for _ in range(pods)]
        for ns in names:
            start = time.perf_counter()
            code, result = await lab.macvlan("ADD", ns, lab.macvlan_conf())
            assert code == 0, result
            steps["macvlan ADD"].append(time.perf_counter() - start)
            start = time.perf_counter()
            code, result = await lab.coordinator("ADD", ns, {**lab.coordinator_conf(), "prevResult": result})
            assert code == 0, result
            steps["coordinator ADD"].append(time.perf_counter() - start)
            results[ns] = result
        for ns in names[: max(1, pods // 3)]:
            conf = {**lab.coordinator_conf(detectIPConflict=True, detectGateway=True), "prevResult": results[ns]}
            start = time.perf_counter()
            code, _ = await lab.coordinator("ADD", ns, conf)
            assert code == 0
            detect.append(time.perf_counter() - start)
        for ns in names:
            start = time.perf_counter()
            code, _ = await lab.coordinator("DEL", ns, {**lab.coordinator_conf(), "prevResult": results[ns]})
            assert code == 0
            steps["coordinator DEL"].append(time.perf_counter() - start)
        for name, samples in steps.items():
            print(_summary(name, samples))
        print(_summary("coordinator ADD with detection", detect))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=30)
    trio.run(main, parser.parse_args().pods)
