"""Spiderpool's admission rules (reference §1.1-§1.3), one table row per rule, with its error text."""

from __future__ import annotations

import ipaddress
import json
import re
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spider.errors import InvalidSpec
from spider.pool import IPPool, Route
from spider.validation import (
    AdmissionSettings,
    cidr_label,
    finalizer_only,
    mutate,
    validate,
)

API = "spiderpool.spidernet.io/v2beta1"


def pool(name: str = "p", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "SpiderIPPool", "metadata": {"name": name}, "spec": spec}


def subnet(name: str = "s", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "SpiderSubnet", "metadata": {"name": name}, "spec": spec}


def reserved(name: str = "r", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "SpiderReservedIP", "metadata": {"name": name}, "spec": spec}


def admit(
    obj: dict[str, Any],
    old: dict[str, Any] | None = None,
    existing: list[dict[str, Any]] | None = None,
    **settings: bool,
) -> dict[str, Any]:
    new = mutate(obj["kind"], obj, [o for o in existing or [] if o["kind"] == "SpiderSubnet"])
    validate(obj["kind"], new, old, existing or [], AdmissionSettings(**settings))
    return new


# --- mutation -----------------------------------------------------------------------------------------------------


def test_mutation_derives_the_version_adds_the_finalizer_and_the_cidr_label() -> None:
    out = mutate("SpiderIPPool", pool(subnet="172.18.40.0/24", ips=["172.18.40.10"]))
    assert out["spec"]["ipVersion"] == 4
    assert out["metadata"]["finalizers"] == ["spiderpool.spidernet.io"]
    assert out["metadata"]["labels"] == {"ipam.spidernet.io/ippool-cidr": "172-18-40-0-24"}


def test_the_cidr_label_replaces_dots_colons_and_slashes() -> None:
    assert cidr_label("fd00::/64") == "fd00---64"


def test_mutation_merges_and_sorts_ranges_into_canonical_form() -> None:
    out = mutate("SpiderIPPool", pool(subnet="10.0.0.0/24", ips=["10.0.0.20", "10.0.0.10-10.0.0.19", "10.0.0.15"]))
    assert out["spec"]["ips"] == ["10.0.0.10-10.0.0.20"]


def test_a_pool_inherits_gateway_and_routes_from_the_subnet_of_its_cidr_but_keeps_an_explicit_empty_list() -> None:
    parent = subnet("s1", subnet="10.0.0.0/24", gateway="10.0.0.1", routes=[{"dst": "10.9.0.0/16", "gw": "10.0.0.2"}])
    out = mutate("SpiderIPPool", pool(subnet="10.0.0.0/24", ips=["10.0.0.10"]), [parent])
    assert out["spec"]["gateway"] == "10.0.0.1"
    assert out["spec"]["routes"] == [{"dst": "10.9.0.0/16", "gw": "10.0.0.2"}]
    assert out["metadata"]["labels"]["ipam.spidernet.io/owner-spider-subnet"] == "s1"
    kept = mutate("SpiderIPPool", pool(subnet="10.0.0.0/24", ips=["10.0.0.10"], routes=[]), [parent])
    assert kept["spec"]["routes"] == []


def test_a_reserved_ip_gets_its_version_from_the_first_entry() -> None:
    assert mutate("SpiderReservedIP", reserved(ips=["fd00::5"]))["spec"]["ipVersion"] == 6


def test_mutation_never_raises_on_garbage() -> None:
    assert mutate("SpiderIPPool", pool(subnet="not a cidr", ips="nope"))["spec"]["subnet"] == "not a cidr"


# --- SpiderIPPool ------------------------------------------------------------------------------------------------

