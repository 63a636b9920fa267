"""``spider.plan``: the decide step of ADD and DEL, from gathered facts to one plan (or the error), pure."""

from __future__ import annotations

import json
from typing import Any

import attrs
from hypothesis import given
from hypothesis import strategies as st

from spider.endpoint import Endpoint, NicAllocation
from spider.errors import InvalidInput, NoAvailablePool, PodNotAlive, PoolNotFound
from spider.ipam_request import AddRequest, DelRequest
from spider.plan import (
    AddFacts,
    ReleaseFacts,
    Sandbox,
    decide_add,
    decide_release,
    sandbox_holdings,
)
from spider.pool import IPPool, Route
from spider.selection import ANNO_IPPOOL, ANNO_IPPOOLS, ANNO_ROUTES, PodContext
from spider.workload import Workload

NODE = "node-1"


def pool(name: str, subnet: str = "10.0.0.0/24", **spec: Any) -> IPPool:
    prefix = subnet.rpartition(".")[0]
    ips = [f"{prefix}.10-{prefix}.20"]
    return IPPool.from_object({"metadata": {"name": name}, "spec": {"subnet": subnet, "ips": ips, **spec}})


POOLS = {
    "a": pool("a", "10.1.0.0/24", gateway="10.1.0.1"),
    "b": pool("b", "10.2.0.0/24"),
    "c": pool("c", "10.3.0.0/24"),
    "v6": IPPool.from_object({"metadata": {"name": "v6"}, "spec": {"subnet": "fd00::/64", "ips": ["fd00::10"]}}),
}


