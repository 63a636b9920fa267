"""The ``coordinator`` meta-plugin's logic, without I/O: configuration, mode, and the plan of netlink changes.

Owns what Spiderpool's ``cmd/coordinator`` decides (reference §5, §1.6, §4.3):

- ``ClusterConfig``: the agent API's ``CoordinatorConfig``, read from a Synced SpiderCoordinator plus the pod's
  ``ipam.spidernet.io/default-route-nic`` annotation (``GET /v1/coordinator/config``);
- ``CoordinatorConf``: the plugin configuration after the merge NAD conf -> SpiderCoordinator -> default
  (§5.1), validated field by field with Spiderpool's names;
- ``parse_request``: one forwarded invocation (``CNI_*`` environment, stdin with ``prevResult``);
- ``resolve_mode``: auto/underlay/overlay/disable, first invoke and the policy table of this NIC (§5.2);
- ``mac_from_prefix``: ``podMACPrefix`` plus the address;
- ``plan_setup`` / ``plan_teardown``: from what the NodeActor observed in the pod's and the host's namespaces,
  the ordered list of changes (``Op``) that ADD and DEL make (§5.3, §5.4).  The NodeActor executes a plan as
  one netlink transaction; nothing here touches a socket.

Departures from Spiderpool, on purpose: the host rule ``priority 1000 lookup <hostRuleTable>`` is removed by
the DEL that leaves the table empty (Spiderpool never removes it), so DEL leaves the host as it found it;
``detectIPConflict`` / ``detectGateway`` / ``detectOptions`` work again in the coordinator configuration
(Spiderpool moved detection to its IPAM plugin and now ignores them here); an explicit
``ipam_unix_socket_path`` in the configuration names the agent's socket (Spiderpool always uses the default).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

import attrs

from spider.cni import DEFAULT_SOCKET, SUPPORTED_VERSIONS, json_type, parse_args, version_key
from spider.errors import (
    CNI_IO_FAILURE,
    CNI_UNKNOWN_CONTAINER,
    AllocationError,
    DecodeFailure,
    IncompatibleVersion,
    InvalidEnvironment,
    InvalidNetConf,
    InvalidSpec,
    SpiderError,
    TransientError,
)

KIND: Final = "SpiderCoordinator"
DEFAULT_ROUTE_NIC_ANNOTATION: Final = "ipam.spidernet.io/default-route-nic"
MODES: Final = ("auto", "underlay", "overlay", "disable")
POD_VETH: Final = "veth0"
DEFAULT_FIRST_NIC: Final = "eth0"
POD_MARK_TABLE: Final = 100
MARK: Final = 0x1
RULE_PRIORITY: Final = 1000
DEFAULT_HOST_RULE_TABLE: Final = 500
DEFAULT_VETH_MTU: Final = 1500
MAIN_TABLE: Final = 254
SCOPE_UNIVERSE: Final = 0
SCOPE_LINK: Final = 253
NFT_TABLE: Final = "spider-coordinator"
"""The nftables table (family inet) in the pod that marks connections arriving through ``veth0``."""

# Host interfaces whose addresses the pod must not get routes to (Spiderpool's DefaultNodeInterfacesToExclude).
HOST_EXCLUDED: Final = re.compile(
    r"^(docker.*|cbr.*|dummy.*|virbr.*|lxcbr.*|veth.*|lo|cali.*|flannel.*|kube-ipvs.*|cni.*|vx-submariner|cilium.*)$"
)
_MAC_PREFIX: Final = re.compile(r"^[a-fA-F0-9]{2}[:-][a-fA-F0-9]{2}$")
_DURATION: Final = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS: Final = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}

Side = Literal["host", "pod"]
JsonObject = dict[str, Any]


# --- errors -------------------------------------------------------------------------------------------------

CNI_ADDRESS_CONFLICT: Final = 105
CNI_GATEWAY_UNREACHABLE: Final = 106


@attrs.define(auto_exc=True, kw_only=True)
class CoordinatorNotReady(TransientError):
    """No SpiderCoordinator, or none Synced yet: the controller has not published the cluster's CIDRs."""

    reason: str

    def __str__(self) -> str:
        return self.reason


@attrs.define(auto_exc=True, kw_only=True)
class AddressConflict(AllocationError):
    """Another host already answers for the address the pod was given (its allocation is released)."""

    cni_code = CNI_ADDRESS_CONFLICT
    interface: str
    ip: str
    mac: str

    def __str__(self) -> str:
        return f"interface {self.interface!r} got {self.ip}, but {self.ip} is already in use by {self.mac}"


@attrs.define(auto_exc=True, kw_only=True)
class GatewayUnreachable(AllocationError):
    """The pod's gateway did not answer ARP or neighbour solicitation in time (its allocation is released)."""

    cni_code = CNI_GATEWAY_UNREACHABLE
    interface: str
    gateway: str
    waited: float

    def __str__(self) -> str:
        return (
            f"gateway {self.gateway} is unreachable from interface {self.interface!r} (no answer in {self.waited:g} s)"
        )


