"""The SpiderCoordinator's status from what a cluster offers: its pod and service CIDRs per ``podCIDRType``.

Owns Spiderpool's rules (``pkg/coordinatormanager/coordinator_informer.go``, reference §1.6), pure: the caller
reads the sources (``ClusterView``) and writes the status this module computes (``coordinator_status``).

1. ``auto`` becomes a type by the default CNI: the first (sorted) ``*.conf``/``*.conflist`` of the CNI
   configuration directory, ``00-multus*`` skipped; its ``name`` ``calico``/``k8s-pod-network`` is calico,
   ``cilium`` cilium, ``flannel`` cluster, anything else none; no file at all is none too (V00001, V00002); a
   file libcni would not load is NotReady (not JSON; a ``.conflist`` without a string ``name`` or without
   ``plugins``; a ``.conf`` without a ``type``).
2. The cluster's pod and service CIDRs: from ``kube-system/kubeadm-config`` (``podSubnet:``,
   ``serviceSubnet:``), else from the first Pod labelled ``component=kube-controller-manager``
   (``--cluster-cidr=``, ``--service-cluster-ip-range=``, command then args); neither is NotReady (V00009,
   V00011).  Every type needs them, ``none`` too, as in Spiderpool.
3. ``overlayPodCIDR``: cluster, the cluster's pod CIDRs; calico, the enabled Calico IPPools not being deleted,
   oldest first (NotReady when Calico's IPPool kind is not served: "Calico needs to be installed first");
   cilium, by ``cilium-config``'s ``ipam``: cluster-pool ⇒ ``cluster-pool-ipv4-cidr``/``-ipv6-cidr``,
   multi-pool ⇒ the CIDRs of the CiliumPodIPPools not being deleted, oldest first, kubernetes ⇒ the
   cluster's pod CIDRs, anything else NotReady; none, empty (V00003-V00005).
4. ``serviceCIDR``: the CIDRs of the ServiceCIDR objects not being deleted, oldest first, where that API is
   served and has any, else the cluster's service CIDRs (V00010).
5. NotReady empties both lists (V00006) and says why in ``reason``.

Departures, on purpose: a kube-controller-manager flag's value ends at whitespace (Spiderpool's ``(.*)`` takes
the rest of a one-string command line, which then fails to parse); the kubeadm-config keys are searched in
every data value, first match wins (Spiderpool keeps only the last value's); a served ServiceCIDR API with no
object left falls back to the cluster's service CIDRs (Spiderpool writes an empty list, which would leave the
coordinator routing no service through the host); Spiderpool needs CiliumPodIPPools served for every Cilium
IPAM mode, ours only for multi-pool, the one that reads them.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import attrs

POD_CIDR_TYPES: Final = ("auto", "cluster", "calico", "cilium", "none")
SYNCED: Final = "Synced"
NOT_READY: Final = "NotReady"
KUBEADM_CONFIG: Final = ("kube-system", "kubeadm-config")
KCM_LABEL: Final = "component=kube-controller-manager"
DEFAULT_CILIUM_CONFIG: Final = "kube-system/cilium-config"
DEFAULT_CNI_CONFIG_DIR: Final = "/etc/cni/net.d"
CALICO_NAMES: Final = ("calico", "k8s-pod-network")
FLANNEL_NAME: Final = "flannel"
CILIUM_CLUSTER_POOL: Final = ("cluster-pool", "cluster-pool-v2beta")
_KUBEADM_POD = re.compile(r"podSubnet:[ \t]*(\S+)")
_KUBEADM_SERVICE = re.compile(r"serviceSubnet:[ \t]*(\S+)")
_KCM_POD = re.compile(r"--cluster-cidr=(\S+)")
_KCM_SERVICE = re.compile(r"--service-cluster-ip-range=(\S+)")

Obj = Mapping[str, Any]


class NotReadyReason(Exception):
    """Why the status cannot be Synced: its text is the status's ``reason``."""


