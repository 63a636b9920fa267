"""The CNI protocol as the agent sees it: requests in, results and errors out.

Owns everything about CNI that needs no I/O:

- decoding one plugin invocation (the ``CNI_*`` environment plus the network configuration on stdin)
  into a validated ``CniRequest``, raising the ``spider.errors`` class whose ``cni_code`` is the code the
  spec asks for (``1`` version, ``4`` environment, ``6`` decode, ``7`` configuration);
- the frame the ``spiderpool`` shim (``cni/shim.py``) forwards an invocation in (``split_forwarded``);
- the Spiderpool IPAM section (``IpamConf``, reference §4.4);
- the result, error and version objects each spec version from 0.3.0 to 1.1.0 defines, shaped and ordered as
  the Go reference plugins (host-local) print them.

The shim exits with the status the agent chooses: 0 on success, 1 on error, with the error object on stdout.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import attrs

from spider import limits
from spider.errors import (
    DecodeFailure,
    IncompatibleVersion,
    InvalidEnvironment,
    InvalidNetConf,
    SpiderError,
)

SUPPORTED_VERSIONS: Final = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST_VERSION: Final = "1.1.0"
DEFAULT_SOCKET: Final = "/var/run/spidernet/spiderpool.sock"
COMMANDS: Final = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")

# Exit statuses of the plugin process.
EXIT_OK: Final = 0
EXIT_ERROR: Final = 1

# Spiderpool's defaults for the logging fields (cmd/spiderpool/cmd/cni_types.go; the code wins over the docs).
DEFAULT_LOG_LEVEL: Final = "debug"
DEFAULT_LOG_FILE_PATH: Final = "/var/log/spidernet/spiderpool.log"
DEFAULT_LOG_FILE_MAX_SIZE: Final = 100
DEFAULT_LOG_FILE_MAX_AGE: Final = 30
DEFAULT_LOG_FILE_MAX_COUNT: Final = 10
LOG_LEVELS: Final = ("debug", "info", "warn", "error")

VALID_ATTACHMENTS_KEY: Final = "cni.dev/valid-attachments"

# Variables each verb needs (SPEC.md "Parameters").  CNI_PATH is not required: we delegate to no plugin.
_REQUIRED_ENV: Final[Mapping[str, tuple[str, ...]]] = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "GC": (),
    "STATUS": (),
    "VERSION": (),
}
# The first spec version that defines each verb.
_FIRST_VERSION: Final[Mapping[str, str]] = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}

# The CNI_ARGS a kubelet passes that we store, and what each must be (Kubernetes' own rules, bounded).
_POD_ARGS: Final = {
    "K8S_POD_NAMESPACE": limits.dns_label_problem,
    "K8S_POD_NAME": limits.dns_subdomain_problem,
    "K8S_POD_UID": limits.uid_problem,
}

JsonObject = dict[str, Any]


@attrs.define(auto_exc=True, kw_only=True)
class InvalidVersionField(IncompatibleVersion):
    """``cniVersion`` is missing from the configuration or is not a string (CNI code 1)."""

    reason: str

    def __str__(self) -> str:
        return f"cniVersion {self.reason} (supported: {', '.join(self.supported)})"


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


# --- the IPAM section ---------------------------------------------------------------------------------------


def _string(d: Mapping[str, Any], key: str, default: str) -> str:
    value = d.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise InvalidNetConf(reason=f"ipam.{key} must be a string, not {json_type(value)}")
    return value or default


def _boolean(d: Mapping[str, Any], key: str) -> bool:
    value = d.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidNetConf(reason=f"ipam.{key} must be true or false, not {json_type(value)}")
    return value


def _count(d: Mapping[str, Any], key: str, default: int) -> int:
    value = d.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidNetConf(reason=f"ipam.{key} must be an integer, not {json_type(value)}")
    if value < 0:
        raise InvalidNetConf(reason=f"ipam.{key} must not be negative, got {value}")
    return value or default  # 0 means "unset", as in Spiderpool's Go structs


def _names(d: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = d.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidNetConf(reason=f"ipam.{key} must be a list of pool names (strings), not {json_type(value)}")
    if len(value) > limits.MAX_POOL_NAMES:
        raise InvalidNetConf(reason=f"ipam.{key} names {len(value)} pools; the limit is {limits.MAX_POOL_NAMES}")
    for name in value:
        if problem := limits.pool_name_problem(name):
            raise InvalidNetConf(reason=f"ipam.{key}: pool name {problem}: {limits.preview(name)}")
    return tuple(value)


def json_type(value: object) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__  # pragma: no cover - json.loads makes nothing else


@attrs.frozen(kw_only=True)
class IpamConf:
    """The ``ipam`` section of a network configuration whose IPAM is Spiderpool (reference §4.4)."""

    type: str = "spiderpool"
    ipam_unix_socket_path: str = DEFAULT_SOCKET
    default_ipv4_ippool: tuple[str, ...] = ()
    default_ipv6_ippool: tuple[str, ...] = ()
    clean_gateway: bool = False
    match_master_subnet: bool = False
    log_level: str = DEFAULT_LOG_LEVEL
    log_file_path: str = DEFAULT_LOG_FILE_PATH
    log_file_max_size: int = DEFAULT_LOG_FILE_MAX_SIZE
    log_file_max_age: int = DEFAULT_LOG_FILE_MAX_AGE
    log_file_max_count: int = DEFAULT_LOG_FILE_MAX_COUNT

    @classmethod
    def from_json(cls, d: object) -> IpamConf:
        """Validate a decoded ``ipam`` object; ``InvalidNetConf`` names the first wrong field.

        Types are checked as strictly as Go's decoder would (no strings for numbers, no single string for a
        list); ``null`` and, as in Spiderpool, empty strings and zeros mean "use the default".  Unknown keys
        are ignored: the section may carry settings for other tools.
        """
        if not isinstance(d, dict):
            raise InvalidNetConf(reason=f"ipam must be an object, not {json_type(d)}")
        level = _string(d, "log_level", DEFAULT_LOG_LEVEL).lower()
        if level not in LOG_LEVELS:
            shown = limits.preview(str(d["log_level"]))
            raise InvalidNetConf(reason=f"ipam.log_level must be one of {', '.join(LOG_LEVELS)}, not {shown}")
        return cls(
            type=_string(d, "type", "spiderpool"),
            ipam_unix_socket_path=_string(d, "ipam_unix_socket_path", DEFAULT_SOCKET),
            default_ipv4_ippool=_names(d, "default_ipv4_ippool"),
            default_ipv6_ippool=_names(d, "default_ipv6_ippool"),
            clean_gateway=_boolean(d, "clean_gateway"),
            match_master_subnet=_boolean(d, "match_master_subnet"),
            log_level=level,
            log_file_path=_string(d, "log_file_path", DEFAULT_LOG_FILE_PATH),
            log_file_max_size=_count(d, "log_file_max_size", DEFAULT_LOG_FILE_MAX_SIZE),
            log_file_max_age=_count(d, "log_file_max_age", DEFAULT_LOG_FILE_MAX_AGE),
            log_file_max_count=_count(d, "log_file_max_count", DEFAULT_LOG_FILE_MAX_COUNT),
        )


# --- requests -----------------------------------------------------------------------------------------------


class PodArgs:
    """The pod a call is for, as the runtime names it in ``CNI_ARGS`` (``K8S_POD_*``; empty when absent)."""

    __slots__ = ()
    args: Mapping[str, str]

    @property
    def pod_name(self) -> str:
        return self.args.get("K8S_POD_NAME", "")

    @property
    def pod_namespace(self) -> str:
        return self.args.get("K8S_POD_NAMESPACE", "")

    @property
    def pod_uid(self) -> str:
        return self.args.get("K8S_POD_UID", "")


@attrs.frozen(kw_only=True)
class CniRequest(PodArgs):
    """One validated plugin invocation.  Fields a verb does not use are empty (``""``, ``{}``, ``None``)."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: Mapping[str, str] = attrs.field(factory=dict)
    path: str = ""
    version: str = ""
    network_name: str = ""
    ipam: IpamConf | None = None
    prev_result: JsonObject | None = None
    valid_attachments: tuple[tuple[str, str], ...] | None = None
    runtime_config: JsonObject = attrs.field(factory=dict)
    conf: JsonObject = attrs.field(factory=dict)


