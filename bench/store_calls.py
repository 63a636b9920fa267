"""What one Kubernetes store call costs the caller: client CPU and wall time per ``KubeStore`` request, against the
fake API server of ``tests/fakeapi`` in another process (latency model off, so the wall time is the two
processes' work and the loopback).

    python -m bench.store_calls [--requests 3000] [--json FILE]

Rows, each ``--requests`` sequential calls after 100 unmeasured ones: ``get`` of a pool that does not exist
(the 404 every ADD's Pod read gets in the load test), ``get`` and ``get_metadata`` of a pool holding 1,000
records (the whole object against its version alone: an ADD's last look), and ``create`` of a SpiderEndpoint.
CPU is this process's (both its threads: trio's and the asyncio loop's), from ``getrusage``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from actors.stores.kube import KubeStore
from actors.stores.port import NotFound
from bench.common import Result, fake_api_server
from spider.kinds import SPIDER_API_VERSION

WARM_UP = 100
RECORDS = 1000


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def big_pool() -> dict[str, Any]:
    """A pool whose status holds ``RECORDS`` records of the size the load test writes (~220 bytes each)."""
    records = {
        f"10.7.{i // 250}.{i % 250 + 1}": {
            "interface": "eth0",
            "pod": f"loadtest/pod-{i}",
            "podUid": f"5f0e6c1a-7d0b-4c5e-9a43-{i:012d}",
            "node": f"node-{i % 10}",
            "containerID": f"{i:064x}",
            "addedAt": 1765000000.0 + i,
        }
        for i in range(RECORDS)
    }
    return {
        "apiVersion": SPIDER_API_VERSION,
        "kind": "SpiderIPPool",
        "metadata": {"name": "big"},
        "spec": {"subnet": "10.7.0.0/16", "ips": ["10.7.0.1-10.7.15.254"]},
        "status": {"allocatedIPs": json.dumps(records, separators=(",", ":")), "allocatedIPCount": RECORDS},
    }


async def measure(call: Callable[[int], Awaitable[object]], requests: int) -> dict[str, float]:
    for i in range(WARM_UP):
        await call(-1 - i)
    cpu, wall = _cpu(), time.perf_counter()
    for i in range(requests):
        await call(i)
    cpu, wall = _cpu() - cpu, time.perf_counter() - wall
    return {"cpu_ms": round(1000 * cpu / requests, 3), "wall_ms": round(1000 * wall / requests, 3)}


async def run(kubeconfig: Path, requests: int, result: Result) -> None:
    store = await KubeStore.open(kubeconfig)
    try:
        created = await store.create(big_pool())
        await store.update_status({**big_pool(), "metadata": created["metadata"]})

        async def missing(_: int) -> None:
            with contextlib.suppress(NotFound):
                await store.get("SpiderIPPool", "nope")

        async def endpoint(i: int) -> None:
            body = {"apiVersion": SPIDER_API_VERSION, "kind": "SpiderEndpoint"}
            await store.create({**body, "metadata": {"name": f"ep-{i + WARM_UP}", "namespace": "default"}})

        calls: dict[str, Callable[[int], Awaitable[object]]] = {
            "get (404)": missing,
            f"get, pool of {RECORDS} records": lambda _: store.get("SpiderIPPool", "big"),
            f"get_metadata, pool of {RECORDS} records": lambda _: store.get_metadata("SpiderIPPool", "big"),
            "create SpiderEndpoint": endpoint,
        }
        if not hasattr(store, "get_metadata"):  # NB: an older tree, measured side by side: no such row
            calls = {name: call for name, call in calls.items() if not name.startswith("get_metadata")}
        for name, call in calls.items():
            result.add(call=name, requests=requests, **await measure(call, requests))
    finally:
        await store.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.store_calls", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--json", default=None, metavar="FILE")
    args = parser.parse_args(argv)
    result = Result("Kubernetes store calls", "python -m bench.store_calls")
    with (
        tempfile.TemporaryDirectory(prefix="spider-store-calls-") as directory,
        fake_api_server(Path(directory), "off") as (kubeconfig, _served),
    ):
        trio.run(run, kubeconfig, args.requests, result)
    result.finish(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
