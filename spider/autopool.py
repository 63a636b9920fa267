"""Auto-created pools of SpiderSubnet: who they belong to, their names, labels, size and content (reference §7.1).

Owns the pure rules both sides of the SpiderSubnet feature share: ``AppRef`` (the application an auto pool
belongs to), the pool's name (``auto4-<app>-<nic>-<uid5>``, truncated to 253 characters), its labels and the
label selector the agent finds it with, its desired size (``ippool-ip-number`` ``"N"``, ``"+N"`` or absent, and
replicas per kind), the parsed ``ipam.spidernet.io/subnet`` / ``subnets`` annotations (``subnet_claims``) and the
SpiderIPPool object the controller (or the agent, for third-party controllers) creates.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from spider import limits
from spider.errors import InvalidInput
from spider.kinds import FINALIZER, SPIDER_API_VERSION
from spider.validation import LABEL_OWNER_SUBNET, LABEL_POOL_CIDR, cidr_label

ANNO_SUBNET = "ipam.spidernet.io/subnet"
ANNO_SUBNETS = "ipam.spidernet.io/subnets"
ANNO_IP_NUMBER = "ipam.spidernet.io/ippool-ip-number"
ANNO_RECLAIM = "ipam.spidernet.io/ippool-reclaim"

LABEL_APP_GV = "ipam.spidernet.io/owner-application-gv"
LABEL_APP_KIND = "ipam.spidernet.io/owner-application-kind"
LABEL_APP_NAMESPACE = "ipam.spidernet.io/owner-application-namespace"
LABEL_APP_NAME = "ipam.spidernet.io/owner-application-name"
LABEL_APP_UID = "ipam.spidernet.io/owner-application-uid"
LABEL_INTERFACE = "ipam.spidernet.io/interface"
LABEL_IP_VERSION = "ipam.spidernet.io/ip-version"
LABEL_RECLAIM = "ipam.spidernet.io/ippool-reclaim"

AFFINITY_API_GROUP = "ipam.spidernet.io/app-api-group"
AFFINITY_API_VERSION = "ipam.spidernet.io/app-api-version"
AFFINITY_KIND = "ipam.spidernet.io/app-kind"
AFFINITY_NAMESPACE = "ipam.spidernet.io/app-namespace"
AFFINITY_NAME = "ipam.spidernet.io/app-name"
AFFINITY_KEYS = (AFFINITY_API_GROUP, AFFINITY_API_VERSION, AFFINITY_KIND, AFFINITY_NAMESPACE, AFFINITY_NAME)
"""The only podAffinity matchLabels keys an auto pool may carry (reference §1.1 validating webhook)."""

MAX_NAME = 253
"""``validation.DNS1123SubdomainMaxLength``: the longest object name."""

BUILTIN_KINDS = ("Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job", "CronJob")
"""The kinds whose auto pools the controller's application informers manage; any other kind is third-party."""


@attrs.frozen
class AppRef:
    """The application (top-level controller) an auto pool belongs to."""

    api_version: str
    kind: str
    namespace: str
    name: str
    uid: str

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> AppRef:
        """From a stored application object (``apiVersion``, ``kind`` and ``metadata``)."""
        meta = obj.get("metadata") or {}
        return cls(
            api_version=str(obj.get("apiVersion", "")),
            kind=str(obj.get("kind", "")),
            namespace=str(meta.get("namespace", "")),
            name=str(meta.get("name", "")),
            uid=str(meta.get("uid", "")),
        )

    @property
    def group(self) -> str:
        """The API group (``apps``; ``""`` for the core group)."""
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        """The API version without its group (``v1``)."""
        return self.api_version.rpartition("/")[2]

    @property
    def gv_label(self) -> str:
        """The group/version as a label value: ``apps/v1`` becomes ``apps_v1``."""
        return self.api_version.replace("/", "_")

    @property
    def application(self) -> str:
        """``controlledIPPools[pool].application``: ``<gv>_<Kind>_<namespace>_<name>`` (``apps_v1_Deployment_ns_a``)."""
        return f"{self.gv_label}_{self.kind}_{self.namespace}_{self.name}"

    @property
    def builtin(self) -> bool:
        """A kind whose auto pools the controller manages (not a third-party controller)."""
        return self.kind in BUILTIN_KINDS and self.group in ("apps", "batch")


