"""IP addresses and address ranges, IPv4 and IPv6, as sets of integers.

Owns the parsing of Spiderpool's range syntax (``10.0.0.1``, ``10.0.0.10-10.0.0.20``; reference §1.1), the
merged, sorted ``IPSet`` every pool, subnet and reservation is reduced to, and the conversions between
addresses and integers.  Addresses are handled as ``int`` inside sets because pools reach tens of thousands
of addresses and the allocator walks them often; ``ipaddress`` objects are used only at the edges.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator

import attrs

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_ip(text: str, version: int | None = None) -> IPAddress:
    """One address; ``ValueError`` with a readable message when it is not one (of ``version``).  No zone:
    ``ipaddress`` takes ``fd00::1%eth0``, Go's ``net.ParseIP`` (so Spiderpool) does not, and a pool's gateway
    or a CNI result cannot carry one."""
    if "%" in text:
        raise ValueError(f"{text!r} is not an IP address: it has a zone (%...)")
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None
    if version is not None and ip.version != version:
        raise ValueError(f"{text!r} is not an IPv{version} address")
    return ip


def ip_to_int(text: str, version: int | None = None) -> int:
    """The integer value of an address given as text."""
    return int(parse_ip(text, version))


def int_to_ip(value: int, version: int) -> str:
    """The text form of an address given as an integer."""
    if version == 4:
        return str(ipaddress.IPv4Address(value))
    return str(ipaddress.IPv6Address(value))


def parse_network(text: str, version: int | None = None, *, strict: bool = True) -> IPNetwork:
    """A CIDR; with ``strict`` the host bits must be zero (Spiderpool wants the canonical form).  No zone, as
    Go's ``net.ParseCIDR`` takes none (``ipaddress`` takes ``fd00::%eth0/64``)."""
    if "%" in text:
        raise ValueError(f"{text!r} is not a CIDR: it has a zone (%...)")
    try:
        net = ipaddress.ip_network(text, strict=strict)
    except ValueError as exc:
        if strict and "has host bits set" in str(exc):
            fixed = ipaddress.ip_network(text, strict=False)
            raise ValueError(f"unformatted subnet {text!r}, please change it to {str(fixed)!r}") from None
        raise ValueError(f"{text!r} is not a CIDR") from None
    if version is not None and net.version != version:
        raise ValueError(f"{text!r} is not an IPv{version} CIDR")
    return net


def parse_range(text: str, version: int) -> tuple[int, int]:
    """``a`` or ``a-b`` (no spaces, ``a <= b``, one family) as an inclusive integer interval."""
    if any(c.isspace() for c in text):
        raise ValueError(f"IP range {text!r} must not contain spaces")
    first, sep, last = text.partition("-")
    try:
        start = ip_to_int(first, version)
        end = ip_to_int(last, version) if sep else start
    except ValueError as exc:
        if not sep:
            raise
        # NB: name the whole entry; "'' is not an IP address" alone does not say which of many is wrong
        raise ValueError(f"IP range {text!r}: {exc}") from None
    if start > end:
        raise ValueError(f"IP range {text!r} starts after it ends")
    return start, end


def _merge(intervals: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1] + 1:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return tuple(merged)


@attrs.frozen
class IPSet:
    """A set of addresses of one family, kept as sorted, merged, inclusive integer intervals."""

    version: int
    ranges: tuple[tuple[int, int], ...] = attrs.field(default=(), converter=_merge)

    @classmethod
    def parse(cls, version: int, texts: Iterable[str]) -> IPSet:
        """From Spiderpool range strings; ``ValueError`` names the first bad entry."""
        return cls(version, tuple(parse_range(t, version) for t in texts))

    @classmethod
    def of(cls, version: int, addresses: Iterable[int]) -> IPSet:
        """From single integer addresses."""
        return cls(version, tuple((a, a) for a in addresses))

    @classmethod
    def from_network(cls, net: IPNetwork) -> IPSet:
        """Every address of a CIDR, network and broadcast included."""
        return cls(net.version, ((int(net.network_address), int(net.broadcast_address)),))

    def __len__(self) -> int:
        return self.count  # NB: len() raises OverflowError past sys.maxsize (an IPv6 /64); use .count there

    @property
    def count(self) -> int:
        """How many addresses the set holds, exactly (may exceed ``sys.maxsize`` for IPv6)."""
        return sum(end - start + 1 for start, end in self.ranges)

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, int):
            return False
        lo, hi = 0, len(self.ranges)
        while lo < hi:  # binary search: pools keep few ranges, but reservations may keep many
            mid = (lo + hi) // 2
            start, end = self.ranges[mid]
            if value < start:
                hi = mid
            elif value > end:
                lo = mid + 1
            else:
                return True
        return False

    def __iter__(self) -> Iterator[int]:
        for start, end in self.ranges:
            yield from range(start, end + 1)

    def iter_from(self, first: int) -> Iterator[int]:
        """Members ``>= first`` in ascending order."""
        for start, end in self.ranges:
            if end >= first:
                yield from range(max(start, first), end + 1)

    def union(self, other: IPSet) -> IPSet:
        """Addresses in either set."""
        return IPSet(self.version, self.ranges + other.ranges)

    def difference(self, other: IPSet) -> IPSet:
        """Addresses in this set and not in ``other``."""
        result: list[tuple[int, int]] = []
        cut = list(other.ranges)
        i = 0
        for start, end in self.ranges:
            while i < len(cut) and cut[i][1] < start:
                i += 1
            j, cur = i, start
            while j < len(cut) and cut[j][0] <= end:
                if cut[j][0] > cur:
                    result.append((cur, cut[j][0] - 1))
                cur = max(cur, cut[j][1] + 1)
                j += 1
            if cur <= end:
                result.append((cur, end))
        return IPSet(self.version, tuple(result))

    def intersection(self, other: IPSet) -> IPSet:
        """Addresses in both sets."""
        return self.difference(self.difference(other))

    def issubset(self, other: IPSet) -> bool:
        """Whether every address here is also in ``other``."""
        return not self.difference(other)

    def to_strings(self) -> list[str]:
        """Spiderpool's canonical range strings (``a`` or ``a-b``)."""
        out = []
        for start, end in self.ranges:
            first = int_to_ip(start, self.version)
            out.append(first if start == end else f"{first}-{int_to_ip(end, self.version)}")
        return out
