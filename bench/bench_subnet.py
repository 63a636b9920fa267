"""SpiderSubnet at scale, in process: 50 applications of 20 replicas from one subnet, their 1000 pods on 10 nodes.

    python -m bench.bench_subnet                      # 50 x 20 on 10 nodes, 10 concurrent callers
    python -m bench.bench_subnet --apps 5 --replicas 4 --wait-interval 0.1   # a quick look

One fresh embedded store (SQLite WAL in a temporary directory) shared by:
- the controller's leading work: ``ApplicationController`` (one auto pool per Deployment, addresses from the
  subnet through its SubnetActor) and ``PoolReconciler`` (pool status and finalizers);
- ten agents' IPAM services (``IpamService``, one per simulated node, each with its own pool actors, so the
  nodes race for the pools' writes as ten agent processes do), with their auto-pool lookup at Spiderpool's
  wait (``SPIDERPOOL_WAIT_SUBNET_POOL_MAX_RETRIES`` 25 x ``..._TIME_IN_SECOND`` 2 s unless given).
Phases, timed: ``create`` (the Deployments and their ReplicaSets written, every pod's ADD started at once, as a
rollout does: each waits for its application's pool, then allocates; ends when every pod has its address),
``release`` (every pod's DEL), ``reclaim`` (the Deployments deleted; ends when every pool is gone and the
subnet has handed out nothing).  Checks: every pod got one address, no address twice, each from its own
application's pool; the subnet handed out exactly replicas x applications while they ran, and nothing after.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from actors.controller.applications import ApplicationController
from actors.controller.reconciler import PoolReconciler
from actors.ipam.autopools import AutoPoolSettings
from actors.ipam.pool import PoolRegistry
from actors.ipam.service import IpamService, IpamSettings
from actors.ipam.subnet import SubnetRegistry
from actors.runtime.supervisor import Supervisor
from actors.stores.port import Obj, Store
from actors.stores.sqlite import SqliteStore
from actors.stores.validating import ValidatingStore
from actors.tools.manifests import apply
from bench.common import Result, stats_ms
from spider.autopool import ANNO_SUBNET, is_auto_pool
from spider.ipam_request import AddRequest, DelRequest

SUBNET = "bench-subnet"
NAMESPACE = "default"


def subnet() -> Obj:
    """A /20 with 4,000 addresses: room for every pool, so only the scenario's own limits show."""
    return {
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderSubnet",
        "metadata": {"name": SUBNET},
        "spec": {"subnet": "10.240.0.0/20", "ips": ["10.240.0.10-10.240.15.169"], "gateway": "10.240.0.1"},
    }


def deployment(name: str, replicas: int) -> Obj:
    """A Deployment whose pods' template asks for a pool from the subnet."""
    annotations = {ANNO_SUBNET: json.dumps({"ipv4": [SUBNET]})}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"replicas": replicas, "template": {"metadata": {"annotations": annotations}}},
    }


def owned(api_version: str, kind: str, obj: Obj) -> list[dict[str, Any]]:
    meta = obj["metadata"]
    return [{"apiVersion": api_version, "kind": kind, "name": meta["name"], "uid": meta["uid"], "controller": True}]


async def make_app(store: Store, a: int, replicas: int) -> list[Obj]:
    """Application ``a``: its Deployment, ReplicaSet and pods (stored), as a rollout makes them."""
    deploy = await store.create(deployment(f"app-{a}", replicas))
    rs = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": f"app-{a}-6f7c9",
            "namespace": NAMESPACE,
            "ownerReferences": owned("apps/v1", "Deployment", deploy),
        },
        "spec": {"replicas": replicas},
    }
    replica_set = await store.create(rs)
    pods = []
    for i in range(replicas):
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"app-{a}-{i}",
                "namespace": NAMESPACE,
                "annotations": deploy["spec"]["template"]["metadata"]["annotations"],
                "ownerReferences": owned("apps/v1", "ReplicaSet", replica_set),
            },
            "spec": {},
        }
        pods.append(await store.create(pod))
    return pods


