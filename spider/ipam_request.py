"""The IPAM requests the agent serves: Spiderpool's ``IpamAddArgs`` and ``IpamDelArgs``, parsed and checked.

Owns turning a request body (the agent API's JSON, or the plugin's decoded CNI call) into a typed request, and
refusing a malformed one with ``InvalidInput`` before anything is read or stored.  Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from spider.errors import InvalidInput


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
        """Parse the JSON body of ``POST /v1/ipam/ip``; ``InvalidInput`` names a missing field."""
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
            clean_gateway=bool(body.get("cleanGateway", False)),
        )


@attrs.frozen
class DelRequest:
    """Spiderpool's ``IpamDelArgs`` / ``IpamBatchDelArgs``."""

    container_id: str
    ifname: str
    pod_namespace: str
    pod_name: str
    pod_uid: str

    @classmethod
    def from_api(cls, body: Any, *, batch: bool = False) -> DelRequest:
        """Parse the JSON body of ``DELETE /v1/ipam/ip`` (or ``/ips`` with ``batch``)."""
        names = ("containerID", "podNamespace", "podName", "podUID") + (() if batch else ("ifName",))
        fields = _required(body, names)
        return cls(
            fields["containerID"],
            fields.get("ifName", ""),
            fields["podNamespace"],
            fields["podName"],
            fields["podUID"],
        )


def _required(body: Any, names: Sequence[str]) -> dict[str, str]:
    if not isinstance(body, dict):
        raise InvalidInput(reason="request body must be a JSON object")
    out = {}
    for name in names:
        value = body.get(name)
        if not isinstance(value, str) or not value:
            raise InvalidInput(reason=f"{name!r} is required")
        out[name] = value
    return out


def _str_tuple(body: dict[str, Any], name: str) -> tuple[str, ...]:
    value = body.get(name) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidInput(reason=f"{name!r} must be a list of strings")
    return tuple(value)
