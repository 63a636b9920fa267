"""Hostile clients against a running agent (and the controller's health port): nothing a client sends ends a
server, every bad input gets its documented answer (docs/operations.md, "Limits and bad input"), and afterwards
the agent still answers, serves an ADD and a DEL, and its store is consistent.

The agent runs in a thread of its own (its own trio run) for the whole module, with a short read timeout so the
idle and slow clients are quick; each test talks to it over raw sockets or through the installed shims.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.agent import AgentSettings, open_agent
from actors.controller.main import ControllerSettings, open_controller
from actors.ipam.check import check_store
from actors.servers.agent_api import AgentApi, open_unix_listener
from actors.servers.httpserver import MAX_BODY, MAX_HEADERS
from actors.stores.port import Store
from actors.stores.sqlite import SqliteStore
from actors.stores.validating import ValidatingStore
from actors.tools.manifests import apply
from spider.errors import SocketUnusable
from tests.support import ROOT, cni_env, http_call_sync, installed_shim, netconf, pod_args, pool_object, run_plugin_sync
from tests.support import short_tmp as make_short_tmp

READ_TIMEOUT = 0.5
"""The agent's read timeout here: idle and slow clients are cut after it."""
POOL = pool_object("adv", "10.9.0.0/16", ["10.9.0.10-10.9.0.250"], gateway="10.9.0.1", default=True)
HYPOTHESIS = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))


