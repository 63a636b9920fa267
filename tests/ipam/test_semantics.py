"""Spiderpool's IPAM semantics end to end through the agent API, one behaviour per test, named after the
Spiderpool e2e case it covers where there is one (reference §10)."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
import trio

from actors.stores.port import Conflict
from tests.support import RunningAgent, cni_env, http_call, netconf, pod_args, pool_object, run_plugin

ANNO_POOL = "ipam.spidernet.io/ippool"
ANNO_POOLS = "ipam.spidernet.io/ippools"


def pod(
    name: str, namespace: str = "default", *, annotations: dict[str, str] | None = None, **meta: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "annotations": annotations or {},
            "finalizers": ["test/kubelet"],  # so a delete leaves it terminating until the "kubelet" is done
            **meta,
        },
        "spec": {"nodeName": "node-1"},
    }


async def kill(agent: RunningAgent, name: str, namespace: str = "default") -> str:
    """Delete a pod as Kubernetes does: it turns terminating, the runtime calls DEL, then the pod goes."""
    uid = await uid_of(agent, name, namespace)
    await agent.store.delete("Pod", name, namespace)
    await delete(agent, name, uid, namespace=namespace)
    obj = await agent.store.get("Pod", name, namespace)
    obj["metadata"]["finalizers"] = []
    await agent.store.update(obj)
    return uid


def owned_by(api_version: str, kind: str, name: str) -> dict[str, Any]:
    return {
        "ownerReferences": [
            {"apiVersion": api_version, "kind": kind, "name": name, "uid": f"uid-{name}", "controller": True}
        ]
    }


async def uid_of(agent: RunningAgent, name: str, namespace: str = "default") -> str:
    return str((await agent.store.get("Pod", name, namespace))["metadata"]["uid"])


async def add(
    agent: RunningAgent,
    name: str,
    *,
    namespace: str = "default",
    ifname: str = "eth0",
    container: str = "",
    **extra: Any,
) -> tuple[int, Any]:
    try:
        uid = await uid_of(agent, name, namespace)
    except Exception:
        uid = f"uid-{namespace}-{name}"
    body = {
        "containerID": container or f"ctr-{uid}",
        "ifName": ifname,
        "netNamespace": "/var/run/netns/x",
        "podNamespace": namespace,
        "podName": name,
        "podUID": uid,
        **extra,
    }
    with trio.fail_after(10):
        status, answer, _ = await http_call(agent.socket, "POST", "/v1/ipam/ip", body)
    return status, answer


async def delete(agent: RunningAgent, name: str, uid: str, *, namespace: str = "default", container: str = "") -> None:
    body = {
        "containerID": container or f"ctr-{uid}",
        "ifName": "eth0",
        "podNamespace": namespace,
        "podName": name,
        "podUID": uid,
    }
    with trio.fail_after(10):
        status, _, _ = await http_call(agent.socket, "DELETE", "/v1/ipam/ip", body)
    assert status == 200


def addresses(answer: Any) -> list[str]:
    return sorted(ip["address"] for ip in answer["ips"])


def pools_of(answer: Any) -> list[str]:
    return sorted(ip["ipPool"] for ip in answer["ips"])


async def records(agent: RunningAgent, pool: str) -> dict[str, Any]:
    raw = (await agent.pool_status(pool)).get("allocatedIPs")
    return json.loads(raw) if raw else {}


V4A = pool_object("v4-a", "10.10.0.0/24", ["10.10.0.10-10.10.0.19"], gateway="10.10.0.1")
V4B = pool_object("v4-b", "10.11.0.0/24", ["10.11.0.10-10.11.0.19"], gateway="10.11.0.1")
V6A = pool_object("v6-a", "fd10::/64", ["fd10::10-fd10::19"], gateway="fd10::1")
DEFAULT_V4 = pool_object("default-v4", "10.12.0.0/24", ["10.12.0.10-10.12.0.19"], default=True)


# --- IP assignment ---------------------------------------------------------------------------------------------


async def test_e00001_a_pod_gets_ipv4_ipv6_or_both_as_annotated(agent: RunningAgent) -> None:
    await agent.apply(V4A, V6A)
    for name, want in (
        ("v4", {"ipv4": ["v4-a"]}),
        ("v6", {"ipv6": ["v6-a"]}),
        ("dual", {"ipv4": ["v4-a"], "ipv6": ["v6-a"]}),
    ):
        await agent.apply(pod(name, annotations={ANNO_POOL: json.dumps(want)}))
        status, answer = await add(agent, name)
        assert status == 200, answer
        assert pools_of(answer) == sorted(want.get("ipv4", []) + want.get("ipv6", []))


async def test_e00008_exhaustion_fails_the_pod_with_a_clear_reason(agent: RunningAgent) -> None:
    await agent.apply(pool_object("tiny", "10.13.0.0/24", ["10.13.0.10"], default=True))
    assert (await add(agent, "a"))[0] == 200
    status, message = await add(agent, "b")
    assert status == 500
    assert message == "pool 'tiny' is exhausted: all IP addresses used out (capacity 1)"


async def test_e00009_a_dual_stack_cluster_may_allocate_one_family_by_annotation(agent: RunningAgent) -> None:
    await agent.apply(V4A, V6A, pod("only-v6", annotations={ANNO_POOL: json.dumps({"ipv6": ["v6-a"]})}))
    status, answer = await add(agent, "only-v6")
    assert status == 200
    assert [ip["version"] for ip in answer["ips"]] == [6]


# --- pool selection ---------------------------------------------------------------------------------------------


async def test_a00004_pod_annotation_beats_namespace_annotation_beats_cni_config(agent: RunningAgent) -> None:
    ns = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "team", "annotations": {"ipam.spidernet.io/default-ipv4-ippool": '["v4-b"]'}},
    }
    await agent.apply(
        V4A,
        V4B,
        DEFAULT_V4,
        ns,
        pod("annotated", "team", annotations={ANNO_POOL: '{"ipv4": ["v4-a"]}'}),
        pod("plain", "team"),
    )
    assert pools_of((await add(agent, "annotated", namespace="team", defaultIPv4IPPool=["default-v4"]))[1]) == ["v4-a"]
    assert pools_of((await add(agent, "plain", namespace="team", defaultIPv4IPPool=["default-v4"]))[1]) == ["v4-b"]
    await agent.apply(pod("elsewhere"))
    assert pools_of((await add(agent, "elsewhere", defaultIPv4IPPool=["v4-a"]))[1]) == ["v4-a"]


async def test_a00005_the_ippools_annotation_beats_the_ippool_annotation(agent: RunningAgent) -> None:
    annotations = {ANNO_POOL: '{"ipv4": ["v4-a"]}', ANNO_POOLS: '[{"interface": "eth0", "ipv4": ["v4-b"]}]'}
    await agent.apply(V4A, V4B, pod("both", annotations=annotations))
    assert pools_of((await add(agent, "both"))[1]) == ["v4-b"]


async def test_a00006_the_namespace_default_beats_the_cluster_default(agent: RunningAgent) -> None:
    ns = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "team", "annotations": {"ipam.spidernet.io/default-ipv4-ippool": '["v4-a"]'}},
    }
    await agent.apply(V4A, DEFAULT_V4, ns, pod("p", "team"), pod("q"))
    assert pools_of((await add(agent, "p", namespace="team"))[1]) == ["v4-a"]
    assert pools_of((await add(agent, "q"))[1]) == ["default-v4"]


async def test_an_empty_namespace_default_leaves_the_pool_to_the_cni_config(agent: RunningAgent) -> None:
    ns = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "team", "annotations": {"ipam.spidernet.io/default-ipv4-ippool": "[]"}},
    }
    await agent.apply(V4A, DEFAULT_V4, ns, pod("p", "team"))
    assert pools_of((await add(agent, "p", namespace="team", defaultIPv4IPPool=["v4-a"]))[1]) == ["v4-a"]


async def test_a00007_wildcards_in_the_namespace_annotation_pick_matching_pools(agent: RunningAgent) -> None:
    ns = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "team", "annotations": {"ipam.spidernet.io/default-ipv4-ippool": '["v4-*"]'}},
    }
    await agent.apply(V4A, V4B, ns, pod("p", "team"))
    assert pools_of((await add(agent, "p", namespace="team"))[1]) == ["v4-a"]


async def test_a00015_wildcards_in_the_ippools_annotation_pick_matching_pools(agent: RunningAgent) -> None:
    await agent.apply(V4A, V4B, pod("p", annotations={ANNO_POOLS: '[{"interface": "eth0", "ipv4": ["v4-[b]"]}]'}))
    assert pools_of((await add(agent, "p"))[1]) == ["v4-b"]


async def test_equal_priority_pools_are_tried_in_the_order_the_user_wrote(agent: RunningAgent) -> None:
    tiny = pool_object("first", "10.14.0.0/24", ["10.14.0.10"])
    await agent.apply(tiny, V4A, pod("p1", annotations={ANNO_POOL: '{"ipv4": ["first", "v4-a"]}'}))
    await agent.apply(pod("p2", annotations={ANNO_POOL: '{"ipv4": ["first", "v4-a"]}'}))
    assert pools_of((await add(agent, "p1"))[1]) == ["first"]
    assert pools_of((await add(agent, "p2"))[1]) == ["v4-a"]  # first exhausted: the next one, not a random one


async def test_a00003_invalid_annotations_fail_the_pod_and_change_nothing(agent: RunningAgent) -> None:
    await agent.apply(V4A, pod("bad", annotations={ANNO_POOL: "{not json"}))
    status, message = await add(agent, "bad")
    assert status == 500
    assert "is not valid JSON" in message
    assert await records(agent, "v4-a") == {}


async def test_i00023_subnet_annotations_on_a_pod_without_a_controller_fail_and_take_nothing(
    agent: RunningAgent,
) -> None:
    await agent.apply(V4A, pod("sub", annotations={"ipam.spidernet.io/subnet": '{"ipv4": ["s"]}'}))
    status, message = await add(agent, "sub")
    assert status == 500
    assert "SpiderSubnet feature doesn't support no-controller pod" in message
    assert await records(agent, "v4-a") == {}


async def test_a_duplicate_pool_in_an_annotation_is_wrong_input(agent: RunningAgent) -> None:
    await agent.apply(V4A, pod("dup", annotations={ANNO_POOL: '{"ipv4": ["v4-a", "v4-a"]}'}))
    status, message = await add(agent, "dup")
    assert status == 500
    assert "duplicate IPPool" in message


# --- affinities and filters ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "ok"),
    [
        ({"nodeAffinity": {"matchLabels": {"zone": "z1"}}}, True),  # L00001
        ({"nodeAffinity": {"matchLabels": {"zone": "z2"}}}, False),  # L00002
        ({"namespaceAffinity": {"matchLabels": {"team": "blue"}}}, True),  # L00003
        ({"namespaceAffinity": {"matchLabels": {"team": "red"}}}, False),  # L00004
        ({"podAffinity": {"matchLabels": {"app": "web"}}}, True),  # L00005
        ({"podAffinity": {"matchLabels": {"app": "db"}}}, False),  # L00006
        ({"nodeName": ["node-1"]}, True),  # D00011
        ({"nodeName": ["node-2"]}, False),  # D00012
        ({"nodeName": ["node-1"], "nodeAffinity": {"matchLabels": {"zone": "nowhere"}}}, True),  # D00013
        ({"namespaceName": ["team"]}, True),  # D00014
        ({"namespaceName": ["other"]}, False),  # D00015
        ({"namespaceName": ["team"], "namespaceAffinity": {"matchLabels": {"team": "red"}}}, True),  # D00016
        ({"disable": True}, False),  # D00005
    ],
    ids=[
        "L00001",
        "L00002",
        "L00003",
        "L00004",
        "L00005",
        "L00006",
        "D00011",
        "D00012",
        "D00013",
        "D00014",
        "D00015",
        "D00016",
        "D00005",
    ],
)
async def test_pool_affinities_and_filters(agent: RunningAgent, spec: dict[str, Any], ok: bool) -> None:
    await agent.apply(
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1", "labels": {"zone": "z1"}}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team", "labels": {"team": "blue"}}},
        pool_object("aff", "10.15.0.0/24", ["10.15.0.10-10.15.0.19"], **spec),
        pod("web", "team", labels={"app": "web"}, annotations={ANNO_POOL: '{"ipv4": ["aff"]}'}),
    )
    status, answer = await add(agent, "web", namespace="team")
    if ok:
        assert status == 200, answer
    else:
        assert status == 500
        assert "all IPv4 IPPools ['aff'] of" not in answer  # our text names the NIC in the prefix instead
        assert "aff:" in answer
        assert "filtered out" in answer


async def test_a_filtered_out_error_names_each_pool_and_why(agent: RunningAgent) -> None:
    await agent.apply(
        pool_object("off", "10.16.0.0/24", ["10.16.0.10"], disable=True),
        pool_object("elsewhere", "10.17.0.0/24", ["10.17.0.10"], nodeName=["node-9"]),
        pod("p", annotations={ANNO_POOL: '{"ipv4": ["off", "elsewhere"]}'}),
    )
    status, message = await add(agent, "p")
    assert status == 500
    assert message == (
        "no IPv4 pool available for interface 'eth0': all IPv4 IPPools ['off', 'elsewhere'] filtered out: "
        "off: disabled; elsewhere: node 'node-1' not in nodeName"
    )


async def test_d00005_a_disabled_pool_still_releases(agent: RunningAgent) -> None:
    await agent.apply(V4A, pod("p", annotations={ANNO_POOL: '{"ipv4": ["v4-a"]}'}))
    assert (await add(agent, "p"))[0] == 200
    disabled = dict(V4A, spec={**V4A["spec"], "disable": True})
    await agent.apply(disabled)
    await kill(agent, "p")
    assert await records(agent, "v4-a") == {}


@pytest.mark.parametrize(
    ("network", "ok"), [("kube-system/macvlan-a", True), ("kube-system/macvlan-b", False)], ids=["D00009", "D00010"]
)
async def test_multus_name_must_match_the_nics_network(agent: RunningAgent, network: str, ok: bool) -> None:
    await agent.apply(
        pool_object("mv", "10.18.0.0/24", ["10.18.0.10"], multusName=["macvlan-a"]),
        pod("p", annotations={ANNO_POOL: '{"ipv4": ["mv"]}', "v1.multus-cni.io/default-network": network}),
    )
    status, answer = await add(agent, "p")
    assert (status == 200) is ok, answer


async def test_multus_networks_annotation_maps_later_nics_by_position(agent: RunningAgent) -> None:
    await agent.apply(
        pool_object("mv", "10.18.0.0/24", ["10.18.0.10"], multusName=["team/macvlan-b"]),
        pod(
            "p",
            "team",
            annotations={ANNO_POOL: '{"ipv4": ["mv"]}', "k8s.v1.cni.cncf.io/networks": "macvlan-a, macvlan-b"},
        ),
    )
    status, answer = await add(agent, "p", namespace="team", ifname="net2")
    assert status == 200, answer


NETWORKS = [
    {"name": "macvlan-a", "namespace": "team", "interface": "net1"},
    {"name": "macvlan-b", "namespace": "team", "interface": "net2"},
]


@pytest.mark.parametrize(
    "networks", [json.dumps(NETWORKS, separators=(",", ":")), json.dumps(NETWORKS, indent=2)], ids=["m00036", "m00037"]
)
async def test_m00036_m00037_a_json_networks_annotation_gets_each_interface_its_networks_pool(
    agent: RunningAgent, networks: str
) -> None:
    # NB: each pool serves only its Multus network (multusName): a NIC mapped to the wrong network gets nothing
    await agent.apply(
        pool_object("mv-a", "10.18.0.0/24", ["10.18.0.10"], multusName=["team/macvlan-a"]),
        pool_object("mv-b", "10.19.0.0/24", ["10.19.0.10"], multusName=["team/macvlan-b"]),
        pod(
            "p",
            "team",
            annotations={
                ANNO_POOLS: '[{"interface": "net1", "ipv4": ["mv-a"]}, {"interface": "net2", "ipv4": ["mv-b"]}]',
                "k8s.v1.cni.cncf.io/networks": networks,
            },
        ),
    )
    want = {"net1": ("mv-a", "10.18.0.10/24"), "net2": ("mv-b", "10.19.0.10/24")}
    # NB: named entries: the first ADD allocates every NIC listed; the second answers its own NIC
    for ifname, nics in (("net1", ("net1", "net2")), ("net2", ("net2",))):
        status, answer = await add(agent, "p", namespace="team", ifname=ifname)
        assert status == 200, answer
        assert {ip["nic"]: (ip["ipPool"], ip["address"]) for ip in answer["ips"]} == {nic: want[nic] for nic in nics}


# --- routes and gateways -------------------------------------------------------------------------------------------


async def test_a00002_custom_routes_go_to_the_nic_whose_subnet_holds_their_gateway(agent: RunningAgent) -> None:
    routes = [{"dst": "1.0.0.0/16", "gw": "10.10.0.1"}, {"dst": "2.0.0.0/16", "gw": "192.168.9.1"}]
    await agent.apply(
        V4A, pod("p", annotations={ANNO_POOL: '{"ipv4": ["v4-a"]}', "ipam.spidernet.io/routes": json.dumps(routes)})
    )
    _, answer = await add(agent, "p")
    assert answer["routes"] == [
        {"ifName": "eth0", "dst": "0.0.0.0/0", "gw": "10.10.0.1"},
        {"ifName": "eth0", "dst": "1.0.0.0/16", "gw": "10.10.0.1"},
    ]


async def test_a_custom_route_goes_once_to_the_first_nic_whose_subnet_holds_its_gateway(agent: RunningAgent) -> None:
    # NB: Spiderpool's groupCustomRoutes; the same route on two NICs would fail the second `ip route add`
    annotations = {
        ANNO_POOLS: '[{"interface": "eth0", "ipv4": ["v4-a"]}, {"interface": "net1", "ipv4": ["same-subnet"]}]',
        "ipam.spidernet.io/routes": '[{"dst": "1.0.0.0/16", "gw": "10.10.0.254"}]',
    }
    same = pool_object("same-subnet", "10.10.0.0/24", ["10.10.0.20-10.10.0.29"])
    await agent.apply(V4A, same, pod("p", annotations=annotations))
    custom = {"ifName": "eth0", "dst": "1.0.0.0/16", "gw": "10.10.0.254"}
    assert [r for r in (await add(agent, "p"))[1]["routes"] if r["dst"] == "1.0.0.0/16"] == [custom]
    assert (await add(agent, "p", ifname="net1"))[1]["routes"] == []  # NB: recomputed, it would be net1's too


async def test_pool_routes_are_given_to_the_nic(agent: RunningAgent) -> None:
    routed = pool_object(
        "routed",
        "10.19.0.0/24",
        ["10.19.0.10"],
        gateway="10.19.0.1",
        routes=[{"dst": "172.30.0.0/16", "gw": "10.19.0.254"}],
    )
    await agent.apply(routed, pod("p", annotations={ANNO_POOL: '{"ipv4": ["routed"]}'}))
    _, answer = await add(agent, "p")
    assert {"ifName": "eth0", "dst": "172.30.0.0/16", "gw": "10.19.0.254"} in answer["routes"]


async def test_a00011_clean_gateway_suppresses_the_default_route_per_nic(agent: RunningAgent) -> None:
    annotation = json.dumps(
        [
            {"interface": "eth0", "ipv4": ["v4-a"], "cleangateway": False},
            {"interface": "net1", "ipv4": ["v4-b"], "cleangateway": True},
        ]
    )
    await agent.apply(V4A, V4B, pod("p", annotations={ANNO_POOLS: annotation}))
    _, answer = await add(agent, "p")
    assert [r for r in answer["routes"] if r["dst"] == "0.0.0.0/0"] == [
        {"ifName": "eth0", "dst": "0.0.0.0/0", "gw": "10.10.0.1"}
    ]


async def test_the_cni_config_clean_gateway_applies_when_the_pod_says_nothing(agent: RunningAgent) -> None:
    await agent.apply(V4A, pod("p"))
    _, answer = await add(agent, "p", defaultIPv4IPPool=["v4-a"], cleanGateway=True)
    assert answer["routes"] == []
    assert answer["ips"][0]["gateway"] == "10.10.0.1"


# --- multi-NIC ---------------------------------------------------------------------------------------------------


async def test_named_ippools_allocate_every_nic_on_the_first_add(agent: RunningAgent) -> None:
    annotation = '[{"interface": "eth0", "ipv4": ["v4-a"]}, {"interface": "net1", "ipv4": ["v4-b"], "ipv6": ["v6-a"]}]'
    await agent.apply(V4A, V4B, V6A, pod("p", annotations={ANNO_POOLS: annotation}))
    status, first = await add(agent, "p")
    assert status == 200
    assert sorted((ip["nic"], ip["ipPool"]) for ip in first["ips"]) == [
        ("eth0", "v4-a"),
        ("net1", "v4-b"),
        ("net1", "v6-a"),
    ]
    _, second = await add(agent, "p", ifname="net1")
    assert sorted(ip["address"] for ip in second["ips"]) == sorted(
        ip["address"] for ip in first["ips"] if ip["nic"] == "net1"
    )


async def test_a00013_the_current_nic_must_be_listed_in_named_ippools(agent: RunningAgent) -> None:
    await agent.apply(V4A, pod("p", annotations={ANNO_POOLS: '[{"interface": "net1", "ipv4": ["v4-a"]}]'}))
    status, message = await add(agent, "p")
    assert status == 500
    assert "interface eth0 must be specified" in message


async def test_a00014_the_same_nic_twice_in_ippools_is_rejected(agent: RunningAgent) -> None:
    annotation = '[{"interface": "eth0", "ipv4": ["v4-a"]}, {"interface": "eth0", "ipv4": ["v4-b"]}]'
    await agent.apply(V4A, V4B, pod("p", annotations={ANNO_POOLS: annotation}))
    status, message = await add(agent, "p")
    assert status == 500
    assert "duplicate interface" in message


async def test_named_and_unnamed_entries_cannot_be_mixed(agent: RunningAgent) -> None:
    await agent.apply(
        V4A, V4B, pod("p", annotations={ANNO_POOLS: '[{"interface": "eth0", "ipv4": ["v4-a"]}, {"ipv4": ["v4-b"]}]'})
    )
    status, message = await add(agent, "p")
    assert status == 500
    assert "either all specified or all unspecified" in message


async def test_a00016_an_exhausted_nic_pool_consumes_nothing_from_the_others(agent: RunningAgent) -> None:
    tiny = pool_object("tiny", "10.20.0.0/24", ["10.20.0.10"])
    annotation = '[{"interface": "eth0", "ipv4": ["v4-a"]}, {"interface": "net1", "ipv4": ["tiny"]}]'
    await agent.apply(
        V4A, tiny, pod("p1", annotations={ANNO_POOLS: annotation}), pod("p2", annotations={ANNO_POOLS: annotation})
    )
    assert (await add(agent, "p1"))[0] == 200
    status, _ = await add(agent, "p2")
    assert status == 500
    assert len(await records(agent, "v4-a")) == 1
    assert [r["pod"] for r in (await records(agent, "tiny")).values()] == ["default/p1"]


async def test_unnamed_ippools_give_eth0_the_first_entry_and_net1_the_second(agent: RunningAgent) -> None:
    await agent.apply(V4A, V4B, pod("p", annotations={ANNO_POOLS: '[{"ipv4": ["v4-a"]}, {"ipv4": ["v4-b"]}]'}))
    assert pools_of((await add(agent, "p"))[1]) == ["v4-a"]
    assert pools_of((await add(agent, "p", ifname="net1"))[1]) == ["v4-b"]


# --- reserved and excluded IPs ------------------------------------------------------------------------------------


async def test_s00001_a_reserved_ip_is_never_assigned(agent: RunningAgent) -> None:
    reserved = {
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderReservedIP",
        "metadata": {"name": "r"},
        "spec": {"ips": ["10.10.0.10-10.10.0.11"]},
    }
    await agent.apply(V4A, reserved, pod("p"))
    _, answer = await add(agent, "p", defaultIPv4IPPool=["v4-a"])
    assert addresses(answer) == ["10.10.0.12/24"]


async def test_a_reservation_made_later_applies_to_new_allocations_and_evicts_nobody(agent: RunningAgent) -> None:
    await agent.apply(V4A, pod("p"), pod("q"))
    _, first = await add(agent, "p", defaultIPv4IPPool=["v4-a"])
    assert addresses(first) == ["10.10.0.10/24"]
    reserved = {
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderReservedIP",
        "metadata": {"name": "r"},
        "spec": {"ips": ["10.10.0.10-10.10.0.11"]},
    }
    await agent.apply(reserved)
    _, second = await add(agent, "q", defaultIPv4IPPool=["v4-a"])
    assert addresses(second) == ["10.10.0.12/24"]
    assert sorted(await records(agent, "v4-a")) == ["10.10.0.10", "10.10.0.12"]


async def test_s00002_an_excluded_ip_is_never_assigned(agent: RunningAgent) -> None:
    await agent.apply(pool_object("ex", "10.21.0.0/24", ["10.21.0.10-10.21.0.12"], excludeIPs=["10.21.0.10"]), pod("p"))
    _, answer = await add(agent, "p", defaultIPv4IPPool=["ex"])
    assert addresses(answer) == ["10.21.0.11/24"]


async def test_s00003_an_assigned_ip_cannot_be_moved_into_exclude_ips(agent: RunningAgent) -> None:
    await agent.apply(V4A, pod("p"))
    await add(agent, "p", defaultIPv4IPPool=["v4-a"])
    changed = dict(V4A, spec={**V4A["spec"], "excludeIPs": ["10.10.0.10"]})
    with pytest.raises(Exception, match=r"remove an IP address 10\.10\.0\.10 that is being used by Pod default/p"):
        await agent.apply(changed)


# --- owners and fixed IPs ------------------------------------------------------------------------------------------


async def test_e00002_a_deployment_pod_records_its_deployment_as_owner(agent: RunningAgent) -> None:
    rs = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": "web-5d", "namespace": "default", **owned_by("apps/v1", "Deployment", "web")},
    }
    await agent.apply(V4A, rs, pod("web-5d-x1", **owned_by("apps/v1", "ReplicaSet", "web-5d")))
    await add(agent, "web-5d-x1", defaultIPv4IPPool=["v4-a"])
    status = (await agent.store.get("SpiderEndpoint", "web-5d-x1", "default"))["status"]
    assert (status["ownerControllerType"], status["ownerControllerName"]) == ("Deployment", "web")


async def test_a_cronjob_pod_records_its_cronjob_as_owner(agent: RunningAgent) -> None:
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "nightly-1", "namespace": "default", **owned_by("batch/v1", "CronJob", "nightly")},
    }
    await agent.apply(V4A, job, pod("nightly-1-x", **owned_by("batch/v1", "Job", "nightly-1")))
    await add(agent, "nightly-1-x", defaultIPv4IPPool=["v4-a"])
    status = (await agent.store.get("SpiderEndpoint", "nightly-1-x", "default"))["status"]
    assert (status["ownerControllerType"], status["ownerControllerName"]) == ("CronJob", "nightly")


async def test_t00001_a_third_party_controller_is_recorded_as_is(agent: RunningAgent) -> None:
    await agent.apply(V4A, pod("cs-x", **owned_by("apps.kruise.io/v1alpha1", "CloneSet", "cs")))
    await add(agent, "cs-x", defaultIPv4IPPool=["v4-a"])
    status = (await agent.store.get("SpiderEndpoint", "cs-x", "default"))["status"]
    assert (status["ownerControllerType"], status["ownerControllerName"]) == ("CloneSet", "cs")


def statefulset(replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "db", "namespace": "default"},
        "spec": {"replicas": replicas},
    }


async def recreate(agent: RunningAgent, obj: dict[str, Any]) -> str:
    old = await kill(agent, obj["metadata"]["name"])
    await agent.apply(obj)
    return old


async def test_e00003_a_statefulset_pod_keeps_its_address_across_re_creation(agent: RunningAgent) -> None:
    db0 = pod("db-0", **owned_by("apps/v1", "StatefulSet", "db"))
    await agent.apply(V4A, statefulset(2), db0)
    _, first = await add(agent, "db-0", defaultIPv4IPPool=["v4-a"])
    old_uid = await recreate(agent, db0)
    assert len(await records(agent, "v4-a")) == 1  # kept through the DEL
    _, second = await add(agent, "db-0", defaultIPv4IPPool=["v4-a"])
    assert addresses(second) == addresses(first)
    (record,) = (await records(agent, "v4-a")).values()
    assert record["podUid"] == await uid_of(agent, "db-0") != old_uid


async def release_conflicting(agent: RunningAgent, name: str, **extra: Any) -> tuple[int, Any]:
    """``DELETE /v1/ipam/ips`` for pod ``name`` (what a conflict detection sends), ``extra`` beside its fields."""
    uid = await uid_of(agent, name)
    body = {"containerID": f"ctr-{uid}", "podNamespace": "default", "podName": name, "podUID": uid, **extra}
    with trio.fail_after(10):
        status, message, _ = await http_call(agent.socket, "DELETE", "/v1/ipam/ips", body)
    return status, message


async def test_c00019_a_statefulset_pods_conflicting_address_is_not_released_when_asked_so(
    agent: RunningAgent,
) -> None:
    await agent.apply(V4A, statefulset(2), pod("db-0", **owned_by("apps/v1", "StatefulSet", "db")))
    await add(agent, "db-0", defaultIPv4IPPool=["v4-a"])
    before = await records(agent, "v4-a")
    status, message = await release_conflicting(agent, "db-0", isReleaseConflictIPs=True)
    assert (status, await records(agent, "v4-a")) == (522, before)
    assert "StatefulSet" in message


async def test_c00018_a_stateless_pods_conflicting_address_is_released_unless_that_is_switched_off(
    agent: RunningAgent,
) -> None:
    await agent.apply(V4A, pod("web"))
    await add(agent, "web", defaultIPv4IPPool=["v4-a"])
    agent.api.ipam.settings = attrs.evolve(agent.api.ipam.settings, release_conflict_ips=False)
    status, message = await release_conflicting(agent, "web", isReleaseConflictIPs=True)
    assert (status, len(await records(agent, "v4-a"))) == (521, 1)
    assert "SPIDERPOOL_ENABLED_RELEASE_CONFLICT_IPS" in message
    assert (await release_conflicting(agent, "web", isReleaseConflictIPs="yes"))[0] == 400
    assert (await release_conflicting(agent, "web"))[0] == 200  # NB: without the flag, as Spiderpool's plugin
    assert await records(agent, "v4-a") == {}


async def test_a_statefulset_pod_whose_endpoint_was_edited_into_nonsense_is_allocated_afresh(
    agent: RunningAgent,
) -> None:
    db0 = pod("db-0", **owned_by("apps/v1", "StatefulSet", "db"))
    await agent.apply(V4A, statefulset(2), db0, pod("other"))
    await add(agent, "db-0", defaultIPv4IPPool=["v4-a"])
    await recreate(agent, db0)
    endpoint = await agent.store.get("SpiderEndpoint", "db-0", "default")
    endpoint["status"]["current"]["ips"][0]["ipv4"] = "10.10.0.300/24"  # an edit by hand, or a bit flipped
    await agent.store.update(endpoint)
    status, answer = await add(agent, "db-0", defaultIPv4IPPool=["v4-a"])  # NB: this once stopped the agent
    assert status == 200, answer
    (record,) = (await records(agent, "v4-a")).values()  # the old pod's record freed, nothing left behind
    assert record["podUid"] == await uid_of(agent, "db-0")
    endpoint = await agent.store.get("SpiderEndpoint", "db-0", "default")
    assert [ip["ipv4"] for ip in endpoint["status"]["current"]["ips"]] == addresses(answer)
    status, _ = await add(agent, "other", defaultIPv4IPPool=["v4-a"])
    assert status == 200, "the agent serves on"


async def test_a_statefulset_pod_scaled_away_releases_its_address(agent: RunningAgent) -> None:
    db1 = pod("db-1", **owned_by("apps/v1", "StatefulSet", "db"))
    await agent.apply(V4A, statefulset(2), db1)
    await add(agent, "db-1", defaultIPv4IPPool=["v4-a"])
    await agent.apply(statefulset(1))  # ordinal 1 is no longer valid
    await kill(agent, "db-1")
    assert await records(agent, "v4-a") == {}
    assert (await agent.store.list("SpiderEndpoint")).items == []


async def test_a00009_a_statefulset_pod_moves_when_its_pool_annotation_changes(agent: RunningAgent) -> None:
    db0 = pod("db-0", annotations={ANNO_POOL: '{"ipv4": ["v4-a"]}'}, **owned_by("apps/v1", "StatefulSet", "db"))
    await agent.apply(V4A, V4B, statefulset(1), db0)
    await add(agent, "db-0")
    moved = pod("db-0", annotations={ANNO_POOL: '{"ipv4": ["v4-b"]}'}, **owned_by("apps/v1", "StatefulSet", "db"))
    await kill(agent, "db-0")
    await agent.apply(moved)
    _, answer = await add(agent, "db-0")
    assert pools_of(answer) == ["v4-b"]
    assert await records(agent, "v4-a") == {}


async def test_a_statefulset_pods_second_nic_keeps_its_fixed_address_from_its_own_networks_pool(
    agent: RunningAgent,
) -> None:
    """Each NIC's pool comes from its own network's configuration (no pod annotation): the re-created pod's eth0
    ADD, which carries eth0's network only, once judged net1's pool by it, freed net1's address, and another
    pod took it before net1's ADD came."""
    db0 = pod("db-0", **owned_by("apps/v1", "StatefulSet", "db"))
    await agent.apply(V4A, V4B, statefulset(2), db0, pod("other"))
    _, eth0 = await add(agent, "db-0", ifname="eth0", defaultIPv4IPPool=["v4-a"])
    _, net1 = await add(agent, "db-0", ifname="net1", defaultIPv4IPPool=["v4-b"])
    await recreate(agent, db0)
    _, eth0_again = await add(agent, "db-0", ifname="eth0", defaultIPv4IPPool=["v4-a"])
    (record,) = (await records(agent, "v4-b")).values()
    assert record["podUid"] == await uid_of(agent, "db-0")  # re-owned with eth0's, not freed
    status, _ = await add(agent, "other", ifname="eth0", defaultIPv4IPPool=["v4-b"])
    assert status == 200
    status, net1_again = await add(agent, "db-0", ifname="net1", defaultIPv4IPPool=["v4-b"])
    assert status == 200, net1_again
    assert addresses(eth0_again) == addresses(net1_again) == sorted(addresses(eth0) + addresses(net1))


