"""Admission rules for SpiderIPPool, SpiderSubnet and SpiderReservedIP: mutation, then validation.

Owns every rule and error text of Spiderpool's mutating and validating webhooks (reference §1.1-§1.3), as pure
functions over stored objects, so one implementation serves every store backend (the store layer calls it on
each create and update, so a bad object never gets in) and the optional admission webhook.

- ``mutate(kind, obj, subnets)``: the defaults Spiderpool's mutating webhook applies (finalizer, derived
  ``ipVersion``, CIDR labels, canonical merged ``ips``/``excludeIPs``, gateway and routes inherited from the
  SpiderSubnet of the same CIDR; callers pass no subnets when ``enable_subnet`` is off, as Spiderpool's
  ``mutateIPPool`` inherits only under ``EnableSpiderSubnet``).  It never rejects: what it cannot fix is left for
  ``validate`` to name.
- ``validate(kind, new, old, existing)``: raises ``InvalidSpec`` whose reason carries Spiderpool's field path and
  text (``spec.subnet: Invalid value: "10.0.0.1/24": unformatted subnet ...``).  ``old`` is ``None`` on create;
  ``existing`` are the other objects the cross-object rules need (pools, subnets).
- A finalizer-only update is always allowed (``finalizer_only``), so deletion can never be blocked.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from spider import limits
from spider.addr import IPSet, int_to_ip, parse_ip, parse_network, parse_range
from spider.errors import InvalidInput, InvalidSpec
from spider.kinds import FINALIZER
from spider.overlap import Footprint
from spider.pool import decode_allocated
from spider.selector import selector_from_label_selector
from spider.subnet import decode_controlled

POOL = "SpiderIPPool"
SUBNET = "SpiderSubnet"
RESERVED = "SpiderReservedIP"
KINDS = (POOL, SUBNET, RESERVED)

LABEL_POOL_CIDR = "ipam.spidernet.io/ippool-cidr"
LABEL_SUBNET_CIDR = "ipam.spidernet.io/subnet-cidr"
LABEL_OWNER_SUBNET = "ipam.spidernet.io/owner-spider-subnet"
LABEL_APP_UID = "ipam.spidernet.io/owner-application-uid"

Obj = dict[str, Any]


@attrs.frozen
class AdmissionSettings:
    """The configmap switches admission depends on (Spiderpool's ``enableIPv4``/``enableIPv6``)."""

    enable_ipv4: bool = True
    enable_ipv6: bool = True
    enable_subnet: bool = True
    """Whether pools with the CIDR of a SpiderSubnet inherit its gateway and routes and must stay inside it."""


def cidr_label(cidr: str) -> str:
    """Spiderpool's label value for a CIDR: ``.``, ``:`` and ``/`` become ``-`` (``172-18-40-0-24``)."""
    return cidr.replace(".", "-").replace(":", "-").replace("/", "-")


def _name(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata")
    return str(meta.get("name", "")) if isinstance(meta, dict) else ""


def _fail(
    kind: str, obj: Mapping[str, Any], path: str, kind_of_error: str, detail: str, value: object = None
) -> InvalidSpec:
    """An error in the shape of Kubernetes' ``field.Error``: ``path: Invalid value: "v": detail``."""
    if kind_of_error == "Invalid":
        shown = json.dumps(value) if not isinstance(value, str) else f'"{value}"'
        return InvalidSpec(kind=kind, name=_name(obj), reason=f"{path}: Invalid value: {shown}: {detail}")
    return InvalidSpec(kind=kind, name=_name(obj), reason=f"{path}: {kind_of_error}: {detail}")


def finalizer_only(new: Mapping[str, Any], old: Mapping[str, Any] | None) -> bool:
    """Whether an update changes nothing but ``metadata.finalizers`` (always allowed)."""
    if old is None:
        return False
    strip = ("finalizers", "resourceVersion", "managedFields", "generation")

    def rest(o: Mapping[str, Any]) -> Any:
        meta = {k: v for k, v in (o.get("metadata") or {}).items() if k not in strip}
        return {**{k: v for k, v in o.items() if k not in ("metadata", "status")}, "metadata": meta}

    return bool(rest(new) == rest(old))


# --- mutation ------------------------------------------------------------------------------------------------


def ip_version(spec: Mapping[str, Any]) -> int:
    """A pool's or subnet's family: its ``ipVersion``, or where none is set (no webhook ran) its CIDR's, else its
    first range's; 4 when nothing says."""
    version = spec.get("ipVersion")
    if version in (4, 6) and not isinstance(version, bool):
        return int(version)
    return _family_of(spec) or 4


def _family_of(spec: Mapping[str, Any]) -> int | None:
    subnet = spec.get("subnet")
    if isinstance(subnet, str):
        try:
            return parse_network(subnet, strict=False).version
        except ValueError:
            return None
    ips = spec.get("ips")
    if isinstance(ips, list) and ips and isinstance(ips[0], str):
        try:
            return parse_ip(ips[0].partition("-")[0]).version
        except ValueError:
            return None
    return None


def _merged(version: int, raw: object) -> list[str] | None:
    """Canonical merged range strings, or ``None`` when the list cannot be parsed (validation says why)."""
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        return None
    try:
        return IPSet.parse(version, raw).to_strings()
    except ValueError:
        return None


def mutate(kind: str, obj: Mapping[str, Any], subnets: Sequence[Mapping[str, Any]] = ()) -> Obj:
    """The object as Spiderpool's mutating webhook would store it; never raises."""
    out: Obj = copy.deepcopy(dict(obj))
    meta = out.setdefault("metadata", {})
    if not isinstance(meta, dict) or meta.get("deletionTimestamp"):
        return out  # NB: metadata that is no object is the API server's to refuse, and validate()'s to name
    spec = out.setdefault("spec", {})
    if not isinstance(spec, dict):
        return out
    if kind in (POOL, SUBNET):
        finalizers = meta["finalizers"] = meta.get("finalizers") or []  # NB: null is none, as Go reads it
        if not isinstance(finalizers, list):
            return out
        if FINALIZER not in finalizers:
            finalizers.append(FINALIZER)
    version = spec.get("ipVersion")
    if version is None:
        version = _family_of(spec)
        if version is None:
            return out
        spec["ipVersion"] = version
    elif version not in (4, 6):
        return out  # NB: only a missing version is derived; a wrong one is for validate() to name
    for field in ("ips", "excludeIPs"):
        if field in spec and spec[field] is not None:
            merged = _merged(version, spec[field])
            if merged is not None:
                spec[field] = merged
    if kind == RESERVED:
        return out
    subnet = spec.get("subnet")
    if not isinstance(subnet, str):
        return out
    labels = meta["labels"] = meta.get("labels") or {}
    if not isinstance(labels, dict):
        return out
    labels[LABEL_POOL_CIDR if kind == POOL else LABEL_SUBNET_CIDR] = cidr_label(subnet)
    if kind == POOL:
        owner = next(
            (s for s in subnets if (s.get("spec") or {}).get("subnet") == subnet and not _terminating(s)), None
        )
        if owner is not None:
            labels[LABEL_OWNER_SUBNET] = _name(owner)
            owner_spec = owner.get("spec") or {}
            if spec.get("gateway") is None and owner_spec.get("gateway") is not None:
                spec["gateway"] = owner_spec["gateway"]
            if spec.get("routes") is None and owner_spec.get("routes") is not None:  # an explicit [] is kept
                spec["routes"] = copy.deepcopy(owner_spec["routes"])
    return out


def _terminating(obj: Mapping[str, Any]) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


# --- validation ----------------------------------------------------------------------------------------------


@attrs.frozen
class _Parsed:
    version: int
    subnet: Any  # IPNetwork
    ips: IPSet
    exclude: IPSet


def _version(kind: str, obj: Mapping[str, Any], settings: AdmissionSettings) -> int:
    version = (obj.get("spec") or {}).get("ipVersion")
    if version is None:
        raise _fail(
            kind, obj, "spec.ipVersion", "Invalid", "is not generated correctly, 'spec.subnet' may be invalid", "nil"
        )
    if version not in (4, 6):
        raise _fail(kind, obj, "spec.ipVersion", "Unsupported value", f'{version}: supported values: "4", "6"')
    if version == 4 and not settings.enable_ipv4:
        raise _fail(kind, obj, "spec.ipVersion", "Forbidden", "IPv4 is disabled")
    if version == 6 and not settings.enable_ipv6:
        raise _fail(kind, obj, "spec.ipVersion", "Forbidden", "IPv6 is disabled")
    return int(version)


def _ranges(kind: str, obj: Mapping[str, Any], field: str, version: int, subnet: Any) -> IPSet:
    raw = (obj.get("spec") or {}).get(field)
    if raw is None:
        return IPSet(version)
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise _fail(kind, obj, f"spec.{field}", "Invalid", "must be a list of IP ranges", raw)
    parsed: list[tuple[int, int]] = []
    failure: InvalidSpec | None = None
    for i, text in enumerate(raw):  # NB: each entry once; a pool may list thousands (on the webhook's trio loop)
        try:
            start, end = parse_range(text, version)
        except ValueError as exc:
            failure = _fail(kind, obj, f"spec.{field}[{i}]", "Invalid", str(exc), text)
            break
        if subnet is not None and (start < int(subnet.network_address) or end > int(subnet.broadcast_address)):
            failure = _fail(kind, obj, f"spec.{field}[{i}]", "Invalid", f"not pertains to subnet {subnet}", text)
            break
        parsed.append((start, end))
    first = _first_overlap(parsed) if field == "ips" else None
    if first is not None:  # NB: an entry overlapping an earlier one is named before a later unparsable one
        raise _fail(kind, obj, f"spec.{field}[{first}]", "Invalid", "overlaps with another IP range", raw[first])
    if failure is not None:
        raise failure
    return IPSet(version, tuple(parsed))


def _first_overlap(intervals: Sequence[tuple[int, int]]) -> int | None:
    """The index of the first interval that overlaps an earlier one, if any: one sort and one pass when none
    does; when one does, a binary search for the shortest prefix holding an overlap (O(n log² n))."""

    def overlapping(n: int) -> bool:
        ordered = sorted(intervals[:n])  # NB: by start; disjoint so far means each ends before the next starts
        return any(nxt[0] <= cur[1] for cur, nxt in itertools.pairwise(ordered))

    if not overlapping(len(intervals)):
        return None
    lo, hi = 2, len(intervals)
    while lo < hi:
        mid = (lo + hi) // 2
        if overlapping(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo - 1


def _subnet_field(kind: str, obj: Mapping[str, Any], version: int) -> Any:
    text = (obj.get("spec") or {}).get("subnet")
    if not isinstance(text, str):
        raise _fail(kind, obj, "spec.subnet", "Required value", "subnet is required")
    try:
        net = parse_network(text, strict=False)
    except ValueError:
        raise _fail(kind, obj, "spec.subnet", "Invalid", f"invalid IPv{version} subnet", text) from None
    if net.version != version:
        raise _fail(kind, obj, "spec.subnet", "Invalid", f"not an IPv{version} subnet", text)
    if str(net) != text:
        raise _fail(kind, obj, "spec.subnet", "Invalid", f"unformatted subnet {text}, please change it to {net}", text)
    return net


def _gateway_and_routes(kind: str, obj: Mapping[str, Any], parsed: _Parsed) -> None:
    spec = obj.get("spec") or {}
    gateway = spec.get("gateway")
    if gateway is not None:
        try:
            gw = parse_ip(str(gateway), parsed.version)
        except ValueError as exc:
            raise _fail(kind, obj, "spec.gateway", "Invalid", str(exc), gateway) from None
        if gw not in parsed.subnet:
            raise _fail(kind, obj, "spec.gateway", "Invalid", f"not pertains to subnet {parsed.subnet}", gateway)
        if int(gw) in parsed.ips and int(gw) not in parsed.exclude:
            raise _fail(
                kind,
                obj,
                "spec.ips",
                "Invalid",
                f"conflicts with 'spec.gateway' {gateway}, add it to 'spec.excludeIPs'",
                parsed.ips.to_strings(),
            )
    routes = spec.get("routes")
    if routes is None:
        return
    if not isinstance(routes, list):
        raise _fail(kind, obj, "spec.routes", "Invalid", "must be a list of routes", routes)
    seen: set[str] = set()
    for i, route in enumerate(routes):
        path = f"spec.routes[{i}]"
        if not isinstance(route, dict) or not isinstance(route.get("dst"), str) or not isinstance(route.get("gw"), str):
            raise _fail(kind, obj, path, "Invalid", "'dst' and 'gw' are required", route)
        try:
            dst = parse_network(route["dst"], parsed.version, strict=False)
        except ValueError as exc:
            raise _fail(kind, obj, f"{path}.dst", "Invalid", str(exc), route["dst"]) from None
        if dst.prefixlen == 0:
            raise _fail(
                kind,
                obj,
                f"{path}.dst",
                "Invalid",
                "please specify 'spec.gateway' to configure the default route",
                route["dst"],
            )
        if str(dst) in seen:
            raise _fail(kind, obj, f"{path}.dst", "Invalid", "duplicate route with the same dst", route["dst"])
        seen.add(str(dst))
        try:
            gw = parse_ip(route["gw"], parsed.version)
        except ValueError as exc:
            raise _fail(kind, obj, f"{path}.gw", "Invalid", str(exc), route["gw"]) from None
        if gw not in parsed.subnet:
            raise _fail(kind, obj, f"{path}.gw", "Invalid", f"not pertains to subnet {parsed.subnet}", route["gw"])


def _parse_ranged(kind: str, obj: Mapping[str, Any], settings: AdmissionSettings) -> _Parsed:
    version = _version(kind, obj, settings)
    subnet = _subnet_field(kind, obj, version)
    ips = _ranges(kind, obj, "ips", version, subnet)
    exclude = _ranges(kind, obj, "excludeIPs", version, subnet)
    parsed = _Parsed(version, subnet, ips, exclude)
    _gateway_and_routes(kind, obj, parsed)
    return parsed


def _immutable(kind: str, new: Mapping[str, Any], old: Mapping[str, Any], fields: Sequence[str]) -> None:
    for field in fields:
        before, after = (old.get("spec") or {}).get(field), (new.get("spec") or {}).get(field)
        if before != after:
            raise _fail(kind, new, f"spec.{field}", "Forbidden", f"is not changeable ({before} -> {after})")


def _selector_field(kind: str, obj: Mapping[str, Any], field: str, *, non_empty: bool = False) -> None:
    raw = (obj.get("spec") or {}).get(field)
    if raw is None:
        return
    if non_empty and raw == {}:
        raise _fail(kind, obj, f"spec.{field}", "Invalid", f"empty {field} is invalid, it would match every Pod", raw)
    try:
        selector_from_label_selector(raw)
    except InvalidInput as exc:
        raise _fail(kind, obj, f"spec.{field}", "Invalid", exc.reason, raw) from None


def _string_list(kind: str, obj: Mapping[str, Any], field: str) -> None:
    raw = (obj.get("spec") or {}).get(field)
    if raw is not None and (not isinstance(raw, list) or not all(isinstance(x, str) for x in raw)):
        raise _fail(kind, obj, f"spec.{field}", "Invalid", "must be a list of strings", raw)


def _effective(parsed: _Parsed) -> IPSet:
    return parsed.ips.difference(parsed.exclude)


def _validate_pool(
    new: Mapping[str, Any],
    old: Mapping[str, Any] | None,
    existing: Sequence[Mapping[str, Any]],
    settings: AdmissionSettings,
) -> None:
    if old is not None:
        if _terminating(old):
            raise _fail(POOL, new, "metadata.deletionTimestamp", "Forbidden", "cannot update a terminating IPPool")
        _immutable(POOL, new, old, ("ipVersion", "subnet"))
    parsed = _parse_ranged(POOL, new, settings)
    for field in ("podAffinity",):
        _selector_field(POOL, new, field, non_empty=True)
    for field in ("nodeAffinity", "namespaceAffinity"):
        _selector_field(POOL, new, field)
    for field in ("nodeName", "namespaceName", "multusName"):
        _string_list(POOL, new, field)
    for field in ("default", "disable"):
        value = (new.get("spec") or {}).get(field)
        if value is not None and not isinstance(value, bool):
            raise _fail(POOL, new, f"spec.{field}", "Invalid", "must be a boolean", value)
    mine = _effective(parsed)
    others = [o for o in existing if o.get("kind", POOL) == POOL and _name(o) != _name(new)]
    for other in others:
        ospec = other.get("spec") or {}
        if ospec.get("ipVersion", _family_of(ospec)) != parsed.version or not isinstance(ospec.get("subnet"), str):
            continue
        try:
            onet = parse_network(ospec["subnet"], strict=False)
        except ValueError:
            continue
        if old is None and str(onet) != str(parsed.subnet) and onet.overlaps(parsed.subnet):
            raise _fail(
                POOL,
                new,
                "spec.subnet",
                "Invalid",
                f"overlap with IPPool {_name(other)} which 'spec.subnet' is {ospec['subnet']}",
                ospec["subnet"],
            )
        if str(onet) == str(parsed.subnet):
            try:
                theirs = IPSet.parse(parsed.version, ospec.get("ips") or []).difference(
                    IPSet.parse(parsed.version, ospec.get("excludeIPs") or [])
                )
            except limits.MALFORMED:  # NB: a pool that does not parse still holds what its pods hold
                footprint = Footprint.of(other)
                if footprint is None or footprint.version != parsed.version:
                    continue
                theirs = footprint.ips
            shared = mine.intersection(theirs)
            if shared:
                raise _fail(
                    POOL,
                    new,
                    "spec.ips",
                    "Forbidden",
                    f"overlap with IPPool {_name(other)} in IP ranges {shared.to_strings()}",
                )
    if old is not None:
        records = decode_allocated(parsed.version, (old.get("status") or {}).get("allocatedIPs"))
        for ip in sorted(records):
            if ip not in mine:
                raise _fail(
                    POOL,
                    new,
                    "spec.ips",
                    "Forbidden",
                    f"remove an IP address {int_to_ip(ip, parsed.version)} that is being used by Pod "
                    f"{records[ip].pod}, "
                    "total IP addresses of an IPPool are jointly determined by 'spec.ips' and 'spec.excludeIPs'",
                )
    if settings.enable_subnet:
        for subnet in existing:
            sspec = subnet.get("spec") or {}
            if old is None and subnet.get("kind") == SUBNET:
                _inside_subnet_cidr(new, subnet, parsed)
            if subnet.get("kind") != SUBNET or sspec.get("subnet") != str(parsed.subnet) or _terminating(subnet):
                continue
            try:
                allowed = IPSet.parse(parsed.version, sspec.get("ips") or []).difference(
                    IPSet.parse(parsed.version, sspec.get("excludeIPs") or [])
                )
            except limits.MALFORMED:
                continue
            outside = parsed.ips.difference(allowed)
            if outside:
                raise _fail(
                    POOL,
                    new,
                    "spec.ips",
                    "Forbidden",
                    f"add some IP ranges {outside.to_strings()} that are not contained in controller Subnet "
                    f"{_name(subnet)}, total IP addresses of a Subnet are jointly determined by 'spec.ips' and "
                    "'spec.excludeIPs'",
                )
            _promised_ips(new, old, subnet, parsed)
            _auto_pool_ips(new, old, subnet, parsed)


def _inside_subnet_cidr(new: Mapping[str, Any], subnet: Mapping[str, Any], parsed: _Parsed) -> None:
    """A pool whose CIDR overlaps a SpiderSubnet's must have exactly that CIDR: the subnet hands out (and
    counts as taken) only the addresses of pools of its own CIDR, so a wider or narrower one could share them."""
    sspec = subnet.get("spec") or {}
    if not isinstance(sspec.get("subnet"), str):
        return
    try:
        snet = parse_network(sspec["subnet"], strict=False)
    except ValueError:
        return
    if snet.version == parsed.version and str(snet) != str(parsed.subnet) and snet.overlaps(parsed.subnet):
        raise _fail(
            POOL,
            new,
            "spec.subnet",
            "Invalid",
            f"overlap with Subnet {_name(subnet)} which 'spec.subnet' is {sspec['subnet']}, an IPPool inside a "
            "Subnet must have the same 'spec.subnet'",
            sspec["subnet"],
        )


def _promised_ips(
    new: Mapping[str, Any], old: Mapping[str, Any] | None, subnet: Mapping[str, Any], parsed: _Parsed
) -> None:
    """A pool may not add addresses its subnet has promised to another pool (``controlledIPPools``): an auto
    pool's are recorded before the pool is written, and a manual pool created in between would share them.
    Only added addresses are checked, so a pool that already holds some (before this rule) can still be edited."""
    try:
        before = IPSet.parse(parsed.version, (old.get("spec") or {}).get("ips") or []) if old else None
    except ValueError:
        before = None
    added = parsed.ips if before is None else parsed.ips.difference(before)
    if not added:
        return
    raw = (subnet.get("status") or {}).get("controlledIPPools")
    for pool, entry in sorted(decode_controlled(parsed.version, raw).items()):
        if pool == _name(new):
            continue
        shared = added.intersection(entry.ips)
        if shared:
            raise _fail(
                POOL,
                new,
                "spec.ips",
                "Forbidden",
                f"overlap with IPPool {pool} in IP ranges {shared.to_strings()} pre-allocated by Subnet "
                f"{_name(subnet)}",
            )


def _auto_pool_ips(
    new: Mapping[str, Any], old: Mapping[str, Any] | None, subnet: Mapping[str, Any], parsed: _Parsed
) -> None:
    """I00018: an auto pool's ``ips`` are what its subnet recorded for it (``controlledIPPools``); only the
    controller changes them: growing to the recorded ranges, or shrinking within them."""
    if LABEL_APP_UID not in ((new.get("metadata") or {}).get("labels") or {}):
        return
    controlled = (subnet.get("status") or {}).get("controlledIPPools")
    try:
        entry = (json.loads(controlled) if isinstance(controlled, str) and controlled else {}).get(_name(new))
        recorded = IPSet.parse(parsed.version, entry.get("ips") or []) if isinstance(entry, dict) else None
        before = IPSet.parse(parsed.version, (old.get("spec") or {}).get("ips") or []) if old else None
    except (ValueError, AttributeError):
        return
    if recorded is None or parsed.ips == recorded:
        return
    if not parsed.ips.issubset(recorded) or before is None or not parsed.ips.issubset(before):
        raise _fail(
            POOL,
            new,
            "spec.ips",
            "Forbidden",
            f"it's illegal to update AutoPool.Spec.IPs: SpiderSubnet {_name(subnet)} controls "
            f"{recorded.to_strings()} for it",
        )


def _validate_subnet(
    new: Mapping[str, Any],
    old: Mapping[str, Any] | None,
    existing: Sequence[Mapping[str, Any]],
    settings: AdmissionSettings,
) -> None:
    if old is not None:
        if _terminating(old):
            raise _fail(SUBNET, new, "metadata.deletionTimestamp", "Forbidden", "cannot update a terminating Subnet")
        _immutable(SUBNET, new, old, ("ipVersion", "subnet"))
    parsed = _parse_ranged(SUBNET, new, settings)
    mine = _effective(parsed)
    for other in existing:
        ospec = other.get("spec") or {}
        if _name(other) == _name(new) and other.get("kind") == SUBNET:
            continue
        if not isinstance(ospec.get("subnet"), str):
            continue
        try:
            onet = parse_network(ospec["subnet"], strict=False)
        except ValueError:
            continue
        if onet.version != parsed.version:
            continue
        if other.get("kind") == SUBNET and old is None and onet.overlaps(parsed.subnet):
            raise _fail(
                SUBNET,
                new,
                "spec.subnet",
                "Invalid",
                f"overlap with Subnet {_name(other)} which 'spec.subnet' is {ospec['subnet']}",
                ospec["subnet"],
            )
        if other.get("kind") == POOL and old is None:
            if str(onet) != str(parsed.subnet) and onet.overlaps(parsed.subnet):
                raise _fail(
                    SUBNET,
                    new,
                    "spec.subnet",
                    "Invalid",
                    f"overlap with IPPool {_name(other)} which 'spec.subnet' is {ospec['subnet']}",
                    ospec["subnet"],
                )
            if str(onet) == str(parsed.subnet):
                try:
                    theirs = IPSet.parse(parsed.version, ospec.get("ips") or [])
                except limits.MALFORMED:
                    continue
                if not theirs.issubset(mine):
                    raise _fail(
                        SUBNET,
                        new,
                        "spec.ips",
                        "Forbidden",
                        f"SpiderIPPool '{_name(other)}' owns some IP addresses that SpiderSubnet '{_name(new)}' "
                        "can't control",
                    )
    if old is not None:
        entries = decode_controlled(parsed.version, (old.get("status") or {}).get("controlledIPPools"))
        for pool, entry in entries.items():
            held = entry.ips
            lost = held.difference(mine)
            if lost:
                raise _fail(
                    SUBNET,
                    new,
                    "spec.ips",
                    "Forbidden",
                    f"remove some IP ranges {lost.to_strings()} that are being used by IPPool {pool}",
                )


def _validate_reserved(new: Mapping[str, Any], old: Mapping[str, Any] | None, settings: AdmissionSettings) -> None:
    version = _version(RESERVED, new, settings)
    if old is not None:
        _immutable(RESERVED, new, old, ("ipVersion",))
    _ranges(RESERVED, new, "ips", version, None)


def validate(
    kind: str,
    new: Mapping[str, Any],
    old: Mapping[str, Any] | None = None,
    existing: Sequence[Mapping[str, Any]] = (),
    settings: AdmissionSettings = AdmissionSettings(),
) -> None:
    """Raise ``InvalidSpec`` when ``new`` (already mutated) may not be stored; finalizer-only updates pass."""
    if kind not in KINDS or finalizer_only(new, old):
        return
    if not isinstance(new.get("spec"), dict):
        raise _fail(kind, new, "spec", "Required value", "spec is required")
    if kind == POOL:
        _validate_pool(new, old, existing, settings)
    elif kind == SUBNET:
        _validate_subnet(new, old, existing, settings)
    else:
        _validate_reserved(new, old, settings)
