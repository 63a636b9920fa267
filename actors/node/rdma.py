"""The node's RDMA devices and their counters: the samples of Spiderpool's RDMA exporter (reference §8.2).

Owns finding the RDMA devices and reading their counters, and turning both into plain ``MetricSample`` values
(``actors.servers.metrics`` serves them through ``AgentMetrics.add_source``; this module does not import a
metrics library):

- devices from sysfs: ``/sys/class/infiniband/<dev>/`` gives ``node_guid``, ``sys_image_guid``, the netdevs
  (``ports/<n>/gid_attrs/ndevs/*`` for RoCE, ``device/net/*`` for every kind, IPoIB included), the traffic
  class (``tc/1/traffic_class``, "Global tclass=<n>") and the PF of a VF (``device/physfn``);
- counters from ``rdma statistic -j`` (iproute2: ``[{"ifindex":0,"ifname":"mlx5_0","port":1,<counter>:<n>,…}]``,
  every number but ``ifindex`` and ``port`` is a counter, camelCase names become snake_case), from
  ``ethtool -S <netdev>`` (``     rx_vport_rdma_unicast_packets: 12``; the ``*vport*`` lines as they are, and
  ``{rx,tx}_prio<N>_{pause,discards}`` as ``{rx,tx}_{pause,discards}`` with a ``priority`` label) and the link
  speed from ``/sys/class/net/<netdev>/speed`` (``vport_speed_mbps``);
- with the RDMA subsystem in ``exclusive`` netns mode (``rdma system show -j``), every namespace under
  ``/var/run/netns`` too, through ``ip netns exec <ns>`` (``rdma dev show -j`` and ``rdma link show -j`` for the
  devices the namespace owns, whose sysfs the host does not see), ``NETNS_PARALLELISM`` namespaces at a time;
  the pod found by the namespace's source address of its default route (``ip -j route get 1.0.0.0``, else
  ``2001:4860:4860::8888``, as Spiderpool), which in the usual AI setup is the overlay ``eth0``'s, not the RDMA
  NIC's: ``pods_by_address`` looks it up among this node's Pods' ``status.podIPs`` (listed at most once per
  collection, as Spiderpool's pod cache holds every pod's) and this node's SpiderEndpoints' addresses.

Every metric is ``rdma_<key>``, a counter but ``rdma_vport_speed_mbps`` and ``rdma_device_tos`` (gauges, as
Spiderpool's docs list them); labels ``node_name``, ``ifname``, ``port`` (the device port the ``rdma statistic``
entry is of, as Spiderpool's ``getIdentifyAttributes``: a dual-port device gives one series per port, and the
device's ethtool counters and speed are repeated under each port as Spiderpool merges them into each port's),
``net_dev_name``, ``node_guid``, ``sys_image_guid``, ``is_root`` ("true"/"false"), ``rdma_parent_name`` (the
netdev of the root device a VF belongs to), and in a pod's namespace ``pod_namespace``, ``pod_name``,
``owner_api_version``, ``owner_kind``, ``owner_namespace``, ``owner_name``.  GUIDs are written as Spiderpool's
netlink library formats them (the 64-bit GUID's bytes lowest first, ``a2:e5:c3:00:03:4b:6b:50`` for sysfs
``506b:4b03:00c3:e5a2``), so existing dashboards and their joins keep working.

Commands run through ``trio.run_process`` with a timeout; a missing tool, a failing command or no device means
no samples and one log line (again only once it changes), never a crash.  Only the parsing and the sysfs walk
are tested here, against recordings (``tests/node/data/rdma/``); see docs/operations.md for what needs RDMA
hardware.  Deliberate differences from Spiderpool: ``ifindex`` is not exported as a counter; the ethtool
counters are read once per device and collection, not once per port.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from actors.stores.port import NotFound, Obj, Store
from spider.endpoint import readable
from spider.errors import DecodeFailure, SpiderError
from spider.workload import controller_of, next_hop

log = logging.getLogger(__name__)

PREFIX = "rdma_"
GAUGES = frozenset({"vport_speed_mbps", "device_tos"})
NOT_COUNTERS = frozenset({"ifname", "port", "ifindex"})
PRIORITY_KEY = re.compile(r"^(rx|tx)_prio(\d)_(pause|discards)$")
UNKNOWN_SPEEDS = frozenset({-1, 0, 4294967295})
TCLASS_PREFIX = "Global tclass="
DEFAULT_ROUTE_PROBES = (("-4", "1.0.0.0"), ("-6", "2001:4860:4860::8888"))
COMMAND_TIMEOUT = 5.0
INTERVAL = 15.0
"""Seconds between collections; a scrape serves the last one."""
NETNS_PARALLELISM = 4
"""Pod namespaces read at once in ``exclusive`` mode (each runs about five commands, one after another)."""
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
OWNER_API_VERSIONS = {
    "Deployment": "apps/v1",
    "ReplicaSet": "apps/v1",
    "StatefulSet": "apps/v1",
    "DaemonSet": "apps/v1",
    "Job": "batch/v1",
    "CronJob": "batch/v1",
    "Pod": "v1",
}

DESCRIPTIONS = {
    "rx_write_requests": "The number of received WRITE requests for the associated QPs.",
    "rx_read_requests": "The number of received read requests",
    "rx_atomic_requests": "The number of received atomic requests",
    "rx_dct_connect": "The number of received DCT connect requests",
    "out_of_buffer": "The number of out of buffer errors",
    "out_of_sequence": "The number of out-of-order arrivals",
    "duplicate_request": "The number of duplicate requests",
    "rnr_nak_retry_err": "The number of received RNR NAK packets did not exceed the QP retry limit",
    "packet_seq_err": "The number of packet sequence errors",
    "implied_nak_seq_err": "The number of implied NAK sequence errors",
    "local_ack_timeout_err": "The number of times QP's ack timer expired for RC, XRC, DCT QPs at the sender side",
    "resp_local_length_error": "The number of times responder detected local length errors",
    "resp_cqe_error": "The number of response CQE errors",
    "req_cqe_error": "The number of times requester detected CQEs completed with errors",
    "req_remote_invalid_request": "The number of times requester detected remote invalid request errors",
    "req_remote_access_errors": "The number of request remote access errors",
    "resp_remote_access_errors": "The number of response remote access errors",
    "resp_cqe_flush_error": "The number of response CQE flush errors",
    "req_cqe_flush_error": "The number of request CQE flush errors",
    "roce_adp_retrans": "The number of RoCE adaptive retransmissions",
    "roce_adp_retrans_to": "The number of RoCE adaptive retransmission timeouts",
    "roce_slow_restart": "The number of RoCE slow restart",
    "roce_slow_restart_cnps": "The number of times RoCE slow restart generated CNP packets",
    "roce_slow_restart_trans": "The number of times RoCE slow restart changed state to slow restart",
    "rp_cnp_ignored": "The number of CNP packets received and ignored by the Reaction Point HCA",
    "rp_cnp_handled": "The number of CNP packets handled by the Reaction Point HCA to throttle the transmission rate",
    "np_ecn_marked_roce_packets": "The number of RoCEv2 packets received by the notification point which were "
    "marked for experiencing the congestion (ECN bits where '11' on the ingress RoCE traffic)",
    "np_cnp_sent": "The number of CNP packets sent by the Notification Point when it noticed congestion "
    "experienced in the RoCEv2 IP header (ECN bits)",
    "rx_icrc_encapsulated": "The number of RoCE packets with ICRC errors",
    "rx_vport_rdma_unicast_packets": "The number of unicast RDMA packets received on the virtual port.",
    "tx_vport_rdma_unicast_packets": "The number of unicast RDMA packets transmitted from the virtual port.",
    "rx_vport_rdma_multicast_packets": "The number of multicast RDMA packets received on the virtual port.",
    "tx_vport_rdma_multicast_packets": "The number of multicast RDMA packets transmitted from the virtual port.",
    "rx_vport_rdma_unicast_bytes": "The number of bytes received in unicast RDMA packets on the virtual port.",
    "tx_vport_rdma_unicast_bytes": "The number of bytes transmitted in unicast RDMA packets from the virtual port.",
    "rx_vport_rdma_multicast_bytes": "The number of bytes received in multicast RDMA packets on the virtual port.",
    "tx_vport_rdma_multicast_bytes": "The number of bytes transmitted in multicast RDMA packets from the virtual port.",
    "vport_speed_mbps": "The speed of the virtual port expressed in megabits per second (Mbps).",
    "rx_discards": "The number of packets discarded by the device.",
    "tx_discards": "The number of packets discarded by the device.",
    "rx_pause": "The number of packets dropped by the device.",
    "tx_pause": "The number of packets dropped by the device.",
    "device_tos": "RDMA device traffic class (TOS) value.",
}
"""Spiderpool's descriptions of the keys it knows; a key found at runtime gets a generic one."""


