"""The pod webhook's injection rules (reference §7.3, e2e H00001): networks, RDMA/SR-IOV, master-NIC and sub-ENI
resources, the refusals with Spiderpool's texts, and the namespace filter."""

from __future__ import annotations

from typing import Any

import pytest

from spider.errors import InvalidInput
from spider.podinject import (
    ANNO_NETWORK_INJECT,
    ANNO_RDMA_INJECT,
    InjectionRefused,
    PodInjectSettings,
    mutate_pod,
    namespace_selected,
    namespace_selector,
    network_refs,
    pod_patch,
)
from tests.spider.test_admission import apply_patch

NETWORKS = "k8s.v1.cni.cncf.io/networks"
DEFAULT_NETWORK = "v1.multus-cni.io/default-network"
ON = PodInjectSettings(enabled=True)


def smc(
    name: str,
    cni_type: str,
    namespace: str = "kube-system",
    *,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    **sub: Any,
) -> dict[str, Any]:
    spec_key = {"ib-sriov": "ibsriov"}.get(cni_type, cni_type)
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels:
        meta["labels"] = labels
    if annotations:
        meta["annotations"] = annotations
    return {"metadata": meta, "spec": {"cniType": cni_type, spec_key: sub}}


def pools(*names: str) -> dict[str, list[str]]:
    return {"ipv4": list(names)}


def pod(
    annotations: dict[str, str] | None = None, containers: int = 1, namespace: str = "default", **resources: Any
) -> dict[str, Any]:
    spec = [{"name": f"c{i}", "image": "alpine"} for i in range(containers)]
    if resources:
        spec[0]["resources"] = resources
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "rdma-", "namespace": namespace, "annotations": dict(annotations or {})},
        "spec": {"containers": spec},
    }


def rdma_macvlan(name: str, master: str, resource: str, value: str = "gpu", **extra: Any) -> dict[str, Any]:
    return smc(
        name,
        "macvlan",
        labels={ANNO_RDMA_INJECT: value},
        master=[master],
        rdmaResourceName=resource,
        ippools=pools(f"{name}-v4"),
        **extra,
    )


def limits(after: dict[str, Any], index: int = 0) -> dict[str, Any]:
    return dict(after["spec"]["containers"][index].get("resources", {}).get("limits", {}))


def requests(after: dict[str, Any], index: int = 0) -> dict[str, Any]:
    return dict(after["spec"]["containers"][index].get("resources", {}).get("requests", {}))


# --- H00001: RDMA resource injection ---------------------------------------------------------------------------


def test_h00001_an_annotated_pod_gets_every_labelled_network_and_one_of_each_rdma_resource() -> None:
    configs = [
        rdma_macvlan("gpu2", "ens2", "spidernet.io/shared_rdma"),
        rdma_macvlan("gpu1", "ens1", "spidernet.io/shared_rdma"),
        smc(
            "other",
            "macvlan",
            labels={ANNO_RDMA_INJECT: "cpu"},
            master=["ens9"],
            rdmaResourceName="x",
            ippools=pools("p"),
        ),
    ]
    after = mutate_pod(pod({ANNO_RDMA_INJECT: "gpu"}), {}, configs, ON)
    assert after["metadata"]["annotations"][NETWORKS] == "kube-system/gpu1,kube-system/gpu2"  # sorted by master
    assert limits(after) == {"spidernet.io/shared_rdma": "1"}
    assert "requests" not in after["spec"]["containers"][0].get("resources", {})


def test_networks_are_sorted_by_master_or_bond_or_resource_then_namespace_and_name() -> None:
    label = {ANNO_RDMA_INJECT: "v"}
    configs = [
        smc("s", "sriov", "b", labels=label, resourceName="spidernet.io/a_vf", ippools=pools("p")),
        smc(
            "bonded",
            "vlan",
            "a",
            labels=label,
            master=["eth9", "eth8"],
            bond={"name": "bond0", "mode": 1},
            rdmaResourceName="r",
            ippools=pools("p"),
        ),
        smc("m2", "macvlan", "z", labels=label, master=["eth1"], rdmaResourceName="r", ippools=pools("p")),
        smc("m1", "macvlan", "y", labels=label, master=["eth1"], rdmaResourceName="r", ippools=pools("p")),
        smc("ib", "ib-sriov", "a", labels=label, resourceName="spidernet.io/ib", ippools=pools("p")),
    ]
    after = mutate_pod(pod({ANNO_RDMA_INJECT: "v"}), {}, configs, ON)
    # "" (ib-sriov has no sort key), "bond0", "eth1" (y/m1 before z/m2), "spidernet.io/a_vf"
    assert after["metadata"]["annotations"][NETWORKS] == "a/ib,a/bonded,y/m1,z/m2,b/s"
    assert limits(after) == {"spidernet.io/ib": "1", "r": "1", "spidernet.io/a_vf": "1"}


