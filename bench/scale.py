"""Scale: allocation latency and agent memory with a /16 pool holding 20,000 allocated addresses, against a
/24 pool holding 100, each served by a real ``spider agent`` process on a fresh embedded store.

    python -m bench.scale

For each pool: the status is filled directly in the store (records as the agent writes them), the agent is
started, then ``--allocations`` sequential ADDs (``POST /v1/ipam/ip``, one new pod each, so one status write
each) and as many DELs are timed; the agent's resident memory is read from /proc after them.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from actors.stores.selection import StoreSettings
from actors.stores.sqlite import SqliteStore
from actors.tools.loadtest.fleet import AgentClient, AgentFleet, rss_kib
from actors.tools.manifests import apply
from bench.common import Result, stats_ms
from spider.addr import ip_to_int
from spider.pool import KIND, Record, encode_allocated

POOLS = {
    "/24": ("10.2.0.0/24", "10.2.0.1", "10.2.0.2-10.2.0.254", 100),
    "/16": ("10.1.0.0/16", "10.1.0.1", "10.1.0.2-10.1.255.254", 20_000),
}


async def fill(store_path: Path, subnet: str, gateway: str, ips: str, held: int) -> None:
    """A pool whose status already records ``held`` pods (realistic UIDs and container IDs)."""
    store = await SqliteStore.open(store_path)
    try:
        await apply(
            store,
            {
                "apiVersion": "spiderpool.spidernet.io/v2beta1",
                "kind": KIND,
                "metadata": {"name": "big"},
                "spec": {"subnet": subnet, "gateway": gateway, "ips": [ips]},
            },
        )
        first = ip_to_int(ips.partition("-")[0])
        records = {
            first + i: Record(f"default/filler-{i}", f"{i:08d}-0000-4000-8000-{i:012d}", "eth0", f"{i:064x}", "node-0")
            for i in range(held)
        }
        obj = await store.get(KIND, "big")
        obj["status"] = {
            "allocatedIPCount": held,
            "totalIPCount": obj["status"]["totalIPCount"],
            "allocatedIPs": encode_allocated(4, records),
        }
        await store.update_status(obj)
    finally:
        await store.aclose()


async def measure(label: str, allocations: int) -> dict[str, Any]:
    subnet, gateway, ips, held = POOLS[label]
    directory = Path(tempfile.mkdtemp(prefix="spider-scale-", dir="/tmp"))
    try:
        await fill(directory / "store.db", subnet, gateway, ips, held)
        fleet = AgentFleet(directory, 1, StoreSettings(directory / "store.db"))
        await fleet.start()
        try:
            idle = rss_kib(fleet.processes[0].pid)[0]
            client = AgentClient(fleet.socket(0))
            adds, dels = [], []
            for i in range(allocations):
                body = (
                    f'{{"containerID":"c{i:063x}","ifName":"eth0","netNamespace":"/var/run/netns/x",'
                    f'"podNamespace":"default","podName":"bench-{i}","podUID":"u-{i}","defaultIPv4IPPool":["big"]}}'
                )
                start = time.perf_counter()
                status, _, answer = await client.request("POST", "/v1/ipam/ip", body.encode())
                adds.append(time.perf_counter() - start)
                assert status == 200, answer
            for i in range(allocations):
                body = (
                    f'{{"containerID":"c{i:063x}","ifName":"eth0","podNamespace":"default",'
                    f'"podName":"bench-{i}","podUID":"u-{i}"}}'
                )
                start = time.perf_counter()
                status, _, answer = await client.request("DELETE", "/v1/ipam/ip", body.encode())
                dels.append(time.perf_counter() - start)
                assert status == 200, answer
            await client.aclose()
            rss, peak = rss_kib(fleet.processes[0].pid)
            size = sum(p.stat().st_size for p in directory.glob("store.db*"))  # noqa: ASYNC240  (measured after)
        finally:
            await fleet.stop()
        add, rel = stats_ms(adds), stats_ms(dels)
        return {
            "pool": f"{label} ({held:,} held)",
            "ADD p50 ms": add["p50_ms"],
            "ADD p90 ms": add["p90_ms"],
            "DEL p50 ms": rel["p50_ms"],
            "DEL p90 ms": rel["p90_ms"],
            "agent RSS idle MiB": round(idle / 1024, 1),
            "agent RSS MiB": round(rss / 1024, 1),
            "agent peak RSS MiB": round(peak / 1024, 1),
            "store file MiB": round(size / 2**20, 1),
        }
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--allocations", type=int, default=100)
    parser.add_argument("--json", default=None, metavar="FILE")
    args = parser.parse_args(argv)
    result = Result("scale: /16 with 20,000 allocated vs /24", "python -m bench.scale")
    small = result.add(**trio.run(measure, "/24", args.allocations))
    big = result.add(**trio.run(measure, "/16", args.allocations))
    result.finish(
        args.json,
        latency_ratio=round(big["ADD p50 ms"] / small["ADD p50 ms"], 2),
        targets="ADD p50 within 2x of the /24's; agent RSS < 150 MiB",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
