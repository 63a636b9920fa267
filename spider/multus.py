"""SpiderMultusConfig: its admission rules and the Multus NetworkAttachmentDefinition it becomes.

Owns, as pure functions over stored objects (reference §1.5, §7.2):

- ``mutate_multus_config``: the defaults Spiderpool's mutating webhook applies (``cniType`` custom, the
  matching block's defaults, the coordinator block's defaults, the inject annotations copied to labels).  It
  never rejects.
- ``validate_multus_config``: Spiderpool's validating webhook: annotations (``multus.spidernet.io/cr-name``,
  ``multus.spidernet.io/cni-version``), the one block matching ``cniType``, VLAN IDs, bonds, the coordinator
  block, chained plugins, custom JSON, the resource-inject annotations.  ``InvalidSpec`` carries Spiderpool's
  field path and text (``spec.macvlanConfig: Invalid value: 5000: invalid vlanId 5000, ...``).  Every field
  first has to be of the CRD schema's JSON type (``SPEC_SHAPE``; refused in the API server's words), so any
  JSON either validates into a conflist that can be generated or is refused; ``mutate_multus_config`` never
  fails on any JSON.
- ``network_attachment``: the NetworkAttachmentDefinition (name, namespace, annotations, owner reference,
  ``spec.config``) the controller keeps in step with a SpiderMultusConfig; ``nad_differs`` says whether a
  stored one needs an update, the three things Spiderpool compares (annotations, config, controller owner).
- ``resource_name``: the device-plugin resource a SpiderMultusConfig's pods need (for the pod webhook).

Departures from Spiderpool, on purpose (docs/compatibility.md lists them): the "only supports" error names the
type's own block (Spiderpool names ``spec.sriovConfig`` for ib-sriov, ipoib and ovs); ``tunePodRoutes``
defaults to true in a coordinator block that leaves it out, which is what the CRD's default gives on
Kubernetes (the embedded store has no CRD defaulting); in ``vlanMode: auto`` a ``vlanID`` of 0 counts as
unset, since the CRD defaults it to 0.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from spider import limits
from spider.coordinator.config import CoordinatorConf
from spider.errors import InvalidNetConf, InvalidSpec
from spider.kinds import SPIDER_API_VERSION

Obj = dict[str, Any]

KIND: Final = "SpiderMultusConfig"
NAD_KIND: Final = "NetworkAttachmentDefinition"
NAD_API_VERSION: Final = "k8s.cni.cncf.io/v1"

ANNO_CR_NAME: Final = "multus.spidernet.io/cr-name"
"""The NetworkAttachmentDefinition's name, when not the SpiderMultusConfig's own."""
ANNO_CNI_VERSION: Final = "multus.spidernet.io/cni-version"
ANNO_CNI_CONFIG_NAME: Final = "cni.spidernet.io/cniconfig-name"
"""The ``name`` inside the generated conflist (default: the NAD's name)."""
ANNO_RDMA_INJECT: Final = "cni.spidernet.io/rdma-resource-inject"
ANNO_NETWORK_INJECT: Final = "cni.spidernet.io/network-resource-inject"
ANNO_RESOURCE_NAME: Final = "k8s.v1.cni.cncf.io/resourceName"
OVS_RESOURCE_PREFIX: Final = "ovs-cni.network.kubevirt.io"

CNI_VERSIONS: Final = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")
"""The versions the annotation may name (Spiderpool's ``SupportCNIVersions``)."""
DEFAULT_CNI_VERSION: Final = "0.3.1"
CNI_TYPES: Final = ("macvlan", "ipvlan", "vlan", "sriov", "ovs", "ib-sriov", "ipoib", "custom")
BLOCKS: Final = {
    "macvlan": "macvlan",
    "ipvlan": "ipvlan",
    "vlan": "vlan",
    "sriov": "sriov",
    "ib-sriov": "ibsriov",
    "ipoib": "ipoib",
    "ovs": "ovs",
    "custom": "customCNI",
}
"""Each ``cniType``'s block in the spec."""
_FIELD: Final = {
    "macvlan": "spec.macvlanConfig",
    "ipvlan": "spec.ipvlanConfig",
    "vlan": "spec.vlanConfig",
    "sriov": "spec.sriovConfig",
    "ib-sriov": "spec.ibsriovConfig",
    "ipoib": "spec.ipoibConfig",
    "ovs": "spec.ovsConfig",
    "custom": "spec.customCniTypeConfig",
}
"""The field paths Spiderpool's errors name (its Go field names, not the JSON ones)."""
_MASTER_TYPES: Final = ("macvlan", "ipvlan", "vlan")
_NO_INJECT_TYPES: Final = ("ovs", "custom")
_POD_CIDR_TYPES: Final = ("auto", "cluster", "calico", "cilium", "none")
_DNS1123_SUBDOMAIN: Final = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1123_SUBDOMAIN_MAX: Final = 253
_DNS1123_SUBDOMAIN_TEXT: Final = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must "
    "start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _annotations(obj: Mapping[str, Any]) -> dict[str, str]:
    """The string-valued annotations (the API server allows no others; validation refuses them here)."""
    raw = _meta(obj).get("annotations")
    return {str(k): v for k, v in raw.items() if isinstance(v, str)} if isinstance(raw, Mapping) else {}


def _shown(value: object) -> str:
    return f'"{value}"' if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _invalid(smc: Mapping[str, Any], path: str, value: object, detail: str) -> InvalidSpec:
    return InvalidSpec(
        kind=KIND, name=str(_meta(smc).get("name", "")), reason=f"{path}: Invalid value: {_shown(value)}: {detail}"
    )


def _error(smc: Mapping[str, Any], path: str, what: str, detail: str) -> InvalidSpec:
    return InvalidSpec(kind=KIND, name=str(_meta(smc).get("name", "")), reason=f"{path}: {what}: {detail}")


def nad_name(smc: Mapping[str, Any]) -> str:
    """The NetworkAttachmentDefinition's name: the ``multus.spidernet.io/cr-name`` annotation, else the SMC's."""
    return _annotations(smc).get(ANNO_CR_NAME) or str(_meta(smc).get("name", ""))


def cni_type(smc: Mapping[str, Any]) -> str:
    """``spec.cniType`` (``custom`` when absent, as the CRD's default)."""
    spec = smc.get("spec")
    return str(spec.get("cniType") or "custom") if isinstance(spec, Mapping) else "custom"


def _block(spec: Mapping[str, Any], kind: str) -> dict[str, Any]:
    block = spec.get(BLOCKS[kind])
    return dict(block) if isinstance(block, Mapping) else {}


def _pools(block: Mapping[str, Any]) -> dict[str, Any]:
    pools = block.get("ippools")
    return dict(pools) if isinstance(pools, Mapping) else {}


def _has_pools(block: Mapping[str, Any]) -> bool:
    pools = _pools(block)
    return bool(pools.get("ipv4") or pools.get("ipv6"))


def resource_name(smc: Mapping[str, Any]) -> str:
    """The device-plugin resource the network's pods need: ``rdmaResourceName`` of macvlan, ipvlan and vlan,
    ``resourceName`` of sriov and ib-sriov, else ``""``.  Never fails: a spec, block or value of the wrong
    shape (a stored object the pod webhook reads) counts as none."""
    spec = smc.get("spec")
    if not isinstance(spec, Mapping):
        return ""
    kind = str(spec.get("cniType") or "custom")
    if kind in _MASTER_TYPES:
        key = "rdmaResourceName"
    elif kind in ("sriov", "ib-sriov"):
        key = "resourceName"
    else:
        return ""
    block = spec.get(BLOCKS[kind])
    value = block.get(key) if isinstance(block, Mapping) else None
    return value if isinstance(value, str) else ""


# --- mutation -----------------------------------------------------------------------------------------------


def _default_pools(block: dict[str, Any]) -> None:
    if block.get("ippools") is None:
        block["ippools"] = {"ipv4": [], "ipv6": []}


def _default_coordinator(raw: Mapping[str, Any] | None) -> dict[str, Any]:
    """Spiderpool's setCoordinatorDefaultConfig and the CRD's defaults, which a real API server applies to the
    block that webhook makes whenever it reads the object (so ``txQueueLen: 0`` always, which the NAD carries)."""
    out = dict(raw or {})
    out.setdefault("mode", "auto")
    for key in ("hijackCIDR", "policyRoutes"):
        if out.get(key) is None:
            out[key] = []
    for key in ("podMACPrefix", "podDefaultRouteNIC", "vethLinkAddress"):
        if out.get(key) is None:
            out[key] = ""
    for key, default in (("tunePodRoutes", True), ("txQueueLen", 0), ("podRPFilter", 0)):
        if out.get(key) is None:
            out[key] = default
    return out


def mutate_multus_config(smc: Mapping[str, Any]) -> Obj:
    """The object with Spiderpool's mutating-webhook defaults applied (never rejects)."""
    obj: Obj = copy.deepcopy(dict(smc))
    spec: dict[str, Any] = obj.setdefault("spec", {}) if isinstance(obj.get("spec"), dict) else {}
    obj["spec"] = spec
    if spec.get("cniType") is None:
        spec["cniType"] = "custom"
    kind = spec["cniType"] if isinstance(spec["cniType"], str) else ""  # NB: validation refuses any other
    block = spec.get(BLOCKS.get(kind, ""))
    if isinstance(block, dict):
        if kind in ("macvlan", "ipvlan", "sriov"):
            block.setdefault("vlanID", 0)
        if kind == "vlan":
            if block.get("vlanMode") is None:
                block["vlanMode"] = "manual"
            if block["vlanMode"] == "manual" and block.get("vlanID") is None:
                block["vlanID"] = 0
        if kind in _MASTER_TYPES and isinstance(block.get("bond"), dict) and block["bond"].get("options") is None:
            block["bond"] = {**block["bond"], "options": ""}
        if kind == "sriov":
            block.setdefault("minTxRateMbps", 0)
            block.setdefault("maxTxRateMbps", 0)
        if kind == "ib-sriov":
            block.setdefault("pkey", "")
            block.setdefault("linkState", "enable")
            block.setdefault("rdmaIsolation", True)
            block.setdefault("enableIbKubernetes", False)
        if kind == "ovs":
            block.setdefault("vlan", 0)
        _default_pools(block)
    if kind == "custom":
        if spec.get("customCNI") is None:
            spec["customCNI"] = ""
        spec.pop("coordinator", None)
        spec["enableCoordinator"] = False
    else:
        if spec.get("enableCoordinator") is None:
            spec["enableCoordinator"] = True  # NB: the CRD's default, for a store without CRD defaulting
        if spec.get("coordinator") is None or isinstance(spec["coordinator"], Mapping):
            spec["coordinator"] = _default_coordinator(spec.get("coordinator"))
    if spec.get("disableIPAM") is None:
        spec["disableIPAM"] = False
    if spec.get("chainCNIJsonData") is None:
        spec["chainCNIJsonData"] = []
    annotations = _annotations(obj)
    raw_labels = _meta(obj).get("labels")
    if raw_labels is not None and not isinstance(raw_labels, Mapping):
        return obj  # NB: labels of another shape are validation's to refuse
    labels = dict(raw_labels or {})
    for key in (ANNO_RDMA_INJECT, ANNO_NETWORK_INJECT):
        if key in annotations:
            labels[key] = annotations[key]
    if labels and isinstance(obj.get("metadata"), Mapping):
        obj["metadata"] = {**_meta(obj), "labels": labels}
    return obj


# --- validation ---------------------------------------------------------------------------------------------

_STRING, _INTEGER, _BOOLEAN = "string", "integer", "boolean"
_POOLS_SHAPE: Final = {"ipv4": [_STRING], "ipv6": [_STRING], "matchMasterSubnet": _BOOLEAN}
_MASTER_SHAPE: Final = {
    "master": [_STRING],
    "mtu": _INTEGER,
    "vlanID": _INTEGER,
    "bond": {"name": _STRING, "mode": _INTEGER, "options": _STRING},
    "rdmaResourceName": _STRING,
    "enableRdma": _BOOLEAN,
    "ippools": _POOLS_SHAPE,
}
SPEC_SHAPE: Final[dict[str, Any]] = {
    "cniType": _STRING,
    "macvlan": _MASTER_SHAPE,
    "ipvlan": _MASTER_SHAPE,
    "vlan": {**_MASTER_SHAPE, "vlanMode": _STRING},
    "sriov": {
        "resourceName": _STRING,
        "vlanID": _INTEGER,
        "mtu": _INTEGER,
        "minTxRateMbps": _INTEGER,
        "maxTxRateMbps": _INTEGER,
        "rdmaIsolation": _BOOLEAN,
        "enableRdma": _BOOLEAN,
        "ippools": _POOLS_SHAPE,
    },
    "ibsriov": {
        "resourceName": _STRING,
        "pkey": _STRING,
        "linkState": _STRING,
        "rdmaIsolation": _BOOLEAN,
        "enableIbKubernetes": _BOOLEAN,
        "ibKubernetesEnabled": _BOOLEAN,
        "ippools": _POOLS_SHAPE,
    },
    "ipoib": {"master": _STRING, "ippools": _POOLS_SHAPE},
    "ovs": {
        "bridge": _STRING,
        "vlan": _INTEGER,
        "trunk": [{"minID": _INTEGER, "maxID": _INTEGER, "id": _INTEGER}],
        "deviceID": _STRING,
        "ippools": _POOLS_SHAPE,
    },
    "enableCoordinator": _BOOLEAN,
    "disableIPAM": _BOOLEAN,
    "coordinator": {
        "mode": _STRING,
        "podCIDRType": _STRING,
        "hijackCIDR": [_STRING],
        "policyRoutes": [{"dst": _STRING, "gw": _STRING}],
        "podMACPrefix": _STRING,
        "tunePodRoutes": _BOOLEAN,
        "podDefaultRouteNIC": _STRING,
        "hostRuleTable": _INTEGER,
        "podRPFilter": _INTEGER,
        "txQueueLen": _INTEGER,
        "vethLinkAddress": _STRING,
        "vethMTU": _INTEGER,
        "hostRPFilter": _INTEGER,
        "detectGateway": _BOOLEAN,
        "detectIPConflict": _BOOLEAN,
        "enableVethLinkLocalAddress": _BOOLEAN,
    },
    "chainCNIJsonData": [_STRING],
    "customCNI": _STRING,
}
"""The JSON type of every spec field the CRD's schema declares: a type name, ``[item]`` or ``{field: shape}``."""


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    return "object" if isinstance(value, Mapping) else type(value).__name__


def _check_shape(smc: Mapping[str, Any], path: str, value: object, shape: object) -> None:
    """``InvalidSpec`` in the API server's words when ``value`` is not of the CRD schema's type; a ``null``
    field counts as absent (the API server drops it), a ``null`` item does not."""
    want = "array" if isinstance(shape, list) else "object" if isinstance(shape, dict) else str(shape)
    got = _json_type(value)
    if got != want:
        raise _error(smc, path, "Invalid value", f'"{got}": {path} in body must be of type {want}: "{got}"')
    if isinstance(shape, list) and isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_shape(smc, f"{path}[{i}]", item, shape[0])
    elif isinstance(shape, dict) and isinstance(value, Mapping):
        for key, sub in shape.items():
            if value.get(key) is not None:
                _check_shape(smc, f"{path}.{key}", value[key], sub)


def _check_metadata(smc: Mapping[str, Any]) -> None:
    """Annotations and labels are maps of strings (what ``kubectl`` could never send otherwise)."""
    for key in ("annotations", "labels"):
        value = _meta(smc).get(key)
        if value is None:
            continue
        if not isinstance(value, Mapping):
            _check_shape(smc, f"metadata.{key}", value, {})
        for name, text in value.items():
            if not isinstance(text, str):
                _check_shape(smc, f"metadata.{key}.{name}", text, _STRING)


def _dns_subdomain_problems(name: str) -> list[str]:
    problems = []
    if len(name) > _DNS1123_SUBDOMAIN_MAX:
        problems.append(f"must be no more than {_DNS1123_SUBDOMAIN_MAX} characters")
    if not _DNS1123_SUBDOMAIN.match(name):
        problems.append(_DNS1123_SUBDOMAIN_TEXT)
    return problems


def _validate_name_unchanged(new: Mapping[str, Any], old: Mapping[str, Any]) -> None:
    old_anno, new_anno = _annotations(old), _annotations(new)
    if ANNO_CR_NAME in old_anno and ANNO_CR_NAME in new_anno and old_anno[ANNO_CR_NAME] != new_anno[ANNO_CR_NAME]:
        raise _invalid(
            new,
            "metadata.annotations",
            old_anno[ANNO_CR_NAME],
            f"it's unsupported to change customized Multus net-attach-def resource name from "
            f"'{old_anno[ANNO_CR_NAME]}' to '{new_anno[ANNO_CR_NAME]}'",
        )
    if ANNO_CR_NAME not in old_anno and ANNO_CR_NAME in new_anno:
        raise _invalid(
            new,
            "metadata.annotations",
            new_anno[ANNO_CR_NAME],
            f"it's unsupported to changed Multus net-attach-def '{_meta(old).get('name', '')}' to customized "
            f"name '{new_anno[ANNO_CR_NAME]}'",
        )


def _validate_annotations(smc: Mapping[str, Any], existing_nad: Mapping[str, Any] | None) -> None:
    annotations = _annotations(smc)
    if ANNO_CR_NAME in annotations:
        problems = _dns_subdomain_problems(annotations[ANNO_CR_NAME])
        if problems:
            raise _invalid(
                smc, "metadata.annotations", annotations,
                f"invalid custom net-attach-def resource name, err: [{' '.join(problems)}]",
            )  # fmt: skip
    if existing_nad is not None:
        name, namespace = str(_meta(smc).get("name", "")), str(_meta(smc).get("namespace", ""))
        for ref in _meta(existing_nad).get("ownerReferences") or []:
            if ref.get("kind") == KIND and ref.get("name") != name:
                target = f"{namespace}/{_meta(existing_nad).get('name', '')}"
                raise _invalid(
                    smc, "metadata.annotations", annotations,
                    f"the net-attach-def {target} already exists and is managed by SpiderMultusConfig "
                    f"{namespace}/{ref.get('name')}.",
                )  # fmt: skip
    version = annotations.get(ANNO_CNI_VERSION)
    if ANNO_CNI_VERSION in annotations and version not in CNI_VERSIONS:
        raise _invalid(smc, "metadata.annotations", annotations, f"unsupported CNI version {version}")


def _vlan_id(smc: Mapping[str, Any], field: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 4094:
        raise _invalid(smc, field, value, f"invalid vlanId {value}, please make sure vlanId in range [0,4094]")


def _masters(smc: Mapping[str, Any], field: str, block: Mapping[str, Any]) -> None:
    master = block.get("master") or []
    if not isinstance(master, list) or not all(isinstance(m, str) and m for m in master):
        raise _invalid(smc, field, block, "master must be a list of interface names")
    bond = block.get("bond")
    if not master:
        raise _invalid(smc, field, block, "master can't be empty")
    if len(master) >= 2:
        if not isinstance(bond, dict):
            raise _invalid(smc, field, block, "the bond property is nil with multiple Interfaces")
        if not bond.get("name"):
            raise _invalid(smc, field, block, "bond name can't be empty")
    if isinstance(bond, dict):
        mode = bond.get("mode")
        if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 6:
            raise _invalid(smc, field, block, f"bond mode must be 0 to 6, not {mode}")


def _mtu(smc: Mapping[str, Any], field: str, block: Mapping[str, Any]) -> None:
    mtu = block.get("mtu")
    if mtu is not None and (isinstance(mtu, bool) or not isinstance(mtu, int) or mtu < 0):
        raise _invalid(smc, field, mtu, "mtu must be a non-negative integer")


def _inject(smc: Mapping[str, Any], kind: str, field: str, block: Mapping[str, Any]) -> None:
    """The resource-inject annotations' requirements (M00027-M00032)."""
    annotations = _annotations(smc)
    rdma, network = ANNO_RDMA_INJECT in annotations, ANNO_NETWORK_INJECT in annotations
    if not (rdma or network):
        return
    if kind in _NO_INJECT_TYPES:
        raise _error(
            smc, "spec.cniType", "Forbidden",
            f"the cniType {kind} does not support RDMA resource or network resource injected",
        )  # fmt: skip
    where = f"{_meta(smc).get('namespace', '')}/{_meta(smc).get('name', '')}"
    if rdma:
        resource = str(block.get("master") or "") if kind == "ipoib" else resource_name(smc)
        if not resource:
            raise _invalid(smc, field, block, rdma_resource_missing(where))
        if not _has_pools(block):
            raise _invalid(smc, field, block, pools_missing(where))
    if network and resource_name(smc) and not _has_pools(block):  # NB: every type with a resource name
        raise _invalid(smc, field, block, pools_missing(where))


def rdma_resource_missing(where: str) -> str:
    """Spiderpool's text for an SMC (``namespace/name``) that RDMA injection needs a resource name of."""
    return f"rdmaResourceName can not empty for spidermultusconfig {where}"


def pools_missing(where: str) -> str:
    """Spiderpool's text for an SMC (``namespace/name``) that injection needs default pools of."""
    return f"no any ippools config for spidermultusconfig {where}"


def _validate_coordinator(smc: Mapping[str, Any], raw: object) -> None:
    """Spiderpool's ``ValidateCoordinatorSpec(spec, requireOptionalType=false)``, with its field paths."""
    if raw is None:
        return
    if not isinstance(raw, dict):
        raise _invalid(smc, "spec.coordinator", raw, "must be an object")
    cidr_type = raw.get("podCIDRType")
    if cidr_type is not None and cidr_type not in _POD_CIDR_TYPES:
        supported = ", ".join(f'"{t}"' for t in _POD_CIDR_TYPES)
        raise _error(smc, "spec.podCIDRType", "Unsupported value", f'"{cidr_type}": supported values: {supported}')
    rp = raw.get("podRPFilter")
    if rp is not None and (isinstance(rp, bool) or not isinstance(rp, int) or (rp >= 0 and rp not in (0, 1, 2))):
        raise _error(smc, "spec.podRPFilter", "Unsupported value", f'{_shown(rp)}: supported values: "0", "1", "2"')
    for i, cidr in enumerate(raw.get("hijackCIDR") or []):
        try:
            ipaddress.ip_network(str(cidr), strict=False)
        except ValueError:
            raise _invalid(smc, f"spec.hijackCIDR[{i}]", cidr, f"invalid CIDR address: {cidr}") from None
    # The coordinator plugin's own checks (podMACPrefix, policyRoutes, vethLinkAddress, vethMTU, txQueueLen, ...)
    as_netconf = {k: v for k, v in raw.items() if k not in ("podCIDRType", "podDefaultRouteNIC")}
    try:
        CoordinatorConf.merge(as_netconf, None)
    except InvalidNetConf as exc:
        raise _invalid(smc, "spec.coordinator", raw, exc.reason) from None


def _chain_conf_problem(text: object) -> str | None:
    """What libcni's ``ConfFromBytes`` says of one chained plugin's JSON, or ``None``."""
    if not isinstance(text, str):
        return "error parsing configuration: not a string"
    try:
        conf = limits.loads(text)
    except ValueError as exc:
        return f"error parsing configuration: {exc}"
    if not isinstance(conf, dict):
        return "error parsing configuration: not a JSON object"
    if not conf.get("type"):
        return "error parsing configuration: missing 'type'"
    # NB: the fields libcni decodes into its NetConf, each of the type Go demands (else Multus cannot read the NAD)
    for key, kind, name in (("type", str, "a string"), ("name", str, "a string"), ("cniVersion", str, "a string"),
                            ("ipam", dict, "an object"), ("dns", dict, "an object"),
                            ("capabilities", dict, "an object"), ("args", dict, "an object")):  # fmt: skip
        if key in conf and conf[key] is not None and not isinstance(conf[key], kind):
            return f"error parsing configuration: {key!r} must be {name}"
    if isinstance(conf.get("ipam"), dict) and not isinstance(conf["ipam"].get("type", ""), str):
        return "error parsing configuration: 'ipam.type' must be a string"
    return None


def _validate_blocks(smc: Mapping[str, Any]) -> None:
    spec = smc.get("spec") or {}
    kind = spec.get("cniType")
    if kind is None:
        raise _invalid(smc, "spec.cniType", None, "CniType must not be nil")
    if kind not in CNI_TYPES:
        supported = ", ".join(f'"{t}"' for t in CNI_TYPES)
        raise _error(smc, "spec.cniType", "Unsupported value", f'"{kind}": supported values: {supported}')
    field = _FIELD[kind]
    others = [BLOCKS[k] for k in CNI_TYPES if k != kind and spec.get(BLOCKS[k]) is not None]
    if kind == "custom":
        if others:
            raise _error(
                smc, "spec.cniType", "Forbidden",
                f"the cniType custom only supports {field}, please remove other CNI configs",
            )  # fmt: skip
        text = spec.get("customCNI") or ""
        if text:
            try:
                limits.loads(text)
            except ValueError:
                raise _error(smc, field, "Forbidden", "customCniConfig isn't a valid JSON encoding") from None
        _inject(smc, kind, field, {})
    else:
        block = spec.get(BLOCKS[kind])
        if not isinstance(block, dict):
            raise _error(smc, field, "Required value", f"no {field} specified")
        if kind in ("macvlan", "ipvlan", "vlan", "sriov"):
            _vlan_id(smc, field, block.get("vlanID"))
        if kind in _MASTER_TYPES:
            if _pools(block).get("matchMasterSubnet"):
                raise _invalid(smc, field, block, f"MatchMasterSubnet feature is not supported for {kind}")
            _masters(smc, field, block)
            _mtu(smc, field, block)
        if kind == "vlan":
            mode = block.get("vlanMode") or "manual"
            if mode not in ("manual", "auto"):
                raise _error(
                    smc, f"{field}.vlanMode", "Unsupported value", f'"{mode}": supported values: "manual", "auto"'
                )
            if mode == "manual" and block.get("vlanID") is None:
                raise _invalid(smc, field, block, "vlanId must not be nil when vlanMode is manual")
            if mode == "auto" and block.get("vlanID"):  # NB: 0 is the CRD's default, so it counts as unset
                raise _invalid(smc, field, block.get("vlanID"), "vlanId must not be specified when vlanMode is auto")
        if kind == "sriov":
            low, high = block.get("minTxRateMbps"), block.get("maxTxRateMbps")
            if isinstance(low, int) and isinstance(high, int) and high and low > high:
                raise _invalid(smc, field, low, "minTxRateMbps must be less than maxTxRateMbps")
            _mtu(smc, field, block)
        if kind in ("sriov", "ib-sriov") and not block.get("resourceName"):
            raise _error(smc, f"{field}[resourceName]", "Required value", f"no {field}[resourceName] specified")
        if kind == "ipoib" and not block.get("master"):
            raise _error(smc, f"{field}[master]", "Required value", f"no {field}[master] specified")
        if kind == "ovs":
            if not block.get("bridge"):
                raise _error(smc, f"{field}[bridge]", "Required value", f"no {field}[bridge] specified")
            _vlan_id(smc, field, block.get("vlan"))
            for trunk in block.get("trunk") or []:
                low, high, one = trunk.get("minID"), trunk.get("maxID"), trunk.get("id")
                if low is not None and low > 4094:
                    raise _invalid(smc, field, trunk, "incorrect trunk minID parameter")
                if high is not None and high > 4094:
                    raise _invalid(smc, field, trunk, "incorrect trunk maxID parameter")
                if high is not None and high < (low or 0):
                    raise _invalid(smc, field, trunk, "minID is greater than maxID in trunk parameter")
                if one is not None and one > 4094:
                    raise _invalid(smc, field, trunk, "incorrect trunk id parameter")
        if others:
            raise _error(
                smc, "spec.cniType", "Forbidden",
                f"the cniType {kind} only supports {field}, please remove other CNI configs",
            )  # fmt: skip
        _inject(smc, kind, field, block)
    _validate_coordinator(smc, spec.get("coordinator"))
    for text in spec.get("chainCNIJsonData") or []:
        problem = _chain_conf_problem(text)
        if problem is not None:
            raise _error(smc, "spec.chainCNIJsonData", "Forbidden", f"invalid {text}: {problem}")


def validate_multus_config(
    new: Mapping[str, Any], old: Mapping[str, Any] | None = None, existing_nad: Mapping[str, Any] | None = None
) -> None:
    """Raise ``InvalidSpec`` when ``new`` (already mutated) may not be stored.

    ``old`` is the stored object on update (``None`` on create); ``existing_nad`` the NetworkAttachmentDefinition
    already named ``nad_name(new)`` in its namespace, if any (one owned by another SpiderMultusConfig is refused;
    one owned by nobody is taken over, as Spiderpool does).
    """
    if not isinstance(new.get("spec"), dict):
        raise _error(new, "spec", "Required value", "spec is required")
    _check_metadata(new)
    _check_shape(new, "spec", new["spec"], SPEC_SHAPE)
    if old is not None:
        _validate_name_unchanged(new, old)
    _validate_annotations(new, existing_nad)
    _validate_blocks(new)


# --- generation ---------------------------------------------------------------------------------------------


def _ipam(block: Mapping[str, Any], *, match_master_subnet: bool = False) -> dict[str, Any]:
    pools = _pools(block)
    ipam: dict[str, Any] = {"type": "spiderpool"}
    if pools.get("ipv4"):
        ipam["default_ipv4_ippool"] = list(pools["ipv4"])
    if pools.get("ipv6"):
        ipam["default_ipv6_ippool"] = list(pools["ipv6"])
    if match_master_subnet and pools.get("matchMasterSubnet"):
        ipam["match_master_subnet"] = True
    return ipam


def _with_ipam(plugin: dict[str, Any], block: Mapping[str, Any], disable_ipam: bool, **kw: bool) -> dict[str, Any]:
    if not disable_ipam:
        plugin["ipam"] = _ipam(block, **kw)
    return plugin


def _ifacer(masters: Sequence[str], vlan_id: int, bond: Mapping[str, Any] | None) -> dict[str, Any]:
    plugin: dict[str, Any] = {"type": "ifacer", "interfaces": list(masters)}
    if vlan_id:
        plugin["vlanID"] = vlan_id
    if bond:
        plugin["bond"] = dict(bond)
    return plugin


def _base_master(block: Mapping[str, Any]) -> str:
    masters = list(block.get("master") or [])
    return str(masters[0]) if len(masters) == 1 else str((block.get("bond") or {}).get("name", ""))


def coordinator_plugin(raw: Mapping[str, Any] | None) -> dict[str, Any]:
    """The coordinator entry of the conflist: the fields Spiderpool emits, empty ones left out (§7.2)."""
    c = raw or {}
    plugin: dict[str, Any] = {"type": "coordinator"}
    for src, dst in (
        ("mode", "mode"),
        ("hijackCIDR", "hijackCIDR"),
        ("policyRoutes", "policyRoutes"),
        ("podMACPrefix", "podMACPrefix"),
        ("podDefaultRouteNIC", "podDefaultRouteNic"),
        ("vethLinkAddress", "vethLinkAddress"),
        ("vethMTU", "vethMTU"),
    ):
        if c.get(src):
            plugin[dst] = c[src]
    if c.get("tunePodRoutes") is not None:
        plugin["tunePodRoutes"] = c["tunePodRoutes"]
    if c.get("txQueueLen") is not None:  # NB: 0 too (Spiderpool's *int): the SpiderCoordinator's then does not apply
        plugin["txQueueLen"] = c["txQueueLen"]
    if c.get("podCIDRType") is not None and c.get("podRPFilter") is not None:  # NB: Spiderpool's quirk (§13 7)
        plugin["podRPFilter"] = c["podRPFilter"]
    return plugin


def _main_plugins(kind: str, spec: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The plugins before the chained ones, and those after the coordinator (sriov's tuning)."""
    block = _block(spec, kind)
    no_ipam = bool(spec.get("disableIPAM"))
    masters = list(block.get("master") or []) if kind in _MASTER_TYPES else []
    if kind in ("macvlan", "ipvlan"):
        vlan_id = int(block.get("vlanID") or 0)
        master = _base_master(block) + (f".{vlan_id}" if vlan_id else "")
        main: dict[str, Any] = {"type": kind, "master": master}
        if kind == "macvlan":
            main["mode"] = "bridge"
        if block.get("mtu"):
            main["mtu"] = block["mtu"]
        before = [_ifacer(masters, vlan_id, block.get("bond"))] if vlan_id or len(masters) >= 2 else []
        return [*before, _with_ipam(main, block, no_ipam)], []
    if kind == "vlan":
        mode = block.get("vlanMode") or "manual"
        main = {"type": "vlan", "master": _base_master(block), "vlanMode": mode}
        if mode == "manual":
            main["vlanId"] = int(block.get("vlanID") or 0)
        if block.get("mtu"):
            main["mtu"] = block["mtu"]
        before = [_ifacer(masters, 0, block.get("bond"))] if len(masters) >= 2 else []
        return [*before, _with_ipam(main, block, no_ipam)], []
    if kind == "sriov":
        main = {"type": "sriov"}
        for src, dst in (("vlanID", "vlan"), ("minTxRateMbps", "min_tx_rate"), ("maxTxRateMbps", "max_tx_rate")):
            if block.get(src) is not None:
                main[dst] = block[src]
        plugins = [_with_ipam(main, block, no_ipam, match_master_subnet=True)]
        if block.get("rdmaIsolation"):
            plugins.append({"type": "rdma"})
        after = [{"type": "tuning", "mtu": block["mtu"]}] if block.get("mtu") else []
        return plugins, after
    if kind == "ib-sriov":
        main = {"type": "ib-sriov"}
        if block.get("pkey"):
            main["pkey"] = block["pkey"]
        for src, dst in (
            ("linkState", "link_state"),
            ("rdmaIsolation", "rdmaIsolation"),
            ("enableIbKubernetes", "ibKubernetesEnabled"),
        ):
            if block.get(src) is not None:
                main[dst] = block[src]
        return [_with_ipam(main, block, no_ipam)], []
    if kind == "ipoib":
        return [_with_ipam({"type": "ipoib", "master": block.get("master", "")}, block, no_ipam)], []
    # ovs
    main = {"type": "ovs", "bridge": block.get("bridge", "")}
    if block.get("vlan") is not None:
        main["vlan"] = block["vlan"]
    if block.get("trunk"):
        main["trunk"] = list(block["trunk"])
    if block.get("deviceID"):
        main["deviceID"] = block["deviceID"]
    return [_with_ipam(main, block, no_ipam)], []


def conflist(smc: Mapping[str, Any]) -> dict[str, Any] | None:
    """The CNI configuration list a SpiderMultusConfig (already mutated) describes; ``None`` for a custom one
    (its ``customCNI`` is used verbatim, see ``network_attachment``)."""
    spec = smc.get("spec") or {}
    kind = cni_type(smc)
    if kind == "custom":
        return None
    before, after = _main_plugins(kind, spec)
    chained = [json.loads(text) for text in spec.get("chainCNIJsonData") or []]
    coordinator = [coordinator_plugin(spec.get("coordinator"))] if spec.get("enableCoordinator", True) else []
    annotations = _annotations(smc)
    return {
        "cniVersion": annotations.get(ANNO_CNI_VERSION) or DEFAULT_CNI_VERSION,
        "name": annotations.get(ANNO_CNI_CONFIG_NAME) or nad_name(smc),
        "plugins": [*before, *chained, *coordinator, *after],
    }


def owner_reference(smc: Mapping[str, Any]) -> dict[str, Any]:
    """The controller owner reference a generated NAD carries (so Kubernetes' GC deletes it with the SMC)."""
    return {
        "apiVersion": SPIDER_API_VERSION,
        "kind": KIND,
        "name": str(_meta(smc).get("name", "")),
        "uid": str(_meta(smc).get("uid", "")),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def network_attachment(smc: Mapping[str, Any]) -> Obj:
    """The NetworkAttachmentDefinition a SpiderMultusConfig (already mutated) becomes."""
    spec = smc.get("spec") or {}
    kind = cni_type(smc)
    annotations = _annotations(smc)
    if kind in ("sriov", "ib-sriov"):
        annotations[ANNO_RESOURCE_NAME] = str(_block(spec, kind).get("resourceName", ""))
    if kind == "ovs" and _block(spec, kind).get("deviceID"):
        annotations[ANNO_RESOURCE_NAME] = f"{OVS_RESOURCE_PREFIX}/{_block(spec, kind).get('bridge', '')}"
    metadata: dict[str, Any] = {
        "name": nad_name(smc),
        "namespace": str(_meta(smc).get("namespace", "")),
        "ownerReferences": [owner_reference(smc)],
    }
    if annotations:
        metadata["annotations"] = annotations
    nad: Obj = {"apiVersion": NAD_API_VERSION, "kind": NAD_KIND, "metadata": metadata}
    if kind == "custom":
        text = str(spec.get("customCNI") or "")
        if text:
            nad["spec"] = {"config": text}
    else:
        nad["spec"] = {"config": json.dumps(conflist(smc), separators=(",", ":"))}
    return nad


def controlled_by(nad: Mapping[str, Any], smc: Mapping[str, Any]) -> bool:
    """Whether ``nad``'s controller owner reference is this SpiderMultusConfig (same uid)."""
    uid = _meta(smc).get("uid")
    return any(
        ref.get("controller") and ref.get("uid") == uid and ref.get("kind") == KIND
        for ref in _meta(nad).get("ownerReferences") or []
    )


def owner_name(nad: Mapping[str, Any]) -> str | None:
    """The name of the SpiderMultusConfig controlling ``nad``, if one does."""
    for ref in _meta(nad).get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == KIND and ref.get("apiVersion", "").startswith("spiderpool."):
            return str(ref.get("name", ""))
    return None


def updated_nad(stored: Mapping[str, Any], smc: Mapping[str, Any]) -> Obj | None:
    """``stored`` brought in step with ``smc`` (annotations, config, controller owner), or ``None`` when it
    already is.  Anything else on the stored object (labels, other owners' fields) is kept."""
    want = network_attachment(smc)
    out: Obj = copy.deepcopy(dict(stored))
    meta = dict(_meta(out))
    changed = False
    if dict(meta.get("annotations") or {}) != dict(want["metadata"].get("annotations") or {}):
        meta["annotations"] = want["metadata"].get("annotations") or {}
        changed = True
    if (out.get("spec") or {}).get("config") != (want.get("spec") or {}).get("config"):
        out["spec"] = {**(out.get("spec") or {}), **(want.get("spec") or {})}
        if "spec" not in want:
            out["spec"].pop("config", None)
        changed = True
    if not controlled_by(out, smc):
        meta["ownerReferences"] = want["metadata"]["ownerReferences"]
        changed = True
    out["metadata"] = meta
    return out if changed else None