def test_the_networks_annotation_is_overwritten_not_appended_to() -> None:
    configs = [rdma_macvlan("gpu1", "ens1", "rdma/a")]
    after = mutate_pod(pod({ANNO_RDMA_INJECT: "gpu", NETWORKS: "default/mine"}), {}, configs, ON)
    assert after["metadata"]["annotations"][NETWORKS] == "kube-system/gpu1"


def test_a_resource_some_container_already_limits_is_not_injected_again() -> None:
    configs = [rdma_macvlan("a", "ens1", "rdma/a"), rdma_macvlan("b", "ens2", "rdma/b")]
    base = pod({ANNO_RDMA_INJECT: "gpu"}, containers=2)
    base["spec"]["containers"][1]["resources"] = {"limits": {"rdma/b": "4"}}
    after = mutate_pod(base, {}, configs, ON)
    assert limits(after, 0) == {"rdma/a": "1"}
    assert limits(after, 1) == {"rdma/b": "4"}


def test_a_resource_only_requested_is_still_limited_as_spiderpool_checks_only_limits() -> None:
    configs = [rdma_macvlan("a", "ens1", "rdma/a")]
    after = mutate_pod(pod({ANNO_RDMA_INJECT: "gpu"}, requests={"rdma/a": "1"}), {}, configs, ON)
    assert limits(after) == {"rdma/a": "1"}


def test_the_namespace_annotation_applies_when_the_pod_has_none() -> None:
    configs = [rdma_macvlan("a", "ens1", "rdma/a")]
    after = mutate_pod(pod(), {ANNO_RDMA_INJECT: "gpu"}, configs, ON)
    assert after["metadata"]["annotations"][NETWORKS] == "kube-system/a"


def test_the_pods_annotation_wins_over_its_namespaces() -> None:
    configs = [rdma_macvlan("a", "ens1", "rdma/a", "mine"), rdma_macvlan("b", "ens2", "rdma/b", "theirs")]
    after = mutate_pod(pod({ANNO_RDMA_INJECT: "mine"}), {ANNO_RDMA_INJECT: "theirs"}, configs, ON)
    assert after["metadata"]["annotations"][NETWORKS] == "kube-system/a"


def test_the_rdma_annotation_is_looked_for_first_on_pod_then_namespace_before_the_network_one() -> None:
    configs = [
        rdma_macvlan("a", "ens1", "rdma/a", "x"),
        smc("n", "macvlan", labels={ANNO_NETWORK_INJECT: "x"}, master=["ens5"]),
    ]
    after = mutate_pod(pod({ANNO_NETWORK_INJECT: "x"}), {ANNO_RDMA_INJECT: "x"}, configs, ON)
    assert after["metadata"]["annotations"][NETWORKS] == "kube-system/a"


def test_network_injection_needs_a_resource_name_too_as_spiderpools_inject_pod_network_checks() -> None:
    # Spiderpool's InjectPodNetwork runs DoValidateRdmaResouce on every chosen SMC, whichever annotation chose it
    configs = [smc("n", "macvlan", "net", labels={ANNO_NETWORK_INJECT: "x"}, master=["ens5"], ippools=pools("p"))]
    with pytest.raises(InjectionRefused) as caught:
        mutate_pod(pod({ANNO_NETWORK_INJECT: "x"}), {}, configs, ON)
    assert str(caught.value) == "rdmaResourceName can not empty for spidermultusconfig net/n"