def parse_args(text: str) -> dict[str, str]:
    """Parse ``CNI_ARGS`` (``K=V;K2=V2``); the empty string is no arguments.

    A value may contain ``=`` (split at the first one, unlike libcni which rejects it); a key may not be
    empty, and so an empty pair (``;;``, a trailing ``;``) is rejected.  A repeated key keeps its last value.
    """
    args: dict[str, str] = {}
    if not text:
        return args
    for pair in text.split(";"):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidEnvironment(
                variable="CNI_ARGS",
                reason=f"is not K=V(;K=V)*: invalid pair {limits.preview(pair)} in {limits.preview(text)}",
            )
        args[key] = value
    for key, check in _POD_ARGS.items():
        if args.get(key) and (problem := check(args[key])):
            raise InvalidEnvironment(
                variable="CNI_ARGS", reason=f"has {key} that {problem}: {limits.preview(args[key])}"
            )
    return args


def check_env(variable: str, value: str, check: Callable[[str], str | None]) -> None:
    """``InvalidEnvironment`` (CNI 4) naming ``variable`` when ``check`` finds a problem with ``value``."""
    if problem := check(value):
        raise InvalidEnvironment(variable=variable, reason=f"{problem}: {limits.preview(value)}")


def decode_conf(stdin: bytes) -> JsonObject:
    """The network configuration on stdin, decoded as untrusted JSON (``limits.loads``); CNI 6 otherwise."""
    try:
        conf = limits.loads(stdin)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DecodeFailure(what="network configuration on stdin", reason=str(exc)) from exc
    if not isinstance(conf, dict):
        raise DecodeFailure(
            what="network configuration on stdin", reason=f"expected a JSON object, got {json_type(conf)}"
        )
    return conf


