"""Ethernet frames for neighbour discovery: ARP (IPv4) and NDP (IPv6), built and parsed without I/O.

Owns the bytes of every frame the agent sends to detect an address conflict or a missing gateway, and to
announce an address after it is assigned (reference §12.4):

- ARP probe (RFC 5227: sender 0.0.0.0, "who has X?"), ARP request (sender the pod's address), gratuitous ARP
  (sender and target both the pod's address);
- NDP neighbour solicitation (duplicate address detection from ``::``, or a solicitation for the gateway from
  the pod's address) and unsolicited neighbour advertisement (override flag, target link-layer option);
- parsing of ARP replies and neighbour advertisements into ``(ip, mac)`` answers.

It never opens a socket: ``actors.node.probing`` sends and receives these frames on a packet socket the NodeActor
opened inside the pod's network namespace.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Final

import attrs

ETH_P_ARP: Final = 0x0806
ETH_P_IPV6: Final = 0x86DD
ARP_REQUEST: Final = 1
ARP_REPLY: Final = 2
ICMPV6_NEXT_HEADER: Final = 58
NEIGHBOUR_SOLICITATION: Final = 135
NEIGHBOUR_ADVERTISEMENT: Final = 136
OPT_SOURCE_LL: Final = 1
OPT_TARGET_LL: Final = 2
BROADCAST: Final = "ff:ff:ff:ff:ff:ff"
ALL_NODES: Final = "ff02::1"
_ZERO_MAC: Final = b"\x00" * 6


def mac_bytes(mac: str) -> bytes:
    """``aa:bb:cc:dd:ee:ff`` (or with ``-``) as six bytes; ``ValueError`` for anything else."""
    parts = mac.replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p) for p in parts):
        raise ValueError(f"not a MAC address: {mac!r}")
    return bytes(int(p, 16) for p in parts)


def mac_text(raw: bytes) -> str:
    """Six bytes as ``aa:bb:cc:dd:ee:ff``."""
    return ":".join(f"{b:02x}" for b in raw)


def solicited_node(ip: str) -> str:
    """The solicited-node multicast group of an IPv6 address (RFC 4291 §2.7.1)."""
    low = ipaddress.IPv6Address(ip).packed[-3:]
    return str(ipaddress.IPv6Address(b"\xff\x02" + b"\x00" * 9 + b"\x01\xff" + low))


def multicast_mac(group: str) -> str:
    """The Ethernet address an IPv6 multicast group maps to (33:33 + the last four bytes)."""
    return mac_text(b"\x33\x33" + ipaddress.IPv6Address(group).packed[-4:])


def _ethernet(dst: str, src: str, ethertype: int) -> bytes:
    return mac_bytes(dst) + mac_bytes(src) + struct.pack("!H", ethertype)


def _arp(op: int, sender_mac: str, sender_ip: str, target_mac: bytes, target_ip: str, dst: str) -> bytes:
    body = struct.pack("!HHBBH", 1, 0x0800, 6, 4, op)
    body += mac_bytes(sender_mac) + ipaddress.IPv4Address(sender_ip).packed
    body += target_mac + ipaddress.IPv4Address(target_ip).packed
    return _ethernet(dst, sender_mac, ETH_P_ARP) + body


def arp_probe(mac: str, ip: str) -> bytes:
    """ "Who has ``ip``?" from ``0.0.0.0``: only a host that already holds ``ip`` answers (RFC 5227)."""
    return _arp(ARP_REQUEST, mac, "0.0.0.0", _ZERO_MAC, ip, BROADCAST)


def arp_request(mac: str, ip: str, target: str) -> bytes:
    """ "Who has ``target``? Tell ``ip``": the gateway check."""
    return _arp(ARP_REQUEST, mac, ip, _ZERO_MAC, target, BROADCAST)


def gratuitous_arp(mac: str, ip: str) -> bytes:
    """An ARP request for our own address, so neighbours and switches learn ``ip`` is at ``mac`` now."""
    return _arp(ARP_REQUEST, mac, ip, _ZERO_MAC, ip, BROADCAST)


@attrs.frozen
class NeighbourAnswer:
    """Someone said ``ip`` is at ``mac`` (an ARP reply or a neighbour advertisement)."""

    ip: str
    mac: str


def parse_arp_reply(frame: bytes) -> NeighbourAnswer | None:
    """The sender of an ARP reply; ``None`` for any other frame."""
    if len(frame) < 42 or struct.unpack_from("!H", frame, 12)[0] != ETH_P_ARP:
        return None
    htype, ptype, hlen, plen, op = struct.unpack_from("!HHBBH", frame, 14)
    if (htype, ptype, hlen, plen, op) != (1, 0x0800, 6, 4, ARP_REPLY):
        return None
    return NeighbourAnswer(str(ipaddress.IPv4Address(frame[28:32])), mac_text(frame[22:28]))


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _icmpv6(src: str, dst: str, dst_mac: str, src_mac: str, message: bytes) -> bytes:
    s, d = ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed
    pseudo = s + d + struct.pack("!I3xB", len(message), ICMPV6_NEXT_HEADER)
    checksum = _checksum(pseudo + message)
    message = message[:2] + struct.pack("!H", checksum) + message[4:]
    # NB: hop limit 255 is required: a receiver drops NDP from anything that may have crossed a router.
    header = struct.pack("!IHBB", 6 << 28, len(message), ICMPV6_NEXT_HEADER, 255) + s + d
    return _ethernet(dst_mac, src_mac, ETH_P_IPV6) + header + message


def _ll_option(kind: int, mac: str) -> bytes:
    return struct.pack("!BB", kind, 1) + mac_bytes(mac)


def dad_solicitation(mac: str, ip: str) -> bytes:
    """Duplicate address detection for ``ip`` (RFC 4862 §5.4.2): from ``::``, no source link-layer option."""
    group = solicited_node(ip)
    message = struct.pack("!BBHI", NEIGHBOUR_SOLICITATION, 0, 0, 0) + ipaddress.IPv6Address(ip).packed
    return _icmpv6("::", group, multicast_mac(group), mac, message)


def neighbour_solicitation(mac: str, ip: str, target: str) -> bytes:
    """ "Who has ``target``?" from ``ip``, to the target's solicited-node group: the gateway check."""
    group = solicited_node(target)
    message = struct.pack("!BBHI", NEIGHBOUR_SOLICITATION, 0, 0, 0) + ipaddress.IPv6Address(target).packed
    return _icmpv6(ip, group, multicast_mac(group), mac, message + _ll_option(OPT_SOURCE_LL, mac))


