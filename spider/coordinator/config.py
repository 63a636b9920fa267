"""The coordinator's configuration: the merge NAD conf -> SpiderCoordinator -> default, into one value.

Owns (reference §5.1, §4.3):

- ``ClusterConfig``: the agent API's ``CoordinatorConfig``, read from a Synced SpiderCoordinator plus the pod's
  ``ipam.spidernet.io/default-route-nic`` annotation (``GET /v1/coordinator/config``);
- ``CoordinatorConf``: the plugin configuration after the merge NAD conf -> SpiderCoordinator -> default,
  validated field by field with Spiderpool's names (``InvalidNetConf`` / ``InvalidSpec`` name the field);
- the field parsers they share: CIDRs, Go durations, ``policyRoutes``, ``podMACPrefix``, ``detectOptions``.

Departures from Spiderpool, on purpose: ``detectIPConflict`` / ``detectGateway`` / ``detectOptions`` work
again in the coordinator configuration (Spiderpool moved detection to its IPAM plugin and now ignores them
here); an explicit ``ipam_unix_socket_path`` in the configuration names the agent's socket (Spiderpool always
uses the default).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs

from spider import limits
from spider.cni import DEFAULT_SOCKET, JsonObject, json_type
from spider.coordinator.errors import CoordinatorNotReady
from spider.coordinator.observed import family_of
from spider.errors import InvalidNetConf, InvalidSpec

KIND: Final = "SpiderCoordinator"
DEFAULT_ROUTE_NIC_ANNOTATION: Final = "ipam.spidernet.io/default-route-nic"
MODES: Final = ("auto", "underlay", "overlay", "disable")
DEFAULT_FIRST_NIC: Final = "eth0"
"""The pod's first interface, made by the main CNI (``podDefaultCniNic`` when the NAD names none)."""
DEFAULT_HOST_RULE_TABLE: Final = 500
DEFAULT_VETH_MTU: Final = 1500
MIN_VETH_MTU: Final = 68
MAX_VETH_MTU: Final = 65535
"""The MTUs the kernel lets a veth have (ETH_MIN_MTU, ETH_MAX_MTU)."""
_MAC_PREFIX: Final = re.compile(r"^[a-fA-F0-9]{2}[:-][a-fA-F0-9]{2}$")
_DURATION: Final = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS: Final = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


# --- small parsers ------------------------------------------------------------------------------------------


def normalize_cidr(text: str) -> str:
    """A CIDR in canonical form; a bare address becomes ``/32`` or ``/128`` (as Spiderpool's webhook does)."""
    text = text.strip()
    if "%" in text:  # NB: ipaddress takes an IPv6 zone (fe80::%eth0); a route cannot, and the kernel said CNI 5
        raise ValueError(f"{text!r} is scoped (%zone): not a CIDR")
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
        if "%" in raw["gw"]:
            raise ValueError(f"{where}: gw {raw['gw']!r} is scoped (%zone): not an address")
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
    if raw > limits.MAX_U32:  # NB: the CRD sets no maximum; netlink carries 32 bits (a route table, an MTU, a queue)
        raise ValueError(f"{where} must be at most {limits.MAX_U32}, got {raw}")
    return raw


def _veth_mtu(where: str, raw: object) -> int | None:
    mtu = _int(where, raw)
    if mtu is not None and not MIN_VETH_MTU <= mtu <= MAX_VETH_MTU:  # NB: Spiderpool checks > 0; the kernel's range
        raise ValueError(f"{where} must be between {MIN_VETH_MTU} and {MAX_VETH_MTU} (a veth's range), got {mtu}")
    return mtu


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
            mtu = _veth_mtu("vethMTU", spec.get("vethMTU"))
            txq = _int("txQueueLen", spec.get("txQueueLen")) or 0
            if txq < 0:
                raise ValueError(f"txQueueLen must not be negative, got {txq}")
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
            mtu = _veth_mtu("vethMTU", conf.get("vethMTU"))
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
