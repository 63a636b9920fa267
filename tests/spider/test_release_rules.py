"""Release rules of issue 16, pure: a pod in a terminal phase is not alive whatever its restart policy, a deleted
KubeVirt VM's endpoint goes with any launcher pod's DEL, and a release for CNI GC frees only the interfaces it
names."""

from __future__ import annotations

from typing import Any

import pytest

from spider.endpoint import Endpoint, NicAllocation
from spider.ipam_request import DelRequest
from spider.plan import ReleaseFacts, Sandbox, decide_release
from spider.pool import Record
from spider.workload import Workload, pod_not_alive

VMI = "VirtualMachineInstance"


def pod(
    phase: str = "Running", restart: str | None = None, reason: str = "", uid: str = "uid-1", **meta: Any
) -> dict[str, Any]:
    spec = {} if restart is None else {"restartPolicy": restart}
    status: dict[str, Any] = {"phase": phase, **({"reason": reason} if reason else {})}
    return {"metadata": {"name": "web", "namespace": "ns", "uid": uid, **meta}, "spec": spec, "status": status}


# --- liveness ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("restart", [None, "Always", "OnFailure", "Never"])
@pytest.mark.parametrize(
    ("phase", "reason", "why"),
    [
        ("Succeeded", "", "succeeded"),
        ("Failed", "", "failed"),
        ("Failed", "DeadlineExceeded", "failed"),  # activeDeadlineSeconds
        ("Failed", "Terminated", "failed"),  # graceful node shutdown
        ("Failed", "Evicted", "evicted"),
    ],
)
def test_a_pod_in_a_terminal_phase_is_not_alive_whatever_its_restart_policy(
    restart: str | None, phase: str, reason: str, why: str
) -> None:
    assert pod_not_alive(pod(phase, restart, reason)) == why


@pytest.mark.parametrize("restart", [None, "Always", "OnFailure", "Never"])
@pytest.mark.parametrize("phase", ["", "Pending", "Running", "Unknown"])
def test_a_pod_not_in_a_terminal_phase_is_alive_until_it_is_terminating(restart: str | None, phase: str) -> None:
    assert pod_not_alive(pod(phase, restart)) is None
    assert pod_not_alive(pod(phase, restart, deletionTimestamp="2026-01-01T00:00:00Z")) == "terminating"


# --- DEL --------------------------------------------------------------------------------------------------------


def entry(nic: str = "eth0", ip: str = "10.1.0.10/24", container: str = "ctr-1", network: str = "") -> NicAllocation:
    return NicAllocation(nic, ipv4=ip, ipv4_pool="a", container_id=container, network=network)


def facts(
    pod_obj: dict[str, Any] | None,
    endpoint: Endpoint | None,
    *,
    uid: str = "uid-1",
    container: str = "ctr-1",
    ifname: str = "eth0",
    pod_name: str = "web",
    workload: Workload | None = None,
    interfaces: frozenset[str] | None = None,
) -> ReleaseFacts:
    return ReleaseFacts(
        DelRequest(container, ifname, "ns", pod_name, uid),
        pod_obj,
        workload or Workload("Pod", pod_name, endpoint_name=pod_name),
        endpoint,
        interfaces=interfaces,
    )


@pytest.mark.parametrize("restart", ["Always", "OnFailure", "Never"])
@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_a_del_of_a_finished_pod_frees_its_addresses_at_once(restart: str, phase: str) -> None:
    endpoint = Endpoint("ns", "web", "uid-1", "node-1", (entry(),))
    plan = decide_release(facts(pod(phase, restart), endpoint))
    assert plan.free == (entry(),)
    assert plan.forget == frozenset({("eth0", "ctr-1")})


@pytest.mark.parametrize("uid", ["uid-1", ""])
def test_a_del_of_a_pod_that_is_gone_frees_what_its_sandbox_holds(uid: str) -> None:
    # The terminal phase was not reported when the first DEL came (kept); this DEL comes after the Pod is gone.
    endpoint = Endpoint("ns", "web", "uid-1", "node-1", (entry(),))
    plan = decide_release(facts(None, endpoint, uid=uid))
    assert plan.free == (entry(),)
    assert plan.container_id == "ctr-1"