@attrs.define
class LiveAgent:
    """An agent serving in a thread of its own; ``call`` runs a coroutine function in its trio run."""

    dir: Path
    socket: Path
    shim: Path
    store: Store | None = None
    api: AgentApi | None = None
    token: trio.lowlevel.TrioToken | None = None
    failure: BaseException | None = None
    _stop: trio.Event | None = None
    _thread: threading.Thread | None = None
    _pods: int = 0

    def call(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        return trio.from_thread.run(fn, *args, trio_token=self.token)

    def start(self) -> None:
        ready = threading.Event()

        async def serve() -> None:
            self.store = ValidatingStore(await SqliteStore.open(self.dir / "store.db"))
            agent = AgentSettings(
                store_path=self.dir / "store.db",
                socket_path=self.socket,
                node="node-1",
                grace=1,
                read_timeout=READ_TIMEOUT,
            )
            self._stop = trio.Event()
            self.token = trio.lowlevel.current_trio_token()
            try:
                async with open_agent(agent, self.store) as api:
                    self.api = api
                    await apply(self.store, POOL)
                    ready.set()
                    await self._stop.wait()
            finally:
                await self.store.aclose()

        def run() -> None:
            try:
                trio.run(serve)
            except BaseException as exc:  # the test reports it: the agent must never end on its own
                self.failure = exc
            finally:
                ready.set()

        self._thread = threading.Thread(target=run, name="live-agent", daemon=True)
        self._thread.start()
        assert ready.wait(30), "the agent did not start"
        assert self.failure is None, self.failure

    def stop(self) -> None:
        if self._thread is not None and self._thread.is_alive() and self._stop is not None:
            trio.from_thread.run_sync(self._stop.set, trio_token=self.token)
            self._thread.join(20)

    def alive(self) -> bool:
        """The agent's thread still serves, its socket file is in place and it answers ``/v1/ipam/healthy``."""
        assert self.failure is None, f"the agent ended: {self.failure!r}"
        assert self._thread is not None
        assert self._thread.is_alive()
        assert self.socket.is_socket(), "the socket file is gone"
        return http_call_sync(self.socket, "GET", "/v1/ipam/healthy")[0] == 200

    def pool_records(self) -> dict[str, Any]:
        async def get() -> dict[str, Any]:
            assert self.store is not None
            status = (await self.store.get("SpiderIPPool", "adv")).get("status") or {}
            return dict(json.loads(status.get("allocatedIPs") or "{}"))

        return dict(self.call(get))

    def serves_normally(self) -> None:
        """Healthy; a fresh pod gets an address and gives it back; the store is consistent, nothing leaked."""
        assert self.alive()
        self._pods += 1
        pod = add_args(name=f"probe-{self._pods}", uid=f"probe-uid-{self._pods}", container=f"probe{self._pods}")
        status, body, _ = http_call_sync(self.socket, "POST", "/v1/ipam/ip", pod)
        assert status == 200, body
        address = body["ips"][0]["address"].partition("/")[0]
        assert self.pool_records()[address]["podUid"] == pod["podUID"]
        assert http_call_sync(self.socket, "DELETE", "/v1/ipam/ip", del_args(pod))[0] == 200
        assert address not in self.pool_records()

        async def check() -> Any:
            assert self.store is not None
            return await check_store(self.store)

        report = self.call(check)
        assert report.consistent, report.findings


@pytest.fixture(scope="module")
def live() -> Iterator[LiveAgent]:
    with make_short_tmp() as d:
        agent = LiveAgent(d, d / "agent.sock", installed_shim(d / "bin"))
        agent.start()
        try:
            yield agent
        finally:
            agent.stop()


@pytest.fixture(autouse=True)
def agent_survives(live: LiveAgent) -> Iterator[None]:
    """Every test ends with the agent alive and serving as before."""
    yield
    live.serves_normally()


def add_args(name: str = "web-0", uid: str = "uid-web-0", container: str = "c1", **extra: Any) -> dict[str, Any]:
    return {
        "containerID": container,
        "ifName": "eth0",
        "netNamespace": "/var/run/netns/x",
        "podNamespace": "default",
        "podName": name,
        "podUID": uid,
        **extra,
    }


def del_args(add: dict[str, Any]) -> dict[str, Any]:
    return {k: add[k] for k in ("containerID", "ifName", "podNamespace", "podName", "podUID")}


def connect(path: Path, timeout: float = 5) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(str(path))
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes (or the socket's timeout)."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (TimeoutError, ConnectionResetError):
        pass
    return b"".join(chunks)


def exchange(path: Path, raw: bytes, timeout: float = 5) -> bytes:
    """Send ``raw`` on a fresh connection, say that was all, and read until the server closes it."""
    with connect(path, timeout) as sock:
        try:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return read_all(sock)


def request(method: str, target: str, body: bytes = b"", *headers: str, close: bool = True) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: x", f"Content-Length: {len(body)}", *headers]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def status_of(reply: bytes) -> int:
    assert reply.startswith(b"HTTP/1.1 "), reply[:200]
    return int(reply.split(b" ", 2)[1])


def answer(reply: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("iso-8859-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status_of(reply), headers, json.loads(body) if body else None


def forwarded(env: dict[str, str], stdin: bytes) -> bytes:
    return b"".join(f"{k}={v}\n".encode() for k, v in env.items()) + b"\n" + stdin


DEEP = b"[" * 1000 + b"]" * 1000


# --- the findings, one regression test each ---------------------------------------------------------------------


def test_an_idle_connection_is_closed_after_the_read_timeout_and_the_agent_serves_on(live: LiveAgent) -> None:
    with connect(live.socket) as idle:
        assert read_all(idle) == b""  # closed by the agent, silently: nothing was asked
    assert live.alive()


def test_a_timed_out_keep_alive_connection_never_runs_its_last_request_again(live: LiveAgent) -> None:
    pod = add_args(name="keep-1", uid="uid-keep-1", container="keep1")
    with connect(live.socket) as first:
        first.sendall(request("POST", "/v1/ipam/ip", json.dumps(pod).encode(), close=False))
        reply = first.recv(65536)
        assert status_of(reply) == 200
        address = json.loads(reply.partition(b"\r\n\r\n")[2])["ips"][0]["address"].partition("/")[0]
        released = exchange(live.socket, request("DELETE", "/v1/ipam/ip", json.dumps(del_args(pod)).encode()))
        assert status_of(released) == 200
        assert address not in live.pool_records()
        assert read_all(first) == b""  # the idle keep-alive connection is closed, the ADD not run again
    assert address not in live.pool_records()


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("POST", "/v1/ipam/ip"),
        ("DELETE", "/v1/ipam/ip"),
        ("DELETE", "/v1/ipam/ips"),
        ("GET", "/v1/coordinator/config"),
    ],
)
def test_json_nested_a_thousand_deep_is_a_400_on_every_json_endpoint(live: LiveAgent, method: str, target: str) -> None:
    status, headers, message = answer(exchange(live.socket, request(method, target, DEEP)))
    assert status == 400
    assert "nested more than 64 levels" in message
    assert headers["x-cni-code"] == "102"


@pytest.mark.parametrize("target", ["/v1/cni", "/v1/cni/coordinator", "/v1/cni/ifacer"])
def test_a_forwarded_netconf_nested_a_thousand_deep_is_a_decode_failure(live: LiveAgent, target: str) -> None:
    env = cni_env("ADD", "deep1", args=pod_args("deep", "uid-deep"))
    status, headers, error = answer(exchange(live.socket, request("POST", target, forwarded(env, DEEP))))
    assert (status, headers["x-cni-exit"]) == (200, "1")
    assert error["code"] == 6
    assert "nested more than 64 levels" in error["msg"]


def test_the_plugin_reports_a_deeply_nested_netconf_as_a_decode_failure(live: LiveAgent) -> None:
    conf = json.dumps(netconf(live.socket))[:-1] + ', "x": ' + DEEP.decode() + "}"
    code, error = run_plugin_sync(live.shim, cni_env("ADD", "deep2", args=pod_args("deep2", "u2")), conf.encode())
    assert (code, error["code"]) == (1, 6)


def test_a_header_value_that_is_not_utf8_is_served(live: LiveAgent) -> None:
    reply = exchange(live.socket, b"GET /v1/ipam/healthy HTTP/1.1\r\nHost: x\r\nX-Anything: \xff\xfe\r\n\r\n")
    assert status_of(reply) == 200


@pytest.mark.parametrize(("target", "status"), [("//[", 404), ("http://[/v1/ipam/healthy", 400), ("*", 404)])
def test_a_request_target_that_does_not_split_is_answered(live: LiveAgent, target: str, status: int) -> None:
    assert status_of(exchange(live.socket, request("GET", target))) == status


def test_a_body_over_the_limit_is_a_413_with_a_json_error_before_it_is_read(live: LiveAgent) -> None:
    head = f"POST /v1/cni HTTP/1.1\r\nHost: x\r\nContent-Length: {50 * 1024 * 1024}\r\n\r\n".encode()
    status, headers, message = answer(exchange(live.socket, head + b"x" * 65536))
    assert status == 413
    assert headers["x-cni-code"] == "6"
    assert f"over the limit of {MAX_BODY}" in message


def test_a_chunked_body_over_the_limit_is_a_413(live: LiveAgent) -> None:
    chunk = b"%x\r\n%s\r\n" % (1024 * 1024, b"x" * (1024 * 1024))
    raw = b"POST /v1/cni HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 5
    assert status_of(exchange(live.socket, raw)) == 413


def test_fifty_megabytes_of_stdin_are_a_permanent_plugin_error_not_unreachable(live: LiveAgent) -> None:
    stdin = b'{"cniVersion":"1.0.0","ipam":{"ipam_unix_socket_path":"%s"},"pad":"' % str(live.socket).encode()
    stdin += b"x" * (50 * 1024 * 1024) + b'"}'
    code, error = run_plugin_sync(live.shim, cni_env("ADD", "big1", args=pod_args("big", "uid-big")), stdin)
    assert code == 1
    assert error["code"] == 6, error
    assert "over the limit" in error["msg"]


def test_fifty_megabytes_to_the_coordinator_plugin_are_a_permanent_error_too(live: LiveAgent) -> None:
    stdin = b'{"cniVersion":"1.0.0","ipam_unix_socket_path":"%s","pad":"' % str(live.socket).encode()
    stdin += b"x" * (50 * 1024 * 1024) + b'"}'
    code, error = run_plugin_sync(live.shim.parent / "coordinator", cni_env("ADD", "big2"), stdin)
    assert (code, error["code"]) == (1, 6)


LONG = "a" * 120_000


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("podUID", "u" * 1_000_000),
        ("podUID", "not a uid"),
        ("podName", "x" * 254),
        ("podName", "Web_0"),
        ("podNamespace", "n" * 64),
        ("containerID", "c" * 257),
        ("containerID", "-starts-with-dash"),
        ("ifName", "eth0123456789012"),
        ("ifName", "a/b"),
        ("ifName", ".."),
        ("ifName", "et\u0000h"),
        ("netNamespace", "/" + "n" * 4096),
        ("cleanGateway", "false"),
        ("cleanGateway", 1),
        ("defaultIPv4IPPool", "adv"),
        ("defaultIPv4IPPool", ["p" * 254]),
        ("defaultIPv4IPPool", [f"p{i}" for i in range(65)]),
        ("podName", 7),
    ],
)
def test_a_field_over_its_bound_or_of_the_wrong_type_is_a_400_and_nothing_is_stored(
    live: LiveAgent, field: str, value: Any
) -> None:
    before = live.pool_records()
    status, message, headers = http_call_sync(live.socket, "POST", "/v1/ipam/ip", add_args(**{field: value}))
    assert status == 400, message
    assert field in message
    assert headers["X-Cni-Code"] == "102"
    assert len(message) < 500  # the message quotes a bounded preview of the value, not the value
    assert live.pool_records() == before