def parse_application(text: str) -> tuple[str, str, str, str] | None:
    """``(gv_label, kind, namespace, name)`` from a ``controlledIPPools`` ``application`` string, or ``None``.

    The group/version label has one ``_`` when grouped (``apps_v1``) and none for the core group (``v1``); the
    name is the rest, so names with ``_`` (not valid Kubernetes names anyway) still round-trip.
    """
    parts = text.split("_")
    if len(parts) >= 5:
        return f"{parts[0]}_{parts[1]}", parts[2], parts[3], "_".join(parts[4:])
    if len(parts) == 4:
        return parts[0], parts[1], parts[2], parts[3]
    return None


def _uid_part(uid: str) -> str:
    return uid.split("-")[-1][:5]


def named_for(pool_name: str, uid: str) -> bool:
    """Whether an auto pool's name carries this application UID (``auto_pool_name``'s last segment): a pool the
    application of that UID makes, not one an earlier application of the same name made."""
    return bool(uid) and pool_name.endswith(f"-{_uid_part(uid)}")


def auto_pool_name(app: AppRef, nic: str, version: int) -> str:
    """``auto{4|6}-{app name}-{nic}-{first 5 of the UID's last segment}``, lower case, at most 253 characters.

    Only the application's name is shortened when the whole would be too long (I00017).
    """
    fixed = f"auto{version}---{nic.lower()}{_uid_part(app.uid)}"
    room = MAX_NAME - len(fixed)
    name = app.name.lower()[: max(room, 0)]
    return f"auto{version}-{name}-{nic.lower()}-{_uid_part(app.uid)}"


def app_affinity_labels(app: AppRef) -> dict[str, str]:
    """The auto pool's ``podAffinity.matchLabels``: the five ``app-*`` keys naming its application.

    A pod matches them with the labels of its top-level controller (``app_affinity_labels`` of that
    controller), not with its own labels, so the pool's spare addresses serve only its application (I00020).
    """
    return {
        AFFINITY_API_GROUP: app.group,
        AFFINITY_API_VERSION: app.version,
        AFFINITY_KIND: app.kind,
        AFFINITY_NAMESPACE: app.namespace,
        AFFINITY_NAME: app.name,
    }


def _lookup_labels(app: AppRef, nic: str, version: int) -> dict[str, str]:
    return {
        LABEL_APP_GV: app.gv_label,
        LABEL_APP_KIND: app.kind,
        LABEL_APP_NAMESPACE: app.namespace,
        LABEL_APP_NAME: app.name,
        LABEL_INTERFACE: nic,
        LABEL_IP_VERSION: f"IPv{version}",
    }


def auto_pool_labels(app: AppRef, nic: str, version: int, subnet: str, cidr: str, reclaim: bool) -> dict[str, str]:
    """Every label an auto pool carries (reference §2.3): owner subnet, CIDR, application, NIC, family, reclaim."""
    return {
        LABEL_OWNER_SUBNET: subnet,
        LABEL_POOL_CIDR: cidr_label(cidr),
        **_lookup_labels(app, nic, version),
        LABEL_APP_UID: app.uid,
        LABEL_RECLAIM: "true" if reclaim else "false",
    }


def reuse_labels(app: AppRef, nic: str, version: int, subnet: str) -> dict[str, str]:
    """The labels that find an application's auto pool whatever its UID: a retained pool (``ippool-reclaim``
    false) is re-used by a new application of the same kind, namespace and name (I00015), never another kind."""
    return {LABEL_OWNER_SUBNET: subnet, **_lookup_labels(app, nic, version)}


def auto_pool_selector(app: AppRef, nic: str, version: int, subnet: str | None = None) -> str:
    """The label selector the agent finds the auto pool of ``app``'s NIC with (``k=v,k=v``, sorted keys)."""
    labels = {**_lookup_labels(app, nic, version), LABEL_APP_UID: app.uid}
    if subnet is not None:
        labels[LABEL_OWNER_SUBNET] = subnet
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def is_auto_pool(pool: Mapping[str, Any]) -> bool:
    """Whether a SpiderIPPool was created for an application (it carries the owner-application labels)."""
    labels = (pool.get("metadata") or {}).get("labels") or {}
    return LABEL_APP_UID in labels and LABEL_APP_KIND in labels


def pool_reclaims(pool: Mapping[str, Any]) -> bool:
    """Whether an auto pool goes away with its application (label ``ippool-reclaim``, default true)."""
    labels = (pool.get("metadata") or {}).get("labels") or {}
    return str(labels.get(LABEL_RECLAIM, "true")).lower() != "false"


