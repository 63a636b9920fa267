"""Release rules of issue 16 through the IPAM service and the plugin, on the embedded store: a finished pod's
addresses are freed at once, and by a DEL after the Pod is gone; a failed KubeVirt live migration leaks
nothing once the VM is deleted; CNI GC of one network frees only that network's attachments."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from actors.ipam.check import check_store
from actors.ipam.plugin import Plugin
from actors.ipam.service import IpamService, IpamSettings, PoolRegistry
from actors.runtime.supervisor import Supervisor
from actors.stores.port import NotFound, Store
from actors.stores.sqlite import SqliteStore
from spider.endpoint import KIND as ENDPOINT
from spider.endpoint import Endpoint
from spider.ipam_request import AddRequest, DelRequest
from spider.pool import KIND as POOL
from spider.pool import PoolLedger, Record
from tests.ipam.conftest import TIMEOUT
from tests.support import cni_env, netconf, pod_args, pool_object

NET_A = pool_object("net-a", "10.50.0.0/24", ["10.50.0.10-10.50.0.19"])
NET_B = pool_object("net-b", "10.60.0.0/24", ["10.60.0.10-10.60.0.19"])


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """An embedded store with two pools, ``net-a`` and ``net-b``."""
    s = await SqliteStore.open(tmp_path / "store.db")
    await s.create(NET_A)
    await s.create(NET_B)
    try:
        yield s
    finally:
        await s.aclose()


def service(nursery: trio.Nursery, store: Store) -> IpamService:
    return IpamService(store, PoolRegistry(store, Supervisor(nursery)), "node-1", IpamSettings())


async def records(store: Store, pool: str) -> list[Record]:
    return list(PoolLedger.from_object(await store.get(POOL, pool)).records.values())


async def endpoint(store: Store, name: str) -> Endpoint | None:
    try:
        return Endpoint.from_object(await store.get(ENDPOINT, name, "default"))
    except NotFound:
        return None


async def make_pod(store: Store, name: str, *, restart: str = "Always", finalizer: bool = True, **meta: Any) -> str:
    """Create a running pod; with ``finalizer`` a delete leaves it terminating.  Returns its UID."""
    metadata = {"name": name, "namespace": "default", **meta}
    if finalizer:
        metadata["finalizers"] = ["test/kubelet"]
    obj = await store.create(
        {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": {"restartPolicy": restart}}
    )
    await set_phase(store, name, "Running")
    return str(obj["metadata"]["uid"])


async def set_phase(store: Store, name: str, phase: str, reason: str = "") -> None:
    """The kubelet reports the pod's phase."""
    obj = await store.get("Pod", name, "default")
    obj["status"] = {"phase": phase, **({"reason": reason} if reason else {})}
    await store.update_status(obj)


def add(name: str, uid: str, container: str = "ctr-1", ifname: str = "eth0", pool: str = "net-a") -> AddRequest:
    return AddRequest(container, ifname, "/var/run/netns/x", "default", name, uid, (pool,), ())


# --- a finished pod ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("restart", "reason"),
    [
        ("OnFailure", "DeadlineExceeded"),  # a Job pod failed by activeDeadlineSeconds
        ("Always", "Terminated"),  # a pod failed by a graceful node shutdown
        ("Always", ""),
    ],
)
async def test_a_del_of_a_failed_pod_frees_its_address_whatever_its_restart_policy(
    store: SqliteStore, restart: str, reason: str
) -> None:
    uid = await make_pod(store, "job", restart=restart)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            ipam = service(nursery, store)
            await ipam.allocate(add("job", uid))
            await set_phase(store, "job", "Failed", reason)
            freed = await ipam.release(DelRequest("ctr-1", "eth0", "default", "job", uid))
            nursery.cancel_scope.cancel(reason="test over")
    assert freed == ["10.50.0.10/24"]
    assert await records(store, "net-a") == []
    assert await endpoint(store, "job") is None


async def test_a_del_of_a_succeeded_pod_with_restart_policy_always_frees_its_address(store: SqliteStore) -> None:
    uid = await make_pod(store, "done", restart="Always")
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            ipam = service(nursery, store)
            await ipam.allocate(add("done", uid))
            await set_phase(store, "done", "Succeeded")
            assert await ipam.release(DelRequest("ctr-1", "eth0", "default", "done", uid)) == ["10.50.0.10/24"]
            nursery.cancel_scope.cancel(reason="test over")


@pytest.mark.parametrize("del_uid", [True, False], ids=["with-uid", "without-uid"])
async def test_a_del_after_the_pod_is_gone_frees_what_an_early_del_kept(store: SqliteStore, del_uid: bool) -> None:
    # The first DEL came before the kubelet reported the terminal phase: the pod looked alive, it kept.
    uid = await make_pod(store, "job", restart="OnFailure", finalizer=False)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            ipam = service(nursery, store)
            await ipam.allocate(add("job", uid))
            assert await ipam.release(DelRequest("ctr-1", "eth0", "default", "job", uid)) == []
            await store.delete("Pod", "job", "default")  # gone (NotFound)
            retried = await ipam.release(DelRequest("ctr-1", "eth0", "default", "job", uid if del_uid else ""))
            nursery.cancel_scope.cancel(reason="test over")
    assert retried == ["10.50.0.10/24"]
    assert await records(store, "net-a") == []
    assert await endpoint(store, "job") is None


