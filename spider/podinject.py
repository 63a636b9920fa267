"""The pod mutating webhook's decision (reference §7.3): which networks and resources a new pod gets injected.

Owns, without any I/O (``actors.servers.pod_webhook`` serves it):

- the namespace filter (``podResourceInject.namespacesExclude`` / ``namespacesInclude``), both as the
  ``namespaceSelector`` of the webhook configuration (on ``kubernetes.io/metadata.name``) and as the check the
  handler repeats, so a configuration edited by hand cannot widen what is mutated;
- RDMA / network resource injection: when the pod (or else its Namespace) is annotated
  ``cni.spidernet.io/rdma-resource-inject: <v>`` or ``cni.spidernet.io/network-resource-inject: <v>`` (the
  first of the two found wins), every SpiderMultusConfig of any namespace labelled (or annotated) ``<key>=<v>``
  is chosen, they are sorted (master, bond or resource name, then ``namespace/name``),
  ``k8s.v1.cni.cncf.io/networks`` is overwritten with their NADs and each distinct resource name no container
  limits yet gets ``limits[<name>]: "1"`` in container 0; none found, or a chosen SMC without a resource name
  (an ipoib's master) or default pools, whichever annotation chose it, refuses the pod;
- master-NIC resources (the network resource plugin with ``masterNIC`` rules): one ``spidernet.io/<master>-nic``
  limit and request per distinct master of the SpiderMultusConfigs the pod's Multus annotations name (each
  physical NIC of a bond: the plugin advertises physical NICs), unless a container asks for it already;
- sub-ENI slots (IaaS provider, plugin and injection on): ``spidernet.io/sub-eni`` (its configured name) set to
  the number of referenced ``vlan`` SMCs with ``vlanMode: auto``, unless the pod already asks for it.

The result is a JSONPatch (``spider.admission.json_patch`` of the pod before and after), or ``InjectionRefused``
with Spiderpool's text.  Deliberate differences from Spiderpool: only CREATE is mutated (a pod's resources are
immutable afterwards); a Multus reference that is no SpiderMultusConfig (a hand-written NAD) is skipped where
Spiderpool's ENI path refuses the pod with the lookup's "not found"; a reference by the NAD name of an SMC that
renames its NAD (``multus.spidernet.io/cr-name``) finds that SMC; the injected networks name each SMC's NAD
(``namespace/<cr-name>``, Spiderpool writes the SMC's name, which Multus cannot find when the NAD is renamed);
an SMC is chosen by its inject annotation as well as by the label the SMC webhook copies from it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from spider import limits
from spider.admission import json_patch
from spider.errors import InvalidInput
from spider.multus import nad_name, pools_missing, rdma_resource_missing, resource_name
from spider.selection import ANNO_MULTUS_DEFAULT, ANNO_MULTUS_NETWORKS

Obj = dict[str, Any]

ANNO_RDMA_INJECT = "cni.spidernet.io/rdma-resource-inject"
ANNO_NETWORK_INJECT = "cni.spidernet.io/network-resource-inject"
INJECT_ANNOTATIONS = (ANNO_RDMA_INJECT, ANNO_NETWORK_INJECT)
"""In Spiderpool's order: the first one found on the pod (else its namespace) decides."""
ANNO_NAD_NAME = "multus.spidernet.io/cr-name"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
POD_WEBHOOK_PATH = "/mutate--v1-pod"
"""controller-runtime's path for core/v1 pods, which Spiderpool registers."""
POD_WEBHOOK_NAME = "pods.mutate.spiderpool.spidernet.io"
DEFAULT_NAMESPACES_EXCLUDE = ("kube-system", "kube-public", "spiderpool", "metallb-system", "istio-system")
"""Spiderpool's ``PodWebhookExcludeNamespaces``."""
RESOURCE_DOMAIN = "spidernet.io"
MASTER_NIC_SUFFIX = "-nic"
DEFAULT_SUB_ENI_RESOURCE = "spidernet.io/sub-eni"
MASTER_TYPES = ("macvlan", "ipvlan", "vlan")
"""The cniTypes whose spec has ``master`` (a list), ``bond`` and ``rdmaResourceName``."""
SPEC_KEY = {"ib-sriov": "ibsriov"}
"""The spec field of a cniType, where it is not the cniType itself."""