def _parse_ip_number(text: str) -> tuple[bool, int]:
    """``(flexible, n)`` from ``"N"`` or ``"+N"``; ``InvalidInput`` otherwise."""
    body = text.strip()
    flexible = body.startswith("+")
    digits = body[1:] if flexible else body
    if not (digits.isascii() and digits.isdigit() and len(digits) <= 9):  # NB: "²" is a digit too
        raise InvalidInput(reason=f"{ANNO_IP_NUMBER} {text!r} is invalid: want 'N' or '+N' with N >= 0")
    return flexible, int(digits)


def desired_ip_count(ip_number: str | None, replicas: int, default_redundant: int) -> int:
    """How many addresses an auto pool should hold: ``"N"`` is N, ``"+N"`` is replicas + N, absent is replicas +
    the cluster default (``clusterSubnetAutoPoolDefaultRedundantIPNumber``, effectively 0 in Spiderpool)."""
    if ip_number is None:
        return replicas + default_redundant
    flexible, n = _parse_ip_number(ip_number)
    return replicas + n if flexible else n


def ip_number_text(ip_number: str | None, default_redundant: int) -> str:
    """The auto pool's ``ippool-ip-number`` annotation: the application's value, or ``"+<default>"``."""
    if ip_number is None:
        return f"+{default_redundant}"
    flexible, n = _parse_ip_number(ip_number)
    return f"+{n}" if flexible else str(n)


def fixed_ip_number(ip_number: str | None) -> int:
    """A third-party controller's pool size: only the fixed form ``"N"`` is accepted (T00002)."""
    if ip_number is None or _parse_ip_number(ip_number)[0]:
        raise InvalidInput(
            reason=f"third-party controllers only supports fixed auto-created IPPool IP Number, "
            f"set {ANNO_IP_NUMBER} to 'N' (got {ip_number!r})"
        )
    return _parse_ip_number(ip_number)[1]


def _int_or_none(raw: object) -> int | None:
    if isinstance(raw, bool) or not isinstance(raw, int):
        return None
    return raw


def replicas_of(obj: Mapping[str, Any]) -> int:
    """How many pods an application wants (reference §7.1): Deployment/ReplicaSet/StatefulSet ``spec.replicas``
    (absent is 0), DaemonSet ``status.desiredNumberScheduled``, Job/CronJob ``completions`` if set (0 is 1), else
    ``parallelism`` (0 is 1), else 1; any other kind ``spec.replicas`` (absent is 0)."""
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind == "DaemonSet":
        return max(_int_or_none((obj.get("status") or {}).get("desiredNumberScheduled")) or 0, 0)
    if kind in ("Job", "CronJob"):
        job = ((spec.get("jobTemplate") or {}).get("spec") or {}) if kind == "CronJob" else spec
        for field in ("completions", "parallelism"):
            value = _int_or_none(job.get(field))
            if value is not None:
                return max(value, 1)
        return 1
    return max(_int_or_none(spec.get("replicas")) or 0, 0)


def pod_template_annotations(obj: Mapping[str, Any]) -> dict[str, str]:
    """The pod template's annotations, where an application's subnet annotations live (CronJob: its job's)."""
    spec = obj.get("spec") or {}
    if obj.get("kind") == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    meta = (spec.get("template") or {}).get("metadata") or {}
    return {str(k): str(v) for k, v in (meta.get("annotations") or {}).items()}


@attrs.frozen
class SubnetClaim:
    """One NIC's request for auto pools: the subnets per family and the pool's size and reclaim choice."""

    interface: str
    ipv4: tuple[str, ...] = ()
    ipv6: tuple[str, ...] = ()
    ip_number: str | None = None
    """``ippool-ip-number`` as written (``"N"``, ``"+N"``), ``None`` when absent."""
    reclaim: bool = True

    def subnet(self, version: int) -> str | None:
        """The subnet of one family (only the first name counts, as in Spiderpool), if any."""
        names = self.ipv4 if version == 4 else self.ipv6
        return names[0] if names else None

    @property
    def versions(self) -> tuple[int, ...]:
        """The families this NIC asks for."""
        return tuple(v for v in (4, 6) if self.subnet(v))


def _subnet_names(raw: object, where: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(x, str) and x for x in raw):
        raise InvalidInput(reason=f"{where} must be a list of SpiderSubnet names")
    return tuple(raw)


def _parse_bool(text: str) -> bool:
    """Go's ``strconv.ParseBool``."""
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise InvalidInput(reason=f"{ANNO_RECLAIM} {text!r} is not a boolean")


def has_subnet_claims(annotations: Mapping[str, str]) -> bool:
    """Whether the annotations ask for auto pools at all."""
    return ANNO_SUBNETS in annotations or ANNO_SUBNET in annotations


