"""A KubeVirt VM's records name its VMI (``pod: ns/<vmi>``), not a launcher pod: every "is the holder alive" check
that looks a Pod up by that name once found none, so a running VM's address counted as unheld.  ``spider ip
release`` freed it without ``--force``, ``spider check --reclaim`` freed it when its endpoint no longer listed it,
and, with static IPs off, a live migration's target freed the source's address as a dead same-name pod's."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from actors.ipam.check import check_store
from actors.ipam.service import IpamService, IpamSettings, PoolRegistry
from actors.runtime.supervisor import Supervisor
from actors.stores.port import Store
from actors.stores.sqlite import SqliteStore
from actors.tools.ip import release_address
from spider.endpoint import KIND as ENDPOINT
from spider.errors import InvalidInput
from spider.ipam_request import AddRequest
from spider.pool import KIND as POOL
from spider.pool import RECLAIM_AFTER, PoolLedger
from spider.workload import KUBEVIRT_API
from tests.support import pool_object


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    made = await SqliteStore.open(tmp_path / "store.db")
    await made.create(pool_object("net-a", "10.50.0.0/24", ["10.50.0.10-10.50.0.19"]))
    try:
        yield made
    finally:
        await made.aclose()


def owned_by(kind: str, name: str) -> dict[str, Any]:
    return {
        "ownerReferences": [
            {"apiVersion": KUBEVIRT_API, "kind": kind, "name": name, "uid": f"uid-{name}", "controller": True}
        ]
    }


async def running_pod(store: Store, name: str, **meta: Any) -> str:
    obj = await store.create({"apiVersion": "v1", "kind": "Pod",
                              "metadata": {"name": name, "namespace": "default", **meta}, "spec": {}})  # fmt: skip
    await store.update_status({**obj, "status": {"phase": "Running"}})
    return str(obj["metadata"]["uid"])


async def running_vm(store: Store, *launchers: str) -> list[str]:
    """VM ``vm1``, its VMI and its launcher pods (their UIDs)."""
    await store.create({"apiVersion": KUBEVIRT_API, "kind": "VirtualMachine",
                        "metadata": {"name": "vm1", "namespace": "default"}})  # fmt: skip
    vmi_meta = {"name": "vm1", "namespace": "default", **owned_by("VirtualMachine", "vm1")}
    await store.create({"apiVersion": KUBEVIRT_API, "kind": "VirtualMachineInstance", "metadata": vmi_meta})
    return [await running_pod(store, name, **owned_by("VirtualMachineInstance", "vm1")) for name in launchers]


async def add(
    store: Store, name: str, uid: str, *, container: str = "ctr-1", static: bool = True,
    clock: Callable[[], float] = time.time,
) -> str:  # fmt: skip
    async with trio.open_nursery() as nursery:
        settings = IpamSettings(enable_kubevirt_static_ip=static)
        ipam = IpamService(store, PoolRegistry(store, Supervisor(nursery)), "node-1", settings, clock=clock)
        (nic,) = await ipam.allocate(AddRequest(container, "eth0", "/x", "default", name, uid, ("net-a",), ()))
        nursery.cancel_scope.cancel(reason="added")
    return nic.allocations[0].ip


async def holders(store: Store) -> set[str]:
    return {r.pod_uid for r in PoolLedger.from_object(await store.get(POOL, "net-a")).records.values()}


async def test_ip_release_refuses_a_running_vms_address_without_force(store: SqliteStore) -> None:
    (uid,) = await running_vm(store, "virt-launcher-vm1-abcde")
    with trio.fail_after(10):
        ip = await add(store, "virt-launcher-vm1-abcde", uid)
        with pytest.raises(InvalidInput, match="held in pool net-a by pod default/vm1"):
            await release_address(store, ip)
    assert await holders(store) == {uid}


@pytest.mark.parametrize("vm", [True, False], ids=["vm", "plain-pod"])
async def test_reclaim_leaves_a_running_holders_record_its_endpoint_lost_alone(store: SqliteStore, vm: bool) -> None:
    name = "virt-launcher-vm1-abcde" if vm else "web"
    (uid,) = await running_vm(store, name) if vm else [await running_pod(store, name)]
    with trio.fail_after(60):
        await add(store, name, uid, clock=lambda: time.time() - RECLAIM_AFTER - 10)
        endpoint = await store.get(ENDPOINT, "vm1" if vm else "web", "default")
        await store.update({**endpoint, "metadata": {**endpoint["metadata"], "finalizers": []}})
        await store.delete(ENDPOINT, "vm1" if vm else "web", "default")  # the endpoint no longer lists it
        report = await check_store(store, reclaim=True, grace=0.1)
    assert report.reclaimed == ()
    assert len(report.held_by_live_pods) == 1


async def test_without_static_ips_a_migration_target_leaves_the_running_sources_address(store: SqliteStore) -> None:
    source, target = await running_vm(store, "virt-launcher-vm1-src", "virt-launcher-vm1-dst")
    with trio.fail_after(10):
        await add(store, "virt-launcher-vm1-src", source, container="ctr-src", static=False)
        await add(store, "virt-launcher-vm1-dst", target, container="ctr-dst", static=False)
    assert await holders(store) == {source, target}  # NB: once only the target's: the source's freed under it
