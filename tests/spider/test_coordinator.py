"""The coordinator's pure logic: configuration merge, cluster config, mode, MAC, requests and the plans of
ADD and DEL, checked against Spiderpool's rules without any namespace."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spider.coordinator import (
    DEFAULT_HOST_RULE_TABLE,
    MAIN_TABLE,
    POD_MARK_TABLE,
    RULE_PRIORITY,
    SCOPE_LINK,
    AddNeighbour,
    Address,
    AddRoute,
    AddRule,
    AddVeth,
    ClusterConfig,
    CoordinatorConf,
    CoordinatorNotReady,
    DelLink,
    DelRoutes,
    DropRuleIfUnused,
    InterfaceSetupFailed,
    Link,
    MarkReplies,
    ModeDecision,
    MoveRoute,
    Neighbour,
    NsView,
    RouteEntry,
    RuleEntry,
    SetLink,
    SetupSpec,
    Sysctl,
    TeardownSpec,
    check_setup,
    host_veth_name,
    mac_from_prefix,
    normalize_cidr,
    parse_duration,
    parse_request,
    plan_setup,
    plan_teardown,
    random_mac,
    resolve_mode,
)
from spider.errors import (
    DecodeFailure,
    IncompatibleVersion,
    InvalidEnvironment,
    InvalidNetConf,
    InvalidSpec,
)


def coordinator_object(phase: str = "Synced", name: str = "default", **spec: Any) -> dict[str, Any]:
    return {
        "kind": "SpiderCoordinator",
        "metadata": {"name": name},
        "spec": {"podCIDRType": "cluster", **spec},
        "status": {"phase": phase, "overlayPodCIDR": ["10.244.0.0/16"], "serviceCIDR": ["10.96.0.0/12"]},
    }


# --- the cluster's config -----------------------------------------------------------------------------------


def test_no_spidercoordinator_is_spiderpools_not_found() -> None:
    with pytest.raises(CoordinatorNotReady, match=r"^coordinator config not found$"):
        ClusterConfig.from_objects([], None)


def test_a_coordinator_that_is_not_synced_is_not_ready_by_name() -> None:
    with pytest.raises(CoordinatorNotReady, match=r"^spidercoordinator: default no ready$"):
        ClusterConfig.from_objects([coordinator_object("NotReady")], None)


def test_the_first_coordinator_counts_whatever_its_name() -> None:
    config = ClusterConfig.from_objects([coordinator_object(name="other", hostRuleTable=600)], None)
    assert config.host_rule_table == 600


def test_cluster_config_takes_cidrs_from_status_and_defaults_like_spiderpools_webhook() -> None:
    config = ClusterConfig.from_objects([coordinator_object()], None)
    assert config.overlay_pod_cidr == ("10.244.0.0/16",)
    assert config.service_cidr == ("10.96.0.0/12",)
    assert (config.mode, config.tune_pod_routes, config.host_rule_table, config.veth_mtu) == ("auto", True, 500, 1500)
    assert config.to_api()["serviceCIDR"] == ["10.96.0.0/12"]
    assert set(config.to_api()) >= {"mode", "overlayPodCIDR", "serviceCIDR", "tunePodRoutes", "hostRuleTable"}


def test_the_pods_annotation_names_the_default_route_nic_over_the_coordinator() -> None:
    pod = {"metadata": {"annotations": {"ipam.spidernet.io/default-route-nic": "net1"}}}
    config = ClusterConfig.from_objects([coordinator_object(podDefaultRouteNIC="eth0")], pod)
    assert config.pod_default_route_nic == "net1"


def test_the_crds_disabled_mode_is_the_plugins_disable() -> None:
    assert ClusterConfig.from_objects([coordinator_object(mode="disabled")], None).mode == "disable"


def test_a_bare_hijack_address_becomes_a_host_route() -> None:
    config = ClusterConfig.from_objects(
        [coordinator_object(hijackCIDR=["169.254.0.0/16", "10.0.0.1", "fd00::1"])], None
    )
    assert config.hijack_cidr == ("169.254.0.0/16", "10.0.0.1/32", "fd00::1/128")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"podMACPrefix": "0b:aa"}, "first byte is even"),
        ({"policyRoutes": [{"dst": "10.0.0.0/8", "gw": "fd00::1"}]}, "same IP family"),
        ({"txQueueLen": -1}, "txQueueLen"),
        ({"podRPFilter": 3}, "rp_filter|podRPFilter"),
        ({"vethLinkAddress": "not-an-ip"}, "vethLinkAddress"),
        ({"hijackCIDR": ["10.0.0.0/33"]}, "not a CIDR"),
    ],
)
def test_an_invalid_spidercoordinator_is_named_in_the_error(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidSpec, match=message):
        ClusterConfig.from_objects([coordinator_object(**spec)], None)


# --- the merge NAD -> SpiderCoordinator -> default ----------------------------------------------------------


def test_nad_fields_win_over_the_coordinator_and_gaps_fall_back_to_it() -> None:
    cluster = ClusterConfig(mode="overlay", host_rule_table=600, service_cidr=("10.96.0.0/12",), pod_mac_prefix="0a:00")
    conf = CoordinatorConf.merge({"mode": "underlay", "podMACPrefix": "0c:00"}, cluster)
    assert conf.mode == "underlay"
    assert conf.pod_mac_prefix == "0c:00"
    assert conf.host_rule_table == 600
    assert conf.service_cidr == ("10.96.0.0/12",)


def test_without_a_cluster_config_the_defaults_stand_in() -> None:
    conf = CoordinatorConf.merge({}, None)
    assert (conf.mode, conf.pod_default_cni_nic, conf.host_rule_table, conf.pod_rp_filter) == ("auto", "eth0", 500, 0)
    assert conf.socket_path == "/var/run/spidernet/spiderpool.sock"


def test_hijack_routes_are_overlay_then_service_then_hijack_each_once() -> None:
    conf = CoordinatorConf.merge(
        {
            "overlayPodCIDR": ["10.244.0.0/16"],
            "serviceCIDR": ["10.96.0.0/12"],
            "hijackCIDR": ["10.244.0.0/16", "1.1.1.1"],
        },
        None,
    )
    assert conf.hijack_routes == ("10.244.0.0/16", "10.96.0.0/12", "1.1.1.1/32")


def test_tune_pod_routes_false_in_the_nad_is_kept() -> None:
    assert CoordinatorConf.merge({"tunePodRoutes": False}, ClusterConfig(tune_pod_routes=True)).tune_pod_routes is False


def test_a_negative_rp_filter_means_leave_it() -> None:
    assert CoordinatorConf.merge({"podRPFilter": -5}, None).pod_rp_filter == -1


def test_detect_options_take_go_durations() -> None:
    conf = CoordinatorConf.merge({"detectOptions": {"retries": 5, "interval": "10ms", "timeout": "1.5s"}}, None)
    assert (conf.detect_options.retries, conf.detect_options.interval, conf.detect_options.timeout) == (5, 0.01, 1.5)


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({"mode": "sideways"}, "mode must be one of"),
        ({"tunePodRoutes": "yes"}, "tunePodRoutes must be true or false"),
        ({"hostRuleTable": 0}, "hostRuleTable must be positive"),
        ({"hostRuleTable": "500"}, "hostRuleTable must be an integer"),
        ({"serviceCIDR": "10.96.0.0/12"}, "serviceCIDR must be a list"),
        ({"serviceCIDR": ["10.96.0.0/33"]}, "serviceCIDR has"),
        ({"podMACPrefix": "zz:zz"}, "podMACPrefix"),
        ({"vethMTU": 0}, "vethMTU must be positive"),
        ({"detectOptions": {"timeout": "soon"}}, "detectOptions.timeout"),
        ({"detectOptions": {"retries": 0}}, "detectOptions.retries"),
        ({"policyRoutes": [{"dst": "10.0.0.0/8"}]}, "policyRoutes\\[0\\]"),
    ],
)
def test_a_wrong_field_is_an_invalid_configuration_naming_it(conf: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidNetConf, match=message) as caught:
        CoordinatorConf.merge(conf, None)
    assert caught.value.cni_code == 7


def test_durations_add_up_like_go() -> None:
    assert parse_duration("1m30s") == 90.0
    assert parse_duration("250ms") == 0.25
    with pytest.raises(ValueError, match="duration"):
        parse_duration("10 ms")


def test_cidrs_are_made_canonical() -> None:
    assert normalize_cidr(" 10.1.2.3/8 ") == "10.0.0.0/8"


# --- requests -----------------------------------------------------------------------------------------------

PREV = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "eth0", "mac": "aa:bb:cc:dd:ee:ff", "sandbox": "/var/run/netns/p"}],
    "ips": [{"interface": 0, "address": "10.6.0.20/24", "gateway": "10.6.0.1"}],
}
ENV = {
    "CNI_COMMAND": "ADD",
    "CNI_CONTAINERID": "abc123",
    "CNI_NETNS": "/var/run/netns/p",
    "CNI_IFNAME": "eth0",
    "CNI_ARGS": "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web;K8S_POD_UID=u1",
}


def stdin(**conf: Any) -> bytes:
    return json.dumps({"cniVersion": "1.0.0", "name": "n", "type": "coordinator", **conf}).encode()


def test_an_add_request_carries_the_pod_and_prev_results_addresses_for_its_interface() -> None:
    other = {"interface": 1, "address": "10.9.0.5/24"}
    prev = {**PREV, "interfaces": [*PREV["interfaces"], {"name": "net1", "sandbox": "/x"}]}
    prev["ips"] = [*PREV["ips"], other]
    request = parse_request(ENV, stdin(prevResult=prev))
    assert (request.pod_namespace, request.pod_name, request.pod_uid) == ("ns", "web", "u1")
    assert [(ip.address, ip.gateway) for ip in request.prev_ips()] == [("10.6.0.20/24", "10.6.0.1")]


def test_add_without_prev_result_says_the_coordinator_must_be_chained() -> None:
    with pytest.raises(InvalidNetConf, match="chained after the main CNI"):
        parse_request(ENV, stdin())


@pytest.mark.parametrize(
    ("env", "data", "error", "code"),
    [
        ({**ENV, "CNI_COMMAND": "FROB"}, stdin(prevResult=PREV), InvalidEnvironment, 4),
        ({k: v for k, v in ENV.items() if k != "CNI_NETNS"}, stdin(prevResult=PREV), InvalidEnvironment, 4),
        ({**ENV, "CNI_CONTAINERID": "-bad"}, stdin(prevResult=PREV), InvalidEnvironment, 4),
        (ENV, b"{not json", DecodeFailure, 6),
        (ENV, json.dumps({"cniVersion": "9.9.9", "prevResult": PREV}).encode(), IncompatibleVersion, 1),
        ({**ENV, "CNI_COMMAND": "CHECK"}, json.dumps({"cniVersion": "0.3.1"}).encode(), IncompatibleVersion, 1),
        (ENV, stdin(prevResult="nope"), InvalidNetConf, 7),
    ],
)
def test_bad_invocations_get_the_cni_code_of_their_fault(
    env: dict[str, str], data: bytes, error: type[Exception], code: int
) -> None:
    with pytest.raises(error) as caught:
        parse_request(env, data)
    assert getattr(caught.value, "cni_code", None) == code


def test_ifacer_runs_before_the_main_cni_and_needs_no_prev_result() -> None:
    assert parse_request(ENV, stdin(), chained=False).prev_result is None


# --- mode ---------------------------------------------------------------------------------------------------


def links(*names: str, up: bool = True) -> tuple[Link, ...]:
    return tuple(Link(i + 2, name, f"02:00:00:00:00:{i + 2:02x}", up=up) for i, name in enumerate(names))


def view(*names: str, **kw: Any) -> NsView:
    return NsView(links=(Link(1, "lo", up=True, kind="loopback"), *links(*names)), **kw)


def test_auto_mode_tunes_the_first_nic_as_underlay() -> None:
    assert resolve_mode("auto", "eth0", "eth0", view("eth0")) == ModeDecision("underlay", True, 101)


def test_auto_mode_is_underlay_for_a_later_nic_when_veth0_exists_and_overlay_otherwise() -> None:
    assert resolve_mode("auto", "net1", "eth0", view("eth0", "veth0", "net1")).mode == "underlay"
    assert resolve_mode("auto", "net1", "eth0", view("eth0", "net1")).mode == "overlay"


def test_underlay_tables_count_the_links_of_the_pod() -> None:
    # veth0, eth0, net1, net2 up: net2 uses 4 + 98 = 102 (Spiderpool's numbering).
    decision = resolve_mode("underlay", "net2", "eth0", view("eth0", "veth0", "net1", "net2"))
    assert decision == ModeDecision("underlay", False, 102)


def test_underlay_for_a_later_nic_without_veth0_asks_for_the_coordinator_on_the_first() -> None:
    with pytest.raises(InvalidNetConf, match="enable the coordinator on that interface"):
        resolve_mode("underlay", "net1", "eth0", view("eth0", "net1"))


def test_overlay_mode_refuses_the_first_nic_and_a_pod_with_veth0() -> None:
    with pytest.raises(InvalidNetConf, match="first interface"):
        resolve_mode("overlay", "eth0", "eth0", view("eth0"))
    with pytest.raises(InvalidNetConf, match="underlay mode exists"):
        resolve_mode("overlay", "net1", "eth0", view("eth0", "veth0", "net1"))


def test_overlay_first_invoke_is_when_the_pod_has_two_nics() -> None:
    assert resolve_mode("overlay", "net1", "eth0", view("eth0", "net1")) == ModeDecision("overlay", True, 101)
    assert resolve_mode("overlay", "net2", "eth0", view("eth0", "net1", "net2")) == ModeDecision("overlay", False, 102)


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
    assert plan.ops[0] == AddVeth("veth0", "veth0123456789a", 1500, POD_MAC, HOST_MAC)
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
    assert plan.ops[0] == DelLink("host", "veth0123456789a")
    assert DelRoutes("host", "10.6.0.20/32", 500) in plan.ops
    assert DelRoutes("host", "10.6.0.77/32", 500) in plan.ops  # found through the veth, not in any source
    assert DropRuleIfUnused("host", RuleEntry(4, 500, RULE_PRIORITY)) in plan.ops
    assert DropRuleIfUnused("host", RuleEntry(6, 500, RULE_PRIORITY)) in plan.ops


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


def test_rules_are_the_same_whatever_priority_the_kernel_chose_when_none_was_asked() -> None:
    assert RuleEntry(4, 101, src="10.6.0.20/32").same(RuleEntry(4, 101, 32765, src="10.6.0.20/32"))
    assert not RuleEntry(4, 101, 1000).same(RuleEntry(4, 101, 999))


def test_an_interface_failure_is_a_cni_io_failure() -> None:
    assert InterfaceSetupFailed(action="x", reason="y").cni_code == 5
