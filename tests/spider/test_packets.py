"""ARP and NDP frames, byte for byte: what detection and announcements put on the wire and read back."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spider import packets

MAC = "02:00:00:00:00:01"
OTHER = "02:00:00:00:00:02"


def checksum_ok(frame: bytes) -> bool:
    """Recompute the ICMPv6 checksum over the pseudo-header: a valid one sums to zero."""
    src, dst = frame[22:38], frame[38:54]
    length = struct.unpack_from("!H", frame, 18)[0]
    message = frame[54 : 54 + length]
    data = src + dst + struct.pack("!I3xB", length, 58) + message
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def test_an_arp_probe_asks_from_the_unspecified_address_to_everyone() -> None:
    frame = packets.arp_probe(MAC, "10.0.0.5")
    assert frame[:6] == b"\xff" * 6
    assert frame[6:12] == packets.mac_bytes(MAC)
    assert frame[12:14] == b"\x08\x06"
    assert struct.unpack_from("!H", frame, 20)[0] == packets.ARP_REQUEST
    assert frame[28:32] == b"\0\0\0\0"  # sender 0.0.0.0: nobody's cache learns anything from a probe
    assert frame[38:42] == ipaddress.IPv4Address("10.0.0.5").packed


def test_a_gratuitous_arp_names_the_address_as_sender_and_target() -> None:
    frame = packets.gratuitous_arp(MAC, "10.0.0.5")
    assert frame[28:32] == frame[38:42] == ipaddress.IPv4Address("10.0.0.5").packed


def test_an_arp_reply_is_parsed_into_its_sender() -> None:
    reply = packets._arp(packets.ARP_REPLY, OTHER, "10.0.0.5", packets.mac_bytes(MAC), "10.0.0.9", MAC)
    assert packets.parse_arp_reply(reply) == packets.NeighbourAnswer("10.0.0.5", OTHER)


def test_requests_and_other_frames_are_not_replies() -> None:
    assert packets.parse_arp_reply(packets.arp_request(MAC, "10.0.0.9", "10.0.0.1")) is None
    assert packets.parse_arp_reply(b"\0" * 20) is None
    assert packets.parse_arp_reply(packets.unsolicited_advertisement(MAC, "fd00::5")) is None


def test_the_solicited_node_group_keeps_the_low_24_bits() -> None:
    assert packets.solicited_node("fd00::1:2:3:4") == "ff02::1:ff03:4"
    assert packets.multicast_mac("ff02::1:ff03:4") == "33:33:ff:03:00:04"


def test_duplicate_address_detection_comes_from_the_unspecified_address_to_the_solicited_group() -> None:
    frame = packets.dad_solicitation(MAC, "fd00::5")
    assert frame[:6] == packets.mac_bytes("33:33:ff:00:00:05")
    assert frame[22:38] == b"\0" * 16
    assert ipaddress.IPv6Address(frame[38:54]) == ipaddress.IPv6Address("ff02::1:ff00:5")
    assert frame[21] == 255  # hop limit: receivers drop NDP that may have crossed a router
    assert frame[54] == packets.NEIGHBOUR_SOLICITATION
    assert len(frame) == 14 + 40 + 24  # no source link-layer option from the unspecified address (RFC 4862)
    assert checksum_ok(frame)


def test_a_gateway_solicitation_carries_our_link_layer_address() -> None:
    frame = packets.neighbour_solicitation(MAC, "fd00::5", "fd00::1")
    assert ipaddress.IPv6Address(frame[22:38]) == ipaddress.IPv6Address("fd00::5")
    assert frame[-8:] == b"\x01\x01" + packets.mac_bytes(MAC)
    assert checksum_ok(frame)


def test_an_unsolicited_advertisement_overrides_and_is_read_back() -> None:
    frame = packets.unsolicited_advertisement(MAC, "fd00::5")
    assert frame[:6] == packets.mac_bytes("33:33:00:00:00:01")
    flags = struct.unpack_from("!I", frame, 58)[0]
    assert flags & 0x20000000  # override
    assert not flags & 0x40000000  # not solicited
    assert checksum_ok(frame)
    assert packets.parse_advertisement(frame) == packets.NeighbourAnswer("fd00::5", MAC)


def test_a_solicitation_is_not_an_advertisement() -> None:
    assert packets.parse_advertisement(packets.dad_solicitation(MAC, "fd00::5")) is None


@given(st.ip_addresses(v=6), st.binary(min_size=6, max_size=6))
def test_every_advertisement_round_trips(ip: ipaddress.IPv6Address, raw: bytes) -> None:
    mac = packets.mac_text(raw)
    frame = packets.unsolicited_advertisement(mac, str(ip))
    assert checksum_ok(frame)
    assert packets.parse_advertisement(frame) == packets.NeighbourAnswer(str(ip), mac)


@pytest.mark.parametrize("bad", ["02:00:00:00:00", "zz:00:00:00:00:00", "0200.0000.0001"])
def test_a_malformed_mac_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not a MAC"):
        packets.mac_bytes(bad)
