"""The ``spiderpool`` shim run as the container runtime runs it (``python -IS shim.py``) against a fake
agent on a unix socket; plus a few in-process calls of ``main`` for what a real process cannot show fast."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cni import coordinator as coordinator_shim
from cni import shim
from spider import cni

SHIM = Path(__file__).resolve().parents[2] / "cni" / "shim.py"
SUPPORTED = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
RESULT = b'{"cniVersion":"1.0.0","ips":[{"address":"10.6.0.10/16","gateway":"10.6.0.1"}],"dns":{}}'


def http_reply(body: bytes, exit_status: int = 0, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + f"X-Cni-Exit: {exit_status}\r\nContent-Length: {len(body)}\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


class _Server(socketserver.UnixStreamServer):
    received: list[tuple[bytes, bytes]]
    reply: bytes
    release: threading.Event
    hold: bool
    trickle: bool


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.request.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        match = re.search(rb"\r\nContent-Length: (\d+)\r\n", head + b"\r\n")
        length = int(match.group(1)) if match else 0
        while len(body) < length:
            chunk = self.request.recv(65536)
            if not chunk:
                break
            body += chunk
        self.server.received.append((head, body))
        if self.server.hold:
            self.server.release.wait(10)
            return
        if self.server.trickle:  # one byte of a reply head every 20 ms, for 10 s (a test's bound), never done
            with contextlib.suppress(OSError):
                for _ in range(500):
                    if self.server.release.wait(0.02):
                        break
                    self.request.sendall(b"X")
            return
        self.request.sendall(self.server.reply)


class FakeAgent:
    """A stdlib unix-socket server that records each request and answers with ``reply``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._server = _Server(str(path), _Handler)
        self._server.received = []
        self._server.reply = http_reply(RESULT)
        self._server.release = threading.Event()
        self._server.hold = False
        self._server.trickle = False
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.01})
        self._thread.start()

    @property
    def received(self) -> list[tuple[bytes, bytes]]:
        return self._server.received

    def answer(self, reply: bytes) -> None:
        self._server.reply = reply

    def never_answer(self) -> None:
        self._server.hold = True

    def trickle(self) -> None:
        """Answer one byte at a time, for ever: each read of the plugin gets something."""
        self._server.trickle = True

    def close(self) -> None:
        self._server.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.fixture