def _version_of(conf: Mapping[str, Any]) -> str:
    version = conf.get("cniVersion")
    if version is None:
        raise InvalidVersionField(
            version="", supported=SUPPORTED_VERSIONS, reason="is missing from the network configuration"
        )
    if not isinstance(version, str):
        raise InvalidVersionField(
            version="", supported=SUPPORTED_VERSIONS, reason=f"must be a string, not {json_type(version)}"
        )
    if version not in SUPPORTED_VERSIONS:
        shown = version if len(version) <= 80 else f"{version[:80]}... ({len(version)} characters)"
        raise IncompatibleVersion(version=shown, supported=SUPPORTED_VERSIONS)
    return version


_RESULT_ARRAYS: Final = ("interfaces", "ips", "routes")


def prev_result(conf: Mapping[str, Any]) -> JsonObject | None:
    """The netconf's ``prevResult``, checked for the shape its readers walk: an object whose ``interfaces``,
    ``ips`` and ``routes`` are arrays (or null) and whose ``dns`` is an object (or null); ``InvalidNetConf``."""
    result = _object_or_none(conf, "prevResult")
    for key in _RESULT_ARRAYS:
        if result is not None and not isinstance(result.get(key) or [], list):
            raise InvalidNetConf(reason=f"prevResult.{key} must be an array, not {json_type(result[key])}")
    if result is not None and not isinstance(result.get("dns") or {}, dict):
        raise InvalidNetConf(reason=f"prevResult.dns must be an object, not {json_type(result['dns'])}")
    return result


def _object_or_none(conf: Mapping[str, Any], key: str) -> JsonObject | None:
    value = conf.get(key)
    if value is not None and not isinstance(value, dict):
        raise InvalidNetConf(reason=f"{key} must be an object, not {json_type(value)}")
    return value


def _attachments(conf: Mapping[str, Any]) -> tuple[tuple[str, str], ...] | None:
    value = conf.get(VALID_ATTACHMENTS_KEY)
    if value is None:
        return None
    if not isinstance(value, list):
        raise InvalidNetConf(reason=f"{VALID_ATTACHMENTS_KEY} must be an array, not {json_type(value)}")
    found: list[tuple[str, str]] = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise InvalidNetConf(reason=f"{VALID_ATTACHMENTS_KEY}[{i}] must be an object, not {json_type(item)}")
        for key in ("containerID", "ifname"):
            if not isinstance(item.get(key), str):
                raise InvalidNetConf(reason=f"{VALID_ATTACHMENTS_KEY}[{i}].{key} must be a string")
        found.append((item["containerID"], item["ifname"]))
    return tuple(found)


def _parse_version_request(env: Mapping[str, str], stdin: bytes) -> CniRequest:
    """VERSION never fails: like Go's skel, it does not need the configuration, only reads its version."""
    try:
        conf = limits.loads(stdin)
    except ValueError:
        conf = None
    if not isinstance(conf, dict):
        conf = {}
    version = conf.get("cniVersion")
    return CniRequest(
        command="VERSION",
        path=env.get("CNI_PATH", ""),
        version=version if isinstance(version, str) else "",
        conf=conf,
    )