ROWS: list[tuple[str, dict[str, Any], str]] = [
    ("no-version", pool(subnet="nonsense"), 'spec.ipVersion: Invalid value: "nil": is not generated correctly'),
    ("bad-version", pool(ipVersion=5, subnet="10.0.0.0/24"), "spec.ipVersion: Unsupported value"),
    ("not-canonical", pool(subnet="10.0.0.1/24"), "unformatted subnet 10.0.0.1/24, please change it to 10.0.0.0/24"),
    ("wrong-family", pool(ipVersion=6, subnet="10.0.0.0/24"), "not an IPv6 subnet"),
    (
        "ip-outside",
        pool(subnet="10.0.0.0/24", ips=["10.0.1.5"]),
        'spec.ips[0]: Invalid value: "10.0.1.5": not pertains to subnet',
    ),
    ("exclude-outside", pool(subnet="10.0.0.0/24", excludeIPs=["10.0.1.5"]), "spec.excludeIPs[0]"),
    ("bad-range", pool(subnet="10.0.0.0/24", ips=["10.0.0.9-10.0.0.1"]), "starts after it ends"),
    (
        "gateway-outside",
        pool(subnet="10.0.0.0/24", gateway="10.0.1.1"),
        'spec.gateway: Invalid value: "10.0.1.1": not pertains',
    ),
    (
        "gateway-in-ips",
        pool(subnet="10.0.0.0/24", ips=["10.0.0.1-10.0.0.9"], gateway="10.0.0.1"),
        "conflicts with 'spec.gateway' 10.0.0.1",
    ),
    (
        "default-route",
        pool(subnet="10.0.0.0/24", routes=[{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}]),
        "please specify 'spec.gateway' to configure the default route",
    ),
    (
        "duplicate-route",
        pool(
            subnet="10.0.0.0/24",
            routes=[{"dst": "10.9.0.0/16", "gw": "10.0.0.1"}, {"dst": "10.9.0.0/16", "gw": "10.0.0.2"}],
        ),
        "duplicate route with the same dst",
    ),
    (
        "route-gw-outside",
        pool(subnet="10.0.0.0/24", routes=[{"dst": "10.9.0.0/16", "gw": "10.1.0.1"}]),
        "spec.routes[0].gw",
    ),
    ("route-missing-gw", pool(subnet="10.0.0.0/24", routes=[{"dst": "10.9.0.0/16"}]), "'dst' and 'gw' are required"),
    # Go's net.ParseIP/ParseCIDR take no zone; Python's ipaddress does, and the agent would hand it out
    ("zoned-gateway", pool(subnet="fd00::/64", gateway="fd00::1%eth0"), 'spec.gateway: Invalid value: "fd00::1%eth0"'),
    ("zoned-subnet", pool(ipVersion=6, subnet="fd00::%eth0/64"), "invalid IPv6 subnet"),
    ("zoned-ip", pool(subnet="fd00::/64", ips=["fd00::1%eth0"]), 'spec.ips[0]: Invalid value: "fd00::1%eth0"'),
    ("empty-pod-affinity", pool(subnet="10.0.0.0/24", podAffinity={}), "empty podAffinity is invalid"),
    (
        "bad-selector",
        pool(subnet="10.0.0.0/24", nodeAffinity={"matchExpressions": [{"key": "a", "operator": "Near"}]}),
        "spec.nodeAffinity",
    ),
]


@pytest.mark.parametrize(("obj", "text"), [(o, t) for _, o, t in ROWS], ids=[r[0] for r in ROWS])
def test_a_bad_pool_is_refused_with_spiderpools_reason(obj: dict[str, Any], text: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        admit(obj)
    assert text in caught.value.reason


def test_a_good_pool_passes_and_the_gateway_may_sit_in_ips_when_excluded() -> None:
    admit(pool(subnet="10.0.0.0/24", ips=["10.0.0.1-10.0.0.9"], excludeIPs=["10.0.0.1"], gateway="10.0.0.1"))


def test_a_route_dst_with_host_bits_is_admitted_and_the_agents_read_it_as_its_network() -> None:
    # Spiderpool's IsRoute takes any net.ParseCIDR form, and net.ParseCIDR keeps the network
    stored = admit(pool(subnet="10.0.0.0/24", routes=[{"dst": "192.168.1.1/24", "gw": "10.0.0.1"}]))
    assert IPPool.from_object(stored).routes == (Route("192.168.1.0/24", "10.0.0.1"),)


def scattered(n: int) -> list[str]:
    """``n`` addresses of 10.0.0.0/8, no two adjacent (so they stay ``n`` entries)."""
    return [str(ipaddress.IPv4Address(0x0A000000 + 2 * i)) for i in range(n)]


@pytest.mark.parametrize("obj", [pool(subnet="10.0.0.0/8", ips=scattered(3000)), reserved(ips=scattered(3000))])
def test_thousands_of_scattered_entries_are_validated_in_well_under_a_second(obj: dict[str, Any]) -> None:
    # NB: the webhook validates on the controller's trio loop; this took 5 s when each entry re-merged the set
    started = time.perf_counter()
    admit(obj)
    assert time.perf_counter() - started < 1.0


def test_the_first_entry_overlapping_an_earlier_one_is_named_among_thousands() -> None:
    ips = scattered(3000)
    ips[1500] = ips[10]  # the first to overlap an earlier entry...
    ips.append("10.0.0.0-10.0.255.255")  # ...though this one overlaps every entry
    with pytest.raises(InvalidSpec, match=re.escape('spec.ips[1500]: Invalid value: "10.0.0.20": overlaps')):
        validate("SpiderIPPool", pool(subnet="10.0.0.0/8", ipVersion=4, ips=ips))  # NB: unmerged, as unmutated


@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 3)), max_size=8))
def test_the_entry_named_as_overlapping_is_the_first_sharing_an_address_with_an_earlier_one(
    spans: list[tuple[int, int]],
) -> None:
    texts = [f"10.0.0.{a}-10.0.0.{a + n}" for a, n in spans]
    held = [set(range(a, a + n + 1)) for a, n in spans]
    first = next((i for i, s in enumerate(held) if s & set().union(*held[:i])), None)
    if first is None:
        validate("SpiderIPPool", pool(subnet="10.0.0.0/24", ipVersion=4, ips=texts))
    else:
        with pytest.raises(InvalidSpec, match=re.escape(f"spec.ips[{first}]: Invalid value")):
            validate("SpiderIPPool", pool(subnet="10.0.0.0/24", ipVersion=4, ips=texts))