async def pools_and_handed(store: Store) -> tuple[int, int]:
    """Auto pools existing (not terminating), and addresses the subnet has handed out."""
    pools = [p for p in (await store.list("SpiderIPPool")).items if is_auto_pool(p)]
    live = [p for p in pools if not p["metadata"].get("deletionTimestamp")]
    status = (await store.get("SpiderSubnet", SUBNET)).get("status") or {}
    return len(live), int(status.get("allocatedIPCount", 0))


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    """One run of the scenario on a fresh store; the numbers and the checks."""
    directory = Path(tempfile.mkdtemp(prefix="spider-bench-subnet-"))
    try:
        store = ValidatingStore(await SqliteStore.open(directory / "store.db"))
        await apply(store, subnet())
        auto = AutoPoolSettings(wait_retries=args.wait_retries, wait_interval=args.wait_interval)
        async with trio.open_nursery() as nursery:
            supervisor = Supervisor(nursery)
            await nursery.start(PoolReconciler(store).run)
            await nursery.start(ApplicationController(store, SubnetRegistry(store, supervisor)).run)
            agents = [
                IpamService(store, PoolRegistry(store, supervisor), f"node-{n}", IpamSettings(auto_pools=auto))
                for n in range(args.nodes)
            ]
            limiter = trio.CapacityLimiter(args.callers)
            latencies: dict[str, list[float]] = {"add": [], "del": []}
            got: dict[str, tuple[str, str]] = {}
            failures: list[str] = []

            async def add(pod: Obj, node: int) -> None:
                meta = pod["metadata"]
                req = AddRequest(f"c-{meta['uid']}", "eth0", "/x", NAMESPACE, meta["name"], meta["uid"])
                async with limiter:
                    start = time.perf_counter()
                    try:
                        (result,) = await agents[node].allocate(req)
                    except Exception as exc:  # NB: counted and reported, not fatal: the checks say what failed
                        failures.append(f"{meta['name']}: {exc}")
                        return
                    latencies["add"].append(time.perf_counter() - start)
                (allocation,) = result.allocations
                got[meta["name"]] = (allocation.pool, allocation.ip)

            async def release(pod: Obj, node: int) -> None:
                meta = pod["metadata"]
                req = DelRequest(f"c-{meta['uid']}", "eth0", NAMESPACE, meta["name"], meta["uid"])
                await store.delete("Pod", meta["name"], NAMESPACE)
                async with limiter:
                    start = time.perf_counter()
                    await agents[node].release(req)
                    latencies["del"].append(time.perf_counter() - start)

            phases: dict[str, float] = {}
            start = time.perf_counter()
            pods: list[tuple[Obj, int]] = []
            async with trio.open_nursery() as callers:
                for a in range(args.apps):
                    for i, pod in enumerate(await make_app(store, a, args.replicas)):
                        node = (a * args.replicas + i) % args.nodes
                        pods.append((pod, node))
                        callers.start_soon(add, pod, node)
            phases["create"] = time.perf_counter() - start
            live_pools, handed_while_running = await pools_and_handed(store)

            start = time.perf_counter()
            async with trio.open_nursery() as callers:
                for pod, node in pods:
                    callers.start_soon(release, pod, node)
            phases["release"] = time.perf_counter() - start

            start = time.perf_counter()
            for a in range(args.apps):
                await store.delete("ReplicaSet", f"app-{a}-6f7c9", NAMESPACE)
                await store.delete("Deployment", f"app-{a}", NAMESPACE)
            with trio.move_on_after(args.reclaim_timeout):
                while True:  # NB: the controller works from its informers; we look at the store as a user would
                    if await pools_and_handed(store) == (0, 0):
                        break
                    await trio.sleep(0.05)
            phases["reclaim"] = time.perf_counter() - start
            left_pools, handed_after = await pools_and_handed(store)
            nursery.cancel_scope.cancel(reason="measured")
        await store.aclose()
        total = args.apps * args.replicas
        addresses = [ip for _, ip in got.values()]
        own_pool = all(pool.startswith(f"auto4-{name.rsplit('-', 1)[0]}-") for name, (pool, _) in got.items())
        checks = {
            "every pod got an address": len(got) == total and not failures,
            "no address twice": len(set(addresses)) == len(addresses),
            "each from its own application's pool": own_pool,
            "one pool per application": live_pools == args.apps,
            "the subnet handed out replicas x apps": handed_while_running == total,
            "every pool reclaimed, subnet whole": (left_pools, handed_after) == (0, 0),
        }
        return {
            "phases": {k: round(v, 3) for k, v in phases.items()},
            "add": stats_ms(latencies["add"]) if latencies["add"] else {},
            "del": stats_ms(latencies["del"]) if latencies["del"] else {},
            "checks": checks,
            "failures": failures[:5],
        }
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_subnet", description=__doc__.split("\n\n")[0])
    parser.add_argument("--apps", type=int, default=50)
    parser.add_argument("--replicas", type=int, default=20)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--callers", type=int, default=10, help="concurrent CNI calls over all nodes")
    parser.add_argument("--wait-retries", type=int, default=25, help="SPIDERPOOL_WAIT_SUBNET_POOL_MAX_RETRIES")
    parser.add_argument("--wait-interval", type=float, default=2.0, help="SPIDERPOOL_WAIT_SUBNET_POOL_TIME_IN_SECOND")
    parser.add_argument("--reclaim-timeout", type=float, default=120.0)
    parser.add_argument("--json", default=None, metavar="FILE")
    args = parser.parse_args(argv)
    command = "python -m bench.bench_subnet " + " ".join(argv if argv is not None else sys.argv[1:])
    result = Result("SpiderSubnet: applications' auto pools, in process", command.strip())
    run = trio.run(measure, args)
    pods = args.apps * args.replicas
    for phase, seconds in run["phases"].items():
        latency = run.get({"create": "add", "release": "del"}.get(phase, ""), {})
        result.add(
            phase=phase,
            pods=pods,
            seconds=seconds,
            per_s=round(pods / seconds, 1) if seconds else None,
            p50_ms=latency.get("p50_ms"),
            p99_ms=latency.get("p99_ms"),
        )
    for name, ok in run["checks"].items():
        result.add(phase=f"check: {name}", pods=pods, ok="yes" if ok else "NO")
    result.finish(args.json, failures=run["failures"], all_checks_passed=all(run["checks"].values()))
    return 0 if all(run["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