@attrs.frozen
class MetricSample:
    """One value of one RDMA metric family, as ``AgentMetrics.add_source`` takes it."""

    name: str
    documentation: str
    type: str
    """``"counter"`` or ``"gauge"``."""
    labels: dict[str, str]
    value: float


@attrs.frozen
class RdmaDevice:
    """One RDMA device (``mlx5_0``) and what the labels say about it."""

    name: str
    node_guid: str
    """In Spiderpool's (netlink library's) form: the GUID's bytes lowest first."""
    sys_image_guid: str
    netdevs: tuple[str, ...] = ()
    """Its network devices, the RoCE GID table's first (``ports/*/gid_attrs/ndevs``), then ``device/net``."""
    physfn_device: str | None = None
    """For a VF: the RDMA device of its PF (``device/physfn/infiniband/*``)."""
    traffic_class: int = 0

    @property
    def is_root(self) -> bool:
        """A PF (or a device without VFs): its node GUID is the system image GUID."""
        return self.node_guid == self.sys_image_guid

    @property
    def netdev(self) -> str:
        """The netdev the labels name (``""`` when it has none, e.g. moved to another namespace)."""
        return self.netdevs[0] if self.netdevs else ""


@attrs.frozen
class PodOwner:
    """The pod behind a network namespace and its top owner, as the pod labels say them."""

    namespace: str
    name: str
    owner_api_version: str = "v1"
    owner_kind: str = "Pod"
    owner_namespace: str = ""
    owner_name: str = ""

    def labels(self) -> dict[str, str]:
        """The pod labels of a sample from this pod's namespace."""
        return {
            "pod_namespace": self.namespace,
            "pod_name": self.name,
            "owner_api_version": self.owner_api_version,
            "owner_kind": self.owner_kind,
            "owner_namespace": self.owner_namespace or self.namespace,
            "owner_name": self.owner_name or self.name,
        }