def unsolicited_advertisement(mac: str, ip: str) -> bytes:
    """An unsolicited neighbour advertisement (override flag set) telling all nodes ``ip`` is at ``mac``."""
    flags = 0x20000000  # O: override cached entries; not S (unsolicited), not R (not a router)
    message = struct.pack("!BBHI", NEIGHBOUR_ADVERTISEMENT, 0, 0, flags) + ipaddress.IPv6Address(ip).packed
    return _icmpv6(ip, ALL_NODES, multicast_mac(ALL_NODES), mac, message + _ll_option(OPT_TARGET_LL, mac))


def parse_advertisement(frame: bytes) -> NeighbourAnswer | None:
    """The target and link-layer address of a neighbour advertisement; ``None`` for any other frame.

    The address is the target link-layer option when present, else the frame's source address.
    """
    if len(frame) < 14 + 40 + 24 or struct.unpack_from("!H", frame, 12)[0] != ETH_P_IPV6:
        return None
    if frame[14 + 6] != ICMPV6_NEXT_HEADER or frame[14 + 40] != NEIGHBOUR_ADVERTISEMENT:
        return None
    payload_length = struct.unpack_from("!H", frame, 14 + 4)[0]
    icmp = frame[54 : 54 + payload_length]
    target = str(ipaddress.IPv6Address(icmp[8:24]))
    mac = mac_text(frame[6:12])
    options = icmp[24:]
    while len(options) >= 8:
        kind, units = options[0], options[1]
        if units == 0:
            break
        if kind == OPT_TARGET_LL:
            mac = mac_text(options[2:8])
        options = options[units * 8 :]
    return NeighbourAnswer(target, mac)
