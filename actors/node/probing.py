"""Address conflict and gateway detection by ARP and NDP, and the announcements after an address is assigned.

Owns the timing and the decisions of reference §12.4, run by the agent inside the pod's network namespace:
the NodeActor opens a packet socket on the pod's interface (a socket stays in the namespace it was made
in), and this module sends and reads frames on it with trio, so the netlink thread is never blocked by a
probe's waiting.

- conflict (IPv4): ARP probes from ``0.0.0.0``; an ARP reply for the address from another MAC is a conflict.
  (IPv6): duplicate address detection solicitations from ``::``; an advertisement for the address from
  another MAC is a conflict.  Silence through every window means the address is free.
- gateway: ARP requests (IPv4) or neighbour solicitations (IPv6) from the pod's address; an answer from the
  gateway means it is reachable, silence through every window means it is not.
- announce: one gratuitous ARP (IPv4) or unsolicited neighbour advertisement (IPv6) per address.

Spiderpool's timings by default (``DetectOptions``): 3 probes, each followed by a 100 ms listening window; a
conflict check runs before the gateway check of the same family (Spiderpool #4475), the families in parallel.
Spiderpool stops at the first silent window; we keep probing through every window (at most 300 ms with the
defaults, inside Spiderpool's 1 s and 500 ms budgets), so one lost frame does not decide.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Sequence

import trio

from actors.node.actor import NodeHandle
from spider import packets
from spider.coordinator.config import DetectOptions
from spider.coordinator.errors import AddressConflict, GatewayUnreachable, InterfaceSetupFailed
from spider.coordinator.request import PrevIP
from spider.errors import SpiderError

log = logging.getLogger(__name__)

PACKET_OUTGOING = 4
"""``sll_pkttype`` of a frame this host sent: a packet socket sees its own frames too."""

DEFAULT_OPTIONS = DetectOptions()

Matcher = Callable[[bytes], packets.NeighbourAnswer | None]


class _Probe:
    """A packet socket in the pod's namespace, wrapped for trio."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = trio.socket.from_stdlib_socket(sock)
        self.mac = packets.mac_text(sock.getsockname()[4][:6])

    def close(self) -> None:
        self.sock.close()

    async def send(self, frame: bytes) -> OSError | None:
        try:
            await self.sock.send(frame)
        except OSError as exc:  # a down link or a full queue: counts as a failed attempt
            return exc
        return None

    async def exchange(
        self, frame: bytes, match: Matcher, want_ip: str, options: DetectOptions, what: str
    ) -> packets.NeighbourAnswer | None:
        """Send ``frame`` up to ``options.retries`` times; the first answer for ``want_ip`` from another MAC."""
        failures: list[OSError] = []
        for attempt in range(options.retries):
            if attempt and options.interval:
                await trio.sleep(options.interval)
            error = await self.send(frame)
            if error is not None:
                failures.append(error)
                continue
            with trio.move_on_after(options.timeout):
                while True:
                    data, address = await self.sock.recvfrom(65536)
                    if address[2] == PACKET_OUTGOING:
                        continue
                    answer = match(data)
                    if answer is not None and answer.ip == want_ip and answer.mac != self.mac:
                        return answer
        if len(failures) == options.retries:
            raise InterfaceSetupFailed(action=f"sending {what}", reason=str(failures[-1]))
        return None


async def _open(node: NodeHandle, netns: str, ifname: str, ethertype: int) -> _Probe:
    return _Probe(await node.open_probe(netns, ifname, ethertype))


async def _detect_family(
    node: NodeHandle,
    netns: str,
    ifname: str,
    ip: PrevIP,
    conflict: bool,
    gateway: bool,
    options: DetectOptions,
) -> None:
    v4 = ip.family == 4
    probe = await _open(node, netns, ifname, packets.ETH_P_ARP if v4 else packets.ETH_P_IPV6)
    try:
        match = packets.parse_arp_reply if v4 else packets.parse_advertisement
        if conflict:
            frame = packets.arp_probe(probe.mac, ip.ip) if v4 else packets.dad_solicitation(probe.mac, ip.ip)
            found = await probe.exchange(frame, match, ip.ip, options, "address conflict probes")
            if found is not None:
                raise AddressConflict(interface=ifname, ip=ip.ip, mac=found.mac)
            log.debug("no conflict for %s on %s", ip.ip, ifname)
        if gateway and ip.gateway:
            frame = (
                packets.arp_request(probe.mac, ip.ip, ip.gateway)
                if v4
                else packets.neighbour_solicitation(probe.mac, ip.ip, ip.gateway)
            )
            found = await probe.exchange(frame, match, ip.gateway, options, "gateway probes")
            if found is None:
                waited = options.retries * (options.timeout + options.interval)
                raise GatewayUnreachable(interface=ifname, gateway=ip.gateway, waited=round(waited, 3))
            log.debug("gateway %s of %s is at %s", ip.gateway, ifname, found.mac)
    finally:
        probe.close()


async def detect(
    node: NodeHandle,
    netns: str,
    ifname: str,
    ips: Sequence[PrevIP],
    *,
    conflict: bool,
    gateway: bool,
    options: DetectOptions = DEFAULT_OPTIONS,
) -> None:
    """Check every address of the interface (families in parallel); raises ``AddressConflict`` or
    ``GatewayUnreachable`` for the first problem found."""
    if not (conflict or gateway):
        return
    errors: list[BaseException] = []

    async def one(ip: PrevIP) -> None:
        try:
            await _detect_family(node, netns, ifname, ip, conflict, gateway, options)
        except SpiderError as exc:  # NB: every one (the namespace gone, a netlink timeout), not a bare group
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        for ip in ips:
            nursery.start_soon(one, ip)
    conflicts = [e for e in errors if isinstance(e, AddressConflict)]
    if conflicts or errors:
        raise (conflicts or errors)[0]


async def announce(node: NodeHandle, netns: str, ifname: str, ips: Sequence[str]) -> int:
    """One gratuitous ARP or unsolicited neighbour advertisement per address; returns how many went out."""
    sent = 0
    for family, ethertype in ((4, packets.ETH_P_ARP), (6, packets.ETH_P_IPV6)):
        mine = [ip for ip in ips if (6 if ":" in ip else 4) == family]
        if not mine:
            continue
        probe = await _open(node, netns, ifname, ethertype)
        try:
            for ip in mine:
                frame = (
                    packets.gratuitous_arp(probe.mac, ip)
                    if family == 4
                    else packets.unsolicited_advertisement(probe.mac, ip)
                )
                error = await probe.send(frame)
                if error is None:
                    sent += 1
                else:
                    log.warning("announcing %s on %s failed: %s", ip, ifname, error)
        finally:
            probe.close()
    return sent
