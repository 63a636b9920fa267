"""The CRDs in ``deploy/crds/``: Spiderpool's names and shapes, valid schemas, and what they accept and refuse.

Objects are checked offline against each CRD's OpenAPI schema the way the API server checks them with strict
field validation (``tests/deploy/crdschema.py``). The Spiderpool objects below are written after the examples
of Spiderpool's documentation (reference §1.1-§1.6): they must apply to our CRDs unchanged.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from spider.endpoint import Endpoint, NicAllocation
from spider.kinds import FINALIZER, KINDS, SPIDER_GROUP, SPIDER_VERSION, Kind, kind_info
from spider.pool import Owner, PoolLedger
from tests.deploy import crdschema
from tests.deploy.files import CRD_DIR, documents, example_files

SPIDER_KINDS = [k for k in KINDS if k.group == SPIDER_GROUP]
NAD = kind_info("NetworkAttachmentDefinition")
"""Multus's own kind, whose CRD we ship as Multus does (SpiderMultusConfig generates them)."""
CRDS = {doc["spec"]["names"]["kind"]: doc for p in sorted(CRD_DIR.glob("*.yaml")) for doc in documents(p)}
API = f"{SPIDER_GROUP}/{SPIDER_VERSION}"
OLDEST_K8S, NEWEST_K8S = "1.25", kubernetes_validate.latest_version()


def schema_of(kind: str) -> dict[str, Any]:
    version = CRDS[kind]["spec"]["versions"][0]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