@attrs.define(auto_exc=True, kw_only=True)
class NamespaceGone(SpiderError):
    """The pod's network namespace does not exist (CNI code 3, unknown container)."""

    cni_code = CNI_UNKNOWN_CONTAINER
    netns: str

    def __str__(self) -> str:
        return f"network namespace {self.netns!r} does not exist"


@attrs.define(auto_exc=True, kw_only=True)
class InterfaceSetupFailed(SpiderError):
    """The kernel refused a netlink change (CNI code 5, I/O failure); the whole transaction stops there."""

    cni_code = CNI_IO_FAILURE
    action: str
    reason: str

    def __str__(self) -> str:
        return f"{self.action} failed: {self.reason}"


# --- small parsers ------------------------------------------------------------------------------------------


def normalize_cidr(text: str) -> str:
    """A CIDR in canonical form; a bare address becomes ``/32`` or ``/128`` (as Spiderpool's webhook does)."""
    text = text.strip()
    if "/" not in text:
        return str(ipaddress.ip_network(text))
    return str(ipaddress.ip_network(text, strict=False))


def parse_duration(text: str) -> float:
    """A Go duration string (``100ms``, ``1.5s``, ``1m30s``) in seconds."""
    pos, total = 0, 0.0
    if not text:
        raise ValueError("empty duration")
    while pos < len(text):
        m = _DURATION.match(text, pos)
        if m is None:
            raise ValueError(f"{text!r} is not a duration like '100ms' or '1s'")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return total


def family_of(ip: str) -> int:
    """4 or 6 for an address or a CIDR."""
    return 6 if ":" in ip else 4


@attrs.frozen
class PolicyRoute:
    """One ``policyRoutes`` entry: ``dst`` (CIDR) via ``gw`` of the same family."""

    dst: str
    gw: str

    @classmethod
    def parse(cls, where: str, raw: object) -> PolicyRoute:
        if not isinstance(raw, dict) or not isinstance(raw.get("dst"), str) or not isinstance(raw.get("gw"), str):
            raise ValueError(f"{where} must be an object with string fields 'dst' and 'gw'")
        dst = normalize_cidr(raw["dst"])
        gw = str(ipaddress.ip_address(raw["gw"].strip()))
        if family_of(dst) != family_of(gw):
            raise ValueError(f"{where}: dst {dst} and gw {gw} are not of the same IP family")
        return cls(dst, gw)


def _cidrs(where: str, raw: object) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(c, str) for c in raw):
        raise ValueError(f"{where} must be a list of CIDRs (strings), not {json_type(raw)}")
    out = []
    for item in raw:
        try:
            out.append(normalize_cidr(item))
        except ValueError:
            raise ValueError(f"{where} has {item!r}, which is not a CIDR") from None
    return tuple(out)


