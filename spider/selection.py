"""Which pools may serve a pod's interface, in which order (reference §2.2, §2.4, §2.5).

Owns the precedence of the pool sources (SpiderSubnet annotations, pod annotations, namespace defaults, CNI
config defaults, cluster default pools; the first source present wins entirely), the expansion of glob patterns
in pool names, the filters (disabled, terminating, family, node, namespace, pod affinity: an auto-created pool's
names the pod's top-level controller) and the priority order.  Unlike Spiderpool the order is stable: pools of
equal priority keep the order the user wrote them in.  Pure.

SpiderSubnet annotations (``ipam.spidernet.io/subnet``, ``subnets``) name subnets, not pools: the agent first
finds (or, for a third-party controller, makes) the application's auto-created pool of each family
(``actors.ipam.autopools``), puts the names in ``PodContext.auto_pools``, and selection then reads them as if
the pod had named those pools (reference §2.2 row 1).  ``subnet_claim`` says what must be found, and refuses
what Spiderpool refuses: subnet annotations while the auto-pool feature is off, and orphan pods.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from spider import limits
from spider.addr import parse_ip, parse_network
from spider.autopool import (
    AFFINITY_KEYS,
    LABEL_APP_NAME,
    AppRef,
    SubnetClaim,
    app_affinity_labels,
    has_subnet_claims,
    subnet_claims,
)
from spider.errors import InvalidInput, NoAvailablePool, PoolNotFound
from spider.pool import IPPool, Route
from spider.selector import selector_from_label_selector

ANNO_IPPOOL = "ipam.spidernet.io/ippool"
ANNO_IPPOOLS = "ipam.spidernet.io/ippools"
ANNO_SUBNET = "ipam.spidernet.io/subnet"
ANNO_SUBNETS = "ipam.spidernet.io/subnets"
ANNO_ROUTES = "ipam.spidernet.io/routes"
ANNO_NS_DEFAULT_V4 = "ipam.spidernet.io/default-ipv4-ippool"
ANNO_NS_DEFAULT_V6 = "ipam.spidernet.io/default-ipv6-ippool"
ANNO_MULTUS_DEFAULT = "v1.multus-cni.io/default-network"
ANNO_MULTUS_NETWORKS = "k8s.v1.cni.cncf.io/networks"
SOURCE_SUBNET = "SpiderSubnet annotations"
"""The ``NicRequest.source`` of the auto-created pools found for ``ipam.spidernet.io/subnet(s)``."""
AUTO_POOL_DISABLED = (
    f"it's invalid to use '{ANNO_SUBNETS}' or '{ANNO_SUBNET}' annotation when Auto-Pool feature is disabled"
)
"""Spiderpool's answer to subnet annotations while ``enableAutoPoolForApplication`` is off (I00024)."""
ORPHAN_POD = "SpiderSubnet feature doesn't support no-controller pod"
"""Spiderpool's answer to subnet annotations on a pod without a controller (I00023)."""


@attrs.frozen
class PodContext:
    """Everything about the pod and its surroundings that pool selection reads."""

    namespace: str
    name: str
    uid: str
    node: str
    labels: Mapping[str, str] = attrs.field(factory=dict)
    annotations: Mapping[str, str] = attrs.field(factory=dict)
    namespace_labels: Mapping[str, str] = attrs.field(factory=dict)
    namespace_annotations: Mapping[str, str] = attrs.field(factory=dict)
    node_labels: Mapping[str, str] = attrs.field(factory=dict)
    agent_namespace: str = "kube-system"
    """Where the agent runs: the namespace of a ``multusName`` or default network given without one."""
    cluster_network: str = ""
    """``MULTUS_CLUSTER_NETWORK``: the NetworkAttachmentDefinition of eth0 when the pod names none."""
    app: AppRef | None = None
    """The pod's top-level controller (a Deployment rather than its ReplicaSet, a CronJob rather than its Job);
    ``None``: it has none, or it was not looked up (the pod itself then stands for it)."""
    auto_pools: Mapping[tuple[str, int], str] = attrs.field(factory=dict)
    """The auto-created pools found for the SpiderSubnet annotations, by ``(interface, IP version)``."""
    enable_spider_subnet: bool = True
    """``enableSpiderSubnet``: off, subnet annotations are ignored (the next pool source decides)."""
    enable_auto_pool: bool = True
    """``enableAutoPoolForApplication``: off (with subnets on), subnet annotations are refused."""

    @property
    def top_controller(self) -> AppRef:
        """The application the pod belongs to: its top-level controller, or the pod itself (``v1`` ``Pod``)."""
        return self.app or AppRef("v1", "Pod", self.namespace, self.name, self.uid)

    @property
    def uses_subnets(self) -> bool:
        """Whether the SpiderSubnet annotations decide the pod's pools (present, and the feature on)."""
        return self.enable_spider_subnet and has_subnet_claims(self.annotations)