# Spiderpool's documented objects, as a user would have them in git today.
SPIDERPOOL_OBJECTS: list[dict[str, Any]] = [
    {  # reference §1.1 minimal example
        "apiVersion": API,
        "kind": "SpiderIPPool",
        "metadata": {"name": "ippool-v4"},
        "spec": {
            "subnet": "172.18.40.0/24",
            "ips": ["172.18.40.10-172.18.40.100"],
            "excludeIPs": ["172.18.40.50"],
            "gateway": "172.18.40.1",
        },
    },
    {  # every spec field of SpiderIPPool, IPv6
        "apiVersion": API,
        "kind": "SpiderIPPool",
        "metadata": {"name": "ippool-v6", "labels": {"ipam.spidernet.io/ippool-cidr": "fd00---64"}},
        "spec": {
            "ipVersion": 6,
            "subnet": "fd00::/64",
            "ips": ["fd00::10-fd00::100"],
            "excludeIPs": ["fd00::50"],
            "gateway": "fd00::1",
            "routes": [{"dst": "fd01::/64", "gw": "fd00::fe"}],
            "podAffinity": {"matchLabels": {"app": "web"}},
            "namespaceAffinity": {"matchExpressions": [{"key": "team", "operator": "In", "values": ["a", "b"]}]},
            "namespaceName": ["team-a"],
            "nodeAffinity": {"matchExpressions": [{"key": "gpu", "operator": "Exists"}]},
            "nodeName": ["node-1"],
            "multusName": ["kube-system/macvlan-vlan100"],
            "default": False,
            "disable": False,
        },
    },
    {  # a pool as Spiderpool's agent and controller left it in etcd, status and IaaS provider fields included
        "apiVersion": API,
        "kind": "SpiderIPPool",
        "metadata": {"name": "prewarmed", "finalizers": [FINALIZER]},
        "spec": {"subnet": "10.6.0.0/16", "ips": ["10.6.0.10-10.6.0.20"], "vlan": 0},
        "status": {
            "allocatedIPs": json.dumps({"10.6.0.10": {"pod": "default/web-0", "podUid": "u-1", "interface": "eth0"}}),
            "allocatedIPCount": 1,
            "totalIPCount": 11,
            "ipMetaData": {"metadata": "{}", "observedGeneration": 2, "readyIPCount": 11, "unreadyIPCount": 0},
            "parentNic": {"name": "eth1", "mac": "02:00:00:00:00:01"},
        },
    },
    {  # reference §1.2 minimal example
        "apiVersion": API,
        "kind": "SpiderSubnet",
        "metadata": {"name": "subnet-v4"},
        "spec": {
            "subnet": "172.18.0.0/16",
            "ips": ["172.18.40.2-172.18.40.254"],
            "excludeIPs": ["172.18.40.10-172.18.40.20"],
            "gateway": "172.18.0.1",
        },
        "status": {
            "controlledIPPools": json.dumps(
                {"auto4-web": {"ips": ["172.18.40.2"], "application": "apps_v1_Deployment_default_web"}}
            ),
            "allocatedIPCount": 1,
            "totalIPCount": 242,
        },
    },
    {
        "apiVersion": API,
        "kind": "SpiderReservedIP",
        "metadata": {"name": "reserved-v4"},
        "spec": {"ipVersion": 4, "ips": ["172.18.40.40", "172.18.40.43-172.18.40.45"]},
    },
    {  # as Spiderpool's agent writes it for a StatefulSet pod
        "apiVersion": API,
        "kind": "SpiderEndpoint",
        "metadata": {"name": "web-0", "namespace": "default", "finalizers": [FINALIZER]},
        "status": {
            "current": {
                "uid": "u-1",
                "node": "node-1",
                "ips": [
                    {
                        "interface": "eth0",
                        "ipv4": "172.18.40.10/24",
                        "ipv4Pool": "ippool-v4",
                        "ipv4Gateway": "172.18.40.1",
                        "vlan": 0,
                        "cleanGateway": False,
                        "routes": [{"dst": "10.20.0.0/16", "gw": "172.18.40.254"}],
                    }
                ],
            },
            "ownerControllerType": "StatefulSet",
            "ownerControllerName": "web",
        },
    },
    {  # Spiderpool's SpiderMultusConfig sample (docs/reference/crd-spidermultusconfig.md)
        "apiVersion": API,
        "kind": "SpiderMultusConfig",
        "metadata": {
            "name": "demo",
            "namespace": "default",
            "annotations": {"multus.spidernet.io/cr-name": "macvlan-100", "multus.spidernet.io/cni-version": "0.4.0"},
        },
        "spec": {
            "cniType": "macvlan",
            "macvlan": {
                "master": ["eth0"],
                "vlanID": 100,
                "ippools": {"ipv4": ["default-pool-v4"], "ipv6": ["default-pool-v6"]},
            },
        },
    },
    {  # a bonded ipvlan with RDMA and a coordinator override
        "apiVersion": API,
        "kind": "SpiderMultusConfig",
        "metadata": {"name": "ipvlan-bond", "namespace": "kube-system"},
        "spec": {
            "cniType": "ipvlan",
            "ipvlan": {
                "master": ["eth1", "eth2"],
                "mtu": 9000,
                "bond": {"name": "bond0", "mode": 1, "options": "primary=eth1"},
                "rdmaResourceName": "spidernet.io/shared_rdma",
            },
            "enableCoordinator": True,
            "coordinator": {"mode": "underlay", "podDefaultRouteNIC": "net1", "hijackCIDR": ["169.254.0.0/16"]},
            "chainCNIJsonData": ['{"type": "tuning", "sysctl": {"net.core.somaxconn": "500"}}'],
        },
    },
    {
        "apiVersion": API,
        "kind": "SpiderMultusConfig",
        "metadata": {"name": "sriov-rdma", "namespace": "default"},
        "spec": {
            "cniType": "sriov",
            "sriov": {
                "resourceName": "spidernet.io/mellanoxvf",
                "vlanID": 20,
                "minTxRateMbps": 100,
                "maxTxRateMbps": 1000,
                "rdmaIsolation": True,
                "ippools": {"ipv4": ["vf-v4"], "matchMasterSubnet": True},
            },
        },
    },
    {
        "apiVersion": API,
        "kind": "SpiderMultusConfig",
        "metadata": {"name": "ovs-trunk", "namespace": "default"},
        "spec": {"cniType": "ovs", "ovs": {"bridge": "br1", "trunk": [{"minID": 10, "maxID": 20}, {"id": 30}]}},
    },
    {
        "apiVersion": API,
        "kind": "SpiderMultusConfig",
        "metadata": {"name": "ib", "namespace": "default"},
        "spec": {
            "cniType": "ib-sriov",
            "ibsriov": {"resourceName": "spidernet.io/ibvf", "pkey": "0x7fff", "linkState": "auto"},
        },
    },
    {
        "apiVersion": API,
        "kind": "SpiderMultusConfig",
        "metadata": {"name": "vlan-auto", "namespace": "default"},
        "spec": {"cniType": "vlan", "vlan": {"master": ["eth0"], "vlanMode": "auto"}},
    },
    {
        "apiVersion": API,
        "kind": "SpiderMultusConfig",
        "metadata": {"name": "custom", "namespace": "default"},
        "spec": {"cniType": "custom", "customCNI": '{"cniVersion": "0.3.1", "type": "macvlan", "master": "eth0"}'},
    },
    {  # as spiderpool-init creates it, with the status the controller writes
        "apiVersion": API,
        "kind": "SpiderCoordinator",
        "metadata": {"name": "default"},
        "spec": {
            "mode": "auto",
            "podCIDRType": "calico",
            "hijackCIDR": ["169.254.0.0/16"],
            "policyRoutes": [{"dst": "10.7.0.0/16", "gw": "10.6.0.1"}],
            "podMACPrefix": "0a:1b",
            "tunePodRoutes": True,
            "podDefaultRouteNIC": "",
            "hostRuleTable": 500,
            "podRPFilter": -1,
            "txQueueLen": 0,
            "vethLinkAddress": "169.254.200.1",
            "vethMTU": 1500,
        },
        "status": {"phase": "Synced", "overlayPodCIDR": ["10.233.64.0/18"], "serviceCIDR": ["10.233.0.0/18"]},
    },
    {  # an older release's fields are still accepted
        "apiVersion": API,
        "kind": "SpiderCoordinator",
        "metadata": {"name": "old"},
        "spec": {"podCIDRType": "cluster", "hostRPFilter": 0, "detectGateway": False, "detectIPConflict": False},
    },
]


