"""A small HTTP/1.1 server on h11 and trio, for the agent's socket and the controller's health and webhook ports.

Owns the wire only: reading one request at a time per connection (keep-alive allowed), bounding what a client
may send and how long it may take, and writing the handler's ``Response``.  It serves any trio listeners, so
the same code runs a unix socket (the agent), plain TCP (health, port 5720) and TLS (webhook, port 5722,
through ``trio.SSLListener``).  It knows nothing of routes or JSON schemas: the handler does.

What a client gets wrong is answered, never fatal (``docs/operations.md``, "Limits and bad input"):
- a head over ``max_header_bytes`` or with more than ``max_headers`` fields: 431;
- a body over ``max_body``: 413, as soon as ``Content-Length`` says so or the bytes pass it;
- a head that ``check_head`` refuses (the pool host: no valid token): its answer, before any body is read;
- a body while the bodies being read and handled on all connections hold ``max_buffered`` bytes: 503;
- a connection beyond ``max_connections`` open ones: closed at once, unanswered;
- a request h11 cannot parse, or a target we cannot split: 400;
- a request not complete within ``read_timeout``: 408 (an idle keep-alive connection is just closed).
Each error answer goes through ``refuse`` (the agent adds its ``X-Cni-Code``) and closes the connection.

One connection never ends a server: each one runs in its own task, which logs and closes only itself whatever
goes wrong (a handler's bug is answered 500); an unexpected error in an accept loop is logged and the loop
serves on with the same listener.  A timed-out read ends its connection: nothing is ever handled twice.

The agent's unix-socket API (``actors.servers.agent_api``) serves through it, with the graceful drain it
needs: ``stop_accepting`` closes the listeners at once and gives the requests in flight ``grace`` seconds.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
import h11
import trio

log = logging.getLogger(__name__)

MAX_BODY = 4 * 1024 * 1024
"""Largest request body accepted; an AdmissionReview of the largest pool is far below this."""
MAX_HEADER_BYTES = 64 * 1024
"""Largest request head (request line and header fields)."""
MAX_HEADERS = 100
"""Most header fields in one request."""
MAX_QUERY_FIELDS = 100
"""Most query parameters in one request target."""
GET_BODY = 64 * 1024
"""The body bound of servers that only answer GETs (health, metrics): a client cannot park megabytes there."""
MAX_BUFFERED = 64 * 1024 * 1024
"""Most bytes of request bodies held at once, over all connections: many clients each sending ``max_body``
cannot exhaust the process's memory."""
MAX_CONNECTIONS = 1024
"""Most connections open at once on one server; more are closed as they are accepted."""
READ_TIMEOUT = 30.0
"""Seconds a client may take to send one request (TLS handshake included), or to read one answer."""
LINGER = 1.0
"""Seconds an error answer waits for the client to stop sending before the connection closes."""
ACCEPT_BACKOFF = 0.1
"""Seconds an accept loop rests after an error before it accepts again."""


@attrs.frozen
class Request:
    """One HTTP request, body read whole."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    """Header names in lower case; a repeated header keeps its last value; values decoded as ISO-8859-1."""
    body: bytes
    received_at: float = 0.0
    """Trio time at which its head had arrived whole (before its body was read or ``check_head`` ran)."""


@attrs.frozen
class Response:
    """An HTTP answer."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = "application/json"


def json_response(status: int, obj: Any, *headers: tuple[str, str]) -> Response:
    """A JSON answer, with extra headers if given."""
    return Response(status, json.dumps(obj, separators=(",", ":")).encode(), headers)


Handler = Callable[[Request], Awaitable[Response]]
Refusal = Callable[[int, str], Response]
"""Builds the answer to a request refused on the wire: HTTP status and reason in."""


def plain_refusal(status: int, reason: str) -> Response:
    """The default error answer: the status and the reason as a JSON string."""
    return json_response(status, reason)