def test_an_smc_only_annotated_is_chosen_as_one_labelled_and_the_annotation_decides() -> None:
    # As written while no SMC webhook ran (the label is the webhook's copy of the annotation)
    only_annotated = smc(
        "a", "macvlan", annotations={ANNO_RDMA_INJECT: "gpu"}, master=["ens1"], rdmaResourceName="r", ippools=pools("p")
    )
    stale_label = smc(
        "b",
        "macvlan",
        labels={ANNO_RDMA_INJECT: "gpu"},
        annotations={ANNO_RDMA_INJECT: "cpu"},
        master=["ens2"],
        rdmaResourceName="r",
        ippools=pools("p"),
    )
    after = mutate_pod(pod({ANNO_RDMA_INJECT: "gpu"}), {}, [only_annotated, stale_label], ON)
    assert after["metadata"]["annotations"][NETWORKS] == "kube-system/a"


def test_the_injected_network_is_the_nad_that_cr_name_gives() -> None:
    renamed = rdma_macvlan("smc-name", "ens1", "r")
    renamed["metadata"]["annotations"] = {"multus.spidernet.io/cr-name": "nad-name"}
    after = mutate_pod(pod({ANNO_RDMA_INJECT: "gpu"}), {}, [renamed, rdma_macvlan("plain", "ens2", "r")], ON)
    assert after["metadata"]["annotations"][NETWORKS] == "kube-system/nad-name,kube-system/plain"


def test_a_pod_asking_for_nothing_is_left_alone() -> None:
    configs = [rdma_macvlan("a", "ens1", "rdma/a")]
    assert pod_patch(pod({"x": "y"}), {}, configs, ON) == []


# --- refusals, with Spiderpool's texts -------------------------------------------------------------------------


def refusal(configs: list[dict[str, Any]], annotation: str = ANNO_RDMA_INJECT) -> str:
    with pytest.raises(InjectionRefused) as caught:
        mutate_pod(pod({annotation: "gpu"}), {}, configs, ON)
    return str(caught.value)


def test_no_labelled_smc_refuses_the_pod() -> None:
    assert refusal([]) == f"no spidermultusconfigs with annotation: {ANNO_RDMA_INJECT}:gpu found"


def test_rdma_injection_refuses_an_smc_without_its_resource_name() -> None:
    bare = smc("a", "macvlan", labels={ANNO_RDMA_INJECT: "gpu"}, master=["ens1"], ippools=pools("p"))
    assert refusal([bare]) == "rdmaResourceName can not empty for spidermultusconfig kube-system/a"
    vf = smc("s", "sriov", labels={ANNO_RDMA_INJECT: "gpu"}, ippools=pools("p"))
    assert refusal([vf]) == "rdmaResourceName can not empty for spidermultusconfig kube-system/s"
    ib = smc("i", "ipoib", labels={ANNO_RDMA_INJECT: "gpu"}, ippools=pools("p"))
    assert refusal([ib]) == "rdmaResourceName can not empty for spidermultusconfig kube-system/i"


@pytest.mark.parametrize(
    "block",
    ["not a mapping", {"master": ["ens1"], "rdmaResourceName": 5, "ippools": {"ipv4": ["p"]}}],
    ids=["block-not-a-mapping", "resource-not-a-string"],
)
def test_a_stored_smc_whose_resource_name_has_the_wrong_shape_counts_as_naming_none(block: Any) -> None:
    meta = {"name": "a", "namespace": "kube-system", "labels": {ANNO_RDMA_INJECT: "gpu"}}
    config = {"metadata": meta, "spec": {"cniType": "macvlan", "macvlan": block}}
    assert refusal([config]) == "rdmaResourceName can not empty for spidermultusconfig kube-system/a"


def test_rdma_injection_refuses_an_smc_without_pools() -> None:
    nopools = smc("a", "macvlan", labels={ANNO_RDMA_INJECT: "gpu"}, master=["ens1"], rdmaResourceName="r")
    assert refusal([nopools]) == "no any ippools config for spidermultusconfig kube-system/a"
    empty = smc("b", "ipoib", labels={ANNO_RDMA_INJECT: "gpu"}, master="ib0", ippools={"ipv4": [], "ipv6": []})
    assert refusal([empty]) == "no any ippools config for spidermultusconfig kube-system/b"