# --- pure parsing ------------------------------------------------------------------------------------------------


def netlink_guid(guid: str) -> str:
    """A GUID as sysfs or iproute2 print it (``506b:4b03:00c3:e5a2``) in Spiderpool's label form
    (``a2:e5:c3:00:03:4b:6b:50``); anything unreadable is kept as it is."""
    digits = guid.strip().replace(":", "").lower()
    if len(digits) != 16 or any(c not in "0123456789abcdef" for c in digits):
        return guid.strip()
    octets = [digits[i : i + 2] for i in range(0, 16, 2)]
    return ":".join(reversed(octets))


def camel_to_snake(name: str) -> str:
    """Spiderpool's ``camelToSnake``: an upper-case letter followed by a lower-case one starts a word."""
    out: list[str] = []
    for i, char in enumerate(name):
        if char.isupper():
            if i > 0 and i + 1 < len(name) and name[i + 1].islower():
                out.append("_")
            char = char.lower()
        out.append(char)
    return "".join(out)


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise DecodeFailure(what=what, reason=str(exc)) from None


def parse_rdma_statistic(text: str) -> list[dict[str, Any]]:
    """The entries of ``rdma statistic -j`` (one per device port); ``DecodeFailure`` when it is not that."""
    entries = _json(text, "rdma statistic -j")
    if not isinstance(entries, list):
        raise DecodeFailure(what="rdma statistic -j", reason="not a JSON list")
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("ifname"), str)]


