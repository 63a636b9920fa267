"""The CNI protocol in ``spider.cni``: request validation with the spec's error codes, and results shaped as
the Go reference plugins print them (checked against Debian's host-local where it is installed)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cni import shim
from spider import cni
from spider.cni import (
    CniRequest,
    IpamConf,
    IPConfig,
    Route,
    format_error,
    format_result,
    parse_args,
    parse_request,
    render,
    split_forwarded,
    version_result,
)
from spider.errors import (
    CNI_DECODE_FAILURE,
    CNI_INCOMPATIBLE_VERSION,
    CNI_INVALID_CONFIG,
    CNI_INVALID_ENV,
    DecodeFailure,
    IncompatibleVersion,
    InvalidEnvironment,
    InvalidNetConf,
    PoolExhausted,
    SpiderError,
    StaleWrite,
)

HOST_LOCAL = Path("/usr/lib/cni/host-local")

ENV = {
    "CNI_COMMAND": "ADD",
    "CNI_CONTAINERID": "3f2c9a8b7d6e",
    "CNI_NETNS": "/var/run/netns/cni-1234",
    "CNI_IFNAME": "eth0",
    "CNI_PATH": "/opt/cni/bin",
    "CNI_ARGS": (
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;"
        "K8S_POD_INFRA_CONTAINER_ID=3f2c9a8b7d6e;K8S_POD_UID=6b1c-uid"
    ),
}
CONF: dict[str, Any] = {
    "cniVersion": "1.0.0",
    "name": "macvlan-underlay",
    "type": "macvlan",
    "master": "ens3",
    "ipam": {"type": "spiderpool", "default_ipv4_ippool": ["v4-pool"], "default_ipv6_ippool": ["v6-*"]},
}
REMOVE = object()  # marks a key to delete in an override


def invoke(env: Mapping[str, object] | None = None, conf: dict[str, Any] | bytes | None = None) -> CniRequest:
    """``parse_request`` on ENV and CONF with some keys replaced (or removed with REMOVE)."""
    full_env = {**ENV, **(env or {})}
    final_env = {k: str(v) for k, v in full_env.items() if v is not REMOVE}
    if isinstance(conf, bytes):
        stdin = conf
    else:
        merged = {**CONF, **(conf or {})}
        stdin = json.dumps({k: v for k, v in merged.items() if v is not REMOVE}).encode()
    return parse_request(final_env, stdin)


def ipam(**fields: object) -> dict[str, Any]:
    return {"ipam": {"type": "spiderpool", **fields}}


# --- parse_request: what a valid invocation gives -----------------------------------------------------------


def test_an_add_request_carries_everything_the_agent_needs() -> None:
    req = invoke(conf={"runtimeConfig": {"mac": "aa:bb:cc:dd:ee:ff"}})
    assert req.command == "ADD"
    assert (req.container_id, req.netns, req.ifname, req.path) == (
        "3f2c9a8b7d6e",
        "/var/run/netns/cni-1234",
        "eth0",
        "/opt/cni/bin",
    )
    assert (req.pod_namespace, req.pod_name, req.pod_uid) == ("default", "web-0", "6b1c-uid")
    assert req.args["IgnoreUnknown"] == "1"
    assert req.version == "1.0.0"
    assert req.network_name == "macvlan-underlay"
    assert req.ipam == IpamConf(default_ipv4_ippool=("v4-pool",), default_ipv6_ippool=("v6-*",))
    assert req.prev_result is None
    assert req.valid_attachments is None
    assert req.runtime_config == {"mac": "aa:bb:cc:dd:ee:ff"}
    assert req.conf["master"] == "ens3"


def test_pod_identity_is_empty_when_cni_args_are_absent() -> None:
    req = invoke(env={"CNI_ARGS": REMOVE})
    assert (req.pod_name, req.pod_namespace, req.pod_uid) == ("", "", "")
    assert req.args == {}


def test_an_ipam_section_with_only_a_type_gets_spiderpools_defaults() -> None:
    conf = IpamConf.from_json({"type": "spiderpool"})
    assert conf == IpamConf()
    assert conf.ipam_unix_socket_path == cni.DEFAULT_SOCKET == "/var/run/spidernet/spiderpool.sock"
    assert (conf.log_level, conf.log_file_path) == ("debug", "/var/log/spidernet/spiderpool.log")
    assert (conf.log_file_max_size, conf.log_file_max_age, conf.log_file_max_count) == (100, 30, 10)
    assert conf.default_ipv4_ippool == conf.default_ipv6_ippool == ()
    assert conf.clean_gateway is conf.match_master_subnet is False


def test_every_ipam_field_is_read() -> None:
    conf = IpamConf.from_json(
        {
            "type": "spiderpool",
            "ipam_unix_socket_path": "/run/spider.sock",
            "default_ipv4_ippool": ["a", "b*"],
            "default_ipv6_ippool": ["c"],
            "clean_gateway": True,
            "match_master_subnet": True,
            "log_level": "INFO",
            "log_file_path": "/tmp/x.log",
            "log_file_max_size": 5,
            "log_file_max_age": 6,
            "log_file_max_count": 7,
            "something_for_another_tool": {"x": 1},
        }
    )
    assert conf == IpamConf(
        ipam_unix_socket_path="/run/spider.sock",
        default_ipv4_ippool=("a", "b*"),
        default_ipv6_ippool=("c",),
        clean_gateway=True,
        match_master_subnet=True,
        log_level="info",
        log_file_path="/tmp/x.log",
        log_file_max_size=5,
        log_file_max_age=6,
        log_file_max_count=7,
    )


def test_null_empty_and_zero_ipam_fields_mean_the_default_as_in_go() -> None:
    conf = IpamConf.from_json(
        {
            "type": "spiderpool",
            "ipam_unix_socket_path": "",
            "default_ipv4_ippool": None,
            "clean_gateway": None,
            "log_level": "",
            "log_file_max_size": 0,
        }
    )
    assert conf == IpamConf()


def test_del_needs_neither_netns_nor_an_ipam_section() -> None:
    req = invoke(env={"CNI_COMMAND": "DEL", "CNI_NETNS": REMOVE}, conf={"ipam": REMOVE})
    assert (req.command, req.netns, req.ipam) == ("DEL", "", None)


def test_del_ignores_a_broken_ipam_section() -> None:
    req = invoke(env={"CNI_COMMAND": "DEL"}, conf=ipam(default_ipv4_ippool="not-a-list"))
    assert req.ipam is None


def test_del_keeps_a_valid_ipam_section_and_the_previous_result() -> None:
    prev = {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24"}]}
    req = invoke(env={"CNI_COMMAND": "DEL"}, conf={"prevResult": prev})
    assert req.ipam is not None
    assert req.ipam.default_ipv4_ippool == ("v4-pool",)
    assert req.prev_result == prev


def test_check_carries_the_previous_result() -> None:
    prev = {"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "10.0.0.2/24"}]}
    req = invoke(env={"CNI_COMMAND": "CHECK"}, conf={"cniVersion": "0.4.0", "prevResult": prev})
    assert req.prev_result == prev


def test_gc_reads_the_valid_attachments_and_needs_no_container() -> None:
    env = {"CNI_COMMAND": "GC", "CNI_CONTAINERID": REMOVE, "CNI_NETNS": REMOVE, "CNI_IFNAME": REMOVE}
    attachments = [{"containerID": "c1", "ifname": "eth0"}, {"containerID": "c2", "ifname": "net1"}]
    req = invoke(env=env, conf={"cniVersion": "1.1.0", "cni.dev/valid-attachments": attachments})
    assert req.valid_attachments == (("c1", "eth0"), ("c2", "net1"))
    assert (req.container_id, req.ifname) == ("", "")


def test_gc_accepts_an_empty_attachment_list_and_a_broken_ipam_section() -> None:
    conf = {"cniVersion": "1.1.0", "cni.dev/valid-attachments": [], "ipam": "broken"}
    req = invoke(env={"CNI_COMMAND": "GC"}, conf=conf)
    assert req.valid_attachments == ()
    assert req.ipam is None


def test_status_needs_no_container_and_no_ipam_section() -> None:
    env = {"CNI_COMMAND": "STATUS", "CNI_CONTAINERID": REMOVE, "CNI_NETNS": REMOVE, "CNI_IFNAME": REMOVE}
    req = invoke(env=env, conf={"cniVersion": "1.1.0", "ipam": REMOVE})
    assert (req.command, req.ipam) == ("STATUS", None)


@pytest.mark.parametrize(
    ("stdin", "version"),
    [
        (b'{"cniVersion": "0.4.0"}', "0.4.0"),
        (b'{"cniVersion": "9.9.9"}', "9.9.9"),
        (b"{}", ""),
        (b"", ""),
        (b"not json", ""),
        (b'["0.4.0"]', ""),
        (b'{"cniVersion": 1}', ""),
    ],
)
def test_version_never_fails_and_echoes_the_requested_version(stdin: bytes, version: str) -> None:
    req = parse_request({"CNI_COMMAND": "VERSION", "CNI_ARGS": "garbage"}, stdin)
    assert (req.command, req.version) == ("VERSION", version)


# --- parse_request: every bad input, its code, and the name it blames ---------------------------------------

ERRORS: list[tuple[str, dict[str, object], Any, type[SpiderError], int, str]] = [
    # environment (4)
    ("no command", {"CNI_COMMAND": REMOVE}, None, InvalidEnvironment, CNI_INVALID_ENV, "CNI_COMMAND"),
    ("empty command", {"CNI_COMMAND": ""}, None, InvalidEnvironment, CNI_INVALID_ENV, "CNI_COMMAND"),
    ("unknown command", {"CNI_COMMAND": "add"}, None, InvalidEnvironment, CNI_INVALID_ENV, "CNI_COMMAND"),
    (
        "add without id",
        {"CNI_CONTAINERID": REMOVE},
        None,
        InvalidEnvironment,
        CNI_INVALID_ENV,
        "CNI_CONTAINERID",
    ),
    ("add without netns", {"CNI_NETNS": REMOVE}, None, InvalidEnvironment, CNI_INVALID_ENV, "CNI_NETNS"),
    ("add, empty netns", {"CNI_NETNS": ""}, None, InvalidEnvironment, CNI_INVALID_ENV, "CNI_NETNS"),
    ("add without ifname", {"CNI_IFNAME": REMOVE}, None, InvalidEnvironment, CNI_INVALID_ENV, "CNI_IFNAME"),
    (
        "check without netns",
        {"CNI_COMMAND": "CHECK", "CNI_NETNS": REMOVE},
        None,
        InvalidEnvironment,
        CNI_INVALID_ENV,
        "CNI_NETNS",
    ),
    (
        "del without id",
        {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": REMOVE},
        None,
        InvalidEnvironment,
        CNI_INVALID_ENV,
        "CNI_CONTAINERID",
    ),
    (
        "del without ifname",
        {"CNI_COMMAND": "DEL", "CNI_IFNAME": REMOVE},
        None,
        InvalidEnvironment,
        CNI_INVALID_ENV,
        "CNI_IFNAME",
    ),
    ("args, no =", {"CNI_ARGS": "K8S_POD_NAME"}, None, InvalidEnvironment, CNI_INVALID_ENV, "CNI_ARGS"),
    ("args, empty pair", {"CNI_ARGS": "a=1;;b=2"}, None, InvalidEnvironment, CNI_INVALID_ENV, "CNI_ARGS"),
    ("args, trailing ;", {"CNI_ARGS": "a=1;"}, None, InvalidEnvironment, CNI_INVALID_ENV, "CNI_ARGS"),
    ("args, empty key", {"CNI_ARGS": "=v"}, None, InvalidEnvironment, CNI_INVALID_ENV, "CNI_ARGS"),
    (
        "id, leading -",
        {"CNI_CONTAINERID": "-abc"},
        None,
        InvalidEnvironment,
        CNI_INVALID_ENV,
        "CNI_CONTAINERID",
    ),
    ("id, space", {"CNI_CONTAINERID": "ab c"}, None, InvalidEnvironment, CNI_INVALID_ENV, "CNI_CONTAINERID"),
    ("id, slash", {"CNI_CONTAINERID": "ab/c"}, None, InvalidEnvironment, CNI_INVALID_ENV, "CNI_CONTAINERID"),
    (
        "id, non-ascii",
        {"CNI_CONTAINERID": "abç"},
        None,
        InvalidEnvironment,
        CNI_INVALID_ENV,
        "CNI_CONTAINERID",
    ),
    ("ifname, 16 bytes", {"CNI_IFNAME": "a" * 16}, None, InvalidEnvironment, CNI_INVALID_ENV, "CNI_IFNAME"),
    ("ifname, 16 utf-8", {"CNI_IFNAME": "é" * 8}, None, InvalidEnvironment, CNI_INVALID_ENV, "CNI_IFNAME"),
    ("ifname, dot", {"CNI_IFNAME": "."}, None, InvalidEnvironment, CNI_INVALID_ENV, "CNI_IFNAME"),
    ("ifname, dotdot", {"CNI_IFNAME": ".."}, None, InvalidEnvironment, CNI_INVALID_ENV, "CNI_IFNAME"),
    ("ifname, slash", {"CNI_IFNAME": "a/b"}, None, InvalidEnvironment, CNI_INVALID_ENV, "CNI_IFNAME"),
    ("ifname, colon", {"CNI_IFNAME": "eth0:1"}, None, InvalidEnvironment, CNI_INVALID_ENV, "CNI_IFNAME"),
    ("ifname, space", {"CNI_IFNAME": "eth 0"}, None, InvalidEnvironment, CNI_INVALID_ENV, "CNI_IFNAME"),
    ("ifname, NUL", {"CNI_IFNAME": "et\0h"}, None, InvalidEnvironment, CNI_INVALID_ENV, "CNI_IFNAME"),
    ("id, 257", {"CNI_CONTAINERID": "c" * 257}, None, InvalidEnvironment, CNI_INVALID_ENV, "CNI_CONTAINERID"),
    ("netns, NUL", {"CNI_NETNS": "/run/\0x"}, None, InvalidEnvironment, CNI_INVALID_ENV, "CNI_NETNS"),
    ("netns, long", {"CNI_NETNS": "/" * 4097}, None, InvalidEnvironment, CNI_INVALID_ENV, "CNI_NETNS"),
    (
        "pod uid, long",
        {"CNI_ARGS": "K8S_POD_UID=" + "u" * 129},
        None,
        InvalidEnvironment,
        CNI_INVALID_ENV,
        "K8S_POD_UID",
    ),
    (
        "pod name, long",
        {"CNI_ARGS": "K8S_POD_NAME=" + "p" * 254},
        None,
        InvalidEnvironment,
        CNI_INVALID_ENV,
        "K8S_POD_NAME",
    ),
    ("pod name, upper", {"CNI_ARGS": "K8S_POD_NAME=Web"}, None, InvalidEnvironment, CNI_INVALID_ENV, "K8S_POD_NAME"),
    (
        "pod namespace, not a label",
        {"CNI_ARGS": "K8S_POD_NAMESPACE=a.b"},
        None,
        InvalidEnvironment,
        CNI_INVALID_ENV,
        "K8S_POD_NAMESPACE",
    ),
    ("netconf, deep", {}, b"[" * 1000 + b"]" * 1000, DecodeFailure, 6, "nested more than 64 levels"),
    ("name, long", {}, {"name": "n" * 254}, InvalidNetConf, CNI_INVALID_CONFIG, "name"),
    ("ifname, tab", {"CNI_IFNAME": "eth\t0"}, None, InvalidEnvironment, CNI_INVALID_ENV, "CNI_IFNAME"),
    # stdin (6)
    ("stdin empty", {}, b"", DecodeFailure, CNI_DECODE_FAILURE, "stdin"),
    ("stdin not json", {}, b"{cniVersion", DecodeFailure, CNI_DECODE_FAILURE, "stdin"),
    ("stdin not utf-8", {}, b'{"name": "\xff"}', DecodeFailure, CNI_DECODE_FAILURE, "stdin"),
    ("stdin an array", {}, b"[]", DecodeFailure, CNI_DECODE_FAILURE, "JSON object"),
    # version (1)
    ("no version", {}, {"cniVersion": REMOVE}, IncompatibleVersion, CNI_INCOMPATIBLE_VERSION, "cniVersion"),
    ("null version", {}, {"cniVersion": None}, IncompatibleVersion, CNI_INCOMPATIBLE_VERSION, "cniVersion"),
    ("numeric version", {}, {"cniVersion": 1.0}, IncompatibleVersion, CNI_INCOMPATIBLE_VERSION, "cniVersion"),
    ("old version", {}, {"cniVersion": "0.2.0"}, IncompatibleVersion, CNI_INCOMPATIBLE_VERSION, "0.2.0"),
    ("future version", {}, {"cniVersion": "2.0.0"}, IncompatibleVersion, CNI_INCOMPATIBLE_VERSION, "2.0.0"),
    (
        "check before 0.4.0",
        {"CNI_COMMAND": "CHECK"},
        {"cniVersion": "0.3.1"},
        IncompatibleVersion,
        CNI_INCOMPATIBLE_VERSION,
        "CHECK",
    ),
    (
        "gc before 1.1.0",
        {"CNI_COMMAND": "GC"},
        {"cniVersion": "1.0.0", "cni.dev/valid-attachments": []},
        IncompatibleVersion,
        CNI_INCOMPATIBLE_VERSION,
        "GC",
    ),
    (
        "status before 1.1.0",
        {"CNI_COMMAND": "STATUS"},
        {"cniVersion": "1.0.0"},
        IncompatibleVersion,
        CNI_INCOMPATIBLE_VERSION,
        "STATUS",
    ),
    # configuration (7)
    ("add without ipam", {}, {"ipam": REMOVE}, InvalidNetConf, CNI_INVALID_CONFIG, "ipam"),
    (
        "check without ipam",
        {"CNI_COMMAND": "CHECK"},
        {"ipam": None},
        InvalidNetConf,
        CNI_INVALID_CONFIG,
        "ipam",
    ),
    ("ipam a string", {}, {"ipam": "spiderpool"}, InvalidNetConf, CNI_INVALID_CONFIG, "ipam"),
    ("ipam a list", {}, {"ipam": []}, InvalidNetConf, CNI_INVALID_CONFIG, "ipam"),
    ("name a number", {}, {"name": 3}, InvalidNetConf, CNI_INVALID_CONFIG, "name"),
    ("prevResult a list", {}, {"prevResult": []}, InvalidNetConf, CNI_INVALID_CONFIG, "prevResult"),
    ("runtimeConfig a str", {}, {"runtimeConfig": "x"}, InvalidNetConf, CNI_INVALID_CONFIG, "runtimeConfig"),
    (
        "gc without attachments",
        {"CNI_COMMAND": "GC"},
        {"cniVersion": "1.1.0"},
        InvalidNetConf,
        CNI_INVALID_CONFIG,
        "cni.dev/valid-attachments",
    ),
    (
        "attachments an object",
        {"CNI_COMMAND": "GC"},
        {"cniVersion": "1.1.0", "cni.dev/valid-attachments": {}},
        InvalidNetConf,
        CNI_INVALID_CONFIG,
        "cni.dev/valid-attachments",
    ),
    (
        "attachment a string",
        {"CNI_COMMAND": "GC"},
        {"cniVersion": "1.1.0", "cni.dev/valid-attachments": ["c1"]},
        InvalidNetConf,
        CNI_INVALID_CONFIG,
        "cni.dev/valid-attachments[0]",
    ),
    (
        "attachment without ifname",
        {"CNI_COMMAND": "GC"},
        {"cniVersion": "1.1.0", "cni.dev/valid-attachments": [{"containerID": "c1"}]},
        InvalidNetConf,
        CNI_INVALID_CONFIG,
        "cni.dev/valid-attachments[0].ifname",
    ),
]

IPAM_FIELD_ERRORS: list[tuple[str, object]] = [
    ("type", 5),
    ("ipam_unix_socket_path", ["/run/x.sock"]),
    ("default_ipv4_ippool", "v4-pool"),
    ("default_ipv4_ippool", [1]),
    ("default_ipv4_ippool", {"name": "p"}),
    ("default_ipv6_ippool", "v6-pool"),
    ("default_ipv6_ippool", ["ok", None]),
    ("clean_gateway", "true"),
    ("clean_gateway", 1),
    ("match_master_subnet", "false"),
    ("log_level", "loud"),
    ("log_level", 3),
    ("log_file_path", []),
    ("log_file_max_size", "100"),
    ("log_file_max_size", 1.5),
    ("log_file_max_size", 100.0),
    ("log_file_max_size", True),
    ("log_file_max_age", -1),
    ("log_file_max_count", "7"),
    ("default_ipv4_ippool", ["p" * 254]),
    ("default_ipv4_ippool", ["a b"]),
    ("default_ipv6_ippool", [f"p{i}" for i in range(65)]),
]


@pytest.mark.parametrize(
    ("env", "conf", "error", "code", "named"),
    [pytest.param(*case[1:], id=case[0]) for case in ERRORS],
)
def test_each_bad_input_gets_its_cni_code_and_names_the_culprit(
    env: dict[str, object], conf: Any, error: type[SpiderError], code: int, named: str
) -> None:
    with pytest.raises(error) as caught:
        invoke(env=env, conf=conf)
    assert caught.value.cni_code == code
    assert named in str(caught.value)


@pytest.mark.parametrize(("field", "value"), IPAM_FIELD_ERRORS)
def test_a_mistyped_ipam_field_is_a_config_error_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(InvalidNetConf) as caught:
        invoke(conf=ipam(**{field: value}))
    assert caught.value.cni_code == CNI_INVALID_CONFIG
    assert f"ipam.{field}" in str(caught.value)


def test_status_rejects_a_mistyped_ipam_section() -> None:
    env = {"CNI_COMMAND": "STATUS"}
    with pytest.raises(InvalidNetConf, match="clean_gateway"):
        invoke(env=env, conf={"cniVersion": "1.1.0", **ipam(clean_gateway="yes")})


def test_the_environment_is_checked_before_stdin() -> None:
    with pytest.raises(InvalidEnvironment, match="CNI_IFNAME"):
        invoke(env={"CNI_IFNAME": REMOVE}, conf=b"not json")


# --- CNI_ARGS -----------------------------------------------------------------------------------------------


def test_cni_args_values_may_be_empty_or_hold_equals_signs_and_the_last_repeat_wins() -> None:
    assert parse_args("A=;B=x=y;A=2") == {"A": "2", "B": "x=y"}
    assert parse_args("") == {}


POD_ARGS = ("K8S_POD_NAMESPACE", "K8S_POD_NAME", "K8S_POD_UID")  # NB: their values are checked, so not any text
arg_keys = st.text(st.characters(exclude_characters=";=", exclude_categories=["Cs"]), min_size=1).filter(
    lambda key: key not in POD_ARGS
)
arg_values = st.text(st.characters(exclude_characters=";", exclude_categories=["Cs"]))


@given(st.dictionaries(arg_keys, arg_values))
def test_cni_args_round_trip(args: dict[str, str]) -> None:
    assert parse_args(";".join(f"{k}={v}" for k, v in args.items())) == args


# --- split_forwarded ----------------------------------------------------------------------------------------


def test_a_forwarded_frame_splits_into_environment_and_stdin() -> None:
    env, stdin = split_forwarded(b"CNI_COMMAND=ADD\nCNI_ARGS=A=1;B=2\nCNI_NETNS=\n\n{\n\n}")
    assert env == {"CNI_COMMAND": "ADD", "CNI_ARGS": "A=1;B=2", "CNI_NETNS": ""}
    assert stdin == b"{\n\n}"


def test_a_frame_with_no_environment_or_no_stdin_is_fine() -> None:
    assert split_forwarded(b"\n{}") == ({}, b"{}")
    assert split_forwarded(b"\n") == ({}, b"")
    assert split_forwarded(b"CNI_COMMAND=VERSION\n\n") == ({"CNI_COMMAND": "VERSION"}, b"")


@pytest.mark.parametrize("body", [b"", b"CNI_COMMAND=ADD", b"CNI_COMMAND=ADD\n{}", b"CNI_COMMAND\n\n{}", b"=x\n\n"])
def test_a_malformed_frame_is_a_decode_failure(body: bytes) -> None:
    with pytest.raises(DecodeFailure) as caught:
        split_forwarded(body)
    assert caught.value.cni_code == CNI_DECODE_FAILURE


def test_a_forwarded_variable_that_is_not_utf8_is_an_environment_error_naming_it() -> None:
    with pytest.raises(InvalidEnvironment, match="CNI_ARGS") as caught:
        split_forwarded(b"CNI_COMMAND=ADD\nCNI_ARGS=K8S_POD_NAME=\xff\n\n{}")
    assert caught.value.cni_code == CNI_INVALID_ENV
    with pytest.raises(InvalidEnvironment):
        split_forwarded(b"CNI_\xff=1\n\n{}")


env_names = st.from_regex(r"CNI_[A-Z_]{0,12}", fullmatch=True)
env_values = st.text(st.characters(exclude_characters="\n\x00", exclude_categories=["Cs"]))


@given(st.dictionaries(env_names, env_values), st.binary())
def test_whatever_the_shim_forwards_splits_back_exactly(env: dict[str, str], stdin: bytes) -> None:
    raw_env = {k.encode(): v.encode() for k, v in env.items()}
    raw_env[b"PATH"] = b"/usr/bin"  # not forwarded
    request = shim._request(raw_env, stdin)
    _, _, body = request.partition(b"\r\n\r\n")
    assert split_forwarded(body) == (env, stdin)


def test_a_forwarded_add_parses_like_the_direct_one() -> None:
    stdin = json.dumps(CONF).encode()
    request = shim._request({k.encode(): v.encode() for k, v in ENV.items()}, stdin)
    env, forwarded_stdin = split_forwarded(request.partition(b"\r\n\r\n")[2])
    assert parse_request(env, forwarded_stdin) == parse_request(ENV, stdin)


# --- results ------------------------------------------------------------------------------------------------

IPS = [IPConfig("10.1.0.2/24", "10.1.0.1"), IPConfig("fd00::2/64", "fd00::1")]
ROUTES = [Route("0.0.0.0/0"), Route("192.168.0.0/16", "10.1.0.254")]


def host_local_add(version: str, data_dir: Path) -> bytes:
    """What Debian's host-local prints for an ADD handing out the same addresses and routes as IPS, ROUTES."""
    conf = {
        "cniVersion": version,
        "name": "n",
        "type": "macvlan",
        "ipam": {
            "type": "host-local",
            "dataDir": str(data_dir),
            "ranges": [[{"subnet": "10.1.0.0/24", "gateway": "10.1.0.1"}], [{"subnet": "fd00::/64"}]],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.1.0.254"}],
        },
    }
    env = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "c1",
        "CNI_NETNS": "/var/run/netns/none",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": str(HOST_LOCAL.parent),
    }
    proc = subprocess.run(
        [HOST_LOCAL], input=json.dumps(conf).encode(), env=env, capture_output=True, check=True, timeout=10
    )
    return proc.stdout