def _policy_routes(where: str, raw: object) -> tuple[PolicyRoute, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ValueError(f"{where} must be a list of {{dst, gw}} objects, not {json_type(raw)}")
    return tuple(PolicyRoute.parse(f"{where}[{i}]", r) for i, r in enumerate(raw))


def _mac_prefix(where: str, raw: object) -> str:
    if raw is None or raw == "":
        return ""
    # NB: Spiderpool's plugin regex lets odd first bytes through; its webhook then rejects multicast
    # prefixes.  We check both here: a multicast MAC on an interface breaks it.
    if not isinstance(raw, str) or not _MAC_PREFIX.match(raw) or int(raw[:2], 16) & 1:
        raise ValueError(f"{where} must be two hex bytes like '0a:1b' whose first byte is even (unicast), not {raw!r}")
    return raw.replace("-", ":").lower()


def _int(where: str, raw: object) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise ValueError(f"{where} must be an integer, not {json_type(raw)}")
    return raw


def _bool(where: str, raw: object) -> bool | None:
    if raw is None:
        return None
    if not isinstance(raw, bool):
        raise ValueError(f"{where} must be true or false, not {json_type(raw)}")
    return raw


def _str(where: str, raw: object) -> str:
    if raw is None:
        return ""
    if not isinstance(raw, str):
        raise ValueError(f"{where} must be a string, not {json_type(raw)}")
    return raw


def _mode(where: str, raw: object) -> str:
    mode = _str(where, raw)
    if mode == "disabled":  # the CRD's enum says "disabled", the plugin understands "disable" (§13 item 7)
        mode = "disable"
    if mode and mode not in MODES:
        raise ValueError(f"{where} must be one of {', '.join(MODES)}, not {mode!r}")
    return mode


def _rp_filter(where: str, raw: object) -> int | None:
    value = _int(where, raw)
    if value is not None and value >= 0 and value not in (0, 1, 2):
        raise ValueError(f"{where} must be -1 (leave it), 0, 1 or 2, not {value}")
    return None if value is None else max(value, -1)


def _veth_link_address(where: str, raw: object) -> str:
    text = _str(where, raw)
    if text:
        try:
            ipaddress.IPv4Address(text)
        except ValueError:
            raise ValueError(f"{where} must be an IPv4 address, not {text!r}") from None
    return text


# --- the agent API's CoordinatorConfig ----------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ClusterConfig:
    """Spiderpool's ``CoordinatorConfig``: the cluster's defaults for the coordinator (reference §4.3)."""

    mode: str = "auto"
    overlay_pod_cidr: tuple[str, ...] = ()
    service_cidr: tuple[str, ...] = ()
    tune_pod_routes: bool = True
    hijack_cidr: tuple[str, ...] = ()
    policy_routes: tuple[PolicyRoute, ...] = ()
    pod_mac_prefix: str = ""
    pod_default_route_nic: str = ""
    host_rule_table: int = DEFAULT_HOST_RULE_TABLE
    pod_rp_filter: int = 0
    tx_queue_len: int = 0
    veth_link_address: str = ""
    veth_mtu: int = DEFAULT_VETH_MTU
    detect_ip_conflict: bool = False
    detect_gateway: bool = False

    @classmethod
    def from_objects(cls, coordinators: Sequence[Mapping[str, Any]], pod: Mapping[str, Any] | None) -> ClusterConfig:
        """The config from the first SpiderCoordinator (as Spiderpool's agent: ``List()[0]``) and the pod.

        Raises ``CoordinatorNotReady`` with Spiderpool's messages when there is none or it is not Synced, and
        ``InvalidSpec`` when its spec breaks the rules Spiderpool's webhook enforces.
        """
        if not coordinators:
            raise CoordinatorNotReady(reason="coordinator config not found")
        obj = coordinators[0]
        name = str((obj.get("metadata") or {}).get("name", ""))
        status = obj.get("status") or {}
        if status.get("phase") != "Synced":
            raise CoordinatorNotReady(reason=f"spidercoordinator: {name} no ready")
        spec = obj.get("spec") or {}
        try:
            annotations = ((pod or {}).get("metadata") or {}).get("annotations") or {}
            route_nic = annotations.get(DEFAULT_ROUTE_NIC_ANNOTATION) or _str(
                "podDefaultRouteNIC", spec.get("podDefaultRouteNIC")
            )
            table = _int("hostRuleTable", spec.get("hostRuleTable"))
            mtu = _int("vethMTU", spec.get("vethMTU"))
            txq = _int("txQueueLen", spec.get("txQueueLen")) or 0
            if txq < 0:
                raise ValueError(f"txQueueLen must not be negative, got {txq}")
            if mtu is not None and mtu <= 0:
                raise ValueError(f"vethMTU must be positive, got {mtu}")
            rp = _rp_filter("podRPFilter", spec.get("podRPFilter"))
            tune = _bool("tunePodRoutes", spec.get("tunePodRoutes"))
            return cls(
                mode=_mode("mode", spec.get("mode")) or "auto",
                overlay_pod_cidr=_cidrs("status.overlayPodCIDR", status.get("overlayPodCIDR")),
                service_cidr=_cidrs("status.serviceCIDR", status.get("serviceCIDR")),
                tune_pod_routes=True if tune is None else tune,
                hijack_cidr=_cidrs("hijackCIDR", spec.get("hijackCIDR")),
                policy_routes=_policy_routes("policyRoutes", spec.get("policyRoutes")),
                pod_mac_prefix=_mac_prefix("podMACPrefix", spec.get("podMACPrefix")),
                pod_default_route_nic=str(route_nic),
                host_rule_table=table if table and table > 0 else DEFAULT_HOST_RULE_TABLE,
                pod_rp_filter=0 if rp is None else rp,
                tx_queue_len=txq,
                veth_link_address=_veth_link_address("vethLinkAddress", spec.get("vethLinkAddress")),
                veth_mtu=mtu or DEFAULT_VETH_MTU,
                detect_ip_conflict=bool(_bool("detectIPConflict", spec.get("detectIPConflict"))),
                detect_gateway=bool(_bool("detectGateway", spec.get("detectGateway"))),
            )
        except ValueError as exc:
            raise InvalidSpec(kind=KIND, name=name, reason=str(exc)) from None

    def to_api(self) -> JsonObject:
        """The ``CoordinatorConfig`` JSON of Spiderpool's agent API (plus our two detection switches)."""
        return {
            "mode": self.mode,
            "overlayPodCIDR": list(self.overlay_pod_cidr),
            "serviceCIDR": list(self.service_cidr),
            "tunePodRoutes": self.tune_pod_routes,
            "hijackCIDR": list(self.hijack_cidr),
            "policyRoutes": [{"dst": r.dst, "gw": r.gw} for r in self.policy_routes],
            "podMACPrefix": self.pod_mac_prefix,
            "podDefaultRouteNIC": self.pod_default_route_nic,
            "hostRuleTable": self.host_rule_table,
            "podRPFilter": self.pod_rp_filter,
            "txQueueLen": self.tx_queue_len,
            "vethLinkAddress": self.veth_link_address,
            "vethMTU": self.veth_mtu,
            "detectIPConflict": self.detect_ip_conflict,
            "detectGateway": self.detect_gateway,
        }


# --- the plugin configuration -------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class DetectOptions:
    """``detectOptions``: how conflict and gateway detection probe (Spiderpool's timings by default)."""

    retries: int = 3
    """Probes sent before an address counts as free (or a gateway as unreachable)."""
    interval: float = 0.0
    """Seconds between one probe's listening window and the next probe."""
    timeout: float = 0.1
    """Seconds to listen for an answer after each probe (Spiderpool's read deadline, 100 ms)."""


@attrs.frozen(kw_only=True)
class CoordinatorConf:
    """The coordinator's configuration after the merge NAD conf -> SpiderCoordinator -> default (§5.1)."""

    mode: str = "auto"
    pod_default_cni_nic: str = DEFAULT_FIRST_NIC
    tune_pod_routes: bool = True
    pod_default_route_nic: str = ""
    pod_mac_prefix: str = ""
    overlay_pod_cidr: tuple[str, ...] = ()
    service_cidr: tuple[str, ...] = ()
    hijack_cidr: tuple[str, ...] = ()
    policy_routes: tuple[PolicyRoute, ...] = ()
    host_rule_table: int = DEFAULT_HOST_RULE_TABLE
    pod_rp_filter: int = 0
    host_rp_filter: int | None = None
    tx_queue_len: int = 0
    veth_link_address: str = ""
    veth_mtu: int = DEFAULT_VETH_MTU
    detect_ip_conflict: bool = False
    detect_gateway: bool = False
    detect_options: DetectOptions = attrs.field(factory=DetectOptions)
    socket_path: str = DEFAULT_SOCKET

    @property
    def hijack_routes(self) -> tuple[str, ...]:
        """``overlayPodCIDR`` then ``serviceCIDR`` then ``hijackCIDR``, each once: routed through the host."""
        return tuple(dict.fromkeys((*self.overlay_pod_cidr, *self.service_cidr, *self.hijack_cidr)))

    @classmethod
    def merge(cls, conf: Mapping[str, Any], cluster: ClusterConfig | None) -> CoordinatorConf:
        """Validate the NAD's fields and fill the gaps from the cluster's config, then the defaults.

        ``InvalidNetConf`` names the first wrong field.  ``cluster`` may be ``None`` (DEL without a
        SpiderCoordinator): the built-in defaults stand in.
        """
        c = cluster or ClusterConfig()
        try:
            mode = _mode("mode", conf.get("mode")) or c.mode
            tune = _bool("tunePodRoutes", conf.get("tunePodRoutes"))
            table = _int("hostRuleTable", conf.get("hostRuleTable"))
            if table is not None and table <= 0:
                raise ValueError(f"hostRuleTable must be positive, got {table}")
            rp = _rp_filter("podRPFilter", conf.get("podRPFilter"))
            host_rp = _rp_filter("hostRPFilter", conf.get("hostRPFilter"))
            txq = _int("txQueueLen", conf.get("txQueueLen"))
            if txq is not None and txq < 0:
                raise ValueError(f"txQueueLen must not be negative, got {txq}")
            mtu = _int("vethMTU", conf.get("vethMTU"))
            if mtu is not None and mtu <= 0:
                raise ValueError(f"vethMTU must be positive, got {mtu}")
            conflict = _bool("detectIPConflict", conf.get("detectIPConflict"))
            gateway = _bool("detectGateway", conf.get("detectGateway"))
            for deprecated in ("logOptions",):
                if conf.get(deprecated) is not None and not isinstance(conf[deprecated], dict):
                    raise ValueError(f"{deprecated} must be an object, not {json_type(conf[deprecated])}")
            return cls(
                mode=mode,
                pod_default_cni_nic=_str("podDefaultCniNic", conf.get("podDefaultCniNic")) or DEFAULT_FIRST_NIC,
                tune_pod_routes=c.tune_pod_routes if tune is None else tune,
                pod_default_route_nic=_str("podDefaultRouteNic", conf.get("podDefaultRouteNic"))
                or c.pod_default_route_nic,
                pod_mac_prefix=_mac_prefix("podMACPrefix", conf.get("podMACPrefix")) or c.pod_mac_prefix,
                overlay_pod_cidr=_cidrs("overlayPodCIDR", conf.get("overlayPodCIDR")) or c.overlay_pod_cidr,
                service_cidr=_cidrs("serviceCIDR", conf.get("serviceCIDR")) or c.service_cidr,
                hijack_cidr=_cidrs("hijackCIDR", conf.get("hijackCIDR")) or c.hijack_cidr,
                policy_routes=_policy_routes("policyRoutes", conf.get("policyRoutes")) or c.policy_routes,
                host_rule_table=table or c.host_rule_table,
                pod_rp_filter=c.pod_rp_filter if rp is None else rp,
                host_rp_filter=host_rp,
                tx_queue_len=c.tx_queue_len if txq is None else txq,
                veth_link_address=_veth_link_address("vethLinkAddress", conf.get("vethLinkAddress"))
                or c.veth_link_address,
                veth_mtu=mtu or c.veth_mtu,
                detect_ip_conflict=c.detect_ip_conflict if conflict is None else conflict,
                detect_gateway=c.detect_gateway if gateway is None else gateway,
                detect_options=_detect_options(conf.get("detectOptions")),
                socket_path=_str("ipam_unix_socket_path", conf.get("ipam_unix_socket_path")) or DEFAULT_SOCKET,
            )
        except ValueError as exc:
            raise InvalidNetConf(reason=str(exc)) from None


def _detect_options(raw: object) -> DetectOptions:
    if raw is None:
        return DetectOptions()
    if not isinstance(raw, dict):
        raise ValueError(f"detectOptions must be an object, not {json_type(raw)}")
    defaults = DetectOptions()
    retries = _int("detectOptions.retries", raw.get("retries"))
    if retries is not None and not 1 <= retries <= 20:
        raise ValueError(f"detectOptions.retries must be 1 to 20, got {retries}")
    durations = {}
    for key in ("interval", "timeout"):
        text = _str(f"detectOptions.{key}", raw.get(key))
        if text:
            try:
                value = parse_duration(text)
            except ValueError as exc:
                raise ValueError(f"detectOptions.{key}: {exc}") from None
            if not 0 <= value <= 10:
                raise ValueError(f"detectOptions.{key} must be at most 10s, got {text!r}")
            durations[key] = value
    return DetectOptions(
        retries=retries or defaults.retries,
        interval=durations.get("interval", defaults.interval),
        timeout=durations.get("timeout", defaults.timeout) or defaults.timeout,
    )


# --- requests -----------------------------------------------------------------------------------------------

COMMANDS: Final = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")
_REQUIRED_ENV: Final[Mapping[str, tuple[str, ...]]] = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "GC": (),
    "STATUS": (),
}
_FIRST_VERSION: Final[Mapping[str, tuple[int, ...]]] = {"CHECK": (0, 4, 0), "GC": (1, 1, 0), "STATUS": (1, 1, 0)}
_CONTAINER_ID: Final = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*", re.ASCII)