def statistic_counters(entry: Mapping[str, Any]) -> dict[str, float]:
    """The counters of one ``rdma statistic`` entry, by snake_case key (not ``ifname``, ``port``, ``ifindex``)."""
    out: dict[str, float] = {}
    for key, value in entry.items():
        if key in NOT_COUNTERS or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        out[camel_to_snake(key)] = float(value)
    return out


def parse_ethtool_stats(text: str) -> dict[str, int]:
    """``ethtool -S`` output (``NIC statistics:`` then ``     name: value`` lines) as a dict."""
    stats: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, value = line.strip().rpartition(":")
        if not sep or not name:
            continue
        try:
            stats[name.strip()] = int(value.strip())
        except ValueError:
            continue
    return stats


def ethtool_counters(stats: Mapping[str, int]) -> list[tuple[str, dict[str, str], float]]:
    """``(key, extra labels, value)`` of the ethtool counters Spiderpool exports: ``*vport*`` as they are,
    ``{rx,tx}_prio<N>_{pause,discards}`` as ``{rx,tx}_{pause,discards}{priority="<N>"}``."""
    out: list[tuple[str, dict[str, str], float]] = []
    for key, value in stats.items():
        if "vport" in key:
            out.append((key, {}, float(value)))
            continue
        match = PRIORITY_KEY.match(key)
        if match:
            direction, priority, what = match.groups()
            out.append((f"{direction}_{what}", {"priority": priority}, float(value)))
    return out


def parse_netns_mode(text: str) -> str:
    """The RDMA subsystem's netns mode from ``rdma system show -j`` (``shared`` or ``exclusive``)."""
    data = _json(text, "rdma system show -j")
    items = data if isinstance(data, list) else [data]
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("netns"), str):
            return str(item["netns"])
    raise DecodeFailure(what="rdma system show -j", reason="no netns mode")


def parse_traffic_class(text: str) -> int:
    """``tc/1/traffic_class`` ("Global tclass=106") as a number; 0 when it says none."""
    line = text.strip()
    if line.startswith(TCLASS_PREFIX):
        try:
            return int(line[len(TCLASS_PREFIX) :])
        except ValueError:
            return 0
    return 0


def parse_route_source(text: str) -> str | None:
    """The ``prefsrc`` of ``ip -j route get`` output."""
    try:
        routes = json.loads(text)
    except ValueError:
        return None
    for route in routes if isinstance(routes, list) else []:
        if isinstance(route, dict) and isinstance(route.get("prefsrc"), str):
            return str(route["prefsrc"])
    return None


def devices_from_rdma_tool(dev_json: str, link_json: str) -> list[RdmaDevice]:
    """Devices as ``rdma dev show -j`` and ``rdma link show -j`` describe them (a namespace's own devices)."""
    devs = _json(dev_json, "rdma dev show -j")
    links = _json(link_json, "rdma link show -j")
    netdevs: dict[str, list[str]] = {}
    for link in links if isinstance(links, list) else []:
        if isinstance(link, dict) and isinstance(link.get("ifname"), str) and isinstance(link.get("netdev"), str):
            netdevs.setdefault(link["ifname"], []).append(link["netdev"])
    out = []
    for dev in devs if isinstance(devs, list) else []:
        if not isinstance(dev, dict) or not isinstance(dev.get("ifname"), str):
            continue
        name = dev["ifname"]
        out.append(
            RdmaDevice(
                name=name,
                node_guid=netlink_guid(str(dev.get("node_guid", ""))),
                sys_image_guid=netlink_guid(str(dev.get("sys_image_guid", ""))),
                netdevs=tuple(dict.fromkeys(netdevs.get(name, []))),
            )
        )
    return out


# --- sysfs --------------------------------------------------------------------------------------------------------


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _names(directory: Path) -> list[str]:
    try:
        return sorted(p.name for p in directory.iterdir())
    except OSError:
        return []


