"""``spider.pool``: parsing SpiderIPPools, choosing addresses, guarding releases, and the status encoding."""

from __future__ import annotations

import contextlib
import copy
import json
import re
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from spider.addr import IPSet, ip_to_int
from spider.errors import InvalidSpec, PoolExhausted
from spider.pool import ADD_WINDOW, RECLAIM_AFTER, IPPool, Owner, PoolLedger, Record, ReservedIP, Route, reserved_set
from tests.spider.strategies import allocatable_model, owners, pool_objects


def pool_obj(name: str = "blue", status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    """A stored SpiderIPPool with ``spec`` as given (keyword names are Spiderpool's field names)."""
    return {
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderIPPool",
        "metadata": {"name": name},
        "spec": spec,
        "status": status or {},
    }


def ledger(reserved: list[str] | None = None, **spec: Any) -> PoolLedger:
    pool = IPPool.from_object(pool_obj(**spec))
    return PoolLedger(pool, reserved=IPSet.parse(pool.version, reserved) if reserved else None)


def owner(uid: str = "u1", nic: str = "eth0", container_id: str = "c1", name: str = "", node: str = "") -> Owner:
    """Pod ``ns/pod-<uid>`` unless ``name`` says otherwise (a StatefulSet pod keeps its name, not its UID)."""
    return Owner(uid, nic, "ns", name or f"pod-{uid}", container_id, node)


def text(pool: PoolLedger, ip: int) -> str:
    return pool.address(ip).partition("/")[0]


def allocate_all(pool: PoolLedger) -> list[str]:
    """Allocate for new owners until the pool is exhausted; the addresses in the order handed out."""
    out: list[str] = []
    for i in range(10_000):
        try:
            ip, _ = pool.allocate(owner(f"u{i}"))
        except PoolExhausted:
            return out
        out.append(text(pool, ip))
    raise AssertionError("pool never ran out")


# --- IPPool.from_object: valid pools -------------------------------------------------------------------

V4: dict[str, Any] = {"subnet": "10.0.0.0/24", "ips": ["10.0.0.10-10.0.0.20"]}
V6: dict[str, Any] = {"subnet": "fd00::/120", "ips": ["fd00::10-fd00::1f"]}

VALID = [
    pytest.param(V4, {"version": 4, "ips": ["10.0.0.10-10.0.0.20"], "total": 11}, id="ipv4"),
    pytest.param(V6, {"version": 6, "ips": ["fd00::10-fd00::1f"], "total": 16}, id="ipv6"),
    pytest.param({**V4, "ipVersion": 4}, {"version": 4}, id="explicit-ipVersion"),
    pytest.param({"subnet": "fd00::/120"}, {"version": 6, "ips": [], "total": 0}, id="no-ips"),
    pytest.param(
        {**V4, "ips": ["10.0.0.30", "10.0.0.10-10.0.0.20", "10.0.0.21-10.0.0.22", "10.0.0.15"]},
        {"ips": ["10.0.0.10-10.0.0.22", "10.0.0.30"], "total": 14},
        id="ranges-merged",
    ),
    pytest.param(
        {**V4, "excludeIPs": ["10.0.0.12-10.0.0.13", "10.0.0.99"]},
        {"exclude": ["10.0.0.12-10.0.0.13", "10.0.0.99"], "total": 9},
        id="excludeIPs",
    ),
    pytest.param({**V4, "gateway": "10.0.0.1"}, {"gateway": "10.0.0.1"}, id="gateway"),
    pytest.param({**V6, "gateway": "fd00:0::0001"}, {"gateway": "fd00::1"}, id="gateway-normalised"),
    pytest.param(
        {**V4, "gateway": "10.0.0.1", "routes": [{"dst": "192.168.0.0/16", "gw": "10.0.0.254"}]},
        {"routes": (Route("192.168.0.0/16", "10.0.0.254"),)},
        id="routes",
    ),
    pytest.param(
        {**V4, "routes": [{"dst": "192.168.1.1/16", "gw": "10.0.0.254"}]},
        {"routes": (Route("192.168.0.0/16", "10.0.0.254"),)},
        id="route-dst-with-host-bits-as-its-network",  # NB: as net.ParseCIDR, and as the webhook admits it
    ),
    pytest.param({**V6, "routes": []}, {"routes": ()}, id="empty-routes"),
    pytest.param(
        {**V4, "default": True, "disable": True, "nodeName": ["n1"], "namespaceName": ["ns"], "multusName": ["m"]},
        {"default": True, "disable": True, "node_name": ("n1",), "namespace_name": ("ns",), "multus_name": ("m",)},
        id="flags-and-lists",
    ),
    pytest.param(
        {**V4, "podAffinity": {"matchLabels": {"app": "web"}}, "nodeAffinity": {}, "namespaceAffinity": None},
        {"pod_affinity": {"matchLabels": {"app": "web"}}, "node_affinity": {}, "namespace_affinity": None},
        id="affinities",
    ),
]


def summary(pool: IPPool) -> dict[str, Any]:
    return {
        "version": pool.version,
        "ips": pool.ips.to_strings(),
        "exclude": pool.exclude_ips.to_strings(),
        "total": len(pool.total),
        "gateway": pool.gateway,
        "routes": pool.routes,
        "default": pool.default,
        "disable": pool.disable,
        "node_name": pool.node_name,
        "namespace_name": pool.namespace_name,
        "multus_name": pool.multus_name,
        "pod_affinity": pool.pod_affinity,
        "node_affinity": pool.node_affinity,
        "namespace_affinity": pool.namespace_affinity,
    }


@pytest.mark.parametrize(("spec", "expected"), VALID)
def test_a_valid_pool_is_parsed_with_spiderpool_field_names(spec: dict[str, Any], expected: dict[str, Any]) -> None:
    pool = IPPool.from_object(pool_obj(**spec))
    got = summary(pool)
    assert {k: got[k] for k in expected} == expected
    assert pool.name == "blue"


def test_a_pool_with_a_deletion_timestamp_is_terminating() -> None:
    obj = pool_obj(**V4)
    obj["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    assert IPPool.from_object(obj).terminating
    assert not IPPool.from_object(pool_obj(**V4)).terminating


def test_a_pool_keeps_its_labels() -> None:
    obj = pool_obj(**V4)
    obj["metadata"]["labels"] = {"ipam.spidernet.io/ippool-cidr": "10-0-0-0-24"}
    assert IPPool.from_object(obj).labels == {"ipam.spidernet.io/ippool-cidr": "10-0-0-0-24"}


# --- IPPool.from_object: rejections --------------------------------------------------------------------

INVALID = [
    pytest.param({"ips": ["10.0.0.1"]}, "'spec.subnet' is required", id="no-subnet"),
    pytest.param({"subnet": 24}, "'spec.subnet' is required", id="subnet-not-a-string"),
    pytest.param({"subnet": "10.0.0.1/24"}, "please change it to '10.0.0.0/24'", id="subnet-not-canonical"),
    pytest.param({"subnet": "fd00::1/120"}, "please change it to 'fd00::/120'", id="v6-subnet-not-canonical"),
    pytest.param({"subnet": "10.0.0.0/33"}, "spec.subnet", id="subnet-not-a-cidr"),
    pytest.param({"subnet": "10.0.0.0/24", "ipVersion": 6}, "spec.subnet", id="subnet-other-family-than-ipVersion"),
    pytest.param({"subnet": "10.0.0.0/24", "ipVersion": 5}, "spec.ipVersion", id="ipVersion-5"),
    pytest.param({"subnet": "10.0.0.0/24", "ipVersion": "4"}, "spec.ipVersion", id="ipVersion-a-string"),
    pytest.param({**V4, "ips": "10.0.0.1"}, "spec.ips", id="ips-not-a-list"),
    pytest.param({**V4, "ips": ["10.0.1.1"]}, "spec.ips", id="ips-outside-subnet"),
    pytest.param({**V4, "ips": ["10.0.0.250-10.0.1.5"]}, "spec.ips", id="ips-range-leaving-subnet"),
    pytest.param({**V4, "ips": ["10.0.0.1 - 10.0.0.5"]}, "spec.ips", id="ips-with-spaces"),
    pytest.param({**V4, "ips": ["10.0.0.9-10.0.0.1"]}, "spec.ips", id="ips-reversed"),
    pytest.param({**V4, "ips": ["fd00::1"]}, "spec.ips", id="ips-wrong-family"),
    pytest.param({**V4, "excludeIPs": ["10.0.1.1"]}, "spec.excludeIPs", id="excludeIPs-outside-subnet"),
    pytest.param({**V4, "excludeIPs": ["x"]}, "spec.excludeIPs", id="excludeIPs-garbage"),
    pytest.param({**V4, "gateway": "10.0.1.1"}, "spec.gateway", id="gateway-outside-subnet"),
    pytest.param({**V4, "gateway": "fd00::1"}, "spec.gateway", id="gateway-wrong-family"),
    pytest.param({**V4, "gateway": "10.0.0.x"}, "spec.gateway", id="gateway-garbage"),
    pytest.param({**V4, "routes": {"dst": "1.0.0.0/8"}}, "spec.routes", id="routes-not-a-list"),
    pytest.param({**V4, "routes": [{"dst": "1.0.0.0/8"}]}, "spec.routes", id="route-without-gw"),
    pytest.param({**V4, "routes": [{"dst": "1.0.0.0/33", "gw": "10.0.0.1"}]}, "spec.routes", id="route-dst-not-cidr"),
    pytest.param({**V4, "routes": [{"dst": "fd00::/64", "gw": "10.0.0.1"}]}, "spec.routes", id="route-dst-family"),
    pytest.param({**V4, "routes": [{"dst": "1.0.0.0/8", "gw": "10.9.0.1"}]}, "spec.routes", id="route-gw-outside"),
    pytest.param({**V4, "routes": [{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}]}, "'spec.gateway'", id="route-default-dst"),
    pytest.param(
        {**V4, "routes": [{"dst": "1.0.0.0/8", "gw": "10.0.0.1"}, {"dst": "1.0.0.0/8", "gw": "10.0.0.2"}]},
        "duplicate",
        id="route-duplicate-dst",
    ),
    pytest.param({**V4, "nodeName": "n1"}, "spec.nodeName", id="nodeName-not-a-list"),
    pytest.param({**V4, "namespaceName": [1]}, "spec.namespaceName", id="namespaceName-not-strings"),
    pytest.param({**V4, "podAffinity": ["app=web"]}, "spec.podAffinity", id="podAffinity-not-an-object"),
]


@pytest.mark.parametrize(("spec", "reason"), INVALID)
def test_an_invalid_pool_is_rejected_with_a_reason_naming_the_field(spec: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidSpec, match=re.escape(reason)) as info:
        IPPool.from_object(pool_obj(**spec))
    assert (info.value.kind, info.value.name) == ("SpiderIPPool", "blue")


def test_a_default_route_in_routes_is_rejected_for_ipv6_too() -> None:
    with pytest.raises(InvalidSpec, match=re.escape("'spec.routes'")):
        IPPool.from_object(pool_obj(**V6, routes=[{"dst": "::/0", "gw": "fd00::1"}]))


# --- allocation ----------------------------------------------------------------------------------------


def test_the_lowest_free_address_is_allocated_first() -> None:
    pool = ledger(subnet="10.0.0.0/24", ips=["10.0.0.12", "10.0.0.10-10.0.0.11"])
    assert allocate_all(pool) == ["10.0.0.10", "10.0.0.11", "10.0.0.12"]


def test_a_released_address_is_the_next_one_handed_out_when_it_is_the_lowest() -> None:
    pool = ledger(**V4)
    pool.allocate(owner("a"))
    pool.allocate(owner("b"))
    pool.release(("a", "eth0"))
    ip, _ = pool.allocate(owner("c"))
    assert text(pool, ip) == "10.0.0.10"


def test_the_gateway_is_never_handed_out() -> None:
    pool = ledger(subnet="10.0.0.0/24", ips=["10.0.0.1-10.0.0.3"], gateway="10.0.0.1")
    assert allocate_all(pool) == ["10.0.0.2", "10.0.0.3"]


def test_s00002_excluded_addresses_are_never_handed_out() -> None:
    pool = ledger(subnet="10.0.0.0/24", ips=["10.0.0.1-10.0.0.5"], excludeIPs=["10.0.0.2-10.0.0.4"])
    assert allocate_all(pool) == ["10.0.0.1", "10.0.0.5"]


def test_s00001_reserved_addresses_are_never_handed_out() -> None:
    pool = ledger(subnet="10.0.0.0/24", ips=["10.0.0.1-10.0.0.4"], reserved=["10.0.0.1", "10.0.0.3"])
    assert allocate_all(pool) == ["10.0.0.2", "10.0.0.4"]


def test_reservations_of_the_other_family_are_ignored() -> None:
    pool = IPPool.from_object(pool_obj(subnet="10.0.0.0/24", ips=["10.0.0.1-10.0.0.2"]))
    assert PoolLedger(pool, reserved=IPSet.parse(6, ["fd00::1"])).capacity == 2


def test_ipv4_network_and_broadcast_addresses_are_never_handed_out() -> None:
    pool = ledger(subnet="10.0.0.0/30", ips=["10.0.0.0-10.0.0.3"])
    assert allocate_all(pool) == ["10.0.0.1", "10.0.0.2"]


def test_both_addresses_of_an_ipv4_point_to_point_subnet_are_handed_out() -> None:
    pool = ledger(subnet="10.0.0.0/31", ips=["10.0.0.0-10.0.0.1"])
    assert allocate_all(pool) == ["10.0.0.0", "10.0.0.1"]


def test_ipv6_pools_hand_out_every_listed_address() -> None:
    pool = ledger(subnet="fd00::/126", ips=["fd00::-fd00::3"])
    assert allocate_all(pool) == ["fd00::", "fd00::1", "fd00::2", "fd00::3"]


def test_e00008_an_exhausted_pool_raises_pool_exhausted_with_its_capacity() -> None:
    pool = ledger(subnet="10.0.0.0/24", ips=["10.0.0.1-10.0.0.4"], gateway="10.0.0.1")
    allocate_all(pool)
    with pytest.raises(PoolExhausted) as info:
        pool.allocate(owner("late"))
    assert (info.value.pool, info.value.capacity) == ("blue", 3)
    assert "capacity 3" in str(info.value)


def test_a_pool_with_nothing_allocatable_is_exhausted_at_once() -> None:
    pool = ledger(subnet="10.0.0.0/24", ips=["10.0.0.1"], excludeIPs=["10.0.0.1"])
    with pytest.raises(PoolExhausted) as info:
        pool.allocate(owner())
    assert info.value.capacity == 0


def test_an_exhausted_pool_serves_again_after_a_release() -> None:
    pool = ledger(subnet="10.0.0.0/24", ips=["10.0.0.1-10.0.0.2"])
    allocate_all(pool)
    pool.release(("u1", "eth0"))
    ip, _ = pool.allocate(owner("new"))
    assert text(pool, ip) == "10.0.0.2"


def test_a_repeated_allocate_returns_the_same_address_and_changes_nothing() -> None:
    pool = ledger(**V4)
    first = pool.allocate(owner())
    before = dict(pool.records)
    assert pool.allocate(owner()) == (first[0], False)
    assert pool.records == before


def test_a_repeated_allocate_from_a_new_sandbox_keeps_the_address_and_records_the_sandbox() -> None:
    pool = ledger(**V4)
    ip, _ = pool.allocate(owner(container_id="old", node="n1"))
    assert pool.allocate(owner(container_id="new", node="n2")) == (ip, True)
    assert (pool.records[ip].container_id, pool.records[ip].node) == ("new", "n2")
    assert len(pool.records) == 1


def test_each_interface_of_a_pod_gets_its_own_address() -> None:
    pool = ledger(**V4)
    eth0, _ = pool.allocate(owner(nic="eth0"))
    net1, _ = pool.allocate(owner(nic="net1"))
    assert eth0 != net1


def test_a_release_frees_the_owners_address() -> None:
    pool = ledger(**V4)
    ip, _ = pool.allocate(owner())
    assert pool.release(("u1", "eth0"), "c1") == ip
    assert pool.records == {}
    assert pool.lookup(("u1", "eth0")) is None


def test_a_release_without_a_container_id_frees_whatever_sandbox_holds_it() -> None:
    pool = ledger(**V4)
    ip, _ = pool.allocate(owner(container_id="c9"))
    assert pool.release(("u1", "eth0")) == ip


def test_a_release_from_an_old_sandbox_is_a_no_op() -> None:
    pool = ledger(**V4)
    ip, _ = pool.allocate(owner(container_id="old"))
    pool.allocate(owner(container_id="new"))
    assert pool.release(("u1", "eth0"), "old") is None
    assert pool.lookup(("u1", "eth0")) == ip


def test_a_release_of_an_owner_holding_nothing_is_a_no_op() -> None:
    pool = ledger(**V4)
    pool.allocate(owner("a"))
    assert pool.release(("b", "eth0"), "c1") is None
    assert pool.release(("a", "net1"), "c1") is None
    assert len(pool.records) == 1


def test_release_ip_frees_an_address_whose_record_names_the_uid() -> None:
    pool = ledger(**V4)
    ip, _ = pool.allocate(owner("a"))
    assert pool.release_ip(ip, "a")
    assert pool.records == {}


def test_release_ip_with_another_uid_is_a_no_op() -> None:
    pool = ledger(**V4)
    ip, _ = pool.allocate(owner("a"))
    assert not pool.release_ip(ip, "b")
    assert pool.lookup(("a", "eth0")) == ip


def test_release_ip_of_a_free_address_is_a_no_op() -> None:
    pool = ledger(**V4)
    assert not pool.release_ip(ip_to_int("10.0.0.10"), "a")


SPIDERPOOL_RECORD = json.dumps({"10.0.0.15": {"pod": "ns/pod-u1", "podUid": "u1"}})


@pytest.mark.parametrize("nic", ["eth0", "net1"])
def test_a_spiderpool_record_without_nic_is_found_for_any_nic(nic: str) -> None:
    pool = PoolLedger.from_object(pool_obj(status={"allocatedIPs": SPIDERPOOL_RECORD}, **V4))
    assert pool.lookup(("u1", nic)) == ip_to_int("10.0.0.15")


def test_a_repeated_allocate_adopts_a_spiderpool_record_and_names_its_nic() -> None:
    pool = PoolLedger.from_object(pool_obj(status={"allocatedIPs": SPIDERPOOL_RECORD}, **V4))
    ip, changed = pool.allocate(owner(nic="net1"))
    assert (text(pool, ip), changed) == ("10.0.0.15", True)
    assert pool.records[ip].nic == "net1"
    assert len(pool.records) == 1


def test_a_pod_s_two_spiderpool_records_go_one_to_each_nic_and_none_is_lost() -> None:
    # Spiderpool writes no nic, so a pod with two NICs in one pool has two records of one owner key
    two = {ip: {"pod": "ns/pod-u1", "podUid": "u1"} for ip in ("10.0.0.15", "10.0.0.9")}  # in Go's order
    pool = PoolLedger.from_object(pool_obj(status={"allocatedIPs": json.dumps(two)}, **V4))
    eth0, _ = pool.allocate(owner(nic="eth0"))
    net1, _ = pool.allocate(owner(nic="net1"))
    assert {text(pool, eth0), text(pool, net1)} == {"10.0.0.9", "10.0.0.15"}
    assert len(pool.records) == 2, "no third address, no record left that nobody finds"


def test_a_spiderpool_record_without_nic_is_released_by_any_nic() -> None:
    pool = PoolLedger.from_object(pool_obj(status={"allocatedIPs": SPIDERPOOL_RECORD}, **V4))
    assert pool.release(("u1", "net1"), "c1") == ip_to_int("10.0.0.15")


def test_address_renders_ip_and_subnet_prefix() -> None:
    pool = ledger(**V6)
    ip, _ = pool.allocate(owner())
    assert pool.address(ip) == "fd00::10/120"


def test_copy_is_independent_of_the_original() -> None:
    pool = ledger(**V4)
    pool.allocate(owner("a"))
    snapshot = pool.copy()
    pool.allocate(owner("b"))
    assert len(snapshot.records) == 1
    assert snapshot.allocate(owner("c"))[0] == pool.lookup(("b", "eth0"))


# --- fixed IPs and new reservations -------------------------------------------------------------------


def test_a_recreated_pod_adopts_the_address_of_its_predecessor() -> None:
    pool = ledger(**V4)
    ip, _ = pool.allocate(owner("old-uid", name="web-0"))
    assert pool.adopt(ip, "old-uid", owner("new-uid", name="web-0", container_id="c2")) == (True, True)
    assert pool.lookup(("new-uid", "eth0")) == ip
    assert pool.lookup(("old-uid", "eth0")) is None


def test_adopting_an_address_already_adopted_changes_nothing() -> None:
    pool = ledger(**V4)
    ip, _ = pool.allocate(owner("old-uid", name="web-0"))
    successor = owner("new-uid", name="web-0", container_id="c2")
    pool.adopt(ip, "old-uid", successor)
    assert pool.adopt(ip, "old-uid", successor) == (True, False)


def test_an_address_held_by_another_pod_is_not_adopted() -> None:
    pool = ledger(**V4)
    ip, _ = pool.allocate(owner("old-uid", name="web-0"))
    assert pool.adopt(ip, "old-uid", owner("new-uid", name="web-1")) == (False, False)
    assert pool.lookup(("old-uid", "eth0")) == ip


def test_a_free_address_is_not_adopted() -> None:
    pool = ledger(**V4)
    assert pool.adopt(ip_to_int("10.0.0.10"), "old-uid", owner("new-uid")) == (False, False)
    assert pool.records == {}


def test_adopting_gives_back_an_address_the_new_pod_took_meanwhile() -> None:
    pool = ledger(**V4)
    fixed, _ = pool.allocate(owner("old-uid", name="web-0"))
    successor = owner("new-uid", name="web-0", container_id="c2")
    stray, _ = pool.allocate(successor)  # an ADD of the new pod that never completed
    assert pool.adopt(fixed, "old-uid", successor) == (True, True)
    assert pool.lookup(successor.key) == fixed
    assert stray not in pool.records


def test_a_new_reservation_keeps_addresses_already_held_and_blocks_new_ones() -> None:
    pool = ledger(subnet="10.0.0.0/24", ips=["10.0.0.1-10.0.0.3"])
    held, _ = pool.allocate(owner("a"))
    pool.set_reserved(IPSet.parse(4, ["10.0.0.1-10.0.0.2"]))
    assert pool.lookup(("a", "eth0")) == held
    assert allocate_all(pool) == ["10.0.0.3"]


# --- reserved IPs --------------------------------------------------------------------------------------


def test_a_reserved_ip_derives_its_family_from_the_first_entry() -> None:
    r = ReservedIP.from_object({"metadata": {"name": "r"}, "spec": {"ips": ["fd00::1-fd00::3"]}})
    assert (r.version, r.ips.to_strings()) == (6, ["fd00::1-fd00::3"])


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param({}, id="no-ips"),
        pytest.param({"ips": ["10.0.0.1 - 10.0.0.2"]}, id="spaces"),
        pytest.param({"ipVersion": 6, "ips": ["10.0.0.1"]}, id="wrong-family"),
        pytest.param({"ips": ["nonsense"]}, id="garbage"),
    ],
)
def test_an_invalid_reserved_ip_is_rejected(spec: dict[str, Any]) -> None:
    with pytest.raises(InvalidSpec) as info:
        ReservedIP.from_object({"metadata": {"name": "r"}, "spec": spec})
    assert (info.value.kind, info.value.name) == ("SpiderReservedIP", "r")