@attrs.frozen(kw_only=True)
class PrevIP:
    """One address of ``prevResult`` that belongs to this plugin's interface."""

    address: str  # ip/prefix
    gateway: str | None = None

    @property
    def ip(self) -> str:
        return self.address.partition("/")[0]

    @property
    def family(self) -> int:
        return family_of(self.address)


@attrs.frozen(kw_only=True)
class CoordinatorRequest:
    """One validated invocation of the coordinator.  Fields a verb does not use are empty."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: Mapping[str, str] = attrs.field(factory=dict)
    version: str = ""
    conf: JsonObject = attrs.field(factory=dict)
    prev_result: JsonObject | None = None

    @property
    def pod_name(self) -> str:
        return self.args.get("K8S_POD_NAME", "")

    @property
    def pod_namespace(self) -> str:
        return self.args.get("K8S_POD_NAMESPACE", "")

    @property
    def pod_uid(self) -> str:
        return self.args.get("K8S_POD_UID", "")

    def prev_ips(self) -> tuple[PrevIP, ...]:
        """The addresses ``prevResult`` gives this interface (all of them when it names no interfaces)."""
        result = self.prev_result or {}
        interfaces = result.get("interfaces") or []
        mine = {
            i
            for i, itf in enumerate(interfaces)
            if isinstance(itf, dict) and itf.get("name") == self.ifname and itf.get("sandbox")
        }
        out = []
        for ip in result.get("ips") or []:
            if not isinstance(ip, dict) or not isinstance(ip.get("address"), str):
                continue
            index = ip.get("interface")
            if mine and isinstance(index, int) and index not in mine:
                continue
            gateway = ip.get("gateway")
            out.append(PrevIP(address=ip["address"], gateway=gateway if isinstance(gateway, str) else None))
        return tuple(out)


def parse_request(env: Mapping[str, str], stdin: bytes, *, chained: bool = True) -> CoordinatorRequest:
    """Validate one forwarded invocation; raises the ``SpiderError`` whose code the plugin reports.

    The order is the one a reader of the error wants: verb, environment, configuration (decode, version,
    verb against version, ``prevResult``).  ADD needs a ``prevResult`` with at least one address: the
    coordinator is chained after the main CNI (macvlan) and tunes what it made.  ``chained=False`` is for
    ifacer, which runs before the main CNI and has no ``prevResult``.
    """
    import json

    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        reason = "is missing" if not command else f"is {command!r}, expected one of {', '.join(COMMANDS)}"
        raise InvalidEnvironment(variable="CNI_COMMAND", reason=reason)
    if command == "VERSION":
        return CoordinatorRequest(command=command)
    for variable in _REQUIRED_ENV[command]:
        if not env.get(variable):
            raise InvalidEnvironment(variable=variable, reason=f"is missing (required for {command})")
    container_id = env.get("CNI_CONTAINERID", "")
    if container_id and not _CONTAINER_ID.fullmatch(container_id):
        raise InvalidEnvironment(
            variable="CNI_CONTAINERID",
            reason=f"must be a letter or digit followed by letters, digits, '_', '.' or '-': {container_id!r}",
        )
    ifname = env.get("CNI_IFNAME", "")
    if ifname and (len(ifname.encode()) > 15 or "/" in ifname or any(c.isspace() for c in ifname)):
        raise InvalidEnvironment(variable="CNI_IFNAME", reason=f"is not a valid interface name: {ifname!r}")
    args = parse_args(env.get("CNI_ARGS", ""))
    try:
        conf = json.loads(stdin)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeFailure(what="network configuration on stdin", reason=str(exc)) from exc
    if not isinstance(conf, dict):
        raise DecodeFailure(
            what="network configuration on stdin", reason=f"expected a JSON object, got {json_type(conf)}"
        )
    version = conf.get("cniVersion")
    if not isinstance(version, str) or version not in SUPPORTED_VERSIONS:
        raise IncompatibleVersion(version=str(version or ""), supported=SUPPORTED_VERSIONS)
    first = _FIRST_VERSION.get(command)
    if first is not None and version_key(version) < first:
        raise IncompatibleVersion(version=version, supported=SUPPORTED_VERSIONS, command=command)
    prev = conf.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise InvalidNetConf(reason=f"prevResult must be an object, not {json_type(prev)}")
    request = CoordinatorRequest(
        command=command,
        container_id=container_id,
        netns=env.get("CNI_NETNS", ""),
        ifname=ifname,
        args=args,
        version=version,
        conf=conf,
        prev_result=prev,
    )
    if command == "ADD" and chained:
        if prev is None:
            raise InvalidNetConf(reason="coordinator must be chained after the main CNI: no prevResult")
        if not request.prev_ips():
            raise InvalidNetConf(reason=f"prevResult has no address for interface {ifname!r}")
        for ip in request.prev_ips():
            try:
                ipaddress.ip_interface(ip.address)
            except ValueError:
                raise InvalidNetConf(reason=f"prevResult address {ip.address!r} is not ip/prefix") from None
    return request


# --- what the NodeActor observes ----------------------------------------------------------------------------


@attrs.frozen
class Link:
    """One interface in a namespace."""

    index: int
    name: str
    mac: str = ""
    up: bool = False
    kind: str = ""
    peer_index: int | None = None
    """``IFLA_LINK``: for a veth, the peer's index (in the other namespace when the peer lives there)."""
    broadcast: bool = True
    mtu: int = 1500


