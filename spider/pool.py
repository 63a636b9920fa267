"""SpiderIPPool and SpiderReservedIP as domain values, and the ledger of who holds which address in a pool.

Owns:
- ``IPPool``: a pool's spec with Spiderpool's v2beta1 field names (reference §1.1), parsed and checked from the
  stored object by ``IPPool.from_object``;
- ``ReservedIP``: a SpiderReservedIP (reference §1.3);
- ``Owner`` and ``Record``: who holds an address (pod UID and interface are the key, DESIGN §5.2), and since
  when (``addedAt``): ``ADD_WINDOW`` and ``RECLAIM_AFTER``, the one rule an ADD and the reclaim of records no
  endpoint accounts for share, so that reclaim never frees a record whose ADD may still answer it;
- ``PoolLedger``: the allocation state of one pool and the choice of a free address (lowest first, like
  Spiderpool's ``genRandomIP``), with the status encoding (``allocatedIPs`` JSON string, counts, our
  ``releasedIPs``), cached per address so a write joins text, and ``catch_up``: levelling a ledger with a
  newer stored version of its pool by comparing those per-address fragments, parsing only what differs.

Pure: no I/O and no clocks (times are passed in).  The ledger is mutable on purpose: exactly one PoolActor owns
each ledger, and copying a map of 20,000 records per allocation would make large pools slow.  Whoever needs a
snapshot calls ``copy()``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import attrs

from spider import limits
from spider.addr import IPNetwork, IPSet, int_to_ip, ip_to_int, parse_ip, parse_network
from spider.errors import InvalidSpec, PoolExhausted

KIND = "SpiderIPPool"
MAX_COUNT = 2**63 - 1
"""Counts are int64 in the CRD; Spiderpool caps a huge IPv6 pool's ``totalIPCount`` here."""
ANNO_COOLDOWN = "ipam.spider.io/release-cooldown-seconds"
"""Ours: seconds a released address rests before this pool hands it out again (overrides the agent's)."""

ADD_WINDOW = 60.0
"""Seconds an ADD may take from its start (the time its records carry as ``addedAt``) until it answers: one that
takes longer gives back what it took and fails with CNI 11 instead.  It covers what an ADD may spend once it has
started: 20 s losing pool write races (``--conflict-budget``), 10 s on endpoint conflicts
(``IpamSettings.endpoint_budget``), 8 s per store call riding out an outage (``--store-outage-budget``), and the
calls themselves (``tests/ipam/test_reclaim_inflight.py`` keeps it above the sum of those defaults)."""
CLOCK_SKEW = 60.0
"""Seconds the wall clocks of two machines (the agent that stamped a record, whoever reclaims it) may disagree."""
RECLAIM_AFTER = 2 * ADD_WINDOW + CLOCK_SKEW
"""Seconds after its ``addedAt`` before a record no endpoint accounts for may be reclaimed (``spider check
--reclaim``).  Its ADD answers within ``ADD_WINDOW`` of its start; a repeated ADD keeps a stamp up to
``ADD_WINDOW`` old (so a kubelet retry writes nothing), so its start may follow the stamp by that much; the clocks
may differ by ``CLOCK_SKEW``.  Any ADD that may still answer the record has therefore written its endpoint before
a scan that finds the record this old reads the endpoints."""


@attrs.frozen
class Route:
    """A route a pool gives to the interfaces it serves (``spec.routes[]``)."""

    dst: str
    gw: str

    def to_json(self) -> dict[str, str]:
        """The wire and CR form ``{"dst": ..., "gw": ...}``."""
        return {"dst": self.dst, "gw": self.gw}


def _routes(name: str, kind: str, raw: object, version: int, subnet: IPNetwork) -> tuple[Route, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InvalidSpec(kind=kind, name=name, reason="'spec.routes' must be a list")
    out: list[Route] = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("dst"), str) or not isinstance(item.get("gw"), str):
            raise InvalidSpec(kind=kind, name=name, reason=f"'spec.routes' entry {item!r} needs string 'dst' and 'gw'")
        try:
            dst = parse_network(item["dst"], version, strict=False)  # NB: net.ParseCIDR keeps the network
            gw = parse_ip(item["gw"], version)
        except ValueError as exc:
            raise InvalidSpec(kind=kind, name=name, reason=f"'spec.routes' entry {item!r}: {exc}") from None
        if gw not in subnet:
            raise InvalidSpec(
                kind=kind, name=name, reason=f"'spec.routes' gateway {item['gw']!r} is not in subnet {subnet}"
            )
        # Spiderpool's webhook rules (reference §1.1): the default route comes from 'spec.gateway' only, and
        # one destination has one route; either would give the pod two conflicting routes.
        if dst.prefixlen == 0:
            why = "please specify 'spec.gateway' to configure the default route"
            raise InvalidSpec(kind=kind, name=name, reason=f"'spec.routes' entry {item!r}: {why}")
        if any(r.dst == str(dst) for r in out):
            raise InvalidSpec(
                kind=kind, name=name, reason=f"'spec.routes' has a duplicate route with the dst {str(dst)!r}"
            )
        out.append(Route(str(dst), str(gw)))
    return tuple(out)


def _str_list(name: str, kind: str, field: str, raw: object) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise InvalidSpec(kind=kind, name=name, reason=f"'spec.{field}' must be a list of strings")
    return tuple(raw)