def launcher_workload(keeps: bool) -> Workload:
    return Workload(VMI, "vm1", static=True, keeps=keeps, endpoint_name="vm1")


def vm_endpoint(uid: str = "uid-target") -> Endpoint:
    return Endpoint("ns", "vm1", uid, "node-2", (entry(container="ctr-target"),), VMI, "vm1")


def test_a_deleted_vms_endpoint_goes_with_any_launcher_pods_del_whatever_uid_it_records() -> None:
    source = pod(uid="uid-source", deletionTimestamp="2026-01-01T00:00:00Z")
    req = facts(
        source, vm_endpoint(), uid="uid-source", pod_name="virt-launcher-vm1-a", workload=launcher_workload(False)
    )
    plan = decide_release(req)
    assert plan.drop_endpoint
    assert plan.free == vm_endpoint().nics
    assert plan.container_id == ""  # the records are the target's sandbox's


def test_a_launcher_pods_del_keeps_another_launchers_addresses_while_the_vm_is_valid() -> None:
    source = pod(uid="uid-source", deletionTimestamp="2026-01-01T00:00:00Z")
    req = facts(
        source, vm_endpoint(), uid="uid-source", pod_name="virt-launcher-vm1-a", workload=launcher_workload(True)
    )
    plan = decide_release(req)
    assert (plan.free, plan.drop_endpoint, plan.forget) == ((), False, None)


def test_an_older_statefulset_pods_del_still_frees_nothing_of_the_newer_ones_endpoint() -> None:
    # Only a VM's launchers are all torn down with it; the newer pod of an ordinal may be an orphan still running.
    endpoint = Endpoint("ns", "web", "uid-new", "node-1", (entry(),), "StatefulSet", "web")
    sts = Workload("StatefulSet", "web", static=True, keeps=False, endpoint_name="web")
    plan = decide_release(facts(pod(uid="uid-new"), endpoint, uid="uid-old", workload=sts))
    assert (plan.free, plan.drop_endpoint) == ((), False)


def test_a_release_for_cni_gc_frees_only_the_interfaces_it_names() -> None:
    eth0, net1 = entry("eth0", network="net-a"), entry("net1", "10.2.0.10/24", network="net-b")
    endpoint = Endpoint("ns", "web", "uid-1", "node-1", (eth0, net1))
    dying = pod(deletionTimestamp="2026-01-01T00:00:00Z")
    plan = decide_release(facts(dying, endpoint, ifname="net1", interfaces=frozenset({"net1"})))
    assert plan.free == (net1,)
    assert plan.forget == frozenset({("net1", "ctr-1")})
    assert decide_release(facts(dying, endpoint, ifname="net1")).free == (eth0, net1)  # a DEL: every NIC


def test_a_release_for_cni_gc_of_a_fixed_ip_endpoint_no_longer_kept_forgets_only_that_interface() -> None:
    eth0, net1 = entry("eth0"), entry("net1", "10.2.0.10/24")
    endpoint = Endpoint("ns", "web", "uid-1", "node-1", (eth0, net1), "StatefulSet", "web")
    plan = decide_release(facts(None, endpoint, ifname="net1", interfaces=frozenset({"net1"})))
    assert (plan.free, plan.drop_endpoint, plan.forget) == ((net1,), False, frozenset({("net1", "ctr-1")}))


def test_a_sandbox_asked_for_some_interfaces_holds_only_their_records() -> None:
    sandbox = Sandbox("ns/web", "uid-1", "ctr-1", frozenset({"net1"}))
    record = Record(pod="ns/web", pod_uid="uid-1", nic="net1", container_id="ctr-1")
    assert sandbox.holds(record)
    assert not sandbox.holds(Record(pod="ns/web", pod_uid="uid-1", nic="eth0", container_id="ctr-1"))
    assert Sandbox("ns/web", "uid-1", "ctr-1").holds(
        Record(pod="ns/web", pod_uid="uid-1", nic="eth0", container_id="ctr-1")
    )