def parse_request(env: Mapping[str, str], stdin: bytes) -> CniRequest:
    """Validate one invocation.  Raises the ``SpiderError`` whose ``cni_code`` the plugin must report.

    Checks run in the order a reader of the error would want: the verb, the environment, then the
    configuration (decode, version, verb against version, sections).  ADD and CHECK need an ``ipam`` section;
    DEL and GC never fail on it (DESIGN invariant 3: they work from stored state): a missing or malformed
    section gives ``ipam=None``.  GC needs ``cni.dev/valid-attachments`` (an empty list is fine): without it a
    GC could not tell live attachments from leaks.
    """
    command = env.get("CNI_COMMAND")
    if not command:
        raise InvalidEnvironment(variable="CNI_COMMAND", reason="is missing")
    if command not in COMMANDS:
        raise InvalidEnvironment(
            variable="CNI_COMMAND", reason=f"is {limits.preview(command)}, expected one of {', '.join(COMMANDS)}"
        )
    if command == "VERSION":
        return _parse_version_request(env, stdin)

    for variable in _REQUIRED_ENV[command]:
        if not env.get(variable):
            raise InvalidEnvironment(variable=variable, reason=f"is missing (required for {command})")
    container_id = env.get("CNI_CONTAINERID", "")
    ifname = env.get("CNI_IFNAME", "")
    if "CNI_CONTAINERID" in _REQUIRED_ENV[command]:
        check_env("CNI_CONTAINERID", container_id, limits.container_id_problem)
    if "CNI_IFNAME" in _REQUIRED_ENV[command]:
        check_env("CNI_IFNAME", ifname, limits.ifname_problem)
    if env.get("CNI_NETNS"):
        check_env("CNI_NETNS", env["CNI_NETNS"], limits.path_problem)
    args = parse_args(env.get("CNI_ARGS", ""))

    conf = decode_conf(stdin)
    version = _version_of(conf)
    first = _FIRST_VERSION.get(command)
    if first is not None and version_key(version) < version_key(first):
        raise IncompatibleVersion(version=version, supported=SUPPORTED_VERSIONS, command=command)

    name = conf.get("name")
    if name is not None and not isinstance(name, str):
        raise InvalidNetConf(reason=f"name must be a string, not {json_type(name)}")
    if name and len(name) > limits.MAX_NAME:
        raise InvalidNetConf(reason=f"name is {len(name)} characters long; the limit is {limits.MAX_NAME}")

    raw_ipam = conf.get("ipam")
    ipam: IpamConf | None
    if command in ("DEL", "GC"):
        try:
            ipam = None if raw_ipam is None else IpamConf.from_json(raw_ipam)
        except InvalidNetConf:
            ipam = None
    elif raw_ipam is None:
        if command in ("ADD", "CHECK"):
            raise InvalidNetConf(reason=f"ipam section is missing (required for {command})")
        ipam = None
    else:
        ipam = IpamConf.from_json(raw_ipam)

    attachments = _attachments(conf)
    if command == "GC" and attachments is None:
        raise InvalidNetConf(reason=f"{VALID_ATTACHMENTS_KEY} is missing (required for GC)")

    return CniRequest(
        command=command,
        container_id=container_id,
        netns=env.get("CNI_NETNS", ""),
        ifname=ifname,
        args=args,
        path=env.get("CNI_PATH", ""),
        version=version,
        network_name=name or "",
        ipam=ipam,
        prev_result=prev_result(conf),
        valid_attachments=attachments,
        runtime_config=_object_or_none(conf, "runtimeConfig") or {},
        conf=conf,
    )


def split_forwarded(body: bytes) -> tuple[dict[str, str], bytes]:
    """Split the frame ``cni/shim.py`` sends into its environment and its stdin bytes.

    The frame is one ``NAME=VALUE\\n`` line per ``CNI_*`` variable (UTF-8; the value may contain ``=``), an
    empty line, then stdin verbatim.  A frame with no empty line, or a line with no ``=``, is a
    ``DecodeFailure``; a name or value that is not UTF-8 is an ``InvalidEnvironment`` naming the variable.
    Stdin nested deeper than ``spider.limits.MAX_JSON_DEPTH`` is a ``DecodeFailure`` too, so no plugin behind
    the frame (IPAM, coordinator, ifacer) decodes a bomb.
    """
    if body.startswith(b"\n"):
        head, stdin = b"", body[1:]
    else:
        head, sep, stdin = body.partition(b"\n\n")
        if not sep:
            raise DecodeFailure(what="forwarded CNI request", reason="no empty line ends the environment")
    env: dict[str, str] = {}
    for line in head.split(b"\n") if head else ():
        raw_name, sep, raw_value = line.partition(b"=")
        if not sep or not raw_name:
            raise DecodeFailure(
                what="forwarded CNI request", reason=f"environment line {line[:80]!r} is not NAME=VALUE"
            )
        try:
            name = raw_name.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidEnvironment(variable=repr(raw_name), reason="has a name that is not UTF-8") from exc
        try:
            env[name] = raw_value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidEnvironment(variable=name, reason=f"is not UTF-8: {raw_value[:80]!r}") from exc
    depth = limits.json_depth(stdin.decode("utf-8", "replace"), stop_above=limits.MAX_JSON_DEPTH)
    if depth > limits.MAX_JSON_DEPTH:
        raise DecodeFailure(
            what="network configuration on stdin",
            reason=f"JSON nested more than {limits.MAX_JSON_DEPTH} levels deep (the limit)",
        )
    return env, stdin