def _selector(name: str, kind: str, field: str, raw: object) -> Mapping[str, Any] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InvalidSpec(kind=kind, name=name, reason=f"'spec.{field}' must be a label selector object")
    return raw


@attrs.frozen
class IPPool:
    """A SpiderIPPool's spec and the metadata allocation depends on."""

    name: str
    version: int
    subnet: IPNetwork
    ips: IPSet
    exclude_ips: IPSet
    gateway: str | None = None
    routes: tuple[Route, ...] = ()
    default: bool = False
    disable: bool = False
    node_name: tuple[str, ...] = ()
    namespace_name: tuple[str, ...] = ()
    multus_name: tuple[str, ...] = ()
    node_affinity: Mapping[str, Any] | None = None
    namespace_affinity: Mapping[str, Any] | None = None
    pod_affinity: Mapping[str, Any] | None = None
    terminating: bool = False
    labels: Mapping[str, str] = attrs.field(factory=dict)
    cooldown: float | None = None
    """Seconds before a released address is reused (annotation ``ANNO_COOLDOWN``); ``None``: the agent's."""

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> IPPool:
        """Parse a stored SpiderIPPool; ``InvalidSpec`` says what is wrong."""
        meta = obj.get("metadata") or {}
        name = str(meta.get("name", ""))
        spec = obj.get("spec") or {}

        def bad(reason: str) -> InvalidSpec:
            return InvalidSpec(kind=KIND, name=name, reason=reason)

        subnet_text = spec.get("subnet")
        if not isinstance(subnet_text, str):
            raise bad("'spec.subnet' is required")
        version = spec.get("ipVersion")
        try:
            subnet = parse_network(subnet_text, version if version in (4, 6) else None)
        except ValueError as exc:
            raise bad(f"'spec.subnet': {exc}") from None
        if version is None:
            version = subnet.version
        elif version not in (4, 6):
            raise bad(f"'spec.ipVersion' must be 4 or 6, not {version!r}")
        whole = IPSet.from_network(subnet)
        try:
            ips = IPSet.parse(version, _str_list(name, KIND, "ips", spec.get("ips")))
        except ValueError as exc:
            raise bad(f"'spec.ips': {exc}") from None
        try:
            exclude = IPSet.parse(version, _str_list(name, KIND, "excludeIPs", spec.get("excludeIPs")))
        except ValueError as exc:
            raise bad(f"'spec.excludeIPs': {exc}") from None
        if not ips.issubset(whole):
            raise bad(f"'spec.ips' {ips.difference(whole).to_strings()} do not match base subnet {subnet}")
        if not exclude.issubset(whole):
            raise bad(f"'spec.excludeIPs' {exclude.difference(whole).to_strings()} do not match subnet {subnet}")
        gateway = spec.get("gateway")
        if gateway is not None:
            try:
                gw = parse_ip(str(gateway), version)
            except ValueError as exc:
                raise bad(f"'spec.gateway': {exc}") from None
            if gw not in subnet:
                raise bad(f"'spec.gateway' {gateway!r} is not in subnet {subnet}")
            gateway = str(gw)
        cooldown = (meta.get("annotations") or {}).get(ANNO_COOLDOWN)
        if cooldown is not None:
            try:
                cooldown = float(cooldown)
                if cooldown < 0:
                    raise ValueError("negative")
            except (ValueError, TypeError, OverflowError):
                raise bad(f"annotation {ANNO_COOLDOWN} must be a number of seconds >= 0, not {cooldown!r}") from None
        return cls(
            name=name,
            version=version,
            subnet=subnet,
            ips=ips,
            exclude_ips=exclude,
            gateway=gateway,
            routes=_routes(name, KIND, spec.get("routes"), version, subnet),
            default=bool(spec.get("default", False)),
            disable=bool(spec.get("disable", False)),
            node_name=_str_list(name, KIND, "nodeName", spec.get("nodeName")),
            namespace_name=_str_list(name, KIND, "namespaceName", spec.get("namespaceName")),
            multus_name=_str_list(name, KIND, "multusName", spec.get("multusName")),
            node_affinity=_selector(name, KIND, "nodeAffinity", spec.get("nodeAffinity")),
            namespace_affinity=_selector(name, KIND, "namespaceAffinity", spec.get("namespaceAffinity")),
            pod_affinity=_selector(name, KIND, "podAffinity", spec.get("podAffinity")),
            terminating=bool(meta.get("deletionTimestamp")),
            labels=dict(meta.get("labels") or {}),
            cooldown=cooldown,
        )

    @property
    def prefix_length(self) -> int:
        """The subnet's prefix length, used in every ``ip/prefix`` this pool hands out."""
        return self.subnet.prefixlen

    @property
    def total(self) -> IPSet:
        """``ips - excludeIPs``: what Spiderpool counts as ``totalIPCount``."""
        return self.ips.difference(self.exclude_ips)

    def allocatable(self, reserved: IPSet | None = None) -> IPSet:
        """Addresses that may be handed out: total minus reserved, gateway, and IPv4 network/broadcast.

        Spiderpool would hand out the network or broadcast address if ``ips`` listed it; a pod with such an
        address cannot talk, so we never do.
        """
        blocked = [ip_to_int(self.gateway)] if self.gateway else []
        if self.version == 4 and self.subnet.prefixlen < 31:
            blocked += [int(self.subnet.network_address), int(self.subnet.broadcast_address)]
        out = self.total.difference(IPSet.of(self.version, blocked))
        if reserved is not None and reserved.version == self.version:
            out = out.difference(reserved)
        return out