def test_reserved_set_unites_live_reservations_of_one_family() -> None:
    live = ReservedIP(name="a", version=4, ips=IPSet.parse(4, ["10.0.0.1"]))
    other = ReservedIP(name="b", version=4, ips=IPSet.parse(4, ["10.0.0.5-10.0.0.6"]))
    dying = ReservedIP(name="c", version=4, ips=IPSet.parse(4, ["10.0.0.9"]), terminating=True)
    v6 = ReservedIP(name="d", version=6, ips=IPSet.parse(6, ["fd00::1"]))
    assert reserved_set(4, [live, other, dying, v6]).to_strings() == ["10.0.0.1", "10.0.0.5-10.0.0.6"]


# --- status encoding -----------------------------------------------------------------------------------


def test_an_empty_pool_has_no_allocated_ips_field() -> None:
    status = ledger(**V4).to_status()
    assert "allocatedIPs" not in status
    assert status["allocatedIPCount"] == 0


def test_allocated_ips_is_a_json_string_keyed_by_address() -> None:
    pool = ledger(**V4)
    pool.allocate(owner("u1", node="node-1"))
    pool.allocate(attrs.evolve(owner("u2"), container_id="", node=""))
    decoded = json.loads(pool.to_status()["allocatedIPs"])
    assert decoded == {
        "10.0.0.10": {"pod": "ns/pod-u1", "podUid": "u1", "nic": "eth0", "containerID": "c1", "node": "node-1"},
        "10.0.0.11": {"pod": "ns/pod-u2", "podUid": "u2", "nic": "eth0"},
    }