def test_a_disabled_family_is_forbidden() -> None:
    with pytest.raises(InvalidSpec, match="IPv6 is disabled"):
        admit(pool(subnet="fd00::/64"), enable_ipv6=False)


def test_d00001_a_pool_may_share_a_cidr_but_not_an_address() -> None:
    one = admit(pool("one", subnet="10.0.0.0/24", ips=["10.0.0.10-10.0.0.20"]))
    admit(pool("two", subnet="10.0.0.0/24", ips=["10.0.0.21-10.0.0.30"]), existing=[one])
    with pytest.raises(InvalidSpec, match=r"overlap with IPPool one in IP ranges \['10.0.0.20'\]"):
        admit(pool("two", subnet="10.0.0.0/24", ips=["10.0.0.20-10.0.0.30"]), existing=[one])


def test_a_pool_whose_different_cidr_overlaps_another_is_refused() -> None:
    one = admit(pool("one", subnet="10.0.0.0/16", ips=["10.0.0.10"]))
    with pytest.raises(InvalidSpec, match=r"overlap with IPPool one which 'spec\.subnet' is 10\.0\.0\.0/16"):
        admit(pool("two", subnet="10.0.5.0/24"), existing=[one])


def test_subnet_and_version_are_immutable() -> None:
    old = admit(pool(subnet="10.0.0.0/24"))
    with pytest.raises(InvalidSpec, match=r"spec\.subnet: Forbidden: is not changeable"):
        admit(pool(subnet="10.0.1.0/24"), old=old)


def test_s00003_an_update_may_not_drop_an_allocated_address() -> None:
    old = admit(pool(subnet="10.0.0.0/24", ips=["10.0.0.10-10.0.0.20"]))
    old["status"] = {"allocatedIPs": json.dumps({"10.0.0.15": {"pod": "default/web", "podUid": "u"}})}
    with pytest.raises(InvalidSpec, match=r"remove an IP address 10\.0\.0\.15 that is being used by Pod default/web"):
        admit(pool(subnet="10.0.0.0/24", ips=["10.0.0.10-10.0.0.20"], excludeIPs=["10.0.0.15"]), old=old)
    admit(pool(subnet="10.0.0.0/24", ips=["10.0.0.10-10.0.0.20"], excludeIPs=["10.0.0.16"]), old=old)


def test_a_terminating_pool_cannot_be_updated_but_its_finalizers_can() -> None:
    old = admit(pool(subnet="10.0.0.0/24", ips=["10.0.0.10"]))
    old["metadata"]["deletionTimestamp"] = "2026-11-23T00:00:00Z"
    changed = pool(subnet="10.0.0.0/24", ips=["10.0.0.11"])
    changed["metadata"]["deletionTimestamp"] = "2026-11-23T00:00:00Z"
    with pytest.raises(InvalidSpec, match="cannot update a terminating IPPool"):
        validate("SpiderIPPool", mutate("SpiderIPPool", changed), old)
    unfinalized = json.loads(json.dumps(old))
    unfinalized["metadata"]["finalizers"] = []
    assert finalizer_only(unfinalized, old)
    validate("SpiderIPPool", unfinalized, old)


def test_a_pool_inside_a_subnet_may_not_take_addresses_the_subnet_does_not_have() -> None:
    parent = subnet("s1", subnet="10.0.0.0/24", ipVersion=4, ips=["10.0.0.10-10.0.0.20"])
    with pytest.raises(
        InvalidSpec, match=r"add some IP ranges \['10.0.0.21'\] that are not contained in controller Subnet s1"
    ):
        admit(pool(subnet="10.0.0.0/24", ips=["10.0.0.20-10.0.0.21"]), existing=[parent])


def promising_subnet() -> dict[str, Any]:
    parent = admit(subnet("s", subnet="10.0.0.0/24", ips=["10.0.0.10-10.0.0.20"]))
    promised = {"auto4-x-eth0-abcde": {"ips": ["10.0.0.10-10.0.0.11"], "application": "apps_v1_Deployment_ns_x"}}
    parent["status"] = {"controlledIPPools": json.dumps(promised)}
    return parent


