"""SpiderMultusConfig: Spiderpool's mutation and validation, and the NetworkAttachmentDefinition of §7.2's table."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spider.errors import InvalidSpec
from spider.multus import (
    ANNO_RESOURCE_NAME,
    CNI_TYPES,
    CNI_VERSIONS,
    SPEC_SHAPE,
    mutate_multus_config,
    network_attachment,
    resource_name,
    validate_multus_config,
)
from spider.selection import PodContext, multus_network

Obj = dict[str, Any]


def smc(spec: Obj, annotations: dict[str, str] | None = None, name: str = "net") -> Obj:
    meta: Obj = {"name": name, "namespace": "default", "uid": "uid-1"}
    if annotations:
        meta["annotations"] = annotations
    return {
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderMultusConfig",
        "metadata": meta,
        "spec": spec,
    }


def admitted(spec: Obj, annotations: dict[str, str] | None = None) -> Obj:
    obj = mutate_multus_config(smc(spec, annotations))
    validate_multus_config(obj)
    return obj


def refused(spec: Obj, annotations: dict[str, str] | None = None, old: Obj | None = None) -> str:
    with pytest.raises(InvalidSpec) as caught:
        validate_multus_config(mutate_multus_config(smc(spec, annotations)), old)
    return caught.value.reason


def plugins(obj: Obj) -> list[Obj]:
    return list(json.loads(network_attachment(obj)["spec"]["config"])["plugins"])


POOLS = {"ipv4": ["v4"], "ipv6": ["v6"]}
IPAM = {"type": "spiderpool", "default_ipv4_ippool": ["v4"], "default_ipv6_ippool": ["v6"]}


# --- generation: §7.2's table --------------------------------------------------------------------------------


def test_m00001_macvlan_is_macvlan_in_bridge_mode_with_spiderpool_ipam_then_the_coordinator() -> None:
    nad = network_attachment(admitted({"cniType": "macvlan", "macvlan": {"master": ["ens192"], "ippools": POOLS}}))
    config = json.loads(nad["spec"]["config"])
    assert (config["cniVersion"], config["name"]) == ("0.3.1", "net")
    assert config["plugins"] == [
        {"type": "macvlan", "master": "ens192", "mode": "bridge", "ipam": IPAM},
        {"type": "coordinator", "mode": "auto", "tunePodRoutes": True, "txQueueLen": 0},
    ]
    assert (nad["metadata"]["name"], nad["metadata"]["namespace"]) == ("net", "default")


def test_m00002_ipvlan_has_no_mode() -> None:
    [main, _] = plugins(admitted({"cniType": "ipvlan", "ipvlan": {"master": ["ens192"], "ippools": POOLS}}))
    assert main == {"type": "ipvlan", "master": "ens192", "ipam": IPAM}


def test_m00003_m00035_sriov_carries_the_resource_name_rdma_and_tuning_for_the_mtu() -> None:
    spec = {"cniType": "sriov", "sriov": {"resourceName": "spidernet.io/vf", "vlanID": 7, "mtu": 9000,
            "rdmaIsolation": True, "ippools": {"ipv4": ["v4"], "matchMasterSubnet": True}}}  # fmt: skip
    obj = admitted(spec)
    nad = network_attachment(obj)
    assert nad["metadata"]["annotations"] == {ANNO_RESOURCE_NAME: "spidernet.io/vf"}
    assert [p["type"] for p in plugins(obj)] == ["sriov", "rdma", "coordinator", "tuning"]
    sriov = plugins(obj)[0]
    assert (sriov["vlan"], sriov["min_tx_rate"], sriov["max_tx_rate"]) == (7, 0, 0)
    assert sriov["ipam"] == {"type": "spiderpool", "default_ipv4_ippool": ["v4"], "match_master_subnet": True}
    assert plugins(obj)[-1] == {"type": "tuning", "mtu": 9000}
    assert resource_name(obj) == "spidernet.io/vf"


def test_ib_sriov_ipoib_and_ovs_have_their_plugin_fields() -> None:
    ib = plugins(admitted({"cniType": "ib-sriov", "ibsriov": {"resourceName": "r", "pkey": "0x8001"}}))[0]
    assert ib == {"type": "ib-sriov", "pkey": "0x8001", "link_state": "enable", "rdmaIsolation": True,
                  "ibKubernetesEnabled": False, "ipam": {"type": "spiderpool"}}  # fmt: skip
    ipoib = plugins(admitted({"cniType": "ipoib", "ipoib": {"master": "ib0"}}))[0]
    assert ipoib == {"type": "ipoib", "master": "ib0", "ipam": {"type": "spiderpool"}}
    ovs_obj = admitted({"cniType": "ovs", "ovs": {"bridge": "br1", "vlan": 10, "deviceID": "0000:af:00.1"}})
    assert plugins(ovs_obj)[0] == {"type": "ovs", "bridge": "br1", "vlan": 10, "deviceID": "0000:af:00.1",
                                   "ipam": {"type": "spiderpool"}}  # fmt: skip
    annotations = network_attachment(ovs_obj)["metadata"]["annotations"]
    assert annotations == {ANNO_RESOURCE_NAME: "ovs-cni.network.kubevirt.io/br1"}


def test_m00004_custom_is_used_verbatim_without_a_coordinator() -> None:
    text = '{"cniVersion":"0.4.0","name":"x","plugins":[{"type":"bridge"}]}'
    obj = admitted({"cniType": "custom", "customCNI": text, "coordinator": {"mode": "underlay"}})
    assert obj["spec"]["enableCoordinator"] is False
    assert "coordinator" not in obj["spec"]
    assert network_attachment(obj)["spec"] == {"config": text}


def test_m00006_two_masters_with_a_vlan_put_an_ifacer_first_and_macvlan_on_the_bond_vlan() -> None:
    spec = {"cniType": "macvlan", "macvlan": {"master": ["eth1", "eth2"], "vlanID": 100,
            "bond": {"name": "bond0", "mode": 1, "options": "primary=eth1"}}}  # fmt: skip
    first, main, _ = plugins(admitted(spec))
    assert first == {"type": "ifacer", "interfaces": ["eth1", "eth2"], "vlanID": 100,
                     "bond": {"name": "bond0", "mode": 1, "options": "primary=eth1"}}  # fmt: skip
    assert main["master"] == "bond0.100"


def test_m00038_m00039_vlan_gives_vlan_id_in_manual_mode_and_none_in_auto_mode() -> None:
    manual = plugins(admitted({"cniType": "vlan", "vlan": {"master": ["eth0"], "vlanID": 30}}))
    assert manual[0] == {"type": "vlan", "master": "eth0", "vlanMode": "manual", "vlanId": 30,
                         "ipam": {"type": "spiderpool"}}  # fmt: skip
    auto = plugins(admitted({"cniType": "vlan", "vlan": {"master": ["eth0", "eth1"], "vlanMode": "auto",
                                                          "bond": {"name": "b0", "mode": 4}}}))  # fmt: skip
    assert [p["type"] for p in auto] == ["ifacer", "vlan", "coordinator"]
    assert "vlanID" not in auto[0]
    assert "vlanId" not in auto[1]


def test_m00017_disable_ipam_leaves_the_ipam_block_out() -> None:
    [main, _] = plugins(admitted({"cniType": "macvlan", "disableIPAM": True, "macvlan": {"master": ["e"]}}))
    assert "ipam" not in main


def test_m00021_chained_plugins_sit_between_the_main_plugin_and_the_coordinator() -> None:
    chained = '{"type":"tuning","sysctl":{"net.core.somaxconn":"500"}}'
    spec = {"cniType": "macvlan", "macvlan": {"master": ["e"]}, "chainCNIJsonData": [chained]}
    assert [p["type"] for p in plugins(admitted(spec))] == ["macvlan", "tuning", "coordinator"]


def test_m00033_m00034_mtu_goes_into_macvlan_and_ipvlan() -> None:
    for kind in ("macvlan", "ipvlan"):
        assert plugins(admitted({"cniType": kind, kind: {"master": ["e"], "mtu": 1400}}))[0]["mtu"] == 1400


def test_m00022_m00024_m00026_the_coordinator_block_emits_what_spiderpool_emits() -> None:
    coordinator = {"mode": "underlay", "podMACPrefix": "0a:1b", "vethLinkAddress": "169.254.100.1",
                   "hijackCIDR": ["10.0.0.0/8"], "podRPFilter": 2, "hostRuleTable": 600, "txQueueLen": 0}  # fmt: skip
    spec = {"cniType": "macvlan", "macvlan": {"master": ["e"]}, "coordinator": coordinator}
    block = plugins(admitted(spec))[-1]
    assert block == {"type": "coordinator", "mode": "underlay", "hijackCIDR": ["10.0.0.0/8"],
                     "podMACPrefix": "0a:1b", "vethLinkAddress": "169.254.100.1", "tunePodRoutes": True,
                     "txQueueLen": 0}  # fmt: skip  # NB: 0 is said (*int): no SpiderCoordinator txQueueLen
    with_type = plugins(admitted({**spec, "coordinator": {**coordinator, "podCIDRType": "cluster"}}))[-1]
    assert with_type["podRPFilter"] == 2  # NB: only with podCIDRType, as Spiderpool (§13 item 7)


def test_enable_coordinator_false_leaves_the_coordinator_out() -> None:
    spec = {"cniType": "macvlan", "enableCoordinator": False, "macvlan": {"master": ["e"]}}
    assert [p["type"] for p in plugins(admitted(spec))] == ["macvlan"]


def test_all_annotations_are_copied_and_the_inject_ones_become_labels() -> None:
    annotations = {"a": "b", "cni.spidernet.io/rdma-resource-inject": "roce",
                   "cni.spidernet.io/cniconfig-name": "inner"}  # fmt: skip
    spec = {"cniType": "macvlan", "macvlan": {"master": ["e"], "rdmaResourceName": "spidernet.io/roce",
            "ippools": POOLS}}  # fmt: skip
    obj = admitted(spec, annotations)
    assert obj["metadata"]["labels"] == {"cni.spidernet.io/rdma-resource-inject": "roce"}
    nad = network_attachment(obj)
    assert nad["metadata"]["annotations"] == annotations
    assert json.loads(nad["spec"]["config"])["name"] == "inner"


# --- validation: Spiderpool's rules and texts ----------------------------------------------------------------


def test_m00005_custom_with_invalid_json_is_refused() -> None:
    assert refused({"cniType": "custom", "customCNI": "{not json"}) == (
        "spec.customCniTypeConfig: Forbidden: customCniConfig isn't a valid JSON encoding"
    )


def test_m00011_m00020_m00025_the_cr_name_must_be_a_dns_subdomain_not_empty_nor_too_long() -> None:
    spec = {"cniType": "macvlan", "macvlan": {"master": ["e"]}}
    for bad in ("", "Upper_Case", "x" * 254):
        reason = refused(spec, {"multus.spidernet.io/cr-name": bad})
        assert "invalid custom net-attach-def resource name" in reason
    assert "must be no more than 253 characters" in refused(spec, {"multus.spidernet.io/cr-name": "x" * 254})
    admitted(spec, {"multus.spidernet.io/cr-name": "ok.name-1"})


def test_m00011_the_cr_name_cannot_be_added_or_changed_later() -> None:
    spec = {"cniType": "macvlan", "macvlan": {"master": ["e"]}}
    old = admitted(spec, {"multus.spidernet.io/cr-name": "a"})
    assert "from 'a' to 'b'" in refused(spec, {"multus.spidernet.io/cr-name": "b"}, old)
    assert "to customized name 'b'" in refused(spec, {"multus.spidernet.io/cr-name": "b"}, admitted(spec))


def test_m00013_the_cni_version_must_be_a_supported_one() -> None:
    spec = {"cniType": "macvlan", "macvlan": {"master": ["e"]}}
    assert refused(spec, {"multus.spidernet.io/cni-version": "0.2.0"}).endswith("unsupported CNI version 0.2.0")
    for version in CNI_VERSIONS:
        admitted(spec, {"multus.spidernet.io/cni-version": version})


def test_m00015_the_block_must_match_the_cni_type() -> None:
    assert refused({"cniType": "macvlan"}) == "spec.macvlanConfig: Required value: no spec.macvlanConfig specified"
    assert refused({"cniType": "macvlan", "macvlan": {"master": ["e"]}, "ipvlan": {"master": ["e"]}}) == (
        "spec.cniType: Forbidden: the cniType macvlan only supports spec.macvlanConfig, please remove other CNI configs"
    )
    assert "the cniType custom only supports" in refused({"cniType": "custom", "sriov": {"resourceName": "r"}})


def test_m00016_a_vlan_id_outside_0_to_4094_is_refused() -> None:
    assert refused({"cniType": "macvlan", "macvlan": {"master": ["e"], "vlanID": 4095}}) == (
        "spec.macvlanConfig: Invalid value: 4095: invalid vlanId 4095, please make sure vlanId in range [0,4094]"
    )


def test_m00023_an_invalid_pod_rp_filter_is_refused() -> None:
    spec = {"cniType": "macvlan", "macvlan": {"master": ["e"]}, "coordinator": {"podRPFilter": 3}}
    assert refused(spec) == 'spec.podRPFilter: Unsupported value: 3: supported values: "0", "1", "2"'
    admitted({**spec, "coordinator": {"podRPFilter": -1}})


def test_the_coordinator_block_is_checked_as_the_plugin_checks_it() -> None:
    spec = {"cniType": "macvlan", "macvlan": {"master": ["e"]}}
    assert "podMACPrefix" in refused({**spec, "coordinator": {"podMACPrefix": "01:00"}})
    assert "hijackCIDR" in refused({**spec, "coordinator": {"hijackCIDR": ["nope"]}})


def test_m00040_vlan_mode_auto_refuses_a_vlan_id() -> None:
    spec = {"cniType": "vlan", "vlan": {"master": ["eth0"], "vlanMode": "auto", "vlanID": 100}}
    assert refused(spec).endswith("vlanId must not be specified when vlanMode is auto")


def test_two_masters_need_a_named_bond() -> None:
    assert refused({"cniType": "macvlan", "macvlan": {"master": ["a", "b"]}}).endswith(
        "the bond property is nil with multiple Interfaces"
    )


def test_chained_plugins_must_be_cni_plugin_configurations() -> None:
    spec = {"cniType": "macvlan", "macvlan": {"master": ["e"]}, "chainCNIJsonData": ['{"name":"x"}']}
    assert refused(spec).endswith("error parsing configuration: missing 'type'")


@pytest.mark.parametrize(
    ("chained", "why"),
    [
        ('{"type":"tuning","x":NaN}', "NaN is not a JSON number"),
        ('{"type":"tuning","x":1e400}', "out of range"),
        ('{"type":5}', "'type' must be a string"),
        ('{"type":"tuning","cniVersion":5}', "'cniVersion' must be a string"),
        ('{"type":"tuning","ipam":"host-local"}', "'ipam' must be an object"),
        ('{"type":"tuning","name":["x"]}', "'name' must be a string"),
    ],
)
def test_chained_plugins_are_refused_where_libcni_could_not_read_them(chained: str, why: str) -> None:
    # NB: once admitted, and rendered into a NAD that Multus (Go) could not parse: every pod of the network failed
    spec = {"cniType": "macvlan", "macvlan": {"master": ["e"]}, "chainCNIJsonData": [chained]}
    assert why in refused(spec)


def test_a_custom_cni_configuration_must_be_json_as_go_reads_it() -> None:
    assert refused({"cniType": "custom", "customCNI": '{"type":"x","n":Infinity}'}).endswith(
        "customCniConfig isn't a valid JSON encoding"
    )


RDMA = {"cni.spidernet.io/rdma-resource-inject": "roce"}
NETWORK = {"cni.spidernet.io/network-resource-inject": "net"}


def test_m00027_m00028_m00029_rdma_inject_needs_a_resource_name_and_pools() -> None:
    admitted({"cniType": "macvlan", "macvlan": {"master": ["e"], "rdmaResourceName": "r", "ippools": POOLS}}, RDMA)
    no_rdma = refused({"cniType": "macvlan", "macvlan": {"master": ["e"], "ippools": POOLS}}, RDMA)
    assert no_rdma.endswith(": rdmaResourceName can not empty for spidermultusconfig default/net")
    no_pools = refused({"cniType": "macvlan", "macvlan": {"master": ["e"], "rdmaResourceName": "r"}}, RDMA)
    assert no_pools.endswith(": no any ippools config for spidermultusconfig default/net")


def test_m00030_rdma_inject_is_refused_for_ovs_and_custom() -> None:
    assert "does not support RDMA resource or network resource injected" in refused({"cniType": "custom"}, RDMA)
    assert "does not support RDMA" in refused({"cniType": "ovs", "ovs": {"bridge": "b"}}, RDMA)


def test_m00031_m00032_network_inject_with_a_resource_name_needs_pools() -> None:
    admitted({"cniType": "macvlan", "macvlan": {"master": ["e"], "rdmaResourceName": "r", "ippools": POOLS}}, NETWORK)
    admitted({"cniType": "macvlan", "macvlan": {"master": ["e"]}}, NETWORK)
    lacking = {"cniType": "macvlan", "macvlan": {"master": ["e"], "rdmaResourceName": "r"}}
    assert refused(lacking, NETWORK).endswith(": no any ippools config for spidermultusconfig default/net")


@pytest.mark.parametrize(
    "spec",
    [
        {"cniType": "vlan", "vlan": {"master": ["e"], "vlanID": 5, "rdmaResourceName": "r"}},
        {"cniType": "sriov", "sriov": {"resourceName": "spidernet.io/vf"}},
        {"cniType": "ib-sriov", "ibsriov": {"resourceName": "spidernet.io/ib"}},
    ],
    ids=lambda spec: spec["cniType"],
)
def test_network_inject_needs_pools_for_every_type_with_a_resource_name(spec: Obj) -> None:
    assert refused(spec, NETWORK).endswith(": no any ippools config for spidermultusconfig default/net")
    block = next(key for key in spec if key != "cniType")
    admitted({**spec, block: {**spec[block], "ippools": POOLS}}, NETWORK)


# --- every generated config is a valid conflist for its version (hypothesis) ---------------------------------

names = st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True)
pools = st.fixed_dictionaries({"ipv4": st.lists(names, max_size=2), "ipv6": st.lists(names, max_size=2)})
masters = st.lists(names, min_size=1, max_size=3, unique=True)
bond = st.fixed_dictionaries({"name": names, "mode": st.integers(0, 6)})
vlan_id = st.integers(0, 4094)


@st.composite
def specs(draw: st.DrawFn) -> Obj:
    kind = draw(st.sampled_from(CNI_TYPES))
    spec: Obj = {"cniType": kind, "disableIPAM": draw(st.booleans()), "enableCoordinator": draw(st.booleans())}
    if kind in ("macvlan", "ipvlan", "vlan"):
        master = draw(masters)
        block: Obj = {"master": master, "ippools": draw(pools), "mtu": draw(st.integers(0, 9000))}
        if len(master) > 1:
            block["bond"] = draw(bond)
        if kind == "vlan" and draw(st.booleans()):
            block["vlanMode"] = "auto"
        else:
            block["vlanID"] = draw(vlan_id)
        spec[kind] = block
    elif kind in ("sriov", "ib-sriov"):
        spec["sriov" if kind == "sriov" else "ibsriov"] = {"resourceName": draw(names), "ippools": draw(pools)}
    elif kind == "ipoib":
        spec["ipoib"] = {"master": draw(names)}
    elif kind == "ovs":
        spec["ovs"] = {"bridge": draw(names), "vlan": draw(vlan_id)}
    else:
        spec["customCNI"] = draw(st.sampled_from(["", '{"cniVersion":"0.3.1","name":"c","type":"bridge"}']))
    if draw(st.booleans()):
        spec["chainCNIJsonData"] = ['{"type":"tuning","mtu":1400}']
    return spec


@settings(max_examples=300, deadline=None)
@given(specs(), st.sampled_from(CNI_VERSIONS))
def test_every_generated_config_is_a_valid_conflist_of_the_version_it_declares(spec: Obj, version: str) -> None:
    obj = admitted(spec, {"multus.spidernet.io/cni-version": version})
    nad = network_attachment(obj)
    assert nad["apiVersion"] == "k8s.cni.cncf.io/v1"
    assert nad["kind"] == "NetworkAttachmentDefinition"
    if spec["cniType"] == "custom":
        return
    config = json.loads(nad["spec"]["config"])
    assert config["cniVersion"] == version in CNI_VERSIONS
    assert isinstance(config["name"], str)
    assert config["name"]
    assert config["plugins"], "a conflist has at least one plugin"
    for plugin in config["plugins"]:
        assert isinstance(plugin.get("type"), str)
        assert plugin["type"]
        assert "cniVersion" not in plugin
        assert "name" not in plugin
        if "ipam" in plugin:
            assert plugin["ipam"]["type"] == "spiderpool"
    types = [p["type"] for p in config["plugins"]]
    assert ("coordinator" in types) == bool(spec["enableCoordinator"])
    if "ifacer" in types:
        assert types.index("ifacer") == 0
    if "coordinator" in types:
        assert types.index("coordinator") > types.index(spec["cniType"])


# --- odd input: every field has the CRD schema's type, checked in its words --------------------------------


@pytest.mark.parametrize(
    ("spec", "annotations", "reason"),
    [
        ({"cniType": "macvlan", "macvlan": {"master": ["e"], "ippools": "x"}}, None,
         'spec.macvlan.ippools: Invalid value: "string": spec.macvlan.ippools in body must be of type object: '
         '"string"'),
        ({"cniType": ["macvlan"]}, None,
         'spec.cniType: Invalid value: "array": spec.cniType in body must be of type string: "array"'),
        ({"cniType": "ovs", "ovs": {"bridge": "b", "trunk": [5]}}, None,
         'spec.ovs.trunk[0]: Invalid value: "integer": spec.ovs.trunk[0] in body must be of type object: "integer"'),
        ({"cniType": "ovs", "ovs": {"bridge": "b", "trunk": [{"minID": "1"}]}}, None,
         'spec.ovs.trunk[0].minID: Invalid value: "string": spec.ovs.trunk[0].minID in body must be of type '
         'integer: "string"'),
        ({"cniType": "custom", "customCNI": {"type": "bridge"}}, None,
         'spec.customCNI: Invalid value: "object": spec.customCNI in body must be of type string: "object"'),
        ({"cniType": "macvlan", "macvlan": {"master": ["e"]}}, {"multus.spidernet.io/cr-name": 7},
         'metadata.annotations.multus.spidernet.io/cr-name: Invalid value: "integer": '
         'metadata.annotations.multus.spidernet.io/cr-name in body must be of type string: "integer"'),
        ({"cniType": "macvlan", "macvlan": {"master": ["e"], "ippools": {"ipv4": "abc"}}}, None,
         'spec.macvlan.ippools.ipv4: Invalid value: "string": spec.macvlan.ippools.ipv4 in body must be of type '
         'array: "string"'),
        ({"cniType": "macvlan", "macvlan": {"master": ["e"]}, "disableIPAM": "false"}, None,
         'spec.disableIPAM: Invalid value: "string": spec.disableIPAM in body must be of type boolean: "string"'),
        ({"cniType": "ipoib", "ipoib": {"master": ["ib0"]}}, None,
         'spec.ipoib.master: Invalid value: "array": spec.ipoib.master in body must be of type string: "array"'),
        ({"cniType": "sriov", "sriov": {"resourceName": "r", "minTxRateMbps": "5"}}, None,
         'spec.sriov.minTxRateMbps: Invalid value: "string": spec.sriov.minTxRateMbps in body must be of type '
         'integer: "string"'),
        ({"cniType": "macvlan", "macvlan": {"master": ["e", None]}}, None,
         'spec.macvlan.master[1]: Invalid value: "null": spec.macvlan.master[1] in body must be of type string: '
         '"null"'),
    ],
    ids=[
        "ippools-string", "cniType-list", "trunk-item-int", "trunk-minID-string", "customCNI-object",
        "cr-name-int", "ipv4-string", "disableIPAM-string", "ipoib-master-list", "minTxRate-string", "null-master",
    ],
)  # fmt: skip
def test_a_field_of_the_wrong_json_type_is_refused_with_the_crd_schemas_words(
    spec: Obj, annotations: Obj | None, reason: str
) -> None:
    obj: Obj = {"metadata": {"name": "net", "namespace": "default", "annotations": annotations or {}}, "spec": spec}
    with pytest.raises(InvalidSpec) as caught:
        validate_multus_config(mutate_multus_config(obj))
    assert caught.value.reason == reason


def test_a_null_field_counts_as_absent_as_the_api_server_drops_it() -> None:
    obj = admitted({"cniType": "macvlan", "macvlan": {"master": ["e"], "bond": None, "mtu": None}})
    assert plugins(obj)[0] == {"type": "macvlan", "master": "e", "mode": "bridge", "ipam": {"type": "spiderpool"}}


json_leaves = st.none() | st.booleans() | st.integers(-3, 5000) | st.floats(-1, 10) | st.text(max_size=4)
junk = st.recursive(
    json_leaves, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)  # fmt: skip
likely_strings = st.sampled_from(
    [*CNI_TYPES, "", "e", "b", "manual", "auto", "enable", "underlay", "spidernet.io/r", "169.254.0.0/16",
     '{"type":"bridge"}', "{not json", '["x"]', "0a:1b"]
)  # fmt: skip


def shaped(shape: object) -> st.SearchStrategy[Any]:
    """Values of the CRD's shape most of the time, anything JSON can say otherwise."""
    if isinstance(shape, list):
        good: st.SearchStrategy[Any] = st.lists(shaped(shape[0]), max_size=3)
    elif isinstance(shape, dict):
        good = st.fixed_dictionaries({}, optional={key: shaped(sub) for key, sub in shape.items()})
    elif shape == "integer":
        good = st.integers(-2, 5000)
    elif shape == "boolean":
        good = st.booleans()
    else:
        good = likely_strings
    return st.one_of(good, good, good, junk)