def test_the_status_counts_allocated_total_and_free_addresses() -> None:
    pool = ledger(
        subnet="10.0.0.0/24",
        ips=["10.0.0.1-10.0.0.10"],
        excludeIPs=["10.0.0.10"],
        gateway="10.0.0.1",
        reserved=["10.0.0.2"],
    )
    pool.allocate(owner("a"))
    pool.allocate(owner("b"))
    status = pool.to_status()
    # total is ips - excludeIPs (Spiderpool does not subtract reserved IPs or the gateway)
    assert (status["allocatedIPCount"], status["totalIPCount"], status["freeIPCount"]) == (2, 9, 5)


CORRUPT = [
    pytest.param("not json", id="not-json"),
    pytest.param("[]", id="a-list"),
    pytest.param('"10.0.0.1"', id="a-string"),
    pytest.param(json.dumps({"10.0.0.x": {"pod": "ns/p", "podUid": "u"}}), id="bad-address"),
    pytest.param(json.dumps({"fd00::1": {"pod": "ns/p", "podUid": "u"}}), id="other-family"),
    pytest.param(json.dumps({"10.0.0.1": "ns/p"}), id="record-not-an-object"),
    pytest.param(17, id="a-number"),
]


@pytest.mark.parametrize("raw", CORRUPT)
def test_a_corrupt_allocated_ips_is_rejected_never_read_as_empty(raw: object) -> None:
    with pytest.raises(InvalidSpec, match=re.escape("status.allocatedIPs")) as info:
        PoolLedger.from_object(pool_obj(status={"allocatedIPs": raw}, **V4))
    assert info.value.name == "blue"


