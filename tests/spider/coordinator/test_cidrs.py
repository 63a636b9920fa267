"""The SpiderCoordinator's status rules (``spider.coordinator.cidrs``), one source and one podCIDRType at a time,
with Spiderpool's SpiderCoordinator e2e cases (V000xx) where they are about the status."""

from __future__ import annotations

import json
from typing import Any

import pytest

from spider.coordinator.cidrs import (
    NOT_READY,
    SYNCED,
    ClusterView,
    CniFile,
    CoordinatorStatus,
    calico_cidrs,
    cilium_cidrs,
    coordinator_status,
    default_cni_type,
    kcm_cidrs,
    kubeadm_cidrs,
    split_namespaced_name,
    status_differs,
)

CLUSTER_CONFIGURATION = """\
apiVersion: kubeadm.k8s.io/v1beta3
kind: ClusterConfiguration
networking:
  dnsDomain: cluster.local
  podSubnet: 10.233.64.0/18,fd85:ee78:d8a6:8607::1:0/112
  serviceSubnet: 10.233.0.0/18
"""


def kubeadm_config(text: str = CLUSTER_CONFIGURATION) -> dict[str, Any]:
    meta = {"name": "kubeadm-config", "namespace": "kube-system"}
    return {"metadata": meta, "data": {"ClusterConfiguration": text}}


def kcm_pod(command: list[str], args: list[str] | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "kube-controller-manager", "command": command}
    if args is not None:
        container["args"] = args
    return {"metadata": {"name": "kcm", "namespace": "kube-system"}, "spec": {"containers": [container]}}


def calico_pool(name: str, cidr: str, created: str, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "creationTimestamp": created}, "spec": {"cidr": cidr, **spec}}


def cilium_config(**data: str) -> dict[str, Any]:
    return {"metadata": {"name": "cilium-config", "namespace": "kube-system"}, "data": data}


def cni(name: str, network: str, plugin: str = "bridge") -> CniFile:
    """A CNI file as a CNI writes it: a ``.conflist`` lists its plugins, a ``.conf`` is one plugin's."""
    if name.endswith(".conflist"):
        return CniFile(name, json.dumps({"cniVersion": "0.3.1", "name": network, "plugins": [{"type": plugin}]}))
    return CniFile(name, json.dumps({"cniVersion": "0.3.1", "name": network, "type": plugin}))


KUBEADM = ClusterView(kubeadm_config=kubeadm_config())
K8S_POD = ("10.233.64.0/18", "fd85:ee78:d8a6:8607::1:0/112")
K8S_SERVICE = ("10.233.0.0/18",)


def test_kubeadm_config_gives_the_pod_and_service_subnets_of_its_cluster_configuration() -> None:
    assert kubeadm_cidrs(kubeadm_config()) == (list(K8S_POD), list(K8S_SERVICE))


def test_kubeadm_config_without_networking_gives_no_cidrs() -> None:
    assert kubeadm_cidrs(kubeadm_config("kind: ClusterConfiguration\n")) == ([], [])


def test_the_controller_manager_flags_give_the_cidrs_from_command_or_args() -> None:
    pod = kcm_pod(["kube-controller-manager", "--cluster-cidr=10.244.0.0/16", "--leader-elect=true"],
                  ["--service-cluster-ip-range=10.96.0.0/12,fd00:10:96::/108"])  # fmt: skip
    assert kcm_cidrs(pod) == (["10.244.0.0/16"], ["10.96.0.0/12", "fd00:10:96::/108"])


def test_a_controller_manager_command_in_one_string_still_gives_each_flag() -> None:
    pod = kcm_pod(
        ["sh", "-c", "kube-controller-manager --cluster-cidr=10.244.0.0/16 --service-cluster-ip-range=10.96.0.0/12"]
    )
    assert kcm_cidrs(pod) == (["10.244.0.0/16"], ["10.96.0.0/12"])


def test_invalid_cidrs_in_a_flag_are_skipped() -> None:
    assert kcm_cidrs(kcm_pod(["--cluster-cidr=nonsense,10.1.0.0/16"])) == (["10.1.0.0/16"], [])