def read_device(sys_root: Path, name: str) -> RdmaDevice:
    """One device from ``<sys_root>/class/infiniband/<name>``."""
    base = sys_root / "class" / "infiniband" / name
    netdevs: list[str] = []
    for port in _names(base / "ports"):
        for entry in _names(base / "ports" / port / "gid_attrs" / "ndevs"):
            value = (_read(base / "ports" / port / "gid_attrs" / "ndevs" / entry) or "").strip()
            if value and value not in netdevs:
                netdevs.append(value)
    netdevs.extend(n for n in _names(base / "device" / "net") if n not in netdevs)
    physfn = _names(base / "device" / "physfn" / "infiniband")
    return RdmaDevice(
        name=name,
        node_guid=netlink_guid(_read(base / "node_guid") or ""),
        sys_image_guid=netlink_guid(_read(base / "sys_image_guid") or ""),
        netdevs=tuple(netdevs),
        physfn_device=physfn[0] if physfn else None,
        traffic_class=parse_traffic_class(_read(base / "tc" / "1" / "traffic_class") or ""),
    )


def read_devices(sys_root: Path) -> list[RdmaDevice]:
    """Every RDMA device sysfs shows (none when there is no ``class/infiniband``)."""
    return [read_device(sys_root, name) for name in _names(sys_root / "class" / "infiniband")]


def read_speed(sys_root: Path, netdev: str) -> int | None:
    """``/sys/class/net/<netdev>/speed`` in Mb/s; ``None`` when unknown (down links say -1)."""
    text = _read(sys_root / "class" / "net" / netdev / "speed")
    try:
        speed = int((text or "").strip())
    except ValueError:
        return None
    return None if speed in UNKNOWN_SPEEDS else speed


def root_netdevs(devices: Iterable[RdmaDevice]) -> dict[str, str]:
    """The netdev of each root device, by its node GUID."""
    return {d.node_guid: d.netdev for d in devices if d.is_root and d.netdev}


def parent_names(devices: Iterable[RdmaDevice], roots: Mapping[str, str] | None = None) -> dict[str, str]:
    """``rdma_parent_name`` per device name: the netdev of the root device whose node GUID is its system image
    GUID (Spiderpool's rule; ``roots``: more root devices, the host's for a pod's), else that of the PF its
    ``physfn`` names."""
    devices = list(devices)
    by_guid = {**(roots or {}), **root_netdevs(devices)}
    by_name = {d.name: d.netdev for d in devices if d.netdev}
    out = {}
    for device in devices:
        parent = by_guid.get(device.sys_image_guid) or (by_name.get(device.physfn_device or "") or "")
        if parent:
            out[device.name] = parent
    return out


# --- samples ------------------------------------------------------------------------------------------------------


def sample(key: str, labels: dict[str, str], value: float) -> MetricSample:
    """The sample of ``rdma_<key>`` with Spiderpool's description and type."""
    return MetricSample(
        name=PREFIX + key,
        documentation=DESCRIPTIONS.get(key, f"The RDMA counter {key}, as the device reports it."),
        type="gauge" if key in GAUGES else "counter",
        labels=labels,
        value=value,
    )


def device_labels(node: str, device: RdmaDevice, parents: Mapping[str, str], port: str = "") -> dict[str, str]:
    """The labels every sample of ``device`` (of its ``port``, when the entry names one) carries."""
    labels = {
        "node_name": node,
        "ifname": device.name,
        **({"port": port} if port else {}),
        "net_dev_name": device.netdev,
        "node_guid": device.node_guid,
        "sys_image_guid": device.sys_image_guid,
        "is_root": "true" if device.is_root else "false",
    }
    if device.name in parents:
        labels["rdma_parent_name"] = parents[device.name]
    return labels


def entry_port(entry: Mapping[str, Any]) -> str:
    """The ``port`` of an ``rdma statistic`` entry as a label value (``""`` when it has none)."""
    port = entry.get("port")
    if isinstance(port, bool) or not isinstance(port, int | float):
        return ""
    return str(int(port))