@pytest.mark.parametrize("raw", [None, ""])
def test_an_absent_allocated_ips_means_no_records(raw: str | None) -> None:
    assert PoolLedger.from_object(pool_obj(status={"allocatedIPs": raw}, **V4)).records == {}


def test_a_record_written_by_spiderpool_with_extra_keys_is_read() -> None:
    raw = json.dumps({"10.0.0.11": {"pod": "ns/p", "podUid": "u", "future": 1}})
    pool = PoolLedger.from_object(pool_obj(status={"allocatedIPs": raw}, **V4))
    assert pool.records == {ip_to_int("10.0.0.11"): Record(pod="ns/p", pod_uid="u")}


@given(obj=pool_objects(), requests=st.lists(owners(), max_size=20), data=st.data())
def test_a_persisted_status_reads_back_to_the_same_records(
    obj: dict[str, Any], requests: list[Owner], data: st.DataObject
) -> None:
    pool = PoolLedger.from_object(obj)
    for o in requests:
        with contextlib.suppress(PoolExhausted):
            pool.allocate(o)
        if data.draw(st.booleans()):
            pool.release(data.draw(st.sampled_from(requests)).key)
    stored = copy.deepcopy({**obj, "status": pool.to_status()})
    assert PoolLedger.from_object(stored).records == pool.records


