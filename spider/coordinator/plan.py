"""The plans of ADD and DEL, and CHECK's findings: from the observed namespaces, the ordered ``Op`` list.

Owns Spiderpool's ``command_add.go`` / ``command_del.go`` (reference §5.3, §5.4): ``plan_setup`` (veth pair,
neighbours, routes and rules both ways, hijack routes, reply marking, tunePodRoutes' policy tables),
``plan_teardown``, ``check_setup``, and the names and MACs they give (``host_veth_name``, ``host_veth_owner``,
``mac_from_prefix``, ``random_mac``).  The NodeActor executes a plan as one netlink transaction.

Departures from Spiderpool, on purpose: the host rule ``priority 1000 lookup <hostRuleTable>`` is removed by
the DEL that leaves the table empty (Spiderpool never removes it), so DEL leaves the host as it found it; and
the host veth carries its owner as its alias (``host_veth_owner``), so a DEL whose container ID shares the
veth's name with another pod's leaves that pod's veth (Spiderpool deletes by name).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Sequence
from typing import Final

import attrs

from spider.coordinator.config import DEFAULT_FIRST_NIC, CoordinatorConf
from spider.coordinator.mode import POD_MARK_TABLE, POD_VETH, ModeDecision
from spider.coordinator.observed import MAIN_TABLE, SCOPE_LINK, SCOPE_UNIVERSE, Link, NsView, RuleEntry, family_of
from spider.coordinator.ops import (
    MARK,
    AddAddress,
    AddNeighbour,
    AddRoute,
    AddRule,
    AddVeth,
    CopyRoute,
    DelLink,
    DelNeighbours,
    DelRoutes,
    DelRule,
    DropRuleIfUnused,
    MarkReplies,
    MoveRoute,
    Op,
    SetLink,
    Sysctl,
)
from spider.errors import InvalidNetConf

MAX_ALIAS: Final = 255
"""The longest interface alias the kernel keeps (IFALIASZ less its NUL)."""

RULE_PRIORITY: Final = 1000
"""The priority of the host's ``lookup <hostRuleTable>`` rule and the pod's fwmark rule."""

# Host interfaces whose addresses the pod must not get routes to (Spiderpool's DefaultNodeInterfacesToExclude).
HOST_EXCLUDED: Final = re.compile(
    r"^(docker.*|cbr.*|dummy.*|virbr.*|lxcbr.*|veth.*|lo|cali.*|flannel.*|kube-ipvs.*|cni.*|vx-submariner|cilium.*)$"
)


# --- MACs and names -----------------------------------------------------------------------------------------


def mac_from_prefix(prefix: str, ip: str) -> str:
    """``podMACPrefix`` (two bytes) followed by the IPv4 address, or the last four bytes of an IPv6 address."""
    head = bytes(int(p, 16) for p in prefix.replace("-", ":").split(":"))
    tail = ipaddress.ip_address(ip).packed[-4:]
    return ":".join(f"{b:02x}" for b in head + tail)


def host_veth_name(container_id: str) -> str:
    """``veth`` plus the first 11 characters of the container ID (Spiderpool's getHostVethName)."""
    return f"veth{container_id[:11]}"


def host_veth_owner(container_id: str) -> str:
    """The alias ADD gives the host veth, naming its container: two container IDs that share their first 11
    characters share the name, and DEL deletes only a veth that names its own container (or none: a veth made
    before we marked them, or by Spiderpool)."""
    owner = f"spiderpool {container_id}"
    if len(owner) <= MAX_ALIAS:
        return owner
    return f"spiderpool sha256:{hashlib.sha256(container_id.encode()).hexdigest()}"


def random_mac(raw: bytes) -> str:
    """A locally administered unicast MAC from six random bytes (Cilium's GenerateRandMAC, as Spiderpool)."""
    first = (raw[0] & 0xFE) | 0x02
    return ":".join(f"{b:02x}" for b in bytes([first]) + raw[1:6])


# --- ADD and DEL --------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class SetupSpec:
    """Everything ADD decided before it needs the namespaces' current state."""

    conf: CoordinatorConf
    decision: ModeDecision
    ifname: str
    container_id: str
    families: tuple[int, ...]
    pod_veth_mac: str
    """MAC for a new ``veth0`` (chosen up front so the plan is complete; kept when ``veth0`` exists)."""
    host_veth_mac: str


@attrs.frozen
class Plan:
    """What ADD or DEL does, in order, and what it found (for the answer and the logs)."""

    ops: tuple[Op, ...]
    host_veth: str
    host_ips: tuple[str, ...] = ()
    pod_ips: tuple[str, ...] = ()
    mac: str | None = None
    """The MAC ``podMACPrefix`` gives the interface, if any."""
    foreign_owner: str = ""
    """DEL: the owner named by a host veth under our name that is not ours, which DEL therefore left."""


def host_addresses_for_pod(host: NsView, pod_ips: Sequence[str], families: Sequence[int]) -> tuple[str, ...]:
    """The host addresses the pod gets routes to: the source the host uses towards each pod address, then every
    global address on a host interface Spiderpool does not exclude (GetAllHostIPRouteForPod)."""
    found: list[str] = []
    for ip in pod_ips:
        src = host.route_sources.get(ip)
        if src and family_of(src) in families and src not in found:
            found.append(src)
    for addr in host.addresses:
        if addr.scope != SCOPE_UNIVERSE or HOST_EXCLUDED.match(addr.link) or addr.family not in families:
            continue
        if addr.ip not in found:
            found.append(addr.ip)
    return tuple(found)


def _max_prefix(ip: str) -> str:
    return f"{ip}/{32 if family_of(ip) == 4 else 128}"


def _default_route_nic(pod: NsView, ifname: str, families: Sequence[int]) -> str | None:
    """The NIC other than ``ifname`` that holds the pod's default route now (GetDefaultRouteInterface)."""
    for family in families:
        for route in pod.routes:
            if route.table == MAIN_TABLE and route.family == family and route.dst is None:
                for oif in (route.oif, *route.multipath_oifs):
                    if oif and oif != ifname and oif != "lo":
                        return oif
    return None


def plan_setup(spec: SetupSpec, pod: NsView, host: NsView) -> Plan:
    """The changes of one ADD (Spiderpool's ``command_add.go``, §5.3), from the two namespaces' state.

    Raises ``InvalidNetConf`` when the configuration cannot work with what is there (no overlay veth, a
    ``podDefaultRouteNIC`` that does not exist).
    """
    conf, decision, ifname = spec.conf, spec.decision, spec.ifname
    families = spec.families
    ops: list[Op] = []
    current = pod.addresses_of(ifname, families)
    current_ips = tuple(a.ip for a in current)
    pod_ips = tuple(
        a.ip for a in pod.addresses if a.scope == SCOPE_UNIVERSE and a.link != "lo" and a.family in families
    )
    host_ips = host_addresses_for_pod(host, pod_ips or current_ips, families)
    table = decision.table
    first = decision.first_invoke
    pod_veth = decision.pod_veth

    # The path to the host: our veth pair (underlay) or the overlay CNI's (overlay).
    if decision.mode == "underlay":
        host_veth = host_veth_name(spec.container_id)
        existing = pod.link(POD_VETH)
        if first and existing is None:
            owner = host_veth_owner(spec.container_id)
            ops.append(AddVeth(POD_VETH, host_veth, conf.veth_mtu, spec.pod_veth_mac, spec.host_veth_mac, owner))
            if conf.veth_link_address and families != (6,):
                ops.append(AddAddress("pod", POD_VETH, f"{conf.veth_link_address}/32"))
            if conf.host_rp_filter is not None and conf.host_rp_filter >= 0:
                # Spiderpool parses hostRPFilter and ignores it; we apply it to our own host veth only, never to
                # the host's "all" switch, which other traffic of the node depends on.
                ops.append(Sysctl("host", f"net/ipv4/conf/{host_veth}/rp_filter", conf.host_rp_filter))
            pod_veth_mac, host_veth_mac = spec.pod_veth_mac, spec.host_veth_mac
        else:
            if existing is None:  # resolve_mode only lets a later NIC through when veth0 exists
                raise InvalidNetConf(reason=f"interface {POD_VETH} is missing in the pod")
            pod_veth_mac = existing.mac
            peer = host.link(host_veth) if first else _peer_of(existing, host)
            if peer is None:
                raise InvalidNetConf(reason=f"the host side of the pod's {POD_VETH} is missing")
            host_veth, host_veth_mac = peer.name, peer.mac
    else:
        eth0 = pod.link(DEFAULT_FIRST_NIC)
        peer = _peer_of(eth0, host) if eth0 is not None else None
        if eth0 is None or peer is None:
            raise InvalidNetConf(
                reason=f"overlay mode needs the pod's {DEFAULT_FIRST_NIC} to be a veth with its peer on the host"
            )
        host_veth, host_veth_mac, pod_veth_mac = peer.name, peer.mac, eth0.mac

    mac = None
    if conf.pod_mac_prefix and current:
        first_ip = next((a.ip for a in current if a.family == 4), current[0].ip)
        mac = mac_from_prefix(conf.pod_mac_prefix, first_ip)
        ops.append(SetLink("pod", ifname, mac=mac))
    if conf.tx_queue_len > 0:
        ops.append(SetLink("pod", ifname, txqlen=conf.tx_queue_len))
    if 6 in families:
        ops.append(Sysctl("pod", "net/ipv6/conf/all/disable_ipv6", 0))
    if conf.pod_rp_filter != -1:
        ops.append(Sysctl("pod", "net/ipv4/conf/all/rp_filter", conf.pod_rp_filter))

    # Neighbours: the host knows the pod's addresses behind the host veth, the pod knows the host's behind
    # its veth, permanently, so neither side ever needs ARP across the pair.
    for ip in current_ips:
        ops.append(DelNeighbours("host", ip))
        ops.append(AddNeighbour("host", host_veth, ip, pod_veth_mac))
    if first:
        for ip in host_ips:
            ops.append(AddNeighbour("pod", pod_veth, ip, host_veth_mac))

    # The pod's routes to its host, with the first NIC's IPv4 address as source (Spiderpool leaves IPv6's).
    src4 = next((a.ip for a in pod.addresses_of(DEFAULT_FIRST_NIC, (4,))), None)
    main_routes: list[AddRoute] = []

    def src_for(ip: str) -> str | None:
        return src4 if family_of(ip) == 4 else None

    for ip in host_ips:
        ops.append(AddRoute("pod", _max_prefix(ip), pod_veth, table, src=src_for(ip), scope=SCOPE_LINK))
        if first:
            main_routes.append(
                AddRoute("pod", _max_prefix(ip), pod_veth, MAIN_TABLE, src=src_for(ip), scope=SCOPE_LINK)
            )

    # The host's route to each pod address, through the host veth, in hostRuleTable (looked up at 1000).
    for family in families:
        ops.append(AddRule("host", RuleEntry(family, conf.host_rule_table, RULE_PRIORITY)))
    for ip in current_ips:
        ops.append(DelRoutes("host", _max_prefix(ip), conf.host_rule_table))
        ops.append(AddRoute("host", _max_prefix(ip), host_veth, conf.host_rule_table, scope=SCOPE_LINK))

    # Cluster, service and extra CIDRs through the host: via its first address of the family.
    gateways = {f: next((ip for ip in host_ips if family_of(ip) == f), None) for f in (4, 6)}
    for cidr in conf.hijack_routes:
        gw = gateways.get(family_of(cidr))
        if gw is None or family_of(cidr) not in families:
            continue
        route = AddRoute("pod", cidr, pod_veth, MAIN_TABLE if first else table, gateway=gw, src=src_for(cidr))
        (main_routes if first else ops).append(route)

    # Replies to connections that came in through veth0 leave through it again (fwmark 1 -> table 100).
    late: list[Op] = []
    if decision.mode == "underlay" and first:
        late.append(MarkReplies(POD_VETH))
        for family in families:
            gw = gateways.get(family)
            late.append(AddRule("pod", RuleEntry(family, POD_MARK_TABLE, RULE_PRIORITY, fwmark=MARK)))
            if gw is not None:
                dst = "0.0.0.0/0" if family == 4 else "::/0"
                late.append(AddRoute("pod", dst, POD_VETH, POD_MARK_TABLE, gateway=gw, src=src_for(gw)))

    # Multi-NIC: a policy table per extra NIC so replies leave through the NIC their request came in on.
    moved_oif: str | None = None
    if conf.tune_pod_routes and (not first or decision.mode == "overlay"):
        moved_oif, tune_ops = _tune_routes(conf, decision, ifname, pod, families, current_ips)
        late.extend(tune_ops)
    for route in main_routes:
        # Spiderpool adds these to main and then moves the NIC's routes: the same thing, in one step.
        ops.append(attrs.evolve(route, table=table) if route.dev == moved_oif else route)
    ops.extend(late)

    for policy in conf.policy_routes:
        if family_of(policy.dst) in families:
            target = MAIN_TABLE if decision.mode == "underlay" and first else table
            ops.append(AddRoute("pod", policy.dst, ifname, target, gateway=policy.gw))
    return Plan(tuple(ops), host_veth, host_ips, current_ips, mac)


def _peer_of(link: Link, host: NsView) -> Link | None:
    if link.peer_index is None:
        return None
    return host.link_by_index(link.peer_index)


def _tune_routes(
    conf: CoordinatorConf,
    decision: ModeDecision,
    ifname: str,
    pod: NsView,
    families: Sequence[int],
    current_ips: Sequence[str],
) -> tuple[str | None, list[Op]]:
    """Spiderpool's tunePodRoutes: which NIC keeps the default route, rules ``from`` each NIC's addresses,
    and the routes moved out of main.  Returns the NIC whose main routes move, and the operations."""
    table = decision.table
    current_default = _default_route_nic(pod, ifname, families)
    if current_default is None:
        return None, []  # nobody holds a default route: every route stays in main
    configured = conf.pod_default_route_nic
    if not configured or configured == current_default:
        configured, move = current_default, ifname
    else:
        if pod.link(configured) is None:
            raise InvalidNetConf(reason=f"podDefaultRouteNIC: {configured} don't exist in pod")
        move = current_default
    ops: list[Op] = []
    default_ips = [a.ip for a in pod.addresses_of(current_default, families)]
    if configured == ifname:
        for ip in default_ips:
            ops.append(AddRule("pod", RuleEntry(family_of(ip), table, src=_max_prefix(ip))))
    else:
        for ip in current_ips:
            ops.append(AddRule("pod", RuleEntry(family_of(ip), table, src=_max_prefix(ip))))
        if decision.mode == "overlay" and decision.first_invoke:
            # Replies to what came in on eth0 (calico, cilium) leave through eth0 (Spiderpool issue #3683).
            for ip in default_ips:
                ops.append(AddRule("pod", RuleEntry(family_of(ip), POD_MARK_TABLE, src=_max_prefix(ip))))
            for route in pod.routes:
                if route.table == MAIN_TABLE and route.dst is None and route.oif == DEFAULT_FIRST_NIC:
                    ops.append(CopyRoute("pod", route, POD_MARK_TABLE))
    for route in pod.routes:
        if route.table != MAIN_TABLE or route.family not in families or route.dst == "fe80::/64":
            continue
        if route.oif == move or move in route.multipath_oifs:
            ops.append(MoveRoute("pod", route, table))
    return move, ops


@attrs.frozen(kw_only=True)
class TeardownSpec:
    """Everything DEL knows: the configuration, the container, and the pod's addresses from any source."""

    conf: CoordinatorConf
    container_id: str
    pod_ips: tuple[str, ...]
    netns_exists: bool


def plan_teardown(spec: TeardownSpec, host: NsView, pod_peers: Sequence[int] = ()) -> Plan:
    """The changes of one DEL (§5.4): remove on the host everything ADD made there, also when the pod's
    namespace is gone.  The host rule goes too when it was the last user of ``hostRuleTable``.

    Only what goes through this pod's own devices goes: our host veth (its routes and neighbours go with it)
    and, overlay mode, the host side of the pod's other veths (``pod_peers``, the overlay CNI's: host indexes,
    observed while its namespace remains).  A late or repeated DEL (CNI allows one) leaves what goes through
    any other device: the pod that has the address now routes through its own.
    """
    table = spec.conf.host_rule_table
    host_veth = host_veth_name(spec.container_id)
    ips = list(dict.fromkeys(spec.pod_ips))
    found = host.link(host_veth)
    ops: list[Op] = []
    foreign = found.alias if found is not None and found.alias not in ("", host_veth_owner(spec.container_id)) else ""
    if not foreign:  # NB: else another pod's veth has our name (their container IDs share 11 characters)
        ops.append(DelLink("host", host_veth))
    if found is not None and not foreign:  # every route still through our veth is to one of this pod's addresses
        for route in host.routes:
            if (
                route.oif == host_veth
                and route.table == table
                and route.dst
                and route.dst.rpartition("/")[0] not in ips
            ):
                ips.append(route.dst.rpartition("/")[0])
    peers = [
        link.name
        for index in pod_peers
        if (link := host.link_by_index(index)) and link.kind == "veth" and link.name != host_veth
    ]
    for ip in ips:
        for device in dict.fromkeys(peers):
            ops.append(DelRoutes("host", _max_prefix(ip), table, dev=device))
            ops.append(DelNeighbours("host", ip, dev=device))
        ops.append(DelRule("host", RuleEntry(family_of(ip), table, dst=_max_prefix(ip))))  # Spiderpool's legacy rule
    for family in (4, 6):
        ops.append(DropRuleIfUnused("host", RuleEntry(family, table, RULE_PRIORITY)))
    return Plan(tuple(ops), host_veth, (), tuple(ips), foreign_owner=foreign)


# --- CHECK --------------------------------------------------------------------------------------------------


def check_setup(spec: SetupSpec, pod: NsView, host: NsView) -> list[str]:
    """What is missing compared with a finished ADD (empty when all is in place): CNI CHECK's findings."""
    conf, decision, ifname = spec.conf, spec.decision, spec.ifname
    problems: list[str] = []
    if pod.link(ifname) is None:
        return [f"interface {ifname!r} is missing in the pod"]
    if decision.mode == "underlay":
        veth = pod.link(POD_VETH)
        if veth is None:
            return [f"interface {POD_VETH!r} is missing in the pod"]
        peer = _peer_of(veth, host) or host.link(host_veth_name(spec.container_id))
        if peer is None:
            return [f"the host side of {POD_VETH!r} is missing"]
        host_veth = peer.name
    else:
        eth0 = pod.link(DEFAULT_FIRST_NIC)
        peer = _peer_of(eth0, host) if eth0 else None
        if peer is None:
            return [f"the host side of the pod's {DEFAULT_FIRST_NIC!r} is missing"]
        host_veth = peer.name
    for family in spec.families:
        want = RuleEntry(family, conf.host_rule_table, RULE_PRIORITY)
        if not any(want.same(r) for r in host.rules):
            problems.append(
                f"host rule 'priority {RULE_PRIORITY} lookup {conf.host_rule_table}' (IPv{family}) is missing"
            )
    for addr in pod.addresses_of(ifname, spec.families):
        dst = _max_prefix(addr.ip)
        if not any(r.table == conf.host_rule_table and r.dst == dst and r.oif == host_veth for r in host.routes):
            problems.append(f"host route {dst} dev {host_veth} table {conf.host_rule_table} is missing")
        if not any(n.ip == addr.ip and n.link == host_veth and n.permanent for n in host.neighbours):
            problems.append(f"host neighbour {addr.ip} on {host_veth} is missing")
    if conf.pod_mac_prefix:
        current = pod.addresses_of(ifname, spec.families)
        link = pod.link(ifname)
        if current and link is not None:
            first_ip = next((a.ip for a in current if a.family == 4), current[0].ip)
            want_mac = mac_from_prefix(conf.pod_mac_prefix, first_ip)
            if link.mac.lower() != want_mac:
                problems.append(f"interface {ifname!r} has MAC {link.mac}, podMACPrefix gives {want_mac}")
    return problems
