"""A subnet's free set, pre-allocation, growth, shrink and counts (reference §1.2, §7.1)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spider.addr import IPSet, ip_to_int
from spider.subnet import FreeIPsNotEnough, InsufficientSubnetIPs, SubnetLedger, parse_rfc3339, rfc3339, shrink


def subnet(ips: list[str], exclude: list[str] | None = None, controlled: dict[str, Any] | None = None) -> Any:
    obj: dict[str, Any] = {
        "metadata": {"name": "s"},
        "spec": {"ipVersion": 4, "subnet": "10.6.0.0/24", "ips": ips, "excludeIPs": exclude or []},
    }
    if controlled:
        obj["status"] = {"controlledIPPools": json.dumps(controlled)}
    return obj


def ips(*texts: str) -> IPSet:
    return IPSet.parse(4, list(texts))


def test_pre_allocation_takes_the_lowest_free_addresses() -> None:
    ledger = SubnetLedger.from_object(subnet(["10.6.0.1-10.6.0.20"], ["10.6.0.2"], {"m": {"ips": ["10.6.0.3"]}}))
    got = ledger.claim("p", "apps_v1_Deployment_ns_a", 3, IPSet(4), reserved=ips("10.6.0.4"))
    assert got.to_strings() == ["10.6.0.1", "10.6.0.5-10.6.0.6"]


def test_growth_keeps_the_old_addresses_and_adds_the_lowest_free() -> None:
    ledger = SubnetLedger.from_object(subnet(["10.6.0.1-10.6.0.20"]))
    ledger.claim("a", "app-a", 2, IPSet(4))
    ledger.claim("b", "app-b", 2, IPSet(4))
    grown = ledger.claim("a", "app-a", 4, ips("10.6.0.1-10.6.0.2"))
    assert grown.to_strings() == ["10.6.0.1-10.6.0.2", "10.6.0.5-10.6.0.6"]


def test_addresses_of_an_unrecorded_pool_of_the_cidr_are_never_handed_out() -> None:
    ledger = SubnetLedger.from_object(subnet(["10.6.0.1-10.6.0.20"]))
    got = ledger.claim("a", "app-a", 1, IPSet(4), taken=ips("10.6.0.1-10.6.0.5"))
    assert got.to_strings() == ["10.6.0.6"]


def test_an_insufficient_subnet_says_how_many_were_required_and_left() -> None:
    ledger = SubnetLedger.from_object(subnet(["10.6.0.1-10.6.0.3"]))
    with pytest.raises(InsufficientSubnetIPs, match="required '5' but only left '3'"):
        ledger.claim("a", "app-a", 5, IPSet(4))
    assert ledger.controlled == {}


def test_shrink_gives_back_only_unallocated_addresses_lowest_first() -> None:
    current = ips("10.6.0.1-10.6.0.5")
    assert shrink("p", current, ips("10.6.0.1", "10.6.0.3"), 3).to_strings() == ["10.6.0.1", "10.6.0.3", "10.6.0.5"]
    with pytest.raises(FreeIPsNotEnough, match="not enough"):
        shrink("p", current, ips("10.6.0.1-10.6.0.4"), 2)


def test_a_trim_of_a_young_claim_waits_and_one_of_an_old_claim_or_without_a_limit_does_not() -> None:
    """A claim younger than ``trim_after`` may be another leader's resize whose pool write is still on its way:
    its addresses stay recorded (so no other pool is given them) until the claim is that old."""
    ledger = SubnetLedger.from_object(subnet(["10.6.0.1-10.6.0.20"]))
    ledger.claim("a", "app-a", 5, IPSet(4), now=rfc3339(1000.0))
    assert not ledger.record("a", "app-a", ips("10.6.0.1-10.6.0.3"), now=rfc3339(1059.0), trim_after=60)
    assert ledger.controlled["a"].ips == ips("10.6.0.1-10.6.0.5")
    assert ledger.record("a", "app-a", ips("10.6.0.1-10.6.0.3"), now=rfc3339(1060.0), trim_after=60)
    assert ledger.controlled["a"].ips == ips("10.6.0.1-10.6.0.3")
    ledger.claim("b", "app-b", 4, IPSet(4), now=rfc3339(2000.0))
    assert ledger.record("b", "app-b", ips("10.6.0.4-10.6.0.5"), now=rfc3339(2001.0))  # no limit: at once
    assert ledger.controlled["b"].ips == ips("10.6.0.4-10.6.0.5")


def test_status_counts_the_addresses_handed_to_pools() -> None:
    ledger = SubnetLedger.from_object(subnet(["10.6.0.1-10.6.0.10"], ["10.6.0.10"]))
    ledger.claim("a", "apps_v1_Deployment_ns_a", 2, IPSet(4))
    ledger.record("m", None, ips("10.6.0.8"))
    status = ledger.to_status()
    assert (status["totalIPCount"], status["allocatedIPCount"]) == (9, 3)
    assert json.loads(status["controlledIPPools"]) == {
        "a": {"ips": ["10.6.0.1-10.6.0.2"], "application": "apps_v1_Deployment_ns_a"},
        "m": {"ips": ["10.6.0.8"]},
    }
    ledger.release("a")
    ledger.release("m")
    assert "controlledIPPools" not in ledger.to_status()


# --- a model of applications scaling and going away while pods allocate ------------------------------------

SIZE = 24
Step = tuple[str, int, int]  # (action, app, number)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["scale", "allocate", "release", "delete"]), st.integers(0, 3), st.integers(0, 9)),
        max_size=40,
    )
)
def test_applications_scaling_and_deleted_while_pods_allocate_never_share_or_overdraw(steps: list[Step]) -> None:
    ledger = SubnetLedger.from_object(subnet([f"10.6.0.1-10.6.0.{SIZE}"]))
    pools: dict[int, IPSet] = {}
    used: dict[int, set[int]] = {}
    reclaimed: list[int] = []
    for action, app, n in steps:
        name = f"auto4-app{app}-eth0-00000"
        if action == "scale":
            current = pools.get(app, IPSet(4))
            try:
                if n > current.count:
                    pools[app] = ledger.claim(name, f"apps_v1_Deployment_ns_app{app}", n, current)
                else:
                    pools[app] = shrink(name, current, IPSet.of(4, used.get(app, set())), n)
                    ledger.record(name, f"apps_v1_Deployment_ns_app{app}", pools[app])
            except (InsufficientSubnetIPs, FreeIPsNotEnough):
                pass
        elif action == "allocate" and app in pools:
            spare = pools[app].difference(IPSet.of(4, used.get(app, set())))
            if spare:
                used.setdefault(app, set()).add(next(iter(spare)))
        elif action == "release" and used.get(app):
            used[app].discard(min(used[app]))
        elif action == "delete" and app in pools:
            used.pop(app, None)  # NB: the pods go first; the pool is deleted once empty
            reclaimed.append(app)
            del pools[app]
            ledger.release(name)
        # Invariants after every step:
        seen: set[int] = set()
        for held in pools.values():
            assert not seen & set(held), "an address is in two pools"
            seen |= set(held)
        assert len(seen) <= SIZE
        assert ledger.held().count <= SIZE
        for app_id, addresses in used.items():
            assert addresses <= set(pools[app_id]), "a pod's address left its pool"
        for gone in reclaimed:
            if gone not in pools:
                assert not used.get(gone), "a reclaimed pool still has addresses in use"
        assert all(ip_to_int("10.6.0.1") <= a <= ip_to_int(f"10.6.0.{SIZE}") for a in seen)


def test_an_auto_pools_ips_cannot_be_edited_by_hand_only_grown_or_shrunk_within_its_record() -> None:
    from spider.errors import InvalidSpec
    from spider.validation import validate

    record = {"auto4-web-eth0-abcde": {"ips": ["10.6.0.1-10.6.0.4"], "application": "apps_v1_Deployment_ns_web"}}
    owner = {**subnet(["10.6.0.1-10.6.0.20"], controlled=record), "kind": "SpiderSubnet"}

    def pool(*ranges: str) -> dict[str, Any]:
        return {
            "kind": "SpiderIPPool",
            "metadata": {
                "name": "auto4-web-eth0-abcde",
                "labels": {"ipam.spidernet.io/owner-application-uid": "u"},
                "finalizers": ["spiderpool.spidernet.io"],
            },
            "spec": {"ipVersion": 4, "subnet": "10.6.0.0/24", "ips": list(ranges)},
        }

    old = pool("10.6.0.1-10.6.0.2")
    validate("SpiderIPPool", pool("10.6.0.1-10.6.0.4"), old, [owner])  # grown to its record
    validate("SpiderIPPool", pool("10.6.0.2"), old, [owner])  # shrunk within it
    with pytest.raises(InvalidSpec, match=r"illegal to update AutoPool\.Spec\.IPs"):
        validate("SpiderIPPool", pool("10.6.0.1-10.6.0.5"), old, [owner])
    with pytest.raises(InvalidSpec, match=r"illegal to update AutoPool\.Spec\.IPs"):
        validate("SpiderIPPool", pool("10.6.0.3"), old, [owner])


def test_a_retried_claim_re_uses_its_recorded_addresses_only_where_no_other_pool_holds_them_now() -> None:
    recorded = {"x": {"ips": ["10.6.0.10-10.6.0.11"], "application": "apps_v1_Deployment_ns_x"}}
    ledger = SubnetLedger.from_object(subnet(["10.6.0.10-10.6.0.20"], controlled=recorded))
    got = ledger.claim("x", "apps_v1_Deployment_ns_x", 2, IPSet(4), taken=ips("10.6.0.10"))  # a manual pool's
    assert got.to_strings() == ["10.6.0.11-10.6.0.12"]


def test_a_retried_claim_does_not_re_use_a_recorded_address_reserved_since() -> None:
    recorded = {"x": {"ips": ["10.6.0.10-10.6.0.11"], "application": "apps_v1_Deployment_ns_x"}}
    ledger = SubnetLedger.from_object(subnet(["10.6.0.10-10.6.0.20"], controlled=recorded))
    got = ledger.claim("x", "apps_v1_Deployment_ns_x", 2, IPSet(4), reserved=ips("10.6.0.11"))
    assert got.to_strings() == ["10.6.0.10", "10.6.0.12"]


def test_a_retried_claim_re_uses_exactly_its_recorded_addresses_when_nothing_else_holds_them() -> None:
    recorded = {"x": {"ips": ["10.6.0.15-10.6.0.16"], "application": "apps_v1_Deployment_ns_x"}}
    ledger = SubnetLedger.from_object(subnet(["10.6.0.10-10.6.0.20"], controlled=recorded))
    got = ledger.claim("x", "apps_v1_Deployment_ns_x", 2, IPSet(4), taken=ips("10.6.0.10"))
    assert got.to_strings() == ["10.6.0.15-10.6.0.16"]


def test_a_claim_stamps_its_entry_and_a_record_keeps_the_stamp() -> None:
    ledger = SubnetLedger.from_object(subnet(["10.6.0.1-10.6.0.20"]))
    ledger.claim("x", "kubevirt.io_v1_VirtualMachine_ns_vm", 2, IPSet(4), now="2026-01-01T00:00:00Z")
    ledger.record("x", "kubevirt.io_v1_VirtualMachine_ns_vm", ips("10.6.0.1"))
    status = json.loads(ledger.to_status()["controlledIPPools"])
    assert status["x"] == {
        "ips": ["10.6.0.1"],
        "application": "kubevirt.io_v1_VirtualMachine_ns_vm",
        "claimedAt": "2026-01-01T00:00:00Z",
    }
    assert SubnetLedger.from_object(subnet(["10.6.0.1-10.6.0.20"], controlled=status)).controlled == ledger.controlled


def test_a_guarded_release_keeps_an_entry_claimed_again_since_the_caller_looked() -> None:
    recorded = {"x": {"ips": ["10.6.0.1"], "application": "app", "claimedAt": "2026-01-01T00:01:00Z"}}
    ledger = SubnetLedger.from_object(subnet(["10.6.0.1-10.6.0.20"], controlled=recorded))
    assert not ledger.release("x", unless_claimed_since="2026-01-01T00:00:00Z")
    assert not ledger.release("x", unless_claimed_since="")
    assert "x" in ledger.controlled
    assert ledger.release("x", unless_claimed_since="2026-01-01T00:01:00Z")
    assert not ledger.release("x")


def test_timestamps_round_trip_and_garbage_is_none() -> None:
    assert rfc3339(1_800_000_000.7) == "2027-01-15T08:00:00Z"
    assert parse_rfc3339("2027-01-15T08:00:00Z") == 1_800_000_000.0
    assert parse_rfc3339("2027-01-15T08:00:00") == 1_800_000_000.0
    assert parse_rfc3339("yesterday") is None