@given(obj=pool_objects())
def test_allocatable_is_ips_minus_excluded_gateway_and_ipv4_network_broadcast(obj: dict[str, Any]) -> None:
    pool = IPPool.from_object(obj)
    assert set(pool.allocatable()) == allocatable_model(obj["spec"])


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 40)), max_size=40))
def test_status_bytes_is_the_length_of_the_status_strings_and_record_bytes_bounds_each_new_record(
    steps: list[tuple[bool, int]],
) -> None:
    pool = ledger(subnet="10.9.0.0/24", ips=["10.9.0.1-10.9.0.60"])
    for allocate, n in steps:
        who = owner(f"u{n}", container_id=f"c{n}" * n, node="node-" + "x" * n)
        if allocate:
            before = pool.status_bytes()
            fresh = pool.lookup(who.key) is None
            with contextlib.suppress(PoolExhausted):
                pool.allocate(who, cooldown=0.0)
                if fresh:
                    assert pool.status_bytes() - before <= pool.record_bytes(who)
        else:
            pool.release(who.key, now=1.0)
        status = pool.to_status()
        assert pool.status_bytes() == len(status.get("allocatedIPs", "")) + len(status.get("releasedIPs", ""))


# --- addedAt: when the ADD that wrote a record started ----------------------------------------------------------


