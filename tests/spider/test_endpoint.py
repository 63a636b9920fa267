"""``spider.endpoint``: SpiderEndpoint and its per-NIC entries, stored and served through the agent API."""

from __future__ import annotations

import json

import attrs
from hypothesis import given
from hypothesis import strategies as st

from spider.endpoint import Endpoint, NicAllocation
from spider.kinds import FINALIZER, SPIDER_API_VERSION
from spider.pool import Route

names = st.text(alphabet="abcdef0123456789-", min_size=1, max_size=8)
interfaces = st.sampled_from(["eth0", "net1", "net2", ""])  # "" is Spiderpool's unnamed multi-NIC entry
routes = st.builds(
    Route, dst=st.sampled_from(["10.1.0.0/16", "fd10::/64"]), gw=st.sampled_from(["10.0.0.1", "fd00::1"])
)


@st.composite
def nic_allocations(draw: st.DrawFn, interface: st.SearchStrategy[str] = interfaces) -> NicAllocation:
    """One interface's entry; absent fields are ``None``/empty, as ``from_json`` reads them."""
    v4 = draw(st.none() | st.integers(1, 254).map(lambda i: f"10.0.0.{i}/24"))
    v6 = draw(st.none() | st.integers(1, 255).map(lambda i: f"fd00::{i:x}/120"))
    return NicAllocation(
        interface=draw(interface),
        ipv4=v4,
        ipv6=v6,
        ipv4_pool=draw(st.none() | names) if v4 else None,
        ipv6_pool=draw(st.none() | names) if v6 else None,
        ipv4_gateway=draw(st.none() | st.just("10.0.0.1")),
        ipv6_gateway=draw(st.none() | st.just("fd00::1")),
        clean_gateway=draw(st.booleans()),
        routes=tuple(draw(st.lists(routes, max_size=2))),
        vlan=draw(st.sampled_from([0, 0, 1, 100, 4094])),
        container_id=draw(st.sampled_from(["", "c1", "c2"])),
        network=draw(st.sampled_from(["", "macvlan-conf", "kube-system/ipvlan"])),
    )


@st.composite
def endpoints(draw: st.DrawFn) -> Endpoint:
    """An endpoint as we write it: an owner controller name, no deletion timestamp."""
    name = draw(names)
    return Endpoint(
        namespace=draw(names),
        name=name,
        uid=draw(names),
        node=draw(names),
        nics=tuple(draw(st.lists(nic_allocations(), max_size=3))),
        owner_controller_type=draw(st.sampled_from(["Pod", "Deployment", "StatefulSet", "VirtualMachineInstance"])),
        owner_controller_name=draw(names),
        resource_version=draw(st.sampled_from(["", "1", "42"])),
    )


# --- NicAllocation -------------------------------------------------------------------------------------


@given(nic_allocations())
def test_a_nic_entry_reads_back_from_its_json(entry: NicAllocation) -> None:
    assert NicAllocation.from_json(json.loads(json.dumps(entry.to_json()))) == entry


def test_a_nic_entry_uses_spiderpools_camel_case_keys_and_omits_empty_fields() -> None:
    entry = NicAllocation(interface="eth0", ipv4="10.0.0.5/24", ipv4_pool="blue", ipv4_gateway="10.0.0.1")
    assert entry.to_json() == {
        "interface": "eth0",
        "ipv4": "10.0.0.5/24",
        "ipv4Pool": "blue",
        "ipv4Gateway": "10.0.0.1",
    }


def test_a_nic_entry_written_by_spiderpool_is_read() -> None:
    raw = {
        "interface": "eth0",
        "ipv4": "10.0.0.5/24",
        "ipv4Pool": "blue",
        "ipv6": "",
        "vlan": 0,
        "cleanGateway": False,
        "routes": [{"dst": "10.1.0.0/16", "gw": "10.0.0.1"}],
    }
    entry = NicAllocation.from_json(raw)
    assert (entry.ipv6, entry.container_id, entry.network) == (None, "", "")
    assert entry.routes == (Route("10.1.0.0/16", "10.0.0.1"),)


def test_pools_lists_each_family_the_nic_holds() -> None:
    entry = NicAllocation(interface="eth0", ipv4="10.0.0.5/24", ipv4_pool="b4", ipv6="fd00::5/120", ipv6_pool="b6")
    assert entry.pools() == [(4, "b4", "10.0.0.5/24"), (6, "b6", "fd00::5/120")]
    assert NicAllocation(interface="eth0").pools() == []