@pytest.mark.parametrize(
    ("env_change", "variable"),
    [
        ({"CNI_CONTAINERID": LONG}, "CNI_CONTAINERID"),
        ({"CNI_ARGS": pod_args("big", LONG)}, "CNI_ARGS"),
        ({"CNI_ARGS": pod_args(LONG, "uid-1")}, "CNI_ARGS"),
        ({"CNI_ARGS": pod_args("web", "uid-1", namespace="Not_A_Label")}, "CNI_ARGS"),
        ({"CNI_NETNS": "/" + "n" * 5000}, "CNI_NETNS"),
    ],
)
def test_the_plugin_refuses_an_environment_over_its_bounds_with_code_4(
    live: LiveAgent, env_change: dict[str, str], variable: str
) -> None:
    before = live.pool_records()
    env = {**cni_env("ADD", "env1", args=pod_args("env", "uid-env")), **env_change}
    code, error = run_plugin_sync(live.shim, env, netconf(live.socket))
    assert (code, error["code"]) == (1, 4), error
    assert variable in error["msg"]
    assert len(error["msg"]) < 500
    assert live.pool_records() == before


@pytest.mark.parametrize(
    "ipam",
    [
        {"clean_gateway": "false"},
        {"default_ipv4_ippool": ["p" * 254]},
        {"default_ipv4_ippool": "adv"},
    ],
)
def test_the_plugin_refuses_an_ipam_section_over_its_bounds_with_code_7(live: LiveAgent, ipam: dict[str, Any]) -> None:
    code, error = run_plugin_sync(
        live.shim, cni_env("ADD", "conf1", args=pod_args("conf", "uid-c")), netconf(live.socket, **ipam)
    )
    assert (code, error["code"]) == (1, 7), error