@pytest.mark.parametrize("kind", SPIDER_KINDS, ids=lambda k: k.kind)
def test_each_kind_of_the_kind_table_has_a_crd_with_its_names_scope_and_status_subresource(kind: Kind) -> None:
    crd = CRDS[kind.kind]
    spec = crd["spec"]
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == f"{kind.plural}.{kind.group}"
    assert spec["group"] == kind.group
    assert spec["names"]["plural"] == kind.plural
    assert spec["names"]["singular"] == kind.kind.lower()
    assert spec["names"]["listKind"] == f"{kind.kind}List"
    assert tuple(spec["names"]["shortNames"]) == kind.short_names
    assert spec["names"]["categories"] == ["spiderpool"]
    assert spec["scope"] == ("Namespaced" if kind.namespaced else "Cluster")
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == (kind.version, True, True)
    assert ("status" in (version.get("subresources") or {})) == kind.status_subresource


def test_there_is_no_crd_without_a_kind_in_the_table() -> None:
    assert set(CRDS) == {k.kind for k in SPIDER_KINDS} | {NAD.kind}


def test_the_network_attachment_definition_crd_is_multuss_own() -> None:
    crd = CRDS[NAD.kind]
    spec = crd["spec"]
    assert crd["metadata"]["name"] == f"{NAD.plural}.{NAD.group}"
    assert (spec["group"], spec["scope"], spec["names"]["plural"]) == (NAD.group, "Namespaced", NAD.plural)
    assert spec["names"]["singular"] == "network-attachment-definition"
    assert tuple(spec["names"]["shortNames"]) == NAD.short_names == ("net-attach-def",)
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == (NAD.version, True, True)
    nad = {"apiVersion": NAD.api_version, "kind": NAD.kind, "metadata": {"name": "n", "namespace": "d"},
           "spec": {"config": '{"cniVersion":"0.3.1","plugins":[]}'}}  # fmt: skip
    assert crdschema.errors(crd, nad) == []
    assert crdschema.errors(crd, {**nad, "spec": {"config": {}}}) != []


def test_short_names_are_spiderpools_and_no_cli_alias_leaks_into_a_crd() -> None:
    short = {kind: tuple(crd["spec"]["names"]["shortNames"]) for kind, crd in CRDS.items()}
    assert short == {
        "SpiderIPPool": ("sp",),
        "SpiderSubnet": ("ss",),
        "SpiderReservedIP": ("sr",),
        "SpiderEndpoint": ("se",),
        "SpiderMultusConfig": ("smc",),
        "SpiderCoordinator": ("scc",),
        "NetworkAttachmentDefinition": ("net-attach-def",),
    }


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_each_schema_is_structural_and_its_defaults_are_valid(kind: str) -> None:
    assert crdschema.structural_problems(schema_of(kind)) == []


def test_the_structural_check_catches_what_the_api_server_refuses() -> None:
    bad = {
        "type": "object",
        "properties": {
            "spec": {"properties": {"a": {"type": "string"}}},  # no type
            "list": {"type": "array"},  # no items
            "port": {"type": "integer", "minimum": 1, "default": 0},  # invalid default
            "both": {"type": "object", "properties": {}, "additionalProperties": {"type": "string"}},
        },
    }
    problems = "\n".join(crdschema.structural_problems(bad))
    for expected in (".spec: needs a type", ".list: an array needs items", ".port: the default 0 is invalid"):
        assert expected in problems
    assert ".both: properties and additionalProperties are mutually exclusive" in problems


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_each_printer_column_points_at_a_field_of_the_schema(kind: str) -> None:
    version = CRDS[kind]["spec"]["versions"][0]
    columns = version.get("additionalPrinterColumns") or []
    assert len({c["name"] for c in columns}) == len(columns)
    for column in columns:
        assert column["type"] in ("integer", "number", "string", "boolean", "date")
        target = crdschema.schema_at(version["schema"]["openAPIV3Schema"], column["jsonPath"])
        assert target is not None, f"{column['name']}: {column['jsonPath']} is not in the schema"