@attrs.frozen
class Address:
    """One address on an interface (``link`` by name)."""

    link: str
    ip: str
    prefix: int
    scope: int = SCOPE_UNIVERSE

    @property
    def family(self) -> int:
        return family_of(self.ip)


@attrs.frozen
class RouteEntry:
    """One route as the kernel reports it; ``dst`` is ``None`` for a default route."""

    family: int
    table: int
    dst: str | None
    oif: str | None = None
    gateway: str | None = None
    scope: int = SCOPE_UNIVERSE
    src: str | None = None
    proto: int = 4  # static
    priority: int | None = None
    multipath_oifs: tuple[str, ...] = ()
    multipath_gateways: tuple[str | None, ...] = ()

    @property
    def destination(self) -> str:
        """``dst`` with the default spelled out."""
        if self.dst is not None:
            return self.dst
        return "0.0.0.0/0" if self.family == 4 else "::/0"


@attrs.frozen
class RuleEntry:
    """One policy routing rule (``src``/``dst`` are CIDRs or ``None``)."""

    family: int
    table: int
    priority: int | None = None
    src: str | None = None
    dst: str | None = None
    fwmark: int | None = None

    def same(self, other: RuleEntry) -> bool:
        """Whether two rules select the same packets into the same table (priority only when both set one)."""
        if (self.family, self.table, self.src, self.dst, self.fwmark or None) != (
            other.family,
            other.table,
            other.src,
            other.dst,
            other.fwmark or None,
        ):
            return False
        return self.priority is None or other.priority is None or self.priority == other.priority


