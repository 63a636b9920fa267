#!/usr/bin/env -S python3 -IS
"""The ``coordinator`` (and ``ifacer``) CNI plugin binary: forwards one invocation to the node's agent.

Chained after the main CNI (macvlan) in a conflist, the runtime execs it with ``prevResult`` on stdin; the
agent does the work (veth to the host, routes, rules, neighbours, detection) through its NodeActor.  Like
``cni/shim.py`` it imports only modules built into the interpreter and nothing from this project, and it
speaks the same wire (one request per connection over the agent's unix socket)::

    POST /v1/cni/<plugin> HTTP/1.1 / Host / Content-Type: application/octet-stream / Content-Length / Connection: close
    body:  NAME=VALUE\\n for every CNI_* variable, \\n, then stdin verbatim
    reply: 200 with "X-Cni-Exit: <status>"; the body is what the plugin prints, the status how it exits

``<plugin>`` is the name the binary is installed under: ``coordinator`` or ``ifacer`` (``spider install-cni``
installs this file as both).  The socket is Spiderpool's default unless the configuration has a top-level
``"ipam_unix_socket_path"`` (our extension: Spiderpool's coordinator always uses the default).  VERSION is
answered here; a request the agent refuses for good (413, 431, or any answer with an ``X-Cni-Code`` header)
gives that code and the agent's message; an unreachable agent gives CNI code 11 (50 for STATUS).

For the coordinator's ADD and CHECK, a ``CNI_NETNS`` that ``stat`` shows is a directory, FIFO, socket or
device is refused here with CNI code 4 (a cheap first look; the agent checks every path thoroughly before
entering it).  DEL is always forwarded: it cleans the host side whatever the pod's namespace has become.
"""

import _socket
import posix
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST_VERSION = "1.1.0"
DEFAULT_SOCKET = b"/var/run/spidernet/spiderpool.sock"
PLUGINS = ("coordinator", "ifacer")
TIMEOUT = 100.0  # seconds; Spiderpool's DefaultCNIClientTimeout
CODE_TRY_AGAIN_LATER = 11
CODE_NOT_AVAILABLE = 50
CODE_INVALID_ENV = 4
# File types (stat.h) that are never a network namespace; ``stat`` is not built in, ``posix`` is.
_S_IFMT = 0o170000
_NOT_A_NAMESPACE = {
    0o040000: "a directory",
    0o010000: "a FIFO (named pipe)",
    0o140000: "a socket",
    0o020000: "a character device",
    0o060000: "a block device",
}

_WHITESPACE = b" \t\r\n"


class _Refused(Exception):
    """The agent refused the request for good: a CNI code and its message."""

    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


def _top_level_string(data: bytes, key: bytes) -> bytes | None:
    """The value of ``"key": "..."`` at the top level of the JSON object ``data`` (no escapes), else None.

    A tiny scanner instead of ``json`` (about 10 ms of start-up): it skips nested objects, arrays and strings,
    so a key of the same name inside ``prevResult`` is never taken for the configuration's own.
    """
    depth = 0
    i, size = 0, len(data)
    while i < size:
        c = data[i]
        if c == 0x22:  # '"'
            end = i + 1
            while end < size and data[end] != 0x22:
                end += 2 if data[end] == 0x5C else 1  # skip escaped characters
            if depth == 1 and data[i + 1 : end] == key:
                j = end + 1
                while j < size and data[j] in _WHITESPACE:
                    j += 1
                if j < size and data[j] == 0x3A:  # ':'
                    j += 1
                    while j < size and data[j] in _WHITESPACE:
                        j += 1
                    if j < size and data[j] == 0x22:
                        close = data.find(b'"', j + 1)
                        value = data[j + 1 : close] if close > 0 else b""
                        return None if b"\\" in value else value
            i = end + 1
            continue
        if c in (0x7B, 0x5B):  # '{' '['
            depth += 1
        elif c in (0x7D, 0x5D):
            depth -= 1
        i += 1
    return None