@attrs.frozen
class ReservedIP:
    """A SpiderReservedIP: addresses no pool of that family hands out (reference §1.3)."""

    name: str
    version: int
    ips: IPSet
    terminating: bool = False

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> ReservedIP:
        """Parse a stored SpiderReservedIP; the family comes from ``ipVersion`` or the first entry."""
        meta = obj.get("metadata") or {}
        name = str(meta.get("name", ""))
        spec = obj.get("spec") or {}
        texts = _str_list(name, "SpiderReservedIP", "ips", spec.get("ips"))
        version = spec.get("ipVersion")
        if version is None and texts:
            try:
                version = parse_ip(texts[0].partition("-")[0]).version
            except ValueError as exc:
                raise InvalidSpec(kind="SpiderReservedIP", name=name, reason=str(exc)) from None
        if version not in (4, 6):
            raise InvalidSpec(kind="SpiderReservedIP", name=name, reason="'spec.ipVersion' cannot be derived")
        try:
            ips = IPSet.parse(version, texts)
        except ValueError as exc:
            raise InvalidSpec(kind="SpiderReservedIP", name=name, reason=str(exc)) from None
        return cls(name=name, version=version, ips=ips, terminating=bool(meta.get("deletionTimestamp")))


def reserved_set(version: int, reservations: Iterable[ReservedIP]) -> IPSet:
    """The union of every live reservation of one family."""
    out = IPSet(version)
    for r in reservations:
        if r.version == version and not r.terminating:
            out = out.union(r.ips)
    return out


def _to_millisecond(seconds: float) -> float:
    return round(seconds, 3)


@attrs.frozen
class Owner:
    """Who asks for an address: a pod's interface, with the sandbox (container) and node of the request."""

    pod_uid: str
    nic: str
    namespace: str = ""
    name: str = ""
    container_id: str = ""
    node: str = ""
    added_at: float | None = attrs.field(default=None, converter=attrs.converters.optional(_to_millisecond))
    """When the ADD asking started (wall-clock Unix seconds, to the millisecond): the ``addedAt`` of the records
    it writes.  ``None``: unstamped (the record carries no ``addedAt``)."""

    @property
    def key(self) -> tuple[str, str]:
        """Allocation key: a pod UID and an interface hold at most one address per pool."""
        return self.pod_uid, self.nic

    @property
    def pod(self) -> str:
        """``namespace/name`` as Spiderpool writes it in ``allocatedIPs``."""
        return f"{self.namespace}/{self.name}"


def _avoids_below(avoid: IPSet | None, first: int, end: int) -> bool:
    """Whether ``avoid`` holds an address from ``first`` up to, not including, ``end``."""
    return avoid is not None and any(start < end and last >= first for start, last in avoid.ranges)


def _stamp(raw: object) -> float | None:
    """An ``addedAt`` as read: a number of Unix seconds, or ``None`` (absent, or not a number)."""
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return None
    try:
        return float(raw)
    except OverflowError:  # NB: an integer no float holds: no time at all
        return None


@attrs.frozen
class Record:
    """One entry of ``status.allocatedIPs``: the holder of one address, and since when."""

    pod: str
    pod_uid: str
    nic: str = ""
    container_id: str = ""
    node: str = ""
    added_at: float | None = None
    """``addedAt`` (ours): when the ADD that wrote or last refreshed this record started, in Unix seconds.
    ``None`` for a record written by Spiderpool or an older version of ours."""

    @classmethod
    def for_owner(cls, owner: Owner) -> Record:
        """The record that says ``owner`` holds an address (stamped with the owner's ``added_at``)."""
        return cls(owner.pod, owner.pod_uid, owner.nic, owner.container_id, owner.node, owner.added_at)

    def same_holder(self, other: Record) -> bool:
        """Whether both name the same pod, interface, sandbox and node (the stamps aside)."""
        return attrs.evolve(self, added_at=None) == attrs.evolve(other, added_at=None)

    def may_be_in_flight(self, now: float) -> bool:
        """Whether an ADD may still answer this record at ``now`` (wall-clock seconds), its endpoint unwritten:
        then nothing that frees records no endpoint accounts for may free it (``RECLAIM_AFTER``).  A record
        without ``addedAt`` (Spiderpool's, an older version's) is judged as before: never in flight."""
        return self.added_at is not None and now - self.added_at < RECLAIM_AFTER

    def to_json(self) -> dict[str, Any]:
        """Spiderpool's ``{"pod", "podUid"}`` plus our ``nic``, ``containerID``, ``node`` and ``addedAt`` (which
        Spiderpool's readers ignore)."""
        out: dict[str, Any] = {"pod": self.pod, "podUid": self.pod_uid}
        if self.nic:
            out["nic"] = self.nic
        if self.container_id:
            out["containerID"] = self.container_id
        if self.node:
            out["node"] = self.node
        if self.added_at is not None:
            out["addedAt"] = self.added_at
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Record:
        """Read a record written by us or by Spiderpool (which has no ``nic`` and no ``addedAt``)."""
        return cls(
            pod=str(raw.get("pod", "")),
            pod_uid=str(raw.get("podUid", "")),
            nic=str(raw.get("nic", "")),
            container_id=str(raw.get("containerID", "")),
            node=str(raw.get("node", "")),
            added_at=_stamp(raw.get("addedAt")),
        )

    def matches(self, raw: Mapping[str, Any]) -> bool:
        """Whether ``from_json(raw)`` would equal this record (without building one)."""
        return bool(
            raw.get("pod", "") == self.pod
            and raw.get("podUid", "") == self.pod_uid
            and raw.get("nic", "") == self.nic
            and raw.get("containerID", "") == self.container_id
            and raw.get("node", "") == self.node
            and _stamp(raw.get("addedAt")) == self.added_at
        )