def test_v00009_the_cluster_cidr_comes_from_kubeadm_config_or_else_the_controller_manager() -> None:
    pod = kcm_pod(["--cluster-cidr=10.244.0.0/16", "--service-cluster-ip-range=10.96.0.0/12"])
    from_kcm = coordinator_status("cluster", ClusterView(kcm_pods=(pod,)))
    assert from_kcm == CoordinatorStatus(SYNCED, "", ("10.244.0.0/16",), ("10.96.0.0/12",))
    both = coordinator_status("cluster", ClusterView(kubeadm_config=kubeadm_config(), kcm_pods=(pod,)))
    assert both == CoordinatorStatus(SYNCED, "", K8S_POD, K8S_SERVICE)


@pytest.mark.parametrize("pod_cidr_type", ["cluster", "none", "calico", "cilium", "auto"])
def test_v00011_not_ready_when_neither_kubeadm_config_nor_a_controller_manager_pod_is_found(pod_cidr_type: str) -> None:
    status = coordinator_status(pod_cidr_type, ClusterView(calico_pools=(), cilium_config=cilium_config()))
    assert status.phase == NOT_READY
    assert "Neither kubeadm-config ConfigMap nor kube-controller-manager Pod" in status.reason


def test_v00005_none_leaves_the_overlay_cidrs_empty_and_keeps_the_service_cidrs() -> None:
    assert coordinator_status("none", KUBEADM) == CoordinatorStatus(SYNCED, "", (), K8S_SERVICE)


def test_v00006_not_ready_empties_both_cidr_lists() -> None:
    status = coordinator_status("calico", KUBEADM)  # no Calico
    assert (status.phase, status.overlay_pod_cidr, status.service_cidr) == (NOT_READY, (), ())
    assert status.to_json() == {"phase": NOT_READY, "reason": status.reason, "overlayPodCIDR": [], "serviceCIDR": []}


def test_v00003_calico_gives_its_enabled_pools_oldest_first_skipping_disabled_and_deleted_ones() -> None:
    pools = (
        calico_pool("new", "10.20.0.0/16", "2024-02-01T00:00:00Z"),
        calico_pool("old", "10.10.0.0/16", "2024-01-01T00:00:00Z"),
        calico_pool("off", "10.30.0.0/16", "2024-01-02T00:00:00Z", disabled=True),
        calico_pool("going", "10.40.0.0/16", "2024-01-03T00:00:00Z")
        | {"metadata": {"name": "going", "deletionTimestamp": "2024-03-01T00:00:00Z"}},
    )
    assert calico_cidrs(pools) == ["10.10.0.0/16", "10.20.0.0/16"]
    status = coordinator_status("calico", ClusterView(kubeadm_config=kubeadm_config(), calico_pools=pools))
    assert status == CoordinatorStatus(SYNCED, "", ("10.10.0.0/16", "10.20.0.0/16"), K8S_SERVICE)


def test_calico_not_installed_is_not_ready_saying_so() -> None:
    status = coordinator_status("calico", KUBEADM)
    assert status.phase == NOT_READY
    assert "Calico needs to be installed first" in status.reason


def test_v00004_cilium_cluster_pool_gives_both_families_of_its_config() -> None:
    config = cilium_config(ipam="cluster-pool", **{"cluster-pool-ipv4-cidr": "10.0.0.0/8",
                                                      "cluster-pool-ipv6-cidr": "fd00::/104"})  # fmt: skip
    status = coordinator_status("cilium", ClusterView(kubeadm_config=kubeadm_config(), cilium_config=config))
    assert status == CoordinatorStatus(SYNCED, "", ("10.0.0.0/8", "fd00::/104"), K8S_SERVICE)


def test_v00004_cilium_kubernetes_ipam_gives_the_clusters_pod_cidrs() -> None:
    assert cilium_cidrs(cilium_config(ipam="kubernetes"), K8S_POD, None) == list(K8S_POD)


