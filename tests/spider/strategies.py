"""Hypothesis strategies for the pure domain, and the plain-Python reference models the tests compare with.

Strategies stay small on purpose: CIDRs of 4 to 256 addresses, a handful of ranges, owners whose pod UIDs
come from a tiny alphabet so that two requests often name the same pod.  The models (``expand``,
``allocatable_model``) use only ``ipaddress`` and ``set[int]``, never ``spider.addr``, so they can judge it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from hypothesis import strategies as st

from spider.kinds import SPIDER_API_VERSION
from spider.pool import Owner

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

V4_BASE = int(ipaddress.IPv4Address("10.0.0.0"))  # inside 10.0.0.0/8
V6_BASE = int(ipaddress.IPv6Address("fd00::"))  # inside fd00::/64

# --- addresses and ranges ------------------------------------------------------------------------------


@st.composite
def v4_cidrs(draw: st.DrawFn) -> ipaddress.IPv4Network:
    """A canonical IPv4 CIDR of prefix /24 to /30 inside 10.0.0.0/8."""
    prefix = draw(st.integers(24, 30))
    host_bits = 32 - prefix
    block = draw(st.integers(0, 2 ** (prefix - 8) - 1))
    return ipaddress.IPv4Network((V4_BASE + (block << host_bits), prefix))


@st.composite
def v6_cidrs(draw: st.DrawFn) -> ipaddress.IPv6Network:
    """A canonical IPv6 CIDR of prefix /120 to /126 inside fd00::/64."""
    prefix = draw(st.integers(120, 126))
    host_bits = 128 - prefix
    block = draw(st.integers(0, 2 ** (prefix - 64) - 1))
    return ipaddress.IPv6Network((V6_BASE + (block << host_bits), prefix))


def cidrs(version: int | None = None) -> st.SearchStrategy[IPNetwork]:
    """Small CIDRs of one family, or of either."""
    if version == 4:
        return v4_cidrs()
    if version == 6:
        return v6_cidrs()
    return st.one_of(v4_cidrs(), v6_cidrs())


def ip_text(value: int, version: int) -> str:
    """The text form of an integer address."""
    return str(ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value))


def range_text(start: int, end: int, version: int) -> str:
    """Spiderpool's ``a`` or ``a-b``."""
    first = ip_text(start, version)
    return first if start == end else f"{first}-{ip_text(end, version)}"


def addresses_in(net: IPNetwork) -> st.SearchStrategy[int]:
    """Integer addresses of ``net``, network and broadcast included."""
    return st.integers(int(net.network_address), int(net.broadcast_address))


@st.composite
def range_lists(draw: st.DrawFn, net: IPNetwork, min_size: int = 0, max_size: int = 4) -> list[str]:
    """Spiderpool range strings inside ``net``; they may overlap, touch, repeat or come in any order."""
    pairs = draw(st.lists(st.tuples(addresses_in(net), addresses_in(net)), min_size=min_size, max_size=max_size))
    return [range_text(min(a, b), max(a, b), net.version) for a, b in pairs]


# --- owners --------------------------------------------------------------------------------------------

pod_uids = st.text(alphabet="abc", min_size=1, max_size=2)  # 12 UIDs: collisions are the point
nics = st.sampled_from(["eth0", "net1"])
container_ids = st.sampled_from(["c1", "c2", "c3"])


@st.composite
def owners(draw: st.DrawFn) -> Owner:
    """A pod interface asking for an address from some sandbox on some node."""
    uid = draw(pod_uids)
    return Owner(
        pod_uid=uid,
        nic=draw(nics),
        namespace="default",
        name=f"pod-{uid}",
        container_id=draw(container_ids),
        node=draw(st.sampled_from(["node-1", "node-2"])),
    )


# --- stored pools --------------------------------------------------------------------------------------


@st.composite
def pool_objects(draw: st.DrawFn, version: int | None = None, name: str = "pool") -> dict[str, Any]:
    """A SpiderIPPool as the store holds it (metadata, spec, empty status); always valid."""
    net = draw(cidrs(version))
    spec: dict[str, Any] = {"subnet": str(net), "ips": draw(range_lists(net, min_size=1, max_size=3))}
    if draw(st.booleans()):
        spec["ipVersion"] = net.version
    exclude = draw(range_lists(net, max_size=2))
    if exclude:
        spec["excludeIPs"] = exclude
    gateway = draw(st.none() | addresses_in(net))
    if gateway is not None:
        spec["gateway"] = ip_text(gateway, net.version)
        if draw(st.booleans()):
            dst = "192.168.0.0/16" if net.version == 4 else "fd10::/64"
            spec["routes"] = [{"dst": dst, "gw": spec["gateway"]}]
    return {
        "apiVersion": SPIDER_API_VERSION,
        "kind": "SpiderIPPool",
        "metadata": {"name": name},
        "spec": spec,
        "status": {},
    }


# --- reference models ----------------------------------------------------------------------------------


def expand(texts: Iterable[str]) -> set[int]:
    """Every address the range strings name, as integers (no validation: inputs come from strategies)."""
    out: set[int] = set()
    for text in texts:
        first, _, last = text.partition("-")
        start = int(ipaddress.ip_address(first))
        end = int(ipaddress.ip_address(last)) if last else start
        out.update(range(start, end + 1))
    return out


def allocatable_model(spec: Mapping[str, Any], reserved: Iterable[int] = ()) -> set[int]:
    """What a pool may hand out: ips - excludeIPs - gateway - reserved - IPv4 network/broadcast."""
    net = ipaddress.ip_network(spec["subnet"])
    out = expand(spec.get("ips", ())) - expand(spec.get("excludeIPs", ())) - set(reserved)
    if spec.get("gateway"):
        out.discard(int(ipaddress.ip_address(spec["gateway"])))
    if net.version == 4 and net.prefixlen < 31:
        out -= {int(net.network_address), int(net.broadcast_address)}
    return out