@attrs.frozen
class Neighbour:
    """One neighbour entry."""

    link: str
    ip: str
    mac: str | None = None
    permanent: bool = False


@attrs.frozen
class NsView:
    """Links, addresses, routes, rules and neighbours of one namespace, as observed in one transaction."""

    links: tuple[Link, ...] = ()
    addresses: tuple[Address, ...] = ()
    routes: tuple[RouteEntry, ...] = ()
    rules: tuple[RuleEntry, ...] = ()
    neighbours: tuple[Neighbour, ...] = ()
    route_sources: Mapping[str, str] = attrs.field(factory=dict)
    """For each address asked about: the source address the kernel picks to reach it (``ip route get``)."""

    def link(self, name: str) -> Link | None:
        return next((link for link in self.links if link.name == name), None)

    def link_by_index(self, index: int) -> Link | None:
        return next((link for link in self.links if link.index == index), None)

    def addresses_of(self, name: str, families: Sequence[int] = (4, 6)) -> tuple[Address, ...]:
        """Global addresses on one link, of the given families."""
        return tuple(a for a in self.addresses if a.link == name and a.scope == SCOPE_UNIVERSE and a.family in families)

    def up_links(self) -> tuple[Link, ...]:
        """Links that are up, excluding loopback (Spiderpool's GetUPLinkList)."""
        return tuple(link for link in self.links if link.up and link.name != "lo" and link.kind != "loopback")