def test_pool_and_endpoint_columns_are_spiderpools_in_spiderpools_order() -> None:
    def columns(kind: str, wide: bool) -> list[str]:
        cols = CRDS[kind]["spec"]["versions"][0]["additionalPrinterColumns"]
        return [c["name"] for c in cols if wide or not c.get("priority")]

    assert columns("SpiderIPPool", wide=False) == [
        "VERSION",
        "SUBNET",
        "ALLOCATED-IP-COUNT",
        "TOTAL-IP-COUNT",
        "DEFAULT",
    ]
    assert columns("SpiderIPPool", wide=True)[5:] == [
        "DISABLE",
        "NodeName",
        "MultusName",
        "APP-NAMESPACE",
        "FREE-IP-COUNT",
    ]
    assert columns("SpiderSubnet", wide=True) == ["VERSION", "SUBNET", "ALLOCATED-IP-COUNT", "TOTAL-IP-COUNT"]
    assert columns("SpiderReservedIP", wide=True) == ["VERSION"]
    assert columns("SpiderEndpoint", wide=True) == ["INTERFACE", "IPV4POOL", "IPV4", "IPV6POOL", "IPV6", "NODE"]


@pytest.mark.parametrize("obj", SPIDERPOOL_OBJECTS, ids=lambda o: f"{o['kind']}/{o['metadata']['name']}")
def test_spiderpools_documented_objects_are_accepted_unchanged(obj: dict[str, Any]) -> None:
    assert crdschema.errors(CRDS[obj["kind"]], obj) == []


def example_objects() -> list[tuple[str, dict[str, Any]]]:
    return [(f"{p.relative_to(CRD_DIR.parent)}#{i}", d) for p in example_files() for i, d in enumerate(documents(p))]


@pytest.mark.parametrize(("where", "obj"), example_objects(), ids=[w for w, _ in example_objects()])
def test_every_example_is_accepted_by_its_schema(where: str, obj: dict[str, Any]) -> None:
    if obj["apiVersion"] == API:
        assert crdschema.errors(CRDS[obj["kind"]], obj) == []
    else:  # Kubernetes' own kinds: Kubernetes' own schemas, oldest and newest supported release
        for release in (OLDEST_K8S, NEWEST_K8S):
            kubernetes_validate.validate(obj, release, strict=True)


def test_examples_cover_every_kind_a_user_writes() -> None:
    kinds = {obj["kind"] for _, obj in example_objects()}
    assert {"SpiderIPPool", "SpiderSubnet", "SpiderReservedIP", "SpiderMultusConfig", "SpiderCoordinator"} <= kinds