@pytest.mark.skipif(not HOST_LOCAL.exists(), reason=f"{HOST_LOCAL} is not installed")
@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0", "1.0.0"])
def test_results_match_host_local_key_for_key(version: str, tmp_path: Path) -> None:
    theirs = json.loads(host_local_add(version, tmp_path))
    ours = format_result(version, IPS, ROUTES)
    assert render(ours) == render(theirs)  # same keys, values and order


def test_results_before_1_0_0_tag_each_address_with_its_family() -> None:
    assert format_result("0.3.1", IPS, ROUTES) == {
        "cniVersion": "0.3.1",
        "ips": [
            {"version": "4", "address": "10.1.0.2/24", "gateway": "10.1.0.1"},
            {"version": "6", "address": "fd00::2/64", "gateway": "fd00::1"},
        ],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.1.0.254"}],
        "dns": {},
    }


@pytest.mark.parametrize("version", ["1.0.0", "1.1.0"])
def test_results_from_1_0_0_on_carry_no_family_and_omit_what_is_empty(version: str) -> None:
    ips = [IPConfig("10.0.0.5/24"), IPConfig("fd00::5/64", "fd00::1", interface=0)]
    assert format_result(version, ips, []) == {
        "cniVersion": version,
        "ips": [{"address": "10.0.0.5/24"}, {"interface": 0, "address": "fd00::5/64", "gateway": "fd00::1"}],
        "dns": {},
    }
    assert format_result(version, [], []) == {"cniVersion": version, "dns": {}}


