#!/usr/bin/env -S python3 -IS
"""The ``spiderpool`` IPAM plugin binary: forwards one CNI invocation to the node's agent, prints its answer.

The container runtime execs this once per pod and verb, so it must start fast: it imports only modules built
into the interpreter (``sys``, ``posix``, ``_socket``), never ``os`` or ``json`` on the common path, and
nothing from this project.  It stays one self-contained file: ``spider install-cni`` copies it to
``<bin-dir>/spiderpool`` with the first line replaced by a shebang that runs it with ``-IS``.

Wire (over the agent's unix socket, one request per connection)::

    POST /v1/cni HTTP/1.1 / Host / Content-Type: application/octet-stream / Content-Length / Connection: close
    body:  NAME=VALUE\\n for every CNI_* variable, \\n, then stdin verbatim   (spider.cni.split_forwarded)
    reply: 200 with "X-Cni-Exit: <status>"; the body is what the plugin prints, the status how it exits

VERSION is answered here without the agent.  When the agent refuses the request itself (a body over its size
limit: HTTP 413; a head too large: 431; anything else it answers with an ``X-Cni-Code`` header), the plugin
prints a CNI error with that code and the agent's message: the error is permanent, and retrying the same
request would fail again.  When the agent cannot be reached, or answers something else, the plugin prints a
CNI error with code 11 (try again later; 50 "not available" for STATUS) and exits 1.
"""

import _socket
import posix
import sys
import time

TYPE_CHECKING = False  # typing is not built in: importing it would cost start-up time
if TYPE_CHECKING:
    from typing import BinaryIO

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST_VERSION = "1.1.0"
DEFAULT_SOCKET = b"/var/run/spidernet/spiderpool.sock"
TIMEOUT = 100.0  # seconds; Spiderpool's DefaultCNIClientTimeout
CODE_TRY_AGAIN_LATER = 11
CODE_NOT_AVAILABLE = 50
CODE_INVALID_ENV = 4

_WHITESPACE = b" \t\r\n"


class _NeedsJson(Exception):
    """The value holds an escape: only a real JSON parser reads it right."""


class _BadReply(Exception):
    """The agent answered something that is not a reply of ours."""


class _Refused(Exception):
    """The agent refused the request for good: a CNI code and its message."""

    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


def _scan_string(data: bytes, key: bytes) -> bytes | None:
    """The value of the first ``"key": "string"`` in ``data``; None when there is none.

    Raises ``_NeedsJson`` when the value contains a backslash escape.  A match that is not followed by a colon
    (the key's text used as a value) is skipped; a non-string value counts as absent.
    """
    needle = b'"' + key + b'"'
    start = 0
    size = len(data)
    while True:
        found = data.find(needle, start)
        if found < 0:
            return None
        i = found + len(needle)
        while i < size and data[i] in _WHITESPACE:
            i += 1
        if i >= size or data[i] != 0x3A:  # ':'
            start = found + 1
            continue
        i += 1
        while i < size and data[i] in _WHITESPACE:
            i += 1
        if i >= size or data[i] != 0x22:  # '"'
            return None
        end = data.find(b'"', i + 1)
        if end < 0:
            return None
        value = data[i + 1 : end]
        if b"\\" in value:
            raise _NeedsJson
        return value


def _json_lookup(stdin: bytes, path: tuple[str, ...]) -> bytes | None:
    """Slow path for escaped values: parse stdin with ``json`` and walk ``path``."""
    import json  # only for escaped strings: it costs about 10 ms of start-up

    try:
        node: object = json.loads(stdin)
    except (ValueError, RecursionError):  # NB: nested past the interpreter's limit: the agent says what is wrong
        return None
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node.encode("utf-8", "surrogatepass") if isinstance(node, str) else None


def _find(stdin: bytes, path: tuple[str, ...]) -> bytes | None:
    try:
        return _scan_string(stdin, path[-1].encode())
    except _NeedsJson:
        return _json_lookup(stdin, path)


def _quote(text: str) -> str:
    """``text`` as a JSON string literal (non-ASCII kept as is; the output is UTF-8)."""
    out = ['"']
    for ch in text:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ch < " " or ch == "\x7f" or "\ud800" <= ch <= "\udfff":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _error(version: str, code: int, msg: str, details: str = "") -> bytes:
    body = f'{{"cniVersion":{_quote(version)},"code":{code},"msg":{_quote(msg)}'
    if details:
        body += f',"details":{_quote(details)}'
    return (body + "}").encode("utf-8")