@attrs.frozen
class CniFile:
    """One file of the CNI configuration directory: its name and its text."""

    name: str
    text: str


@attrs.frozen(kw_only=True)
class ClusterView:
    """What the cluster offers, as read by the caller; ``None`` where a kind is not served (or not asked)."""

    cni_files: tuple[CniFile, ...] = ()
    """The CNI configuration directory's files (only ``podCIDRType: auto`` reads them)."""
    kubeadm_config: Obj | None = None
    """``kube-system/kubeadm-config``, if it exists."""
    kcm_pods: tuple[Obj, ...] = ()
    """Pods labelled ``component=kube-controller-manager``."""
    calico_pools: tuple[Obj, ...] | None = None
    """Calico's IPPools; ``None``: the kind is not served (Calico is not installed)."""
    cilium_config: Obj | None = None
    """Cilium's ConfigMap (``kube-system/cilium-config`` by default), if it exists."""
    cilium_pod_ip_pools: tuple[Obj, ...] | None = None
    """CiliumPodIPPools (Cilium's multi-pool IPAM); ``None``: the kind is not served."""
    service_cidrs: tuple[Obj, ...] | None = None
    """ServiceCIDR objects (networking.k8s.io); ``None``: the API is not served."""
    unreadable: tuple[str, ...] = ()
    """Sources the server refuses to list (forbidden, say), each with why: a NotReady status names them."""


@attrs.frozen
class CoordinatorStatus:
    """A SpiderCoordinator's ``status``."""

    phase: str
    reason: str = ""
    overlay_pod_cidr: tuple[str, ...] = ()
    service_cidr: tuple[str, ...] = ()

    @classmethod
    def not_ready(cls, reason: str) -> CoordinatorStatus:
        """NotReady: both CIDR lists empty (V00006)."""
        return cls(NOT_READY, reason)

    def to_json(self) -> dict[str, Any]:
        """The stored ``status``, Spiderpool's field names (``reason`` only when there is one)."""
        out: dict[str, Any] = {
            "phase": self.phase,
            "overlayPodCIDR": list(self.overlay_pod_cidr),
            "serviceCIDR": list(self.service_cidr),
        }
        if self.reason:
            out["reason"] = self.reason
        return out


# --- the sources ----------------------------------------------------------------------------------------------


def default_cni_file(files: Iterable[CniFile]) -> CniFile | None:
    """The default CNI's file: the first ``*.conf``/``*.conflist`` by name, ``00-multus*`` skipped."""
    candidates = sorted(
        (f for f in files if f.name.endswith((".conf", ".conflist")) and "00-multus" not in f.name),
        key=lambda f: f.name,
    )
    return candidates[0] if candidates else None


def default_cni_type(files: Iterable[CniFile]) -> str:
    """The ``podCIDRType`` that ``auto`` stands for; ``NotReadyReason`` when the default file is no CNI config."""
    found = default_cni_file(files)
    if found is None:
        return "none"
    name = _network_name(found)
    if name in CALICO_NAMES:
        return "calico"
    if name == "cilium":
        return "cilium"
    if name == FLANNEL_NAME:
        return "cluster"
    return "none"


def _network_name(found: CniFile) -> str:
    """The network name of a CNI file, checked as libcni loads it (``ConfListFromBytes``/``ConfFromBytes``)."""

    def unusable(why: str) -> NotReadyReason:
        return NotReadyReason(f"failed to fetch the podCIDRType: {found.name} {why}")

    try:
        conf = json.loads(found.text)
    except ValueError as exc:
        raise unusable(f"is not JSON: {exc}") from None
    if not isinstance(conf, dict):
        raise unusable("is not a JSON object")
    name = conf.get("name", "")
    if not isinstance(name, str) or (found.name.endswith(".conflist") and "name" not in conf):
        raise unusable("names no network ('name')")
    if found.name.endswith(".conflist"):
        plugins = conf.get("plugins")
        if not isinstance(plugins, list) or not plugins:
            raise unusable("lists no plugins ('plugins')")
    elif not isinstance(conf.get("type"), str) or not conf["type"]:
        raise unusable("names no plugin ('type')")
    return name


