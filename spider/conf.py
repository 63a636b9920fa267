"""Spiderpool's settings file, ``conf.yml`` of the ConfigMap ``spiderpool-conf``, read into typed settings.

Owns every key Spiderpool's chart writes there (reference §12.1), its type and Spiderpool's default, which
component honours which key here, and the error a bad file gives: ``InvalidSpec`` naming the key, never a
traceback.  Pure: it parses text; ``actors.tools.conf`` reads the file and applies the precedence (flag >
environment variable > file > default).

Key names and nesting are Spiderpool's.  One key is read as Spiderpool's Go code reads it, not as its chart
writes it (reference §7.1, §13.5): the spare addresses of an application's pool come from
``clusterSubnetAutoPoolDefaultRedundantIPNumber`` (default 0).  The chart's
``clusterSubnetDefaultFlexibleIPNumber`` (1 in every chart) has no effect in Spiderpool, so it has none here
either: an existing ``spiderpool-conf`` gives the same pools under both.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs
import yaml

from spider.cni import DEFAULT_SOCKET
from spider.errors import InvalidSpec
from spider.podinject import DEFAULT_NAMESPACES_EXCLUDE

SECTIONS = ("podResourceInject", "iaasNetworkProvider", "agent")
"""Keys whose value is a mapping of further keys (written ``section.key`` below)."""


@attrs.frozen
class ConfKey:
    """One key of ``conf.yml``: its dotted name, the attribute of ``SpiderpoolConf`` it fills, its type and
    Spiderpool's default."""

    name: str
    attr: str
    kind: str
    """``bool``, ``count`` (an integer >= 0), ``str``, ``names`` (a list of strings) or ``mapping``."""
    default: Any


KEYS = (
    ConfKey("ipamUnixSocketPath", "ipam_unix_socket_path", "str", DEFAULT_SOCKET),
    ConfKey("enableIPv4", "enable_ipv4", "bool", True),
    ConfKey("enableIPv6", "enable_ipv6", "bool", True),
    ConfKey("enableStatefulSet", "enable_statefulset", "bool", True),
    ConfKey("enableKubevirtStaticIP", "enable_kubevirt_static_ip", "bool", True),
    ConfKey("enableSpiderSubnet", "enable_spider_subnet", "bool", True),
    ConfKey("enableAutoPoolForApplication", "enable_auto_pool", "bool", True),
    ConfKey("clusterSubnetAutoPoolDefaultRedundantIPNumber", "auto_pool_default_redundant", "count", 0),
    ConfKey("clusterSubnetDefaultFlexibleIPNumber", "chart_flexible_ip_number", "count", 1),
    ConfKey("enableIPConflictDetection", "enable_ip_conflict_detection", "bool", False),
    ConfKey("enableGatewayDetection", "enable_gateway_detection", "bool", False),
    ConfKey("enableCleanOutdatedEndpoint", "enable_clean_outdated_endpoint", "bool", False),
    ConfKey("enableValidatingResourcesDeletedWebhook", "enable_validating_resources_deleted_webhook", "bool", False),
    ConfKey("tuneSysctlConfig", "tune_sysctl_config", "bool", True),
    ConfKey("podResourceInject.enabled", "pod_resource_inject", "bool", False),
    ConfKey(
        "podResourceInject.namespacesExclude", "pod_inject_namespaces_exclude", "names", DEFAULT_NAMESPACES_EXCLUDE
    ),
    ConfKey("podResourceInject.namespacesInclude", "pod_inject_namespaces_include", "names", ()),
    ConfKey("iaasNetworkProvider.serverUrl", "iaas_server_url", "str", ""),
    ConfKey("iaasNetworkProvider.httpRequestTimeout", "iaas_http_request_timeout", "str", "50s"),
    ConfKey("agent.networkResourcePlugin", "network_resource_plugin", "mapping", None),
)
KEYS_BY_NAME = {key.name: key for key in KEYS}