@attrs.define(auto_exc=True, kw_only=True)
class InjectionRefused(InvalidInput):
    """The pod asked for injection that cannot be done; the text is Spiderpool's (the API server shows it)."""

    def __str__(self) -> str:
        return self.reason


@attrs.frozen
class PodInjectSettings:
    """``podResourceInject`` of the configmap, and the switches of the network resource plugin it depends on."""

    enabled: bool = False
    namespaces_exclude: tuple[str, ...] = DEFAULT_NAMESPACES_EXCLUDE
    namespaces_include: tuple[str, ...] = ()
    """Empty: every namespace not excluded."""
    master_nic: bool = False
    """The network resource plugin is enabled with at least one ``masterNIC`` rule: inject master-NIC requests."""
    sub_eni: bool = False
    """IaaS provider, network resource plugin and ENI injection all on: inject sub-ENI slots."""
    sub_eni_resource: str = DEFAULT_SUB_ENI_RESOURCE


def namespace_selected(settings: PodInjectSettings, namespace: str) -> bool:
    """Whether pods of ``namespace`` are mutated at all (the handler's half of the namespace filter)."""
    if namespace in settings.namespaces_exclude:
        return False
    return not settings.namespaces_include or namespace in settings.namespaces_include


def namespace_selector(settings: PodInjectSettings) -> Obj:
    """The webhook configuration's ``namespaceSelector`` for the same filter, as Spiderpool writes it."""
    expressions: list[Obj] = []
    if settings.namespaces_exclude:
        expressions.append(
            {"key": NAMESPACE_NAME_LABEL, "operator": "NotIn", "values": list(settings.namespaces_exclude)}
        )
    if settings.namespaces_include:
        expressions.append({"key": NAMESPACE_NAME_LABEL, "operator": "In", "values": list(settings.namespaces_include)})
    return {"matchExpressions": expressions}


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _strings(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): v for k, v in value.items() if isinstance(v, str)}


def smc_ref(smc: Mapping[str, Any]) -> str:
    """``namespace/name`` of a SpiderMultusConfig."""
    meta = _meta(smc)
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def _cni_type(smc: Mapping[str, Any]) -> str:
    spec = smc.get("spec")
    return str(spec.get("cniType") or "custom") if isinstance(spec, Mapping) else "custom"


def _sub_spec(smc: Mapping[str, Any]) -> Mapping[str, Any]:
    cni_type = _cni_type(smc)
    spec = smc.get("spec")
    sub = spec.get(SPEC_KEY.get(cni_type, cni_type)) if isinstance(spec, Mapping) else None
    return sub if isinstance(sub, Mapping) else {}


def _masters(sub: Mapping[str, Any]) -> list[str]:
    master = sub.get("master")
    if isinstance(master, str):
        return [master] if master else []
    return [m for m in master if isinstance(m, str) and m] if isinstance(master, list) else []


def network_ref(smc: Mapping[str, Any]) -> str:
    """``namespace/<NAD name>``: the entry of ``k8s.v1.cni.cncf.io/networks`` that attaches an SMC's network
    (Spiderpool writes the SMC's name, which Multus cannot find when ``multus.spidernet.io/cr-name`` renames
    the NAD)."""
    return f"{_meta(smc).get('namespace', '')}/{nad_name(smc)}"


def sort_key(smc: Mapping[str, Any]) -> tuple[str, str]:
    """Spiderpool's order of injected networks: the bond (two masters or more) or first master, or the SR-IOV
    resource name, then ``namespace/name``."""
    cni_type, sub = _cni_type(smc), _sub_spec(smc)
    key = ""
    if cni_type in MASTER_TYPES:
        masters, bond = _masters(sub), sub.get("bond")
        if len(masters) >= 2 and isinstance(bond, Mapping) and isinstance(bond.get("name"), str):
            key = bond["name"]
        elif masters:
            key = masters[0]
    elif cni_type == "sriov":
        key = resource_name(smc)
    return key, smc_ref(smc)


def _has_pools(sub: Mapping[str, Any]) -> bool:
    pools = sub.get("ippools")
    if not isinstance(pools, Mapping):
        return False
    return any(isinstance(pools.get(k), list) and pools[k] for k in ("ipv4", "ipv6"))


