"""The agent alone, in process (no shim, no HTTP, no other agent): allocations per second for one pool and for
ten pools, with the number of store writes they cost.

    python -m bench.agent_alone

Two layers, each on a fresh embedded store (SQLite WAL in a temporary directory):
- ``pool actor``: ``PoolHandle.allocate`` from concurrent tasks; the group commit alone;
- ``ipam service``: ``IpamService.allocate``, what the agent does for one CNI ADD (pod context reads, pool
  choice, the pool actor, the SpiderEndpoint write).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import trio

from actors.ipam.service import IpamService, PoolRegistry
from actors.runtime.supervisor import Supervisor
from actors.stores.port import Obj, PassThrough, Store
from actors.stores.sqlite import SqliteStore
from actors.stores.validating import ValidatingStore
from actors.tools.manifests import apply
from bench.common import Result
from spider.ipam_request import AddRequest
from spider.pool import Owner


class CountingStore(PassThrough):
    """A ``Store`` that counts the writes passing through it, by method."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.writes: Counter[str] = Counter()

    async def create(self, obj: Obj) -> Obj:
        self.writes[f"create {obj['kind']}"] += 1
        return await self.inner.create(obj)

    async def update(self, obj: Obj) -> Obj:
        self.writes[f"update {obj['kind']}"] += 1
        return await self.inner.update(obj)

    async def update_status(self, obj: Obj) -> Obj:
        self.writes[f"update_status {obj['kind']}"] += 1
        return await self.inner.update_status(obj)

    async def delete(
        self, kind: str, name: str, namespace: str = "", *, resource_version: str = "", grace_seconds: int | None = None
    ) -> None:
        self.writes[f"delete {kind}"] += 1
        await self.inner.delete(kind, name, namespace, resource_version=resource_version, grace_seconds=grace_seconds)


def pool(k: int) -> dict[str, Any]:
    """Pool ``k``: a /20 with 4,093 allocatable addresses."""
    return {
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderIPPool",
        "metadata": {"name": f"bench-{k}"},
        "spec": {
            "subnet": f"10.{100 + k}.0.0/20",
            "gateway": f"10.{100 + k}.0.1",
            "ips": [f"10.{100 + k}.0.2-10.{100 + k}.15.254"],
        },
    }


async def measure(layer: str, pools: int, allocations: int, concurrency: int) -> dict[str, Any]:
    """One fresh store, ``allocations`` ADDs from ``concurrency`` tasks spread over ``pools`` pools."""
    directory = Path(tempfile.mkdtemp(prefix="spider-bench-"))
    try:
        store = CountingStore(ValidatingStore(await SqliteStore.open(directory / "store.db")))
        for k in range(pools):
            await apply(store, pool(k))
        store.writes.clear()
        async with trio.open_nursery() as nursery:
            registry = PoolRegistry(store, Supervisor(nursery))
            ipam = IpamService(store, registry, "node-1")
            handles = [await registry.get(f"bench-{k}") for k in range(pools)]
            limiter = trio.CapacityLimiter(concurrency)

            async def one(i: int) -> None:
                async with limiter:
                    if layer == "pool actor":
                        await handles[i % pools].allocate(
                            Owner(f"uid-{i}", "eth0", "bench", f"p-{i}", f"c-{i}", "node-1")
                        )
                    else:
                        req = AddRequest(
                            f"c-{i}", "eth0", "/var/run/netns/x", "bench", f"p-{i}", f"uid-{i}", (f"bench-{i % pools}",)
                        )
                        await ipam.allocate(req)

            start = time.perf_counter()
            async with trio.open_nursery() as callers:
                for i in range(allocations):
                    callers.start_soon(one, i)
            elapsed = time.perf_counter() - start
            stats = registry.statistics()
            nursery.cancel_scope.cancel(reason="measured")
        await store.aclose()
        batches = sum(s["batches"] for s in stats.values())
        return {
            "layer": layer,
            "pools": pools,
            "concurrency": concurrency,
            "allocations": allocations,
            "seconds": round(elapsed, 3),
            "allocations_per_s": round(allocations / elapsed, 1),
            "pool_writes": sum(s["writes"] for s in stats.values()),
            "mean_batch": round(sum(s["requests"] for s in stats.values()) / batches, 1),
            "other_writes": sum(n for k, n in store.writes.items() if not k.startswith("update_status SpiderIPPool")),
        }
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.agent_alone", description=__doc__.split("\n\n")[0])
    parser.add_argument("--allocations", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3, help="runs per row; the best is kept (least disturbed)")
    parser.add_argument("--json", default=None, metavar="FILE")
    args = parser.parse_args(argv)
    result = Result("agent alone, in process", "python -m bench.agent_alone")
    for layer in ("pool actor", "ipam service"):
        for pools in (1, 10):
            runs = [trio.run(measure, layer, pools, args.allocations, args.concurrency) for _ in range(args.repeat)]
            best = max(runs, key=lambda r: r["allocations_per_s"])
            best["runs_per_s"] = " / ".join(f"{r['allocations_per_s']:,.0f}" for r in runs)
            result.add(**best)
    one = next(r for r in result.doc["rows"] if r["layer"] == "ipam service" and r["pools"] == 1)
    result.finish(args.json, target="ipam service, one pool >= 5,000 allocations/s", measured=one["allocations_per_s"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
