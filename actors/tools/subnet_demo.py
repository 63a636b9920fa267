"""The SpiderSubnet scene of ``spider demo``: an application whose pool appears, scales and disappears.

Owns one scripted scenario on a throw-away embedded store, with the product's own parts in this process: the
controller's leading work on applications (``actors.controller.applications``) and on pool status and
finalizers (``actors.controller.reconciler``), and the agent's IPAM service (``actors.ipam.service``, with
its auto-pool lookup).  A SpiderSubnet and a Deployment annotated with it: the controller makes the
Deployment's pool (replicas + 1 addresses, the subnet's lowest), two pods get their addresses from it, the
Deployment scales up (the pool grows, old addresses kept) and down (only unallocated addresses go back), the
pods go and the Deployment is deleted (the pool goes, and the subnet has every address free again).  Each step
prints the pool; ``run_subnet_demo`` answers 0 when every step saw what it should, 1 otherwise (and says which).
No root, no network namespaces, nothing outside the temporary directory.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
from rich.console import Console
from rich.table import Table

from actors.controller.applications import ApplicationController
from actors.controller.reconciler import PoolReconciler
from actors.ipam.pool import PoolRegistry
from actors.ipam.service import IpamService
from actors.ipam.subnet import SubnetRegistry
from actors.runtime.supervisor import Supervisor
from actors.stores.port import NotFound, Obj, Store
from actors.stores.sqlite import SqliteStore
from actors.stores.validating import ValidatingStore
from actors.tools.manifests import apply
from spider.autopool import ANNO_IP_NUMBER, ANNO_SUBNET, is_auto_pool
from spider.ipam_request import AddRequest, DelRequest
from spider.pool import IPPool

SUBNET = "demo-subnet"
NAMESPACE = "default"
APP = "shop"
STEP_TIMEOUT = 10.0
"""Seconds one step may take to show what it should before the demo says it did not."""


def _subnet() -> Obj:
    return {
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderSubnet",
        "metadata": {"name": SUBNET},
        "spec": {"subnet": "10.220.0.0/24", "ips": ["10.220.0.10-10.220.0.99"], "gateway": "10.220.0.1"},
    }


def _deployment(replicas: int) -> Obj:
    annotations = {ANNO_SUBNET: json.dumps({"ipv4": [SUBNET]}), ANNO_IP_NUMBER: "+1"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": APP, "namespace": NAMESPACE},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": APP}},
            "template": {"metadata": {"labels": {"app": APP}, "annotations": annotations}},
        },
    }


async def _auto_pool(store: Store) -> IPPool | None:
    for obj in (await store.list("SpiderIPPool")).items:
        if is_auto_pool(obj) and not (obj.get("metadata") or {}).get("deletionTimestamp"):
            return IPPool.from_object(obj)
    return None


async def _until(what: str, check: Callable[[], Awaitable[Any]]) -> Any:
    """Poll ``check`` until it answers something true; ``TimeoutError`` naming ``what`` after STEP_TIMEOUT."""
    with trio.move_on_after(STEP_TIMEOUT):
        while True:
            if result := await check():
                return result
            await trio.sleep(0.05)
    raise TimeoutError(what)


def _size_is(store: Store, size: int) -> Callable[[], Awaitable[IPPool | None]]:
    async def check() -> IPPool | None:
        pool = await _auto_pool(store)
        return pool if pool is not None and pool.total.count == size else None

    return check


async def _show(out: Console, store: Store, title: str) -> None:
    table = Table(title=title, title_justify="left")
    for column in ("pool", "addresses", "allocated", "subnet handed out"):
        table.add_column(column, overflow="fold")
    subnet_status = (await store.get("SpiderSubnet", SUBNET)).get("status") or {}
    handed = f"{subnet_status.get('allocatedIPCount', 0)} of {subnet_status.get('totalIPCount', '?')}"
    pool = await _auto_pool(store)
    if pool is None:
        table.add_row("(none)", "", "", handed)
    else:
        status = (await store.get("SpiderIPPool", pool.name)).get("status") or {}
        table.add_row(pool.name, ", ".join(pool.total.to_strings()), str(status.get("allocatedIPCount", 0)), handed)
    out.print(table)


async def _scale(store: Store, replicas: int) -> None:
    await apply(store, _deployment(replicas))


async def _pod(store: Store, index: int, replica_set: Obj) -> Obj:
    meta = replica_set["metadata"]
    owner = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
    }
    annotations = {ANNO_SUBNET: json.dumps({"ipv4": [SUBNET]}), ANNO_IP_NUMBER: "+1"}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{APP}-{index}",
            "namespace": NAMESPACE,
            "labels": {"app": APP},
            "annotations": annotations,
            "ownerReferences": [owner],
        },
        "spec": {"nodeName": "demo-node"},
    }
    created: Obj = await store.create(pod)
    return created


async def _scenario(out: Console, store: Store, ipam: IpamService) -> None:
    await apply(store, _subnet())
    await apply(store, _deployment(2))
    deploy = await store.get("Deployment", APP, NAMESPACE)
    rs = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": f"{APP}-5d8f7",
            "namespace": NAMESPACE,
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": APP,
                    "uid": deploy["metadata"]["uid"],
                    "controller": True,
                }
            ],
        },
        "spec": {"replicas": 2},
    }
    replica_set = await store.create(rs)
    await _until("the Deployment's pool to appear with 3 addresses", _size_is(store, 3))
    await _show(out, store, "1. Deployment shop (2 replicas, ippool-ip-number +1): its pool appears")

    pods = [await _pod(store, i, replica_set) for i in (1, 2)]
    for pod in pods:
        meta = pod["metadata"]
        request = AddRequest(f"demo-{meta['uid']}", "eth0", "/var/run/netns/demo", NAMESPACE, meta["name"], meta["uid"])
        (result,) = await ipam.allocate(request)
        addresses = ", ".join(f"{a.address} (pool {a.pool})" for a in result.allocations)
        out.print(f"   pod {meta['name']} got {addresses}")
    await _show(out, store, "2. two pods got their addresses from it")

    await _scale(store, 4)
    await _until("the pool to grow to 5 addresses", _size_is(store, 5))
    await _show(out, store, "3. scaled to 4 replicas: the pool grows, its addresses kept")

    await _scale(store, 1)
    await _until("the pool to shrink to 2 addresses", _size_is(store, 2))
    await _show(out, store, "4. scaled to 1 replica: only unallocated addresses go back")

    for pod in pods:
        meta = pod["metadata"]
        await store.delete("Pod", meta["name"], NAMESPACE)
        await ipam.release(DelRequest(f"demo-{meta['uid']}", "eth0", NAMESPACE, meta["name"], meta["uid"]))
    await store.delete("ReplicaSet", replica_set["metadata"]["name"], NAMESPACE)
    await store.delete("Deployment", APP, NAMESPACE)

    async def gone() -> bool:
        subnet_status = (await store.get("SpiderSubnet", SUBNET)).get("status") or {}
        return await _auto_pool(store) is None and not subnet_status.get("controlledIPPools")

    await _until("the pool to go with its Deployment", gone)
    await _show(out, store, "5. pods and Deployment deleted: the pool goes, the subnet is whole again")


async def run_subnet_demo(out: Console, directory: Path | None = None) -> int:
    """Run the scenario on a fresh embedded store (in ``directory``, else a temporary one); 0 if every step
    showed what it should."""
    with tempfile.TemporaryDirectory(prefix="spider-subnet-demo-") as scratch:
        where = Path(directory or scratch) / "store.db"
        store = ValidatingStore(await SqliteStore.open(where))
        try:
            async with trio.open_nursery() as nursery:
                supervisor = Supervisor(nursery)
                await nursery.start(PoolReconciler(store).run)
                await nursery.start(ApplicationController(store, SubnetRegistry(store, supervisor)).run)
                ipam = IpamService(store, PoolRegistry(store, supervisor), "demo-node")
                try:
                    await _scenario(out, store, ipam)
                    code = 0
                except TimeoutError as exc:
                    out.print(f"[red]the demo waited {STEP_TIMEOUT:g} s for {exc} and gave up[/red]")
                    code = 1
                except NotFound as exc:
                    out.print(f"[red]the demo lost an object it needed: {exc}[/red]")
                    code = 1
                nursery.cancel_scope.cancel(reason="subnet demo done")
        finally:
            with trio.CancelScope(shield=True):
                await store.aclose()
    return code


def main() -> int:
    """``python -m actors.tools.subnet_demo``: the scene alone."""
    return trio.run(run_subnet_demo, Console())


if __name__ == "__main__":
    raise SystemExit(main())