async def test_a_statefulset_pods_second_nic_moves_when_the_ippools_annotation_names_another_pool(
    agent: RunningAgent,
) -> None:
    both = '[{"interface": "eth0", "ipv4": ["v4-a"]}, {"interface": "net1", "ipv4": ["%s"]}]'
    db0 = pod("db-0", annotations={ANNO_POOLS: both % "v4-b"}, **owned_by("apps/v1", "StatefulSet", "db"))
    await agent.apply(V4A, V4B, V6A, statefulset(1), db0)
    _, first = await add(agent, "db-0", ifname="eth0")
    assert sorted(pools_of(first)) == ["v4-a", "v4-b"]
    await kill(agent, "db-0")
    await agent.apply(pod("db-0", annotations={ANNO_POOLS: both % "v4-a"}, **owned_by("apps/v1", "StatefulSet", "db")))
    _, second = await add(agent, "db-0", ifname="eth0")
    assert addresses(second) == [a for a in addresses(first) if a.startswith("10.10.")]  # eth0 keeps its own
    assert await records(agent, "v4-b") == {}  # net1's left the pool the annotation no longer names
    _, moved = await add(agent, "db-0", ifname="net1")
    assert pools_of(moved) == ["v4-a"]
    assert len(await records(agent, "v4-a")) == 2