def test_a_second_agent_on_a_live_socket_refuses_to_start_and_leaves_the_first_serving(live: LiveAgent) -> None:
    done = spider_agent("--socket", str(live.socket), "--store", str(live.dir / "second.db"))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"spider agent: cannot serve on {live.socket}: another agent serves this socket (it accepts connections)"
    ]
    assert live.alive()


def test_a_socket_path_that_is_a_file_or_cannot_be_made_is_one_clean_line(live: LiveAgent) -> None:
    regular = live.dir / "regular"
    regular.write_text("")
    done = spider_agent("--socket", str(regular), "--store", str(live.dir / "second.db"))
    assert (done.returncode, done.stderr.strip().splitlines()) == (
        1,
        [f"spider agent: cannot serve on {regular}: the path exists and is not a socket"],
    )
    below_a_file = regular / "sub" / "agent.sock"
    done = spider_agent("--socket", str(below_a_file), "--store", str(live.dir / "second.db"))
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith(f"spider agent: cannot serve on {below_a_file}: cannot make its directory")


async def test_a_stale_socket_file_nobody_answers_on_is_replaced() -> None:
    with make_short_tmp() as d:
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(d / "agent.sock"))
        stale.close()  # the file stays; nobody listens: a killed agent's leftover
        with trio.fail_after(10):
            listener = await open_unix_listener(d / "agent.sock")
            async with listener:
                with pytest.raises(SocketUnusable, match="another agent serves this socket"):
                    await open_unix_listener(d / "agent.sock")


def spider_agent(*flags: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "actors", "agent", "--node", "second", *flags]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)