def device_samples(
    node: str,
    devices: Sequence[RdmaDevice],
    statistic: Sequence[Mapping[str, Any]],
    ethtool: Mapping[str, Mapping[str, int]],
    speeds: Mapping[str, int],
    parents: Mapping[str, str],
    pod: PodOwner | None = None,
) -> list[MetricSample]:
    """The samples of one namespace: its ``rdma statistic`` entries (one per device port) for known devices,
    each with its device's ethtool counters (``ethtool``: stats by netdev) and speed (``speeds``: Mb/s by netdev)
    under the entry's ``port`` label, as Spiderpool merges them into each port's statistic."""
    by_name = {d.name: d for d in devices}
    out: list[MetricSample] = []
    for entry in statistic:
        device = by_name.get(entry["ifname"])
        if device is None:
            continue
        labels = device_labels(node, device, parents, entry_port(entry)) | (pod.labels() if pod else {})
        out.extend(sample(key, dict(labels), value) for key, value in statistic_counters(entry).items())
        if not device.netdev:
            continue
        for key, extra, value in ethtool_counters(ethtool.get(device.netdev, {})):
            out.append(sample(key, extra | labels, value))
        if device.netdev in speeds:
            out.append(sample("vport_speed_mbps", dict(labels), float(speeds[device.netdev])))
    return out


def tos_samples(node: str, devices: Iterable[RdmaDevice]) -> list[MetricSample]:
    """``rdma_device_tos`` of every root device."""
    return [
        sample("device_tos", {"node_name": node, "ifname": d.name, "net_dev_name": d.netdev}, float(d.traffic_class))
        for d in devices
        if d.is_root
    ]


# --- the collector ------------------------------------------------------------------------------------------------

CommandRunner = Callable[[Sequence[str]], Awaitable[str | None]]
"""Runs a command and returns its standard output, or ``None`` when it cannot be run or fails."""
PodIndex = Callable[[], Awaitable[Mapping[str, PodOwner]]]
"""This node's pods by address (the namespaces' default-route source addresses are looked up in it)."""


async def run_command(argv: Sequence[str]) -> str | None:
    """``argv``'s standard output; ``None`` (logged at debug) when it is missing, fails or takes over
    ``COMMAND_TIMEOUT``."""
    try:
        with trio.fail_after(COMMAND_TIMEOUT):
            done = await trio.run_process(list(argv), capture_stdout=True, capture_stderr=True, check=False)
    except (OSError, trio.TooSlowError) as exc:
        log.debug("%s: %s", " ".join(argv), exc)
        return None
    if done.returncode != 0:
        log.debug("%s exited %d: %s", " ".join(argv), done.returncode, done.stderr.decode(errors="replace").strip())
        return None
    return bytes(done.stdout).decode(errors="replace")


def endpoint_pods(store: Store, node: str) -> PodIndex:
    """A ``PodIndex`` from this node's SpiderEndpoints (their addresses, owner kind and name)."""

    async def index() -> dict[str, PodOwner]:
        out: dict[str, PodOwner] = {}
        for endpoint in readable((await store.list("SpiderEndpoint")).items)[0]:
            if endpoint.node != node:
                continue
            kind, owner = endpoint.owner_controller_type, endpoint.owner_controller_name
            api_version = OWNER_API_VERSIONS.get(kind, "")
            pod = PodOwner(endpoint.namespace, endpoint.name, api_version, kind, endpoint.namespace, owner)
            for nic in endpoint.nics:
                for address in (nic.ipv4, nic.ipv6):
                    if address:
                        out[address.split("/")[0]] = pod
        return out

    return index


def pod_addresses(pod: Obj) -> list[str]:
    """A running pod's own addresses (``status.podIPs``, else ``status.podIP``); none for a host-network pod
    (its addresses are the node's) or one in a terminal phase (its addresses may be another pod's by now)."""
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    if spec.get("hostNetwork") or status.get("phase") in TERMINAL_PHASES:
        return []
    addresses = [str(entry.get("ip") or "") for entry in status.get("podIPs") or [] if isinstance(entry, dict)]
    addresses.append(str(status.get("podIP") or ""))
    return list(dict.fromkeys(a for a in addresses if a))