def test_v00004_cilium_multi_pool_gives_its_pod_ip_pools_cidrs() -> None:
    pools = [{"metadata": {"name": "default"}, "spec": {"ipv4": {"cidrs": ["10.10.0.0/16"], "maskSize": 24},
                                                         "ipv6": {"cidrs": ["fd00:10::/96"]}}}]  # fmt: skip
    assert cilium_cidrs(cilium_config(ipam="multi-pool"), K8S_POD, pools) == ["10.10.0.0/16", "fd00:10::/96"]


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        (None, "Cilium needs to be installed first"),
        (cilium_config(ipam="eni"), "unsupported Cilium IPAM mode: 'eni'"),
        (cilium_config(ipam="cluster-pool", **{"cluster-pool-ipv4-cidr": "bad"}), "is not a CIDR"),
    ],
)
def test_cilium_without_a_usable_config_is_not_ready(config: dict[str, Any] | None, reason: str) -> None:
    status = coordinator_status("cilium", ClusterView(kubeadm_config=kubeadm_config(), cilium_config=config))
    assert status.phase == NOT_READY
    assert reason in status.reason


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ((cni("10-calico.conflist", "k8s-pod-network"),), "calico"),
        ((cni("10-calico.conflist", "calico"),), "calico"),
        ((cni("05-cilium.conflist", "cilium"),), "cilium"),
        ((cni("10-flannel.conflist", "cbr0"),), "none"),
        ((cni("10-flannel.conflist", "flannel"),), "cluster"),
        ((cni("00-multus.conf", "multus-cni-network"), cni("10-calico.conflist", "k8s-pod-network")), "calico"),
        ((cni("20-b.conf", "cilium"), cni("10-a.conf", "k8s-pod-network")), "calico"),
        ((CniFile("10-x.json", "{}"), CniFile("README", "")), "none"),
        ((), "none"),
    ],
)
def test_v00001_auto_takes_its_type_from_the_first_cni_file(files: tuple[CniFile, ...], expected: str) -> None:
    assert default_cni_type(files) == expected


def test_v00002_auto_without_cni_files_is_the_same_as_none() -> None:
    assert coordinator_status("auto", KUBEADM) == coordinator_status("none", KUBEADM)


def test_auto_with_calico_as_default_cni_reads_calicos_pools() -> None:
    view = ClusterView(kubeadm_config=kubeadm_config(), cni_files=(cni("10-calico.conflist", "k8s-pod-network"),),
                       calico_pools=(calico_pool("p", "10.10.0.0/16", "2024-01-01T00:00:00Z"),))  # fmt: skip
    assert coordinator_status("auto", view).overlay_pod_cidr == ("10.10.0.0/16",)


def test_auto_with_an_unreadable_default_cni_file_is_not_ready() -> None:
    status = coordinator_status(
        "auto", ClusterView(kubeadm_config=kubeadm_config(), cni_files=(CniFile("1.conf", "{"),))
    )
    assert status.phase == NOT_READY
    assert "1.conf is not JSON" in status.reason


@pytest.mark.parametrize(
    ("file", "why"),
    [
        (CniFile("10-a.conflist", '{"name": "k8s-pod-network", "plugins": []}'), "lists no plugins"),
        (CniFile("10-a.conflist", '{"plugins": [{"type": "calico"}]}'), "names no network"),
        (CniFile("10-a.conf", '{"name": "k8s-pod-network"}'), "names no plugin"),
        (CniFile("10-a.conf", "[]"), "is not a JSON object"),
    ],
)
def test_auto_with_a_default_cni_file_libcni_would_not_load_is_not_ready(file: CniFile, why: str) -> None:
    status = coordinator_status("auto", ClusterView(kubeadm_config=kubeadm_config(), cni_files=(file,)))
    assert (status.phase, status.overlay_pod_cidr, status.service_cidr) == (NOT_READY, (), ())
    assert why in status.reason


def test_a_plugin_conf_without_a_network_name_is_none_as_libcni_loads_it() -> None:
    assert default_cni_type((CniFile("10-a.conf", '{"type": "macvlan"}'),)) == "none"