@st.composite
def odd_configs(draw: st.DrawFn) -> Obj:
    """A well-formed spec with a field or two of any value, or any spec at all."""
    if draw(st.booleans()):
        spec: Any = draw(specs())
        for _ in range(draw(st.integers(1, 2))):
            block = next((k for k in spec if isinstance(spec[k], dict) and isinstance(SPEC_SHAPE.get(k), dict)), None)
            in_block = block is not None and draw(st.booleans())
            target, shape = (spec[block], SPEC_SHAPE[block]) if in_block else (spec, SPEC_SHAPE)
            key = draw(st.sampled_from(sorted(shape)))
            target[key] = draw(shaped(shape[key]))
    else:
        spec = draw(shaped(SPEC_SHAPE))
        if isinstance(spec, dict) and draw(st.booleans()):
            spec["cniType"] = draw(st.sampled_from(CNI_TYPES))
    annotations = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "multus.spidernet.io/cr-name": likely_strings | junk,
                "multus.spidernet.io/cni-version": st.sampled_from(CNI_VERSIONS) | junk,
                "cni.spidernet.io/rdma-resource-inject": st.just("roce") | junk,
                "cni.spidernet.io/network-resource-inject": st.just("net") | junk,
            },
        )
    )
    return {"metadata": {"name": "net", "namespace": "default", "uid": "u", "annotations": annotations}, "spec": spec}