@attrs.define
class _Reading:
    """What the server knows of the request a connection is reading: its method once its head is in, and the
    bytes of its body counted in the server's ``_buffered`` until it is handled."""

    method: str = ""
    held: int = 0


@attrs.frozen
class _Refused:
    """A request that will not reach the handler, and why."""

    status: int
    reason: str


@attrs.define
class HttpServer:
    """Serves ``handler`` on listeners; run with ``await nursery.start(server.serve, listeners)``."""

    handler: Handler
    name: str = "http"
    read_timeout: float = READ_TIMEOUT
    max_body: int = MAX_BODY
    max_header_bytes: int = MAX_HEADER_BYTES
    max_headers: int = MAX_HEADERS
    grace: float = 30.0
    """Seconds the requests in flight may take to finish after ``stop_accepting``."""
    refuse: Refusal = plain_refusal
    """The answer to a request refused on the wire (400, 408, 413, 431, 503) or failed by a bug (500)."""
    check_head: Callable[[Request], Awaitable[Response | None]] | None = None
    """Runs on a request's head (its ``body`` empty) before the body is read: an answer refuses the request (the
    connection is then closed), ``None`` lets it through to the handler."""
    max_buffered: int = MAX_BUFFERED
    max_connections: int = MAX_CONNECTIONS
    refused_connections: int = 0
    """Connections closed unanswered because ``max_connections`` were open."""
    accept_errors: int = 0
    """Unexpected errors the accept loops survived."""
    connection_errors: int = 0
    """Connections that ended on an unexpected error (a bug), each logged with its traceback."""
    _accepting: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    _idle: set[trio.CancelScope] = attrs.field(factory=set)
    """The waits of keep-alive connections between requests: a drain closes them at once."""
    _draining: bool = False
    _buffered: int = 0
    _open: int = 0

    async def serve(
        self,
        listeners: Sequence[trio.abc.Listener[Any]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept connections until cancelled or ``stop_accepting``; each one is served in its own task."""
        async with trio.open_nursery() as connections:
            with self._accepting:
                async with trio.open_nursery() as acceptors:
                    for listener in listeners:
                        acceptors.start_soon(self._accept, listener, connections)
                    task_status.started()
            # The listeners are closed (new clients are refused at once); the last requests get their grace.
            connections.cancel_scope.deadline = trio.current_time() + self.grace

    def stop_accepting(self, reason: str = "shutting down") -> None:
        """Close the listeners; requests in flight are served to the end (within ``grace``), idle keep-alive
        connections are closed at once (a client's pooled connection must not hold the drain up)."""
        self._draining = True
        self._accepting.cancel(reason=reason)
        for idle in self._idle:
            idle.cancel(reason=reason)

    async def _accept(self, listener: trio.abc.Listener[Any], connections: trio.Nursery) -> None:
        """Accept for as long as the listener is open; errors are logged and accepting goes on."""
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except trio.ClosedResourceError:
                    log.warning("%s: listener closed; no longer accepting on it", self.name)
                    return
                except OSError as exc:  # EMFILE and friends: back off instead of spinning or dying
                    log.warning("%s: accept failed: %s", self.name, exc)
                    await trio.sleep(ACCEPT_BACKOFF)
                    continue
                except Exception:  # the listener outlives any one failure (see the docstring)
                    self.accept_errors += 1
                    log.exception("%s: unexpected error in the accept loop; serving on", self.name)
                    await trio.sleep(ACCEPT_BACKOFF)
                    continue
                if self._open >= self.max_connections:
                    self.refused_connections += 1
                    log.debug("%s: %d connections open; closing a new one", self.name, self._open)
                    await trio.aclose_forcefully(stream)
                    continue
                self._open += 1
                connections.start_soon(self._connection, stream)

    async def _connection(self, stream: trio.abc.Stream) -> None:
        """Serve one connection; whatever happens, only this connection ends."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_header_bytes)
        try:
            async with stream:
                await self._exchange(stream, conn)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            # NB: a failed TLS handshake (a client that does not trust our CA) lands here too.
            log.debug("%s: connection dropped: %s", self.name, exc)
        except Exception:  # one connection must never end the server
            self.connection_errors += 1
            log.exception("%s: connection failed; closing it", self.name)
        finally:
            self._open -= 1

    async def _exchange(self, stream: trio.abc.Stream, conn: h11.Connection) -> None:
        while True:
            reading = _Reading()
            try:
                request = await self._next_request(stream, conn, reading)
                if request is None:  # the client closed, or left an idle connection
                    return
                if isinstance(request, _Refused):
                    await self._refuse(stream, conn, request, reading)
                    return
                if isinstance(request, Response):  # refused by check_head
                    await self._refuse(stream, conn, _Refused(request.status, "refused"), reading, request)
                    return
                head_only = request.method == "HEAD"
                try:  # NB: a HEAD is handled as the GET it is the head of (``_send`` leaves the body out)
                    response = await self.handler(attrs.evolve(request, method="GET") if head_only else request)
                except Exception:  # a bug: answered 500, logged, this connection only
                    self.connection_errors += 1
                    log.exception("%s: %s %s failed", self.name, request.method, request.path)
                    await self._refuse(stream, conn, _Refused(500, "internal error; see the server's log"), reading)
                    return
            finally:
                self._buffered -= reading.held
            with trio.move_on_after(self.read_timeout) as sending:
                await _send(stream, conn, response, head=head_only)
            if sending.cancelled_caught:
                log.debug("%s: client did not read its answer within %gs", self.name, self.read_timeout)
                return
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return  # MUST_CLOSE (HTTP/1.0, "Connection: close") or a pipelined error
            conn.start_next_cycle()

    async def _next_request(
        self, stream: trio.abc.Stream, conn: h11.Connection, reading: _Reading
    ) -> Request | Response | _Refused | None:
        """The next request, a refusal (``check_head``'s answer, or ours), or ``None`` when the client closed or
        idled past ``read_timeout``."""
        with trio.move_on_after(self.read_timeout):
            if not conn.trailing_data[0] and not await self._first_bytes(stream, conn):
                return None
            try:
                return await self._read(stream, conn, reading)
            except h11.RemoteProtocolError as exc:
                return _Refused(exc.error_status_hint, f"malformed HTTP request: {exc}")
        started = conn.their_state is not h11.IDLE or bool(conn.trailing_data[0])
        if not started:
            return None
        return _Refused(408, f"request not complete within {self.read_timeout:g}s")

    async def _first_bytes(self, stream: trio.abc.Stream, conn: h11.Connection) -> bool:
        """Wait, idle, for the next request's first bytes and hand them to ``conn``; ``False`` when draining."""
        if self._draining:
            return False
        with trio.CancelScope() as idle:
            self._idle.add(idle)
            try:
                conn.receive_data(bytes(await stream.receive_some(65536)))  # NB: b"" (closed) is news too
                return True
            finally:
                self._idle.discard(idle)
        return False  # the drain cancelled the wait

    async def _read(
        self, stream: trio.abc.Stream, conn: h11.Connection, reading: _Reading
    ) -> Request | Response | _Refused | None:
        head: Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if conn.they_are_waiting_for_100_continue:
                    await stream.send_all(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
                conn.receive_data(bytes(await stream.receive_some(65536)))
            elif isinstance(event, h11.Request):
                reading.method = event.method.decode("ascii")
                if refused := self._check_head(event):
                    return refused
                parsed = _request(event, trio.current_time())
                if isinstance(parsed, _Refused):
                    return parsed
                head = parsed
                if self.check_head is not None and (answer := await self.check_head(head)) is not None:
                    return answer
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > self.max_body:
                    return _Refused(413, f"request body is over the limit of {self.max_body} bytes")
                self._buffered += len(event.data)
                reading.held += len(event.data)
                if self._buffered > self.max_buffered:
                    return _Refused(503, "too many request bodies are being read at once; try again")
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None  # h11 gives the head before the end of its message
                return attrs.evolve(head, body=bytes(body))
            elif isinstance(event, h11.ConnectionClosed):
                return None
            else:  # h11.PAUSED: cannot happen between cycles; end the connection rather than loop
                return None

    def _check_head(self, head: h11.Request) -> _Refused | None:
        if len(head.headers) > self.max_headers:
            return _Refused(431, f"more than {self.max_headers} header fields")
        # NB: h11 bounds only a head still incomplete in its buffer; one that arrived whole is measured here.
        size = len(head.method) + len(head.target) + sum(len(k) + len(v) + 4 for k, v in head.headers)
        if size > self.max_header_bytes:
            return _Refused(431, f"request head is over the limit of {self.max_header_bytes} bytes")
        for name, value in head.headers:
            if name == b"content-length" and int(value) > self.max_body:
                return _Refused(413, f"request body of {int(value)} bytes is over the limit of {self.max_body}")
        return None

    async def _refuse(
        self,
        stream: trio.abc.Stream,
        conn: h11.Connection,
        refused: _Refused,
        reading: _Reading,
        response: Response | None = None,
    ) -> None:
        """Answer an error (``response``, else ``refuse``'s; when the connection still allows an answer) and let
        the client finish sending."""
        log.info("%s: refused a request: %d %s", self.name, refused.status, refused.reason)
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        response = response or self.refuse(refused.status, refused.reason)
        response = attrs.evolve(response, headers=(*response.headers, ("Connection", "close")))
        with trio.move_on_after(self.read_timeout):
            await _send(stream, conn, response, head=reading.method == "HEAD")
        # A client still sending its body gets EPIPE on its next write and reads the answer; over TCP, closing
        # with unread bytes would reset the connection and lose it, so read (and drop) for a moment first.
        with trio.move_on_after(LINGER):
            if isinstance(stream, trio.abc.HalfCloseableStream):
                await stream.send_eof()
            dropped = 0
            while dropped <= self.max_body and (chunk := await stream.receive_some(65536)):
                dropped += len(chunk)


def _request(head: h11.Request, received_at: float) -> Request | _Refused:
    """The request ``head`` makes (its body still empty), or a 400 when its target does not split."""
    target = head.target.decode("ascii")  # h11 admits only visible ASCII in a target
    try:
        if target.startswith("/"):  # origin form, the usual one: urlsplit would take "//x" for a host
            path, _, query = target.partition("?")
        else:  # absolute form ("http://host/path"), asterisk form
            url = urlsplit(target)
            path, query = url.path or "/", url.query
        fields = parse_qs(query, max_num_fields=MAX_QUERY_FIELDS)
    except ValueError as exc:
        return _Refused(400, f"bad request target {target[:80]!r}: {exc}")
    return Request(
        method=head.method.decode("ascii"),
        path=path,
        query=fields,
        headers={k.decode("ascii").lower(): v.decode("iso-8859-1") for k, v in head.headers},
        body=b"",
        received_at=received_at,
    )


async def _send(stream: trio.abc.Stream, conn: h11.Connection, response: Response, *, head: bool = False) -> None:
    """Write ``response``; to a HEAD, its head alone (the length it would have)."""
    headers = [
        ("Content-Type", response.content_type),
        ("Content-Length", str(len(response.body))),
        *response.headers,
    ]
    data = conn.send(h11.Response(status_code=response.status, headers=headers))
    data += conn.send(h11.Data(data=response.body)) if response.body and not head else b""
    data += conn.send(h11.EndOfMessage())
    await stream.send_all(data)


def bound_port(listener: trio.abc.Listener[Any]) -> int:
    """The TCP port a (possibly TLS-wrapped) listener is bound to; useful after binding port 0."""
    while isinstance(listener, trio.SSLListener):
        listener = listener.transport_listener
    if not isinstance(listener, trio.SocketListener):
        raise TypeError(f"not a socket listener: {listener!r}")
    port: int = listener.socket.getsockname()[1]
    return port
