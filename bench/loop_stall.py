"""How long decoding a big pool stalls the agent's trio loop: a probe task asks for ``trio.sleep(0.001)`` over and
over and records how late it wakes, while another task decodes a 20,000-record SpiderIPPool again and again.

    python -m bench.loop_stall [--records 20000] [--reads 20] [--json FILE]

Each row is one way of doing the work, inline (in the trio thread, as before) or in a worker thread
(``trio.to_thread.run_sync``, as the pool actor now does for a big pool):
- ``json.loads``: the API server's answer (bytes) to a dict, as ``KubeStore`` decodes a GET;
- ``PoolLedger.from_object``: the dict to a ledger (parses ``allocatedIPs``, builds the indexes);
- ``actor cold load``: what the agent does on the first request for a pool (``PoolRegistry`` reads it from the
  embedded store and primes the actor), the whole path, with ``OFF_LOOP_BYTES`` set so that it decodes inline
  (before) or in a worker thread (after).
The stall of a row is the probe's lateness (p99 and max); "work" is the time one read took.  Threads share the
GIL: a decode that never releases it (``json.loads`` is one C call) stalls the loop just as long in a thread.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

import actors.ipam.pool as pool_module
from actors.ipam.pool import PoolRegistry
from actors.runtime.supervisor import Supervisor
from actors.stores.sqlite import SqliteStore
from bench.common import Result, stats_ms
from spider.kinds import SPIDER_API_VERSION
from spider.pool import KIND, Owner, PoolLedger

PROBE = 0.001


def big_pool(records: int) -> dict[str, Any]:
    """A /16 SpiderIPPool holding ``records`` allocations, as an API server would return it."""
    obj: dict[str, Any] = {
        "apiVersion": SPIDER_API_VERSION,
        "kind": KIND,
        "metadata": {"name": "big", "resourceVersion": "1", "uid": "u"},
        "spec": {"subnet": "10.40.0.0/16", "ips": ["10.40.0.1-10.40.255.254"], "gateway": "10.40.0.1"},
    }
    ledger = PoolLedger.from_object(obj)
    for i in range(records):
        ledger.allocate(Owner(f"uid-{i:08d}-aaaa-bbbb-cccc", "eth0", "default", f"pod-{i}", f"{i:064x}", "node-1"))
    obj["status"] = ledger.to_status()
    return obj


async def measure(work: Callable[[], Awaitable[object]], reads: int) -> dict[str, float]:
    """Run ``work`` ``reads`` times while the probe measures the loop's lateness."""
    late: list[float] = []
    took: list[float] = []
    done = trio.Event()

    async def probe() -> None:
        while not done.is_set():
            start = time.perf_counter()
            await trio.sleep(PROBE)
            late.append(max(0.0, time.perf_counter() - start - PROBE))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(probe)
        await trio.sleep(0.05)
        for _ in range(reads):
            start = time.perf_counter()
            await work()
            took.append(time.perf_counter() - start)
            await trio.sleep(0.005)  # NB: the probe's ticks between reads are counted too (they are on time)
        done.set()
    stall = stats_ms(late)
    return {
        "work_p50_ms": stats_ms(took)["p50_ms"],
        "stall_p99_ms": stall["p99_ms"],
        "stall_max_ms": round(max(late) * 1000, 3),
        "probes": len(late),
    }


async def main(records: int, reads: int, json_path: str | None) -> None:
    obj = big_pool(records)
    body = json.dumps(obj).encode()
    result = Result("loop_stall", f"python -m bench.loop_stall --records {records} --reads {reads}")
    rows: list[tuple[str, str, Callable[[], Awaitable[object]]]] = []

    async def loads_inline() -> object:
        return json.loads(body)

    async def loads_thread() -> object:
        return await trio.to_thread.run_sync(json.loads, body)

    async def ledger_inline() -> object:
        return PoolLedger.from_object(obj)

    async def ledger_thread() -> object:
        return await trio.to_thread.run_sync(PoolLedger.from_object, obj)

    rows += [("json.loads", "inline", loads_inline), ("json.loads", "thread", loads_thread)]
    rows += [("PoolLedger.from_object", "inline", ledger_inline), ("PoolLedger.from_object", "thread", ledger_thread)]
    tmp = Path(tempfile.mkdtemp(prefix="loop-stall-"))
    try:
        store = await SqliteStore.open(tmp / "store.db")
        created = await store.create({**obj, "metadata": {"name": "big"}, "status": {}})
        await store.update_status({**created, "status": obj["status"]})
        async with trio.open_nursery() as nursery:
            registry = PoolRegistry(store, Supervisor(nursery), idle_timeout=0.0)  # NB: every read a cold load

            async def cold_load() -> object:
                return await (await registry.get("big")).inspect()

            for where, threshold in (("inline", sys.maxsize), ("thread", pool_module.OFF_LOOP_BYTES)):
                pool_module.OFF_LOOP_BYTES = threshold
                rows.append(("actor cold load", where, cold_load))
                result.add(what="actor cold load", where=where, **await measure(cold_load, reads))
            for what, where, work in rows[:4]:
                result.add(what=what, where=where, **await measure(work, reads))
            nursery.cancel_scope.cancel(reason="bench over")
        await store.aclose()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result.finish(json_path, records=records, reads=reads, body_bytes=len(body))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--reads", type=int, default=20)
    parser.add_argument("--json", default=None, help="also write the result as JSON to this file")
    args = parser.parse_args()
    trio.run(main, args.records, args.reads, args.json)