def subnet_claim(pod: PodContext, nic: str) -> SubnetClaim:
    """What the SpiderSubnet annotations ask for ``nic`` (reference §2.2 row 1, Spiderpool's
    ``getPoolFromSubnetAnno``): the subnet of each family, the pool size and reclaim choice.

    ``subnets`` is looked up by interface; the single ``subnet`` serves whichever NIC asks (as in Spiderpool).
    Refused, with Spiderpool's texts: the auto-pool feature off (I00024), an orphan pod (I00023); a NIC that
    ``subnets`` does not list has no pool.
    """
    if not pod.enable_auto_pool:
        raise InvalidInput(reason=AUTO_POOL_DISABLED)
    claims = subnet_claims(pod.annotations)
    app = pod.top_controller
    if app.api_version == "v1" and app.kind == "Pod":
        raise InvalidInput(reason=ORPHAN_POD)
    if ANNO_SUBNETS not in pod.annotations:
        return attrs.evolve(claims[0], interface=nic)
    for claim in claims:
        if claim.interface == nic:
            return claim
    raise NoAvailablePool(nic=nic, version=4, reason=f"interface {nic} is not listed in {ANNO_SUBNETS}")


def _subnet_request(pod: PodContext, nic: str) -> NicRequest:
    """The auto-created pools found for ``nic``, as if the pod had named them (one per family asked for)."""
    claim = subnet_claim(pod, nic)
    names: dict[int, tuple[str, ...]] = {}
    for version in claim.versions:
        found = pod.auto_pools.get((nic, version))
        if found is None:
            reason = f"no auto-created IPPool of SpiderSubnet {claim.subnet(version)!r} was found for it"
            raise NoAvailablePool(nic=nic, version=version, reason=reason)
        names[version] = (found,)
    return NicRequest(nic, names.get(4, ()), names.get(6, ()), source=SOURCE_SUBNET)


@attrs.frozen
class NicRequest:
    """The pools asked for one interface, per family, before filtering; and the NIC's gateway choice."""

    nic: str
    ipv4: tuple[str, ...] = ()
    ipv6: tuple[str, ...] = ()
    clean_gateway: bool | None = None
    source: str = ""


_GO_FOLD = {**{c: c + 32 for c in range(ord("A"), ord("Z") + 1)}, 0x17F: ord("s"), 0x212A: ord("k")}
"""Go's ``encoding/json`` key folding for ASCII field names: ASCII case, and the two non-ASCII letters whose fold
set holds an ASCII one (U+017F LATIN SMALL LETTER LONG S, U+212A KELVIN SIGN)."""


def _field(item: Mapping[str, Any], name: str) -> Any:
    """``item[name]`` as Go's ``encoding/json`` fills the struct field tagged ``name``: the key of that exact
    spelling, else one equal to it ignoring case (Spiderpool's e2e A00003 writes ``cleanGateway``); ``None``
    when absent.  NB: of two spellings the exact one wins here; Go takes the last key in the text."""
    if name in item:
        return item[name]
    found = None
    for key, value in item.items():
        if key.translate(_GO_FOLD) == name:
            found = value
    return found


def _string(raw: object, where: str) -> str:
    """A Go ``string`` field: ``null`` (or absent) is empty, another JSON type fails to decode."""
    if raw is None:
        return ""
    if not isinstance(raw, str):
        raise InvalidInput(reason=f"{where} must be a string, not {raw!r}")
    return raw