@settings(max_examples=1500, deadline=None)
@given(odd_configs())
def test_any_json_either_validates_into_a_valid_conflist_or_is_refused_as_invalid(obj: Obj) -> None:
    mutated = mutate_multus_config(obj)
    try:
        validate_multus_config(mutated)
    except InvalidSpec:
        return
    nad = network_attachment(mutated)
    if mutated["spec"]["cniType"] == "custom":  # NB: its customCNI verbatim, which validation parsed
        json.loads(nad.get("spec", {}).get("config", "{}"))
        return
    config = json.loads(nad["spec"]["config"])
    assert config["cniVersion"] in CNI_VERSIONS
    assert isinstance(config["name"], str)
    assert config["name"]
    assert config["plugins"]
    for plugin in config["plugins"]:
        assert isinstance(plugin, dict)
        assert isinstance(plugin.get("type"), str)
        assert plugin["type"]


# --- M00036 / M00037: the agent finds a NIC's network in k8s.v1.cni.cncf.io/networks -----------------------


def pod(networks: str) -> PodContext:
    return PodContext(
        namespace="app", name="p", uid="u", node="n", annotations={"k8s.v1.cni.cncf.io/networks": networks}
    )


def test_m00036_compact_json_networks_name_each_interface() -> None:
    networks = (
        '[{"name":"macvlan-a","namespace":"kube-system","interface":"net1"},{"name":"macvlan-b","interface":"eth9"}]'
    )
    assert multus_network(pod(networks), "net1") == "kube-system/macvlan-a"
    assert multus_network(pod(networks), "eth9") == "app/macvlan-b"


def test_m00037_pretty_printed_json_networks_are_parsed_too() -> None:
    networks = '\n  [\n    {\n      "name": "macvlan-a",\n      "namespace": "kube-system"\n    }\n  ]\n'
    assert multus_network(pod(networks), "net1") == "kube-system/macvlan-a"