def test_network_injection_needs_pools_as_rdma_injection_does() -> None:
    named = smc("a", "sriov", labels={ANNO_NETWORK_INJECT: "gpu"}, resourceName="vf")
    assert refusal([named], ANNO_NETWORK_INJECT) == "no any ippools config for spidermultusconfig kube-system/a"


@pytest.mark.parametrize("cni_type", ["ovs", "custom"])
def test_ovs_and_custom_smcs_cannot_be_injected(cni_type: str) -> None:
    config = smc("a", cni_type, labels={ANNO_NETWORK_INJECT: "gpu"}, bridge="br0")
    assert refusal([config], ANNO_NETWORK_INJECT) == f"RDMA resource injection does not support cniType: {cni_type}"


def test_one_bad_smc_among_good_ones_refuses_the_whole_pod() -> None:
    good = rdma_macvlan("a", "ens1", "r")
    bad = smc("b", "macvlan", labels={ANNO_RDMA_INJECT: "gpu"}, master=["ens2"], ippools=pools("p"))
    assert "kube-system/b" in refusal([good, bad])


# --- master NIC and sub-ENI ------------------------------------------------------------------------------------


def test_every_distinct_master_of_the_referenced_smcs_gets_a_nic_limit_and_request() -> None:
    configs = [
        smc("m", "macvlan", "default", master=["nrpdm0"]),
        smc("bonded", "ipvlan", "net", master=["eth1", "eth2"], bond={"name": "bond0", "mode": 1}),
        smc("again", "vlan", "net", master=["eth1"], vlanID=5),
    ]
    annotations = {DEFAULT_NETWORK: "m", NETWORKS: "net/bonded@net1, net/again"}
    after = mutate_pod(pod(annotations), {}, configs, PodInjectSettings(enabled=True, master_nic=True))
    wanted = {f"spidernet.io/{nic}-nic": "1" for nic in ("nrpdm0", "eth1", "eth2")}
    assert limits(after) == wanted
    assert requests(after) == wanted


def test_master_nics_are_not_injected_without_master_nic_rules_or_when_already_asked_for() -> None:
    configs = [smc("m", "macvlan", "default", master=["eth1"])]
    assert pod_patch(pod({NETWORKS: "m"}), {}, configs, ON) == []
    asked = pod({NETWORKS: "m"}, requests={"spidernet.io/eth1-nic": "2"})
    assert pod_patch(asked, {}, configs, PodInjectSettings(enabled=True, master_nic=True)) == []


def test_master_nics_follow_the_networks_the_injection_just_wrote() -> None:
    configs = [rdma_macvlan("a", "ens1", "rdma/a")]
    after = mutate_pod(pod({ANNO_RDMA_INJECT: "gpu"}), {}, configs, PodInjectSettings(enabled=True, master_nic=True))
    assert limits(after) == {"rdma/a": "1", "spidernet.io/ens1-nic": "1"}


def test_references_by_nad_name_json_form_or_to_foreign_nads_are_resolved_or_skipped() -> None:
    renamed = smc("smc-a", "macvlan", "net", annotations={"multus.spidernet.io/cr-name": "nad-a"}, master=["eth3"])
    annotations = {NETWORKS: '[{"name": "nad-a", "namespace": "net"}, {"name": "handmade"}]'}
    after = mutate_pod(pod(annotations), {}, [renamed], PodInjectSettings(enabled=True, master_nic=True))
    assert limits(after) == {"spidernet.io/eth3-nic": "1"}


def test_sub_eni_slots_count_the_referenced_vlan_smcs_in_auto_mode() -> None:
    configs = [
        smc("auto1", "vlan", "default", master=["eth0"], vlanMode="auto"),
        smc("auto2", "vlan", "default", master=["eth0"], vlanMode="auto"),
        smc("manual", "vlan", "default", master=["eth0"], vlanMode="manual", vlanID=7),
    ]
    settings = PodInjectSettings(enabled=True, sub_eni=True, sub_eni_resource="spidernet.io/sub-eni")
    after = mutate_pod(pod({NETWORKS: "auto1,auto2,manual"}), {}, configs, settings)
    assert limits(after) == {"spidernet.io/sub-eni": "2"}
    assert requests(after) == {"spidernet.io/sub-eni": "2"}
    already = pod({NETWORKS: "auto1"}, limits={"spidernet.io/sub-eni": "1"})
    assert pod_patch(already, {}, configs, settings) == []
    assert pod_patch(pod({NETWORKS: "manual"}), {}, configs, settings) == []