def test_a_manual_pool_may_not_take_addresses_the_subnet_promised_to_a_pool_not_written_yet() -> None:
    with pytest.raises(
        InvalidSpec,
        match=r"overlap with IPPool auto4-x-eth0-abcde in IP ranges \['10.0.0.11'\] pre-allocated by Subnet s",
    ):
        admit(pool("manual", subnet="10.0.0.0/24", ips=["10.0.0.11-10.0.0.12"]), existing=[promising_subnet()])


def test_a_manual_pool_may_take_addresses_the_subnet_has_not_promised() -> None:
    admit(pool("manual", subnet="10.0.0.0/24", ips=["10.0.0.12-10.0.0.13"]), existing=[promising_subnet()])


def test_a_pool_may_hold_the_addresses_its_own_subnet_entry_records() -> None:
    admit(pool("auto4-x-eth0-abcde", subnet="10.0.0.0/24", ips=["10.0.0.10-10.0.0.11"]), existing=[promising_subnet()])


def test_an_update_that_keeps_addresses_promised_elsewhere_but_adds_none_passes() -> None:
    old = admit(pool("manual", subnet="10.0.0.0/24", ips=["10.0.0.11"]))
    admit(pool("manual", subnet="10.0.0.0/24", ips=["10.0.0.11-10.0.0.12"]), old=old, existing=[promising_subnet()])


def test_promised_addresses_are_not_checked_with_the_subnet_feature_off() -> None:
    admit(pool("manual", subnet="10.0.0.0/24", ips=["10.0.0.11"]), existing=[promising_subnet()], enable_subnet=False)


@pytest.mark.parametrize("cidr", ["10.0.0.0/25", "10.0.0.0/16"])
def test_a_pool_whose_cidr_overlaps_a_subnets_but_differs_is_refused(cidr: str) -> None:
    parent = admit(subnet("s", subnet="10.0.0.0/24", ips=["10.0.0.10-10.0.0.20"]))
    with pytest.raises(InvalidSpec, match=re.escape("overlap with Subnet s which 'spec.subnet' is 10.0.0.0/24")):
        admit(pool("p", subnet=cidr, ips=["10.0.0.50"]), existing=[parent])


def test_a_pool_of_a_cidr_apart_from_every_subnet_passes() -> None:
    parent = admit(subnet("s", subnet="10.0.0.0/24", ips=["10.0.0.10-10.0.0.20"]))
    admit(pool("p", subnet="10.0.1.0/24", ips=["10.0.1.50"]), existing=[parent])


# --- SpiderSubnet -------------------------------------------------------------------------------------------------


def test_subnets_of_one_family_may_not_overlap_even_when_identical() -> None:
    one = admit(subnet("one", subnet="10.0.0.0/16"))
    with pytest.raises(InvalidSpec, match="overlap with Subnet one"):
        admit(subnet("two", subnet="10.0.0.0/16"), existing=[one])


def test_a_subnet_must_control_every_address_of_the_pools_of_its_cidr() -> None:
    existing = admit(pool("p1", subnet="10.0.0.0/24", ips=["10.0.0.50"]))
    with pytest.raises(
        InvalidSpec, match="SpiderIPPool 'p1' owns some IP addresses that SpiderSubnet 's' can't control"
    ):
        admit(subnet("s", subnet="10.0.0.0/24", ips=["10.0.0.10-10.0.0.20"]), existing=[existing])


def test_a_subnet_update_may_not_drop_addresses_a_pool_was_given() -> None:
    old = admit(subnet("s", subnet="10.0.0.0/24", ips=["10.0.0.10-10.0.0.20"]))
    old["status"] = {"controlledIPPools": json.dumps({"p1": {"ips": ["10.0.0.15"]}})}
    with pytest.raises(InvalidSpec, match=r"remove some IP ranges \['10.0.0.15'\] that are being used by IPPool p1"):
        admit(subnet("s", subnet="10.0.0.0/24", ips=["10.0.0.10-10.0.0.14"]), old=old)


# --- SpiderReservedIP --------------------------------------------------------------------------------------------


def test_a_reserved_ip_without_ips_fails_on_its_version() -> None:
    with pytest.raises(InvalidSpec, match="is not generated correctly"):
        admit(reserved(ips=[]))


def test_a_reserved_ip_entry_of_the_wrong_family_is_refused() -> None:
    with pytest.raises(InvalidSpec, match=r"spec.ips\[1\]"):
        admit(reserved(ips=["10.0.0.1", "fd00::1"]))


def test_a_reserved_ip_version_is_immutable() -> None:
    old = admit(reserved(ips=["10.0.0.1"]))
    with pytest.raises(InvalidSpec, match=r"spec\.ipVersion: Forbidden"):
        admit(reserved(ips=["fd00::1"]), old=old)