@attrs.frozen
class Released:
    """Who held an address last, and when they let it go (``status.releasedIPs``, ours)."""

    at: float
    pod: str
    pod_uid: str

    def to_json(self) -> dict[str, Any]:
        """``{"pod", "podUid", "releasedAt"}`` with ``releasedAt`` in Unix seconds."""
        return {"pod": self.pod, "podUid": self.pod_uid, "releasedAt": round(self.at, 3)}


def decode_released(version: int, raw: object) -> dict[int, Released]:
    """``status.releasedIPs`` as a map from address to its last holder; a corrupt value is dropped."""
    if not isinstance(raw, str) or not raw:
        return {}
    try:
        data = json.loads(raw)
        return {
            ip_to_int(ip, version): Released(
                float(r.get("releasedAt", 0)), str(r.get("pod", "")), str(r.get("podUid", ""))
            )
            for ip, r in data.items()
        }
    except limits.MALFORMED:
        return {}  # NB: only the reuse order depends on it; losing it never frees or doubles an address


def decode_allocated(
    version: int, raw: object, known: Mapping[str, tuple[int, Record]] | None = None
) -> dict[int, Record]:
    """``status.allocatedIPs`` (a JSON string, or absent) as a map from address to record.

    ``known`` (address text -> address and record, from an earlier decode of the same pool) is reused for
    every entry whose fields still match: re-reading a 20,000-record pool after a lost write race then costs
    the JSON parse, not 20,000 address parses and records (docs/benchmarks.md).
    """
    if raw in (None, ""):
        return {}
    try:
        data = json.loads(raw) if isinstance(raw, str) else raw
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if not known:
            return {ip_to_int(ip, version): Record.from_json(rec) for ip, rec in data.items()}
        out: dict[int, Record] = {}
        for text, rec in data.items():
            hit = known.get(text)
            if hit is not None and hit[1].matches(rec):
                out[hit[0]] = hit[1]
            else:
                out[ip_to_int(text, version)] = Record.from_json(rec)
        return out
    except limits.MALFORMED as exc:
        # A corrupt status must not be overwritten with an empty one: that would free every address.
        raise InvalidSpec(kind=KIND, name="", reason=f"'status.allocatedIPs' is corrupt: {exc}") from None


_SERVER_STAMPS = frozenset({"resourceVersion", "managedFields"})
"""Metadata an API server rewrites on every write (``managedFields`` carries a time) and ``IPPool`` never reads."""


def _identity(obj: Mapping[str, Any]) -> tuple[Any, Any]:
    """All of a stored pool that ``IPPool.from_object`` may read: everything but the status and the server's
    stamps."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in _SERVER_STAMPS}
    return meta, obj.get("spec")


def _json_object(raw: object) -> Mapping[str, Any]:
    """A status field that holds a JSON object as a string (absent or empty: no entries)."""
    if raw in (None, ""):
        return {}
    data = json.loads(raw) if isinstance(raw, str) else raw
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def _completed(cache: dict[int, str], keys: Mapping[int, object], make: Callable[[int], str]) -> dict[int, str]:
    """``cache`` (whose keys are always a subset of ``keys``) with every missing entry made."""
    if len(cache) != len(keys):
        for key in keys:
            if key not in cache:
                make(key)
    return cache


def _canonical_pieces(raw: object) -> list[str] | None:
    """Cut a status string in our encoding (``{"a":{..},"b":{..}}``, compact) into its ``"a":{..}`` pieces.

    Inside a piece a ``"`` is always escaped, so ``},"`` only ever separates two pieces.  ``None`` for
    anything that does not look like that; a piece may still be wrong, which ``_parse_pieces`` finds.
    """
    if raw in (None, ""):
        return []
    if not isinstance(raw, str) or len(raw) < 2 or raw[0] != "{" or raw[-1] != "}":
        return None
    body = raw[1:-1]
    if not body:
        return []
    parts = body.split('},"')
    pieces = [part + "}" for part in parts]
    pieces[-1] = parts[-1]
    pieces[1:] = ['"' + piece for piece in pieces[1:]]
    return pieces


def _parse_pieces(pieces: list[str]) -> list[tuple[str, Any, str]] | None:
    """``(address text, raw record, piece)`` for each piece; ``None`` if one is not a single JSON member."""
    out = []
    for piece in pieces:
        try:
            one = json.loads("{" + piece + "}")
        except limits.MALFORMED:
            return None
        if not isinstance(one, dict) or len(one) != 1:
            return None
        ((text, raw),) = one.items()
        if not isinstance(raw, dict):
            return None
        out.append((text, raw, piece))
    return out


def encode_allocated(version: int, records: Mapping[int, Record]) -> str | None:
    """The ``allocatedIPs`` JSON string, addresses in ascending order; ``None`` when empty (Spiderpool)."""
    if not records:
        return None
    return json.dumps({int_to_ip(ip, version): records[ip].to_json() for ip in sorted(records)}, separators=(",", ":"))


def _restamp(held: Record, new: Record) -> bool:
    """Whether a repeated ADD stamps the record it finds anew: its stamp is missing or more than ``ADD_WINDOW``
    older than the ADD's (an unstamped request changes nothing)."""
    if new.added_at is None:
        return False
    return held.added_at is None or new.added_at - held.added_at > ADD_WINDOW


