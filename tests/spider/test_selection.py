"""``spider.selection``: where a pod's pools come from, which survive the filters, and in which order.

Tests named ``test_<id>_...`` check the selection side of the Spiderpool e2e case of that ID (reference §10).
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import re
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from spider.autopool import LABEL_APP_NAME, LABEL_APP_UID, AppRef, app_affinity_labels
from spider.errors import InvalidInput, NoAvailablePool, PoolNotFound
from spider.pool import IPPool, Route
from spider.selection import (
    ANNO_IPPOOL,
    ANNO_IPPOOLS,
    ANNO_MULTUS_DEFAULT,
    ANNO_MULTUS_NETWORKS,
    ANNO_NS_DEFAULT_V4,
    ANNO_NS_DEFAULT_V6,
    ANNO_ROUTES,
    ANNO_SUBNET,
    ANNO_SUBNETS,
    AUTO_POOL_DISABLED,
    ORPHAN_POD,
    SOURCE_SUBNET,
    NicRequest,
    PodContext,
    candidates,
    custom_routes,
    expand,
    multus_network,
    requested_pools,
    subnet_claim,
)


def make_pool(name: str, subnet: str = "10.0.0.0/24", **spec: Any) -> IPPool:
    """A pool from its stored form; ``terminating=True`` sets a deletion timestamp."""
    meta: dict[str, Any] = {"name": name}
    if spec.pop("terminating", False):
        meta["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    net = ipaddress.ip_network(subnet)
    return IPPool.from_object({"metadata": meta, "spec": {"subnet": subnet, "ips": [str(net[10])], **spec}})


def by_name(*pools: IPPool) -> dict[str, IPPool]:
    return {p.name: p for p in pools}


def make_pod(**kw: Any) -> PodContext:
    kw.setdefault("namespace", "ns1")
    return PodContext(name="pod1", uid="uid-1", node=kw.pop("node", "node-1"), **kw)


def ippools(*items: dict[str, Any]) -> dict[str, str]:
    return {ANNO_IPPOOLS: json.dumps(list(items))}


def ippool(**item: Any) -> dict[str, str]:
    return {ANNO_IPPOOL: json.dumps(item)}


def ns_defaults(v4: list[str] | None = None, v6: list[str] | None = None) -> dict[str, str]:
    out = {}
    if v4 is not None:
        out[ANNO_NS_DEFAULT_V4] = json.dumps(v4)
    if v6 is not None:
        out[ANNO_NS_DEFAULT_V6] = json.dumps(v6)
    return out


def names(pools: list[IPPool]) -> list[str]:
    return [p.name for p in pools]


# Every source names its own pool; a cluster default pool always exists.
POOLS = by_name(
    make_pool("from-ippools"),
    make_pool("from-ippool"),
    make_pool("from-namespace"),
    make_pool("from-cni"),
    make_pool("cluster-default", default=True),
    make_pool("cluster-default-v6", "fd00::/120", default=True),
)
SOURCES = ("ippools", "ippool", "namespace", "cni")


def pod_with(present: set[str]) -> tuple[PodContext, tuple[str, ...]]:
    annotations: dict[str, str] = {}
    if "ippools" in present:
        annotations |= ippools({"interface": "eth0", "ipv4": ["from-ippools"]})
    if "ippool" in present:
        annotations |= ippool(ipv4=["from-ippool"])
    ns = ns_defaults(v4=["from-namespace"]) if "namespace" in present else {}
    cni = ("from-cni",) if "cni" in present else ()
    return make_pod(annotations=annotations, namespace_annotations=ns), cni


def selected(pod: PodContext, cni_v4: tuple[str, ...] = (), cni_v6: tuple[str, ...] = ()) -> dict[int, list[str]]:
    """The candidate pool names per family for eth0."""
    (request,) = requested_pools(pod, "eth0", cni_v4, cni_v6)
    return {v: names(candidates(request, v, pod, POOLS)) for v in (4, 6)}


# --- precedence ----------------------------------------------------------------------------------------

PRESENCE = [
    pytest.param(set(combo), id="+".join(combo) or "none")
    for n in range(len(SOURCES) + 1)
    for combo in itertools.combinations(SOURCES, n)
]


@pytest.mark.parametrize("present", PRESENCE)
def test_the_first_pool_source_present_wins_entirely(present: set[str]) -> None:
    pod, cni = pod_with(present)
    winner = next((s for s in SOURCES if s in present), None)
    expected = {4: [f"from-{winner}"], 6: []} if winner else {4: ["cluster-default"], 6: ["cluster-default-v6"]}
    assert selected(pod, cni) == expected


@pytest.mark.parametrize(
    ("present", "winner"),
    [
        pytest.param({"ippool", "namespace", "cni"}, "from-ippool", id="pod-annotation"),
        pytest.param({"namespace", "cni"}, "from-namespace", id="namespace-annotation"),
        pytest.param({"cni"}, "from-cni", id="cni-configuration"),
    ],
)
def test_a00004_pod_annotation_beats_namespace_annotation_beats_cni_configuration(
    present: set[str], winner: str
) -> None:
    pod, cni = pod_with(present)
    assert selected(pod, cni)[4] == [winner]


def test_a00005_the_ippools_annotation_beats_the_ippool_annotation() -> None:
    pod, _ = pod_with({"ippools", "ippool"})
    assert selected(pod)[4] == ["from-ippools"]


def test_a00006_the_namespace_annotation_beats_the_cluster_default_pools() -> None:
    pod, _ = pod_with({"namespace"})
    assert selected(pod) == {4: ["from-namespace"], 6: []}


def test_a_source_naming_one_family_does_not_inherit_the_other_from_a_lower_source() -> None:
    pod = make_pod(namespace_annotations=ns_defaults(v4=["from-namespace"]))
    (request,) = requested_pools(pod, "eth0", cni_v4=("from-cni",), cni_v6=("cluster-default-v6",))
    assert request.ipv6 == ()
    assert candidates(request, 6, pod, POOLS) == []


def test_each_request_says_which_source_it_came_from() -> None:
    expected = {
        "ippools": ANNO_IPPOOLS,
        "ippool": ANNO_IPPOOL,
        "namespace": "namespace annotations",
        "cni": "CNI configuration",
    }
    for source, label in expected.items():
        pod, cni = pod_with({source})
        assert requested_pools(pod, "eth0", cni)[0].source == label
    assert requested_pools(make_pod(), "eth0")[0].source == "cluster default pools"


def test_cluster_default_pools_are_tried_in_name_order() -> None:
    pools = by_name(make_pool("z", default=True), make_pool("a", default=True), make_pool("m"))
    (request,) = requested_pools(make_pod(), "eth0")
    assert names(candidates(request, 4, make_pod(), pools)) == ["a", "z"]


def test_no_cluster_default_pool_of_a_family_means_no_candidates_for_it() -> None:
    (request,) = requested_pools(make_pod(), "eth0")
    assert candidates(request, 6, make_pod(), by_name(make_pool("v4", default=True))) == []


DEPLOY = AppRef("apps/v1", "Deployment", "ns1", "web", "0000-1111-abcde")


def auto_pool(name: str, app: AppRef = DEPLOY, subnet: str = "10.0.0.0/24") -> IPPool:
    """An auto-created pool of ``app``: its podAffinity names the application, not pod labels."""
    net = ipaddress.ip_network(subnet)
    meta = {"name": name, "labels": {LABEL_APP_NAME: app.name, LABEL_APP_UID: app.uid}}
    spec = {"subnet": subnet, "ips": [str(net[10])], "podAffinity": {"matchLabels": app_affinity_labels(app)}}
    return IPPool.from_object({"metadata": meta, "spec": spec})


SUBNET_V4 = {ANNO_SUBNET: json.dumps({"ipv4": ["s4"]})}


def test_subnet_annotations_name_the_auto_pools_found_for_the_nic_and_beat_every_other_source() -> None:
    pod = make_pod(
        annotations={**SUBNET_V4, **ippool(ipv4=["from-ippool"])},
        app=DEPLOY,
        auto_pools={("eth0", 4): "auto4-web-eth0-abcde"},
    )
    (request,) = requested_pools(pod, "eth0")
    assert (request.nic, request.ipv4, request.ipv6, request.source) == (
        "eth0",
        ("auto4-web-eth0-abcde",),
        (),
        SOURCE_SUBNET,
    )


def test_subnets_annotation_gives_each_nic_its_own_auto_pools_and_only_the_nic_asked_for() -> None:
    annotations = {
        ANNO_SUBNETS: json.dumps([{"interface": "eth0", "ipv4": ["a4"]}, {"interface": "net1", "ipv6": ["b6"]}])
    }
    found = {("eth0", 4): "auto4-web-eth0-abcde", ("net1", 6): "auto6-web-net1-abcde"}
    pod = make_pod(annotations=annotations, app=DEPLOY, auto_pools=found)
    assert [(r.nic, r.ipv4, r.ipv6) for r in requested_pools(pod, "net1")] == [("net1", (), ("auto6-web-net1-abcde",))]
    claim = subnet_claim(pod, "net1")
    assert (claim.interface, claim.versions, claim.subnet(6)) == ("net1", (6,), "b6")


def test_a_nic_the_subnets_annotation_does_not_list_has_no_pool() -> None:
    pod = make_pod(annotations={ANNO_SUBNETS: json.dumps([{"interface": "eth0", "ipv4": ["a4"]}])}, app=DEPLOY)
    with pytest.raises(NoAvailablePool, match="net1 is not listed"):
        requested_pools(pod, "net1")


def test_i00023_subnet_annotations_on_an_orphan_pod_are_refused_with_spiderpools_text() -> None:
    with pytest.raises(InvalidInput, match=re.escape(ORPHAN_POD)):
        requested_pools(make_pod(annotations=SUBNET_V4), "eth0")


def test_i00024_subnet_annotations_are_refused_while_the_auto_pool_feature_is_off() -> None:
    pod = make_pod(annotations=SUBNET_V4, app=DEPLOY, enable_auto_pool=False)
    with pytest.raises(InvalidInput, match=re.escape(AUTO_POOL_DISABLED)):
        requested_pools(pod, "eth0")


def test_subnet_annotations_are_ignored_while_the_spider_subnet_feature_is_off() -> None:
    pod = make_pod(annotations={**SUBNET_V4, **ippool(ipv4=["from-ippool"])}, enable_spider_subnet=False)
    assert [r.source for r in requested_pools(pod, "eth0")] == [ANNO_IPPOOL]


def test_an_auto_pool_not_found_for_a_family_the_annotation_asks_for_is_no_available_pool() -> None:
    pod = make_pod(annotations={ANNO_SUBNET: json.dumps({"ipv4": ["s4"], "ipv6": ["s6"]})}, app=DEPLOY)
    pod = attrs.evolve(pod, auto_pools={("eth0", 4): "auto4-web-eth0-abcde"})
    with pytest.raises(NoAvailablePool, match="'s6'"):
        requested_pools(pod, "eth0")


def test_i00020_an_auto_pool_serves_only_the_application_it_was_made_for() -> None:
    pool = auto_pool("auto4-web-eth0-abcde")
    request = NicRequest("eth0", (pool.name,))
    assert names(candidates(request, 4, make_pod(app=DEPLOY), by_name(pool))) == [pool.name]
    other = AppRef("apps/v1", "StatefulSet", "ns1", "web", "9999")  # same name, another kind (I00016)
    with pytest.raises(NoAvailablePool, match="another application"):
        candidates(request, 4, make_pod(app=other), by_name(pool))
    with pytest.raises(NoAvailablePool, match="another application"):  # an orphan pod is its own application
        candidates(request, 4, make_pod(labels=dict(app_affinity_labels(DEPLOY))), by_name(pool))


# --- malformed annotations -----------------------------------------------------------------------------

MALFORMED = [
    pytest.param({ANNO_IPPOOL: "{"}, "not valid JSON", id="ippool-not-json"),
    pytest.param({ANNO_IPPOOL: "[]"}, "JSON object", id="ippool-not-an-object"),
    pytest.param(ippool(ipv4="p1"), "list of pool names", id="ippool-names-not-a-list"),
    pytest.param({ANNO_IPPOOLS: "nope"}, "not valid JSON", id="ippools-not-json"),
    pytest.param({ANNO_IPPOOLS: "[]"}, "non-empty list", id="ippools-empty"),
    pytest.param({ANNO_IPPOOLS: "{}"}, "non-empty list", id="ippools-an-object"),
    pytest.param({ANNO_IPPOOLS: '["eth0"]'}, "must be objects", id="ippools-items-not-objects"),
    pytest.param(ippools({"ipv4": [1]}), "list of pool names", id="ippools-names-not-strings"),
    pytest.param(
        ippools({"interface": 1, "ipv4": ["a"]}), "interface must be a string", id="ippools-interface-a-number"
    ),
]


@pytest.mark.parametrize("value", ["false", "no", 0, 0.5, [0], {"x": 0}])
def test_a_cleangateway_that_is_not_true_or_false_is_wrong_input_not_read_by_its_truthiness(value: object) -> None:
    # NB: a Go bool in Spiderpool: "false" does not decode (here bool("false") would drop the default route)
    pod = make_pod(annotations=ippools({"interface": "eth0", "ipv4": ["a"], "cleangateway": value}))
    with pytest.raises(InvalidInput, match=re.escape(f"{ANNO_IPPOOLS}[0].cleangateway must be true or false")):
        requested_pools(pod, "eth0")


def test_annotation_keys_match_whatever_their_case_as_gos_decoder_matches_them() -> None:
    # Spiderpool's e2e A00003 writes "cleanGateway"; Go also folds U+017F (long s) to s
    pod = make_pod(
        annotations={
            **ippools({"Interface": "eth0", "IPv4": ["a"], "cleanGateway": True}),
            ANNO_ROUTES: json.dumps([{"D\u017ft": "10.9.0.0/16", "GW": "10.0.0.1"}]),
        }
    )
    assert requested_pools(pod, "eth0") == [NicRequest("eth0", ("a",), (), True, ANNO_IPPOOLS)]
    assert custom_routes(pod) == (Route("10.9.0.0/16", "10.0.0.1"),)
    (request,) = requested_pools(make_pod(annotations={ANNO_IPPOOL: '{"IPV6": ["b"]}'}), "eth0")
    assert request.ipv6 == ("b",)


def test_a_key_spelt_as_the_field_wins_over_another_case_of_it() -> None:
    pod = make_pod(annotations=ippools({"interface": "eth0", "ipv4": ["a"], "IPV4": ["b"]}))
    assert requested_pools(pod, "eth0")[0].ipv4 == ("a",)


@pytest.mark.parametrize(("annotations", "why"), MALFORMED)
def test_a_malformed_pool_annotation_is_wrong_input(annotations: dict[str, str], why: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(why)):
        requested_pools(make_pod(annotations=annotations), "eth0")


@pytest.mark.parametrize("value", ["p1", '"p1"', '{"a": 1}'])
def test_a_malformed_namespace_default_is_wrong_input(value: str) -> None:
    pod = make_pod(namespace_annotations={ANNO_NS_DEFAULT_V4: value})
    with pytest.raises(InvalidInput, match=re.escape(ANNO_NS_DEFAULT_V4)):
        requested_pools(pod, "eth0")


@pytest.mark.parametrize("value", ["[]", "null"])
def test_an_empty_namespace_default_leaves_the_pools_to_the_next_source(value: str) -> None:
    # Spiderpool's getPoolFromNS returns no pools when both lists are empty: the CNI configuration decides
    pod = make_pod(namespace_annotations={ANNO_NS_DEFAULT_V4: value, ANNO_NS_DEFAULT_V6: "[]"})
    assert requested_pools(pod, "eth0", ("from-cni",)) == [
        NicRequest("eth0", ("from-cni",), source="CNI configuration")
    ]


@pytest.mark.parametrize(
    ("annotations", "ns", "cni"),
    [
        pytest.param(ippool(ipv4=["a", "b", "a"]), {}, (), id="ippool"),
        pytest.param(ippools({"interface": "eth0", "ipv6": ["a", "a"]}), {}, (), id="ippools"),
        pytest.param({}, ns_defaults(v4=["a", "a"]), (), id="namespace"),
        pytest.param({}, {}, ("a", "a"), id="cni"),
    ],
)
def test_a_pool_named_twice_for_one_family_is_wrong_input(
    annotations: dict[str, str], ns: dict[str, str], cni: tuple[str, ...]
) -> None:
    pod = make_pod(annotations=annotations, namespace_annotations=ns)
    with pytest.raises(InvalidInput, match="duplicate IPPool"):
        requested_pools(pod, "eth0", cni, cni)


def test_an_unknown_pool_is_pool_not_found() -> None:
    request = NicRequest("eth0", ipv4=("from-cni", "missing"))
    with pytest.raises(PoolNotFound) as info:
        candidates(request, 4, make_pod(), POOLS)
    assert info.value.pool == "missing"


@pytest.mark.parametrize("version", [4, 6])
def test_a00003_an_ippool_annotation_naming_a_missing_pool_is_pool_not_found(version: int) -> None:
    pod = make_pod(annotations=ippool(interface="eth0", ipv4=["IPamNotExistedPool"], ipv6=["IPamNotExistedPool"]))
    (request,) = requested_pools(pod, "eth0")
    with pytest.raises(PoolNotFound, match="IPamNotExistedPool"):
        candidates(request, version, pod, POOLS)


# --- glob patterns -------------------------------------------------------------------------------------

GLOB_POOLS = by_name(
    make_pool("blue-2"),
    make_pool("blue-1"),
    make_pool("red"),
    make_pool("blue-v6", "fd00::/120"),
    make_pool("green-a"),
)


def test_glob_patterns_expand_in_place_and_keep_the_written_order() -> None:
    assert expand(["red", "blue-*", "green-?"], 4, GLOB_POOLS) == ["red", "blue-1", "blue-2", "green-a"]


def test_glob_patterns_match_only_pools_of_the_requested_family() -> None:
    assert expand(["blue-*"], 6, GLOB_POOLS) == ["blue-v6"]


def test_glob_patterns_support_character_classes() -> None:
    assert expand(["blue-[2]"], 4, GLOB_POOLS) == ["blue-2"]


@pytest.mark.parametrize(
    ("pattern", "matched"),
    [
        pytest.param("v4-[^a]", ["v4-b"], id="caret-negates"),
        pytest.param("v4-[!a]", ["v4-a"], id="bang-is-a-literal"),
        pytest.param("v4-[a-b]", ["v4-a", "v4-b"], id="range"),
        pytest.param("v4-[b-a]", [], id="reversed-range-matches-nothing"),
        pytest.param("v4-[^b-a]", ["v4-a", "v4-b"], id="negated-reversed-range-matches-anything"),
        pytest.param("v4\\-?", ["v4-a", "v4-b"], id="backslash-escapes"),
        pytest.param("v4-[\\]]", [], id="escaped-bracket-in-a-class"),
    ],
)
def test_glob_patterns_follow_gos_filepath_match(pattern: str, matched: list[str]) -> None:
    assert expand([pattern], 4, by_name(make_pool("v4-a"), make_pool("v4-b"))) == matched


@pytest.mark.parametrize("pattern", ["p-[", "p-[]", "p-[^]", "p-[a-]", "p-[-a]", "p-[a", "p*\\"])
def test_a_malformed_glob_pattern_is_wrong_input_not_a_pattern_matching_nothing(pattern: str) -> None:
    with pytest.raises(InvalidInput, match="syntax error in pattern"):
        expand([pattern], 4, GLOB_POOLS)


def test_a_pool_matched_twice_by_patterns_is_tried_once() -> None:
    assert expand(["blue-2", "blue-*"], 4, GLOB_POOLS) == ["blue-2", "blue-1"]


def test_a00007_a_wildcard_in_the_namespace_annotation_selects_the_matching_pools() -> None:
    pod = make_pod(namespace_annotations=ns_defaults(v4=["blue-*"], v6=["blue-*"]))
    (request,) = requested_pools(pod, "eth0")
    assert names(candidates(request, 4, pod, GLOB_POOLS)) == ["blue-1", "blue-2"]
    assert names(candidates(request, 6, pod, GLOB_POOLS)) == ["blue-v6"]


def test_a00015_a_wildcard_in_the_ippools_annotation_selects_the_matching_pools() -> None:
    pod = make_pod(annotations=ippools({"interface": "eth0", "ipv4": ["gre*", "red"]}))
    (request,) = requested_pools(pod, "eth0")
    assert names(candidates(request, 4, pod, GLOB_POOLS)) == ["green-a", "red"]


# --- filters -------------------------------------------------------------------------------------------


def reject_reason(pool: IPPool, pod: PodContext | None = None, version: int = 4) -> str:
    """The NoAvailablePool reason for a request naming only ``pool``."""
    with pytest.raises(NoAvailablePool) as info:
        candidates(NicRequest("eth0", ipv4=(pool.name,), ipv6=(pool.name,)), version, pod or make_pod(), by_name(pool))
    assert (info.value.nic, info.value.version) == ("eth0", version)
    return info.value.reason


def kept(pool: IPPool, pod: PodContext) -> bool:
    return names(candidates(NicRequest("eth0", ipv4=(pool.name,)), 4, pod, by_name(pool))) == [pool.name]


def test_d00005_a_disabled_pool_is_filtered_out() -> None:
    assert "p: disabled" in reject_reason(make_pool("p", disable=True))


def test_a_terminating_pool_is_filtered_out() -> None:
    assert "p: terminating" in reject_reason(make_pool("p", terminating=True))


def test_a_pool_of_the_other_family_is_filtered_out() -> None:
    assert "p: is IPv6" in reject_reason(make_pool("p", "fd00::/120"), version=4)
    assert "q: is IPv4" in reject_reason(make_pool("q"), version=6)


def test_d00011_a_pool_whose_node_name_lists_the_pods_node_is_kept() -> None:
    assert kept(make_pool("p", nodeName=["node-0", "node-1"]), make_pod(node="node-1"))


def test_d00012_a_pool_whose_node_name_misses_the_pods_node_is_filtered_out() -> None:
    reason = reject_reason(make_pool("p", nodeName=["node-0"]), make_pod(node="node-1"))
    assert "p: node 'node-1' not in nodeName" in reason


def test_d00013_node_name_overrides_node_affinity() -> None:
    pool = make_pool("p", nodeName=["node-1"], nodeAffinity={"matchLabels": {"zone": "b"}})
    assert kept(pool, make_pod(node="node-1", node_labels={"zone": "a"}))


def test_d00014_a_pool_whose_namespace_name_lists_the_pods_namespace_is_kept() -> None:
    assert kept(make_pool("p", namespaceName=["ns1"]), make_pod(namespace="ns1"))


def test_d00015_a_pool_whose_namespace_name_misses_the_pods_namespace_is_filtered_out() -> None:
    reason = reject_reason(make_pool("p", namespaceName=["other"]), make_pod(namespace="ns1"))
    assert "p: namespace 'ns1' not in namespaceName" in reason


def test_d00016_namespace_name_overrides_namespace_affinity() -> None:
    pool = make_pool("p", namespaceName=["ns1"], namespaceAffinity={"matchLabels": {"team": "b"}})
    assert kept(pool, make_pod(namespace="ns1", namespace_labels={"team": "a"}))


def test_l00001_a_pool_whose_node_affinity_matches_the_node_is_kept() -> None:
    pool = make_pool("p", nodeAffinity={"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]})
    assert kept(pool, make_pod(node_labels={"zone": "a"}))


def test_l00002_a_pool_whose_node_affinity_does_not_match_the_node_is_filtered_out() -> None:
    pool = make_pool("p", nodeAffinity={"matchLabels": {"zone": "a"}})
    assert "p: nodeAffinity does not match node 'node-1'" in reject_reason(pool, make_pod(node_labels={"zone": "b"}))


def test_l00003_a_pool_whose_namespace_affinity_matches_the_namespace_is_kept() -> None:
    pool = make_pool("p", namespaceAffinity={"matchLabels": {"team": "a"}})
    assert kept(pool, make_pod(namespace_labels={"team": "a"}))


def test_l00004_a_pool_whose_namespace_affinity_does_not_match_the_namespace_is_filtered_out() -> None:
    pool = make_pool("p", namespaceAffinity={"matchLabels": {"team": "a"}})
    reason = reject_reason(pool, make_pod(namespace_labels={}))
    assert "p: namespaceAffinity does not match namespace 'ns1'" in reason


def test_l00005_a_pool_whose_pod_affinity_matches_the_pod_is_kept() -> None:
    pool = make_pool("p", podAffinity={"matchLabels": {"app": "web"}})
    assert kept(pool, make_pod(labels={"app": "web", "tier": "x"}))


def test_l00006_a_pool_whose_pod_affinity_does_not_match_the_pod_is_filtered_out() -> None:
    pool = make_pool("p", podAffinity={"matchLabels": {"app": "web"}})
    assert "p: podAffinity does not match" in reject_reason(pool, make_pod(labels={"app": "db"}))


def test_d00009_a_pool_whose_multus_name_is_the_nics_network_is_kept() -> None:
    pool = make_pool("p", multusName=["macvlan"])  # no namespace: the agent's
    assert kept(pool, make_pod(annotations={ANNO_MULTUS_DEFAULT: "kube-system/macvlan"}))


def test_d00010_a_pool_whose_multus_name_is_not_the_nics_network_is_filtered_out() -> None:
    pool = make_pool("p", multusName=["kube-system/macvlan"])
    reason = reject_reason(pool, make_pod(annotations={ANNO_MULTUS_DEFAULT: "kube-system/ipvlan"}))
    assert "p: multusName ['kube-system/macvlan'] does not match the NIC's network kube-system/ipvlan" in reason


def test_a_second_nic_finds_its_network_in_the_networks_annotation_by_position() -> None:
    pod = make_pod(annotations={ANNO_MULTUS_NETWORKS: "kube-system/macvlan, ns1/ipvlan"})
    pools = by_name(make_pool("p", multusName=["ns1/ipvlan"]))
    assert names(candidates(NicRequest("net2", ipv4=("p",)), 4, pod, pools)) == ["p"]
    with pytest.raises(NoAvailablePool):
        candidates(NicRequest("net1", ipv4=("p",)), 4, pod, pools)


def test_an_empty_affinity_matches_everything() -> None:
    pool = make_pool("p", nodeAffinity={}, namespaceAffinity={}, podAffinity={})
    assert kept(pool, make_pod())


def test_no_available_pool_names_every_pool_and_why_it_was_filtered_out() -> None:
    pools = by_name(
        make_pool("off", disable=True),
        make_pool("elsewhere", nodeName=["node-9"]),
        make_pool("v6", "fd00::/120"),
    )
    request = NicRequest("net1", ipv4=("off", "elsewhere", "v6"))
    with pytest.raises(NoAvailablePool) as info:
        candidates(request, 4, make_pod(), pools)
    reason = info.value.reason
    assert "['off', 'elsewhere', 'v6']" in reason
    assert "off: disabled" in reason
    assert "elsewhere: node 'node-1' not in nodeName" in reason
    assert "v6: is IPv6" in reason
    assert "'net1'" in str(info.value)


def test_filtered_pools_are_dropped_and_the_rest_kept_in_order() -> None:
    pools = by_name(make_pool("a"), make_pool("off", disable=True), make_pool("b"))
    request = NicRequest("eth0", ipv4=("b", "off", "a"))
    assert names(candidates(request, 4, make_pod(), pools)) == ["b", "a"]


def test_a_family_the_request_does_not_name_has_no_candidates() -> None:
    assert candidates(NicRequest("eth0", ipv4=("from-cni",)), 6, make_pod(), POOLS) == []


# --- ordering ------------------------------------------------------------------------------------------

# Spiderpool's ByPoolPriority (reference §2.5), most preferred first.
PRIORITY_FIELDS = ("podAffinity", "nodeName", "nodeAffinity", "namespaceName", "namespaceAffinity", "multusName")
MATCHING: dict[str, Any] = {
    "podAffinity": {"matchLabels": {"app": "web"}},
    "nodeName": ["node-1"],
    "nodeAffinity": {"matchLabels": {"zone": "a"}},
    "namespaceName": ["ns1"],
    "namespaceAffinity": {"matchLabels": {"team": "a"}},
    "multusName": ["kube-system/macvlan"],
}
MATCHED_POD = make_pod(
    labels={"app": "web"},
    node_labels={"zone": "a"},
    namespace_labels={"team": "a"},
    annotations={ANNO_MULTUS_DEFAULT: "kube-system/macvlan"},
)


def test_pools_are_ordered_by_spiderpool_priority() -> None:
    plain = make_pool("plain")
    pools = [make_pool(f"by-{field}", **{field: MATCHING[field]}) for field in PRIORITY_FIELDS]
    request = NicRequest("eth0", ipv4=tuple(p.name for p in [plain, *reversed(pools)]))
    got = names(candidates(request, 4, MATCHED_POD, by_name(plain, *pools)))
    assert got == [p.name for p in pools] + ["plain"]


def test_node_name_ranks_above_node_affinity_even_when_listed_later() -> None:
    pools = by_name(make_pool("aff", nodeAffinity=MATCHING["nodeAffinity"]), make_pool("name", nodeName=["node-1"]))
    request = NicRequest("eth0", ipv4=("aff", "name"))
    assert names(candidates(request, 4, MATCHED_POD, pools)) == ["name", "aff"]


@st.composite
def prioritised_pools(draw: st.DrawFn) -> list[tuple[str, frozenset[str]]]:
    """Distinct pool names in the order a user wrote them, each with a set of (matching) priority fields."""
    count = draw(st.integers(1, 8))
    shapes = draw(
        st.lists(st.frozensets(st.sampled_from(PRIORITY_FIELDS[:3]), max_size=2), min_size=count, max_size=count)
    )
    order = draw(st.permutations(range(count)))
    return [(f"pool-{i}", shapes[i]) for i in order]


@given(prioritised_pools())
def test_ordering_is_a_stable_sort_by_priority_so_ties_keep_the_requested_order(
    written: list[tuple[str, frozenset[str]]],
) -> None:
    pools = by_name(*(make_pool(name, **{f: MATCHING[f] for f in fields}) for name, fields in written))
    request = NicRequest("eth0", ipv4=tuple(name for name, _ in written))

    def rank(item: tuple[str, frozenset[str]]) -> tuple[bool, ...]:
        return tuple(field not in item[1] for field in PRIORITY_FIELDS)

    expected = [name for name, _ in sorted(written, key=rank)]  # sorted() is stable: the model of a stable sort
    assert names(candidates(request, 4, MATCHED_POD, pools)) == expected


@given(st.permutations([f"pool-{i}" for i in range(6)]))
def test_pools_of_equal_priority_are_tried_in_the_order_written(written: list[str]) -> None:
    pools = by_name(*(make_pool(name) for name in written))
    request = NicRequest("eth0", ipv4=tuple(written))
    assert names(candidates(request, 4, make_pod(), pools)) == written


# --- multi-NIC: the ippools annotation -----------------------------------------------------------------

TWO_NICS = ippools(
    {"interface": "eth0", "ipv4": ["a4"], "ipv6": ["a6"], "cleangateway": False},
    {"interface": "net1", "ipv4": ["b4"], "cleangateway": True},
)


def test_named_ippools_allocate_every_listed_nic_on_the_first_add() -> None:
    got = requested_pools(make_pod(annotations=TWO_NICS), "eth0")
    assert got == [
        NicRequest("eth0", ("a4",), ("a6",), clean_gateway=False, source=ANNO_IPPOOLS),
        NicRequest("net1", ("b4",), (), clean_gateway=True, source=ANNO_IPPOOLS),
    ]


def test_named_ippools_return_every_nic_whichever_nic_is_being_added() -> None:
    pod = make_pod(annotations=TWO_NICS)
    assert requested_pools(pod, "net1") == requested_pools(pod, "eth0")


def test_a_nic_without_cleangateway_leaves_the_choice_to_the_cni_configuration() -> None:
    (request,) = requested_pools(make_pod(annotations=ippools({"interface": "eth0", "ipv4": ["a"]})), "eth0")
    assert request.clean_gateway is None


def test_a00013_named_ippools_must_list_the_nic_being_added() -> None:
    pod = make_pod(annotations=ippools({"interface": "net1", "ipv4": ["b4"]}))
    with pytest.raises(InvalidInput, match="interface eth0 must be specified"):
        requested_pools(pod, "eth0")


def test_a00014_the_same_nic_twice_in_ippools_is_wrong_input() -> None:
    pod = make_pod(annotations=ippools({"interface": "eth0", "ipv4": ["a"]}, {"interface": "eth0", "ipv4": ["b"]}))
    with pytest.raises(InvalidInput, match="duplicate interface"):
        requested_pools(pod, "eth0")


def test_named_and_unnamed_entries_cannot_be_mixed() -> None:
    pod = make_pod(annotations=ippools({"interface": "eth0", "ipv4": ["a"]}, {"ipv4": ["b"]}))
    with pytest.raises(InvalidInput, match="either all specified or all unspecified"):
        requested_pools(pod, "eth0")


@pytest.mark.parametrize(("nic", "pool"), [("eth0", "first"), ("net1", "second")])
def test_unnamed_ippools_give_each_nic_the_entry_at_its_position(nic: str, pool: str) -> None:
    pod = make_pod(annotations=ippools({"ipv4": ["first"]}, {"ipv4": ["second"]}))
    assert requested_pools(pod, nic) == [NicRequest(nic, (pool,), source=ANNO_IPPOOLS)]


@pytest.mark.parametrize(("networks", "nic"), [("macvlan@data", "data"), ('[{"name": "a"}, {"name": "b"}]', "net2")])
def test_unnamed_ippools_give_a_nic_the_entry_at_its_position_in_the_multus_networks(networks: str, nic: str) -> None:
    entries = ippools({"ipv4": ["first"]}, {"ipv4": ["second"]}, {"ipv4": ["third"]})
    pod = make_pod(annotations={**entries, ANNO_MULTUS_NETWORKS: networks})
    want = "second" if nic == "data" else "third"
    assert requested_pools(pod, nic) == [NicRequest(nic, (want,), source=ANNO_IPPOOLS)]


@pytest.mark.parametrize("nic", ["data", "ens1f0", "net0", "net01", "net\u00b2"])
def test_unnamed_ippools_refuse_a_nic_whose_position_nothing_says(nic: str) -> None:
    # NB: no digits-in-the-name guess: "data" would take eth0's entry, "ens1f0" the 11th, "net²" crash int()
    pod = make_pod(annotations=ippools({"ipv4": ["first"]}, {"ipv4": ["second"]}))
    with pytest.raises(InvalidInput, match=f"interface {nic} is none of them"):
        requested_pools(pod, nic)


def test_a_multus_network_with_a_null_interface_is_named_by_its_position() -> None:
    pod = make_pod(annotations={ANNO_MULTUS_NETWORKS: '[{"name": "a", "interface": null}]'})
    assert multus_network(pod, "net1") == "ns1/a"


# --- custom routes -------------------------------------------------------------------------------------


def routes_pod(value: object) -> PodContext:
    return make_pod(annotations={ANNO_ROUTES: value if isinstance(value, str) else json.dumps(value)})


def test_no_routes_annotation_means_no_custom_routes() -> None:
    assert custom_routes(make_pod()) == ()


def test_a00002_a_routes_annotation_with_dst_and_gw_gives_those_routes() -> None:
    pod = routes_pod([{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}, {"dst": "fd10::/64", "gw": "fd00::1"}])
    assert custom_routes(pod) == (Route("0.0.0.0/0", "10.0.0.1"), Route("fd10::/64", "fd00::1"))


def test_a_routes_annotation_dst_may_have_host_bits_set_as_in_spiderpools_docs() -> None:
    pod = routes_pod([{"dst": "192.168.0.101/24", "gw": "10.16.0.254"}])
    assert len(custom_routes(pod)) == 1


@pytest.mark.parametrize(
    ("value", "why"),
    [
        pytest.param("[{", "not valid JSON", id="not-json"),
        pytest.param({"dst": "1.0.0.0/8", "gw": "10.0.0.1"}, "list of routes", id="not-a-list"),
        pytest.param([{"dst": "1.0.0.0/8"}], "'dst' and 'gw'", id="no-gw"),
        pytest.param([{"dst": 1, "gw": "10.0.0.1"}], "'dst' and 'gw'", id="dst-not-a-string"),
        pytest.param([{"dst": "banana", "gw": "10.0.0.1"}], "banana", id="dst-not-a-cidr"),
        pytest.param([{"dst": "1.0.0.0/8", "gw": "10.0.0.x"}], "10.0.0.x", id="gw-not-an-ip"),
        pytest.param([{"dst": "1.0.0.0/8", "gw": "fd00::1"}], "fd00::1", id="families-differ"),
    ],
)
def test_a_bad_routes_annotation_is_wrong_input(value: object, why: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(why)) as info:
        custom_routes(routes_pod(value))
    assert ANNO_ROUTES in str(info.value)
