"""Auto pools' names, labels, sizes and the subnet annotations (reference §2.3, §7.1)."""

from __future__ import annotations

import json

import attrs
import pytest

from spider.autopool import (
    AppRef,
    auto_pool_labels,
    auto_pool_name,
    auto_pool_object,
    auto_pool_selector,
    desired_ip_count,
    fixed_ip_number,
    parse_application,
    replicas_of,
    subnet_claims,
)
from spider.errors import InvalidInput

APP = AppRef("apps/v1", "Deployment", "prod", "Web", "0f3c2a1e-1111-2222-3333-abcdef123456")


def test_the_name_is_family_app_nic_and_five_characters_of_the_uid() -> None:
    assert auto_pool_name(APP, "eth0", 4) == "auto4-web-eth0-abcde"
    assert auto_pool_name(APP, "Net1", 6) == "auto6-web-net1-abcde"


def test_a_very_long_application_name_is_cut_so_the_pool_name_fits_253_characters() -> None:
    name = auto_pool_name(attrs.evolve(APP, name="a" * 300), "eth0", 4)
    assert len(name) == 253
    assert name.startswith("auto4-aaa")
    assert name.endswith("-eth0-abcde")


def test_labels_name_the_subnet_the_application_the_nic_and_the_family() -> None:
    labels = auto_pool_labels(APP, "eth0", 4, "s4", "10.6.0.0/16", reclaim=False)
    assert labels["ipam.spidernet.io/owner-spider-subnet"] == "s4"
    assert labels["ipam.spidernet.io/ippool-cidr"] == "10-6-0-0-16"
    assert labels["ipam.spidernet.io/owner-application-gv"] == "apps_v1"
    assert labels["ipam.spidernet.io/owner-application-uid"] == APP.uid
    assert labels["ipam.spidernet.io/ip-version"] == "IPv4"
    assert labels["ipam.spidernet.io/ippool-reclaim"] == "false"
    selector = auto_pool_selector(APP, "eth0", 4, "s4")
    assert all(f"{k}={labels[k]}" in selector for k in labels if "cidr" not in k and "reclaim" not in k)


def test_the_application_string_round_trips() -> None:
    assert APP.application == "apps_v1_Deployment_prod_Web"
    assert parse_application(APP.application) == ("apps_v1", "Deployment", "prod", "Web")
    assert parse_application("v1_Pod_ns_p") == ("v1", "Pod", "ns", "p")


@pytest.mark.parametrize(
    ("ip_number", "replicas", "default", "want"),
    [("5", 2, 0, 5), ("+3", 2, 0, 5), (None, 2, 0, 2), (None, 2, 1, 3), ("0", 4, 0, 0)],
)
def test_the_size_is_fixed_flexible_or_replicas_plus_the_default(
    ip_number: str | None, replicas: int, default: int, want: int
) -> None:
    assert desired_ip_count(ip_number, replicas, default) == want


@pytest.mark.parametrize("bad", ["-1", "+", "two", "1.5"])
def test_a_malformed_ip_number_is_refused(bad: str) -> None:
    with pytest.raises(InvalidInput, match="ippool-ip-number"):
        desired_ip_count(bad, 1, 0)


def test_third_party_controllers_need_a_fixed_size() -> None:
    assert fixed_ip_number("3") == 3
    with pytest.raises(InvalidInput, match="fixed"):
        fixed_ip_number("+1")


def test_replicas_follow_each_kind() -> None:
    assert replicas_of({"kind": "Deployment", "spec": {"replicas": 3}}) == 3
    assert replicas_of({"kind": "StatefulSet", "spec": {}}) == 0
    assert replicas_of({"kind": "DaemonSet", "status": {"desiredNumberScheduled": 4}}) == 4
    assert replicas_of({"kind": "Job", "spec": {"completions": 0, "parallelism": 5}}) == 1
    assert replicas_of({"kind": "Job", "spec": {"parallelism": 5}}) == 5
    assert replicas_of({"kind": "Job", "spec": {}}) == 1
    assert replicas_of({"kind": "CronJob", "spec": {"jobTemplate": {"spec": {"completions": 2}}}}) == 2


def test_the_single_subnet_annotation_defaults_to_eth0_and_uses_the_first_name() -> None:
    annotations = {
        "ipam.spidernet.io/subnet": json.dumps({"ipv4": ["a", "b"], "ipv6": ["c"]}),
        "ipam.spidernet.io/ippool-ip-number": "+1",
        "ipam.spidernet.io/ippool-reclaim": "false",
    }
    (claim,) = subnet_claims(annotations)
    assert (claim.interface, claim.subnet(4), claim.subnet(6), claim.ip_number, claim.reclaim) == (
        "eth0",
        "a",
        "c",
        "+1",
        False,
    )


def test_multi_nic_claims_refuse_duplicates_and_empty_entries() -> None:
    two = [{"interface": "eth0", "ipv4": ["a"]}, {"interface": "net1", "ipv4": ["b"]}]
    assert [c.interface for c in subnet_claims({"ipam.spidernet.io/subnets": json.dumps(two)})] == ["eth0", "net1"]
    for bad, text in [
        ([{"interface": "eth0", "ipv4": ["a"]}, {"interface": "eth0", "ipv4": ["b"]}], "duplicate interface"),
        ([{"interface": "eth0", "ipv4": ["a"]}, {"interface": "net1", "ipv4": ["a"]}], "duplicate SpiderSubnet"),
        ([{"interface": "eth0"}], "no SpiderSubnet"),
        ([], "non-empty"),
    ]:
        with pytest.raises(InvalidInput, match=text):
            subnet_claims({"ipam.spidernet.io/subnets": json.dumps(bad)})
    assert subnet_claims({}) == ()


def test_the_pool_object_copies_the_subnet_and_is_owned_by_it() -> None:
    subnet = {
        "metadata": {"name": "s4", "uid": "u-1"},
        "spec": {"subnet": "10.6.0.0/16", "gateway": "10.6.0.1", "routes": [{"dst": "10.7.0.0/16", "gw": "10.6.0.1"}]},
    }
    obj = auto_pool_object(APP, "eth0", 4, subnet, ["10.6.0.2-10.6.0.3"], "+1", reclaim=True)
    assert obj["metadata"]["name"] == "auto4-web-eth0-abcde"
    assert obj["spec"]["gateway"] == "10.6.0.1"
    assert obj["spec"]["routes"][0]["dst"] == "10.7.0.0/16"
    assert obj["spec"]["podAffinity"]["matchLabels"]["ipam.spidernet.io/app-kind"] == "Deployment"
    assert obj["metadata"]["ownerReferences"][0]["controller"] is True
    assert obj["metadata"]["annotations"]["ipam.spidernet.io/ippool-ip-number"] == "+1"
    assert obj["metadata"]["finalizers"] == ["spiderpool.spidernet.io"]