def pod(uid: str = "uid-1", annotations: dict[str, str] | None = None, **meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": "web", "namespace": "ns", "uid": uid, "annotations": annotations or {}, **meta}}


def facts(
    *,
    pod_obj: dict[str, Any] | None = None,
    request_uid: str = "uid-1",
    ifname: str = "eth0",
    v4: tuple[str, ...] = ("a",),
    v6: tuple[str, ...] = (),
    endpoint: Endpoint | None = None,
    workload: Workload | None = None,
    clean_gateway: bool = False,
) -> AddFacts:
    p = pod() if pod_obj is None else pod_obj
    meta = p.get("metadata") or {}
    request = AddRequest("ctr-2", ifname, "/netns", "ns", "web", request_uid, v4, v6, clean_gateway)
    ctx = PodContext("ns", "web", request_uid or meta.get("uid", ""), NODE, annotations=meta.get("annotations") or {})
    return AddFacts(request, NODE, ctx, p, workload or Workload("Pod", "web", endpoint_name="web"), endpoint, POOLS)


def entry(nic: str = "eth0", pool_name: str = "a", ip: str = "10.1.0.10/24", container: str = "ctr-1") -> NicAllocation:
    return NicAllocation(nic, ipv4=ip, ipv4_pool=pool_name, container_id=container)


def endpoint(uid: str = "uid-0", *nics: NicAllocation, kind: str = "Pod") -> Endpoint:
    return Endpoint("ns", "web", uid, NODE, nics or (entry(),), kind, "web")


STS = Workload("StatefulSet", "web", static=True, keeps=True, endpoint_name="web")


# --- ADD --------------------------------------------------------------------------------------------------------


def test_an_add_for_a_terminating_pod_is_refused_before_anything_else() -> None:
    plan = decide_add(facts(pod_obj=pod(deletionTimestamp="2026-01-01T00:00:00Z"), endpoint=endpoint()))
    assert isinstance(plan.error, PodNotAlive)
    assert plan.free_first is None
    assert plan.nics == ()


def test_an_add_with_a_replaced_uid_is_refused() -> None:
    plan = decide_add(facts(pod_obj=pod("uid-new"), request_uid="uid-old"))
    assert isinstance(plan.error, PodNotAlive)
    assert "replaced by uid-new" in str(plan.error)


def test_an_add_with_no_pool_to_choose_from_is_refused() -> None:
    assert isinstance(decide_add(facts(v4=())).error, NoAvailablePool)
    assert isinstance(decide_add(facts(v4=("missing",))).error, PoolNotFound)


def test_a_bad_routes_annotation_is_refused_before_a_dead_pods_endpoint_is_freed() -> None:
    plan = decide_add(facts(pod_obj=pod(annotations={ANNO_ROUTES: "{not json"}), endpoint=endpoint("uid-dead")))
    assert isinstance(plan.error, InvalidInput)
    assert plan.free_first is None


def test_a_fresh_add_tries_the_named_pools_in_order_per_family() -> None:
    plan = decide_add(facts(v4=("b", "a"), v6=("v6",), clean_gateway=True))
    assert plan.error is None
    (nic,) = plan.nics
    assert nic.nic == "eth0"
    assert nic.clean_gateway is True
    assert not nic.recorded
    assert [(f.version, [p.name for p in f.candidates]) for f in nic.families] == [(4, ["b", "a"]), (6, ["v6"])]
    assert plan.owner("eth0").key == ("uid-1", "eth0")
    assert plan.owner("eth0").container_id == "ctr-2"
    assert not plan.endpoint_exists


def test_the_routes_annotation_is_part_of_the_plan() -> None:
    routes = json.dumps([{"dst": "10.9.0.0/16", "gw": "10.1.0.1"}])
    plan = decide_add(facts(pod_obj=pod(annotations={ANNO_ROUTES: routes})))
    assert plan.routes == (Route("10.9.0.0/16", "10.1.0.1"),)


def test_a_dead_same_name_pods_endpoint_is_freed_first_and_allocation_starts_afresh() -> None:
    old = endpoint("uid-dead")
    plan = decide_add(facts(endpoint=old))
    assert plan.free_first == old
    assert plan.adopt_from is None
    assert [n.recorded for n in plan.nics] == [False]
    assert not plan.endpoint_exists


def test_with_no_pod_object_a_fixed_ip_endpoint_of_another_uid_is_kept_and_the_add_refused() -> None:
    """A late ADD of a deleted StatefulSet pod, while the next one is not created yet, looks like any ADD with no
    Pod object: it must not free the addresses the endpoint keeps for that next pod.  A plain pod's endpoint
    of another UID is a dead pod's, freed as with a Pod object."""
    kept = endpoint("uid-next", kind="StatefulSet")
    plan = decide_add(attrs.evolve(facts(endpoint=kept), pod=None))
    assert isinstance(plan.error, PodNotAlive)
    assert "keeps the fixed IPs of StatefulSet 'web' for UID uid-next" in str(plan.error)
    assert plan.free_first is None
    dead = endpoint("uid-dead")
    assert decide_add(attrs.evolve(facts(endpoint=dead), pod=None)).free_first == dead


def test_a_repeated_add_asks_the_recorded_pool_again() -> None:
    plan = decide_add(facts(v4=("b",), endpoint=endpoint("uid-1", entry(pool_name="a"))))
    assert plan.free_first is None
    assert plan.recorded == ("eth0",)
    assert [p.name for p in plan.families[0].candidates] == ["a"]
    assert plan.endpoint_exists


def test_a_repeated_add_whose_recorded_pool_is_gone_is_refused() -> None:
    plan = decide_add(facts(endpoint=endpoint("uid-1", entry(pool_name="gone"))))
    assert isinstance(plan.error, PoolNotFound)


def test_a_second_nic_of_a_multi_nic_pod_leaves_the_recorded_ones_alone() -> None:
    annotations = {
        ANNO_IPPOOLS: json.dumps([{"interface": "eth0", "ipv4": ["a"]}, {"interface": "net1", "ipv4": ["b"]}])
    }
    plan = decide_add(facts(pod_obj=pod(annotations=annotations), ifname="net1", endpoint=endpoint("uid-1", entry())))
    assert [n.nic for n in plan.nics] == ["net1"]


def test_a_fixed_ip_pod_adopts_its_predecessors_entries_still_wanted_and_abandons_the_others() -> None:
    annotations = {
        ANNO_IPPOOLS: json.dumps([{"interface": "eth0", "ipv4": ["a"]}, {"interface": "net1", "ipv4": ["c"]}])
    }
    kept, moved = entry("eth0", "a"), entry("net1", "b", "10.2.0.10/24")
    plan = decide_add(
        facts(pod_obj=pod(annotations=annotations), endpoint=endpoint("uid-0", kept, moved), workload=STS)
    )
    assert plan.adopt == (kept,)
    assert plan.abandon == (moved,)
    assert plan.free_first is None
    assert plan.recorded == ("eth0",)  # the adopted NIC is asked again; net1 is allocated on its own ADD
    assert [p.name for f in plan.families for p in f.candidates] == ["a"]


def test_a_fixed_ip_pod_whose_pool_annotation_changed_adopts_nothing_and_allocates_afresh() -> None:
    annotations = {ANNO_IPPOOL: json.dumps({"ipv4": ["b"]})}
    plan = decide_add(facts(pod_obj=pod(annotations=annotations), endpoint=endpoint("uid-0"), workload=STS))
    assert plan.adopt == ()
    assert len(plan.abandon) == 1
    assert [p.name for f in plan.families for p in f.candidates] == ["b"]
    assert not plan.recorded


@given(
    alive=st.booleans(),
    request_uid=st.sampled_from(["", "uid-1", "uid-2"]),
    v4=st.lists(st.sampled_from(["a", "b", "c", "v6", "missing"]), unique=True, max_size=3),
    ep_uid=st.sampled_from([None, "uid-1", "uid-0"]),
    static=st.booleans(),
    routes=st.sampled_from([None, "[]", "bad"]),
)
def test_a_plan_is_either_an_error_that_does_nothing_or_only_usable_candidates(
    alive: bool, request_uid: str, v4: list[str], ep_uid: str | None, static: bool, routes: str | None
) -> None:
    annotations = {} if routes is None else {ANNO_ROUTES: routes}
    meta: dict[str, Any] = {} if alive else {"deletionTimestamp": "2026-01-01T00:00:00Z"}
    workload = STS if static else None
    ep = None if ep_uid is None else endpoint(ep_uid)
    plan = decide_add(
        facts(
            pod_obj=pod(annotations=annotations, **meta),
            request_uid=request_uid,
            v4=tuple(v4),
            endpoint=ep,
            workload=workload,
        )
    )
    if plan.error is not None:
        assert (plan.free_first, plan.adopt_from, plan.adopt, plan.abandon, plan.nics) == (None, None, (), (), ())
        return
    assert alive
    assert request_uid in ("", "uid-1")
    assert routes != "bad"
    assert plan.nics
    for family in plan.families:
        assert family.candidates
        assert all(p.version == family.version for p in family.candidates)
    assert (plan.free_first is not None) == (ep_uid == "uid-0" and not static)
    assert (plan.adopt_from is not None) == (ep_uid == "uid-0" and static)


# --- DEL --------------------------------------------------------------------------------------------------------


def release(
    *,
    pod_obj: dict[str, Any] | None = None,
    uid: str = "uid-1",
    container: str = "ctr-1",
    ep: Endpoint | None = None,
    workload: Workload | None = None,
    static_keeps: bool = False,
    keep_live: bool = True,
) -> ReleaseFacts:
    return ReleaseFacts(
        DelRequest(container, "eth0", "ns", "web", uid),
        pod_obj,
        workload or Workload("Pod", "web", endpoint_name="web"),
        ep,
        static_keeps,
        keep_live,
    )


def test_a_del_without_uid_takes_the_pods_and_keeps_a_live_pods_addresses() -> None:
    plan = decide_release(release(pod_obj=pod("uid-1"), uid="", ep=endpoint("uid-1")))
    assert plan.free == ()
    assert plan.sweep is None
    assert "alive" in plan.reason


def test_a_del_without_uid_of_a_terminating_pod_frees_its_sandbox() -> None:
    dying = pod("uid-1", deletionTimestamp="2026-01-01T00:00:00Z")
    plan = decide_release(release(pod_obj=dying, uid="", ep=endpoint("uid-1")))
    assert plan.free == (entry(),)
    assert plan.forget == frozenset({("eth0", "ctr-1")})


def test_the_batch_release_frees_a_live_pods_addresses() -> None:
    plan = decide_release(release(pod_obj=pod("uid-1"), ep=endpoint("uid-1"), keep_live=False))
    assert plan.free == (entry(),)


def test_a_del_with_no_endpoint_sweeps_the_pools_for_its_sandbox() -> None:
    plan = decide_release(release(ep=None))
    assert plan.sweep == Sandbox("ns/web", "uid-1", "ctr-1")


def test_a_del_of_an_older_pod_frees_nothing_of_the_newer_ones_endpoint() -> None:
    plan = decide_release(release(uid="uid-old", ep=endpoint("uid-1")))
    assert (plan.free, plan.sweep, plan.drop_endpoint) == ((), None, False)


def test_a_del_frees_only_its_own_sandboxs_entries() -> None:
    mine, newer = entry("eth0", container="ctr-1"), entry("net1", "b", "10.2.0.10/24", container="ctr-9")
    plan = decide_release(release(ep=endpoint("uid-1", mine, newer)))
    assert plan.free == (mine,)
    assert plan.container_id == "ctr-1"


def test_a_fixed_ip_pod_keeps_while_valid_and_is_dropped_whole_when_not() -> None:
    sts_endpoint = endpoint("uid-1", kind="StatefulSet")
    assert decide_release(release(ep=sts_endpoint, workload=STS)).free == ()
    gone = decide_release(release(ep=sts_endpoint, static_keeps=False))
    assert gone.drop_endpoint
    assert gone.container_id == ""
    assert decide_release(release(ep=sts_endpoint, static_keeps=True)).free == ()


@given(
    request_uid=st.sampled_from(["", "uid-1"]),
    ep_uid=st.sampled_from([None, "uid-1", "uid-0"]),
    kind=st.sampled_from(["Pod", "StatefulSet"]),
    static_keeps=st.booleans(),
)
def test_a_del_never_frees_anything_of_a_live_pod(
    request_uid: str, ep_uid: str | None, kind: str, static_keeps: bool
) -> None:
    ep = None if ep_uid is None else endpoint(ep_uid, kind=kind)
    plan = decide_release(release(pod_obj=pod("uid-1"), uid=request_uid, ep=ep, static_keeps=static_keeps))
    assert (plan.free, plan.sweep, plan.drop_endpoint, plan.forget) == ((), None, False, None)


# --- sandbox records --------------------------------------------------------------------------------------------


def stored(allocated: object) -> dict[str, Any]:
    return {
        "metadata": {"name": "a"},
        "spec": {"subnet": "10.1.0.0/24", "ips": ["10.1.0.10-10.1.0.20"]},
        "status": {"allocatedIPs": allocated},
    }


def test_sandbox_holdings_finds_only_the_records_of_that_sandbox() -> None:
    records = {
        "10.1.0.10": {"pod": "ns/web", "podUid": "uid-1", "nic": "eth0", "containerID": "ctr-1"},
        "10.1.0.11": {"pod": "ns/web", "podUid": "uid-1", "nic": "net1", "containerID": "ctr-1"},
        "10.1.0.12": {"pod": "ns/web", "podUid": "uid-1", "nic": "eth0", "containerID": "ctr-2"},
        "10.1.0.13": {"pod": "ns/web", "podUid": "uid-9", "nic": "eth0", "containerID": "ctr-1"},
        "10.1.0.14": {"pod": "ns/other", "podUid": "uid-1", "nic": "eth0", "containerID": "ctr-1"},
    }
    found = sandbox_holdings(stored(json.dumps(records)), Sandbox("ns/web", "uid-1", "ctr-1"))
    assert sorted(found) == [("uid-1", "eth0"), ("uid-1", "net1")]
    any_uid = sandbox_holdings(stored(json.dumps(records)), Sandbox("ns/web", "", "ctr-1"))
    assert sorted(any_uid) == [("uid-1", "eth0"), ("uid-1", "net1"), ("uid-9", "eth0")]


def test_sandbox_holdings_does_not_parse_a_pool_that_does_not_mention_the_container() -> None:
    assert sandbox_holdings(stored("{corrupt but not ours"), Sandbox("ns/web", "uid-1", "ctr-1")) == []
    assert sandbox_holdings(stored(None), Sandbox("ns/web", "uid-1", "ctr-1")) == []