# --- the wire's bounds ------------------------------------------------------------------------------------------


def test_too_many_header_fields_are_a_431(live: LiveAgent) -> None:
    headers = [f"X-H{i}: v" for i in range(MAX_HEADERS + 1)]
    status, headers_back, _ = answer(exchange(live.socket, request("GET", "/v1/ipam/healthy", b"", *headers)))
    assert (status, headers_back["x-cni-code"]) == (431, "6")


def test_a_head_over_its_size_limit_is_a_431(live: LiveAgent) -> None:
    reply = exchange(live.socket, request("GET", "/v1/ipam/healthy", b"", "X-Big: " + "v" * 70_000))
    assert status_of(reply) == 431


def test_a_slow_client_is_answered_408_after_the_read_timeout(live: LiveAgent) -> None:
    with connect(live.socket) as slow:
        slow.sendall(b"POST /v1/ipam/ip HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        deadline = time.monotonic() + 3 * READ_TIMEOUT
        reply = b""
        while time.monotonic() < deadline and not reply:
            time.sleep(READ_TIMEOUT / 5)
            try:
                slow.sendall(b" ")
            except (BrokenPipeError, ConnectionResetError):
                break
            slow.settimeout(0.01)
            with contextlib.suppress(TimeoutError):
                reply = slow.recv(65536)
        slow.settimeout(5)
        reply += read_all(slow)
    assert status_of(reply) == 408


def test_pipelined_requests_are_answered_in_order(live: LiveAgent) -> None:
    raw = request("GET", "/v1/ipam/healthy", close=False) + request("GET", "/v1/nothing", close=False)
    raw += request("GET", "/v1/ipam/healthy")
    replies = exchange(live.socket, raw)
    assert re.findall(rb"HTTP/1.1 (\d+) ", replies) == [b"200", b"404", b"200"]


def test_a_truncated_request_is_dropped_quietly(live: LiveAgent) -> None:
    full = request("POST", "/v1/ipam/ip", json.dumps(add_args()).encode())
    for cut in (5, 30, len(full) - 3):
        reply = exchange(live.socket, full[:cut])
        assert reply == b"" or status_of(reply) == 400


# --- generated input --------------------------------------------------------------------------------------------


def test_random_bytes_never_end_the_agent(live: LiveAgent) -> None:
    @HYPOTHESIS
    @given(st.binary(max_size=4096))
    def send(data: bytes) -> None:
        reply = exchange(live.socket, data, timeout=3)
        assert reply == b"" or reply.startswith(b"HTTP/1.1 ")

    send()


METHODS = st.sampled_from(["GET", "POST", "DELETE", "PUT", "HEAD", "OPTIONS", "G\x00T", "POST POST"])
TARGETS = st.one_of(
    st.sampled_from(["/v1/ipam/ip", "/v1/ipam/ips", "/v1/cni", "/v1/cni/coordinator", "/v1/coordinator/config"]),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40),
    st.binary(max_size=20).map(lambda b: b.decode("latin-1")),
)
HEADER_LINES = st.lists(st.binary(max_size=60), max_size=8)


def test_random_requests_truncated_or_pipelined_never_end_the_agent(live: LiveAgent) -> None:
    @HYPOTHESIS
    @given(
        st.lists(st.tuples(METHODS, TARGETS, HEADER_LINES, st.binary(max_size=200), st.booleans()), max_size=3),
        st.one_of(st.none(), st.integers(min_value=0, max_value=2000)),
    )
    def send(requests: list[tuple[str, str, list[bytes], bytes, bool]], cut: int | None) -> None:
        raw = b""
        for method, target, header_lines, body, honest_length in requests:
            length = len(body) if honest_length else len(body) + 7
            head = f"{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n".encode("latin-1")
            raw += head + b"".join(line.replace(b"\r\n", b"") + b"\r\n" for line in header_lines) + b"\r\n" + body
        if cut is not None:
            raw = raw[:cut]
        reply = exchange(live.socket, raw, timeout=3 * READ_TIMEOUT + 2)
        assert reply == b"" or reply.startswith(b"HTTP/1.1 ")

    send()


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)
STRING_FIELDS = ["containerID", "ifName", "netNamespace", "podNamespace", "podName", "podUID"]