def _request(env: dict[bytes, bytes], stdin: bytes) -> bytes:
    lines = [name + b"=" + value + b"\n" for name, value in env.items() if name.startswith(b"CNI_")]
    body = b"".join(lines) + b"\n" + stdin
    head = (
        b"POST /v1/cni HTTP/1.1\r\n"
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


def _dechunk(data: bytes) -> bytes:
    """Decode a ``Transfer-Encoding: chunked`` body (trailers ignored)."""
    out: list[bytes] = []
    i = 0
    while True:
        eol = data.find(b"\r\n", i)
        if eol < 0:
            raise _BadReply("truncated chunked body")
        size_text = data[i:eol].split(b";", 1)[0].strip()
        if not size_text or size_text.strip(b"0123456789abcdefABCDEF"):  # NB: int() takes "-6", "+6", "0x6"
            raise _BadReply(f"bad chunk size {_text(size_text)!r}")
        size = int(size_text, 16)
        if size == 0:
            return b"".join(out)
        start = eol + 2
        if len(data) < start + size + 2:
            raise _BadReply("truncated chunked body")
        out.append(data[start : start + size])
        i = start + size + 2


def _parse_reply(reply: bytes) -> tuple[int, bytes]:
    """The exit status and stdout an HTTP reply of the agent carries."""
    head, sep, body = reply.partition(b"\r\n\r\n")
    if not sep:
        raise _BadReply("the agent closed the connection before a complete reply" if reply else "empty reply")
    lines = head.split(b"\r\n")
    status = lines[0].split(None, 2)
    if len(status) < 2 or not status[0].startswith(b"HTTP/1."):
        raise _BadReply(f"not an HTTP reply: {_text(lines[0][:80])!r}")
    headers = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    if status[1] != b"200":
        code = headers.get(b"x-cni-code", b"")
        if code.isdigit():
            raise _Refused(int(code), _message(body) or f"HTTP status {_text(status[1])}")
        raise _BadReply(f"HTTP status {_text(b' '.join(status[1:])[:80])}")
    exit_text = headers.get(b"x-cni-exit")
    if exit_text is None:
        raise _BadReply("no X-Cni-Exit header")
    try:
        status_code = int(exit_text)
    except ValueError:
        raise _BadReply(f"X-Cni-Exit is not an integer: {_text(exit_text[:20])!r}") from None
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        body = _dechunk(body)
    elif b"content-length" in headers:
        try:
            length = int(headers[b"content-length"])
        except ValueError:
            raise _BadReply("Content-Length is not an integer") from None
        if len(body) < length:
            raise _BadReply(f"body cut short ({len(body)} of {length} bytes)")
        body = body[:length]
    return status_code, body


def _message(body: bytes) -> str:
    """The agent's error message: its body is one JSON string (``json`` is imported on this error path only)."""
    import json

    try:
        text = json.loads(body)
    except ValueError:
        return _text(body[:1000])
    return text if isinstance(text, str) else _text(body[:1000])


def _write(out: "BinaryIO | None", data: bytes) -> None:
    stream = sys.stdout.buffer if out is None else out
    stream.write(data)
    stream.flush()


def main(
    environ: dict[bytes, bytes] | None = None,
    stdin: bytes | None = None,
    out: "BinaryIO | None" = None,
) -> int:
    """Run the plugin once; returns the exit status.  ``out`` is a binary stream (stdout by default)."""
    env = posix.environ if environ is None else environ
    data = sys.stdin.buffer.read() if stdin is None else stdin
    command = env.get(b"CNI_COMMAND", b"")
    version = LATEST_VERSION
    path = DEFAULT_SOCKET
    try:
        found = _find(data, ("cniVersion",))
        if command == b"VERSION":
            requested = _text(found) if found else LATEST_VERSION
            supported = ",".join(_quote(v) for v in SUPPORTED_VERSIONS)
            _write(out, f'{{"cniVersion":{_quote(requested)},"supportedVersions":[{supported}]}}'.encode())
            return 0
        if found:
            version = _text(found)
        path = _find(data, ("ipam", "ipam_unix_socket_path")) or DEFAULT_SOCKET
        for name, value in env.items():
            if name.startswith(b"CNI_") and b"\n" in value:
                msg = f"environment variable {_text(name)} contains a newline"
                _write(out, _error(version, CODE_INVALID_ENV, msg))
                return 1
        try:
            code, body = _parse_reply(_exchange(path, _request(env, data)))
        except _Refused as exc:
            _write(out, _error(version, exc.code, exc.msg))
            return 1
        except _BadReply as exc:
            reason = f"bad reply: {exc}"
        except TimeoutError:
            reason = f"no reply within {TIMEOUT:g} s"
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
        else:
            _write(out, body)
            return code
    except Exception as exc:  # never a traceback: the runtime reads stdout as JSON
        reason = f"internal error in the plugin: {type(exc).__name__}: {exc}"
    unreachable = CODE_NOT_AVAILABLE if command == b"STATUS" else CODE_TRY_AGAIN_LATER
    _write(out, _error(version, unreachable, "spider agent is unreachable", f"{_text(path)}: {reason}"))
    return 1


if __name__ == "__main__":
    # NB: what the plugin prints is flushed as written (``_write``): leave at once, without the interpreter's
    # teardown, a sixth of each exec's CPU (docs/benchmarks.md); a status no process can exit with is an error
    status = main()
    posix._exit(status if 0 <= status <= 255 else 1)
