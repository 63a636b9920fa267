"""The plans of ADD and DEL and CHECK's findings, computed from namespace views alone (no real namespace),
and the names and MACs they give."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spider.coordinator.config import DEFAULT_HOST_RULE_TABLE, CoordinatorConf
from spider.coordinator.mode import POD_MARK_TABLE, ModeDecision
from spider.coordinator.observed import MAIN_TABLE, SCOPE_LINK, Address, Link, Neighbour, NsView, RouteEntry, RuleEntry
from spider.coordinator.ops import (
    AddNeighbour,
    AddRoute,
    AddRule,
    AddVeth,
    DelLink,
    DelNeighbours,
    DelRoutes,
    DropRuleIfUnused,
    MarkReplies,
    MoveRoute,
    SetLink,
    Sysctl,
)
from spider.coordinator.plan import (
    RULE_PRIORITY,
    SetupSpec,
    TeardownSpec,
    check_setup,
    host_veth_name,
    host_veth_owner,
    mac_from_prefix,
    plan_setup,
    plan_teardown,
    random_mac,
)
from spider.errors import InvalidNetConf


def links(*names: str, up: bool = True) -> tuple[Link, ...]:
    return tuple(Link(i + 2, name, f"02:00:00:00:00:{i + 2:02x}", up=up) for i, name in enumerate(names))


# --- MACs and names -----------------------------------------------------------------------------------------


def test_the_mac_is_the_prefix_then_the_ipv4_address() -> None:
    assert mac_from_prefix("0a:1b", "10.6.0.20") == "0a:1b:0a:06:00:14"


def test_the_mac_of_an_ipv6_address_takes_its_last_four_bytes() -> None:
    assert mac_from_prefix("0a-1b", "fd00::1:2:3:4") == "0a:1b:00:03:00:04"


@given(st.binary(min_size=6, max_size=6))
def test_random_macs_are_local_unicast(raw: bytes) -> None:
    first = int(random_mac(raw).split(":")[0], 16)
    assert first & 0x01 == 0
    assert first & 0x02 == 0x02


def test_the_host_veth_is_named_after_the_first_eleven_characters_of_the_container() -> None:
    assert host_veth_name("0123456789abcdef") == "veth0123456789a"
    assert len(host_veth_name("f" * 64)) == 15


# --- plans --------------------------------------------------------------------------------------------------

POD_MAC, HOST_MAC = "02:00:00:00:aa:01", "02:00:00:00:bb:01"


def pod_view(with_veth: bool = False) -> NsView:
    names = ("eth0", "veth0") if with_veth else ("eth0",)
    return NsView(
        links=(Link(1, "lo", up=True, kind="loopback"), *links(*names)),
        addresses=(Address("eth0", "10.6.0.20", 24),),
        routes=(
            RouteEntry(4, MAIN_TABLE, None, "eth0", "10.6.0.1"),
            RouteEntry(4, MAIN_TABLE, "10.6.0.0/24", "eth0", scope=SCOPE_LINK, proto=2),
        ),
    )


def host_view() -> NsView:
    return NsView(
        links=(Link(1, "lo"), Link(2, "ens3", up=True), Link(3, "docker0", up=True)),
        addresses=(
            Address("ens3", "10.6.0.10", 24),
            Address("docker0", "172.17.0.1", 16),
            Address("ens3", "fe80::1", 64, scope=SCOPE_LINK),
            Address("ens3", "fd00::10", 64),
        ),
        route_sources={"10.6.0.20": "10.6.0.10"},
    )


def spec(conf: CoordinatorConf | None = None, decision: ModeDecision | None = None, ifname: str = "eth0") -> SetupSpec:
    return SetupSpec(
        conf=conf or CoordinatorConf(service_cidr=("10.96.0.0/12",)),
        decision=decision or ModeDecision("underlay", True, 101),
        ifname=ifname,
        container_id="0123456789abcdef",
        families=(4,),
        pod_veth_mac=POD_MAC,
        host_veth_mac=HOST_MAC,
    )


def test_underlay_add_makes_the_veth_pair_then_routes_both_ways() -> None:
    plan = plan_setup(spec(), pod_view(), host_view())
    assert plan.host_veth == "veth0123456789a"
    assert plan.host_ips == ("10.6.0.10",)  # docker0 is excluded, IPv6 is not this pod's family
    assert plan.ops[0] == AddVeth("veth0", "veth0123456789a", 1500, POD_MAC, HOST_MAC, "spiderpool 0123456789abcdef")
    ops = set(plan.ops)
    # the host reaches the pod through the veth, looked up at priority 1000 in table 500
    assert AddRule("host", RuleEntry(4, DEFAULT_HOST_RULE_TABLE, RULE_PRIORITY)) in ops
    assert AddRoute("host", "10.6.0.20/32", "veth0123456789a", 500, scope=SCOPE_LINK) in ops
    assert AddNeighbour("host", "veth0123456789a", "10.6.0.20", POD_MAC) in ops
    # the pod reaches its host and the services through the veth
    assert AddRoute("pod", "10.6.0.10/32", "veth0", MAIN_TABLE, src="10.6.0.20", scope=SCOPE_LINK) in ops
    assert AddNeighbour("pod", "veth0", "10.6.0.10", HOST_MAC) in ops
    assert AddRoute("pod", "10.96.0.0/12", "veth0", MAIN_TABLE, gateway="10.6.0.10", src="10.6.0.20") in ops
    # replies to connections that came in through veth0 go back through it
    assert MarkReplies("veth0") in ops
    assert AddRule("pod", RuleEntry(4, POD_MARK_TABLE, RULE_PRIORITY, fwmark=1)) in ops
    assert AddRoute("pod", "0.0.0.0/0", "veth0", POD_MARK_TABLE, gateway="10.6.0.10", src="10.6.0.20") in ops
    assert Sysctl("pod", "net/ipv4/conf/all/rp_filter", 0) in ops
    assert not any(isinstance(op, MoveRoute) for op in ops)  # the first NIC keeps its routes in main


def test_routes_through_a_gateway_come_after_the_route_to_that_gateway() -> None:
    ops = plan_setup(spec(), pod_view(), host_view()).ops
    host_route = ops.index(AddRoute("pod", "10.6.0.10/32", "veth0", MAIN_TABLE, src="10.6.0.20", scope=SCOPE_LINK))
    service = ops.index(AddRoute("pod", "10.96.0.0/12", "veth0", MAIN_TABLE, gateway="10.6.0.10", src="10.6.0.20"))
    mark = next(i for i, op in enumerate(ops) if isinstance(op, AddRoute) and op.table == POD_MARK_TABLE)
    assert host_route < service < mark


def test_a_repeated_add_keeps_the_existing_veth() -> None:
    pod = pod_view(with_veth=True)
    host = NsView(links=(*host_view().links, Link(9, "veth0123456789a", HOST_MAC, up=True)))
    plan = plan_setup(spec(), pod, host)
    assert not any(isinstance(op, AddVeth) for op in plan.ops)
    assert AddNeighbour("pod", "veth0", "10.6.0.20", "") not in plan.ops


def test_mac_prefix_and_txqueuelen_change_the_interface() -> None:
    conf = CoordinatorConf(pod_mac_prefix="0a:1b", tx_queue_len=1000, pod_rp_filter=-1)
    plan = plan_setup(spec(conf), pod_view(), host_view())
    assert SetLink("pod", "eth0", mac="0a:1b:0a:06:00:14") in plan.ops
    assert SetLink("pod", "eth0", txqlen=1000) in plan.ops
    assert plan.mac == "0a:1b:0a:06:00:14"
    assert not any(isinstance(op, Sysctl) and "rp_filter" in op.key for op in plan.ops)


def test_a_hijack_route_of_a_family_without_host_address_is_skipped() -> None:
    conf = CoordinatorConf(service_cidr=("10.96.0.0/12", "fd96::/108"))
    plan = plan_setup(spec(conf), pod_view(), host_view())
    assert not any(isinstance(op, AddRoute) and op.dst == "fd96::/108" for op in plan.ops)


def overlay_pod() -> NsView:
    return NsView(
        links=(
            Link(1, "lo", up=True, kind="loopback"),
            Link(2, "eth0", "02:00:00:00:00:e0", up=True, kind="veth", peer_index=7),
            Link(3, "net1", "02:00:00:00:00:e1", up=True, kind="macvlan"),
        ),
        addresses=(Address("eth0", "10.244.1.5", 32), Address("net1", "10.6.0.20", 24)),
        routes=(
            RouteEntry(4, MAIN_TABLE, None, "eth0", "169.254.1.1"),
            RouteEntry(4, MAIN_TABLE, "10.6.0.0/24", "net1", scope=SCOPE_LINK, proto=2),
        ),
    )


def overlay_host() -> NsView:
    return NsView(
        links=(Link(1, "lo"), Link(2, "ens3", up=True), Link(7, "cali12345", "ee:ee:ee:ee:ee:ee", up=True)),
        addresses=(Address("ens3", "10.6.0.10", 24),),
    )


def test_overlay_add_uses_the_overlay_veth_and_moves_the_nics_routes_to_its_table() -> None:
    decision = ModeDecision("overlay", True, 101)
    plan = plan_setup(spec(CoordinatorConf(), decision, "net1"), overlay_pod(), overlay_host())
    assert plan.host_veth == "cali12345"
    assert not any(isinstance(op, AddVeth | MarkReplies) for op in plan.ops)
    ops = set(plan.ops)
    assert AddRoute("host", "10.6.0.20/32", "cali12345", 500, scope=SCOPE_LINK) in ops
    assert AddNeighbour("host", "cali12345", "10.6.0.20", "02:00:00:00:00:e0") in ops
    assert AddRule("pod", RuleEntry(4, 101, src="10.6.0.20/32")) in ops
    assert AddRule("pod", RuleEntry(4, POD_MARK_TABLE, src="10.244.1.5/32")) in ops
    moved = {op.route.dst for op in plan.ops if isinstance(op, MoveRoute)}
    assert moved == {"10.6.0.0/24"}  # net1's routes leave main; eth0 keeps the default
    # the host route on eth0 goes to main (first invoke) and to net1's table
    assert AddRoute("pod", "10.6.0.10/32", "eth0", MAIN_TABLE, src="10.244.1.5", scope=SCOPE_LINK) in ops


def test_overlay_with_the_default_route_on_the_new_nic_moves_eth0s_routes_instead() -> None:
    decision = ModeDecision("overlay", True, 101)
    conf = CoordinatorConf(pod_default_route_nic="net1")
    plan = plan_setup(spec(conf, decision, "net1"), overlay_pod(), overlay_host())
    moved = {op.route.oif for op in plan.ops if isinstance(op, MoveRoute)}
    assert moved == {"eth0"}
    assert AddRule("pod", RuleEntry(4, 101, src="10.244.1.5/32")) in plan.ops
    # what the plan would have added to main on eth0 goes straight to the table (Spiderpool adds, then moves)
    assert AddRoute("pod", "10.6.0.10/32", "eth0", 101, src="10.244.1.5", scope=SCOPE_LINK) in plan.ops


def test_a_default_route_nic_that_does_not_exist_is_refused() -> None:
    decision = ModeDecision("overlay", True, 101)
    with pytest.raises(InvalidNetConf, match="podDefaultRouteNIC: net9 don't exist in pod"):
        plan_setup(spec(CoordinatorConf(pod_default_route_nic="net9"), decision, "net1"), overlay_pod(), overlay_host())


def test_overlay_without_a_veth_eth0_cannot_work() -> None:
    pod = NsView(links=links("eth0", "net1"), addresses=(Address("net1", "10.6.0.20", 24),))
    with pytest.raises(InvalidNetConf, match="overlay mode needs"):
        plan_setup(spec(CoordinatorConf(), ModeDecision("overlay", True, 101), "net1"), pod, overlay_host())


def test_policy_routes_of_the_pods_family_go_through_the_nic() -> None:
    conf = CoordinatorConf.merge({"policyRoutes": [{"dst": "192.168.0.0/16", "gw": "10.6.0.1"}]}, None)
    plan = plan_setup(spec(conf), pod_view(), host_view())
    assert AddRoute("pod", "192.168.0.0/16", "eth0", MAIN_TABLE, gateway="10.6.0.1") in plan.ops


def test_teardown_deletes_the_veth_routes_neighbours_and_an_unused_host_rule() -> None:
    host = NsView(
        links=(Link(1, "lo"), Link(9, "veth0123456789a")),
        routes=(RouteEntry(4, 500, "10.6.0.77/32", "veth0123456789a", scope=SCOPE_LINK),),
    )
    tear = TeardownSpec(
        conf=CoordinatorConf(), container_id="0123456789abcdef", pod_ips=("10.6.0.20",), netns_exists=False
    )
    plan = plan_teardown(tear, host)
    assert plan.ops[0] == DelLink("host", "veth0123456789a")  # its routes and neighbours go with it
    assert plan.pod_ips == ("10.6.0.20", "10.6.0.77")  # the second found through the veth, in no source
    assert not any(isinstance(op, DelRoutes | DelNeighbours) for op in plan.ops)  # NB: never another pod's device
    assert DropRuleIfUnused("host", RuleEntry(4, 500, RULE_PRIORITY)) in plan.ops
    assert DropRuleIfUnused("host", RuleEntry(6, 500, RULE_PRIORITY)) in plan.ops


@pytest.mark.parametrize("alias", ["", "spiderpool 0123456789abcdef"])
def test_teardown_deletes_a_veth_that_names_its_container_or_none(alias: str) -> None:
    host = NsView(links=(Link(9, "veth0123456789a", alias=alias),))
    tear = TeardownSpec(conf=CoordinatorConf(), container_id="0123456789abcdef", pod_ips=(), netns_exists=False)
    plan = plan_teardown(tear, host)
    assert plan.ops[0] == DelLink("host", "veth0123456789a")
    assert plan.foreign_owner == ""


def test_teardown_leaves_another_containers_veth_of_the_same_name_and_everything_through_it() -> None:
    # two container IDs that share their first 11 characters share the host veth's name
    other = "spiderpool 0123456789a-other"
    host = NsView(
        links=(Link(1, "lo"), Link(9, "veth0123456789a", alias=other)),
        routes=(RouteEntry(4, 500, "10.6.0.77/32", "veth0123456789a", scope=SCOPE_LINK),),
    )
    tear = TeardownSpec(
        conf=CoordinatorConf(), container_id="0123456789abcdef", pod_ips=("10.6.0.20",), netns_exists=False
    )
    plan = plan_teardown(tear, host)
    assert not any(isinstance(op, DelLink) for op in plan.ops)
    assert plan.foreign_owner == other
    assert plan.pod_ips == ("10.6.0.20",)  # the other pod's routes are not taken for ours
    assert not any(isinstance(op, DelRoutes | DelNeighbours) for op in plan.ops)


@given(st.from_regex(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]{0,255}", fullmatch=True))
def test_the_owner_mark_names_the_container_and_fits_an_interface_alias(container_id: str) -> None:
    owner = host_veth_owner(container_id)
    assert len(owner.encode()) <= 255
    assert owner.startswith("spiderpool ")
    assert container_id in owner or len(container_id) > 244
    assert owner != host_veth_owner(container_id + "x")


def test_check_names_each_missing_piece() -> None:
    pod = pod_view(with_veth=True)
    pod = NsView(links=(*pod.links[:-1], Link(3, "veth0", POD_MAC, up=True, peer_index=9)), addresses=pod.addresses)
    host = NsView(links=(Link(9, "veth0123456789a", HOST_MAC),), rules=(RuleEntry(4, 500, 1000),))
    problems = check_setup(spec(), pod, host)
    assert problems == [
        "host route 10.6.0.20/32 dev veth0123456789a table 500 is missing",
        "host neighbour 10.6.0.20 on veth0123456789a is missing",
    ]
    host = NsView(
        links=host.links,
        rules=host.rules,
        routes=(RouteEntry(4, 500, "10.6.0.20/32", "veth0123456789a"),),
        neighbours=(Neighbour("veth0123456789a", "10.6.0.20", POD_MAC, permanent=True),),
    )
    assert check_setup(spec(), pod, host) == []


def test_an_overlay_pods_teardown_cleans_through_its_own_overlay_veth_only() -> None:
    host = NsView(links=(Link(1, "lo"), Link(7, "cali12345", kind="veth"), Link(8, "up0", kind="macvlan")))
    tear = TeardownSpec(
        conf=CoordinatorConf(), container_id="0123456789abcdef", pod_ips=("10.6.0.20",), netns_exists=True
    )
    plan = plan_teardown(tear, host, pod_peers=(7, 8, 99))  # eth0's peer; a macvlan's parent; a foreign index
    assert [op for op in plan.ops if isinstance(op, DelRoutes | DelNeighbours)] == [
        DelRoutes("host", "10.6.0.20/32", 500, dev="cali12345"),
        DelNeighbours("host", "10.6.0.20", dev="cali12345"),
    ]
