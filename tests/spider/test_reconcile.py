"""The controller's rules for pool and subnet status and finalizers, as pure functions."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from spider.kinds import FINALIZER, SPIDER_API_VERSION
from spider.pool import PoolLedger, ReservedIP, reserved_set
from spider.reconcile import (
    MAX_COUNT,
    holds_addresses,
    pool_counts,
    pool_finalizers,
    pool_status,
    same_subnet,
    subnet_finalizers,
    subnet_status,
)
from tests.spider.strategies import addresses_in, allocatable_model, expand, ip_text, pool_objects

COUNTS = ("allocatedIPCount", "totalIPCount", "freeIPCount")


def obj(kind: str, name: str, spec: dict[str, Any], **meta: Any) -> dict[str, Any]:
    return {"kind": kind, "metadata": {"name": name, **meta}, "spec": spec}


def records(*ips: str) -> str:
    return json.dumps({ip: {"pod": f"ns/{ip}", "podUid": ip} for ip in ips})


@given(data=st.data())
def test_pool_counts_are_the_numbers_the_agents_write(data: st.DataObject) -> None:
    pool = data.draw(pool_objects())
    net = ipaddress.ip_network(pool["spec"]["subnet"])
    held = data.draw(st.lists(addresses_in(net), max_size=5, unique=True))
    if held:
        pool["status"] = {"allocatedIPs": records(*(ip_text(ip, net.version) for ip in held))}
    blocked = data.draw(st.lists(addresses_in(net), max_size=3, unique=True))
    reservations = []
    if blocked:
        spec = {"ips": [ip_text(ip, net.version) for ip in blocked]}
        reservations.append(ReservedIP.from_object(obj("SpiderReservedIP", "r", spec)))

    counts, _ = pool_counts(pool, reservations)

    written = PoolLedger.from_object(pool, reserved_set(net.version, reservations)).to_status()
    assert counts == {key: written[key] for key in COUNTS}  # so the controller never fights a PoolActor
    spec = pool["spec"]
    assert counts["totalIPCount"] == len(expand(spec["ips"]) - expand(spec.get("excludeIPs", ())))
    assert counts["freeIPCount"] == len(allocatable_model(spec, blocked) - set(held))
    assert counts["allocatedIPCount"] == len(held)


def test_counts_of_a_whole_ipv6_slash_64_are_capped_at_int64() -> None:
    pool = obj("SpiderIPPool", "big", {"subnet": "fd00::/64", "ips": ["fd00::-fd00::ffff:ffff:ffff:ffff"]})
    assert pool_counts(pool)[0] == {"allocatedIPCount": 0, "totalIPCount": MAX_COUNT, "freeIPCount": MAX_COUNT}


def test_pool_status_keeps_every_other_field_and_says_none_when_counts_agree() -> None:
    text = '{"10.0.0.3":{"pod":"a/b","podUid":"u"}}'
    pool = obj("SpiderIPPool", "p", {"subnet": "10.0.0.0/24", "ips": ["10.0.0.2-10.0.0.5"]})
    pool["status"] = {"allocatedIPs": text, "allocatedIPCount": 5, "releasedIPs": "{}"}
    fixed, _ = pool_status(pool)
    assert fixed == {
        "allocatedIPs": text,
        "releasedIPs": "{}",
        "allocatedIPCount": 1,
        "totalIPCount": 4,
        "freeIPCount": 3,
    }
    assert pool_status({**pool, "status": fixed})[0] is None


@given(data=st.data())
def test_counts_levelled_from_an_earlier_versions_ledger_are_the_counts_decoded_afresh(data: st.DataObject) -> None:
    pool = data.draw(pool_objects())
    net = ipaddress.ip_network(pool["spec"]["subnet"])
    versions = []
    for _ in range(3):  # three writes in a row: records come and go, reservations change
        held = data.draw(st.lists(addresses_in(net), max_size=5, unique=True))
        blocked = data.draw(st.lists(addresses_in(net), max_size=2, unique=True))
        status = {"allocatedIPs": records(*(ip_text(ip, net.version) for ip in held))} if held else {}
        spec = {"ips": [ip_text(ip, net.version) for ip in blocked]}
        reservations = [ReservedIP.from_object(obj("SpiderReservedIP", "r", spec))] if blocked else []
        versions.append(({**pool, "status": status}, reservations))
    previous = None
    for stored, reservations in versions:
        counts, previous = pool_counts(stored, reservations, previous)
        assert counts == pool_counts(stored, reservations)[0]


def test_a_live_pool_gets_the_finalizer_beside_the_ones_it_has() -> None:
    pool = obj("SpiderIPPool", "p", {}, finalizers=["example.com/keep"])
    assert pool_finalizers(pool) == ["example.com/keep", FINALIZER]
    assert pool_finalizers(obj("SpiderIPPool", "p", {}, finalizers=[FINALIZER])) is None


def test_a_terminating_pool_keeps_the_finalizer_while_it_holds_addresses() -> None:
    pool = obj("SpiderIPPool", "p", {}, finalizers=[FINALIZER, "x/y"], deletionTimestamp="2024-01-01T00:00:00Z")
    pool["status"] = {"allocatedIPs": records("10.0.0.1")}
    assert pool_finalizers(pool) is None
    pool["status"] = {"allocatedIPs": "{}"}
    assert pool_finalizers(pool) == ["x/y"]
    del pool["status"]
    assert pool_finalizers(pool) == ["x/y"]
    # never re-added to an object being deleted
    assert pool_finalizers({**pool, "metadata": {**pool["metadata"], "finalizers": ["x/y"]}}) is None


def test_corrupt_records_count_as_holding_addresses() -> None:
    for raw in ("{not json", "[1]", '{"10.0.0.1": {}}'):
        assert holds_addresses({"status": {"allocatedIPs": raw}})
    for raw in (None, "", "{}"):
        assert not holds_addresses({"status": {"allocatedIPs": raw}})


def test_a_subnet_counts_only_its_own_addresses_of_pools_with_its_cidr() -> None:
    subnet = obj(
        "SpiderSubnet", "s", {"subnet": "10.1.0.0/16", "ips": ["10.1.0.1-10.1.0.100"], "excludeIPs": ["10.1.0.7"]}
    )
    pools = [
        obj("SpiderIPPool", "a", {"subnet": "10.1.0.0/16", "ips": ["10.1.0.5-10.1.0.9"]}),
        obj("SpiderIPPool", "b", {"subnet": "10.1.0.0/16", "ips": ["10.1.0.99-10.1.0.102"]}),
        obj("SpiderIPPool", "c", {"subnet": "10.2.0.0/16", "ips": ["10.2.0.1"]}),
        obj("SpiderIPPool", "bad", {"subnet": "10.1.0.0/16", "ips": ["nonsense"]}),
    ]
    status = subnet_status(subnet, pools)
    assert status is not None
    assert status["totalIPCount"] == 99
    assert status["allocatedIPCount"] == 4 + 2
    assert json.loads(status["controlledIPPools"]) == {
        "a": {"ips": ["10.1.0.5-10.1.0.6", "10.1.0.8-10.1.0.9"]},
        "b": {"ips": ["10.1.0.99-10.1.0.100"]},
    }
    assert subnet_status({**subnet, "status": status}, pools) is None


def test_a_subnet_keeps_the_entries_of_auto_pools_the_subnet_actor_recorded() -> None:
    subnet = obj("SpiderSubnet", "s", {"subnet": "10.1.0.0/16", "ips": ["10.1.0.1-10.1.0.100"]})
    auto = {"ips": ["10.1.0.50-10.1.0.52"], "application": "apps_v1_Deployment_default_web"}
    subnet["status"] = {"controlledIPPools": json.dumps({"auto-web-v4": auto})}
    pool = obj("SpiderIPPool", "auto-web-v4", {"subnet": "10.1.0.0/16", "ips": ["10.1.0.50-10.1.0.53"]})
    before = subnet_status(subnet, [])  # the pool is not created yet: its addresses stay set aside
    assert before is not None
    assert json.loads(before["controlledIPPools"]) == {"auto-web-v4": auto}
    assert before["allocatedIPCount"] == 3
    after = subnet_status(subnet, [pool])
    assert after is not None
    assert json.loads(after["controlledIPPools"])["auto-web-v4"]["application"] == auto["application"]
    assert after["allocatedIPCount"] == 4


def test_a_subnet_keeps_the_claimed_at_of_an_auto_pools_entry_once_its_pool_exists() -> None:
    """``claimedAt`` keeps the SubnetActor from trimming a young claim (a deposed leader's resize on its way)."""
    subnet = obj("SpiderSubnet", "s", {"subnet": "10.1.0.0/16", "ips": ["10.1.0.1-10.1.0.100"]})
    auto = {"ips": ["10.1.0.50-10.1.0.54"], "application": "apps_v1_Deployment_default_web", "claimedAt": "t"}
    subnet["status"] = {"controlledIPPools": json.dumps({"auto-web-v4": auto})}
    pool = obj("SpiderIPPool", "auto-web-v4", {"subnet": "10.1.0.0/16", "ips": ["10.1.0.50-10.1.0.52"]})
    status = subnet_status(subnet, [pool])
    assert status is not None
    assert json.loads(status["controlledIPPools"]) == {"auto-web-v4": auto}


def test_a_terminating_subnet_lets_go_once_no_pool_has_its_cidr() -> None:
    subnet = obj("SpiderSubnet", "s", {"subnet": "fd00::/64"}, finalizers=[FINALIZER], deletionTimestamp="t")
    pool = obj("SpiderIPPool", "p", {"subnet": "fd00:0::/64"})
    assert subnet_finalizers(subnet, [pool]) is None
    assert subnet_finalizers(subnet, []) == []
    live = obj("SpiderSubnet", "s", {"subnet": "fd00::/64"})
    assert subnet_finalizers(live, []) is None  # never added: nothing would delete a subnet's pools for it


def test_subnets_are_compared_as_networks() -> None:
    assert same_subnet("fd00::/64", "fd00:0:0::/64")
    assert not same_subnet("10.0.0.0/24", "10.0.0.0/25")
    assert same_subnet("not a cidr", "not a cidr")


def test_a_manual_pools_excluded_addresses_are_not_counted_as_its_in_the_subnet() -> None:
    # NB: Spiderpool's syncControlledIPPoolIPs records AssembleTotalIPs(pool.IPs, pool.ExcludeIPs)
    subnet = {"apiVersion": SPIDER_API_VERSION, "kind": "SpiderSubnet", "metadata": {"name": "s"},
              "spec": {"subnet": "10.1.0.0/16", "ips": ["10.1.0.1-10.1.0.100"]}}  # fmt: skip
    pool = {"apiVersion": SPIDER_API_VERSION, "kind": "SpiderIPPool", "metadata": {"name": "a"},
            "spec": {"subnet": "10.1.0.0/16", "ips": ["10.1.0.10-10.1.0.19"],
                     "excludeIPs": ["10.1.0.15-10.1.0.19"]}}  # fmt: skip
    status = subnet_status(subnet, [pool])
    assert status is not None
    assert json.loads(status["controlledIPPools"]) == {"a": {"ips": ["10.1.0.10-10.1.0.14"]}}
    assert status["allocatedIPCount"] == 5