AGENT_KEYS = frozenset(
    {
        "ipamUnixSocketPath",
        "enableStatefulSet",
        "enableKubevirtStaticIP",
        "enableSpiderSubnet",
        "enableAutoPoolForApplication",
        "clusterSubnetAutoPoolDefaultRedundantIPNumber",
    }
)
"""The keys ``spider agent`` honours."""
CONTROLLER_KEYS = frozenset(
    {
        "enableIPv4",
        "enableIPv6",
        "enableSpiderSubnet",
        "enableAutoPoolForApplication",
        "clusterSubnetAutoPoolDefaultRedundantIPNumber",
        "enableCleanOutdatedEndpoint",
        "enableStatefulSet",
        "enableKubevirtStaticIP",
        "podResourceInject.enabled",
        "podResourceInject.namespacesExclude",
        "podResourceInject.namespacesInclude",
    }
)
"""The keys ``spider controller`` honours (IPv4/IPv6 and subnets: the admission webhook's rules; StatefulSet and
KubeVirt: what its IP GC leaves alone)."""
COMPONENT_KEYS = {"agent": AGENT_KEYS, "controller": CONTROLLER_KEYS}
NOT_IMPLEMENTED = frozenset(KEYS_BY_NAME) - AGENT_KEYS - CONTROLLER_KEYS
"""Spiderpool's keys no component here honours: probes in the IPAM plugin, the deletion webhook, node sysctls,
the IaaS provider, the device plugin, and the chart's spelling of the spare-address key."""


def _default(name: str) -> Any:
    return attrs.field(default=KEYS_BY_NAME[name].default)


@attrs.frozen
class SpiderpoolConf:
    """``conf.yml``'s settings, Spiderpool's default for each key the file does not give."""

    ipam_unix_socket_path: str = _default("ipamUnixSocketPath")
    """[ipamUnixSocketPath] The agent's API socket."""
    enable_ipv4: bool = _default("enableIPv4")
    """[enableIPv4] Pools may be IPv4."""
    enable_ipv6: bool = _default("enableIPv6")
    """[enableIPv6] Pools may be IPv6."""
    enable_statefulset: bool = _default("enableStatefulSet")
    """[enableStatefulSet] StatefulSet pods keep their addresses."""
    enable_kubevirt_static_ip: bool = _default("enableKubevirtStaticIP")
    """[enableKubevirtStaticIP] KubeVirt VMs keep their addresses."""
    enable_spider_subnet: bool = _default("enableSpiderSubnet")
    """[enableSpiderSubnet] SpiderSubnets and their application pools."""
    enable_auto_pool: bool = _default("enableAutoPoolForApplication")
    """[enableAutoPoolForApplication] A pool per application, carved from a subnet."""
    auto_pool_default_redundant: int = _default("clusterSubnetAutoPoolDefaultRedundantIPNumber")
    """[clusterSubnetAutoPoolDefaultRedundantIPNumber] Spare addresses of an application's pool that names no
    ``ippool-ip-number``."""
    chart_flexible_ip_number: int = _default("clusterSubnetDefaultFlexibleIPNumber")
    """[clusterSubnetDefaultFlexibleIPNumber] What Spiderpool's chart writes for the spare addresses; read by
    nothing (Spiderpool's Go code neither), kept to say so."""
    enable_ip_conflict_detection: bool = _default("enableIPConflictDetection")
    enable_gateway_detection: bool = _default("enableGatewayDetection")
    enable_clean_outdated_endpoint: bool = _default("enableCleanOutdatedEndpoint")
    """[enableCleanOutdatedEndpoint] IP GC also drops SpiderEndpoints no pool record names."""
    enable_validating_resources_deleted_webhook: bool = _default("enableValidatingResourcesDeletedWebhook")
    tune_sysctl_config: bool = _default("tuneSysctlConfig")
    pod_resource_inject: bool = _default("podResourceInject.enabled")
    """[podResourceInject.enabled] The pod mutating webhook that injects RDMA/network resources."""
    pod_inject_namespaces_exclude: tuple[str, ...] = _default("podResourceInject.namespacesExclude")
    pod_inject_namespaces_include: tuple[str, ...] = _default("podResourceInject.namespacesInclude")
    iaas_server_url: str = _default("iaasNetworkProvider.serverUrl")
    iaas_http_request_timeout: str = _default("iaasNetworkProvider.httpRequestTimeout")
    network_resource_plugin: Mapping[str, Any] | None = _default("agent.networkResourcePlugin")
    given: frozenset[str] = frozenset()
    """The keys the file gave (dotted: ``podResourceInject.enabled``)."""
    unknown: tuple[str, ...] = ()
    """Keys the file gave that Spiderpool does not know, in file order."""

    def value(self, name: str) -> Any:
        """The value of the key ``name``: the file's, else Spiderpool's default."""
        return getattr(self, KEYS_BY_NAME[name].attr)

    def from_file(self, name: str) -> Any:
        """The file's value of the key ``name``, or ``None`` when the file did not give it."""
        return getattr(self, KEYS_BY_NAME[name].attr) if name in self.given else None

    def ignored(self) -> tuple[str, ...]:
        """The keys the file gave that no component here honours, then the unknown keys: what is logged as
        ignored at start (a key only the other component honours is not ignored)."""
        return (*sorted(self.given & NOT_IMPLEMENTED), *self.unknown)

    def asks_for_missing_behaviour(self) -> tuple[str, ...]:
        """The not-implemented keys the file sets to something other than Spiderpool's default: behaviour the
        operator asked for and does not get."""
        return tuple(
            name
            for name in sorted(self.given & NOT_IMPLEMENTED)
            if getattr(self, KEYS_BY_NAME[name].attr) != KEYS_BY_NAME[name].default
            and name != "clusterSubnetDefaultFlexibleIPNumber"  # NB: Spiderpool ignores it too, whatever it says
        )