def _quote(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch < " " or ch == "\x7f":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _error(version: str, code: int, msg: str, details: str) -> bytes:
    body = f'{{"cniVersion":{_quote(version)},"code":{code},"msg":{_quote(msg)},"details":{_quote(details)}}}'
    return body.encode("utf-8")


def _request(plugin: str, env: dict[bytes, bytes], stdin: bytes) -> bytes:
    lines = [name + b"=" + value + b"\n" for name, value in env.items() if name.startswith(b"CNI_")]
    body = b"".join(lines) + b"\n" + stdin
    head = (
        b"POST /v1/cni/" + plugin.encode() + b" HTTP/1.1\r\n"
        b"Host: spiderpool\r\n"
        b"Content-Type: application/octet-stream\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n"
        b"Connection: close\r\n"
        b"\r\n"
    )
    return head + body


def _exchange(path: bytes, request: bytes) -> bytes:
    """Send ``request`` and read the whole reply, within ``TIMEOUT`` seconds in all (as Spiderpool's client
    timeout): a peer that trickles bytes cannot hold the plugin longer."""
    deadline = time.monotonic() + TIMEOUT
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(TIMEOUT)
        sock.connect(path)
        try:
            sock.settimeout(_left(deadline))  # NB: a bound on the whole sendall, not on each send
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            # The agent stopped reading: it refused the request (413) and its answer waits in our buffer.
            reply = _receive_all(sock, deadline)
            if not reply:
                raise
            return reply
        return _receive_all(sock, deadline)
    finally:
        sock.close()


def _left(deadline: float) -> float:
    """Seconds until ``deadline``; ``TimeoutError`` once it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    return left


def _receive_all(sock: "_socket.socket", deadline: float) -> bytes:
    chunks = []
    try:
        while True:
            sock.settimeout(_left(deadline))
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    except ConnectionResetError:
        if not chunks:
            raise
    return b"".join(chunks)


def _parse_reply(reply: bytes) -> tuple[int, bytes]:
    """The exit status and stdout of an agent's reply; ``ValueError`` for anything else."""
    head, sep, body = reply.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = lines[0].split(None, 2)
    if not sep or len(status) < 2 or not status[0].startswith(b"HTTP/1."):
        raise ValueError("not an HTTP reply")
    headers = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    if status[1] != b"200":
        code = headers.get(b"x-cni-code", b"")
        if code.isdigit():
            raise _Refused(int(code), _message(body) or "HTTP status " + status[1].decode("utf-8", "replace"))
        raise ValueError("HTTP status " + b" ".join(status[1:]).decode("utf-8", "replace")[:80])
    if b"x-cni-exit" not in headers:
        raise ValueError("no X-Cni-Exit header")
    length = int(headers.get(b"content-length", str(len(body)).encode()))
    if len(body) < length:
        raise ValueError(f"body cut short ({len(body)} of {length} bytes)")
    return int(headers[b"x-cni-exit"]), body[:length]


def _message(body: bytes) -> str:
    """The agent's error message: its body is one JSON string (``json`` is imported on this error path only)."""
    import json

    try:
        text = json.loads(body)
    except ValueError:
        text = None
    return text if isinstance(text, str) else body[:1000].decode("utf-8", "replace")


def _netns_problem(netns: bytes) -> str | None:
    """Why ``netns`` is certainly no network namespace, by its file type alone; None when it may be one."""
    try:
        mode = posix.stat(netns).st_mode
    except OSError:
        return None  # missing or unreadable: the agent tells which, with its own code
    kind = _NOT_A_NAMESPACE.get(mode & _S_IFMT)
    if kind is None:
        return None
    return f"environment variable CNI_NETNS {netns.decode('utf-8', 'replace')!r} is {kind}, not a network namespace"


def _write(out: "BinaryIO | None", data: bytes) -> None:
    stream = sys.stdout.buffer if out is None else out
    stream.write(data)
    stream.flush()


def plugin_name(argv0: str) -> str:
    """Which plugin this binary is, from the name it was installed under."""
    base = argv0.rsplit("/", 1)[-1]
    return base if base in PLUGINS else "coordinator"


def main(
    environ: dict[bytes, bytes] | None = None,
    stdin: bytes | None = None,
    out: "BinaryIO | None" = None,
    plugin: str | None = None,
) -> int:
    """Run the plugin once; returns the exit status."""
    env = posix.environ if environ is None else environ
    data = sys.stdin.buffer.read() if stdin is None else stdin
    name = plugin or plugin_name(sys.argv[0] if sys.argv else "")
    command = env.get(b"CNI_COMMAND", b"")
    version = LATEST_VERSION
    path = DEFAULT_SOCKET
    try:
        found = _top_level_string(data, b"cniVersion")
        if command == b"VERSION":
            requested = found.decode("utf-8", "replace") if found else LATEST_VERSION
            supported = ",".join(_quote(v) for v in SUPPORTED_VERSIONS)
            _write(out, f'{{"cniVersion":{_quote(requested)},"supportedVersions":[{supported}]}}'.encode())
            return 0
        if found:
            version = found.decode("utf-8", "replace")
        path = _top_level_string(data, b"ipam_unix_socket_path") or DEFAULT_SOCKET
        for key, value in env.items():
            if key.startswith(b"CNI_") and b"\n" in value:
                _write(out, _error(version, 4, "environment variable contains a newline", key.decode()))
                return 1
        netns = env.get(b"CNI_NETNS", b"")
        if name == "coordinator" and command in (b"ADD", b"CHECK") and netns:
            problem = _netns_problem(netns)
            if problem is not None:
                _write(out, _error(version, CODE_INVALID_ENV, problem, "checked by the plugin"))
                return 1
        try:
            code, body = _parse_reply(_exchange(path, _request(name, env, data)))
        except _Refused as exc:
            _write(out, _error(version, exc.code, exc.msg, "the agent refused the request"))
            return 1
        except TimeoutError:
            reason = f"no reply within {TIMEOUT:g} s"
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
        except ValueError as exc:
            reason = f"bad reply: {exc}"
        else:
            _write(out, body)
            return code
    except Exception as exc:  # never a traceback: the runtime reads stdout as JSON
        reason = f"internal error in the plugin: {type(exc).__name__}: {exc}"
    unreachable = CODE_NOT_AVAILABLE if command == b"STATUS" else CODE_TRY_AGAIN_LATER
    where = path.decode("utf-8", "replace")  # NB: the configuration may name a path that is no UTF-8
    _write(out, _error(version, unreachable, "spider agent is unreachable", f"{where}: {reason}"))
    return 1


if __name__ == "__main__":
    # NB: what the plugin prints is flushed as written (``_write``): leave at once, without the interpreter's
    # teardown (as ``cni/shim.py``); a status no process can exit with is an error
    status = main()
    posix._exit(status if 0 <= status <= 255 else 1)