READ_FIELDS = {
    ("POST", "/v1/ipam/ip"): [*STRING_FIELDS, "cleanGateway", "defaultIPv4IPPool", "defaultIPv6IPPool"],
    ("DELETE", "/v1/ipam/ip"): ["containerID", "ifName", "podNamespace", "podName", "podUID"],
    ("DELETE", "/v1/ipam/ips"): ["containerID", "podNamespace", "podName", "podUID"],
}
"""The fields each route reads."""


def wrong_type(field: str, value: Any) -> bool:
    if field == "cleanGateway":
        return value is not None and not isinstance(value, bool)
    if field.startswith("default"):
        return value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value))
    return not isinstance(value, str)


def test_a_wrong_json_type_in_any_field_is_a_400_and_stores_nothing(live: LiveAgent) -> None:
    before = live.pool_records()

    @HYPOTHESIS
    @given(
        st.sampled_from(sorted(READ_FIELDS)).flatmap(lambda r: st.tuples(st.just(r), st.sampled_from(READ_FIELDS[r]))),
        JSON_VALUES,
    )
    def send(where: tuple[tuple[str, str], str], value: Any) -> None:
        route, field = where
        if not wrong_type(field, value):
            return
        body = {**add_args(), field: value} if route[0] == "POST" else {**del_args(add_args()), field: value}
        status, message, _ = http_call_sync(live.socket, *route, body)
        assert status == 400, (field, value, message)

    send()
    assert live.pool_records() == before


def test_random_json_bodies_on_every_json_endpoint_are_answered(live: LiveAgent) -> None:
    @HYPOTHESIS
    @given(
        JSON_VALUES,
        st.sampled_from(
            [
                ("POST", "/v1/ipam/ip"),
                ("DELETE", "/v1/ipam/ip"),
                ("DELETE", "/v1/ipam/ips"),
                ("GET", "/v1/coordinator/config"),
            ]
        ),
    )
    def send(value: Any, route: tuple[str, str]) -> None:
        status, _, _ = http_call_sync(live.socket, *route, value)
        assert status in (200, 400, 404, 500)

    send()


# --- the controller's health port -------------------------------------------------------------------------------


async def test_the_controllers_health_port_survives_idle_and_hostile_clients(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "store.db")
    controller_settings = ControllerSettings(
        store_path=tmp_path / "store.db",
        namespace="default",
        identity="adversary-test",
        lease_duration=1,
        renew_deadline=0.6,
        retry_period=0.1,
        health_host="127.0.0.1",
        health_port=0,
        read_timeout=READ_TIMEOUT,
    )
    try:
        with trio.fail_after(30):
            async with open_controller(controller_settings, store) as controller:
                port = controller.health_port
                assert port is not None

                async def raw(data: bytes) -> bytes:
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                    async with stream:
                        with contextlib.suppress(trio.BrokenResourceError):
                            await stream.send_all(data)
                        out = b""
                        with trio.move_on_after(5):
                            try:
                                while chunk := await stream.receive_some(65536):
                                    out += chunk
                            except trio.BrokenResourceError:
                                pass
                        return out

                assert await raw(b"") == b""  # idle: closed after the read timeout, the server lives on
                keep = request("GET", "/v1/runtime/liveness", close=False)
                assert (await raw(keep)).startswith(b"HTTP/1.1 200")  # then idle: closed, not answered twice
                assert (await raw(b"GET //[ HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(b"HTTP/1.1 404")
                assert (await raw(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: \xff\r\n\r\n")).startswith(b"HTTP/1.1 404")
                assert (await raw(b"\x00\xff garbage\r\n\r\n")).startswith(b"HTTP/1.1 400")
                assert (await raw(request("GET", "/", b"x" * (MAX_BODY + 1)))).startswith(b"HTTP/1.1 413")
                assert (await raw(request("GET", "/v1/runtime/liveness"))).startswith(b"HTTP/1.1 200")
    finally:
        await store.aclose()


def test_the_health_port_binds_the_pod_ip_when_given() -> None:
    from actors.controller.main import default_health_host

    assert default_health_host({"POD_IP": "10.0.0.7"}) == "10.0.0.7"
    assert default_health_host({}) is None