def stamped(uid: str = "u1", at: float = 1000.0, container_id: str = "c1") -> Owner:
    return attrs.evolve(owner(uid, container_id=container_id), added_at=at)


def test_a_record_carries_its_add_s_start_as_added_at_and_spiderpool_s_reads_without_one() -> None:
    record = Record.for_owner(stamped(at=1700000000.12345))
    assert record.to_json()["addedAt"] == 1700000000.123
    assert Record.from_json(record.to_json()) == record
    assert record.matches(record.to_json())
    assert Record.from_json({"pod": "ns/p", "podUid": "u"}).added_at is None
    assert Record.from_json({"pod": "ns/p", "podUid": "u", "addedAt": "yesterday"}).added_at is None
    assert "addedAt" not in Record("ns/p", "u").to_json()


def test_a_pool_of_stamped_records_is_levelled_with_its_stored_status_exactly() -> None:
    pool = PoolLedger.from_object(pool_obj(**V4))
    behind = pool.copy()
    pool.allocate(stamped("a", 1000.5))
    pool.allocate(stamped("b", 1001.25))
    stored = pool_obj(status=pool.to_status(), **V4)
    assert behind.catch_up(stored).records == pool.records
    assert PoolLedger.from_object(stored).to_status() == pool.to_status()


def test_a_record_may_be_in_flight_until_reclaim_after_its_stamp_and_an_unstamped_one_never() -> None:
    record = Record.for_owner(stamped(at=1000.0))
    assert record.may_be_in_flight(1000.0 + RECLAIM_AFTER - 1)
    assert record.may_be_in_flight(900.0), "a stamp from a clock ahead of ours is in flight too"
    assert not record.may_be_in_flight(1000.0 + RECLAIM_AFTER)
    assert not Record("ns/p", "u1").may_be_in_flight(0.0)