# --- results ------------------------------------------------------------------------------------------------


@attrs.frozen
class IPConfig:
    """One address of an IPAM result: ``address`` is ``ip/prefix``; ``interface`` indexes ``interfaces``."""

    address: str
    gateway: str | None = None
    interface: int | None = None

    @property
    def version(self) -> int:
        return 6 if ":" in self.address else 4


@attrs.frozen
class Route:
    dst: str
    gw: str | None = None


# Go's types.DNS field order; empty fields are omitted as Go's omitempty does.
_DNS_KEYS: Final = ("nameservers", "domain", "search", "options")


def _check_version(version: str) -> None:
    if version not in SUPPORTED_VERSIONS:
        raise IncompatibleVersion(version=version, supported=SUPPORTED_VERSIONS)


def format_result(
    version: str,
    ips: Sequence[IPConfig],
    routes: Sequence[Route],
    dns: Mapping[str, Any] | None = None,
) -> JsonObject:
    """The IPAM result of spec ``version``, key for key as host-local prints it.

    Before 1.0.0 each IP carries ``"version": "4"|"6"``; from 1.0.0 it does not.  Empty ``ips`` and
    ``routes`` are omitted and ``dns`` is always present (``{}`` when ``None``), as Go's encoder does
    for ``types/100.Result``.  Of ``dns`` only the spec's keys are kept, in the spec's order.
    """
    _check_version(version)
    legacy = version_key(version) < (1, 0, 0)
    result: JsonObject = {"cniVersion": version}
    if ips:
        out: list[JsonObject] = []
        for ip in ips:
            entry: JsonObject = {}
            if legacy:
                entry["version"] = str(ip.version)
            if ip.interface is not None:
                entry["interface"] = ip.interface
            entry["address"] = ip.address
            if ip.gateway is not None:
                entry["gateway"] = ip.gateway
            out.append(entry)
        result["ips"] = out
    if routes:
        result["routes"] = [{"dst": r.dst} if r.gw is None else {"dst": r.dst, "gw": r.gw} for r in routes]
    result["dns"] = {key: dns[key] for key in _DNS_KEYS if dns and dns.get(key)}
    return result


def format_error(version: str, code: int, msg: str, details: str = "") -> JsonObject:
    """A CNI error object.  ``cniVersion`` is left out when unknown (``""``); ``details`` when empty."""
    error: JsonObject = {"cniVersion": version} if version else {}
    error["code"] = code
    error["msg"] = msg
    if details:
        error["details"] = details
    return error


def error_from(version: str, exc: SpiderError) -> JsonObject:
    """The CNI error object for ``exc``: its class decides the code, its text is the message."""
    return format_error(version, exc.cni_code, str(exc))


def version_result(requested: str | None) -> JsonObject:
    """The VERSION answer, echoing the configuration's ``cniVersion`` (or the latest when there is none)."""
    return {"cniVersion": requested or LATEST_VERSION, "supportedVersions": list(SUPPORTED_VERSIONS)}


def render(obj: Mapping[str, Any]) -> bytes:
    """The exact bytes the plugin prints: compact UTF-8 JSON, no trailing newline (Go prints none either).  A
    lone surrogate (no character, so no UTF-8) is written as its JSON escape."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "backslashreplace")


def version_hint(stdin: bytes) -> str:
    """Best effort: the ``cniVersion`` of a netconf that could not be used, for the error object ("" if none)."""
    try:
        conf = limits.loads(stdin)
    except ValueError:
        return ""
    version = conf.get("cniVersion", "") if isinstance(conf, dict) else ""
    return version if isinstance(version, str) else ""