@attrs.define(eq=False)
class NodePods:
    """A ``PodIndex`` of this node's Pods by ``status.podIPs``: a namespace's default route usually leaves
    through the overlay ``eth0``, whose address only the Pod's status holds (no SpiderEndpoint does).

    Only this node's Pods are listed (a field selector on ``spec.nodeName``: the server sends no others), at
    most once per ``max_age`` seconds (once per collection), and each pod's top owner (ReplicaSet ->
    Deployment, Job -> CronJob, read by name) once per pod UID.
    """

    store: Store
    node: str
    max_age: float = INTERVAL
    _index: dict[str, PodOwner] = attrs.field(factory=dict)
    _listed_at: float | None = None
    _owners: dict[str, PodOwner] = attrs.field(factory=dict)
    """By pod UID: an owner never changes for the life of a pod."""

    async def __call__(self) -> dict[str, PodOwner]:
        """This node's pods by address, listed afresh when the last list is ``max_age`` old."""
        now = trio.current_time()
        if self._listed_at is not None and now - self._listed_at < self.max_age:
            return self._index
        index: dict[str, PodOwner] = {}
        owners: dict[str, PodOwner] = {}
        for pod in (await self.store.list("Pod", field_selector=f"spec.nodeName={self.node}")).items:
            addresses = pod_addresses(pod)
            if not addresses:
                continue
            uid = str(pod["metadata"].get("uid") or "")
            owner = self._owners.get(uid) if uid else None
            if owner is None:
                owner = await self._owner(pod)
            if uid:
                owners[uid] = owner
            index |= dict.fromkeys(addresses, owner)
        self._index, self._owners, self._listed_at = index, owners, now
        return index

    async def _owner(self, pod: Obj) -> PodOwner:
        """The pod and its top owner, walked as the agent's IPAM walks it (``spider.workload``)."""
        meta = pod["metadata"]
        namespace, name = str(meta.get("namespace") or ""), str(meta["name"])
        ctrl = controller_of(pod)
        if ctrl is None:
            return PodOwner(namespace, name)
        while (hop := next_hop(ctrl)) is not None:  # ReplicaSet -> Deployment, Job -> CronJob
            try:
                parent = controller_of(await self.store.get(hop, ctrl.name, namespace))
            except NotFound:
                break
            if parent is None or parent.kind not in ("Deployment", "CronJob"):
                break
            ctrl = parent
        return PodOwner(namespace, name, ctrl.api_version, ctrl.kind, namespace, ctrl.name)


def pods_by_address(store: Store, node: str) -> PodIndex:
    """The agent's ``PodIndex``: this node's Pods by ``status.podIPs`` (``NodePods``) and its SpiderEndpoints
    by every address they record (``endpoint_pods``; these win, their owner is the one the IPAM recorded), so a
    namespace is found whether its default route leaves through the overlay or through an underlay NIC."""
    pods, endpoints = NodePods(store, node), endpoint_pods(store, node)

    async def index() -> dict[str, PodOwner]:
        return {**await pods(), **await endpoints()}

    return index