def test_v00001_auto_with_flannel_as_default_cni_gives_the_clusters_pod_cidrs() -> None:
    view = ClusterView(kubeadm_config=kubeadm_config(), cni_files=(cni("10-flannel.conflist", "flannel"),))
    assert coordinator_status("auto", view) == coordinator_status("cluster", view)
    assert coordinator_status("auto", view).overlay_pod_cidr == K8S_POD


def test_cilium_multi_pool_skips_pools_being_deleted_and_keeps_the_oldest_first() -> None:
    def pool(name: str, cidr: str, created: str, **meta: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "creationTimestamp": created, **meta},
                "spec": {"ipv4": {"cidrs": [cidr]}}}  # fmt: skip

    deleting = pool("gone", "10.13.0.0/16", "2023-01-01T00:00:00Z", deletionTimestamp="2024-03-01T00:00:00Z")
    pools = [pool("b", "10.12.0.0/16", "2024-02-01T00:00:00Z"), pool("a", "10.11.0.0/16", "2024-01-01T00:00:00Z"),
             deleting]  # fmt: skip
    assert cilium_cidrs(cilium_config(ipam="multi-pool"), K8S_POD, pools) == ["10.11.0.0/16", "10.12.0.0/16"]


def test_cilium_cluster_pool_takes_only_a_cidr_with_a_prefix_length() -> None:
    status = coordinator_status("cilium", ClusterView(kubeadm_config=kubeadm_config(), cilium_config=cilium_config(
        ipam="cluster-pool", **{"cluster-pool-ipv4-cidr": "10.0.0.0"})))  # fmt: skip
    assert (status.phase, status.overlay_pod_cidr) == (NOT_READY, ())
    assert "'10.0.0.0' is not a CIDR" in status.reason


def test_v00010_service_cidrs_being_deleted_are_left_out() -> None:
    objects = (
        {"metadata": {"name": "kubernetes", "creationTimestamp": "2024-01-01T00:00:00Z"},
         "spec": {"cidrs": ["10.96.0.0/28"]}},
        {"metadata": {"name": "extra", "creationTimestamp": "2024-02-01T00:00:00Z",
                      "deletionTimestamp": "2024-03-01T00:00:00Z"}, "spec": {"cidrs": ["10.97.0.0/28"]}},
    )  # fmt: skip
    view = ClusterView(kubeadm_config=kubeadm_config(), service_cidrs=objects)
    assert coordinator_status("none", view).service_cidr == ("10.96.0.0/28",)


def test_v00010_service_cidr_objects_win_over_the_clusters_flags() -> None:
    objects = ({"metadata": {"name": "kubernetes"}, "spec": {"cidrs": ["10.96.0.0/28", "fd00::/112"]}},)
    view = ClusterView(kubeadm_config=kubeadm_config(), service_cidrs=objects)
    assert coordinator_status("none", view).service_cidr == ("10.96.0.0/28", "fd00::/112")
    assert (
        coordinator_status("none", ClusterView(kubeadm_config=kubeadm_config(), service_cidrs=())).service_cidr
        == K8S_SERVICE
    )


def test_an_unknown_pod_cidr_type_is_not_ready() -> None:
    assert coordinator_status("weave", KUBEADM).phase == NOT_READY


def test_a_status_differs_only_when_a_field_does() -> None:
    status = CoordinatorStatus(SYNCED, "", ("10.0.0.0/8",), ())
    assert not status_differs({"status": {"phase": SYNCED, "overlayPodCIDR": ["10.0.0.0/8"]}}, status)
    assert status_differs({"status": {"phase": SYNCED, "overlayPodCIDR": []}}, status)
    assert status_differs({}, status)


def test_a_namespaced_name_splits_and_defaults_to_kube_system() -> None:
    assert split_namespaced_name("cilium/cilium-config") == ("cilium", "cilium-config")
    assert split_namespaced_name("cilium-config") == ("kube-system", "cilium-config")
    with pytest.raises(ValueError, match="namespace/name"):
        split_namespaced_name("ns/")