def check_injectable(smc: Mapping[str, Any]) -> None:
    """``InjectionRefused`` unless the SMC can be injected: Spiderpool's ``DoValidateRdmaResouce``, which its
    ``InjectPodNetwork`` applies to every chosen SMC whichever annotation chose it: a resource name (an
    ipoib's master) and default pools, with Spiderpool's texts."""
    cni_type, sub, ref = _cni_type(smc), _sub_spec(smc), smc_ref(smc)
    if cni_type not in (*MASTER_TYPES, "sriov", "ib-sriov", "ipoib"):
        raise InjectionRefused(reason=f"RDMA resource injection does not support cniType: {cni_type}")
    name = resource_name(smc) if cni_type != "ipoib" else next(iter(_masters(sub)), "")
    if not name:
        raise InjectionRefused(reason=rdma_resource_missing(ref))
    if not _has_pools(sub):
        raise InjectionRefused(reason=pools_missing(ref))


def inject_value(pod: Mapping[str, Any], namespace_annotations: Mapping[str, str]) -> tuple[str, str] | None:
    """``(annotation, value)`` of the injection asked for: the pod's own annotation, else its namespace's."""
    annotations = _strings(_meta(pod).get("annotations"))
    for annotation in INJECT_ANNOTATIONS:
        if annotation in annotations:
            return annotation, annotations[annotation]
        if annotation in namespace_annotations:
            return annotation, namespace_annotations[annotation]
    return None


def inject_group(smc: Mapping[str, Any], key: str) -> str | None:
    """The SMC's value of an inject key: its annotation (which the SMC mutating webhook copies to the label
    Spiderpool selects by), else its label; so an SMC written while no webhook ran is still found."""
    annotations = _strings(_meta(smc).get("annotations"))
    return annotations[key] if key in annotations else _strings(_meta(smc).get("labels")).get(key)


def _labelled(smcs: Iterable[Mapping[str, Any]], key: str, value: str) -> list[Mapping[str, Any]]:
    return [s for s in smcs if inject_group(s, key) == value]


def network_refs(annotation: str, namespace: str) -> list[tuple[str, str]]:
    """``(namespace, name)`` of each network in a Multus annotation (JSON list or ``ns/name@if`` commas);
    entries without a namespace are the pod's.  ``InvalidInput`` when it cannot be read."""
    text = annotation.strip()
    if not text:
        return []
    refs: list[tuple[str, str]] = []
    if text.startswith("["):
        try:
            items = limits.loads(text)
        except ValueError as exc:
            raise InvalidInput(reason=f"parsePodNetworkAnnotation: {exc}") from None
        if not isinstance(items, list):
            raise InvalidInput(reason="parsePodNetworkAnnotation: not a list of networks")
        for item in items:
            if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
                raise InvalidInput(reason="parsePodNetworkAnnotation: a network without a name")
            refs.append((str(item.get("namespace") or namespace), item["name"]))
        return refs
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        ref = part.partition("@")[0]
        ns, _, name = ref.rpartition("/")
        refs.append((ns.strip() or namespace, name.strip()))
    return refs