@attrs.define(eq=False)
class RdmaCollector:
    """Collects the RDMA samples every ``interval``; ``samples`` (an ``AgentMetrics`` source) gives the last."""

    node_name: str
    sys_root: Path = Path("/sys")
    netns_dir: Path = Path("/var/run/netns")
    run: CommandRunner = run_command
    pods_by_ip: PodIndex | None = None
    """Resolves a pod namespace's samples to their pod; ``None``: no pod labels."""
    interval: float = INTERVAL
    netns_parallelism: int = NETNS_PARALLELISM
    """Pod namespaces read at once."""
    collections: int = 0
    _samples: list[MetricSample] = attrs.field(factory=list)
    _said: str = ""

    def samples(self) -> list[MetricSample]:
        """The samples of the last collection."""
        return list(self._samples)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Collect every ``interval`` until cancelled."""
        task_status.started()
        while True:
            self._samples = await self.collect()
            await trio.sleep(self.interval)

    def _say(self, situation: str) -> None:
        """Log a situation once, until it changes (no tool, no device, back to normal)."""
        if situation != self._said:
            self._said = situation
            log.info("RDMA metrics: %s", situation)

    async def collect(self) -> list[MetricSample]:
        """One collection: the host's devices, then every pod namespace's in ``exclusive`` mode."""
        self.collections += 1
        devices = await trio.to_thread.run_sync(read_devices, self.sys_root)
        text = await self.run(["rdma", "statistic", "-j"])
        if text is None:
            self._say("`rdma statistic -j` cannot be run (no iproute2 rdma tool, or no RDMA support): no samples")
            return []
        try:
            statistic = parse_rdma_statistic(text)
        except SpiderError as exc:
            self._say(f"cannot read `rdma statistic -j`: {exc}")
            return []
        namespaces = await self._pod_namespaces()
        if not devices and not namespaces:
            self._say("no RDMA device on this node: no samples")
            return []
        self._say(f"{len(devices)} RDMA devices on the host, {len(namespaces)} pod namespaces")
        parents = parent_names(devices)
        ethtool, speeds = await self._ethtool(devices, ())
        out = device_samples(self.node_name, devices, statistic, ethtool, speeds, parents)
        out += tos_samples(self.node_name, devices)
        pods = await self._pods() if namespaces else {}
        roots = root_netdevs(devices)
        of_namespace: list[list[MetricSample]] = [[] for _ in namespaces]
        limiter = trio.CapacityLimiter(self.netns_parallelism)

        async def read_namespace(position: int, namespace: str) -> None:
            async with limiter:
                of_namespace[position] = await self._namespace_samples(namespace, roots, pods)

        async with trio.open_nursery() as nursery:
            for position, namespace in enumerate(namespaces):
                nursery.start_soon(read_namespace, position, namespace)
        for samples in of_namespace:
            out += samples
        return out

    async def _pods(self) -> Mapping[str, PodOwner]:
        """``pods_by_ip``'s answer; none (the samples go without pod labels) when there is none or the store
        does not answer."""
        if self.pods_by_ip is None:
            return {}
        try:
            return await self.pods_by_ip()
        except SpiderError as exc:
            log.warning("RDMA metrics: cannot look up this node's pods, no pod labels this time: %s", exc)
            return {}

    async def _ethtool(
        self, devices: Iterable[RdmaDevice], prefix: Sequence[str]
    ) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
        stats: dict[str, dict[str, int]] = {}
        speeds: dict[str, int] = {}
        for device in devices:
            if not device.netdev or device.netdev in stats:
                continue
            text = await self.run([*prefix, "ethtool", "-S", device.netdev])
            stats[device.netdev] = parse_ethtool_stats(text) if text else {}
            if not prefix:
                speed = await trio.to_thread.run_sync(read_speed, self.sys_root, device.netdev)
                if speed is not None:
                    speeds[device.netdev] = speed
        return stats, speeds

    async def _pod_namespaces(self) -> list[str]:
        text = await self.run(["rdma", "system", "show", "-j"])
        try:
            mode = parse_netns_mode(text) if text is not None else "shared"
        except SpiderError:
            mode = "shared"
        if mode != "exclusive":
            return []
        return await trio.to_thread.run_sync(_names, self.netns_dir)

    async def _namespace_samples(
        self, namespace: str, roots: Mapping[str, str], pods: Mapping[str, PodOwner]
    ) -> list[MetricSample]:
        prefix = ("ip", "netns", "exec", namespace)
        verbs = (("statistic",), ("dev", "show"), ("link", "show"))
        texts = [await self.run([*prefix, "rdma", *verb, "-j"]) for verb in verbs]
        if any(t is None for t in texts):
            return []
        statistic_text, dev_text, link_text = (t or "" for t in texts)
        try:
            statistic = parse_rdma_statistic(statistic_text)
            devices = devices_from_rdma_tool(dev_text, link_text)
        except SpiderError as exc:
            log.debug("RDMA metrics of netns %s: %s", namespace, exc)
            return []
        if not devices:
            return []
        pod = None
        for family, target in DEFAULT_ROUTE_PROBES:
            source = parse_route_source(await self.run([*prefix, "ip", "-j", family, "route", "get", target]) or "")
            if source is not None:
                pod = pods.get(source)
                break
        ethtool, _ = await self._ethtool(devices, prefix)
        parents = parent_names(devices, roots)
        return device_samples(self.node_name, devices, statistic, ethtool, {}, parents, pod)