def _valid_cidrs(text: str) -> list[str]:
    """The comma-separated CIDRs of a flag or setting that parse, in order (others skipped, as Spiderpool)."""
    return [part.strip() for part in text.split(",") if _is_cidr(part.strip())]


def kubeadm_cidrs(config: Obj) -> tuple[list[str], list[str]]:
    """``(pod, service)`` CIDRs from the kubeadm-config ConfigMap's ClusterConfiguration."""
    pod: list[str] = []
    service: list[str] = []
    for value in (config.get("data") or {}).values():
        if not isinstance(value, str):
            continue
        if not pod and (m := _KUBEADM_POD.search(value)):
            pod = _valid_cidrs(m.group(1).strip("\"'"))
        if not service and (m := _KUBEADM_SERVICE.search(value)):
            service = _valid_cidrs(m.group(1).strip("\"'"))
    return pod, service


def kcm_cidrs(pod: Obj) -> tuple[list[str], list[str]]:
    """``(pod, service)`` CIDRs from a kube-controller-manager Pod's first container: command, then args."""
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    first = containers[0] or {}
    words = [str(w) for w in (first.get("command") or [])] + [str(w) for w in (first.get("args") or [])]
    pods = next((m.group(1) for w in words if (m := _KCM_POD.search(w))), "")
    services = next((m.group(1) for w in words if (m := _KCM_SERVICE.search(w))), "")
    return _valid_cidrs(pods), _valid_cidrs(services)


def cluster_cidrs(view: ClusterView) -> tuple[list[str], list[str]]:
    """The cluster's ``(pod, service)`` CIDRs: kubeadm-config, else the kube-controller-manager Pod."""
    if view.kubeadm_config is not None:
        return kubeadm_cidrs(view.kubeadm_config)
    if view.kcm_pods:
        return kcm_cidrs(view.kcm_pods[0])
    raise NotReadyReason("Neither kubeadm-config ConfigMap nor kube-controller-manager Pod can be found")


def _created(obj: Obj) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("creationTimestamp") or ""), str(meta.get("name") or "")


def _live(objects: Iterable[Obj]) -> list[Obj]:
    """The objects not being deleted, oldest first."""
    return [o for o in sorted(objects, key=_created) if not (o.get("metadata") or {}).get("deletionTimestamp")]


def _is_cidr(text: str) -> bool:
    """Whether ``text`` is a CIDR as Go's ``net.ParseCIDR`` takes one: an address and a prefix length."""
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return "/" in text


def calico_cidrs(pools: Sequence[Obj]) -> list[str]:
    """The CIDRs of the enabled Calico IPPools not being deleted, oldest first."""
    out = []
    for pool in _live(pools):
        spec = pool.get("spec") or {}
        if spec.get("disabled"):
            continue
        cidr = spec.get("cidr")
        if isinstance(cidr, str) and _is_cidr(cidr):
            out.append(cidr)
    return out


def cilium_cidrs(config: Obj, k8s_pod: Sequence[str], pod_ip_pools: Sequence[Obj] | None) -> list[str]:
    """The overlay CIDRs Cilium's IPAM mode gives; ``NotReadyReason`` for a mode or a CIDR it cannot use."""
    data = config.get("data") or {}
    ipam = str(data.get("ipam", ""))
    if ipam in CILIUM_CLUSTER_POOL:
        out = []
        for key in ("cluster-pool-ipv4-cidr", "cluster-pool-ipv6-cidr"):
            if key in data:
                value = str(data[key]).strip()
                if not _is_cidr(value):
                    raise NotReadyReason(f"cilium-config: {key} {value!r} is not a CIDR")
                out.append(value)
        return out
    if ipam == "multi-pool":
        if pod_ip_pools is None:
            raise NotReadyReason("cilium-config says ipam multi-pool, but CiliumPodIPPools are not served")
        found = []
        for pool in _live(pod_ip_pools):
            spec = pool.get("spec") or {}
            for family in ("ipv4", "ipv6"):
                for cidr in (spec.get(family) or {}).get("cidrs") or []:
                    if isinstance(cidr, str) and _is_cidr(cidr):
                        found.append(cidr)
        return found
    if ipam == "kubernetes":
        return list(k8s_pod)
    raise NotReadyReason(f"unsupported Cilium IPAM mode: {ipam!r}")