# --- mode ---------------------------------------------------------------------------------------------------


@attrs.frozen
class ModeDecision:
    """How this invocation works: the effective mode, whether it is the pod's first NIC, and its table."""

    mode: str
    first_invoke: bool
    table: int

    @property
    def pod_veth(self) -> str:
        """The pod side of the path to the host: our ``veth0`` (underlay) or the overlay CNI's ``eth0``."""
        return POD_VETH if self.mode == "underlay" else DEFAULT_FIRST_NIC


def resolve_mode(mode: str, ifname: str, first_nic: str, pod: NsView) -> ModeDecision:
    """Spiderpool's coordinatorModeAndFirstInvoke (§5.2); ``InvalidNetConf`` for a mode that cannot work here."""
    veth_exists = pod.link(POD_VETH) is not None
    links = len(pod.up_links())
    if mode == "auto":
        mode = "underlay" if ifname == first_nic or veth_exists else "overlay"
    if mode == "underlay":
        first = ifname == first_nic
        if not first and not veth_exists:
            raise InvalidNetConf(
                reason=f"when creating interface {ifname} in underlay mode, the auxiliary interface {POD_VETH} was not "
                f"created by the previous interface {first_nic}: enable the coordinator on that interface too"
            )
        # Table 100 stays for eth0's replies; the first NIC uses 101, later ones count the links (veth0, eth0,
        # net1, net2: 4 + 98 = 102 for net2).
        return ModeDecision("underlay", first, POD_MARK_TABLE + 1 if first else links + 98)
    if mode == "overlay":
        if ifname == first_nic:
            raise InvalidNetConf(
                reason=f"interface {ifname} is the pod's first interface, which overlay mode does not tune; "
                "use underlay or auto mode for it"
            )
        if veth_exists:
            raise InvalidNetConf(
                reason=f"interface {POD_VETH} of underlay mode exists in the pod, so the previous interface works "
                f"in underlay mode; overlay mode cannot tune {ifname}"
            )
        first = links == 2
        return ModeDecision("overlay", first, POD_MARK_TABLE + 1 if first else 99 + links)
    if mode == "disable":
        return ModeDecision("disable", False, MAIN_TABLE)
    raise InvalidNetConf(reason=f"unknown tuneMode: {mode}")


# --- MACs and names -----------------------------------------------------------------------------------------


def mac_from_prefix(prefix: str, ip: str) -> str:
    """``podMACPrefix`` (two bytes) followed by the IPv4 address, or the last four bytes of an IPv6 address."""
    head = bytes(int(p, 16) for p in prefix.replace("-", ":").split(":"))
    tail = ipaddress.ip_address(ip).packed[-4:]
    return ":".join(f"{b:02x}" for b in head + tail)


def host_veth_name(container_id: str) -> str:
    """``veth`` plus the first 11 characters of the container ID (Spiderpool's getHostVethName)."""
    return f"veth{container_id[:11]}"


def random_mac(raw: bytes) -> str:
    """A locally administered unicast MAC from six random bytes (Cilium's GenerateRandMAC, as Spiderpool)."""
    first = (raw[0] & 0xFE) | 0x02
    return ":".join(f"{b:02x}" for b in bytes([first]) + raw[1:6])


# --- the plan -----------------------------------------------------------------------------------------------


