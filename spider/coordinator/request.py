"""One forwarded invocation of the coordinator (or ifacer), validated: ``parse_request``.

Owns the checks of the ``CNI_*`` environment and of the configuration on stdin, in the order a reader of the
error wants (verb, environment, decode, version, verb against version, ``prevResult``), and the
``CoordinatorRequest`` they produce with the ``prevResult`` addresses of this interface (``PrevIP``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Final

import attrs

from spider import limits
from spider.cni import (
    SUPPORTED_VERSIONS,
    JsonObject,
    PodArgs,
    check_env,
    decode_conf,
    parse_args,
    prev_result,
    version_key,
)
from spider.coordinator.observed import family_of
from spider.errors import IncompatibleVersion, InvalidEnvironment, InvalidNetConf

COMMANDS: Final = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")
_REQUIRED_ENV: Final[Mapping[str, tuple[str, ...]]] = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "GC": (),
    "STATUS": (),
}
_FIRST_VERSION: Final[Mapping[str, tuple[int, ...]]] = {"CHECK": (0, 4, 0), "GC": (1, 1, 0), "STATUS": (1, 1, 0)}


@attrs.frozen(kw_only=True)
class PrevIP:
    """One address of ``prevResult`` that belongs to this plugin's interface."""

    address: str  # ip/prefix
    gateway: str | None = None

    @property
    def ip(self) -> str:
        return self.address.partition("/")[0]

    @property
    def family(self) -> int:
        return family_of(self.address)


@attrs.frozen(kw_only=True)
class CoordinatorRequest(PodArgs):
    """One validated invocation of the coordinator.  Fields a verb does not use are empty."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: Mapping[str, str] = attrs.field(factory=dict)
    version: str = ""
    conf: JsonObject = attrs.field(factory=dict)
    prev_result: JsonObject | None = None

    def prev_ips(self) -> tuple[PrevIP, ...]:
        """The addresses ``prevResult`` gives this interface (all of them when it names no interfaces)."""
        result = self.prev_result or {}
        interfaces = result.get("interfaces") or []
        mine = {
            i
            for i, itf in enumerate(interfaces)
            if isinstance(itf, dict) and itf.get("name") == self.ifname and itf.get("sandbox")
        }
        out = []
        for ip in result.get("ips") or []:
            if not isinstance(ip, dict) or not isinstance(ip.get("address"), str):
                continue
            index = ip.get("interface")
            if mine and isinstance(index, int) and index not in mine:
                continue
            gateway = ip.get("gateway")
            out.append(PrevIP(address=ip["address"], gateway=gateway if isinstance(gateway, str) else None))
        return tuple(out)


def plain_address(text: str) -> str | None:
    """The address ``text`` (``ip`` or ``ip/prefix``) names, unscoped; ``None`` when it names none, or a scoped
    one (``fe80::1%eth0``): no pod's interface holds one, and netlink cannot take it."""
    try:
        ip = ipaddress.ip_address(text.partition("/")[0])
    except ValueError:
        return None
    return None if getattr(ip, "scope_id", None) else str(ip)


def parse_request(env: Mapping[str, str], stdin: bytes, *, chained: bool = True) -> CoordinatorRequest:
    """Validate one forwarded invocation; raises the ``SpiderError`` whose code the plugin reports.

    The order is the one a reader of the error wants: verb, environment, configuration (decode, version,
    verb against version, ``prevResult``).  ADD needs a ``prevResult`` with at least one address: the
    coordinator is chained after the main CNI (macvlan) and tunes what it made.  ``chained=False`` is for
    ifacer, which runs before the main CNI and has no ``prevResult``.
    """
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        reason = "is missing" if not command else f"is {command!r}, expected one of {', '.join(COMMANDS)}"
        raise InvalidEnvironment(variable="CNI_COMMAND", reason=reason)
    if command == "VERSION":
        return CoordinatorRequest(command=command)
    for variable in _REQUIRED_ENV[command]:
        if not env.get(variable):
            raise InvalidEnvironment(variable=variable, reason=f"is missing (required for {command})")
    container_id = env.get("CNI_CONTAINERID", "")
    if container_id:
        check_env("CNI_CONTAINERID", container_id, limits.container_id_problem)
    ifname = env.get("CNI_IFNAME", "")
    if ifname:
        check_env("CNI_IFNAME", ifname, limits.ifname_problem)
    if env.get("CNI_NETNS"):
        check_env("CNI_NETNS", env["CNI_NETNS"], limits.path_problem)
    args = parse_args(env.get("CNI_ARGS", ""))
    conf = decode_conf(stdin)
    version = conf.get("cniVersion")
    if not isinstance(version, str) or version not in SUPPORTED_VERSIONS:
        raise IncompatibleVersion(version=str(version or ""), supported=SUPPORTED_VERSIONS)
    first = _FIRST_VERSION.get(command)
    if first is not None and version_key(version) < first:
        raise IncompatibleVersion(version=version, supported=SUPPORTED_VERSIONS, command=command)
    prev = prev_result(conf)
    request = CoordinatorRequest(
        command=command,
        container_id=container_id,
        netns=env.get("CNI_NETNS", ""),
        ifname=ifname,
        args=args,
        version=version,
        conf=conf,
        prev_result=prev,
    )
    if command == "ADD" and chained:
        if prev is None:
            raise InvalidNetConf(reason="coordinator must be chained after the main CNI: no prevResult")
        if not request.prev_ips():
            raise InvalidNetConf(reason=f"prevResult has no address for interface {ifname!r}")
        for ip in request.prev_ips():
            try:
                address = ipaddress.ip_interface(ip.address)
            except ValueError:
                raise InvalidNetConf(reason=f"prevResult address {ip.address!r} is not ip/prefix") from None
            if plain_address(ip.address) is None:  # NB: a %zone once reached netlink and stopped the agent
                raise InvalidNetConf(reason=f"prevResult address {ip.address!r} is scoped (%zone)")
            try:
                gateway = None if ip.gateway is None else ipaddress.ip_address(ip.gateway)
            except ValueError:
                raise InvalidNetConf(reason=f"prevResult gateway {ip.gateway!r} is not an address") from None
            if gateway is not None and gateway.version != address.version:
                raise InvalidNetConf(reason=f"prevResult gateway {ip.gateway!r} is not of {ip.address!r}'s family")
    return request