def _broken(kind: str, change: dict[str, Any]) -> dict[str, Any]:
    """A documented object of ``kind`` with ``change`` merged into it (``None`` deletes a key)."""
    obj = copy.deepcopy(next(o for o in SPIDERPOOL_OBJECTS if o["kind"] == kind))

    def merge(into: dict[str, Any], patch: dict[str, Any]) -> None:
        for key, value in patch.items():
            if value is None:
                into.pop(key, None)
            elif isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value

    merge(obj, change)
    return obj


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("SpiderIPPool", {"spec": {"subnet": None}}, "'subnet' is a required property"),
    ("SpiderIPPool", {"spec": {"ipVersion": 5}}, "5 is not one of [4, 6]"),
    ("SpiderIPPool", {"spec": {"ipVersion": "4"}}, "'4' is not of type 'integer'"),
    ("SpiderIPPool", {"spec": {"ips": "172.18.40.10"}}, "is not of type 'array'"),
    ("SpiderIPPool", {"spec": {"routes": [{"dst": "10.0.0.0/8"}]}}, "'gw' is a required property"),
    ("SpiderIPPool", {"spec": {"vlan": 4095}}, "4095 is greater than the maximum of 4094"),
    ("SpiderIPPool", {"spec": {"defualt": True}}, "Additional properties are not allowed ('defualt'"),
    ("SpiderIPPool", {"spec": {"podAffinity": {"matchExpressions": [{"key": "a"}]}}}, "'operator' is a required"),
    ("SpiderIPPool", {"status": {"allocatedIPCount": -1}}, "-1 is less than the minimum of 0"),
    ("SpiderIPPool", {"status": {"allocatedIPs": {"10.6.0.10": {}}}}, "is not of type 'string'"),
    ("SpiderIPPool", {"metadata": {"name": "Not_A_Name"}}, "does not match"),
    ("SpiderSubnet", {"spec": {"gateway": 1}}, "1 is not of type 'string'"),
    ("SpiderReservedIP", {"spec": {"ipVersion": 0}}, "0 is not one of [4, 6]"),
    ("SpiderEndpoint", {"status": {"current": {"node": None}}}, "'node' is a required property"),
    ("SpiderEndpoint", {"status": {"current": {"ips": [{"ipv4": "10.0.0.1/24"}]}}}, "'interface' is a required"),
    ("SpiderEndpoint", {"status": {"ownerControllerType": None}}, "'ownerControllerType' is a required"),
    ("SpiderMultusConfig", {"spec": {"cniType": "flannel"}}, "'flannel' is not one of"),
    ("SpiderMultusConfig", {"spec": {"macvlan": {"master": None}}}, "'master' is a required property"),
    ("SpiderMultusConfig", {"spec": {"macvlan": {"vlanID": 4095}}}, "4095 is greater than the maximum of 4094"),
    ("SpiderMultusConfig", {"spec": {"macvlan": {"bond": {"name": "bond0", "mode": 7}}}}, "7 is greater than"),
    ("SpiderMultusConfig", {"spec": {"macvlan": {"mtu": -1}}}, "-1 is less than the minimum of 0"),
    ("SpiderMultusConfig", {"spec": {"coordinator": {"mode": "disable"}}}, "'disable' is not one of"),
    ("SpiderCoordinator", {"spec": {"podCIDRType": None}}, "'podCIDRType' is a required property"),
    ("SpiderCoordinator", {"spec": {"podCIDRType": "flannel"}}, "'flannel' is not one of"),
    ("SpiderCoordinator", {"spec": {"podRPFilter": 3}}, "3 is greater than the maximum of 2"),
    ("SpiderCoordinator", {"spec": {"vethMTU": 0}}, "0 is less than the minimum of 1"),
    ("SpiderCoordinator", {"spec": {"txQueueLen": -1}}, "-1 is less than the minimum of 0"),
    ("SpiderCoordinator", {"status": {"phase": None}}, "'phase' is a required property"),
]


@pytest.mark.parametrize(("kind", "change", "expected"), INVALID, ids=[f"{k}:{e}" for k, _, e in INVALID])
def test_invalid_objects_are_refused_by_the_schema(kind: str, change: dict[str, Any], expected: str) -> None:
    found = crdschema.errors(CRDS[kind], _broken(kind, change))
    assert any(expected in line for line in found), found


def test_the_pool_status_our_agents_write_is_kept_whole() -> None:
    # Anything the schema does not list would be refused by strict validation or pruned by the API server.
    ledger = PoolLedger.from_object(SPIDERPOOL_OBJECTS[0])
    for n in range(3):
        ledger.allocate(Owner(f"u-{n}", "eth0", "default", f"web-{n}", container_id=f"c{n}", node="node-1"))
    status = ledger.to_status()
    assert {"freeIPCount", "allocatedIPs"} <= set(status)
    obj = {**copy.deepcopy(SPIDERPOOL_OBJECTS[0]), "status": status}
    assert crdschema.errors(CRDS["SpiderIPPool"], obj) == []


def test_the_endpoint_our_agents_write_is_kept_whole() -> None:
    nic = NicAllocation(
        interface="net1",
        ipv4="172.18.40.10/24",
        ipv4_pool="ippool-v4",
        ipv6="fd00::10/64",
        ipv6_pool="ippool-v6",
        ipv4_gateway="172.18.40.1",
        clean_gateway=True,
        container_id="0123abcd",
        network="macvlan-vlan100",
    )
    obj = Endpoint(namespace="default", name="web-0", uid="u-1", node="node-1", nics=(nic,)).to_object()
    entry = obj["status"]["current"]["ips"][0]
    assert (entry["containerID"], entry["network"]) == ("0123abcd", "macvlan-vlan100")
    assert crdschema.errors(CRDS["SpiderEndpoint"], obj) == []


@pytest.mark.parametrize("path", sorted(CRD_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_each_crd_is_a_valid_customresourcedefinition_for_kubernetes(path: Path) -> None:
    for doc in documents(path):
        for release in (OLDEST_K8S, NEWEST_K8S):
            kubernetes_validate.validate(doc, release, strict=True)