def test_dns_keeps_the_spec_keys_in_go_order_and_drops_empty_ones() -> None:
    dns = {"search": ["svc.local"], "domain": "", "nameservers": ["10.0.0.10"], "x-extra": 1}
    assert list(format_result("1.0.0", IPS, [], dns)["dns"].items()) == [
        ("nameservers", ["10.0.0.10"]),
        ("search", ["svc.local"]),
    ]


def test_an_unsupported_result_version_is_refused() -> None:
    with pytest.raises(IncompatibleVersion):
        format_result("0.2.0", IPS, ROUTES)


def test_ip_family_follows_the_address() -> None:
    assert (IPConfig("10.0.0.1/8").version, IPConfig("::ffff:10.0.0.1/128").version) == (4, 6)


def test_errors_carry_version_code_message_and_optional_details() -> None:
    assert format_error("1.0.0", 11, "busy", "retry later") == {
        "cniVersion": "1.0.0",
        "code": 11,
        "msg": "busy",
        "details": "retry later",
    }
    assert format_error("0.4.0", 7, "bad") == {"cniVersion": "0.4.0", "code": 7, "msg": "bad"}
    assert format_error("", 6, "cannot decode") == {"code": 6, "msg": "cannot decode"}


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (InvalidEnvironment(variable="CNI_NETNS", reason="is missing"), 4),
        (DecodeFailure(what="stdin", reason="bad"), 6),
        (InvalidNetConf(reason="ipam section is missing"), 7),
        (IncompatibleVersion(version="0.2.0", supported=cni.SUPPORTED_VERSIONS), 1),
        (StaleWrite(kind="SpiderIPPool", name="p", sent_version="7"), 11),
        (PoolExhausted(pool="p", capacity=4), 100),
    ],
)
def test_an_error_object_takes_its_code_from_the_exception_class(exc: SpiderError, code: int) -> None:
    assert cni.error_from("1.1.0", exc) == {"cniVersion": "1.1.0", "code": code, "msg": str(exc)}


def test_version_echoes_the_request_or_answers_the_latest() -> None:
    supported = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
    assert version_result("0.4.0") == {"cniVersion": "0.4.0", "supportedVersions": supported}
    assert version_result(None) == version_result("") == {"cniVersion": "1.1.0", "supportedVersions": supported}


def test_rendering_is_compact_utf8_without_a_newline() -> None:
    assert render({"msg": "pool «ä» is full", "n": [1, 2]}) == '{"msg":"pool «ä» is full","n":[1,2]}'.encode()


def test_the_shim_and_the_protocol_agree_on_versions_and_socket() -> None:
    assert shim.SUPPORTED_VERSIONS == cni.SUPPORTED_VERSIONS
    assert shim.LATEST_VERSION == cni.LATEST_VERSION
    assert shim.DEFAULT_SOCKET.decode() == cni.DEFAULT_SOCKET