class PoolLedger:
    """The allocation state of one pool: its spec, the reserved addresses, and every record.

    Invariants (checked by ``tests/spider/test_pool_machine.py``): no address has two records; an owner key
    has at most one address; a new allocation is always inside ``allocatable``; ``_hint`` is at or below
    the lowest free allocatable address.
    """

    def __init__(
        self,
        pool: IPPool,
        records: Mapping[int, Record] | None = None,
        reserved: IPSet | None = None,
        released: Mapping[int, Released] | None = None,
    ):
        self.pool = pool
        self.released: dict[int, Released] = dict(released or {})
        self.reserved = reserved if reserved is not None else IPSet(pool.version)
        self.reserved_known = reserved is not None
        """Whether ``reserved`` is what the SpiderReservedIPs say (read), not the empty default (counts need it)."""
        self.allocatable = pool.allocatable(self.reserved)
        self.records: dict[int, Record] = dict(records or {})
        self._by_owner: dict[tuple[str, str], int] = {}
        for ip, rec in self.records.items():
            self._by_owner.setdefault((rec.pod_uid, rec.nic), ip)
        self._hint = self.allocatable.ranges[0][0] if self.allocatable else 0
        # NB: encoding caches, so a status write costs a join, not a JSON encode of every record: the text of
        # every address seen (constant), and the JSON fragment of every record (dropped whenever it changes).
        self._text: dict[int, str] = {}
        self._fragments: dict[int, str] = {}
        self._released_fragments: dict[int, str] = {}
        self._held = sum(1 for ip in self.records if ip in self.allocatable)
        # NB: for catch_up: the address of each text seen, and what the rest of the stored object was.
        self._ip_of: dict[str, int] = {}
        self._identity: tuple[Any, Any] | None = None

    @classmethod
    def from_object(
        cls, obj: Mapping[str, Any], reserved: IPSet | None = None, previous: PoolLedger | None = None
    ) -> PoolLedger:
        """A ledger from a stored SpiderIPPool (spec and status).

        ``previous``, an earlier ledger of the same pool (even one holding unwritten changes), lends its
        decoded records and encodings wherever the stored ones still match them.
        """
        pool = IPPool.from_object(obj)
        status = obj.get("status") or {}
        reuse = previous is not None and previous.pool.version == pool.version
        known = None
        if previous is not None and reuse:
            known = {previous._text[ip]: (ip, rec) for ip, rec in previous.records.items() if ip in previous._text}
        try:
            records = decode_allocated(pool.version, status.get("allocatedIPs"), known)
        except InvalidSpec as exc:
            raise InvalidSpec(kind=KIND, name=pool.name, reason=exc.reason) from None
        ledger = cls(pool, records, reserved, decode_released(pool.version, status.get("releasedIPs")))
        ledger._identity = _identity(obj)
        ledger.reserved_known = reserved is not None and (previous is None or previous.reserved_known)
        if previous is not None and reuse:
            ledger._text = previous._text
            ledger._fragments = {
                ip: f for ip, f in previous._fragments.items() if records.get(ip) is previous.records.get(ip)
            }
        return ledger

    def catch_up(self, obj: Mapping[str, Any]) -> PoolLedger:
        """This ledger brought level with a newer stored version of its pool: records and releases exactly as
        stored, local changes not in it dropped.

        With the spec (and the rest of the object but its status) unchanged it works in place and costs the
        JSON parse plus a comparison per entry, not a decode of every record (another agent's write changes
        one or two of a thousand); otherwise it is ``from_object(obj, previous=self)``.  Returns the ledger
        to use (``self``, or the new one), with the reserved set kept.
        """
        if self._identity is None or _identity(obj) != self._identity:
            return PoolLedger.from_object(obj, self.reserved, previous=self)
        status = obj.get("status") or {}
        try:
            allocated = status.get("allocatedIPs")
            order = self._level_by_text(allocated, self._all_fragments, self._fragment, self._set_record, self._drop)
            if order is None:
                order = self._level_records(_json_object(allocated))
        except limits.MALFORMED as exc:
            # NB: the ledger may be half levelled now: the caller must drop it, as it does on any error
            reason = f"'status.allocatedIPs' is corrupt: {exc}"
            raise InvalidSpec(kind=KIND, name=self.pool.name, reason=reason) from None
        if len(self._by_owner) != len(self.records):
            # Two records of one owner (Spiderpool's, without nic, for two NICs): the first stored one is the
            # owner's, as from_object has it, whatever order they were levelled in.
            self._by_owner = {}
            for ip in order:
                rec = self.records[ip]
                self._by_owner.setdefault((rec.pod_uid, rec.nic), ip)
        released = status.get("releasedIPs")
        try:
            if (
                not isinstance(released, str)
                or self._level_by_text(
                    released, self._all_released_fragments, self._released_fragment, self._set_released, self._unrest
                )
                is None
            ):
                self._level_released(_json_object(released) if isinstance(released, str) else {})
        except limits.MALFORMED:
            self._level_released({})  # NB: as decode_released: only the reuse order depends on it
        return self

    def _ip(self, text: str) -> int:
        ip = self._ip_of.get(text)
        if ip is None:
            ip = self._ip_of[text] = ip_to_int(text, self.pool.version)
        return ip

    def _level_by_text(
        self,
        stored: object,
        fragments: Callable[[], dict[int, str]],
        fragment: Callable[[int], str],
        put: Callable[[int, Any], None],
        drop: Callable[[int], None],
    ) -> list[int] | None:
        """The fast path of ``catch_up`` for a status field in our own encoding (``allocatedIPs`` or
        ``releasedIPs``): the stored text is cut into its per-address fragments and compared with ours as
        strings; only fragments we do not have are parsed.  Returns the stored addresses in stored order, or
        ``None`` when the text is not in that form (Spiderpool wrote it, say, or an address appears twice): the
        caller then levels by parsing it all, whatever was done here."""
        pieces = _canonical_pieces(stored)
        if pieces is None:
            return None
        ours = {text: ip for ip, text in fragments().items()}
        parsed = _parse_pieces([p for p in pieces if p not in ours])
        if parsed is None:
            return None
        arriving = [self._ip(text) for text, _, _ in parsed]
        fresh = iter(arriving)
        order = [ours[p] if p in ours else next(fresh) for p in pieces]
        if len(set(order)) != len(pieces):
            return None  # NB: an address twice: JSON keeps the last, which string matching cannot tell
        stored_pieces, incoming = set(pieces), set(arriving)
        for text, ip in ours.items():
            if text not in stored_pieces and ip not in incoming:
                drop(ip)
        for (_text, raw, piece), ip in zip(parsed, arriving, strict=True):
            put(ip, raw)
            if fragment(ip) != piece:  # NB: not quite our encoding after all
                return None
        return order

    def _set_record(self, ip: int, raw: Any) -> None:
        if ip in self.records:
            self._drop(ip)
        self._put(ip, Record.from_json(raw))

    def _set_released(self, ip: int, raw: Any) -> None:
        entry = Released(float(raw.get("releasedAt", 0)), str(raw.get("pod", "")), str(raw.get("podUid", "")))
        if self.released.get(ip) != entry:
            self._rest(ip, entry)

    def _released_fragment(self, ip: int) -> str:
        """The cached ``"address":{release}`` JSON fragment of a released address (encoded when missing)."""
        return self._cached_fragment(self._released_fragments, ip, self.released[ip])

    def _fragment(self, ip: int) -> str:
        """The cached ``"address":{record}`` JSON fragment of a held address (encoded when missing)."""
        return self._cached_fragment(self._fragments, ip, self.records[ip])

    def _cached_fragment(self, cache: dict[int, str], ip: int, entry: Record | Released) -> str:
        fragment = cache.get(ip)
        if fragment is None:
            text = self._text.get(ip)
            if text is None:
                text = self._text[ip] = int_to_ip(ip, self.pool.version)
            cache[ip] = fragment = f"{json.dumps(text)}:{json.dumps(entry.to_json(), separators=(',', ':'))}"
        return fragment

    def _all_fragments(self) -> dict[int, str]:
        """Every held address's fragment."""
        return _completed(self._fragments, self.records, self._fragment)

    def _all_released_fragments(self) -> dict[int, str]:
        """Every released address's fragment."""
        return _completed(self._released_fragments, self.released, self._released_fragment)

    def _level_records(self, stored: Mapping[str, Any]) -> list[int]:
        """The slow path of ``catch_up`` (a status not in our encoding): every stored record compared."""
        seen: dict[int, None] = {}
        for text, raw in stored.items():
            ip = self._ip(text)
            seen[ip] = None
            current = self.records.get(ip)
            if current is None or not current.matches(raw):
                self._set_record(ip, raw)
        for ip in [ip for ip in self.records if ip not in seen]:
            self._drop(ip)
        return list(seen)

    def _level_released(self, stored: Mapping[str, Any]) -> None:
        seen = set()
        for text, raw in stored.items():
            ip = self._ip(text)
            seen.add(ip)
            self._set_released(ip, raw)
        for ip in [ip for ip in self.released if ip not in seen]:
            self._unrest(ip)

    def set_reserved(self, reserved: IPSet) -> None:
        """Apply a new set of reserved addresses; addresses already held stay held (Spiderpool §1.3)."""
        self.reserved_known = True
        if reserved == self.reserved:
            return
        self.reserved = reserved
        self.allocatable = self.pool.allocatable(reserved)
        self._hint = self.allocatable.ranges[0][0] if self.allocatable else 0
        self._held = sum(1 for ip in self.records if ip in self.allocatable)

    def copy(self) -> PoolLedger:
        """An independent snapshot."""
        snapshot = PoolLedger(self.pool, self.records, self.reserved, self.released)
        snapshot.reserved_known = self.reserved_known
        return snapshot

    @property
    def capacity(self) -> int:
        """How many addresses this pool can hand out in all."""
        return self.allocatable.count

    @property
    def free(self) -> int:
        """How many allocatable addresses nobody holds."""
        return self.capacity - self._held

    def parse(self, text: str) -> int | None:
        """The address ``text`` names, if it can be one of this pool's (an address of its family); ``None`` when
        it cannot, so that nobody holds it here (a request naming it frees, adopts or confirms nothing)."""
        try:
            return ip_to_int(text, self.pool.version)
        except ValueError:
            return None

    def lookup(self, key: tuple[str, str]) -> int | None:
        """The address an owner key holds here; a Spiderpool record without ``nic`` matches any interface."""
        ip = self._by_owner.get(key)
        if ip is None:
            ip = self._by_owner.get((key[0], ""))
        return ip

    def holders(self) -> Iterator[tuple[int, Record]]:
        """Every (address, record), in address order."""
        for ip in sorted(self.records):
            yield ip, self.records[ip]

    def allocate(
        self, owner: Owner, *, now: float = 0.0, cooldown: float = 0.0, avoid: IPSet | None = None
    ) -> tuple[int, bool]:
        """The address for ``owner`` and whether the ledger changed.

        A repeated request returns the address the owner already holds (its record is refreshed with the
        new container and node, so a late DEL of the old sandbox cannot free it, and with the owner's
        ``added_at`` once the stamp it has is more than ``ADD_WINDOW`` older: see ``RECLAIM_AFTER``; a retry
        soon after writes nothing).  Otherwise the lowest free
        allocatable address is taken; with a ``cooldown`` (seconds) never-used addresses go first, then
        released ones in the order they were released (FIFO), each only ``cooldown`` seconds after its release.
        Addresses in ``avoid`` (shared with an overlapping pool, see ``contested``) are never taken.
        """
        ip = self.lookup(owner.key)
        if ip is not None:
            held, new = self.records[ip], Record.for_owner(owner)
            if held.same_holder(new) and not _restamp(held, new):
                return ip, False
            self._drop(ip)
            self._put(ip, new)
            return ip, True
        if cooldown > 0:
            return self._allocate_resting(owner, now, cooldown, avoid), True
        # NB: avoided ranges are left out whole (an IPv6 overlap is too large to step over one address at a time),
        # and _hint may only pass addresses that are held, never ones merely avoided
        candidates = self.allocatable if avoid is None else self.allocatable.difference(avoid)
        for candidate in candidates.iter_from(self._hint):
            if candidate in self.records:
                continue
            self._take(candidate, owner)
            if not _avoids_below(avoid, self._hint, candidate):
                self._hint = candidate + 1
            return candidate, True
        top = self.allocatable.ranges[-1][1] + 1 if self.allocatable else 0
        if not _avoids_below(avoid, self._hint, top):
            self._hint = top
        raise PoolExhausted(pool=self.pool.name, capacity=self.capacity)

    def _allocate_resting(self, owner: Owner, now: float, cooldown: float, avoid: IPSet | None) -> int:
        # NB: _hint stays put here: released addresses above it are skipped, not held.
        candidates = self.allocatable if avoid is None else self.allocatable.difference(avoid)
        for candidate in candidates.iter_from(self._hint):
            if candidate in self.records or candidate in self.released:
                continue
            self._take(candidate, owner)
            return candidate
        waiting = [
            (rel.at, ip)
            for ip, rel in self.released.items()
            if ip in self.allocatable and ip not in self.records and not (avoid is not None and ip in avoid)
        ]
        ready = [item for item in waiting if item[0] <= now - cooldown]
        if not ready:
            raise PoolExhausted(pool=self.pool.name, capacity=self.capacity, cooling=len(waiting))
        _, ip = min(ready)
        self._take(ip, owner)
        return ip

    def _take(self, ip: int, owner: Owner) -> None:
        self._put(ip, Record.for_owner(owner))
        self._unrest(ip)

    def release(self, key: tuple[str, str], container_id: str = "", *, now: float = 0.0) -> int | None:
        """Free the owner's address if it still holds it; with ``container_id``, only if that sandbox does.

        Returns the freed address, or ``None`` when nothing matched (a no-op, as a DEL must be).
        """
        ip = self.lookup(key)
        if ip is None:
            return None
        rec = self.records[ip]
        if container_id and rec.container_id and rec.container_id != container_id:
            return None  # NB: a later sandbox of the same pod holds it now; this release is stale
        self._free(ip, now)
        return ip

    def adopt(self, ip: int, previous_uid: str, owner: Owner) -> tuple[bool, bool]:
        """Fixed IPs: give ``owner`` the address an earlier pod of the same StatefulSet ordinal or VM held.

        Returns ``(held, changed)``: whether ``owner`` now holds it, and whether the ledger changed.  An address
        that is gone, or held by another workload's pod, is not taken.
        """
        rec = self.records.get(ip)
        if rec is None or rec.pod_uid not in (previous_uid, owner.pod_uid) or rec.pod != owner.pod:
            return False, False
        new = Record.for_owner(owner)
        if rec.same_holder(new) and not _restamp(rec, new):
            return True, False
        stray = self._by_owner.get(owner.key)
        if stray is not None and stray != ip:
            # NB: an ADD of the new pod that never completed took another address; keeping both would give
            # one key two addresses and leak one for as long as the pod lives. The fixed address wins.
            self._drop(stray)
        self._drop(ip)
        self._put(ip, new)
        return True, True

    def release_ip(self, ip: int, holder: str | Record, *, now: float = 0.0) -> bool:
        """Free one address if its record still names the pod UID ``holder`` (GC), or still is exactly the record
        ``holder`` (the consistency check's reclaim: a record refreshed since it was judged is left alone)."""
        rec = self.records.get(ip)
        if rec is None or (rec.pod_uid != holder if isinstance(holder, str) else rec != holder):
            return False
        self._free(ip, now)
        return True

    def _free(self, ip: int, now: float) -> None:
        rec = self.records[ip]
        self._drop(ip)
        self._rest(ip, Released(now, rec.pod, rec.pod_uid))

    def forget_rested(self, wanted: int, *, now: float, cooldown: float, at_least: int | None = None) -> int:
        """Make room in ``status_bytes`` for records: forget the last holders of addresses whose rest is over
        (released ``cooldown`` seconds or more before ``now``), the longest released first, until ``wanted``
        bytes are freed or none is left; returns the bytes freed.  Forgets nothing, and returns 0, when that
        would free less than ``at_least`` (default ``wanted``).  An address still resting is never forgotten:
        forgetting it would let it be handed out before its cooldown ends."""
        fragments = self._all_released_fragments()
        over = sorted((entry.at, ip) for ip, entry in self.released.items() if entry.at <= now - cooldown)
        chosen, freed = [], 0
        for _, ip in over:
            if freed >= wanted:
                break
            chosen.append(ip)
            freed += len(fragments[ip]) + 1
        if freed < (wanted if at_least is None else at_least):
            return 0
        for ip in chosen:
            self._unrest(ip)
        return freed

    def _rest(self, ip: int, entry: Released) -> None:
        self.released[ip] = entry
        self._released_fragments.pop(ip, None)

    def _unrest(self, ip: int) -> None:
        if self.released.pop(ip, None) is not None:
            self._released_fragments.pop(ip, None)

    def _put(self, ip: int, rec: Record) -> None:
        self.records[ip] = rec
        self._by_owner[(rec.pod_uid, rec.nic)] = ip
        self._fragments.pop(ip, None)
        self._held += ip in self.allocatable

    def _drop(self, ip: int) -> None:
        rec = self.records.pop(ip)
        self._fragments.pop(ip, None)
        self._held -= ip in self.allocatable
        if self._by_owner.get((rec.pod_uid, rec.nic)) == ip:
            del self._by_owner[(rec.pod_uid, rec.nic)]
            if not rec.nic and len(self._by_owner) < len(self.records):
                # NB: Spiderpool's records carry no nic, so a pod with two NICs in one pool has two of them:
                # the next one (lowest address, as a fresh decode indexes them) becomes the one found
                others = [other for other, r in self.records.items() if r.pod_uid == rec.pod_uid and not r.nic]
                if others:
                    self._by_owner[(rec.pod_uid, "")] = min(others)
        if ip in self.allocatable and ip < self._hint:
            self._hint = ip

    def _encode_allocated(self) -> str | None:
        """``encode_allocated(version, records)``, joined from cached per-record fragments (same text)."""
        if not self.records:
            return None
        return "{" + ",".join(map(self._all_fragments().__getitem__, sorted(self.records))) + "}"

    def status_bytes(self) -> int:
        """The length of ``allocatedIPs`` plus ``releasedIPs`` as ``to_status`` writes them (the bulk of the
        object an API server stores: etcd refuses objects over 1.5 MiB)."""
        held = self._all_fragments()
        released = self._all_released_fragments()
        allocated = sum(len(held[ip]) + 1 for ip in self.records) + 1 if self.records else 0
        return allocated + (sum(len(released[ip]) + 1 for ip in self.released) + 1 if self.released else 0)

    def record_bytes(self, owner: Owner) -> int:
        """What a new record for ``owner`` adds to ``status_bytes`` at most (the longest address of the family)."""
        longest = "255.255.255.255" if self.pool.version == 4 else "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        record = Record.for_owner(owner).to_json()
        return len(json.dumps(longest)) + 2 + len(json.dumps(record, separators=(",", ":")))

    def address(self, ip: int) -> str:
        """``ip/prefix`` of an address of this pool, as CNI results and endpoints carry it."""
        return f"{int_to_ip(ip, self.pool.version)}/{self.pool.prefix_length}"

    def counts(self) -> dict[str, int]:
        """``allocatedIPCount``, ``totalIPCount`` and ``freeIPCount``, as ``to_status`` writes them."""
        return {
            "allocatedIPCount": len(self.records),
            "totalIPCount": min(self.pool.total.count, MAX_COUNT),
            "freeIPCount": min(self.free, MAX_COUNT),
        }

    def to_status(self) -> dict[str, Any]:
        """The pool's ``status``: Spiderpool's fields plus our ``freeIPCount`` and ``releasedIPs``."""
        status: dict[str, Any] = dict(self.counts())
        encoded = self._encode_allocated()
        if encoded is not None:
            status["allocatedIPs"] = encoded
        if self.released:
            status["releasedIPs"] = self._encode_released()
        return status

    def _encode_released(self) -> str:
        """``releasedIPs``, addresses in ascending order, joined from cached per-entry fragments."""
        return "{" + ",".join(map(self._all_released_fragments().__getitem__, sorted(self.released))) + "}"
