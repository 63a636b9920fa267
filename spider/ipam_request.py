"""The IPAM requests the agent serves: Spiderpool's ``IpamAddArgs`` and ``IpamDelArgs``, parsed and checked.

Owns turning a request body (the agent API's JSON, or the plugin's decoded CNI call) into a typed request, and
refusing a malformed one with ``MalformedRequest`` before anything is read or stored: every field is checked
for its JSON type and bounded as Kubernetes bounds it (``spider.limits``).  Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs

from spider import limits
from spider.cni import json_type
from spider.errors import MalformedRequest

_CHECKS: dict[str, Callable[[str], str | None]] = {
    "containerID": limits.container_id_problem,
    "ifName": limits.ifname_problem,
    "netNamespace": limits.path_problem,
    "podNamespace": limits.dns_label_problem,
    "podName": limits.dns_subdomain_problem,
    "podUID": limits.uid_problem,
}
"""The bound of each string field of ``IpamAddArgs`` and ``IpamDelArgs``."""


@attrs.frozen
class AddRequest:
    """Spiderpool's ``IpamAddArgs`` plus the CNI network name and container the request came from."""

    container_id: str
    ifname: str
    netns: str
    pod_namespace: str
    pod_name: str
    pod_uid: str
    default_ipv4_pools: tuple[str, ...] = ()
    default_ipv6_pools: tuple[str, ...] = ()
    clean_gateway: bool = False
    network: str = ""

    @classmethod
    def from_api(cls, body: Any) -> AddRequest:
        """Parse the JSON body of ``POST /v1/ipam/ip``; ``MalformedRequest`` names the first wrong field."""
        fields = _required(body, ("containerID", "ifName", "netNamespace", "podNamespace", "podName", "podUID"))
        return cls(
            container_id=fields["containerID"],
            ifname=fields["ifName"],
            netns=fields["netNamespace"],
            pod_namespace=fields["podNamespace"],
            pod_name=fields["podName"],
            pod_uid=fields["podUID"],
            default_ipv4_pools=_str_tuple(body, "defaultIPv4IPPool"),
            default_ipv6_pools=_str_tuple(body, "defaultIPv6IPPool"),
            clean_gateway=_boolean(body, "cleanGateway"),
        )


@attrs.frozen
class DelRequest:
    """Spiderpool's ``IpamDelArgs`` / ``IpamBatchDelArgs``."""

    container_id: str
    ifname: str
    pod_namespace: str
    pod_name: str
    pod_uid: str
    release_conflict_ips: bool = False
    """``isReleaseConflictIPs`` of a batch release: refused for a pod with fixed addresses (HTTP 522), or when
    the agent's switch is off (521)."""

    @classmethod
    def from_api(cls, body: Any, *, batch: bool = False) -> DelRequest:
        """Parse the JSON body of ``DELETE /v1/ipam/ip`` (or ``/ips`` with ``batch``)."""
        names = ("containerID", "podNamespace", "podName", "podUID") + (() if batch else ("ifName",))
        fields = _required(body, names)
        conflict = body.get("isReleaseConflictIPs") if batch else None
        if conflict is not None and not isinstance(conflict, bool):
            raise MalformedRequest(reason=f"'isReleaseConflictIPs' must be a boolean, not {json_type(conflict)}")
        return cls(
            fields["containerID"],
            fields.get("ifName", ""),
            fields["podNamespace"],
            fields["podName"],
            fields["podUID"],
            release_conflict_ips=bool(conflict),
        )


def _required(body: Any, names: Sequence[str]) -> dict[str, str]:
    if not isinstance(body, dict):
        raise MalformedRequest(reason="request body must be a JSON object")
    out = {}
    for name in names:
        value = body.get(name)
        if value is None or value == "":
            raise MalformedRequest(reason=f"{name!r} is required")
        if not isinstance(value, str):
            raise MalformedRequest(reason=f"{name!r} must be a string, not {json_type(value)}")
        if problem := _CHECKS[name](value):
            raise MalformedRequest(reason=f"{name!r} {problem}: {limits.preview(value)}")
        out[name] = value
    return out


def _str_tuple(body: dict[str, Any], name: str) -> tuple[str, ...]:
    value = body.get(name)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MalformedRequest(reason=f"{name!r} must be a list of strings")
    if len(value) > limits.MAX_POOL_NAMES:
        raise MalformedRequest(reason=f"{name!r} names {len(value)} pools; the limit is {limits.MAX_POOL_NAMES}")
    for pool in value:
        if problem := limits.pool_name_problem(pool):
            raise MalformedRequest(reason=f"{name!r}: pool name {problem}: {limits.preview(pool)}")
    return tuple(value)


def _boolean(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise MalformedRequest(reason=f"{name!r} must be true or false, not {json_type(value)}")
    return value