def test_a_repeated_allocation_keeps_a_stamp_younger_than_the_add_window_and_changes_nothing() -> None:
    pool = ledger(**V4)
    ip, _ = pool.allocate(stamped(at=1000.0))
    assert pool.allocate(stamped(at=1000.0 + ADD_WINDOW)) == (ip, False)
    assert pool.records[ip].added_at == 1000.0


def test_a_repeated_allocation_restamps_a_record_older_than_the_add_window_or_unstamped() -> None:
    pool = ledger(**V4)
    ip, _ = pool.allocate(owner())
    assert pool.allocate(stamped(at=1000.0)) == (ip, True)
    assert pool.records[ip].added_at == 1000.0
    assert pool.allocate(stamped(at=1001.0 + ADD_WINDOW)) == (ip, True)
    assert pool.records[ip].added_at == 1001.0 + ADD_WINDOW


def test_an_adoption_stamps_the_address_with_the_new_pod_s_add() -> None:
    pool = ledger(**V4)
    ip, _ = pool.allocate(stamped("old", 1000.0))
    assert pool.adopt(ip, "old", attrs.evolve(stamped("new", 5000.0), name="pod-old")) == (True, True)
    assert pool.records[ip].added_at == 5000.0


def test_release_ip_of_an_exact_record_frees_only_that_record() -> None:
    pool = ledger(**V4)
    ip, _ = pool.allocate(stamped(at=1000.0))
    judged = pool.records[ip]
    pool.allocate(stamped(at=1000.0 + ADD_WINDOW + 1))  # a repeated ADD restamped it since
    assert not pool.release_ip(ip, judged)
    assert pool.release_ip(ip, pool.records[ip])
    assert pool.records == {}
