"""The coordinator's configuration: the cluster's config from a SpiderCoordinator and the pod, and the merge
NAD -> SpiderCoordinator -> default, checked against Spiderpool's rules and field names."""

from __future__ import annotations

from typing import Any

import pytest

from spider.coordinator.config import ClusterConfig, CoordinatorConf, normalize_cidr, parse_duration
from spider.coordinator.errors import CoordinatorNotReady
from spider.errors import InvalidNetConf, InvalidSpec


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
        ({"hostRuleTable": 2**32 + 5}, "hostRuleTable must be at most 4294967295"),  # NB: once stopped every agent
        ({"vethMTU": 2**32}, "vethMTU must be at most"),
        ({"vethMTU": 65536}, "vethMTU must be between 68 and 65535"),
        ({"txQueueLen": 2**64}, "txQueueLen must be at most"),
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
        ({"vethMTU": 0}, "vethMTU must be between 68 and 65535"),
        ({"vethMTU": 67}, "vethMTU must be between 68 and 65535"),
        ({"vethMTU": 65536}, "vethMTU must be between 68 and 65535"),  # NB: the kernel's refusal was CNI 5
        ({"vethMTU": 2**32}, "vethMTU must be at most 4294967295"),
        ({"detectOptions": {"timeout": "soon"}}, "detectOptions.timeout"),
        ({"detectOptions": {"retries": 0}}, "detectOptions.retries"),
        ({"policyRoutes": [{"dst": "10.0.0.0/8"}]}, "policyRoutes\\[0\\]"),
        ({"policyRoutes": [{"dst": "fd00::/8", "gw": "fe80::1%eth0"}]}, "scoped"),  # NB: once the kernel's CNI 5
        ({"hijackCIDR": ["fe80::%eth0/64"]}, "which is not a CIDR"),
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