def service_cidrs_of(objects: Sequence[Obj]) -> list[str]:
    """The CIDRs of the ServiceCIDR objects not being deleted, oldest first, each once."""
    out: list[str] = []
    for obj in _live(objects):
        for cidr in (obj.get("spec") or {}).get("cidrs") or []:
            if isinstance(cidr, str) and cidr not in out and _is_cidr(cidr):
                out.append(cidr)
    return out


# --- the status -----------------------------------------------------------------------------------------------


def pod_cidr_type_of(coordinator: Obj) -> str:
    """The coordinator's ``spec.podCIDRType`` (``""`` when unset)."""
    return str((coordinator.get("spec") or {}).get("podCIDRType") or "")


def coordinator_status(pod_cidr_type: str, view: ClusterView) -> CoordinatorStatus:
    """The status a coordinator of this ``podCIDRType`` has in the cluster ``view`` describes."""
    try:
        return _synced(pod_cidr_type, view)
    except NotReadyReason as exc:
        refused = f" (cannot read {'; '.join(view.unreadable)})" if view.unreadable else ""
        return CoordinatorStatus.not_ready(f"{exc}{refused}")


def _synced(pod_cidr_type: str, view: ClusterView) -> CoordinatorStatus:
    if pod_cidr_type not in POD_CIDR_TYPES:
        raise NotReadyReason(f"podCIDRType must be one of {', '.join(POD_CIDR_TYPES)}, not {pod_cidr_type!r}")
    kind = default_cni_type(view.cni_files) if pod_cidr_type == "auto" else pod_cidr_type
    k8s_pod, k8s_service = cluster_cidrs(view)
    if kind == "cluster":
        overlay = k8s_pod
    elif kind == "calico":
        if view.calico_pools is None:
            raise NotReadyReason("Calico needs to be installed first: ippools.crd.projectcalico.org is not served")
        overlay = calico_cidrs(view.calico_pools)
    elif kind == "cilium":
        if view.cilium_config is None:
            raise NotReadyReason("Cilium needs to be installed first: no cilium-config ConfigMap")
        overlay = cilium_cidrs(view.cilium_config, k8s_pod, view.cilium_pod_ip_pools)
    else:
        overlay = []
    services = service_cidrs_of(view.service_cidrs or ())
    return CoordinatorStatus(SYNCED, "", tuple(overlay), tuple(services or k8s_service))


def status_differs(coordinator: Obj, status: CoordinatorStatus) -> bool:
    """Whether the stored status is not ``status`` (absent lists count as empty)."""
    stored = coordinator.get("status") or {}
    return (
        stored.get("phase") != status.phase
        or str(stored.get("reason") or "") != status.reason
        or list(stored.get("overlayPodCIDR") or []) != list(status.overlay_pod_cidr)
        or list(stored.get("serviceCIDR") or []) != list(status.service_cidr)
    )


def split_namespaced_name(text: str, default_namespace: str = "kube-system") -> tuple[str, str]:
    """``namespace/name`` (or a bare name, in ``default_namespace``) as a pair; ``ValueError`` when empty."""
    namespace, _, name = text.rpartition("/")
    if not name:
        raise ValueError(f"{text!r} is not namespace/name")
    return namespace or default_namespace, name