async def test_a_statefulset_pods_half_adopted_dual_stack_entry_leaves_nothing_held_in_its_old_pool(
    agent: RunningAgent,
) -> None:
    """The re-created pod takes its IPv4 record over, but its IPv6 record is gone (reclaimed meanwhile): the entry
    is given up and allocated afresh, here from another IPv4 pool first in the candidates.  The IPv4 record it had
    already taken over was once freed under the old UID, which no longer held it: it stayed held, in no
    endpoint, while the ordinal was valid."""
    db0 = pod("db-0", **owned_by("apps/v1", "StatefulSet", "db"))
    await agent.apply(V4A, V4B, V6A, statefulset(2), db0)
    _, first = await add(agent, "db-0", defaultIPv4IPPool=["v4-a"], defaultIPv6IPPool=["v6-a"])
    assert pools_of(first) == ["v4-a", "v6-a"]
    await recreate(agent, db0)
    v6 = await agent.store.get("SpiderIPPool", "v6-a")
    v6["status"] = {**v6["status"], "allocatedIPs": None, "allocatedIPCount": 0}  # its record is gone
    await agent.store.update_status(v6)
    status, second = await add(agent, "db-0", defaultIPv4IPPool=["v4-b", "v4-a"], defaultIPv6IPPool=["v6-a"])
    assert status == 200, second
    assert pools_of(second) == ["v4-b", "v6-a"]
    assert await records(agent, "v4-a") == {}