def sockdir() -> Iterator[Path]:
    # AF_UNIX paths are limited to 107 bytes: pytest's tmp_path for a long test name is too long.
    path = Path(tempfile.mkdtemp(prefix="spcni", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def agent(sockdir: Path) -> Iterator[FakeAgent]:
    fake = FakeAgent(sockdir / "agent.sock")
    yield fake
    fake.close()


def conf(socket: Path | str | None, version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
    ipam: dict[str, Any] = {"type": "spiderpool", "default_ipv4_ippool": ["v4"]}
    if socket is not None:
        ipam["ipam_unix_socket_path"] = str(socket)
    return {"cniVersion": version, "name": "macvlan-underlay", "type": "macvlan", "ipam": ipam, **extra}


def add_env(**extra: str) -> dict[str, str]:
    return {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "3f2c9a8b7d6e",
        "CNI_NETNS": "/var/run/netns/cni-1234",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/opt/cni/bin",
        "CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_UID=6b1c",
        **extra,
    }


def run_shim(env: dict[str, str], stdin: bytes | dict[str, Any], *flags: str) -> subprocess.CompletedProcess[bytes]:
    data = json.dumps(stdin).encode() if isinstance(stdin, dict) else stdin
    return subprocess.run(
        [sys.executable, *flags, "-IS", str(SHIM)], env=env, input=data, capture_output=True, timeout=20
    )


def cni_error(stdout: bytes) -> dict[str, Any]:
    error = json.loads(stdout)
    assert isinstance(error, dict)
    assert set(error) == {"cniVersion", "code", "msg", "details"}
    return error


# --- forwarding ---------------------------------------------------------------------------------------------


def test_the_cni_environment_and_stdin_reach_the_agent_byte_exact(agent: FakeAgent) -> None:
    env = add_env(HOME="/root", LC_ALL="C", CNI_EXTRA="a=b;c")
    stdin = json.dumps(conf(agent.path, name="ünïcode-net"), ensure_ascii=False).encode() + b"\n\n"
    proc = run_shim(env, stdin)
    assert proc.returncode == 0, proc.stderr
    ((head, body),) = agent.received
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/cni HTTP/1.1"
    assert lines[1:] == [
        b"Host: spiderpool",
        b"Content-Type: application/octet-stream",
        f"Content-Length: {len(body)}".encode(),
        b"Connection: close",
    ]
    forwarded = b"".join(f"{k}={v}\n".encode() for k, v in env.items() if k.startswith("CNI_"))
    assert body == forwarded + b"\n" + stdin
    assert cni.split_forwarded(body) == ({k: v for k, v in env.items() if k.startswith("CNI_")}, stdin)


def test_the_agents_body_is_printed_and_its_exit_status_returned(agent: FakeAgent) -> None:
    proc = run_shim(add_env(), conf(agent.path))
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, RESULT, b"")

    error = b'{"cniVersion":"1.0.0","code":100,"msg":"pool \'v4\' is exhausted"}'
    agent.answer(http_reply(error, exit_status=1))
    proc = run_shim(add_env(), conf(agent.path))
    assert (proc.returncode, proc.stdout, proc.stderr) == (1, error, b"")


@pytest.mark.parametrize(("sent", "exits"), [(7, 7), (255, 255), (256, 1), (-1, 1)])
def test_an_exit_status_no_process_can_have_exits_as_an_error(agent: FakeAgent, sent: int, exits: int) -> None:
    agent.answer(http_reply(RESULT, exit_status=sent))
    proc = run_shim(add_env(), conf(agent.path))
    assert (proc.returncode, proc.stdout) == (exits, RESULT)


def test_a_chunked_reply_is_decoded(agent: FakeAgent) -> None:
    agent.answer(
        b"HTTP/1.1 200 OK\r\nx-cni-exit: 0\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n" % 10
        + RESULT[:10]
        + b"\r\n"
        + b"%x;ext=1\r\n" % (len(RESULT) - 10)
        + RESULT[10:]
        + b"\r\n0\r\n\r\n"
    )
    proc = run_shim(add_env(), conf(agent.path))
    assert (proc.returncode, proc.stdout) == (0, RESULT)


def test_an_escaped_socket_path_in_the_config_is_honoured(agent: FakeAgent) -> None:
    escaped = str(agent.path).replace("/", "\\/")
    stdin = b'{"cniVersion":"1.0.0","name":"n","ipam":{"ipam_unix_socket_path":"' + escaped.encode() + b'"}}'
    proc = run_shim(add_env(), stdin)
    assert (proc.returncode, proc.stdout) == (0, RESULT)
    assert len(agent.received) == 1


def test_the_socket_key_used_as_a_value_does_not_fool_the_scanner(agent: FakeAgent) -> None:
    stdin = conf(agent.path)
    stdin = {"name": "ipam_unix_socket_path", **stdin}
    proc = run_shim(add_env(), stdin)
    assert (proc.returncode, proc.stdout) == (0, RESULT)


# --- VERSION, locally ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stdin", "version"),
    [
        (b'{"cniVersion": "0.4.0"}', "0.4.0"),
        (b"{}", "1.1.0"),
        (b"", "1.1.0"),
        (b'{"cniVersion":"1.\\u0030.0"}', "1.0.0"),
        (b'{"cniVersion":"1.\\u0030.0","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "1.1.0"),  # too deep to read
    ],
)
def test_version_is_answered_without_an_agent(stdin: bytes, version: str) -> None:
    proc = run_shim({"CNI_COMMAND": "VERSION"}, stdin)
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == {"cniVersion": version, "supportedVersions": SUPPORTED}
    assert json.loads(proc.stdout) == cni.version_result(version)


# --- an agent that is not there or talks nonsense -----------------------------------------------------------


def test_a_missing_agent_is_a_try_again_later_error(sockdir: Path) -> None:
    socket = sockdir / "absent.sock"
    proc = run_shim(add_env(), conf(socket, version="0.4.0"))
    assert proc.returncode == 1
    assert proc.stderr == b""
    error = cni_error(proc.stdout)
    assert (error["cniVersion"], error["code"], error["msg"]) == ("0.4.0", 11, "spider agent is unreachable")
    assert error["details"] == f"{socket}: No such file or directory"


def test_a_missing_agent_makes_status_report_not_available(sockdir: Path) -> None:
    proc = run_shim({"CNI_COMMAND": "STATUS"}, conf(sockdir / "absent.sock", version="1.1.0"))
    assert proc.returncode == 1
    assert cni_error(proc.stdout)["code"] == 50


def test_without_a_configured_path_the_default_socket_is_tried() -> None:
    if Path(cni.DEFAULT_SOCKET).exists():
        pytest.skip("an agent may be listening on the default socket")
    proc = run_shim(add_env(CNI_COMMAND="DEL"), conf(None))
    assert proc.returncode == 1
    assert cni_error(proc.stdout)["details"].startswith(cni.DEFAULT_SOCKET + ": ")


def test_a_socket_nobody_listens_on_is_refused(sockdir: Path) -> None:
    import socket as socketlib

    path = sockdir / "dead.sock"
    dead = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # bound, never listening
    proc = run_shim(add_env(), conf(path))
    error = cni_error(proc.stdout)
    assert (proc.returncode, error["code"]) == (1, 11)
    assert "Connection refused" in error["details"]


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (b"", "empty reply"),
        (b"HTTP/1.1 200 OK\r\nX-Cni-Exit: 0\r\n", "closed the connection"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP reply"),
        (http_reply(b"nope").replace(b"200 OK", b"404 Not Found"), "HTTP status 404 Not Found"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", "no X-Cni-Exit header"),
        (
            b"HTTP/1.1 200 OK\r\nX-Cni-Exit: zero\r\nContent-Length: 2\r\n\r\n{}",
            "X-Cni-Exit is not an integer",
        ),
        (b"HTTP/1.1 200 OK\r\nX-Cni-Exit: 0\r\nContent-Length: 99\r\n\r\n{}", "cut short"),
        (b"HTTP/1.1 200 OK\r\nX-Cni-Exit: 0\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
        (b"HTTP/1.1 200 OK\r\nX-Cni-Exit: 0\r\nTransfer-Encoding: chunked\r\n\r\n-6\r\n{}\r\n0\r\n\r\n", "chunk size"),
        (b"HTTP/1.1 200 OK\r\nX-Cni-Exit: 0\r\nTransfer-Encoding: chunked\r\n\r\n9\r\n{}", "truncated"),
    ],
)
def test_a_reply_that_is_not_ours_is_a_try_again_later_error(agent: FakeAgent, reply: bytes, reason: str) -> None:
    agent.answer(reply)
    proc = run_shim(add_env(), conf(agent.path))
    assert proc.returncode == 1
    error = cni_error(proc.stdout)
    assert error["code"] == 11
    assert error["details"].startswith(f"{agent.path}: bad reply: ")
    assert reason in error["details"]


def test_a_newline_in_a_forwarded_variable_is_refused_locally(agent: FakeAgent) -> None:
    proc = run_shim(add_env(CNI_ARGS="K8S_POD_NAME=a\nb"), conf(agent.path))
    assert proc.returncode == 1
    assert json.loads(proc.stdout) == {
        "cniVersion": "1.0.0",
        "code": 4,
        "msg": "environment variable CNI_ARGS contains a newline",
    }
    assert agent.received == []


# --- start-up cost ------------------------------------------------------------------------------------------


def imported_modules(stderr: bytes) -> set[str]:
    names = set()
    for line in stderr.decode().splitlines():
        if line.startswith("import time:") and "|" in line and "imported package" not in line:
            names.add(line.rsplit("|", 1)[1].strip())
    return names


@pytest.mark.parametrize(
    ("env", "stdin"),
    [
        ({"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "1.0.0"}'),
        (add_env(), json.dumps(conf("/tmp/spcni-absent/agent.sock")).encode()),
    ],
    ids=["VERSION", "ADD"],
)
def test_the_shim_imports_nothing_beyond_the_interpreters_own_start_up(env: dict[str, str], stdin: bytes) -> None:
    baseline = subprocess.run(
        [sys.executable, "-X", "importtime", "-IS", "-c", "pass"], capture_output=True, timeout=20, check=True
    )
    proc = run_shim(env, stdin, "-X", "importtime")
    extra = imported_modules(proc.stderr) - imported_modules(baseline.stderr)
    assert extra <= {"_socket"}, extra
    assert {"json", "os", "typing", "socket", "spider", "attrs"}.isdisjoint(imported_modules(proc.stderr))


# --- in process ---------------------------------------------------------------------------------------------


def test_main_runs_in_process_with_bytes_environment(agent: FakeAgent) -> None:
    out = io.BytesIO()
    environ = {k.encode(): v.encode() for k, v in add_env().items()}
    status = shim.main(environ=environ, stdin=json.dumps(conf(agent.path)).encode(), out=out)
    assert (status, out.getvalue()) == (0, RESULT)


def test_an_agent_that_never_answers_times_out(agent: FakeAgent, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shim, "TIMEOUT", 0.2)
    agent.never_answer()
    out = io.BytesIO()
    environ = {k.encode(): v.encode() for k, v in add_env().items()}
    status = shim.main(environ=environ, stdin=json.dumps(conf(agent.path)).encode(), out=out)
    error = cni_error(out.getvalue())
    assert (status, error["code"]) == (1, 11)
    assert error["details"] == f"{agent.path}: no reply within 0.2 s"


@pytest.mark.parametrize("plugin", [shim, coordinator_shim], ids=["spiderpool", "coordinator"])
def test_an_agent_that_trickles_its_answer_cannot_hold_a_plugin_past_its_timeout(
    agent: FakeAgent, plugin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # NB: the timeout once bounded each read: a byte every 20 ms held the plugin as long as the peer liked
    monkeypatch.setattr(plugin, "TIMEOUT", 0.3)
    agent.trickle()
    out = io.BytesIO()
    environ = {k.encode(): v.encode() for k, v in add_env().items()}
    stdin = json.dumps(conf(agent.path, ipam_unix_socket_path=str(agent.path))).encode()
    started = time.monotonic()
    status = plugin.main(environ=environ, stdin=stdin, out=out)
    assert time.monotonic() - started < 3
    error = cni_error(out.getvalue())
    assert (status, error["code"]) == (1, 11)
    assert error["details"] == f"{agent.path}: no reply within 0.3 s"


@pytest.mark.parametrize("plugin", ["coordinator", "ifacer"])
def test_a_socket_path_that_is_no_utf8_is_a_cni_error_not_a_traceback(plugin: str) -> None:
    stdin = b'{"cniVersion":"1.0.0","name":"n","type":"x","ipam_unix_socket_path":"/nonexistent/\xff.sock"}'
    out = io.BytesIO()
    environ = {k.encode(): v.encode() for k, v in add_env().items()}
    status = coordinator_shim.main(environ, stdin, out, plugin)
    error = cni_error(out.getvalue())
    assert (status, error["code"]) == (1, 11)
    assert error["details"].startswith("/nonexistent/\ufffd.sock: ")


def test_an_unexpected_failure_is_still_a_cni_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(path: bytes, request: bytes) -> bytes:
        raise RuntimeError("boom")

    monkeypatch.setattr(shim, "_exchange", boom)
    out = io.BytesIO()
    status = shim.main(environ={b"CNI_COMMAND": b"DEL"}, stdin=b'{"cniVersion":"0.3.1"}', out=out)
    error = cni_error(out.getvalue())
    assert (status, error["code"], error["cniVersion"]) == (1, 11, "0.3.1")
    assert error["details"].endswith("internal error in the plugin: RuntimeError: boom")


@pytest.mark.parametrize(
    "text", ["", "plain", 'q"uote', "back\\slash", "new\nline\r\t", "\x00\x1f\x7f", "ünï «ç» 😀", "\ud800"]
)
def test_the_hand_written_json_quoting_round_trips(text: str) -> None:
    assert json.loads(shim._quote(text)) == text


@pytest.mark.parametrize(
    ("status", "code"),
    [(b"413 Payload Too Large", 6), (b"431 Request Header Fields Too Large", 6), (b"400 Bad Request", 102)],
)
def test_a_request_the_agent_refuses_for_good_is_reported_with_its_code_not_as_unreachable(
    agent: FakeAgent, status: bytes, code: int
) -> None:
    message = b'"cannot decode HTTP request: request body is over the limit of 4194304 bytes"'
    agent.answer(
        b"HTTP/1.1 "
        + status
        + b"\r\nContent-Type: application/json\r\n"
        + f"X-Cni-Code: {code}\r\nContent-Length: {len(message)}\r\n\r\n".encode()
        + message
    )
    proc = run_shim(add_env(), conf(agent.path))
    assert proc.returncode == 1
    error = json.loads(proc.stdout)
    assert error == {"cniVersion": "1.0.0", "code": code, "msg": json.loads(message)}


def test_an_http_error_without_a_cni_code_is_still_try_again_later(agent: FakeAgent) -> None:
    agent.answer(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
    proc = run_shim(add_env(), conf(agent.path))
    assert (proc.returncode, cni_error(proc.stdout)["code"]) == (1, 11)