async def test_cni_gc_after_the_pod_is_gone_frees_what_an_early_del_kept(store: SqliteStore) -> None:
    uid = await make_pod(store, "job", restart="OnFailure", finalizer=False)
    conf = netconf("/unused", "1.1.0", default_ipv4_ippool=["net-a"])
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            plugin = Plugin(service(nursery, store))
            env = pod_args("job", uid)
            assert (await plugin.handle(cni_env("ADD", "ctr-1", "eth0", env), json.dumps(conf).encode())).exit_code == 0
            assert (await plugin.handle(cni_env("DEL", "ctr-1", "eth0", env), json.dumps(conf).encode())).exit_code == 0
            assert len(await records(store, "net-a")) == 1  # the pod still looked alive
            await store.delete("Pod", "job", "default")
            gc = {**conf, "cni.dev/valid-attachments": []}
            assert (await plugin.handle(cni_env("GC"), json.dumps(gc).encode())).exit_code == 0
            nursery.cancel_scope.cancel(reason="test over")
    assert await records(store, "net-a") == []
    assert await endpoint(store, "job") is None


# --- a failed KubeVirt live migration ---------------------------------------------------------------------------


def owned_by(api_version: str, kind: str, name: str) -> dict[str, Any]:
    return {
        "ownerReferences": [
            {"apiVersion": api_version, "kind": kind, "name": name, "uid": f"uid-{name}", "controller": True}
        ]
    }


async def test_a_failed_live_migration_leaks_nothing_once_the_vm_is_deleted(store: SqliteStore) -> None:
    await store.create(
        {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": "vm1", "namespace": "default"}}
    )
    vmi_meta = {"name": "vm1", "namespace": "default", **owned_by("kubevirt.io/v1", "VirtualMachine", "vm1")}
    await store.create({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance", "metadata": vmi_meta})
    launcher = owned_by("kubevirt.io/v1", "VirtualMachineInstance", "vm1")
    source = await make_pod(store, "virt-launcher-vm1-src", **launcher)
    target = await make_pod(store, "virt-launcher-vm1-dst", **launcher)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            ipam = service(nursery, store)
            first = await ipam.allocate(add("virt-launcher-vm1-src", source, "ctr-src"))
            moved = await ipam.allocate(add("virt-launcher-vm1-dst", target, "ctr-dst"))  # adopts the address
            assert [a.address for a in moved[0].allocations] == [a.address for a in first[0].allocations]
            adopted = await endpoint(store, "vm1")
            assert adopted is not None
            assert adopted.uid == target

            await set_phase(store, "virt-launcher-vm1-dst", "Failed")  # the migration failed
            assert await ipam.release(DelRequest("ctr-dst", "eth0", "default", "virt-launcher-vm1-dst", target)) == []
            assert len(await records(store, "net-a")) == 1  # the VMI is valid: kept for the VM

            await store.delete("VirtualMachineInstance", "vm1", "default")
            await store.delete("VirtualMachine", "vm1", "default")
            await store.delete("Pod", "virt-launcher-vm1-src", "default")  # terminating: the kubelet tears down
            freed = await ipam.release(DelRequest("ctr-src", "eth0", "default", "virt-launcher-vm1-src", source))
            nursery.cancel_scope.cancel(reason="test over")
    assert freed == ["10.50.0.10/24"]
    assert await records(store, "net-a") == []
    assert await endpoint(store, "vm1") is None
    report = await check_store(store)
    assert report.consistent, report.findings


# --- CNI GC of one network --------------------------------------------------------------------------------------


async def test_cni_gc_of_one_network_keeps_the_sandboxs_attachment_on_another(store: SqliteStore) -> None:
    uid = await make_pod(store, "web")
    conf_a = netconf("/unused", "1.1.0", default_ipv4_ippool=["net-a"]) | {"name": "net-a"}
    conf_b = netconf("/unused", "1.1.0", default_ipv4_ippool=["net-b"]) | {"name": "net-b"}
    env = pod_args("web", uid)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            plugin = Plugin(service(nursery, store))
            for ifname, conf in (("eth0", conf_a), ("net1", conf_b)):
                added = await plugin.handle(cni_env("ADD", "ctr-1", ifname, env), json.dumps(conf).encode())
                assert added.exit_code == 0, added.stdout
            await store.delete("Pod", "web", "default")  # terminating: no longer alive
            gc = conf_b | {"cni.dev/valid-attachments": [{"containerID": "ctr-1", "ifname": "eth0"}]}
            assert (await plugin.handle(cni_env("GC"), json.dumps(gc).encode())).exit_code == 0
            nursery.cancel_scope.cancel(reason="test over")
    assert await records(store, "net-b") == []
    assert [(r.pod_uid, r.nic) for r in await records(store, "net-a")] == [(uid, "eth0")]
    left = await endpoint(store, "web")
    assert left is not None
    assert [n.interface for n in left.nics] == ["eth0"]
    report = await check_store(store)
    assert report.consistent, report.findings