def _invalid(source: str, name: str, reason: str) -> InvalidSpec:
    return InvalidSpec(kind=f"{source} key", name=name, reason=reason)


def _typename(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _as_bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _as_count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _as_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _as_names(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return ()  # NB: Go reads a null list as an empty one
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


def _as_mapping(value: Any) -> Mapping[str, Any] | None:
    return value if isinstance(value, dict) else None


CONVERTERS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "bool": (_as_bool, "true or false"),
    "count": (_as_count, "a whole number, 0 or more"),
    "str": (_as_str, "a string"),
    "names": (_as_names, "a list of strings"),
    "mapping": (_as_mapping, "a mapping"),
}


def _flatten(document: Mapping[str, Any], source: str) -> tuple[dict[str, Any], list[str]]:
    """``{dotted key: value}`` of the known keys, and the unknown keys (dotted), in file order."""
    values: dict[str, Any] = {}
    unknown: list[str] = []
    for name, value in document.items():
        name = str(name)
        if name in SECTIONS:
            if value is None:
                continue  # NB: an empty section, as Go reads it: every key at its default
            if not isinstance(value, dict):
                raise _invalid(source, name, f"expected a mapping, got {value!r} ({_typename(value)})")
            for sub, sub_value in value.items():
                dotted = f"{name}.{sub}"
                if dotted in KEYS_BY_NAME:
                    values[dotted] = sub_value
                else:
                    unknown.append(dotted)
        elif name in KEYS_BY_NAME:
            values[name] = value
        else:
            unknown.append(name)
    return values, unknown


def parse_conf(text: str, source: str = "conf.yml") -> SpiderpoolConf:
    """The settings ``text`` (a ``conf.yml``) gives; an empty file gives Spiderpool's defaults.

    ``InvalidSpec`` when the text is not YAML, not a mapping, or a key's value has the wrong type (naming the
    key and ``source``, the file's path in messages).
    """
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        said = " ".join(str(exc).replace('"<unicode string>"', "the file").split())  # NB: one line
        raise InvalidSpec(kind="settings file", name=source, reason=f"not YAML: {said}") from None
    if document is None:
        return SpiderpoolConf()
    if not isinstance(document, dict):
        raise InvalidSpec(
            kind="settings file", name=source, reason=f"expected a mapping of keys, got {_typename(document)}"
        )
    values, unknown = _flatten(document, source)
    fields: dict[str, Any] = {}
    for name, value in values.items():
        key = KEYS_BY_NAME[name]
        convert, expected = CONVERTERS[key.kind]
        converted = convert(value)
        if converted is None and not (key.kind == "mapping" and value is None):
            raise _invalid(source, name, f"expected {expected}, got {value!r} ({_typename(value)})")
        fields[key.attr] = converted
    if "ipamUnixSocketPath" in values and not fields["ipam_unix_socket_path"]:
        raise _invalid(source, "ipamUnixSocketPath", "expected a path, got an empty string")
    return SpiderpoolConf(**fields, given=frozenset(values), unknown=tuple(unknown))