async def test_with_the_statefulset_feature_off_its_pods_are_stateless(agent: RunningAgent) -> None:
    agent.api.ipam.settings = type(agent.api.ipam.settings)(enable_statefulset=False)
    db0 = pod("db-0", **owned_by("apps/v1", "StatefulSet", "db"))
    await agent.apply(V4A, statefulset(2), db0)
    await add(agent, "db-0", defaultIPv4IPPool=["v4-a"])
    await recreate(agent, db0)
    assert await records(agent, "v4-a") == {}


def kubevirt(vm_deleting: bool = False) -> list[dict[str, Any]]:
    vm_meta: dict[str, Any] = {"name": "vm1", "namespace": "default"}
    vmi = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": "vm1", "namespace": "default", **owned_by("kubevirt.io/v1", "VirtualMachine", "vm1")},
    }
    return [{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": vm_meta}, vmi]


async def test_f00001_a_kubevirt_vm_keeps_its_address_across_launcher_pods(agent: RunningAgent) -> None:
    launcher = pod("virt-launcher-vm1-abcde", **owned_by("kubevirt.io/v1", "VirtualMachineInstance", "vm1"))
    await agent.apply(V4A, *kubevirt(), launcher)
    _, first = await add(agent, "virt-launcher-vm1-abcde", defaultIPv4IPPool=["v4-a"])
    endpoint = await agent.store.get("SpiderEndpoint", "vm1", "default")
    assert endpoint["status"]["ownerControllerType"] == "VirtualMachineInstance"
    assert [r["pod"] for r in (await records(agent, "v4-a")).values()] == ["default/vm1"]
    await kill(agent, "virt-launcher-vm1-abcde")
    await agent.apply(pod("virt-launcher-vm1-fghij", **owned_by("kubevirt.io/v1", "VirtualMachineInstance", "vm1")))
    _, second = await add(agent, "virt-launcher-vm1-fghij", defaultIPv4IPPool=["v4-a"])
    assert addresses(second) == addresses(first)


async def test_a_deleted_kubevirt_vm_releases_its_address(agent: RunningAgent) -> None:
    launcher = pod("virt-launcher-vm1-abcde", **owned_by("kubevirt.io/v1", "VirtualMachineInstance", "vm1"))
    await agent.apply(V4A, *kubevirt(), launcher)
    await add(agent, "virt-launcher-vm1-abcde", defaultIPv4IPPool=["v4-a"])
    await agent.store.delete("VirtualMachineInstance", "vm1", "default")
    await agent.store.delete("VirtualMachine", "vm1", "default")
    await kill(agent, "virt-launcher-vm1-abcde")
    assert await records(agent, "v4-a") == {}


# --- validation at the store layer ---------------------------------------------------------------------------------


async def test_d00001_a_pool_cannot_take_an_ip_another_pool_of_the_same_subnet_has(agent: RunningAgent) -> None:
    await agent.apply(pool_object("one", "10.22.0.0/24", ["10.22.0.10-10.22.0.20"]))
    with pytest.raises(Exception, match=r"overlap with IPPool one in IP ranges \['10.22.0.15'\]"):
        await agent.apply(pool_object("two", "10.22.0.0/24", ["10.22.0.15"]))


async def test_d00003_a_wrong_gateway_or_route_is_refused(agent: RunningAgent) -> None:
    with pytest.raises(Exception, match="not pertains to subnet"):
        await agent.apply(pool_object("gw", "10.23.0.0/24", ["10.23.0.10"], gateway="10.99.0.1"))
    with pytest.raises(Exception, match=r"please specify 'spec\.gateway' to configure the default route"):
        await agent.apply(
            pool_object("rt", "10.23.0.0/24", ["10.23.0.10"], routes=[{"dst": "0.0.0.0/0", "gw": "10.23.0.1"}])
        )


@pytest.mark.parametrize("alias", ["sp", "spiderippools", "SpiderIPPool"])
async def test_a_pool_written_under_any_name_of_its_kind_is_validated(agent: RunningAgent, alias: str) -> None:
    bad = {**pool_object("gw", "10.23.0.0/24", ["10.23.0.10"], gateway="10.99.0.1"), "kind": alias}
    with pytest.raises(Exception, match="not pertains to subnet"):
        await agent.store.create(bad)
    assert (await agent.store.list("SpiderIPPool")).items == []


# --- release cooldown ----------------------------------------------------------------------------------------------


async def test_a_pool_with_a_cooldown_does_not_hand_a_released_address_out_again_at_once(agent: RunningAgent) -> None:
    resting = pool_object("resting", "10.24.0.0/24", ["10.24.0.10"])
    resting["metadata"]["annotations"] = {"ipam.spider.io/release-cooldown-seconds": "3600"}
    await agent.apply(resting, pod("p"), pod("q"))
    assert (await add(agent, "p", defaultIPv4IPPool=["resting"]))[0] == 200
    await kill(agent, "p")
    status, message = await add(agent, "q", defaultIPv4IPPool=["resting"])
    assert status == 500
    assert "still cooling down" in message
    released = json.loads((await agent.pool_status("resting"))["releasedIPs"])
    assert released["10.24.0.10"]["pod"] == "default/p"


async def test_a_bad_routes_annotation_fails_before_anything_is_allocated(agent: RunningAgent) -> None:
    await agent.apply(
        V4A,
        pod(
            "p", annotations={ANNO_POOL: '{"ipv4": ["v4-a"]}', "ipam.spidernet.io/routes": '[{"dst": "x", "gw": "y"}]'}
        ),
    )
    status, _ = await add(agent, "p")
    assert status == 500
    assert await records(agent, "v4-a") == {}


async def test_an_unnamed_ippools_annotation_without_an_entry_for_the_nic_is_wrong_input(agent: RunningAgent) -> None:
    await agent.apply(V4A, pod("p", annotations={ANNO_POOLS: '[{"ipv4": ["v4-a"]}]'}))
    status, message = await add(agent, "p", ifname="net1")
    assert status == 500
    assert "none for interface net1" in message
    assert await records(agent, "v4-a") == {}


async def test_an_unnamed_ippools_annotation_refuses_a_nic_it_cannot_place(agent: RunningAgent) -> None:
    await agent.apply(V4A, pod("p", annotations={ANNO_POOLS: '[{"ipv4": ["v4-a"]}, {"ipv4": ["v4-a"]}]'}))
    status, message = await add(agent, "p", ifname="net\u00b2")  # NB: "²".isdigit(), but no ASCII digit
    assert status == 500
    assert "interface net\u00b2 is none of them" in message


async def test_addresses_shared_by_overlapping_pools_that_slipped_past_admission_are_never_handed_out(
    agent: RunningAgent,
) -> None:
    # Admission refuses this pair; a Kubernetes API server without our webhook would not, so bypass it here.
    raw = agent.store.inner  # type: ignore[attr-defined]
    await raw.create(pool_object("left", "10.25.0.0/24", ["10.25.0.10-10.25.0.11"]))
    await raw.create(pool_object("right", "10.25.0.0/24", ["10.25.0.11-10.25.0.12"]))
    await agent.apply(pod("a"), pod("b"), pod("c"))
    assert addresses((await add(agent, "a", defaultIPv4IPPool=["left"]))[1]) == ["10.25.0.10/24"]
    assert addresses((await add(agent, "b", defaultIPv4IPPool=["right"]))[1]) == ["10.25.0.12/24"]
    status, message = await add(agent, "c", defaultIPv4IPPool=["left"])
    assert status == 500
    assert "exhausted" in message


# --- ownership: what one request may take from another ------------------------------------------------------------


async def test_a_late_add_for_a_replaced_pod_fails_and_leaves_the_live_pod_alone(agent: RunningAgent) -> None:
    await agent.apply(DEFAULT_V4, pod("web"))
    assert (await add(agent, "web"))[0] == 200
    old = await kill(agent, "web")
    await agent.apply(pod("web"))
    assert (await add(agent, "web"))[0] == 200
    held = await records(agent, "default-v4")
    late = {
        "containerID": "ctr-late",
        "ifName": "eth0",
        "netNamespace": "/var/run/netns/x",
        "podNamespace": "default",
        "podName": "web",
        "podUID": old,
    }
    with trio.fail_after(10):
        status, message, headers = await http_call(agent.socket, "POST", "/v1/ipam/ip", late)
    assert (status, headers["X-Cni-Code"]) == (500, "103")  # the pod is not alive (any more)
    assert f"UID {old} was replaced by {await uid_of(agent, 'web')}" in message
    assert await records(agent, "default-v4") == held
    endpoint = await agent.store.get("SpiderEndpoint", "web", "default")
    assert endpoint["status"]["current"]["uid"] == await uid_of(agent, "web")


async def test_a_repeated_add_that_fails_in_one_family_keeps_what_the_pod_already_held(agent: RunningAgent) -> None:
    tiny_v6 = pool_object("tiny-v6", "fd20::/64", ["fd20::10"])
    wanted = json.dumps({"ipv4": ["v4-a"], "ipv6": ["tiny-v6"]})
    await agent.apply(V4A, tiny_v6, pod("dual", annotations={ANNO_POOL: wanted}))
    assert (await add(agent, "dual"))[0] == 200
    # another process frees the pod's only IPv6 address and hands it to someone else
    obj = await agent.store.get("SpiderIPPool", "tiny-v6")
    taken = {
        ip: {**rec, "pod": "default/other", "podUid": "uid-other"}
        for ip, rec in (await records(agent, "tiny-v6")).items()
    }
    obj["status"]["allocatedIPs"] = json.dumps(taken)
    await agent.store.update_status(obj)
    status, message = await add(agent, "dual")
    assert status == 500
    assert "exhausted" in message
    assert [r["podUid"] for r in (await records(agent, "v4-a")).values()] == [await uid_of(agent, "dual")]


async def test_dropping_an_endpoint_spares_one_that_became_another_pods_meanwhile(agent: RunningAgent) -> None:
    await agent.apply(DEFAULT_V4, pod("web"))
    assert (await add(agent, "web"))[0] == 200
    stale = await agent.api.ipam.endpoint("default", "web")
    assert stale is not None
    newer = await agent.store.get("SpiderEndpoint", "web", "default")
    newer["status"]["current"]["uid"] = "uid-of-a-newer-pod"
    await agent.store.update(newer)
    await agent.api.ipam._drop_endpoint(stale)
    kept = await agent.store.get("SpiderEndpoint", "web", "default")
    assert kept["status"]["current"]["uid"] == "uid-of-a-newer-pod"


async def test_check_finds_a_kubevirt_launcher_pods_addresses_on_its_vms_endpoint(agent: RunningAgent) -> None:
    launcher = pod("virt-launcher-vm1-abcde", **owned_by("kubevirt.io/v1", "VirtualMachineInstance", "vm1"))
    await agent.apply(V4A, *kubevirt(), launcher)
    uid = await uid_of(agent, "virt-launcher-vm1-abcde")
    conf = netconf(agent.socket, default_ipv4_ippool=["v4-a"])
    env = cni_env("ADD", "ctr-vm1", "eth0", pod_args("virt-launcher-vm1-abcde", uid))
    with trio.fail_after(20):
        code, result = await run_plugin(agent.shim, env, conf)
        assert code == 0, result
        check = await run_plugin(agent.shim, {**env, "CNI_COMMAND": "CHECK"}, {**conf, "prevResult": result})
    assert check == (0, None)


async def test_a_late_del_of_an_old_sandbox_leaves_the_entry_a_newer_sandbox_wrote(agent: RunningAgent) -> None:
    await agent.apply(DEFAULT_V4, pod("web"))
    assert (await add(agent, "web", container="ctr-a"))[0] == 200
    seen_by_old_del = await agent.api.ipam.endpoint("default", "web")
    assert seen_by_old_del is not None
    assert (await add(agent, "web", container="ctr-b"))[0] == 200  # the sandbox was re-created meanwhile
    await agent.api.ipam._forget_entries(seen_by_old_del, {("eth0", "ctr-a")})
    with pytest.raises(Conflict):
        await agent.api.ipam._drop_endpoint(seen_by_old_del)
    endpoint = await agent.api.ipam.endpoint("default", "web")
    assert endpoint is not None
    assert [(n.interface, n.container_id) for n in endpoint.nics] == [("eth0", "ctr-b")]