def test_an_unreadable_networks_annotation_is_a_refusal_when_it_must_be_read() -> None:
    with pytest.raises(InvalidInput, match="parsePodNetworkAnnotation"):
        mutate_pod(pod({NETWORKS: "[{not json"}), {}, [], PodInjectSettings(enabled=True, master_nic=True))
    assert network_refs(" a/b@net1 ,c ,", "ns") == [("a", "b"), ("ns", "c")]


# --- the patch -------------------------------------------------------------------------------------------------


def test_the_patch_turns_the_pod_into_the_mutated_pod() -> None:
    configs = [rdma_macvlan("a", "ens1", "rdma/a"), rdma_macvlan("b", "ens2", "rdma/b")]
    settings = PodInjectSettings(enabled=True, master_nic=True)
    for before in (pod({ANNO_RDMA_INJECT: "gpu"}), pod({ANNO_RDMA_INJECT: "gpu"}, limits={"cpu": "1"})):
        ops = pod_patch(before, {}, configs, settings)
        assert ops
        assert apply_patch(before, ops) == mutate_pod(before, {}, configs, settings)


def test_a_pod_without_annotations_or_metadata_namespace_is_patched_with_the_reviews_namespace() -> None:
    before = pod(namespace="")
    del before["metadata"]["annotations"]
    del before["metadata"]["namespace"]
    configs = [
        smc(
            "m", "macvlan", "team", master=["eth1"], labels={ANNO_NETWORK_INJECT: "x"}, rdmaResourceName="r",
            ippools=pools("p"),
        )
    ]  # fmt: skip
    ops = pod_patch(
        before, {ANNO_NETWORK_INJECT: "x"}, configs, PodInjectSettings(enabled=True, master_nic=True), "team"
    )
    after = apply_patch(before, ops)
    assert after["metadata"]["annotations"] == {NETWORKS: "team/m"}
    assert "namespace" not in after["metadata"]
    assert limits(after) == {"r": "1", "spidernet.io/eth1-nic": "1"}


# --- the namespace filter --------------------------------------------------------------------------------------


def test_the_default_filter_excludes_spiderpools_system_namespaces_only() -> None:
    for namespace in ("kube-system", "kube-public", "spiderpool", "metallb-system", "istio-system"):
        assert not namespace_selected(ON, namespace)
    assert namespace_selected(ON, "default")
    assert namespace_selector(ON) == {
        "matchExpressions": [
            {
                "key": "kubernetes.io/metadata.name",
                "operator": "NotIn",
                "values": ["kube-system", "kube-public", "spiderpool", "metallb-system", "istio-system"],
            }
        ]
    }


def test_an_include_list_limits_mutation_to_its_namespaces_and_exclusion_still_wins() -> None:
    settings = PodInjectSettings(enabled=True, namespaces_exclude=("b",), namespaces_include=("a", "b"))
    assert [n for n in ("a", "b", "c") if namespace_selected(settings, n)] == ["a"]
    assert namespace_selector(settings)["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["b"]},
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["a", "b"]},
    ]
    assert namespace_selector(PodInjectSettings(namespaces_exclude=())) == {"matchExpressions": []}


def test_a_pod_of_the_wrong_shape_is_mutated_or_refused_but_never_crashes() -> None:
    configs = [rdma_macvlan("a", "ens1", "rdma/a")]
    shapes: list[dict[str, Any]] = [
        {"metadata": "x", "spec": 7},
        {"metadata": {"annotations": {ANNO_RDMA_INJECT: 5}}, "spec": {"containers": "c"}},
        {"spec": {"containers": [3, {"resources": {"limits": []}}]}},
        {"metadata": {"annotations": "x"}, "spec": {"containers": [{"resources": "none"}]}},
    ]
    for shape in shapes:
        after = mutate_pod(shape, {ANNO_RDMA_INJECT: "gpu"}, configs, PodInjectSettings(enabled=True, master_nic=True))
        assert after["metadata"]["annotations"][NETWORKS] == "kube-system/a"