def _flag(raw: object, where: str) -> bool | None:
    """A Go ``bool`` field: ``true`` or ``false``; ``None`` when absent (or ``null``); anything else (``"false"``,
    ``0``) fails to decode, as in Spiderpool, rather than be read as true or false by its truthiness."""
    if raw is None or isinstance(raw, bool):
        return raw
    raise InvalidInput(reason=f"{where} must be true or false, not {raw!r}")


def _names(raw: object, where: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise InvalidInput(reason=f"{where} must be a list of pool names")
    if len(set(raw)) != len(raw):
        raise InvalidInput(reason=f"duplicate IPPool in {where}: {raw}")
    return tuple(raw)


def _json(text: str, where: str) -> Any:
    try:
        return limits.loads(text)
    except ValueError as exc:
        raise InvalidInput(reason=f"{where} is not valid JSON: {exc}") from None


def requested_pools(
    pod: PodContext, nic: str, cni_v4: Sequence[str] = (), cni_v6: Sequence[str] = ()
) -> list[NicRequest]:
    """The NICs to allocate on this call and the pools named for each, by Spiderpool's precedence.

    Usually one entry (``nic``).  With the named ``ipam.spidernet.io/ippools`` annotation every listed NIC
    is allocated on the first ADD, as Spiderpool does, and the current NIC must be listed.  With SpiderSubnet
    annotations (feature on) the NIC's auto-created pools, which the caller found (``PodContext.auto_pools``).
    """
    annos = pod.annotations
    if pod.uses_subnets:  # NB: one NIC per call, as Spiderpool: each NIC's ADD finds its own auto pools
        return [_subnet_request(pod, nic)]
    if ANNO_IPPOOLS in annos:
        items = _json(annos[ANNO_IPPOOLS], ANNO_IPPOOLS)
        if not isinstance(items, list) or not items:
            raise InvalidInput(reason=f"{ANNO_IPPOOLS} must be a non-empty list")
        out: list[NicRequest] = []
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise InvalidInput(reason=f"{ANNO_IPPOOLS} entries must be objects")
            where = f"{ANNO_IPPOOLS}[{index}]"
            out.append(
                NicRequest(
                    nic=_string(_field(item, "interface"), f"{where}.interface"),
                    ipv4=_names(_field(item, "ipv4"), f"{where}.ipv4"),
                    ipv6=_names(_field(item, "ipv6"), f"{where}.ipv6"),
                    clean_gateway=_flag(_field(item, "cleangateway"), f"{where}.cleangateway"),
                    source=ANNO_IPPOOLS,
                )
            )
        named = [bool(r.nic) for r in out]
        if any(named) and not all(named):
            raise InvalidInput(reason="NIC should be either all specified or all unspecified")
        if not all(named):
            out = [attrs.evolve(r, nic="eth0" if i == 0 else str(i)) for i, r in enumerate(out)]
        nics = [r.nic for r in out]
        if len(set(nics)) != len(nics):
            raise InvalidInput(reason=f"duplicate interface in {ANNO_IPPOOLS}: {nics}")
        if all(named):
            if nic not in nics:
                raise InvalidInput(reason=f"interface {nic} must be specified in {ANNO_IPPOOLS}")
            return out
        # Unnamed mode: eth0 takes the first entry, another NIC the entry at its position (docs/compatibility.md).
        index = _unnamed_position(pod, nic)
        if index >= len(out):
            raise InvalidInput(reason=f"{ANNO_IPPOOLS} has {len(out)} entries, none for interface {nic}")
        return [attrs.evolve(out[index], nic=nic)]
    if ANNO_IPPOOL in annos:
        item = _json(annos[ANNO_IPPOOL], ANNO_IPPOOL)
        if not isinstance(item, dict):
            raise InvalidInput(reason=f"{ANNO_IPPOOL} must be a JSON object")
        return [
            NicRequest(
                nic,
                _names(_field(item, "ipv4"), f"{ANNO_IPPOOL}.ipv4"),
                _names(_field(item, "ipv6"), f"{ANNO_IPPOOL}.ipv6"),
                source=ANNO_IPPOOL,
            )
        ]
    ns = pod.namespace_annotations
    v4, v6 = (_names(_json(ns[key], key), key) if key in ns else () for key in (ANNO_NS_DEFAULT_V4, ANNO_NS_DEFAULT_V6))
    if v4 or v6:  # NB: "[]" or "null" names no pool: the next source decides (Spiderpool's getPoolFromNS)
        return [NicRequest(nic, v4, v6, source="namespace annotations")]
    if cni_v4 or cni_v6:
        return [
            NicRequest(
                nic,
                _names(list(cni_v4), "default_ipv4_ippool"),
                _names(list(cni_v6), "default_ipv6_ippool"),
                source="CNI configuration",
            )
        ]
    return [NicRequest(nic, source="cluster default pools")]


_NET_N = re.compile(r"net([1-9][0-9]*)")  # NB: [0-9], not \d: int() would take other scripts' digits too


def _unnamed_position(pod: PodContext, nic: str) -> int:
    """Which entry of an unnamed ``ippools`` annotation serves ``nic``: eth0 the first; another NIC the one at
    its position in ``k8s.v1.cni.cncf.io/networks`` (from 1, as Multus numbers them), else at the N of a
    ``netN`` name (Multus's name for an unnamed network).  Any other name gives no position: wrong input."""
    if nic == "eth0":
        return 0
    for position, (_, _, iface) in enumerate(_multus_entries(pod), start=1):
        if (iface or f"net{position}") == nic:
            return position
    if (found := _NET_N.fullmatch(nic)) is None:
        raise InvalidInput(
            reason=f"unnamed {ANNO_IPPOOLS} entries serve eth0 and then the NICs of {ANNO_MULTUS_NETWORKS} (or "
            f"net1, net2...) by position; interface {nic} is none of them: name each entry's 'interface'"
        )
    return int(found.group(1))


def _go_glob(pattern: str) -> re.Pattern[str]:
    """Go's ``filepath.Match`` pattern (Spiderpool's ``ParseWildcardPoolNameList``) as a regular expression:
    ``*`` and ``?`` do not match ``/``, ``[^..]`` negates a class of characters and ranges, ``\\`` escapes.
    ``ValueError`` for what Go calls ``ErrBadPattern``."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        i += 1
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\":
            if i == len(pattern):
                raise ValueError("a trailing \\ escapes nothing")
            out.append(re.escape(pattern[i]))
            i += 1
        elif c == "[":
            negated = pattern.startswith("^", i)
            i += negated
            ranges: list[tuple[str, str]] = []
            while not (pattern.startswith("]", i) and ranges):
                lo, i = _class_char(pattern, i)
                hi = lo
                if pattern[i] == "-":
                    hi, i = _class_char(pattern, i + 1)
                ranges.append((lo, hi))
            i += 1
            members = "".join(f"\\U{ord(lo):08x}-\\U{ord(hi):08x}" for lo, hi in ranges if lo <= hi)
            if members:
                out.append(f"[{'^' if negated else ''}{members}]")
            else:  # NB: only reversed ranges ([z-a]): Go matches no character, or (negated) any
                out.append("(?s:.)" if negated else "(?!)")
        else:
            out.append(re.escape(c))
    return re.compile("".join(out))


def _class_char(pattern: str, i: int) -> tuple[str, int]:
    """Go's ``getEsc``: the (possibly escaped) character of a class at ``i``, and where the class goes on."""
    if i >= len(pattern) or pattern[i] in "-]":
        raise ValueError("a character class needs a character or range here")
    if pattern[i] == "\\":
        i += 1
        if i >= len(pattern):
            raise ValueError("a trailing \\ escapes nothing")
    if i + 1 >= len(pattern):
        raise ValueError("a character class is not closed")
    return pattern[i], i + 1


def expand(names: Sequence[str], version: int, pools: Mapping[str, IPPool]) -> list[str]:
    """Resolve glob patterns (``*``, ``?``, ``[..]``, Go's syntax) against pools of the family; keep the written
    order.  A malformed pattern is wrong input (Go's ``ErrBadPattern``), not a pattern matching nothing."""
    out: list[str] = []
    for name in names:
        if any(c in name for c in "*?["):
            try:
                glob = _go_glob(name)
            except ValueError as exc:
                raise InvalidInput(reason=f"pool name pattern {name!r}: syntax error in pattern: {exc}") from None
            matched = sorted(p.name for p in pools.values() if p.version == version and glob.fullmatch(p.name))
            out.extend(m for m in matched if m not in out)
        elif name not in out:
            out.append(name)
    return out


def _qualified(name: str, namespace: str) -> str:
    return name if "/" in name else f"{namespace}/{name}"


def multus_network(pod: PodContext, nic: str) -> str | None:
    """The ``namespace/name`` of the NetworkAttachmentDefinition behind one of the pod's NICs, if known.

    eth0 (or ``"0"``) is the default network: ``v1.multus-cni.io/default-network``, else the cluster network
    of the agent's configuration.  Other NICs are found in ``k8s.v1.cni.cncf.io/networks`` (JSON or the
    ``ns/name@ifname`` comma form) by interface name, unnamed entries being ``net1``, ``net2``... by position.
    """
    if nic in ("eth0", "0"):
        default = pod.annotations.get(ANNO_MULTUS_DEFAULT) or pod.cluster_network
        return _qualified(default, pod.agent_namespace) if default else None
    for position, (ns, name, iface) in enumerate(_multus_entries(pod), start=1):
        if (iface or f"net{position}") == nic:
            return f"{ns}/{name}"
    return None


def _multus_entries(pod: PodContext) -> list[tuple[str, str, str]]:
    """``k8s.v1.cni.cncf.io/networks`` (JSON or the ``ns/name@ifname`` comma form) as ``(namespace, name,
    interface)`` in order; ``interface`` empty when not given."""
    raw = pod.annotations.get(ANNO_MULTUS_NETWORKS, "").strip()
    if not raw:
        return []
    entries: list[tuple[str, str, str]] = []
    if raw.startswith("["):
        items = _json(raw, ANNO_MULTUS_NETWORKS)
        if not isinstance(items, list):
            raise InvalidInput(reason=f"{ANNO_MULTUS_NETWORKS} must be a list")
        for item in items:
            name = _field(item, "name") if isinstance(item, dict) else None
            if not isinstance(name, str):
                raise InvalidInput(reason=f"{ANNO_MULTUS_NETWORKS} entries need a 'name'")
            ns = _string(_field(item, "namespace"), f"{ANNO_MULTUS_NETWORKS} 'namespace'") or pod.namespace
            entries.append((ns, name, _string(_field(item, "interface"), f"{ANNO_MULTUS_NETWORKS} 'interface'")))
    else:
        for part in (p.strip() for p in raw.split(",") if p.strip()):
            ref, _, iface = part.partition("@")
            ns, _, name = ref.rpartition("/")
            entries.append((ns or pod.namespace, name, iface))
    return entries


def _reject(pool: IPPool, pod: PodContext, version: int, nic: str = "eth0") -> str | None:
    """Why ``pool`` cannot serve this pod's NIC, or ``None``."""
    if pool.terminating:
        return "terminating"
    if pool.disable:
        return "disabled"
    if pool.version != version:
        return f"is IPv{pool.version}"
    if pool.node_name:
        if pod.node not in pool.node_name:
            return f"node {pod.node!r} not in nodeName"
    elif pool.node_affinity is not None and not selector_from_label_selector(pool.node_affinity).matches(
        pod.node_labels
    ):
        return f"nodeAffinity does not match node {pod.node!r}"
    if pool.namespace_name:
        if pod.namespace not in pool.namespace_name:
            return f"namespace {pod.namespace!r} not in namespaceName"
    elif pool.namespace_affinity is not None and not selector_from_label_selector(pool.namespace_affinity).matches(
        pod.namespace_labels
    ):
        return f"namespaceAffinity does not match namespace {pod.namespace!r}"
    if pool.pod_affinity is not None:
        if LABEL_APP_NAME in pool.labels:  # an auto-created pool serves only its application (I00020)
            if not _serves_app(pool.pod_affinity, pod.top_controller):
                return f"auto-created pool of another application than {_app_text(pod.top_controller)}"
        elif not selector_from_label_selector(pool.pod_affinity).matches(pod.labels):
            return "podAffinity does not match the pod's labels"
    if pool.multus_name:  # NB: only pools that set multusName look at Multus (Spiderpool before Aug 2025)
        network = multus_network(pod, nic)
        wanted = {_qualified(m, pod.agent_namespace) for m in pool.multus_name}
        if network not in wanted:
            return f"multusName {sorted(wanted)} does not match the NIC's network {network or 'none'}"
    return None


def _serves_app(pod_affinity: Mapping[str, Any], app: AppRef) -> bool:
    """Spiderpool's ``IsMatchAutoPoolAffinity``: the pool's ``app-*`` matchLabels name the application."""
    wanted = pod_affinity.get("matchLabels") or {}
    mine = app_affinity_labels(app)
    return all(wanted.get(key) == mine[key] for key in AFFINITY_KEYS)


def _app_text(app: AppRef) -> str:
    return f"{app.kind} {app.namespace}/{app.name}"


def _priority(pool: IPPool) -> tuple[bool, ...]:
    # Spiderpool's ByPoolPriority: pods, nodes, namespaces, multus affinities first (reference §2.5).
    return (
        pool.pod_affinity is None,
        not pool.node_name,
        pool.node_affinity is None,
        not pool.namespace_name,
        pool.namespace_affinity is None,
        not pool.multus_name,
    )


def candidates(request: NicRequest, version: int, pod: PodContext, pools: Mapping[str, IPPool]) -> list[IPPool]:
    """The pools to try, in order, for one family of one NIC; empty when that family is not requested.

    Raises ``PoolNotFound`` for a named pool that does not exist and ``NoAvailablePool`` naming every pool
    and why it was filtered out when none is left.
    """
    names = request.ipv4 if version == 4 else request.ipv6
    if request.source == "cluster default pools":
        names = tuple(
            p.name for p in sorted(pools.values(), key=lambda p: p.name) if p.default and p.version == version
        )
        if not names:
            return []
    resolved = expand(names, version, pools)
    if not resolved:
        return []
    kept: list[IPPool] = []
    reasons: list[str] = []
    for name in resolved:
        pool = pools.get(name)
        if pool is None:
            raise PoolNotFound(pool=name)
        why = _reject(pool, pod, version, request.nic)
        if why is None:
            kept.append(pool)
        else:
            reasons.append(f"{name}: {why}")
    if not kept:
        raise NoAvailablePool(
            nic=request.nic,
            version=version,
            reason=f"all IPv{version} IPPools {resolved} filtered out: " + "; ".join(reasons),
        )
    return sorted(kept, key=_priority)  # NB: sorted() is stable, so ties keep the user's order


def custom_routes(pod: PodContext) -> tuple[Route, ...]:
    """The ``ipam.spidernet.io/routes`` annotation, checked."""
    raw = pod.annotations.get(ANNO_ROUTES)
    if raw is None:
        return ()
    items = _json(raw, ANNO_ROUTES)
    if not isinstance(items, list):
        raise InvalidInput(reason=f"{ANNO_ROUTES} must be a list of routes")
    out = []
    for item in items:
        dst, gw = (_field(item, "dst"), _field(item, "gw")) if isinstance(item, dict) else (None, None)
        if not isinstance(dst, str) or not isinstance(gw, str):
            raise InvalidInput(reason=f"{ANNO_ROUTES} entry {item!r} needs string 'dst' and 'gw'")
        # Spiderpool (IsRouteWithoutIPVersion): dst is a CIDR (host bits allowed), gw an IP, one family.
        try:
            parse_ip(gw, parse_network(dst, strict=False).version)
        except ValueError as exc:
            raise InvalidInput(reason=f"{ANNO_ROUTES} entry {item!r}: {exc}") from None
        out.append(Route(dst, gw))
    return tuple(out)