@given(nic_allocations())
def test_the_api_form_omits_container_id_network_and_clean_gateway(entry: NicAllocation) -> None:
    api = entry.to_api()
    assert not {"containerID", "network", "cleanGateway"} & api.keys()
    assert api == {k: v for k, v in entry.to_json().items() if k not in ("containerID", "network", "cleanGateway")}


def test_the_api_form_omits_vlan_when_it_is_zero() -> None:
    assert "vlan" not in NicAllocation(interface="eth0", vlan=0).to_api()
    assert NicAllocation(interface="eth0", vlan=100).to_api()["vlan"] == 100


# --- Endpoint ------------------------------------------------------------------------------------------


@given(endpoints())
def test_an_endpoint_reads_back_from_its_stored_object(endpoint: Endpoint) -> None:
    assert Endpoint.from_object(json.loads(json.dumps(endpoint.to_object()))) == endpoint


def test_an_endpoint_without_owner_controller_name_is_stored_under_the_pods_name() -> None:
    endpoint = Endpoint(namespace="ns", name="pod1", uid="u", node="n")
    assert Endpoint.from_object(endpoint.to_object()) == attrs.evolve(endpoint, owner_controller_name="pod1")


def test_the_stored_form_is_a_spiderendpoint_with_the_finalizer() -> None:
    obj = Endpoint(namespace="ns", name="pod1", uid="u", node="n").to_object()
    assert (obj["apiVersion"], obj["kind"]) == (SPIDER_API_VERSION, "SpiderEndpoint")
    assert obj["metadata"] == {"name": "pod1", "namespace": "ns", "finalizers": [FINALIZER]}
    assert obj["status"] == {
        "current": {"uid": "u", "node": "n", "ips": []},
        "ownerControllerType": "Pod",
        "ownerControllerName": "pod1",
    }


def test_the_stored_form_carries_the_resource_version_it_was_read_at() -> None:
    obj = Endpoint(namespace="ns", name="pod1", uid="u", node="n", resource_version="7").to_object()
    assert obj["metadata"]["resourceVersion"] == "7"


def test_an_endpoint_with_a_deletion_timestamp_is_terminating() -> None:
    obj = Endpoint(namespace="ns", name="pod1", uid="u", node="n").to_object()
    obj["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    assert Endpoint.from_object(obj).terminating


def test_the_api_form_is_spiderpools_workload_endpoint_status() -> None:
    endpoint = Endpoint(
        namespace="ns",
        name="pod1",
        uid="u",
        node="n",
        nics=(NicAllocation(interface="eth0", ipv4="10.0.0.5/24", container_id="c1", vlan=0),),
    )
    assert endpoint.to_api() == {
        "podNamespace": "ns",
        "podName": "pod1",
        "podUID": "u",
        "node": "n",
        "interfaces": [{"interface": "eth0", "ipv4": "10.0.0.5/24"}],
    }


@given(endpoints(), nic_allocations())
def test_with_nic_adds_or_replaces_the_entry_of_that_interface_and_keeps_the_others(
    endpoint: Endpoint, entry: NicAllocation
) -> None:
    updated = endpoint.with_nic(entry)
    assert updated.nic(entry.interface) == entry
    assert [n for n in updated.nics if n.interface != entry.interface] == [
        n for n in endpoint.nics if n.interface != entry.interface
    ]
    assert sum(n.interface == entry.interface for n in updated.nics) == 1


@given(endpoints(), interfaces)
def test_without_nic_drops_only_the_entries_of_that_interface(endpoint: Endpoint, interface: str) -> None:
    updated = endpoint.without_nic(interface)
    assert updated.nic(interface) is None
    assert updated.nics == tuple(n for n in endpoint.nics if n.interface != interface)
    assert attrs.evolve(updated, nics=endpoint.nics) == endpoint


def test_nic_finds_the_entry_of_an_interface() -> None:
    eth0, net1 = NicAllocation(interface="eth0"), NicAllocation(interface="net1", ipv4="10.0.0.9/24")
    endpoint = Endpoint(namespace="ns", name="p", uid="u", node="n", nics=(eth0, net1))
    assert endpoint.nic("net1") == net1
    assert endpoint.nic("net2") is None