def subnet_claims(annotations: Mapping[str, str]) -> tuple[SubnetClaim, ...]:
    """The NICs' auto-pool requests from ``ipam.spidernet.io/subnets`` (preferred) or ``subnet``; ``()`` if neither.

    ``subnet`` is one object (``interface`` defaults to ``eth0``); ``subnets`` a list of objects each naming its
    ``interface``; every entry needs at least one family, and neither an interface nor a subnet may repeat.
    ``InvalidInput`` names what is wrong.
    """
    if ANNO_SUBNETS in annotations:
        key = ANNO_SUBNETS
        try:
            items = limits.loads(annotations[key])
        except ValueError as exc:
            raise InvalidInput(reason=f"{key} is not valid JSON: {exc}") from None
        if not isinstance(items, list) or not items:
            raise InvalidInput(reason=f"{key} must be a non-empty list")
    elif ANNO_SUBNET in annotations:
        key = ANNO_SUBNET
        try:
            item = limits.loads(annotations[key])
        except ValueError as exc:
            raise InvalidInput(reason=f"{key} is not valid JSON: {exc}") from None
        if not isinstance(item, dict):
            raise InvalidInput(reason=f"{key} must be a JSON object")
        items = [{"interface": "eth0", **item}] if not item.get("interface") else [item]
    else:
        return ()
    ip_number = annotations.get(ANNO_IP_NUMBER)
    if ip_number is not None:
        _parse_ip_number(ip_number)
    reclaim = _parse_bool(annotations[ANNO_RECLAIM]) if ANNO_RECLAIM in annotations else True
    claims: list[SubnetClaim] = []
    seen_subnets: set[str] = set()
    for index, item in enumerate(items):
        where = f"{key}[{index}]" if key == ANNO_SUBNETS else key
        if not isinstance(item, dict):
            raise InvalidInput(reason=f"{where} must be a JSON object")
        nic = item.get("interface")
        if not isinstance(nic, str) or not nic:
            raise InvalidInput(reason=f"{where}.interface must be specified")
        v4 = _subnet_names(item.get("ipv4"), f"{where}.ipv4")[:1]
        v6 = _subnet_names(item.get("ipv6"), f"{where}.ipv6")[:1]
        if not v4 and not v6:
            raise InvalidInput(reason=f"{where} specifies no SpiderSubnet for interface {nic}")
        if any(c.interface == nic for c in claims):
            raise InvalidInput(reason=f"duplicate interface {nic} in {key}")
        for name in (*v4, *v6):
            if name in seen_subnets:
                raise InvalidInput(reason=f"duplicate SpiderSubnet {name} in {key}")
            seen_subnets.add(name)
        claims.append(SubnetClaim(nic, v4, v6, ip_number, reclaim))
    return tuple(claims)


def auto_pool_object(
    app: AppRef,
    nic: str,
    version: int,
    subnet_obj: Mapping[str, Any],
    ips: list[str],
    ip_number_text: str,
    reclaim: bool,
) -> dict[str, Any]:
    """The SpiderIPPool to create for one NIC and family of ``app``, holding ``ips`` taken from the subnet.

    Its spec copies the subnet's CIDR, gateway and routes; its podAffinity names the application; it is owned
    (controller reference) by the subnet, carries our finalizer and its ``ippool-ip-number`` annotation.
    """
    smeta = subnet_obj.get("metadata") or {}
    sspec = subnet_obj.get("spec") or {}
    subnet_name = str(smeta.get("name", ""))
    cidr = str(sspec.get("subnet", ""))
    spec: dict[str, Any] = {
        "ipVersion": version,
        "subnet": cidr,
        "ips": list(ips),
        "podAffinity": {"matchLabels": app_affinity_labels(app)},
    }
    if sspec.get("gateway") is not None:
        spec["gateway"] = sspec["gateway"]
    if sspec.get("routes") is not None:
        spec["routes"] = [dict(r) for r in sspec["routes"]]
    return {
        "apiVersion": SPIDER_API_VERSION,
        "kind": "SpiderIPPool",
        "metadata": {
            "name": auto_pool_name(app, nic, version),
            "labels": auto_pool_labels(app, nic, version, subnet_name, cidr, reclaim),
            "annotations": {ANNO_IP_NUMBER: ip_number_text},
            "finalizers": [FINALIZER],
            "ownerReferences": [
                {
                    "apiVersion": SPIDER_API_VERSION,
                    "kind": "SpiderSubnet",
                    "name": subnet_name,
                    "uid": str(smeta.get("uid", "")),
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": spec,
    }