@attrs.frozen
class AddVeth:
    """Create ``pod_name`` in the pod with its peer ``host_name`` in the host namespace; both up."""

    pod_name: str
    host_name: str
    mtu: int
    pod_mac: str
    host_mac: str
    side: Side = "pod"


@attrs.frozen
class SetLink:
    """Change one link: up, MAC address, transmit queue length (``None`` leaves it)."""

    side: Side
    name: str
    up: bool | None = None
    mac: str | None = None
    txqlen: int | None = None


@attrs.frozen
class DelLink:
    """Delete a link if it exists (a veth takes its peer with it)."""

    side: Side
    name: str


@attrs.frozen
class AddAddress:
    side: Side
    link: str
    address: str  # ip/prefix


@attrs.frozen
class AddRoute:
    """Add or replace a route (``replace`` makes ADD idempotent)."""

    side: Side
    dst: str
    dev: str
    table: int
    gateway: str | None = None
    src: str | None = None
    scope: int = SCOPE_UNIVERSE


@attrs.frozen
class DelRoutes:
    """Delete every route to ``dst`` in ``table`` (optionally only through ``dev``); missing is fine."""

    side: Side
    dst: str
    table: int
    dev: str | None = None


@attrs.frozen
class MoveRoute:
    """Move one observed route from its table to ``table`` (delete, then add the same route there)."""

    side: Side
    route: RouteEntry
    table: int


@attrs.frozen
class CopyRoute:
    """Add a copy of one observed route to ``table``."""

    side: Side
    route: RouteEntry
    table: int


@attrs.frozen
class AddRule:
    """Ensure a policy rule exists (added only when no equal rule is there)."""

    side: Side
    rule: RuleEntry


@attrs.frozen
class DelRule:
    """Delete rules equal to ``rule``; missing is fine."""

    side: Side
    rule: RuleEntry


@attrs.frozen
class DropRuleIfUnused:
    """Delete ``rule`` when ``rule.table`` has no route of its family left (checked at execution time)."""

    side: Side
    rule: RuleEntry


@attrs.frozen
class AddNeighbour:
    """A permanent neighbour entry ``ip`` -> ``mac`` on ``dev``."""

    side: Side
    dev: str
    ip: str
    mac: str


@attrs.frozen
class DelNeighbours:
    """Delete neighbour entries for ``ip`` (on ``dev`` only, when given); missing is fine."""

    side: Side
    ip: str
    dev: str | None = None


@attrs.frozen
class Sysctl:
    """Write ``value`` to ``/proc/sys/<key>`` inside the namespace (``key`` like ``net/ipv4/conf/all/rp_filter``)."""

    side: Side
    key: str
    value: int


@attrs.frozen
class MarkReplies:
    """In the pod: mark connections that arrive on ``dev`` and restore the mark on their replies (nftables)."""

    dev: str
    mark: int = MARK
    side: Side = "pod"


@attrs.frozen
class UnmarkReplies:
    """In the pod: remove the marking of ``MarkReplies`` if present."""

    side: Side = "pod"


Op = (
    AddVeth
    | SetLink
    | DelLink
    | AddAddress
    | AddRoute
    | DelRoutes
    | MoveRoute
    | CopyRoute
    | AddRule
    | DelRule
    | DropRuleIfUnused
    | AddNeighbour
    | DelNeighbours
    | Sysctl
    | MarkReplies
    | UnmarkReplies
)


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
            ops.append(AddVeth(POD_VETH, host_veth, conf.veth_mtu, spec.pod_veth_mac, spec.host_veth_mac))
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


def plan_teardown(spec: TeardownSpec, host: NsView) -> Plan:
    """The changes of one DEL (§5.4): remove on the host everything ADD made there, also when the pod's
    namespace is gone.  The host rule goes too when it was the last user of ``hostRuleTable``."""
    table = spec.conf.host_rule_table
    host_veth = host_veth_name(spec.container_id)
    ips = list(dict.fromkeys(spec.pod_ips))
    ours = host.link(host_veth)
    if ours is not None:  # every route still through our veth is to one of this pod's addresses
        for route in host.routes:
            if (
                route.oif == host_veth
                and route.table == table
                and route.dst
                and route.dst.rpartition("/")[0] not in ips
            ):
                ips.append(route.dst.rpartition("/")[0])
    ops: list[Op] = [DelLink("host", host_veth)]
    for ip in ips:
        ops.append(DelRoutes("host", _max_prefix(ip), table))
        ops.append(DelNeighbours("host", ip))
        ops.append(DelRule("host", RuleEntry(family_of(ip), table, dst=_max_prefix(ip))))  # Spiderpool's legacy rule
    for family in (4, 6):
        ops.append(DropRuleIfUnused("host", RuleEntry(family, table, RULE_PRIORITY)))
    return Plan(tuple(ops), host_veth, (), tuple(ips))


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