def referenced_smcs(
    annotations: Mapping[str, str], namespace: str, smcs: Sequence[Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    """The SpiderMultusConfigs the pod's ``v1.multus-cni.io/default-network`` and ``k8s.v1.cni.cncf.io/networks``
    name (by SMC name, or by the NAD name it gives), each once; references to anything else are skipped."""
    by_ref: dict[tuple[str, str], Mapping[str, Any]] = {}
    for smc in smcs:
        meta = _meta(smc)
        ns = str(meta.get("namespace", ""))
        nad = _strings(meta.get("annotations")).get(ANNO_NAD_NAME)
        if nad:
            by_ref.setdefault((ns, nad), smc)
    for smc in smcs:  # NB: the SMC's own name wins over another SMC's NAD name
        meta = _meta(smc)
        by_ref[(str(meta.get("namespace", "")), str(meta.get("name", "")))] = smc
    found: dict[str, Mapping[str, Any]] = {}
    for key in (ANNO_MULTUS_DEFAULT, ANNO_MULTUS_NETWORKS):
        for ref in network_refs(annotations.get(key, ""), namespace):
            named = by_ref.get(ref)
            if named is not None:
                found.setdefault(smc_ref(named), named)
    return list(found.values())


def _containers(pod: Obj) -> list[Obj]:
    spec = pod.get("spec")
    containers = spec.get("containers") if isinstance(spec, dict) else None
    return [c for c in containers if isinstance(c, dict)] if isinstance(containers, list) else []


def _resources(container: Obj, part: str) -> dict[str, Any]:
    resources = container.get("resources")
    if not isinstance(resources, dict):
        resources = container["resources"] = {}
    values = resources.get(part)
    if not isinstance(values, dict):
        values = resources[part] = {}
    return values


def _asked(containers: list[Obj], resource: str, parts: tuple[str, ...]) -> bool:
    for container in containers:
        resources = container.get("resources")
        if not isinstance(resources, dict):
            continue
        if any(isinstance(resources.get(p), dict) and resource in resources[p] for p in parts):
            return True
    return False


def _inject_networks(pod: Obj, annotation: str, value: str, smcs: Sequence[Mapping[str, Any]]) -> None:
    chosen = sorted(_labelled(smcs, annotation, value), key=sort_key)
    if not chosen:
        raise InjectionRefused(reason=f"no spidermultusconfigs with annotation: {annotation}:{value} found")
    resources: list[str] = []
    for smc in chosen:
        check_injectable(smc)
        name = resource_name(smc)
        if name and name not in resources:
            resources.append(name)
    meta = pod.get("metadata")
    if not isinstance(meta, dict):
        meta = pod["metadata"] = {}
    if not isinstance(meta.get("annotations"), dict):
        meta["annotations"] = {}
    meta["annotations"][ANNO_MULTUS_NETWORKS] = ",".join(network_ref(s) for s in chosen)
    containers = _containers(pod)
    missing = [r for r in resources if not _asked(containers, r, ("limits",))]
    if containers:
        for resource in missing:
            _resources(containers[0], "limits")[resource] = "1"


def _inject_master_nics(pod: Obj, referenced: Sequence[Mapping[str, Any]]) -> None:
    containers = _containers(pod)
    masters: list[str] = []
    for smc in referenced:
        if _cni_type(smc) in (*MASTER_TYPES, "ipoib"):
            masters.extend(m for m in _masters(_sub_spec(smc)) if m not in masters)
    for master in masters:
        resource = f"{RESOURCE_DOMAIN}/{master}{MASTER_NIC_SUFFIX}"
        if containers and not _asked(containers, resource, ("limits", "requests")):
            _resources(containers[0], "limits")[resource] = "1"
            _resources(containers[0], "requests")[resource] = "1"


def _inject_sub_enis(pod: Obj, referenced: Sequence[Mapping[str, Any]], resource: str) -> None:
    containers = _containers(pod)
    count = sum(1 for s in referenced if _cni_type(s) == "vlan" and _sub_spec(s).get("vlanMode") == "auto")
    if count and containers and not _asked(containers, resource, ("limits", "requests")):
        _resources(containers[0], "limits")[resource] = str(count)
        _resources(containers[0], "requests")[resource] = str(count)


def mutate_pod(
    pod: Mapping[str, Any],
    namespace_annotations: Mapping[str, str],
    smcs: Sequence[Mapping[str, Any]],
    settings: PodInjectSettings,
    namespace: str | None = None,
) -> Obj:
    """The pod after injection (a copy); ``InjectionRefused`` when the pod must be refused.

    ``smcs``: every SpiderMultusConfig of every namespace; ``namespace_annotations``: the pod's Namespace's;
    ``namespace``: the pod's (the review's, which a new pod's metadata may lack), else its metadata's.
    """
    after: Obj = copy.deepcopy(dict(pod))
    namespace = namespace or str(_meta(pod).get("namespace", ""))
    asked = inject_value(pod, namespace_annotations)
    if asked is not None:
        _inject_networks(after, asked[0], asked[1], smcs)
    if settings.master_nic or settings.sub_eni:
        annotations = _strings(_meta(after).get("annotations"))
        referenced = referenced_smcs(annotations, namespace, smcs)
        if settings.master_nic:
            _inject_master_nics(after, referenced)
        if settings.sub_eni:
            _inject_sub_enis(after, referenced, settings.sub_eni_resource)
    return after


def pod_patch(
    pod: Mapping[str, Any],
    namespace_annotations: Mapping[str, str],
    smcs: Sequence[Mapping[str, Any]],
    settings: PodInjectSettings,
    namespace: str | None = None,
) -> list[Obj]:
    """The RFC 6902 operations of ``mutate_pod`` (empty when nothing changes)."""
    return json_patch(dict(pod), mutate_pod(pod, namespace_annotations, smcs, settings, namespace))
